"""The sampler: an event-bus subscriber that decides, in the producer's thread and cheaply, whether a
frame is kept (strategy, limits, near-duplicates); a writer thread of its own then encodes the JPEG and
writes the item to the spool, off the inference path.

Limits, and the count of each model's current labelling batch (``batching_strategy``; Roboflow's
configuration is per model, so is its batch), are counted in memory (seeded from the spool at start)
and added to the spool's counts with the item that used them, so counts and items never disagree after
a crash. After each write the sampler takes the spool's counts where they are higher than its own, so
another process sampling into the same spool (a Python-API pipeline beside the daemon) counts too.

A target on this device's own disk (the ``folder`` target, given as ``direct``) is written by the writer
itself, with the batch's frames, and the spool keeps only the limit counts and the deliveries to the
other targets: going through the spool (the JPEG into SQLite, read back, deleted) and an uploader thread
cost about as much CPU again as the encoding. The files are on disk (``syncfs`` or fsync, then renamed)
before the counts are committed: a crash in between leaves at most one batch of frames uncounted. Where
the direct write fails (a full disk, the folder taken away), the frames go into the spool for that
target too, and its uploader retries them.

A frame whose producer switched active learning off (a request's ``disable_active_learning``, a
pipeline's ``active_learning_enabled=False``) is never sampled. A frame the writer has no room for
(``queue_size`` frames waiting) is dropped and counted, and its limit counts are given back.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edge_agent.active_learning.priority import ThreadPriority, lower_this_thread
from edge_agent.active_learning.sampling import WINDOWS, batch_base, batch_name, dhash, hamming, wants
from edge_agent.active_learning.spool import Item, Spool
from edge_agent.active_learning.uploaders import DirectTarget
from edge_agent.events import PredictionEvent
from edge_agent.roboflow_json import to_roboflow
from edge_agent.sampling_strategies import Strategy
from edge_agent.settings import BatchingStrategy
from edge_agent.visualize import encode_jpeg

log = logging.getLogger(__name__)

WRITE_WAIT_S = 35.0  # Sampler.stop's second wait for a writer in a write (the spool waits 30 s for its lock)
# The writer writes frames in batches: each batch costs one SQLite commit and one flush to disk of the
# folder's files (a syncfs and an fsync per folder). Frames come one by one: it waits up to GATHER_S
# for a batch to fill, holding their JPEGs (about 40 kB each at 640x480), not the frames. Sampling
# every frame of a pipeline that keeps 2 cores busy (bench/active_learning.py, medians of 5-21 rounds),
# the pipeline kept 0.81x of its throughput with the batches the writer found waiting (mostly one
# frame), 0.86-0.91x with batches of up to 16 in 0.25 s, 0.90x with up to 64 in 1 s. A power cut
# loses at most the frames not yet written: this batch and the queue.
BATCH = 64
GATHER_S = 1.0
RECENT_HASHES = 16  # per source: a frame this close to any of the last kept ones is a near-duplicate


def batch_key(model_id: str) -> tuple[str, str]:
    """A model's labelling-batch count among the limit counts ("*batch" is no strategy's name)."""
    return ("*batch", model_id)


Counts = dict[tuple[str, str], tuple[str, int]]  # (strategy, window) -> (bucket, count); or a delta: +1


class Sampler:
    def __init__(self, strategies: Sequence[Strategy], spool: Spool, targets: tuple[str, ...], *,
                 jpeg_quality: int = 75, max_image_size: int = 1280, dedup_distance: int = 6,
                 queue_size: int = 64, sources: Callable[[str], bool] = lambda s: True,
                 on_stored: Callable[[], None] = lambda: None, seed: int | None = None,
                 batching: BatchingStrategy | None = None, priority: ThreadPriority = "low",
                 direct: DirectTarget | None = None,
                 on_direct: Callable[[list[Item]], None] = lambda items: None) -> None:
        self.strategies = list(strategies)
        self.batching = batching
        self.priority = priority  # the writer thread's (active_learning.priority)
        self.spool = spool
        self.targets = targets
        self.direct = direct if direct is not None and direct.name in targets else None
        self._on_direct = on_direct  # counts what went to ``direct``
        self._unsaved_counts: list[Counts] = []  # of frames in the folder whose spool write failed: kept later
        self._next_direct_warning = 0.0
        self.jpeg_quality, self.max_image_size, self.dedup_distance = jpeg_quality, max_image_size, dedup_distance
        self._accepts_source = sources
        self._on_stored = on_stored
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stats_lock = threading.Lock()  # producers are many threads (HTTP requests, pipelines)
        self._counts: Counts = spool.limit_counts()
        self._recent: dict[str, deque[int]] = {}
        # None: stop()'s wake-up for a writer waiting on an empty queue
        self._queue: queue.Queue[tuple[PredictionEvent, Strategy, Counts, str] | None] = queue.Queue(queue_size)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.stats = {"considered": 0, "sampled": 0, "skipped_limit": 0, "skipped_duplicate": 0,
                      "skipped_batch_full": 0, "skipped_disabled": 0, "dropped_queue_full": 0, "stored": 0,
                      "evicted": 0, "write_errors": 0}

    def _count(self, name: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[name] += n

    # ------------------------------------------------------------------ the producer's thread

    def __call__(self, event: PredictionEvent) -> None:
        image = event.image
        if image is None or not self._accepts_source(event.source_id):
            return
        if not event.active_learning:
            self._count("skipped_disabled")
            return
        self._count("considered")
        for strategy in self.strategies:
            if not strategy.applies(event.source_id, event.model_id) or not wants(strategy, event.result, self._rng):
                continue
            with self._lock:
                taken = self._take_limits(strategy, event.model_id, time.gmtime())
            if taken == "skipped_batch_full":
                self._count(taken)
                return  # the batch is full for every strategy
            if isinstance(taken, str):
                self._count(taken)
                continue
            used, batch = taken
            if self.dedup_distance and self._duplicate(event.source_id, image):
                self._give_back(used)
                self._count("skipped_duplicate")
                return
            try:
                self._queue.put_nowait((event, strategy, used, batch))
            except queue.Full:
                self._give_back(used)
                self._count("dropped_queue_full")
                return
            self._count("sampled")
            return  # a frame is sampled once, by the first strategy that wants it

    def _take_limits(self, strategy: Strategy, model_id: str, now: time.struct_time) -> tuple[Counts, str] | str:
        """Count the frame against its model's batch cap and the strategy's limits: the counts it used
        (each +1 in its bucket) and its batch ("" without a batching strategy); or, nothing counted, the
        stat that says why not."""
        updated: Counts = {}
        batch = ""
        if self.batching is not None:
            base = batch_base(self.batching, now)
            key = batch_key(model_id)
            old_base, count = self._counts.get(key, (base, 0))
            count = count if old_base == base else 0
            name = batch_name(self.batching, base, count)
            if name is None:
                return "skipped_batch_full"
            batch, updated[key] = name, (base, count + 1)
        for limit in strategy.limits:
            key = (strategy.name, limit.type)
            bucket = time.strftime(WINDOWS[limit.type], now)
            old_bucket, count = self._counts.get(key, (bucket, 0))
            count = count if old_bucket == bucket else 0
            if count >= limit.value:
                return "skipped_limit"
            updated[key] = (bucket, count + 1)
        self._counts.update(updated)
        return {key: (bucket, 1) for key, (bucket, _count) in updated.items()}, batch

    def _merge_stored_counts(self) -> None:
        """Take the spool's counts where they are ahead of ours (another process samples there too)."""
        stored = self.spool.limit_counts()
        with self._lock:
            for key, (bucket, count) in stored.items():
                mine = self._counts.get(key)
                if mine is None or (mine[0] == bucket and mine[1] < count):
                    self._counts[key] = (bucket, count)

    def _give_back(self, used: Counts) -> None:
        with self._lock:
            for key, (bucket, _count) in used.items():
                if self._counts.get(key, (None, 0))[0] == bucket:
                    current = self._counts[key][1]
                    self._counts[key] = (bucket, max(0, current - 1))

    def _duplicate(self, source_id: str, image: np.ndarray) -> bool:
        digest = dhash(image)
        recent = self._recent.setdefault(source_id, deque(maxlen=RECENT_HASHES))
        if any(hamming(digest, seen) <= self.dedup_distance for seen in recent):
            return True
        recent.append(digest)
        return False

    # ------------------------------------------------------------------ the writer thread

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._write_loop, name="al-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop. The writer ends after the frames in its hands; the frames
        still queued are written here, at the caller's priority (a low-priority writer may get little
        CPU while the machine is busy). A writer still busy after ``timeout`` is waited for once more;
        one that has still not ended keeps the queue (two writers would contend for the spool)."""
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        try:
            self._queue.put_nowait(None)  # a writer waiting for frames wakes now, not at its next timeout
        except queue.Full:  # it is busy with frames, and sees the stop after its batch
            pass
        thread.join(timeout)
        if thread.is_alive():  # a batch of at most BATCH frames, whose write waits at most the spool's 30 s lock
            log.warning("the active-learning writer is still busy after %.0f s; waiting for it", timeout)
            thread.join(WRITE_WAIT_S)
        if thread.is_alive():
            log.warning("the active-learning writer did not end; %d queued frame(s) not written",
                        self._queue.qsize())
            return
        while not self._queue.empty():
            self._write(self._take_batch(block=False))
        self._thread = None

    def _take_batch(self, block: bool) -> list[tuple[Item, Counts]]:
        """Up to ``BATCH`` frames, each encoded as it is taken (while it is still in the CPU's caches;
        the batch then holds JPEGs, not frames). With ``block``: wait a moment for the first, then up
        to ``GATHER_S`` for more (stop()'s wake-up ends the wait); else only those waiting. Empty only
        when nothing is queued."""
        batch: list[tuple[Item, Counts]] = []
        taken = 0
        gather_until = time.monotonic() + GATHER_S
        try:
            first = self._queue.get(timeout=1.0) if block else self._queue.get_nowait()
            if first is None:
                block = False
            else:
                taken += 1
                self._encode(first, batch)
            while taken < BATCH:
                wait = gather_until - time.monotonic() if block else 0.0
                queued = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                if queued is None:
                    block = False
                else:
                    taken += 1
                    self._encode(queued, batch)
        except queue.Empty:
            pass
        return batch

    def _encode(self, queued: tuple[PredictionEvent, Strategy, Counts, str], batch: list[tuple[Item, Counts]]) -> None:
        event, strategy, used, labelling_batch = queued
        try:
            batch.append((self._item(event, strategy, labelling_batch), used))
        except Exception:  # a broken frame: counted, the others are written
            self._count("write_errors")
            log.exception("cannot encode a sampled frame")

    def _write_loop(self) -> None:
        lower_this_thread(self.priority)
        while not self._stop.is_set():
            try:
                self._write(self._take_batch(block=True))
            except Exception:  # a bug or an unforeseen failure must not end sampling for good
                self._count("write_errors")
                log.exception("active-learning writer: unexpected error")
                self._stop.wait(1.0)

    def _write(self, entries: list[tuple[Item, Counts]]) -> None:
        """Write a batch of encoded frames: the direct target's files with one flush to disk, then the
        spool in one transaction."""
        if not entries:
            return
        targets = self.targets
        direct_done = False
        if self.direct is not None:
            try:
                self.direct.write_items([item for item, _used in entries])
            except Exception as exc:  # the spool keeps them for this target's uploader, which retries
                if time.monotonic() >= self._next_direct_warning:  # not once per batch
                    self._next_direct_warning = time.monotonic() + 60
                    log.warning("active learning: cannot write %d frame(s) to the %s target (%s); they go to "
                                "the spool, for its uploader to retry", len(entries), self.direct.name, exc)
            else:
                direct_done = True
                targets = tuple(t for t in targets if t != self.direct.name)
                self._on_direct([item for item, _used in entries])
        try:
            if targets or not direct_done:
                evicted = self.spool.add_many(entries, targets)
            else:  # every target has them: only the limit counts they used are kept
                self.spool.add_counts([used for _item, used in entries])
                evicted = 0
        except Exception:  # a full disk: counted, and the next frames are tried
            if direct_done:  # they are in the folder; their counts wait for the spool's next write
                self._unsaved_counts.extend(used for _item, used in entries)
                del self._unsaved_counts[:-10_000]  # bounded: a spool that never answers again
                self._count("stored", len(entries))
                self._count("write_errors")
                log.exception("active learning: %d frame(s) written to the %s target, but the spool could not "
                              "keep their limit counts (kept for its next write)%s", len(entries),
                              self.direct.name if self.direct else "",
                              "; their deliveries to " + ", ".join(targets) + " are lost" if targets else "")
            else:
                self._count("write_errors", len(entries))
                log.exception("cannot store %d sampled frame(s)", len(entries))
            return
        self._count("stored", len(entries))
        if self._unsaved_counts:  # the spool answers again: the counts it missed
            try:
                self.spool.add_counts(self._unsaved_counts)
                self._unsaved_counts.clear()
            except Exception as exc:  # kept for the next write
                log.debug("active learning: the missed limit counts wait for the next write (%s)", exc)
        try:
            self._merge_stored_counts()
        except Exception:  # pragma: no cover - the spool just answered; a read failing now is counted as a write
            self._count("write_errors")
            log.exception("cannot read the spool's limit counts")
        if evicted:
            self._count("evicted", evicted)
            log.warning("active-learning spool full: evicted %d oldest item(s)", evicted)
        self._on_stored()

    def _item(self, event: PredictionEvent, strategy: Strategy, batch: str) -> Item:
        import cv2  # lazy: cv2

        image = event.image
        if image is None:  # never: only events with a frame are queued
            raise ValueError("a sampled event without its frame")
        h, w = image.shape[:2]
        scale = min(1.0, self.max_image_size / max(h, w)) if self.max_image_size else 1.0
        body = to_roboflow(event.result, event.inference_id)
        if scale < 1.0:
            image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                               interpolation=cv2.INTER_AREA)
            body = _scaled(body, scale)
        return Item(id=str(uuid.uuid4()), created=event.captured_at, source_id=event.source_id,
                    model_id=event.model_id, strategy=strategy.name, width=image.shape[1], height=image.shape[0],
                    jpeg=encode_jpeg(image, self.jpeg_quality), predictions=body,
                    class_names=tuple(event.result.class_names), tags=tuple(strategy.tags), batch=batch)


def _scaled(body: dict[str, Any], scale: float) -> dict[str, Any]:
    """The Roboflow response object of a resized image: pixel values scaled with it."""
    out = dict(body)
    out["image"] = {"width": max(1, round(body["image"]["width"] * scale)),
                    "height": max(1, round(body["image"]["height"] * scale))}
    if isinstance(body.get("predictions"), list):
        preds = []
        for p in body["predictions"]:
            q = dict(p)
            for key in ("x", "y", "width", "height"):
                if key in q:
                    q[key] = round(q[key] * scale, 1)
            if "points" in q:
                q["points"] = [{"x": round(pt["x"] * scale, 1), "y": round(pt["y"] * scale, 1)} for pt in q["points"]]
            if "keypoints" in q:
                q["keypoints"] = [{**k, "x": round(k["x"] * scale, 1), "y": round(k["y"] * scale, 1)}
                                  for k in q["keypoints"]]
            preds.append(q)
        out["predictions"] = preds
    return out
