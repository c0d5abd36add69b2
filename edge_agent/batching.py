"""Dynamic batching: concurrent callers of one model share one engine run.

Each caller decodes and preprocesses its image in its own thread, then ``submit``s the tensor; one
worker thread per model takes what is queued (up to ``max_batch``) and runs the engine once. With
``max_delay_s = 0`` (the default) the worker never waits for company: a lone request goes straight
through, and requests that arrive while the engine is busy are gathered into the next run. A
positive delay lets the worker wait up to that long for a fuller batch.

The queue is bounded (in images); when it is full ``submit`` raises ``Overloaded`` at once (HTTP 503 with
Retry-After) instead of letting memory grow.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_agent.errors import NotReady, Overloaded

log = logging.getLogger(__name__)

RunBatch = Callable[[Sequence[np.ndarray]], list[Any]]


@dataclass
class BatchStats:
    """Counters read by the metrics collector (plain ints: updated by the worker thread only)."""

    batches: int = 0
    items: int = 0
    sizes: dict[int, int] = field(default_factory=dict)  # batch size -> how many runs had it


class DynamicBatcher:
    """Gathers submitted tensors into engine batches. ``run_batch(tensors)`` returns one item per tensor."""

    def __init__(
        self,
        name: str,
        run_batch: RunBatch,
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
        self._run_batch = run_batch
        self._on_batch = on_batch
        self.max_queue = max(1, max_queue)
        self._queue: queue.Queue[tuple[np.ndarray, Future[Any]] | None] = queue.Queue()
        self._submit_lock = threading.Lock()
        self._closed = False
        self.stats = BatchStats()
        self._thread = threading.Thread(target=self._work, name=f"batcher:{name}", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Requests waiting for the engine (not counting the batch being run)."""
        return self._queue.qsize()

    def submit(self, tensor: np.ndarray) -> Future[Any]:
        """Queue one (1, 3, H, W) tensor; the future resolves to ``run_batch``'s item for it."""
        return self.submit_many([tensor])[0]

    def submit_many(self, tensors: Sequence[np.ndarray]) -> list[Future[Any]]:
        """Queue one caller's tensors together: all are taken, or none (``Overloaded``).

        The bound counts queued images; a caller is refused when its images would take the queue past
        ``max_queue``, except into an empty queue (so one large request is never refused alone).
        """
        futures: list[Future[Any]] = [Future() for _ in tensors]
        with self._submit_lock:
            if self._closed:
                raise NotReady(f"model {self.name} is being unloaded - retry request.")
            depth = self._queue.qsize()
            if depth and depth + len(tensors) > self.max_queue:
                raise Overloaded(f"Model {self.name} has {depth} images waiting - retry request.")
            for tensor, fut in zip(tensors, futures):
                self._queue.put_nowait((tensor, fut))
        return futures

    def __call__(self, tensor: np.ndarray, timeout: float | None = None) -> Any:
        return self.submit(tensor).result(timeout)

    def _gather(self, first: tuple[np.ndarray, Future[Any]]) -> list[tuple[np.ndarray, Future[Any]]]:
        items = [first]
        deadline = time.monotonic() + self.max_delay_s
        while len(items) < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if item is None:  # close(): finish this batch, then stop
                self._queue.put_nowait(None)
                break
            items.append(item)
        return items

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                self._fail_leftovers()
                return
            items = self._gather(first)
            live = [(t, f) for t, f in items if f.set_running_or_notify_cancel()]
            if not live:
                continue
            t0 = time.perf_counter()
            try:
                outputs = self._run_batch([t for t, _ in live])
            except BaseException as exc:  # handed to every caller; the worker keeps going
                for _, fut in live:
                    fut.set_exception(exc)
                continue
            elapsed = time.perf_counter() - t0
            for (_, fut), out in zip(live, outputs):
                fut.set_result(out)
            n = len(live)
            self.stats.batches += 1
            self.stats.items += n
            self.stats.sizes[n] = self.stats.sizes.get(n, 0) + 1
            if self._on_batch is not None:
                try:
                    self._on_batch(n, elapsed)
                except Exception:  # metrics must never break inference
                    log.exception("batch callback failed")

    def _fail_leftovers(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None and item[1].set_running_or_notify_cancel():
                item[1].set_exception(NotReady(f"model {self.name} was unloaded - retry request."))

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking work, finish what is queued, stop the worker."""
        with self._submit_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put_nowait(None)
        self._thread.join(timeout)
