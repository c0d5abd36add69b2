"""Upload targets of the active-learning spool, each drained by a thread of its own with retries
(exponential backoff, full jitter) and an optional bandwidth cap. A delivery leaves the spool only when
its target acknowledged it:

- ``folder``: a YOLO data set on the device (``<model>/images``, ``<model>/labels``, ``data.yaml``;
  with a batching strategy one such data set per batch, ``<model>/<batch>/...``), written atomically;
  acknowledged when the files are on disk.
- ``http``: Roboflow's dataset upload API shape: ``POST {base}/dataset/{project}/upload`` (multipart
  image, ``name``, ``batch`` (the item's batch, else the configured name), ``tag``, ``split``), then
  ``POST {base}/dataset/{project}/annotate/{id}`` with the predictions as a pre-label; the remote
  image id is kept in the spool between the two steps, so a retry does not upload the image twice.
- ``mqtt``: frame and predictions (and ``batch``, when there is one) on
  ``<prefix>/<device>/active_learning/<source>`` through the MQTT bridge's outbox; acknowledged by the
  broker's PUBACK.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import random
import re
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from edge_agent.active_learning.priority import ThreadPriority, lower_this_thread
from edge_agent.active_learning.spool import Delivery, Item, Spool
from edge_agent.atomic_files import write_many
from edge_agent.errors import UploadFailed
from edge_agent.events import timestamp
from edge_agent.mqtt import topics as t
from edge_agent.mqtt.outbox import Message
from edge_agent.settings import MqttSettings

log = logging.getLogger(__name__)

GATHER_S = 0.1  # an idle uploader, woken by a new sample, waits this long for more to take in one batch


class Target(Protocol):
    name: str

    def send(self, delivery: Delivery, spool: Spool) -> None:
        """Deliver, or raise (``UploadFailed``, or ``OSError`` for the folder); ``spool.save_state``
        keeps progress of a multi-step upload."""


# ------------------------------------------------------------------------------------------- folder


def yolo_lines(predictions: dict[str, Any], class_names: tuple[str, ...]) -> list[str]:
    """Roboflow predictions as YOLO label lines (boxes; polygons for segmentation; box + keypoints)."""
    w, h = predictions["image"]["width"], predictions["image"]["height"]
    index = {name: i for i, name in enumerate(class_names)}
    lines = []
    for p in predictions.get("predictions", []) if isinstance(predictions.get("predictions"), list) else []:
        if "x" not in p or p.get("class") not in index:
            continue
        cls = index[p["class"]]
        if p.get("points"):
            coords = " ".join(f"{pt['x'] / w:.6f} {pt['y'] / h:.6f}" for pt in p["points"])
            lines.append(f"{cls} {coords}")
            continue
        line = f"{cls} {p['x'] / w:.6f} {p['y'] / h:.6f} {p['width'] / w:.6f} {p['height'] / h:.6f}"
        if p.get("keypoints"):
            line += "".join(f" {k['x'] / w:.6f} {k['y'] / h:.6f} 2" for k in p["keypoints"])
        lines.append(line)
    return lines


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def file_name(text: str) -> str:
    """``text`` as one safe file or folder name: runs of other characters become "-", leading dots go
    (no hidden names, no "." or "..")."""
    return _UNSAFE.sub("-", text).lstrip(".") or "-"


@functools.lru_cache(maxsize=64)
def _data_yaml_text(class_names: tuple[str, ...]) -> str:
    """A YOLO data set's data.yaml for these classes (formatted once per class list, not per frame)."""
    names = "".join(f"  {i}: {json.dumps(n)}\n" for i, n in enumerate(class_names))
    return f"path: .\ntrain: images\nval: images\nnames:\n{names}"


class DirectTarget(Protocol):
    """A target the active-learning writer writes itself, with no spool and no uploader in between
    (one on the device's own disk): it raises when the items are not all safely written."""

    name: str

    def write_items(self, items: list[Item]) -> None: ...


