"""An inference pipeline: one video source, one model, parameters, sinks.

Its thread gets the model from the ``Inference`` it was given (pulled from Roboflow's API first when
the store lacks it and a key is at hand), takes frames from the source and runs each through
``Inference.infer``: the same model manager and batching path as HTTP requests, so pipelines and
requests share one loaded model. ``Inference.infer`` announces each result on the event bus with the
pipeline's id as source, the frame's number and its capture time; the MQTT bridge and active learning
take them from there. When the model served for its id changes (a new version, a TensorRT engine, an
unload), the next frame runs on the new one. Sinks of its own (a Python callback, a JSON-lines file,
an annotated video file, the live MJPEG preview) get the frame and its result; a failing sink is logged
and counted, never stops the pipeline.

``terminate`` returns at once in every state (loading the model, a dead source, paused).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_agent.events import timestamp
from edge_agent.inference import Inference
from edge_agent.params import InferenceParams
from edge_agent.pipelines.sources import EndOfStream, Frame, VideoSource
from edge_agent.results import Result
from edge_agent.roboflow_json import to_roboflow
from edge_agent.serving.manager import LoadedModel
from edge_agent.visualize import draw, encode_jpeg

if TYPE_CHECKING:
    import cv2

log = logging.getLogger(__name__)

Sink = Callable[[Frame, Result], None]


class JsonLinesSink:
    """One line of Roboflow JSON (plus source, frame and times) per frame, appended to ``path``."""

    def __init__(self, path: Path, pipeline_id: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="utf-8")
        self.pipeline_id = pipeline_id

    def __call__(self, frame: Frame, result: Result) -> None:
        body = {**to_roboflow(result), "source_id": self.pipeline_id, "frame_id": frame.frame_id,
                "captured_at": timestamp(frame.captured_at)}
        self._file.write(json.dumps(body, separators=(",", ":")) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class VideoFileSink:
    """The frames with their results drawn, written to an MP4 file (OpenCV's FFmpeg, mp4v)."""

    def __init__(self, path: Path, fps: float, colours: dict[str, str] | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.fps, self.colours = path, fps, colours
        self._writer: cv2.VideoWriter | None = None

    def __call__(self, frame: Frame, result: Result) -> None:
        import cv2  # lazy: cv2

        image = draw(frame.image, result, colours=self.colours)
        if self._writer is None:
            h, w = image.shape[:2]
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter.fourcc(*"mp4v"), self.fps, (w, h))
        self._writer.write(image)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()


class PreviewWatcher:
    """One watcher of a ``PreviewSink``: frames are handed to ``deliver`` (from the pipeline's thread)
    once ``push_to`` is called, or waited for with ``next``. ``close`` frees its place."""

    def __init__(self, sink: PreviewSink) -> None:
        self._sink = sink
        self._deliver: Callable[[bytes], None] | None = None

    def push_to(self, deliver: Callable[[bytes], None]) -> None:
        """Hand every new frame to ``deliver``, the newest one at once (under the lock, so that it cannot
        arrive after a newer one)."""
        with self._sink._cond:
            self._deliver = deliver
            if self._sink._jpeg is not None:
                deliver(self._sink._jpeg)

    def next(self, seen: int, timeout: float) -> tuple[int, bytes | None]:
        """The frame after number ``seen`` (-1: the newest), or None after ``timeout`` s."""
        sink = self._sink
        with sink._cond:
            if sink._seq == seen or sink._jpeg is None:
                sink._cond.wait(timeout)
            if sink._seq == seen or sink._jpeg is None:
                return seen, None
            return sink._seq, sink._jpeg

    def close(self) -> None:
        self._sink._leave(self)


class PreviewSink:
    """The newest annotated frame as JPEG, for ``GET /pipelines/{id}/preview.mjpg``. Encoding happens
    only while someone watches, at most ``max_fps`` times a second, once for all watchers."""

    def __init__(self, max_fps: float = 10.0, colours: dict[str, str] | None = None) -> None:
        self.max_fps = max_fps
        self.colours = colours
        self._watchers: list[PreviewWatcher] = []
        self._jpeg: bytes | None = None
        self._seq = 0
        self._cond = threading.Condition()
        self._last = 0.0

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    def watch(self, limit: int) -> PreviewWatcher | None:
        """A new watcher, or None when ``limit`` watch already."""
        with self._cond:
            if len(self._watchers) >= limit:
                return None
            watcher = PreviewWatcher(self)
            self._watchers.append(watcher)
            return watcher

    def _leave(self, watcher: PreviewWatcher) -> None:
        with self._cond:
            if watcher in self._watchers:
                self._watchers.remove(watcher)

    def __call__(self, frame: Frame, result: Result) -> None:
        if not self._watchers or time.monotonic() - self._last < 1.0 / self.max_fps:
            return
        jpeg = encode_jpeg(draw(frame.image, result, colours=self.colours), quality=80)
        with self._cond:
            self._jpeg, self._seq, self._last = jpeg, self._seq + 1, time.monotonic()
            self._cond.notify_all()
            targets = [w._deliver for w in self._watchers if w._deliver is not None]
        for deliver in targets:
            deliver(jpeg)


class InferencePipeline:
    """A running (or finished) pipeline. ``inference`` gives it its model and runs it: the daemon's (see
    ``PipelineManager``), or for the Python API that of a runtime of its own (``edge_agent.api``)."""

    def __init__(self, inference: Inference, model_id: str, video_reference: str | int, *,
                 pipeline_id: str | None = None, params: InferenceParams | None = None,
                 max_fps: float | None = None, realtime: bool = False, sinks: Sequence[Sink] = (),
                 on_prediction: Callable[[dict[str, Any], np.ndarray], None] | None = None,
                 source_options: dict[str, Any] | None = None, api_key: str | None = None) -> None:
        self._inference = inference
        self.model_id = model_id
        self._api_key = api_key  # pulls the model from Roboflow's API when the store lacks it; never shown
        self.pipeline_id = pipeline_id or uuid.uuid4().hex[:12]
        self.params = params or InferenceParams()
        self.max_fps = max_fps
        self.source = VideoSource(video_reference, realtime=realtime, **(source_options or {}))
        self.sinks: list[Sink] = list(sinks)
        if on_prediction is not None:
            def callback(frame: Frame, result: Result) -> None:
                on_prediction({**to_roboflow(result), "frame_id": frame.frame_id}, frame.image)

            self.sinks.append(callback)
        self.state = "created"
        self.error = ""
        self.created_at = time.time()
        self._stop = threading.Event()
        self._resume = threading.Event()
        self._resume.set()
        self._thread: threading.Thread | None = None
        self.frames_inferred = 0
        self.frames_skipped = 0  # not inferred because of max_fps
        self.sink_errors = 0
        self._infer_interval: float | None = None
        self._last_inferred: float | None = None  # capture time of the last frame inferred (max_fps)
        self._last_done: float | None = None
        self._last_progress = time.monotonic()  # a frame taken (inferred or skipped), or a reason not to
        self.last_latency_s: float | None = None  # capture -> result ready, of the last frame

    # ------------------------------------------------------------------ control

    def start(self) -> None:
        self.state = "starting"
        self._thread = threading.Thread(target=self._run, name=f"pipeline-{self.pipeline_id}", daemon=True)
        self._thread.start()

    def pause(self) -> None:
        if self.state in ("running", "starting", "loading"):
            self._resume.clear()
            self.state = "paused"

    def resume(self) -> None:
        if self.state == "paused":
            self.state = "running"
        self._resume.set()

    def terminate(self, wait: float = 2.0) -> None:
        """Stop now, whatever the pipeline is doing; waits at most ``wait`` seconds for its thread."""
        self._stop.set()
        self._resume.set()
        self.source.stop()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(wait)
        if self.state not in ("finished", "failed"):
            self.state = "terminated"

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def stuck(self) -> bool:
        """Says it runs, but its thread is gone (a bug): the watchdog's question."""
        return (self.state in ("starting", "loading", "running", "paused") and self._thread is not None
                and not self._thread.is_alive())

    def stalled_for(self) -> float:
        """Seconds the pipeline has taken no frame although it runs and its source delivers: an
        inference that hangs. 0 while paused, loading, reconnecting or done (those are not hangs)."""
        if self.state != "running" or self.source.state != "streaming":
            return 0.0
        return time.monotonic() - self._last_progress

    @property
    def done(self) -> bool:
        return self.state in ("finished", "failed", "terminated")

    # ------------------------------------------------------------------ the pipeline thread

    def _run(self) -> None:
        try:
            self.state = "loading"
            loaded, _ = self._inference.model(self.model_id, self._api_key)
            if self._stop.is_set():
                return
            self.source.start()
            if self.state == "loading":
                self.state = "running"
            while not self._stop.is_set():
                self._last_progress = time.monotonic()
                if not self._resume.is_set():
                    self._resume.wait(0.5)
                    self.source.read(0)  # keep live sources fresh while paused (newest frame wins)
                    continue
                try:
                    frame = self.source.read(0.5)
                except EndOfStream:
                    self.state = "failed" if self.source.state == "failed" else "finished"
                    self.error = self.source.last_error if self.state == "failed" else ""
                    return
                if frame is None or self._stop.is_set():
                    continue
                if self._throttled(frame):
                    self.frames_skipped += 1
                    continue
                if self._inference.serving(self.model_id) is not loaded:  # a new version, an engine, an unload
                    loaded, _ = self._inference.model(self.model_id, self._api_key)
                self._infer(loaded, frame)
        except Exception as exc:  # model missing or broken, engine failure: the pipeline says why
            log.error("pipeline %s failed: %s", self.pipeline_id, exc)
            self.error = getattr(exc, "public", None) or str(exc)
            self.state = "failed"
        finally:
            self.source.stop()
            for sink in self.sinks:
                close = getattr(sink, "close", None)
                if close is not None:
                    try:
                        close()
                    except Exception:
                        log.exception("closing a sink of pipeline %s", self.pipeline_id)

    def _throttled(self, frame: Frame) -> bool:
        if not self.max_fps or self._last_inferred is None:
            return False
        return frame.monotonic - self._last_inferred < 1.0 / self.max_fps

    def _infer(self, loaded: LoadedModel, frame: Frame) -> None:
        result = self._inference.infer(loaded, [frame.image], self.params, source=self.pipeline_id,
                                    captured_at=frame.captured_at, frame_ids=[frame.frame_id])[0]
        now = time.monotonic()
        if self._last_done is not None:
            gap = now - self._last_done
            self._infer_interval = gap if self._infer_interval is None else 0.9 * self._infer_interval + 0.1 * gap
        self._last_done = now
        self._last_inferred = frame.monotonic
        self.frames_inferred += 1
        self.last_latency_s = time.time() - frame.captured_at
        for sink in self.sinks:
            try:
                sink(frame, result)
            except Exception:
                self.sink_errors += 1
                log.exception("a sink of pipeline %s failed", self.pipeline_id)

    def status(self) -> dict[str, Any]:
        return {
            "pipeline_id": self.pipeline_id,
            "model_id": self.model_id,
            "state": self.state,
            "error": self.error or None,
            "source": self.source.status(),
            "frames_inferred": self.frames_inferred,
            "frames_skipped": self.frames_skipped,
            "inference_fps": round(1.0 / self._infer_interval, 2) if self._infer_interval else None,
            "latency_s": round(self.last_latency_s, 4) if self.last_latency_s is not None else None,
            "max_fps": self.max_fps,
            "sink_errors": self.sink_errors,
            "preview_watchers": sum(s.watchers for s in self.sinks if isinstance(s, PreviewSink)),
            "created_at": self.created_at,
        }
