"""Calling a pipeline's ``on_prediction`` as Roboflow's ``InferencePipeline`` does: results wait in a
bounded queue between the pipeline thread and the thread that runs the sink (the caller's, with
``start(use_main_thread=True)``, else a thread of its own), and the sink gets them one frame at a time
or one batch at a time as ``SinkMode`` says. A failing sink is logged and reported as an
``INFERENCE_RESULTS_DISPATCHING_ERROR`` status update; it never stops the pipeline.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from edge_agent.pipelines.entities import SinkMode, StatusHandler, UpdateSeverity, VideoFrame, send_status

log = logging.getLogger(__name__)

SinkHandler = Callable[[Any, Any], None]  # (predictions, video_frame), each a value or a list of them
DISPATCHING_ERROR_EVENT = "INFERENCE_RESULTS_DISPATCHING_ERROR"

_END = object()


class SinkDispatcher:
    """``put`` (the pipeline thread) blocks while ``queue_size`` results wait; ``close`` ends ``run``
    after the results already queued, ``discard`` at once."""

    def __init__(self, on_prediction: SinkHandler, sink_mode: SinkMode, source_ids: Sequence[int],
                 status_handlers: Sequence[StatusHandler], queue_size: int = 512) -> None:
        self.on_prediction = on_prediction
        self.batch = sink_mode is SinkMode.BATCH or (sink_mode is SinkMode.ADAPTIVE and len(source_ids) > 1)
        self.source_ids = list(source_ids)
        self._handlers = status_handlers
        self._queue: deque[Any] = deque()
        self._size = max(1, queue_size)
        self._cond = threading.Condition()
        self._discarded = False
        self.errors = 0

    def put(self, predictions: list[Any], frames: list[VideoFrame]) -> None:
        with self._cond:
            while len(self._queue) >= self._size and not self._discarded:
                self._cond.wait(0.1)
            if self._discarded:
                return
            self._queue.append((predictions, frames))
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._queue.append(_END)
            self._cond.notify_all()

    def discard(self) -> None:
        """Drop what waits and end ``run`` now (``terminate``)."""
        with self._cond:
            self._discarded = True
            self._queue.clear()
            self._queue.append(_END)
            self._cond.notify_all()

    def run(self) -> None:
        """Call the sink for every result until ``close`` or ``discard``."""
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                item = self._queue.popleft()
                self._cond.notify_all()
            if item is _END:
                return
            predictions, frames = item
            if self.batch:
                by_source = {f.source_id: (p, f) for p, f in zip(predictions, frames)}
                aligned = [by_source.get(i, (None, None)) for i in self.source_ids]
                self._call([p for p, _ in aligned], [f for _, f in aligned])
            else:
                for p, f in zip(predictions, frames):
                    self._call(p, f)

    def _call(self, predictions: Any, frames: Any) -> None:
        try:
            self.on_prediction(predictions, frames)
        except Exception as exc:
            self.errors += 1
            log.exception("on_prediction failed")
            send_status(self._handlers, UpdateSeverity.ERROR, DISPATCHING_ERROR_EVENT,
                        {"error_type": type(exc).__name__, "error_message": str(exc),
                         "error_context": "inference_results_dispatching"})
