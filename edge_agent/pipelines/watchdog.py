"""Pipeline watchdogs with Roboflow's interface (``inference.core.interfaces.stream.watchdog``): the
pipeline tells its watchdog when inference starts and ends for a batch of frames and hands it every
status update; ``get_report()`` sums up latency per source, throughput and the sources' state.

    watchdog = BasePipelineWatchDog()
    pipeline = InferencePipeline.init(..., watchdog=watchdog)
    ...
    report = watchdog.get_report()   # PipelineStateReport
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from edge_agent.pipelines.entities import (
    LatencyMonitorReport,
    PipelineStateReport,
    SourceMetadata,
    StatusUpdate,
    UpdateSeverity,
    VideoFrame,
)

MAX_LATENCY_CONTEXT = 64
MAX_UPDATES_CONTEXT = 512


class DescribedSource(Protocol):
    """What a watchdog needs of a source (``VideoSource`` is one)."""

    source_id: int

    def describe_source(self) -> SourceMetadata: ...


class PipelineWatchDog(ABC):
    @abstractmethod
    def register_video_sources(self, video_sources: Sequence[DescribedSource]) -> None: ...

    @abstractmethod
    def on_status_update(self, status_update: StatusUpdate) -> None: ...

    @abstractmethod
    def on_model_inference_started(self, frames: Sequence[VideoFrame]) -> None: ...

    @abstractmethod
    def on_model_prediction_ready(self, frames: Sequence[VideoFrame]) -> None: ...

    @abstractmethod
    def get_report(self) -> PipelineStateReport | None: ...


class NullPipelineWatchdog(PipelineWatchDog):
    def register_video_sources(self, video_sources: Sequence[DescribedSource]) -> None:
        pass

    def on_status_update(self, status_update: StatusUpdate) -> None:
        pass

    def on_model_inference_started(self, frames: Sequence[VideoFrame]) -> None:
        pass

    def on_model_prediction_ready(self, frames: Sequence[VideoFrame]) -> None:
        pass

    def get_report(self) -> PipelineStateReport | None:
        return None


class _Latency:
    """One source's last ``MAX_LATENCY_CONTEXT`` frames: (decoding, inference, end-to-end) seconds."""

    def __init__(self, source_id: int | None) -> None:
        self.source_id = source_id
        self.started: tuple[int, datetime] | None = None  # frame id, when its inference started
        self.samples: deque[tuple[float, float, float]] = deque(maxlen=MAX_LATENCY_CONTEXT)

    def report(self) -> LatencyMonitorReport:
        if not self.samples:
            return LatencyMonitorReport(source_id=self.source_id)
        n = len(self.samples)
        decoding, inference, e2e = (sum(s[i] for s in self.samples) / n for i in range(3))
        return LatencyMonitorReport(self.source_id, decoding, inference, e2e)


class BasePipelineWatchDog(PipelineWatchDog):
    """Latency per source, inference throughput (frames per second over the last 10 s) and the status
    updates above DEBUG (the last ``MAX_UPDATES_CONTEXT``). Safe to read from any thread."""

    def __init__(self) -> None:
        self._sources: list[DescribedSource] = []
        self._latency: dict[int | None, _Latency] = {}
        self._ticks: deque[float] = deque(maxlen=4096)
        self._updates: deque[StatusUpdate] = deque(maxlen=MAX_UPDATES_CONTEXT)
        self._lock = threading.Lock()

    def register_video_sources(self, video_sources: Sequence[DescribedSource]) -> None:
        with self._lock:
            self._sources = list(video_sources)
            self._latency = {s.source_id: _Latency(s.source_id) for s in self._sources}

    def on_status_update(self, status_update: StatusUpdate) -> None:
        if status_update.severity.value > UpdateSeverity.DEBUG.value:
            self._updates.append(status_update)

    def on_model_inference_started(self, frames: Sequence[VideoFrame]) -> None:
        now = datetime.now()
        with self._lock:
            for frame in frames:
                self._monitor(frame.source_id).started = (frame.frame_id, now)

    def on_model_prediction_ready(self, frames: Sequence[VideoFrame]) -> None:
        now, tick = datetime.now(), time.monotonic()
        with self._lock:
            for frame in frames:
                monitor = self._monitor(frame.source_id)
                if monitor.started is not None and monitor.started[0] == frame.frame_id:
                    started = monitor.started[1]
                    monitor.samples.append(((started - frame.frame_timestamp).total_seconds(),
                                            (now - started).total_seconds(),
                                            (now - frame.frame_timestamp).total_seconds()))
                self._ticks.append(tick)

    def _monitor(self, source_id: int | None) -> _Latency:
        if source_id not in self._latency:
            self._latency[source_id] = _Latency(source_id)
        return self._latency[source_id]

    def throughput(self) -> float:
        """Frames inferred per second over the last 10 s (0.0 before two frames)."""
        with self._lock:
            now = time.monotonic()
            recent = [t for t in self._ticks if now - t <= 10.0]
        if len(recent) < 2 or recent[-1] <= recent[0]:
            return 0.0
        return (len(recent) - 1) / (recent[-1] - recent[0])

    def get_report(self) -> PipelineStateReport:
        throughput = self.throughput()
        with self._lock:
            sources = list(self._sources)
            latency = [m.report() for m in self._latency.values()]
        return PipelineStateReport(video_source_status_updates=list(self._updates), latency_reports=latency,
                                   inference_throughput=throughput,
                                   sources_metadata=[s.describe_source() for s in sources])
