"""Active learning: strategies on real model outputs, limits across restarts, near-duplicates, the spool
under kill -9, and the folder (YOLO), HTTP (a real loopback server speaking the upload API) and MQTT
(a real mosquitto) targets."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from pydantic import TypeAdapter

from brokers import mosquitto_binary
from edge_agent.active_learning.sampling import wants
from helpers import circle_video, wait
from servers import free_port


@pytest.fixture(scope="module")
def detector() -> Any:
    import edge_agent

    return edge_agent.get_model("shapes/1")


@pytest.fixture(scope="module")
def scenes() -> list[np.ndarray]:
    from edge_agent.demo.shapes import generate_scene

    return [generate_scene(seed, size=(240, 320)).image for seed in range(12)]


def strategy(**spec: Any) -> Any:
    from edge_agent.sampling_strategies import Strategy

    return TypeAdapter(Strategy).validate_python({"name": spec.pop("name", "s"), **spec})


def event(image: np.ndarray, result: Any, source: str = "cam", frame: int = 1) -> Any:
    from edge_agent.events import PredictionEvent

    now = time.time()
    return PredictionEvent(source, "shapes/1", frame, now, now, result, None, image)


def test_strategies_on_real_detections(detector: Any, scenes: list[np.ndarray]) -> None:
    rng = random.Random(1)
    results = [detector.infer_numpy(image, confidence=0.3) for image in scenes]
    result = next(r for r in results if len(r) >= 2)
    n = len(result)
    assert wants(strategy(type="random", traffic_percentage=1.0), result, rng)
    assert not wants(strategy(type="random", traffic_percentage=0.0), result, rng)
    kept = sum(wants(strategy(type="random", traffic_percentage=0.3), result, rng) for _ in range(2000))
    assert 500 < kept < 700
    conf = float(result.confidence[0])
    near = strategy(type="close_to_threshold", threshold=conf, epsilon=0.001)
    assert wants(near, result, rng)
    assert not wants(strategy(type="close_to_threshold", threshold=conf, epsilon=0.001,
                              minimum_objects_close_to_threshold=n + 1), result, rng)
    far = [c for c in (0.05, 0.15) if not ((result.confidence >= c - 0.02) & (result.confidence <= c + 0.02)).any()]
    assert not wants(strategy(type="close_to_threshold", threshold=far[0], epsilon=0.02), result, rng)
    other = next(name for name in result.class_names if name not in result.class_name)
    assert not wants(strategy(type="close_to_threshold", threshold=conf, epsilon=0.001,
                              selected_class_names=[other]), result, rng)
    assert wants(strategy(type="detections_number_based", more_than=n - 1), result, rng)
    assert not wants(strategy(type="detections_number_based", more_than=n), result, rng)
    assert wants(strategy(type="detections_number_based", less_than=n + 1), result, rng)
    assert not wants(strategy(type="detections_number_based", less_than=n), result, rng)
    first = result.class_name[0]
    count_first = result.class_name.count(first)
    assert wants(strategy(type="detections_number_based", more_than=count_first - 1,
                          selected_class_names=[first]), result, rng)
    assert not wants(strategy(type="detections_number_based", more_than=count_first,
                              selected_class_names=[first]), result, rng)
    assert not wants(strategy(type="classes_based", selected_class_names=["circle"]), result, rng)  # not a classifier


def test_classes_based_and_close_to_threshold_on_a_real_classifier() -> None:
    import edge_agent
    from edge_agent.demo.shapes import generate_classification

    model = edge_agent.get_model("shapes-cls/1")
    image, _ = generate_classification(3)
    result = model.infer_numpy(image)
    top_name, top_conf = result.class_names[result.top[0]], result.top[1]
    rng = random.Random(0)
    assert wants(strategy(type="classes_based", selected_class_names=[top_name]), result, rng)
    others = [n for n in result.class_names if n != top_name]
    assert not wants(strategy(type="classes_based", selected_class_names=others), result, rng)
    assert wants(strategy(type="close_to_threshold", threshold=top_conf, epsilon=0.001), result, rng)
    second = float(np.sort(result.confidence)[-2])
    assert not wants(strategy(type="close_to_threshold", threshold=second, epsilon=0.0001), result, rng)
    assert wants(strategy(type="close_to_threshold", threshold=second, epsilon=0.0001, only_top_classes=False),
                          result, rng)


def _spool(tmp_path: Path) -> Any:
    from edge_agent.active_learning.spool import Spool

    return Spool(tmp_path / "spool.sqlite3", 1000, 1 << 30)


def _sampler(tmp_path: Path, strategies: list[Any], targets: tuple[str, ...] = ("folder",), **options: Any) -> Any:
    from edge_agent.active_learning.sampler import Sampler

    sampler = Sampler(strategies, _spool(tmp_path), targets, seed=0, **options)
    sampler.start()
    return sampler


def test_limits_hold_across_a_restart_and_near_duplicates_are_skipped(tmp_path: Path, detector: Any,
                                                                      scenes: list[np.ndarray]) -> None:
    every = strategy(type="random", traffic_percentage=1.0, name="every",
                     limits=[{"type": "daily", "value": 3}, {"type": "hourly", "value": 100}])
    sampler = _sampler(tmp_path, [every])
    for image in scenes[:5]:
        sampler(event(image, detector.infer_numpy(image)))
    sampler.stop()
    assert sampler.stats["stored"] == 3
    assert sampler.stats["skipped_limit"] == 2
    again = _sampler(tmp_path, [every])  # the daemon restarted: the day's count was kept
    for image in scenes[5:7]:
        again(event(image, detector.infer_numpy(image)))
    again.stop()
    assert again.stats["stored"] == 0
    assert again.stats["skipped_limit"] == 2
    assert again.spool.stats()["items"] == 3
    counts = again.spool.limit_counts()
    assert counts[("every", "daily")][1] == 3
    assert counts[("every", "hourly")][1] == 3

    dedup = _sampler(tmp_path / "dedup", [strategy(type="random", traffic_percentage=1.0)], dedup_distance=6)
    still = scenes[0]
    noisy = np.clip(still.astype(np.int16) + np.random.default_rng(0).integers(-3, 4, still.shape), 0, 255)
    for image in (still, noisy.astype(np.uint8), still, scenes[1]):  # a static camera, then a new scene
        dedup(event(image, detector.infer_numpy(image)))
    dedup.stop()
    assert dedup.stats["stored"] == 2
    assert dedup.stats["skipped_duplicate"] == 2


def test_the_yolo_folder_loads_back_with_the_right_boxes(tmp_path: Path, detector: Any,
                                                         scenes: list[np.ndarray]) -> None:
    import cv2

    from edge_agent.active_learning.uploaders import FolderTarget, Uploader

    sampler = _sampler(tmp_path, [strategy(type="random", traffic_percentage=1.0)], max_image_size=160)
    results = {}
    for i, image in enumerate(scenes[:4]):
        result = detector.infer_numpy(image)
        results[i] = result
        sampler(event(image, result, frame=i))
    sampler.stop()
    uploader = Uploader(sampler.spool, FolderTarget(tmp_path / "dataset"), retry_min_s=0.1, retry_max_s=0.5)
    uploader.start()
    wait(lambda: sampler.spool.stats()["items"] == 0)
    uploader.stop()
    base = tmp_path / "dataset" / "shapes-1"
    names = [line.split(": ", 1)[1].strip('"') for line in (base / "data.yaml").read_text().splitlines()
             if line.startswith("  ")]
    assert names == list(detector.manifest.class_names)
    images = sorted((base / "images").glob("*.jpg"))
    assert len(images) == 4
    loaded = []
    for path in images:
        image = cv2.imread(str(path))
        assert image.shape[:2] == (120, 160)  # stored at max_image_size (longest side 160)
        rows = [line.split() for line in (base / "labels" / f"{path.stem}.txt").read_text().splitlines()]
        boxes = sorted((names[int(r[0])], float(r[1]) * 320, float(r[2]) * 240, float(r[3]) * 320,
                        float(r[4]) * 240) for r in rows)  # back in the original image's pixels
        loaded.append(boxes)
    expected = []
    for result in results.values():
        xyxy = result.xyxy
        expected.append(sorted((result.class_names[c], (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0)
                               for c, (x0, y0, x1, y1) in zip(result.class_id, xyxy)))
    assert sorted(len(b) for b in loaded) == sorted(len(b) for b in expected)
    for boxes in loaded:
        match = next(e for e in expected if len(e) == len(boxes) and all(a[0] == b[0] for a, b in zip(boxes, e)))
        for got, want in zip(boxes, match):
            assert np.allclose(got[1:], want[1:], atol=2.5), (got, want)  # 0.1 px rounding at half scale


class UploadApi:
    """A loopback HTTP server in the shape of Roboflow's dataset upload API, recording what it got.
    ``fail_first``: answer that many requests with 503 first."""

    def __init__(self, port: int, fail_first: int = 0) -> None:
        self.images: dict[str, bytes] = {}
        self.annotations: dict[str, dict[str, Any]] = {}
        self.queries: list[dict[str, list[str]]] = []
        self.fail_first = fail_first
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                url = urlsplit(self.path)
                query = parse_qs(url.query)
                api.queries.append(query)
                if api.fail_first > 0:
                    api.fail_first -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                parts = url.path.strip("/").split("/")
                if query.get("api_key") != ["k3y"]:
                    self._answer(401, {"error": "bad key"})
                elif parts[:3] == ["dataset", "proj", "upload"]:
                    name = query["name"][0]
                    jpeg = body[body.index(b"\r\n\r\n") + 4: body.rindex(b"\r\n--")]
                    duplicate = name in api.images
                    api.images[name] = jpeg
                    self._answer(200, {"success": True, "id": f"img-{name}", "duplicate": duplicate})
                elif parts[:3] == ["dataset", "proj", "annotate"]:
                    api.annotations[parts[3]] = json.loads(body)
                    self._answer(200, {"success": True})
                else:
                    self._answer(404, {"error": "no such route"})

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_an_http_target_outage_loses_nothing_and_uploads_each_item_once(tmp_path: Path, detector: Any,
                                                                       scenes: list[np.ndarray]) -> None:
    from edge_agent.active_learning.uploaders import HttpTarget, Uploader

    port = free_port()  # nothing listens there yet: the uplink is down
    sampler = _sampler(tmp_path, [strategy(type="random", traffic_percentage=1.0, tags=["night"])], targets=("http",))
    for i, image in enumerate(scenes[:5]):
        sampler(event(image, detector.infer_numpy(image), frame=i))
    sampler.stop()
    target = HttpTarget(f"http://127.0.0.1:{port}", "proj", "k3y", "batch-1")
    uploader = Uploader(sampler.spool, target, retry_min_s=0.05, retry_max_s=0.2)
    uploader.start()
    wait(lambda: uploader.stats["failures"] >= 5)  # refused, retried with backoff, kept
    assert sampler.spool.stats()["items"] == 5
    assert "Connection refused" in uploader.last_error
    api = UploadApi(port, fail_first=3)  # back, and still flaky at first
    try:
        wait(lambda: sampler.spool.stats()["items"] == 0, timeout=30)
    finally:
        uploader.stop()
        api.close()
    assert len(api.images) == 5
    assert len(api.annotations) == 5
    assert sorted(api.annotations) == sorted(f"img-{name}" for name in api.images)
    for name, jpeg in api.images.items():
        assert jpeg.startswith(b"\xff\xd8")
        assert name.endswith(".jpg")
    annotation = next(iter(api.annotations.values()))
    assert annotation["model_id"] == "shapes/1"
    assert isinstance(annotation["predictions"], list)
    uploads = [q for q in api.queries if "split" in q]
    for q in uploads:
        assert q["batch"] == ["batch-1"], q
        assert "night" in q["tag"], q
        assert "source:cam" in q["tag"], q


WRITER = """
import sys, time, uuid
from pathlib import Path
from edge_agent.active_learning.spool import Item, Spool
spool = Spool(Path(sys.argv[1]), 10**6, 10**12)
print("ready", flush=True)
i = 0
while True:
    spool.add(Item(str(uuid.uuid4()), time.time(), "cam", "shapes/1", "s", 8, 8, b"\\xff\\xd8" + bytes(20000),
                   {"image": {"width": 8, "height": 8}, "predictions": [], "n": i}, ("a",)), ("folder",),
              {("s", "daily"): ("2026-01-01", 1)})  # one more in the bucket
    i += 1
