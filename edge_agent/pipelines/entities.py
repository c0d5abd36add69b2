"""The values a Roboflow ``InferencePipeline`` user handles, with Roboflow's names and fields
(``inference.core.interfaces.camera.entities`` and ``...stream.entities``): the ``VideoFrame`` a sink
gets, the ``StatusUpdate`` a status handler gets, the enums of ``init``'s options and the watchdog's
``PipelineStateReport``. Plain dataclasses and enums: no OpenCV, no threads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

FrameTimestamp = datetime
FrameID = int


class UpdateSeverity(Enum):
    DEBUG = logging.DEBUG
    INFO = logging.INFO
    WARNING = logging.WARNING
    ERROR = logging.ERROR


class SinkMode(Enum):
    """How ``on_prediction`` is called: ``SEQUENTIAL`` once per frame (a dict and a ``VideoFrame``),
    ``BATCH`` once per batch (lists aligned with the sources, ``None`` where a source gave no frame),
    ``ADAPTIVE`` sequential for one source and batch for several."""

    ADAPTIVE = "adaptive"
    BATCH = "batch"
    SEQUENTIAL = "sequential"


class BufferFillingStrategy(Enum):
    """What a source's reader does when its buffer is full: wait (files), drop the oldest frame
    (streams), or drop the new one. The ``ADAPTIVE_`` forms (Roboflow's, which also drop frames while
    the consumer lags) act as the plain ones here."""

    WAIT = "WAIT"
    DROP_OLDEST = "DROP_OLDEST"
    ADAPTIVE_DROP_OLDEST = "ADAPTIVE_DROP_OLDEST"
    DROP_LATEST = "DROP_LATEST"
    ADAPTIVE_DROP_LATEST = "ADAPTIVE_DROP_LATEST"


class BufferConsumptionStrategy(Enum):
    """How the pipeline takes frames: the oldest first (``LAZY``, files) or the newest, dropping the
    rest (``EAGER``, streams)."""

    LAZY = "LAZY"
    EAGER = "EAGER"


class StreamState(Enum):
    NOT_STARTED = "NOT_STARTED"
    INITIALISING = "INITIALISING"
    RESTARTING = "RESTARTING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    MUTED = "MUTED"
    TERMINATING = "TERMINATING"
    ENDED = "ENDED"
    ERROR = "ERROR"


# ``VideoSource.state`` (ours) -> Roboflow's ``StreamState``
STREAM_STATES = {"starting": StreamState.NOT_STARTED, "connecting": StreamState.INITIALISING,
                 "reconnecting": StreamState.RESTARTING, "streaming": StreamState.RUNNING,
                 "finished": StreamState.ENDED, "failed": StreamState.ERROR, "stopped": StreamState.ENDED}


@dataclass(frozen=True)
class VideoFrame:
    """One frame as a sink sees it. ``frame_timestamp``: when it was captured (local time, naive, as
    Roboflow's); ``source_id``: the index of its source in ``video_reference``; ``fps``: the rate the
    container or camera declares; ``measured_fps``: the rate measured on the source."""

    image: np.ndarray
    frame_id: FrameID
    frame_timestamp: FrameTimestamp
    fps: float | None = None
    measured_fps: float | None = None
    source_id: int | None = None
    comes_from_video_file: bool | None = None


@dataclass(frozen=True)
class StatusUpdate:
    timestamp: datetime
    severity: UpdateSeverity
    event_type: str
    payload: dict[str, Any]
    context: str


StatusHandler = Callable[[StatusUpdate], None]


def send_status(handlers: Sequence[StatusHandler], severity: UpdateSeverity, event_type: str,
                payload: dict[str, Any] | None = None, context: str = "inference_pipeline") -> None:
    """A ``StatusUpdate`` to every handler; a failing handler is logged, never raised."""
    if not handlers:
        return
    update = StatusUpdate(datetime.now(), severity, event_type, payload or {}, context)
    for handler in handlers:
        try:
            handler(update)
        except Exception as exc:
            log.warning("a status update handler failed: %s", exc)


@dataclass(frozen=True)
class SourceProperties:
    width: int
    height: int
    total_frames: int
    is_file: bool
    fps: float
    is_reconnectable: bool | None = None


@dataclass(frozen=True)
class SourceMetadata:
    source_properties: SourceProperties | None
    source_reference: str
    buffer_size: int
    state: StreamState
    buffer_filling_strategy: BufferFillingStrategy | None
    buffer_consumption_strategy: BufferConsumptionStrategy | None
    source_id: int | None = None


@dataclass(frozen=True)
class LatencyMonitorReport:
    """Seconds, averaged over the last frames of one source: capture to inference start
    (``frame_decoding_latency``), inference (``inference_latency``), capture to result (``e2e_latency``)."""

    source_id: int | None = None
    frame_decoding_latency: float | None = None
    inference_latency: float | None = None
    e2e_latency: float | None = None


@dataclass(frozen=True)
class PipelineStateReport:
    video_source_status_updates: list[StatusUpdate]
    latency_reports: list[LatencyMonitorReport]
    inference_throughput: float
    sources_metadata: list[SourceMetadata] = field(default_factory=list)