class FolderTarget:
    """A direct target (the sampler's writer writes it); its uploader retries what the writer could not
    write, and drains spools written before."""

    name = "folder"

    def __init__(self, root: Path) -> None:
        self.root = root
        self._data_yaml: dict[Path, str] = {}  # what this target last found or wrote there: not read again

    def send(self, delivery: Delivery, spool: Spool) -> None:
        self.write_items([delivery.item])

    def send_many(self, deliveries: list[Delivery], spool: Spool) -> None:
        self.write_items([delivery.item for delivery in deliveries])

    def write_items(self, items: list[Item]) -> None:
        """Write several items with one flush to disk (``atomic_files.write_many``): about half the CPU
        of writing them one by one."""
        files: dict[Path, bytes] = {}
        for item in items:
            files.update(self._files(item))
        write_many(files.items())
        for path, data in files.items():
            if path.name == "data.yaml":
                self._data_yaml[path] = data.decode()

    def _files(self, item: Item) -> list[tuple[Path, bytes]]:
        """The files of one item: its image, and for detections its label file and the data set's
        ``data.yaml`` where that is missing, or names other classes and is older than the item
        (remembered once written)."""
        base = self.root / file_name(item.model_id)
        if item.batch:
            base = base / file_name(item.batch)
        stem = file_name(f"{item.source_id}-{item.id}")
        if "top" in item.predictions or isinstance(item.predictions.get("predictions"), dict):  # classification
            return [(base / "classify" / file_name(item.predictions.get("top") or "unlabelled") / f"{stem}.jpg",
                     item.jpeg)]
        label = "".join(line + "\n" for line in yolo_lines(item.predictions, item.class_names))
        files = [(base / "images" / f"{stem}.jpg", item.jpeg), (base / "labels" / f"{stem}.txt", label.encode())]
        data = base / "data.yaml"
        text = _data_yaml_text(item.class_names)
        if self._data_yaml.get(data) == text and data.exists():  # a person may have taken the folder away
            return files
        if not data.exists():
            files.append((data, text.encode()))
        elif data.read_text() != text:
            # Another class list: replaced only by a frame sampled after it was written (the folder's
            # uploader may drain older frames after the writer wrote newer ones, or a person edited it).
            if data.stat().st_mtime <= item.created:
                files.append((data, text.encode()))
        else:
            self._data_yaml[data] = text
        return files


# --------------------------------------------------------------------------------------------- http


