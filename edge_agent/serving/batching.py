"""Dynamic batching: concurrent callers of one model share one engine run.

Each caller loads and preprocesses its image in its own thread and calls ``run_many``. There is no
batching thread: a caller that finds the engine free runs it itself, on whatever is queued (its own
tensors first in line, up to ``max_batch``), then hands every other caller in that batch its result.
Callers that find the engine busy queue their tensors and wait; when the run ends, one of them takes
the engine for everything queued meanwhile. So a lone request runs at once in its own thread, with no
hand-off to another thread and no waiting for company, and requests that arrive while the engine is
busy share the next run. With ``max_delay_s > 0`` the runner waits up to that long for a fuller batch.

The queue is bounded (in images); a caller whose images would overflow it gets ``Overloaded`` at once
(HTTP 503 with Retry-After) instead of letting memory grow.

(A first version ran the engine in a dedicated thread per model. On a 2-core CPU the wake-up of the
waiting request thread after each run cost 2-3 ms per request, as much as the model's own compute
for small models: see bench/serve_http.py.)
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

from edge_agent.errors import NotReady, Overloaded

log = logging.getLogger(__name__)

Out = TypeVar("Out")  # what the engine run gives back per tensor


@dataclass
class BatchStats:
    """Counters read by metrics and tests (updated under the engine lock)."""

    batches: int = 0
    items: int = 0
    sizes: dict[int, int] = field(default_factory=dict)  # batch size -> how many runs had it


class _Item(Generic[Out]):
    __slots__ = ("tensor", "done", "result", "error")
    result: Out  # set, with done, when its batch ran; a failed batch sets error instead

    def __init__(self, tensor: np.ndarray) -> None:
        self.tensor = tensor
        self.done = False
        self.error: BaseException | None = None


class DynamicBatcher(Generic[Out]):
    """Gathers concurrent callers' tensors into engine batches. ``run_batch(tensors)`` returns one
    item per tensor; ``run_many(tensors)`` returns the caller's items, in order."""

    def __init__(
        self,
        name: str,
        run_batch: Callable[[Sequence[np.ndarray]], list[Out]],
        max_batch: int,
        max_delay_s: float = 0.0,
        max_queue: int = 64,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.name = name
        self.max_batch = max_batch
        self.max_delay_s = max(0.0, max_delay_s)
        self.max_queue = max(1, max_queue)
        self._run_batch = run_batch
        self._on_batch = on_batch
        self._queue: collections.deque[_Item[Out]] = collections.deque()
        self._cond = threading.Condition()  # guards the queue and the done flags
        self._engine = threading.Lock()  # held by the caller that runs the engine
        self._closed = False
        self.stats = BatchStats()

    @property
    def closed(self) -> bool:
        """True once ``close`` was called: ``run_many`` then raises ``NotReady``."""
        return self._closed

    @property
    def depth(self) -> int:
        """Images waiting for the engine (not counting the batch being run)."""
        return len(self._queue)

    def run_many(self, tensors: Sequence[np.ndarray]) -> list[Out]:
        """Run one caller's (1, 3, H, W) tensors, batched with whatever else is waiting."""
        items: list[_Item[Out]] = [_Item(t) for t in tensors]
        with self._cond:
            if self._closed:
                raise NotReady(f"model {self.name} is being unloaded - retry request.")
            depth = len(self._queue)
            if depth and depth + len(items) > self.max_queue:
                raise Overloaded(f"Model {self.name} has {depth} images waiting - retry request.")
            self._queue.extend(items)
            if self.max_delay_s:
                self._cond.notify_all()  # a runner waiting for a fuller batch
        for item in items:
            self._wait_or_run(item)
        for item in items:
            if item.error is not None:
                raise item.error
        return [item.result for item in items]

    def _wait_or_run(self, item: _Item[Out]) -> None:
        while not item.done:
            if self._engine.acquire(blocking=False):
                try:
                    if not item.done:
                        self._run_once()
                finally:
                    self._engine.release()
                with self._cond:
                    self._cond.notify_all()  # the engine is free: a waiter with queued work takes it
            else:
                with self._cond:
                    if not item.done:
                        self._cond.wait(0.05)

    def _take(self) -> list[_Item[Out]]:
        deadline = time.monotonic() + self.max_delay_s
        with self._cond:
            while True:
                if len(self._queue) >= self.max_batch:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            n = min(self.max_batch, len(self._queue))
            return [self._queue.popleft() for _ in range(n)]

    def _run_once(self) -> None:
        batch = self._take()
        if not batch:
            return
        t0 = time.perf_counter()
        try:
            outputs = self._run_batch([item.tensor for item in batch])
        except BaseException as exc:  # handed to every caller of this batch; the next batch still runs
            with self._cond:
                for item in batch:
                    item.error, item.done = exc, True
                self._cond.notify_all()
            return
        elapsed = time.perf_counter() - t0
        with self._cond:
            for item, out in zip(batch, outputs):
                item.result, item.done = out, True
            self._cond.notify_all()
        n = len(batch)
        self.stats.batches += 1
        self.stats.items += n
        self.stats.sizes[n] = self.stats.sizes.get(n, 0) + 1
        if self._on_batch is not None:
            try:
                self._on_batch(n, elapsed)
            except Exception:  # metrics must never break inference
                log.exception("batch callback failed")

    def close(self) -> None:
        """Refuse new work (``NotReady``: the caller may run the engine itself, as ``LoadedModel.infer``
        does); callers already queued still get their results."""
        with self._cond:
            self._closed = True
