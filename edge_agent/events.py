"""A small in-process event bus. ``Inference.infer`` announces the results of producers that name a
source (pipelines; HTTP requests, as source ``http``, when an outlet wants them) as ``PredictionEvent``s;
outlets subscribe (the runtime's per-source frame counts for telemetry, the MQTT bridge, the
active-learning sampler). Neither side knows the other.

``publish`` calls each subscriber in the producer's thread, so a subscriber must only hand the event
on (the bridge puts it on a bounded queue); an exception in one is logged, never raised to the
producer.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from edge_agent.results import Result

log = logging.getLogger(__name__)


def timestamp(epoch: float | None = None) -> str:
    """RFC 3339 in UTC with milliseconds, the one time format of every outlet (MQTT, JSON lines)."""
    moment = datetime.fromtimestamp(time.time() if epoch is None else epoch, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class PredictionEvent:
    """One inferred frame or image of a source."""

    source_id: str
    model_id: str
    frame_id: int
    captured_at: float  # epoch seconds: when the frame was captured or the request arrived
    inferred_at: float  # epoch seconds: when its result was ready
    result: Result
    inference_id: str | None = None
    image: np.ndarray | None = None  # the BGR frame, for outlets that keep frames (active learning); not copied
    active_learning: bool = True  # False: never sampled (a request's disable_active_learning, a pipeline's switch)


Subscriber = Callable[[PredictionEvent], object]


class EventBus:
    def __init__(self) -> None:
        self._subscribers: tuple[Subscriber, ...] = ()
        self._lock = threading.Lock()
        self._frames: dict[str, itertools.count[int]] = {}

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Add a subscriber; returns the function that removes it."""
        with self._lock:
            self._subscribers += (subscriber,)

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers = tuple(s for s in self._subscribers if s is not subscriber)

        return unsubscribe

    @property
    def active(self) -> bool:
        return bool(self._subscribers)

    def next_frame_id(self, source_id: str) -> int:
        """Frame numbers for sources without their own (HTTP requests): 1, 2, ... per source."""
        with self._lock:
            counter = self._frames.setdefault(source_id, itertools.count(1))
        return next(counter)

    def publish(self, event: PredictionEvent) -> None:
        for subscriber in self._subscribers:  # a tuple: subscribing meanwhile does not disturb this
            try:
                subscriber(event)
            except Exception:
                log.exception("event subscriber %r failed", subscriber)
