"""An inference pipeline: one video source, one model, parameters, sinks.

Its thread gets the model from the ``Inference`` it was given (pulled from Roboflow's API first when
the store lacks it and a key is at hand), takes frames from the source and runs each through
``Inference.infer``: the same model manager and batching path as HTTP requests, so pipelines and
requests share one loaded model. ``Inference.infer`` announces each result on the event bus with the
pipeline's id as source, the frame's number and its capture time; the MQTT bridge and active learning
take them from there. When the model served for its id changes (a new version, a TensorRT engine, an
unload), the next frame runs on the new one. Sinks of its own (a Python callback, the files of
``file_outputs.py``, the live MJPEG preview here) get the frame and its result; a failing sink is logged
and counted, never stops the pipeline.

Several sources make one pipeline (frames taken as a batch, at most one per source), and Roboflow's
``InferencePipeline`` options work here: ``VideoFrame``, ``on_prediction`` dispatched as ``SinkMode``
says (``dispatch.py``), status updates, a watchdog, ``on_video_frame`` custom logic, per-source
pause and mute. ``max_fps`` paces files without dropping frames and drops frames of live sources.
Events (started, a source connected, finished or failed, the pipeline finished, failed or
terminated) are logged at INFO.

``terminate`` returns at once in every state (loading the model, a dead source, paused).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, cast

from edge_agent.errors import InvalidInput
from edge_agent.inference import Inference
from edge_agent.params import InferenceParams
from edge_agent.pipelines.dispatch import SinkDispatcher, SinkHandler
from edge_agent.pipelines.entities import (
    STREAM_STATES,
    BufferConsumptionStrategy,
    BufferFillingStrategy,
    SinkMode,
    StatusHandler,
    UpdateSeverity,
    VideoFrame,
    send_status,
)
from edge_agent.pipelines.sources import EndOfStream, Frame, VideoSource
from edge_agent.pipelines.watchdog import NullPipelineWatchdog, PipelineWatchDog
from edge_agent.results import Result
from edge_agent.roboflow_json import to_roboflow
from edge_agent.serving.manager import LoadedModel
from edge_agent.visualize import draw, encode_jpeg

log = logging.getLogger(__name__)

Sink = Callable[[Frame, Result], None]
FrameHandler = Callable[[list[VideoFrame]], Sequence[Any]]  # Roboflow's on_video_frame: one prediction per frame
VideoReference = str | int
SourceProperties = dict[str, float] | Sequence[dict[str, float] | None]

# Roboflow's event types (inference_pipeline.py, video_source.py)
THREAD_STARTED_EVENT = "INFERENCE_THREAD_STARTED"
THREAD_FINISHED_EVENT = "INFERENCE_THREAD_FINISHED"
INFERENCE_COMPLETED_EVENT = "INFERENCE_COMPLETED"
INFERENCE_ERROR_EVENT = "INFERENCE_ERROR"
CONNECTION_LOST_EVENT = "SOURCE_CONNECTION_LOST"
STREAM_STATE_EVENT = "STREAM_STATE_UPDATE"
MUTED_DRAIN = 4  # frames of a muted source read (and dropped) per batch, at most: a file's buffer


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
    only while someone watches, at most ``max_fps`` times a second, once for all watchers. A pipeline of
    several sources shows its first (source 0) only."""

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
        if not self._watchers or frame.source_id != 0 or time.monotonic() - self._last < 1.0 / self.max_fps:
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
    ``PipelineManager``), or for the Python API that of a runtime of its own (``edge_agent.api``).

    ``video_reference``: one reference or a list of them (frames of several sources are taken as one
    batch, at most one frame per source, waiting at most ``batch_collection_timeout`` s for the
    slower ones; ``None``: for all). ``on_video_frame`` (Roboflow's custom logic) replaces the model:
    it gets the batch's ``VideoFrame`` list and returns one prediction per frame. ``on_prediction`` is
    Roboflow's sink (see ``dispatch.SinkDispatcher``); ``sinks`` are the daemon's (a ``Frame`` and a
    ``Result``, called on the pipeline thread). ``max_fps`` paces files (every frame, no faster) and
    drops frames of live sources. ``active_learning=False`` keeps its frames from being sampled.
    """

    def __init__(self, inference: Inference | None, model_id: str | None,
                 video_reference: VideoReference | Sequence[VideoReference], *,
                 pipeline_id: str | None = None, params: InferenceParams | None = None,
                 max_fps: float | None = None, realtime: bool = False, sinks: Sequence[Sink] = (),
                 on_prediction: SinkHandler | None = None, source_options: dict[str, Any] | None = None,
                 api_key: str | None = None, on_video_frame: FrameHandler | None = None,
                 sink_mode: SinkMode = SinkMode.ADAPTIVE, batch_collection_timeout: float | None = None,
                 watchdog: PipelineWatchDog | None = None, status_update_handlers: Sequence[StatusHandler] = (),
                 active_learning: bool = True, video_source_properties: SourceProperties | None = None,
                 buffer_filling: BufferFillingStrategy | str | None = None,
                 buffer_consumption: BufferConsumptionStrategy | str | None = None, predictions_queue_size: int = 512,
                 on_pipeline_start: Callable[[], None] | None = None,
                 on_pipeline_end: Callable[[], None] | None = None) -> None:
        if (inference is None or model_id is None) and on_video_frame is None:
            raise InvalidInput("a pipeline needs a model (inference and model_id) or on_video_frame")
        self._inference = inference
        self.model_id = model_id or "custom"
        self._on_video_frame = on_video_frame
        self._api_key = api_key  # pulls the model from Roboflow's API when the store lacks it; never shown
        self.pipeline_id = pipeline_id or uuid.uuid4().hex[:12]
        self.params = params or InferenceParams()
        self.max_fps = max_fps
        self.batch_collection_timeout = batch_collection_timeout
        self.active_learning = active_learning
        self.watchdog: PipelineWatchDog = watchdog or NullPipelineWatchdog()
        self.status_update_handlers: list[StatusHandler] = [*status_update_handlers, self.watchdog.on_status_update]
        refs = list(video_reference) if isinstance(video_reference, (list, tuple)) else \
            [cast(VideoReference, video_reference)]
        if not refs:
            raise InvalidInput("video_reference: an empty list; give a reference or a list of them")
        props = _per_source(video_source_properties, len(refs))
        self.sources = [VideoSource(ref, realtime=realtime, source_id=i, properties=props[i], filling=buffer_filling,
                                    consumption=buffer_consumption, on_state=self._on_source_state,
                                    **(source_options or {})) for i, ref in enumerate(refs)]
        self.watchdog.register_video_sources(self.sources)
        self.sinks: list[Sink] = list(sinks)
        self._dispatcher = (SinkDispatcher(on_prediction, sink_mode, [s.source_id for s in self.sources],
                                           self.status_update_handlers, predictions_queue_size)
                            if on_prediction is not None else None)
        self._on_pipeline_start, self._on_pipeline_end = on_pipeline_start, on_pipeline_end
        self.state = "created"
        self.error = ""
        self.created_at = time.time()
        self._stop = threading.Event()
        self._resume = threading.Event()
        self._resume.set()
        self._held: dict[int, str] = {}  # source id -> "paused" or "muted" (pause_stream/mute_stream of one)
        self._ended: set[int] = set()  # sources read to their end
        self._thread: threading.Thread | None = None
        self._dispatch_thread: threading.Thread | None = None
        self._ended_once = threading.Lock()
        self._end_called = False
        self.frames_inferred = 0
        self.frames_skipped = 0  # not inferred: max_fps on a live source, or muted
        self.sink_errors = 0
        self._infer_interval: float | None = None
        self._last_inferred: float | None = None  # capture time of the last frame taken (live max_fps)
        self._last_taken: float | None = None  # when the last batch was taken (file pacing)
        self._last_done: float | None = None
        self._last_progress = time.monotonic()  # a frame taken (inferred or skipped), or a reason not to
        self.last_latency_s: float | None = None  # capture -> result ready, of the last frame

    @property
    def source(self) -> VideoSource:
        """The first (often the only) source."""
        return self.sources[0]

    # ------------------------------------------------------------------ control

    def start(self, use_main_thread: bool = False) -> None:
        """Start the pipeline thread. ``use_main_thread``: run ``on_prediction`` on the calling thread and
        return when the pipeline ends (Roboflow's default); else the sink gets a thread of its own."""
        if self.state == "created":  # "paused" when pause_stream() came first: it starts paused
            self.state = "starting"
        self._thread = threading.Thread(target=self._run, name=f"pipeline-{self.pipeline_id}", daemon=True)
        self._thread.start()
        if self._on_pipeline_start is not None:
            self._on_pipeline_start()
        if self._dispatcher is None:
            if use_main_thread:
                self._thread.join()
            return
        if use_main_thread:
            self._dispatcher.run()
            return
        self._dispatch_thread = threading.Thread(target=self._dispatcher.run, name=f"pipeline-{self.pipeline_id}-sink",
                                                 daemon=True)
        self._dispatch_thread.start()

    def pause(self) -> None:
        """Take no frame until ``resume`` (also before ``start``: the pipeline then starts paused)."""
        if self.state in ("created", "starting", "loading", "running"):
            self._resume.clear()
            self.state = "paused"

    def resume(self) -> None:
        if self.state == "paused":
            self.state = "running" if self._thread is not None else "created"
        self._resume.set()

    def pause_stream(self, source_id: int | None = None) -> None:
        """Stop taking frames (of one source, or all): files wait, live sources keep only their newest."""
        if source_id is None:
            self.pause()
        else:
            self._held[source_id] = "paused"

    def mute_stream(self, source_id: int | None = None) -> None:
        """Keep reading (of one source, or all) but infer nothing: the frames are dropped."""
        for source in self.sources:
            if source_id is None or source.source_id == source_id:
                self._held[source.source_id] = "muted"

    def resume_stream(self, source_id: int | None = None) -> None:
        if source_id is None:
            self._held.clear()
            self.resume()
        else:
            self._held.pop(source_id, None)

    def terminate(self, wait: float = 2.0) -> None:
        """Stop now, whatever the pipeline is doing; waits at most ``wait`` seconds for its thread.
        Results not yet given to ``on_prediction`` are dropped."""
        self._stop.set()
        self._resume.set()
        for source in self.sources:
            source.stop()
        if self._dispatcher is not None:
            self._dispatcher.discard()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(wait)
        if self.state not in ("finished", "failed", "terminated"):
            self.state = "terminated"
            log.info("pipeline %s terminated", self.pipeline_id)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the pipeline (and its sink thread) to end; then ``on_pipeline_end`` runs, once."""
        for thread in (self._thread, self._dispatch_thread):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout)
        if self.done and not any(t is not None and t.is_alive() for t in (self._thread, self._dispatch_thread)):
            self._end()

    def _end(self) -> None:
        with self._ended_once:
            if self._end_called or self._on_pipeline_end is None:
                return
            self._end_called = True
        self._on_pipeline_end()

    def stuck(self) -> bool:
        """Says it runs, but its thread is gone (a bug): the watchdog's question."""
        return (self.state in ("starting", "loading", "running", "paused") and self._thread is not None
                and not self._thread.is_alive())

    def stalled_for(self) -> float:
        """Seconds the pipeline has taken no frame although it runs and a source delivers: an
        inference that hangs. 0 while paused, loading, reconnecting or done (those are not hangs)."""
        if self.state != "running" or not any(s.state == "streaming" for s in self.sources):
            return 0.0
        return time.monotonic() - self._last_progress

    @property
    def done(self) -> bool:
        return self.state in ("finished", "failed", "terminated")

    # ------------------------------------------------------------------ the pipeline thread

    def _run(self) -> None:
        send_status(self.status_update_handlers, UpdateSeverity.INFO, THREAD_STARTED_EVENT)
        log.info("pipeline %s started: model %s on %s", self.pipeline_id, self.model_id,
                 ", ".join(s.shown for s in self.sources))
        try:
            if self.state == "starting":
                self.state = "loading"
            loaded = self._inference.model(self.model_id, self._api_key)[0] if self._inference is not None \
                and self._on_video_frame is None else None
            if self._stop.is_set():
                return
            for source in self.sources:
                source.start()
            if self.state == "loading":
                self.state = "running"
            self._loop(loaded)
        except Exception as exc:  # model missing or broken, engine failure: the pipeline says why
            self.error = getattr(exc, "public", None) or str(exc)
            self.state = "failed"
            log.error("pipeline %s failed: %s", self.pipeline_id, self.error)
            send_status(self.status_update_handlers, UpdateSeverity.ERROR, INFERENCE_ERROR_EVENT,
                        {"error_type": type(exc).__name__, "error_message": self.error,  # not a local path
                         "error_context": "inference_thread"})
        finally:
            self._close()

    def _loop(self, loaded: LoadedModel | None) -> None:
        while not self._stop.is_set():
            self._last_progress = time.monotonic()
            if not self._resume.is_set():
                self._resume.wait(0.5)
                for source in self.sources:
                    if source.live:
                        self._read(source, 0)  # keep live sources fresh while paused (newest frame wins)
                continue
            batch = self._next_batch()
            if batch is None:  # every source ended
                self._finish()
                return
            batch = self._pace(batch)
            if not batch or self._stop.is_set():
                continue
            if loaded is not None and self._inference is not None and \
                    self._inference.serving(self.model_id) is not loaded:  # a new version, an engine, an unload
                loaded = self._inference.model(self.model_id, self._api_key)[0]
            self._process(loaded, batch)

    def _finish(self) -> None:
        failed = [s for s in self.sources if s.state == "failed"]
        self.state = "failed" if len(failed) == len(self.sources) else "finished"
        self.error = "; ".join(s.last_error for s in failed if s.last_error)
        if self.state == "failed":
            log.error("pipeline %s failed: %s", self.pipeline_id, self.error)
        else:
            log.info("pipeline %s finished: %d frames inferred", self.pipeline_id, self.frames_inferred)

    def _close(self) -> None:
        for source in self.sources:
            source.stop()
        if self._dispatcher is not None:
            self._dispatcher.close()
        for sink in self.sinks:
            close = getattr(sink, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.exception("closing a sink of pipeline %s", self.pipeline_id)
        send_status(self.status_update_handlers, UpdateSeverity.INFO, THREAD_FINISHED_EVENT)

    def _read(self, source: VideoSource, timeout: float) -> Frame | None:
        try:
            return source.read(timeout)
        except EndOfStream:
            self._ended.add(source.source_id)
            return None

    def _next_batch(self) -> list[Frame] | None:
        """At most one frame per source; [] when none came within 0.5 s; None when all ended. With
        ``batch_collection_timeout``, the first frame is waited for as without it, the others until that
        many seconds after the start (0: those already there)."""
        started = time.monotonic()
        deadline = None if self.batch_collection_timeout is None else started + self.batch_collection_timeout
        batch: dict[int, Frame] = {}
        while not self._stop.is_set():
            active = [s for s in self.sources if s.source_id not in self._ended]
            if not active:
                return None if not batch else [batch[i] for i in sorted(batch)]
            pending = [s for s in active if s.source_id not in batch and s.source_id not in self._held
                       and not (batch and s.state in ("connecting", "reconnecting"))]  # a lost camera holds no one
            muted = self._drain_held(active)
            if not pending:
                if not batch:  # every source with frames left is paused or muted
                    self._stop.wait(0.01 if muted else 0.05)
                break
            timeout = 0.5 if len(pending) == 1 else 0.01
            if deadline is not None and batch:
                timeout = max(0.0, min(timeout, deadline - time.monotonic()))
            for source in pending:
                frame = self._read(source, timeout)
                if frame is None or self._stop.is_set():
                    continue
                if self._held.get(source.source_id) == "muted":
                    self.frames_skipped += 1
                    continue
                batch[source.source_id] = frame
            now = time.monotonic()
            if (batch and deadline is not None and now >= deadline) or (not batch and now - started >= 0.5):
                break
        return [batch[i] for i in sorted(batch)]

    def _drain_held(self, sources: list[VideoSource]) -> bool:
        """Without waiting: a muted source's buffered frames (at most ``MUTED_DRAIN`` of them) are read and
        counted as skipped, a paused live source's newest frame wins. The others never wait for either.
        True when a source is muted."""
        muted = False
        for source in sources:
            held = self._held.get(source.source_id)
            if held == "muted":
                muted = True
                for _ in range(MUTED_DRAIN):
                    if self._read(source, 0) is None:
                        break
                    self.frames_skipped += 1
            elif held == "paused" and source.live:
                self._read(source, 0)
        return muted

    def _pace(self, batch: list[Frame]) -> list[Frame]:
        """``max_fps``: a batch with a file frame waits for its turn (none dropped); a batch of live
        frames too soon after the last one is dropped (newest frames win)."""
        if not batch or not self.max_fps:
            return batch
        interval = 1.0 / self.max_fps
        if any(not self.sources[f.source_id].live for f in batch):
            if self._last_taken is not None:
                delay = self._last_taken + interval - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return []
        elif self._last_inferred is not None and batch[0].monotonic - self._last_inferred < interval:
            self.frames_skipped += len(batch)
            return []
        self._last_taken, self._last_inferred = time.monotonic(), batch[0].monotonic
        return batch

    def _process(self, loaded: LoadedModel | None, batch: list[Frame]) -> None:
        frames = [self._video_frame(f) for f in batch]
        self.watchdog.on_model_inference_started(frames)
        if loaded is None:
            assert self._on_video_frame is not None
            predictions = list(self._on_video_frame(frames))
            results: list[Result] = []
        else:
            results = self._infer(loaded, batch)
            predictions = [to_roboflow(r) for r in results] if self._dispatcher is not None else []
        self.watchdog.on_model_prediction_ready(frames)
        now = time.monotonic()
        if self._last_done is not None:
            gap = (now - self._last_done) / len(batch)
            self._infer_interval = gap if self._infer_interval is None else 0.9 * self._infer_interval + 0.1 * gap
        self._last_done = now
        self.frames_inferred += len(batch)
        self.last_latency_s = time.time() - batch[0].captured_at
        for frame, result in zip(batch, results):
            for sink in self.sinks:
                try:
                    sink(frame, result)
                except Exception:
                    self.sink_errors += 1
                    log.exception("a sink of pipeline %s failed", self.pipeline_id)
        if len(self.status_update_handlers) > 1:
            send_status(self.status_update_handlers, UpdateSeverity.DEBUG, INFERENCE_COMPLETED_EVENT,
                        {"frames_ids": [f.frame_id for f in frames], "sources_id": [f.source_id for f in frames],
                         "frames_timestamps": [f.frame_timestamp for f in frames]})
        if self._dispatcher is not None:
            self._dispatcher.put(predictions, frames)

    def _infer(self, loaded: LoadedModel, batch: list[Frame]) -> list[Result]:
        """One call per frame's source: each source's results are announced under its own name (the
        pipeline's id; ``<id>-<n>`` for source n of several)."""
        assert self._inference is not None
        results = []
        for frame in batch:
            name = self.pipeline_id if len(self.sources) == 1 else f"{self.pipeline_id}-{frame.source_id}"
            results += self._inference.infer(loaded, [frame.image], self.params, source=name,
                                             captured_at=frame.captured_at, frame_ids=[frame.frame_id],
                                             active_learning=self.active_learning)
        return results

    def _video_frame(self, frame: Frame) -> VideoFrame:
        source = self.sources[frame.source_id]
        return VideoFrame(frame.image, frame.frame_id, datetime.fromtimestamp(frame.captured_at),
                          fps=source.declared_fps, measured_fps=source.source_fps, source_id=frame.source_id,
                          comes_from_video_file=source.kind in ("file", "folder"))

    def _on_source_state(self, source: VideoSource, previous: str, new: str) -> None:
        """Source events in the log (INFO) and as Roboflow's status updates."""
        if STREAM_STATES.get(previous) is STREAM_STATES.get(new):  # finished, then stopped: both ENDED
            return
        where = f"pipeline {self.pipeline_id}: source {source.source_id} ({source.shown})"
        severity = UpdateSeverity.INFO
        if new == "streaming":
            log.info("%s connected", where)
        elif new == "finished":
            log.info("%s finished after %d frames", where, source.frames_read)
        elif new == "failed":
            severity = UpdateSeverity.ERROR
            log.info("%s failed: %s", where, source.last_error)
        elif new == "reconnecting":
            severity = UpdateSeverity.WARNING
            send_status(self.status_update_handlers, severity, CONNECTION_LOST_EVENT,
                        {"source_reference": source.shown, "source_id": source.source_id})
        send_status(self.status_update_handlers, severity, STREAM_STATE_EVENT,
                    {"source_id": source.source_id, "previous_state": STREAM_STATES.get(previous),
                     "new_state": STREAM_STATES.get(new), "error": source.last_error or None},
                    context="video_source")

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
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
            "sink_errors": self.sink_errors + (self._dispatcher.errors if self._dispatcher is not None else 0),
            "preview_watchers": sum(s.watchers for s in self.sinks if isinstance(s, PreviewSink)),
            "created_at": self.created_at,
        }
        if len(self.sources) > 1:
            body["sources"] = [s.status() for s in self.sources]
        return body


def _per_source(properties: SourceProperties | None, n: int) -> list[dict[str, float] | None]:
    """Roboflow's ``video_source_properties``: one dict for every source, or a list with one per source."""
    if properties is None or isinstance(properties, dict):
        return [properties] * n
    if len(properties) != n:
        raise InvalidInput(f"video_source_properties: {len(properties)} entries for {n} video references; "
                           "give one dict for all, or one dict (or None) per reference")
    return list(properties)