def _multipart(field: str, filename: str, content: bytes, content_type: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


class HttpTarget:
    name = "http"

    def __init__(self, base_url: str, project: str, api_key: str | None, batch_name: str, split: str = "train",
                 timeout: float = 30.0) -> None:
        self.base_url, self.project, self.api_key = base_url.rstrip("/"), project, api_key
        self.batch_name, self.split, self.timeout = batch_name, split, timeout

    def _post(self, path: str, query: list[tuple[str, str]], body: bytes, content_type: str) -> dict[str, Any]:
        if self.api_key:
            query = [("api_key", self.api_key), *query]
        url = f"{self.base_url}{path}?{urllib.parse.urlencode(query)}"
        request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - configured URL
                answer: dict[str, Any] = json.loads(response.read() or b"{}")
        except (OSError, ValueError) as exc:  # HTTPError is an OSError; the key stays out of the message
            raise UploadFailed(f"{path}: {getattr(exc, 'code', '')} {getattr(exc, 'reason', exc)}") from None
        return answer

    def send(self, delivery: Delivery, spool: Spool) -> None:
        item, state = delivery.item, dict(delivery.state)
        project = urllib.parse.quote(self.project, safe="")
        if "image_id" not in state:
            body, ctype = _multipart("file", f"{item.id}.jpg", item.jpeg, "image/jpeg")
            tags = [("tag", t) for t in item.tags] + [("tag", f"source:{item.source_id}")]
            answer = self._post(f"/dataset/{project}/upload",
                                [("name", f"{item.id}.jpg"), ("split", self.split),
                                 ("batch", item.batch or self.batch_name),
                                 *tags], body, ctype)
            image_id = answer.get("id")
            if not image_id or not (answer.get("success") or answer.get("duplicate")):
                raise UploadFailed(f"image upload not accepted: {str(answer)[:200]}")
            state["image_id"] = str(image_id)
            spool.save_state(item.id, self.name, state)
        annotation = json.dumps({**item.predictions, "model_id": item.model_id, "class_names": list(item.class_names)})
        answer = self._post(f"/dataset/{project}/annotate/{urllib.parse.quote(state['image_id'], safe='')}",
                            [("name", f"{item.id}.json"), ("prediction", "true")], annotation.encode(),
                            "application/json")
        if not answer.get("success"):
            raise UploadFailed(f"annotation not accepted: {str(answer)[:200]}")


# --------------------------------------------------------------------------------------------- mqtt


class MqttOutlet(Protocol):
    """The MQTT bridge, as the ``mqtt`` target uses it."""

    @property
    def settings(self) -> MqttSettings: ...

    @property
    def topics(self) -> t.Topics: ...

    def snapshot(self) -> dict[str, Any]: ...

    def submit(self, item: Message, on_ack: Callable[[], None] | None = None) -> bool: ...


class MqttTarget:
    name = "mqtt"

    def __init__(self, bridge: MqttOutlet, timeout: float = 30.0) -> None:
        self.bridge = bridge
        self.timeout = timeout

    def send(self, delivery: Delivery, spool: Spool) -> None:
        if not self.bridge.snapshot()["connected"]:  # not into the outbox while down: a retry would repeat it
            raise UploadFailed("the MQTT bridge is not connected")
        item = delivery.item
        body = {**t.envelope(self.bridge.settings.device_id), "item_id": item.id, "source_id": item.source_id,
                "model_id": item.model_id, "strategy": item.strategy, "captured_at": timestamp(item.created),
                "tags": list(item.tags), "image": {"width": item.width, "height": item.height, "format": "jpeg",
                                                   "base64": base64.b64encode(item.jpeg).decode("ascii")},
                "predictions": item.predictions, **({"batch": item.batch} if item.batch else {})}
        acked = threading.Event()
        message = Message(self.bridge.topics.active_learning(item.source_id), t.dumps(body), qos=1)
        if not self.bridge.submit(message, on_ack=acked.set):
            raise UploadFailed("the MQTT bridge's hand-off is full")
        if not acked.wait(self.timeout):
            raise UploadFailed("no PUBACK from the broker yet")


# ------------------------------------------------------------------------------------------ uploader


class Uploader:
    """Drains one target's deliveries from the spool, oldest first."""

    def __init__(self, spool: Spool, target: Target, retry_min_s: float = 5.0, retry_max_s: float = 600.0,
                 bandwidth_bytes_s: float = 0.0, priority: ThreadPriority = "normal") -> None:
        self.spool, self.target = spool, target
        self.priority = priority  # the thread's (active_learning.priority)
        self.retry_min_s, self.retry_max_s = retry_min_s, retry_max_s
        self.bandwidth = bandwidth_bytes_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stats = {"uploaded": 0, "failures": 0, "bytes": 0}
        self._stats_lock = threading.Lock()  # the writer counts what it wrote to a direct target here too
        self.last_error = ""
        self._failures_in_a_row = 0
        self._next_warning = 0.0

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"al-upload-{self.target.name}", daemon=True)
        self._thread.start()

    def count_sent(self, items: list[Item]) -> None:
        """Count items delivered to this target (by this uploader, or directly by the writer)."""
        with self._stats_lock:
            self.stats["uploaded"] += len(items)
            self.stats["bytes"] += sum(len(item.jpeg) for item in items)

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        lower_this_thread(self.priority)
        while not self._stop.is_set():
            try:
                batch = self.spool.due(self.target.name)
            except Exception:
                log.exception("active-learning spool unreadable")
                batch = []
            if not batch:
                if self._wake.wait(1.0):  # frames come one by one: let a few gather, to take them together
                    self._stop.wait(GATHER_S)
                self._wake.clear()
                continue
            sent: list[str] = []
            try:
                try:
                    self._send_batch(batch, sent)
                finally:
                    self._acknowledge(sent)
            except Exception:  # the spool unwritable (a full disk): what was sent is sent again later
                log.exception("active learning: %s uploader: cannot record deliveries", self.target.name)
                self._stop.wait(self.retry_min_s)

    def _send_batch(self, batch: list[Delivery], sent: list[str]) -> None:
        """Send in order, collecting in ``sent`` what the target took. The spool hears of those in one
        transaction (one fsync for the batch), before any wait and when the batch is done; a crash in
        between repeats at most the batch's sends (targets take a repeat: ids are kept).

        A target that can take a whole batch at once (the folder's ``send_many``: one flush to disk) gets
        it so when no bandwidth cap paces the sends; if that fails, the deliveries are tried one by one,
        so that each failure is counted and retried on its own."""
        send_many: Callable[[list[Delivery], Spool], None] | None = getattr(self.target, "send_many", None)
        if send_many is not None and not self.bandwidth and len(batch) > 1 and not self._stop.is_set():
            try:
                send_many(batch, self.spool)
            except Exception as exc:
                log.debug("active learning: a batch for %s failed (%s); sending one by one", self.target.name, exc)
            else:
                self._failures_in_a_row = 0
                sent.extend(delivery.item.id for delivery in batch)
                self.count_sent([delivery.item for delivery in batch])
                return
        for delivery in batch:
            if self._stop.is_set():
                return
            delay = self._deliver(delivery, sent)
            if delay is not None:  # the target is down or refusing: wait before trying anything else
                self._acknowledge(sent)
                self._stop.wait(delay)
                return

    def _acknowledge(self, sent: list[str]) -> None:
        if sent:
            self.spool.delivered_many(sent, self.target.name)
            sent.clear()

    def _deliver(self, delivery: Delivery, sent: list[str]) -> float | None:
        """Send one (its id appended to ``sent``); on failure, when to try this target again (seconds)."""
        started = time.monotonic()
        try:
            self.target.send(delivery, self.spool)
        except Exception as exc:
            with self._stats_lock:
                self.stats["failures"] += 1
            self._failures_in_a_row += 1
            delay = random.uniform(self.retry_min_s, min(self.retry_max_s,
                                                         self.retry_min_s * 2 ** min(self._failures_in_a_row, 16)))
            if str(exc) != self.last_error or time.monotonic() >= self._next_warning:  # not once per sample
                self._next_warning = time.monotonic() + 60
                log.warning("active learning: %s upload failed (%s); %d sample(s) wait, retry in %.0f s",
                            self.target.name, exc, self.spool.stats().get(f"pending_{self.target.name}", 0), delay)
            self.last_error = str(exc)
            self.spool.failed(delivery.item.id, self.target.name, time.time() + delay)
            return delay
        self._failures_in_a_row = 0
        sent.append(delivery.item.id)
        size = len(delivery.item.jpeg)
        self.count_sent([delivery.item])
        if self.bandwidth:  # stay under the cap on average
            pause = size / self.bandwidth - (time.monotonic() - started)
            if pause > 0:
                self._acknowledge(sent)
                self._stop.wait(pause)
        return None