"""


def test_kill_9_during_writes_leaves_the_spool_consistent_and_each_item_is_uploaded_once(tmp_path: Path) -> None:
    from edge_agent.active_learning.spool import Spool
    from edge_agent.active_learning.uploaders import FolderTarget, Uploader

    path = tmp_path / "spool.sqlite3"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"ready"
    time.sleep(0.7)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    items, pending = db.execute("SELECT COUNT(*), (SELECT COUNT(*) FROM pending) FROM items").fetchone()
    ns = sorted(json.loads(p)["n"] for (p,) in db.execute("SELECT predictions FROM items"))
    limit = db.execute("SELECT count FROM limits").fetchone()[0]
    db.close()
    assert items > 0
    assert items == pending  # each committed item with its delivery, none half-written
    assert ns == list(range(items))
    assert limit == items  # the limit count was written with each item
    spool = Spool(path, 10**6, 10**12)
    uploader = Uploader(spool, FolderTarget(tmp_path / "dataset"), retry_min_s=0.1)
    uploader.start()
    wait(lambda: spool.stats()["items"] == 0, timeout=60)
    uploader.stop()
    files = list((tmp_path / "dataset" / "shapes-1" / "images").glob("*.jpg"))
    assert len(files) == items
    assert uploader.stats["uploaded"] == items


def test_bounds_evict_the_oldest_and_count_them(tmp_path: Path) -> None:
    from edge_agent.active_learning.spool import Item, Spool

    spool = Spool(tmp_path / "s.sqlite3", max_items=3, max_bytes=1 << 30)
    for i in range(5):
        spool.add(Item(f"id{i}", float(i), "cam", "m/1", "s", 8, 8, b"x" * 100, {"image": {}}, ("a",)),
                  ("folder",), {})
    assert [d.item.id for d in spool.due("folder")] == ["id2", "id3", "id4"]
    assert spool.stats()["evicted"] == 2
    assert spool.stats()["pending_folder"] == 3


def test_an_item_goes_when_its_last_target_acknowledged_it_in_a_batch(tmp_path: Path) -> None:
    """The uploader acknowledges a batch in one transaction; an item another target still waits for
    stays, and the bounds are counted from what stays."""
    from edge_agent.active_learning.spool import Item, Spool

    spool = Spool(tmp_path / "s.sqlite3", max_items=100, max_bytes=1 << 30)
    for i in range(4):
        spool.add(Item(f"id{i}", float(i), "cam", "m/1", "s", 8, 8, b"x" * 100, {"image": {}}, ("a",)),
                  ("folder", "http"), {})
    spool.delivered_many(["id0", "id1", "id2"], "folder")
    spool.delivered_many(["id1"], "http")
    assert [d.item.id for d in spool.due("folder")] == ["id3"]
    assert [d.item.id for d in spool.due("http")] == ["id0", "id2", "id3"]
    assert spool.stats()["items"] == 3


@pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto is not installed (.ci/run does)")
def test_a_pipeline_samples_into_the_dataset_and_mqtt(tmp_path: Path) -> None:
    """The whole path in the daemon's runtime: a pipeline's frames, a strategy, the spool, two targets
    (the folder and a real mosquitto through the bridge's outbox)."""
    from brokers import Mosquitto, Subscriber, validator
    from edge_agent.runtime import Runtime
    from edge_agent.settings import load_settings

    broker = Mosquitto(tmp_path / "broker").start()
    video = tmp_path / "v.mp4"
    circle_video(video, frames=20)
    config = tmp_path / "config.toml"
    config.write_text(f"""
[paths]
state_dir = "{tmp_path / 'state'}"
[mqtt]
enabled = true
host = "127.0.0.1"
port = {broker.port}
device_id = "al1"
telemetry_interval_s = 0
[active_learning]
enabled = true
targets = ["folder", "mqtt"]
dedup_distance = 0
thread_priority = "normal"  # "idle" may wait long for a core while other tests keep both busy
[[active_learning.strategies]]
name = "some"
type = "detections_number_based"
more_than = 0
selected_class_names = ["circle"]
limits = [{{type = "daily", value = 7}}]
[active_learning.batching_strategy]
batches_name_prefix = "door-cam"
recreation_interval = "monthly"
""")
    months = {time.strftime("door-cam_%Y_%m_01", time.gmtime())}
    sub = Subscriber(broker.port, ["edge-agent/al1/active_learning/#"])
    runtime = Runtime(load_settings(config, {}))
    runtime.start()
    try:
        from edge_agent.pipeline_spec import PipelineSpec

        pipeline = runtime.pipelines.start(PipelineSpec(model_id="shapes/1", video_reference=str(video),
                                                      pipeline_id="door"))
        pipeline.join(60)
        messages = sub.wait_count("edge-agent/al1/active_learning/door", 7, timeout=30)
        wait(lambda: runtime.active_learning.spool.stats()["items"] == 0)
        status = runtime.status()["active_learning"]
        from edge_agent.mqtt.topics import envelope

        telemetry = {**envelope("al1"), **runtime.telemetry(), "mqtt": runtime.bridge.snapshot()}
        metrics = runtime.metrics.render().decode()
    finally:
        runtime.stop()
        sub.close()
        broker.stop()
    months.add(time.strftime("door-cam_%Y_%m_01", time.gmtime()))  # the test may have run over midnight
    assert status["sampler"]["stored"] == 7
    assert status["sampler"]["skipped_limit"] == 13
    assert status["targets"]["mqtt"]["uploaded"] == 7
    assert status["targets"]["folder"]["uploaded"] == 7
    validator("telemetry").validate(telemetry)
    assert telemetry["active_learning"]["sampler"]["stored"] == 7
    assert 'edge_agent_active_learning_uploaded_total{target="mqtt"} 7.0' in metrics
    assert 'edge_agent_active_learning_frames_total{outcome="skipped_limit"} 13.0' in metrics
    body = messages[0].json()
    import base64

    import cv2

    validator("active_learning").validate(body)
    frame = cv2.imdecode(np.frombuffer(base64.b64decode(body["image"]["base64"]), np.uint8), cv2.IMREAD_COLOR)
    assert frame.shape[:2] == (240, 320)
    assert body["source_id"] == "door"
    assert body["strategy"] == "some"
    assert any(p["class"] == "circle" for p in body["predictions"]["predictions"]), body["predictions"]
    (batch,) = {m.json()["batch"] for m in messages}  # Roboflow's batch name, in every sample
    assert batch in months
    assert len(list((tmp_path / "state" / "dataset" / "shapes-1" / batch / "images").glob("*.jpg"))) == 7


def test_the_bandwidth_cap_spreads_uploads(tmp_path: Path) -> None:
    """3 x 50 kB at 100 kB/s cannot take less than 1.5 s (a lower bound: never flaky on a slow machine)."""
    from edge_agent.active_learning.spool import Item, Spool
    from edge_agent.active_learning.uploaders import FolderTarget, Uploader

    spool = Spool(tmp_path / "s.sqlite3", 100, 1 << 30)
    for i in range(3):
        spool.add(Item(f"id{i}", float(i), "cam", "m/1", "s", 8, 8, b"\xff\xd8" + bytes(50_000),
                       {"image": {"width": 8, "height": 8}, "predictions": []}, ("a",)), ("folder",), {})
    uploader = Uploader(spool, FolderTarget(tmp_path / "dataset"), bandwidth_bytes_s=100_000)
    t0 = time.monotonic()
    uploader.start()
    wait(lambda: spool.stats()["items"] == 0)
    uploader.stop()
    assert time.monotonic() - t0 >= 1.0  # the first two pauses at least (the third may end after the check)
    assert uploader.stats == {"uploaded": 3, "failures": 0, "bytes": 150_006}


# ------------------------------------------------------------------ switches: per request, batching


def _metric(url: str, outcome: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    line = f'edge_agent_active_learning_frames_total{{outcome="{outcome}"}} '
    return float(next(row for row in text.splitlines() if row.startswith(line)).split()[-1])


def test_disable_active_learning_on_v2_and_v1_requests_over_the_real_server(tmp_path: Path) -> None:
    """Roboflow's per-request switch, as its own client sends it: a request that carries
    ``disable_active_learning`` is never sampled (v2 body, v1 query, v1 JSON body); one without is."""
    import base64
    import urllib.request

    import cv2
    from inference_sdk import InferenceConfiguration, InferenceHTTPClient

    from edge_agent.demo.shapes import generate_scene
    from servers import running_server

    config = tmp_path / "config.toml"
    config.write_text("""
[active_learning]
enabled = true
sample_http_requests = true
dedup_distance = 0
thread_priority = "normal"  # "idle" may wait long for a core while other tests keep both busy
[[active_learning.strategies]]
name = "every"
type = "random"
traffic_percentage = 1.0
""")
    images = [generate_scene(seed, size=(240, 320)).image for seed in range(7)]
    off, on = InferenceConfiguration(disable_active_learning=True), InferenceConfiguration()
    with running_server(tmp_path / "state", env_extra={"EDGE_AGENT_CONFIG": str(config)}) as server:
        v2 = InferenceHTTPClient(server.url, api_key="k")
        v1 = InferenceHTTPClient(server.url, api_key="k").select_api_v0()
        assert v2.configure(off).infer(images[0], model_id="shapes/1")["predictions"]
        v2.configure(off).infer([images[1], images[2]], model_id="shapes/1")  # a batch: none of it
        assert v1.configure(off).infer(images[3], model_id="shapes/1")["predictions"]
        body = json.dumps({"image": {"type": "base64", "value": base64.b64encode(
            cv2.imencode(".jpg", images[4])[1].tobytes()).decode()}, "disable_active_learning": True}).encode()
        request = urllib.request.Request(f"{server.url}/shapes/1?api_key=k", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as r:
            assert json.loads(r.read())["predictions"]
        assert _metric(server.url, "skipped_disabled") == 5
        assert _metric(server.url, "considered") == 0
        v2.configure(on).infer(images[5], model_id="shapes/1")
        v1.configure(on).infer(images[6], model_id="shapes/1")
        assert _metric(server.url, "considered") == 2
        wait(lambda: _metric(server.url, "stored") == 2)
        dataset = tmp_path / "state" / "dataset" / "shapes-1" / "images"
        wait(lambda: len(list(dataset.glob("*.jpg"))) == 2)
        assert _metric(server.url, "skipped_disabled") == 5


def test_batch_names_follow_roboflows_recreation_intervals() -> None:
    from edge_agent.active_learning.sampling import batch_base, batch_name
    from edge_agent.settings import BatchingStrategy

    thursday = time.strptime("2026-12-03 23:59", "%Y-%m-%d %H:%M")
    names = {interval: batch_base(BatchingStrategy(batches_name_prefix="al_batch", recreation_interval=interval),
                                  thursday) for interval in ("never", "daily", "weekly", "monthly")}
    assert names == {"never": "al_batch", "daily": "al_batch_2026_12_03", "weekly": "al_batch_2026_11_30",
                     "monthly": "al_batch_2026_12_01"}
    skip = BatchingStrategy(batches_name_prefix="b", max_batch_images=2)
    roll = BatchingStrategy(batches_name_prefix="b", max_batch_images=2, when_full="next_batch")
    assert [batch_name(skip, "b", n) for n in range(4)] == ["b", "b", None, None]
    assert [batch_name(roll, "b", n) for n in range(5)] == ["b", "b", "b_2", "b_2", "b_3"]
    assert batch_name(BatchingStrategy(batches_name_prefix="b"), "b", 10**6) == "b"


def test_batches_roll_over_persist_across_a_restart_and_reach_each_target(tmp_path: Path, detector: Any,
                                                                          scenes: list[np.ndarray]) -> None:
    from edge_agent.active_learning.uploaders import FolderTarget, HttpTarget, Uploader
    from edge_agent.settings import BatchingStrategy

    every = [strategy(type="random", traffic_percentage=1.0)]
    roll = BatchingStrategy(batches_name_prefix="yard", recreation_interval="daily", max_batch_images=2,
                            when_full="next_batch")
    today = time.strftime("yard_%Y_%m_%d", time.gmtime())
    sampler = _sampler(tmp_path, every, ("folder", "http"), batching=roll)
    for i, image in enumerate(scenes[:3]):
        sampler(event(image, detector.infer_numpy(image), frame=i))
    sampler.stop()
    again = _sampler(tmp_path, every, ("folder", "http"), batching=roll)  # a restart: the count was kept
    for i, image in enumerate(scenes[3:5]):
        again(event(image, detector.infer_numpy(image), frame=i))
    again.stop()
    batches = sorted(d.item.batch for d in again.spool.due("folder"))
    assert batches == sorted([today, today, f"{today}_2", f"{today}_2", f"{today}_3"])

    port = free_port()
    api = UploadApi(port)
    uploaders = [Uploader(again.spool, HttpTarget(f"http://127.0.0.1:{port}", "proj", "k3y", "unused")),
                 Uploader(again.spool, FolderTarget(tmp_path / "dataset"))]
    for uploader in uploaders:
        uploader.start()
    try:
        wait(lambda: again.spool.stats()["items"] == 0)
    finally:
        for uploader in uploaders:
            uploader.stop()
        api.close()
    assert sorted(q["batch"][0] for q in api.queries if "split" in q) == batches
    base = tmp_path / "dataset" / "shapes-1"
    assert {p.name: len(list((p / "images").glob("*.jpg"))) for p in base.iterdir()} == {
        today: 2, f"{today}_2": 2, f"{today}_3": 1}
    assert (base / today / "data.yaml").exists()


def test_a_full_batch_skips_until_the_next_interval(tmp_path: Path, detector: Any,
                                                    scenes: list[np.ndarray]) -> None:
    """Roboflow's meaning of max_batch_images: once the batch is full nothing more is sampled; the
    count of an earlier interval's batch does not count against today's."""
    from edge_agent.active_learning.spool import Item, Spool
    from edge_agent.settings import BatchingStrategy

    spool = Spool(tmp_path / "spool.sqlite3", 1000, 1 << 30)  # yesterday's batch, full
    empty = {"image": {"width": 8, "height": 8}, "predictions": []}
    spool.add(Item("old", 0.0, "cam", "shapes/1", "s", 8, 8, b"\xff\xd8", empty, (), (), "d_2000_01_01"),
              ("folder",), {("*batch", "shapes/1"): ("d_2000_01_01", 2)})
    spool.close()
    daily = BatchingStrategy(batches_name_prefix="d", recreation_interval="daily", max_batch_images=2)
    sampler = _sampler(tmp_path, [strategy(type="random", traffic_percentage=1.0)], batching=daily)
    for i, image in enumerate(scenes[:4]):
        sampler(event(image, detector.infer_numpy(image), frame=i))
    sampler.stop()
    assert sampler.stats["stored"] == 2
    assert sampler.stats["skipped_batch_full"] == 2
    assert sampler.stats["considered"] == 4
    today = time.strftime("d_%Y_%m_%d", time.gmtime())
    assert sorted(d.item.batch for d in sampler.spool.due("folder")) == ["d_2000_01_01", today, today]


def test_a_spool_made_before_batches_opens_and_keeps_its_items(tmp_path: Path) -> None:
    from edge_agent.active_learning.spool import SCHEMA, Spool

    path = tmp_path / "spool.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(SCHEMA.replace(",\n    batch       TEXT    NOT NULL DEFAULT ''", ""))
    db.execute("INSERT INTO items (id, created, source_id, model_id, strategy, width, height, jpeg, predictions, "
               "class_names, tags, size) VALUES ('a', 0, 'cam', 'm/1', 's', 8, 8, x'ffd8', "
               "'{\"image\": {\"width\": 8, \"height\": 8}, \"predictions\": []}', '[]', '[]', 2)")
    db.execute("INSERT INTO pending (item_id, target) VALUES ('a', 'folder')")
    db.commit()
    assert "batch" not in {row[1] for row in db.execute("PRAGMA table_info(items)")}
    db.close()
    (delivery,) = Spool(path, 10, 1 << 30).due("folder")
    assert (delivery.item.id, delivery.item.batch) == ("a", "")


def test_config_check_accepts_roboflows_batching_strategy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Roboflow's documented example configuration, in TOML, passes ``config check``; mistakes name the key."""
    from edge_agent.cli import main

    config = tmp_path / "config.toml"
    config.write_text("""
[active_learning]
enabled = true
max_image_size = 1200
jpeg_quality = 75
[active_learning.batching_strategy]
batches_name_prefix = "al_batch"
recreation_interval = "daily"
max_batch_images = 1000
[[active_learning.strategies]]
name = "default_strategy"
type = "random"
traffic_percentage = 0.1
""")
    assert main(["--config", str(config), "config", "check"]) == 0
    capsys.readouterr()
    assert main(["--config", str(config), "config", "show"]) == 0
    assert json.loads(capsys.readouterr().out)["active_learning"]["batching_strategy"] == {
        "batches_name_prefix": "al_batch", "recreation_interval": "daily", "max_batch_images": 1000,
        "when_full": "skip"}
    config.write_text(config.read_text().replace('"daily"', '"hourly"'))
    assert main(["--config", str(config), "config", "check"]) == 2
    err = capsys.readouterr().err
    assert f"{config} line 6: active_learning.batching_strategy.recreation_interval: Input should be 'never', " \
           "'daily', 'weekly' or 'monthly' (got 'hourly')" in err
    config.write_text(config.read_text().replace('"hourly"', '"weekly"').replace(
        "jpeg_quality = 75", 'jpeg_quality = 75\nhttp_batch_name = "other"'))
    assert main(["--config", str(config), "config", "check"]) == 2
    assert "set either http_batch_name or batching_strategy.batches_name_prefix" in capsys.readouterr().err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread scheduling is Linux's")
@pytest.mark.parametrize(("priority", "expected"), [(None, ("other", 10)), ("low", ("other", 10)),
                                                    ("idle", ("idle", 0)), ("normal", ("other", 0))])
def test_the_writer_runs_at_the_configured_priority_and_uploaders_at_normal(
        tmp_path: Path, priority: str | None, expected: tuple[str, int]) -> None:
    """By default the writer runs at nice +10 ("low"); "idle" is SCHED_IDLE. Uploaders, the folder's
    and the http target's, keep the normal priority whatever the setting."""
    from edge_agent.active_learning import ActiveLearning
    from edge_agent.settings import ActiveLearningSettings

    options = {} if priority is None else {"thread_priority": priority}
    al = ActiveLearning(ActiveLearningSettings(enabled=True, targets=("folder", "http"), strategies=(
        strategy(type="random", traffic_percentage=1.0),), http_base_url="http://127.0.0.1:9", http_project="p",
        **options), tmp_path)
    names = {os.SCHED_IDLE: "idle", os.SCHED_OTHER: "other"}
    own = os.getpriority(os.PRIO_PROCESS, 0)
    al.start()
    try:
        threads = (al.sampler._thread, al.uploaders[0]._thread, al.uploaders[1]._thread)
        assert [u.target.name for u in al.uploaders] == ["folder", "http"]
        ids = [t.native_id for t in threads if t is not None]

        def seen() -> list[tuple[str, int]]:
            return [(names.get(os.sched_getscheduler(i), "?"), os.getpriority(os.PRIO_PROCESS, i) - own)
                    for i in ids if i is not None]

        wait(lambda: seen() == [expected, ("other", 0), ("other", 0)], timeout=10)  # each thread sets its own
    finally:
        al.stop()


def test_batches_are_counted_per_model(tmp_path: Path, detector: Any, scenes: list[np.ndarray]) -> None:
    """Roboflow configures active learning per model, each with its own batch: one model's full batch
    does not stop another's samples."""
    from edge_agent.events import PredictionEvent
    from edge_agent.settings import BatchingStrategy

    skip = BatchingStrategy(batches_name_prefix="b", max_batch_images=2)
    sampler = _sampler(tmp_path, [strategy(type="random", traffic_percentage=1.0)], batching=skip)
    now = time.time()
    for i, image in enumerate(scenes[:6]):
        model_id = "shapes/1" if i < 3 else "other/2"
        sampler(PredictionEvent("cam", model_id, i, now, now, detector.infer_numpy(image), None, image))
    sampler.stop()
    assert sampler.stats["stored"] == 4
    assert sampler.stats["skipped_batch_full"] == 2
    counts = sampler.spool.limit_counts()
    assert counts[("*batch", "shapes/1")] == ("b", 2)
    assert counts[("*batch", "other/2")] == ("b", 2)


def test_two_processes_on_one_state_dir_upload_once_and_their_counts_add_up(
        tmp_path: Path, detector: Any, scenes: list[np.ndarray], caplog: pytest.LogCaptureFixture) -> None:
    """The daemon and a Python-API pipeline on one state directory: both sample into the spool, only
    the holder of uploaders.lock uploads (each item once), and the limit counts are the sum of both."""
    import logging

    from edge_agent.active_learning import ActiveLearning
    from edge_agent.settings import ActiveLearningSettings

    port = free_port()
    api = UploadApi(port)
    limited = strategy(type="random", traffic_percentage=1.0, name="every",
                       limits=[{"type": "daily", "value": 100}])
    settings = ActiveLearningSettings(enabled=True, targets=("http",), strategies=(limited,),
                                      http_base_url=f"http://127.0.0.1:{port}", http_project="proj",
                                      http_api_key="k3y", dedup_distance=0, retry_min_s=0.05, retry_max_s=0.1)
    first, second = ActiveLearning(settings, tmp_path), ActiveLearning(settings, tmp_path)
    with caplog.at_level(logging.INFO, logger="edge_agent.active_learning"):
        first.start()
        second.start()
    try:
        assert (first.uploading, second.uploading) == (True, False)
        assert "another process holds" in caplog.text
        for i, image in enumerate(scenes[:4]):
            result = detector.infer_numpy(image)
            first.sampler(event(image, result, frame=i))
            second.sampler(event(image, result, source="cam2", frame=i))
        wait(lambda: first.sampler.stats["stored"] == second.sampler.stats["stored"] == 4, timeout=60)
        wait(lambda: first.spool.stats()["items"] == 0, timeout=60)
        assert first.spool.limit_counts()[("every", "daily")][1] == 8  # 4 + 4, not whichever wrote last
    finally:
        second.stop()
        first.stop()
        api.close()
    uploads = [q["name"][0] for q in api.queries if "split" in q]
    assert len(uploads) == 8
    assert len(set(uploads)) == 8  # each item once
    assert second.uploaders[0].stats["uploaded"] == 0


def test_stop_never_writes_beside_a_writer_that_is_still_busy(tmp_path: Path, detector: Any,
                                                              scenes: list[np.ndarray],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer stuck in a write past stop's waits keeps the queue: stop() must not drain it beside the
    writer (two writers on one spool: "database is locked")."""
    from edge_agent.active_learning import sampler as sampler_module
    from edge_agent.active_learning.sampler import Sampler
    from edge_agent.active_learning.spool import Spool

    class SlowSpool(Spool):
        release = threading.Event()
        writing = 0
        most = 0

        def add_many(self, entries: Any, targets: Any) -> int:
            SlowSpool.writing += 1
            SlowSpool.most = max(SlowSpool.most, SlowSpool.writing)
            try:
                SlowSpool.release.wait(30)
                return super().add_many(entries, targets)
            finally:
                SlowSpool.writing -= 1

    monkeypatch.setattr(sampler_module, "WRITE_WAIT_S", 0.2)
    spool = SlowSpool(tmp_path / "spool.sqlite3", 1000, 1 << 30)
    sampler = Sampler([strategy(type="random", traffic_percentage=1.0)], spool, ("folder",), seed=0,
                      dedup_distance=0)
    sampler.start()
    sampler(event(scenes[0], detector.infer_numpy(scenes[0]), frame=0))
    wait(lambda: SlowSpool.writing == 1)  # the writer is in its write
    for i, image in enumerate(scenes[1:4], 1):
        sampler(event(image, detector.infer_numpy(image), frame=i))
    sampler.stop(timeout=0.1)  # the writer is still busy after both waits
    assert SlowSpool.most == 1 and sampler.stats["stored"] == 0
    SlowSpool.release.set()
    wait(lambda: sampler.stats["stored"] == 1)  # the writer ends after the frame in its hands
    sampler.stop()  # now it is gone: the three queued frames are written here
    assert sampler.stats["stored"] == 4
    assert SlowSpool.most == 1


def test_the_writer_writes_the_folder_itself_and_the_spool_keeps_only_counts_and_other_targets(
        tmp_path: Path, detector: Any, scenes: list[np.ndarray]) -> None:
    """The folder target is written by the sampler's writer (no JPEG through SQLite, no uploader in
    between); the limit counts still go to the spool; another target still gets its deliveries there."""
    import cv2

    from edge_agent.active_learning.uploaders import FolderTarget, Uploader

    limited = strategy(type="random", traffic_percentage=1.0, name="every", limits=[{"type": "daily", "value": 50}])
    folder = FolderTarget(tmp_path / "dataset")
    counted = Uploader(_spool(tmp_path), folder)
    sampler = _sampler(tmp_path, [limited], targets=("folder", "http"), direct=folder, on_direct=counted.count_sent)
    for i, image in enumerate(scenes[:5]):
        sampler(event(image, detector.infer_numpy(image), frame=i))
    sampler.stop()
    assert sampler.stats["stored"] == 5
    images = sorted((tmp_path / "dataset" / "shapes-1" / "images").glob("*.jpg"))
    labels = sorted((tmp_path / "dataset" / "shapes-1" / "labels").glob("*.txt"))
    assert len(images) == len(labels) == 5
    assert all(cv2.imread(str(p)) is not None for p in images)
    assert (tmp_path / "dataset" / "shapes-1" / "data.yaml").read_text().startswith("path: .")
    assert not list((tmp_path / "dataset").rglob("*.tmp"))  # no temp file left behind
    stats = sampler.spool.stats()
    assert stats["items"] == 5 and stats.get("pending_http") == 5 and "pending_folder" not in stats
    assert counted.stats["uploaded"] == 5 and counted.stats["bytes"] == sum(p.stat().st_size for p in images)
    assert sampler.spool.limit_counts()[("every", "daily")][1] == 5

    only_folder = _sampler(tmp_path / "only", [limited], direct=FolderTarget(tmp_path / "only" / "dataset"))
    for i, image in enumerate(scenes[:3]):
        only_folder(event(image, detector.infer_numpy(image), frame=i))
    only_folder.stop()
    assert only_folder.spool.stats()["items"] == 0  # nothing waits: the folder has them
    assert len(list((tmp_path / "only" / "dataset" / "shapes-1" / "images").glob("*.jpg"))) == 3
    assert only_folder.spool.limit_counts()[("every", "daily")][1] == 3  # and the limit still counts them


def test_frames_the_writer_cannot_write_to_the_folder_wait_in_the_spool_for_its_uploader(
        tmp_path: Path, detector: Any, scenes: list[np.ndarray], caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from edge_agent.active_learning.uploaders import FolderTarget, Uploader

    blocked = tmp_path / "dataset"
    blocked.write_text("a file where the folder should be")  # the folder cannot be made
    folder = FolderTarget(blocked)
    with caplog.at_level(logging.WARNING, logger="edge_agent.active_learning"):
        sampler = _sampler(tmp_path, [strategy(type="random", traffic_percentage=1.0)], direct=folder)
        for i, image in enumerate(scenes[:4]):
            sampler(event(image, detector.infer_numpy(image), frame=i))
        sampler.stop()
    assert sampler.stats["stored"] == 4
    assert sampler.spool.stats()["pending_folder"] == 4  # kept, not lost
    assert "frame(s) to the folder target" in caplog.text and "they go to the spool" in caplog.text
    assert caplog.text.count("cannot write") == 1  # once a minute, not once per batch
    blocked.unlink()  # the disk is back
    uploader = Uploader(sampler.spool, folder, retry_min_s=0.05, retry_max_s=0.1)
    uploader.start()
    try:
        wait(lambda: sampler.spool.stats()["items"] == 0)
    finally:
        uploader.stop()
    assert len(list((blocked / "shapes-1" / "images").glob("*.jpg"))) == 4
    assert uploader.stats["uploaded"] == 4


def test_frames_in_the_folder_count_as_stored_when_the_spool_then_fails(
        tmp_path: Path, detector: Any, scenes: list[np.ndarray], caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from edge_agent.active_learning.uploaders import FolderTarget

    limited = strategy(type="random", traffic_percentage=1.0, name="every", limits=[{"type": "daily", "value": 50}])
    sampler = _sampler(tmp_path, [limited], direct=FolderTarget(tmp_path / "dataset"))
    working = sampler.spool.add_counts

    def full_disk(limits: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    sampler.spool.add_counts = full_disk
    with caplog.at_level(logging.ERROR, logger="edge_agent.active_learning"):
        for i, image in enumerate(scenes[:3]):
            sampler(event(image, detector.infer_numpy(image), frame=i))
        sampler.stop()
    assert len(list((tmp_path / "dataset" / "shapes-1" / "images").glob("*.jpg"))) == 3
    assert sampler.stats["stored"] == 3  # they are in the folder
    assert 1 <= sampler.stats["write_errors"] <= 3  # one per failed spool write, not per frame
    assert "could not keep their limit counts" in caplog.text
    assert ("every", "daily") not in sampler.spool.limit_counts()
    sampler.spool.add_counts = working  # the disk has room again
    sampler.start()
    image = scenes[3]
    sampler(event(image, detector.infer_numpy(image), frame=3))
    sampler.stop()
    assert sampler.spool.limit_counts()[("every", "daily")][1] == 4  # the 3 missed counts kept with the next


def test_write_many_replaces_files_whole_with_or_without_syncfs(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_agent import atomic_files

    files = [(tmp_path / "a" / "one.jpg", b"\xff\xd8" + bytes(5000)), (tmp_path / "b" / "two.txt", b"0 0.5\n")]
    atomic_files.write_many(files)
    assert [p.read_bytes() for p, _ in files] == [d for _, d in files]
    monkeypatch.setattr(atomic_files, "_libc", lambda: None)  # no syncfs to trust: an fsync per file
    atomic_files.write_many([(tmp_path / "a" / "one.jpg", b"new"), (tmp_path / "a" / "three.jpg", b"3")])
    assert (tmp_path / "a" / "one.jpg").read_bytes() == b"new"
    assert oct((tmp_path / "a" / "three.jpg").stat().st_mode & 0o777) == oct(0o644)
    (tmp_path / "c").write_text("not a folder")
    with pytest.raises(OSError):
        atomic_files.write_many([(tmp_path / "a" / "four.jpg", b"4"), (tmp_path / "c" / "five.jpg", b"5")])
    assert not list(tmp_path.rglob("*.tmp"))  # what was staged is removed
    assert not (tmp_path / "a" / "four.jpg").exists()  # nothing renamed before every file was written


def test_syncfs_is_used_only_where_it_can_be_trusted_and_not_while_it_is_slow(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import platform

    from edge_agent import atomic_files

    atomic_files._libc.cache_clear()
    monkeypatch.setattr(atomic_files, "_slow_until", 0.0)
    kernel = tuple(int(n) for n in platform.release().split(".")[:2])
    if atomic_files._libc() is None:
        assert kernel < (5, 8) or not sys.platform.startswith("linux")
        pytest.skip("no syncfs to trust here: write_many fsyncs file by file (tested above)")
    trusted = atomic_files._flush_file_systems([tmp_path])
    monkeypatch.setattr(atomic_files, "SYNCFS_FILE_SYSTEMS", {})  # say, a FUSE or vfat stick
    assert not atomic_files._flush_file_systems([tmp_path])
    if not trusted:
        pytest.skip("the test folder's file system is not one syncfs is trusted on")
    monkeypatch.setattr(atomic_files, "SYNCFS_FILE_SYSTEMS", {0xEF53: "ext4", 0x01021994: "tmpfs",
                                                              0x58465342: "xfs", 0x9123683E: "btrfs",
                                                              0xF2F52010: "f2fs", 0x794C7630: "overlay"})
    monkeypatch.setattr(atomic_files, "SLOW_SYNCFS_S", -1.0)  # every call counts as slow
    assert atomic_files._flush_file_systems([tmp_path])
    assert not atomic_files._flush_file_systems([tmp_path])  # it waited for others' writes: fsync for a while
    atomic_files.write_many([(tmp_path / "x.txt", b"x")])  # and files are still written whole
    assert (tmp_path / "x.txt").read_bytes() == b"x"


def test_the_folder_uploader_writes_a_batch_at_once_and_one_by_one_when_the_batch_fails(
        tmp_path: Path, detector: Any, scenes: list[np.ndarray]) -> None:
    from edge_agent.active_learning.uploaders import FolderTarget, Uploader

    sampler = _sampler(tmp_path, [strategy(type="random", traffic_percentage=1.0)])  # no direct target
    for i, image in enumerate(scenes[:6]):
        sampler(event(image, detector.infer_numpy(image), frame=i))
    sampler.stop()
    assert sampler.spool.stats()["pending_folder"] == 6

    class Flaky(FolderTarget):
        batches = 0

        def send_many(self, deliveries: Any, spool: Any) -> None:
            Flaky.batches += 1
            raise OSError("the batch failed")

    uploader = Uploader(sampler.spool, Flaky(tmp_path / "dataset"), retry_min_s=0.05, retry_max_s=0.1)
    uploader.start()
    try:
        wait(lambda: sampler.spool.stats()["items"] == 0)
    finally:
        uploader.stop()
    assert Flaky.batches >= 1
    assert uploader.stats["uploaded"] == 6 and uploader.stats["failures"] == 0  # each sent on its own
    batched = _sampler(tmp_path / "b", [strategy(type="random", traffic_percentage=1.0)])
    for i, image in enumerate(scenes[:6]):
        batched(event(image, detector.infer_numpy(image), frame=i))
    batched.stop()
    good = Uploader(batched.spool, FolderTarget(tmp_path / "b" / "dataset"))
    good.start()
    try:
        wait(lambda: batched.spool.stats()["items"] == 0)
    finally:
        good.stop()
    assert good.stats["uploaded"] == 6
    assert len(list((tmp_path / "b" / "dataset" / "shapes-1" / "labels").glob("*.txt"))) == 6


def test_data_yaml_follows_the_newest_frames_class_names_not_the_last_written(tmp_path: Path) -> None:
    """The folder's uploader may drain frames sampled before the ones the writer already wrote: an
    older class list does not replace a newer one."""
    import dataclasses

    from edge_agent.active_learning.spool import Item
    from edge_agent.active_learning.uploaders import FolderTarget

    def item(created: float, names: tuple[str, ...]) -> Item:
        body = {"image": {"width": 10, "height": 10}, "predictions": []}
        return Item(f"id-{created}", created, "cam", "m/1", "s", 10, 10, b"\xff\xd8", body, names)

    now = time.time()
    FolderTarget(tmp_path).write_items([item(now, ("cat", "dog"))])
    data = tmp_path / "m-1" / "data.yaml"
    FolderTarget(tmp_path).write_items([item(now - 3600, ("cat",))])  # sampled an hour before: older
    assert '"dog"' in data.read_text()
    FolderTarget(tmp_path).write_items([dataclasses.replace(item(now + 5, ("cat", "dog", "bird")), id="x")])
    assert '"bird"' in data.read_text()  # sampled after: the model's classes changed
