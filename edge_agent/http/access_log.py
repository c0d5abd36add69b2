"""The access log: one INFO line per request (logger ``edge_agent.access``), written by a thread of its own.

The app queues a request's line (its fields, a deque append) as it makes the answer, before the answer
is written (http/app.py), so that a request the client sends after an answer is logged after it. The
writer thread sleeps until a line is queued, waits ``FLUSH_S`` more for the lines that follow it, then
formats them and hands them to the logging handlers (stderr, journald): one wake-up per ``FLUSH_S`` under
load, none while no request comes. So the formatting and the write (about 15 us a line in a loop, 80-90
us on the 2-core VM right after a request's model run, where the front's loop wrote it after each
answer) are paid by no request, and a stalled stderr (a paused terminal, a journald that does not read)
can delay log lines but never the front: the queue holds at most ``MAX_QUEUED`` lines, and lines past it
are counted and the count logged once there is room.

Each line keeps the time its answer was made (the record's ``created``). The writer starts in the process
that first queues a line (the gunicorn worker, after the fork) and is flushed at the interpreter's exit
(unless a stalled handler still holds it after ``EXIT_WAIT_S``).
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import threading
import time

log = logging.getLogger("edge_agent.access")

FLUSH_S = 0.2
MAX_QUEUED = 10_000
EXIT_WAIT_S = 1.0  # the flush at exit waits this long at most for a writer stuck in a handler
_FORMAT = "%s %s %d %.1f ms %s"


class AccessLog:
    def __init__(self, logger: logging.Logger = log, flush_s: float = FLUSH_S, max_queued: int = MAX_QUEUED) -> None:
        self._logger = logger
        self._flush_s = flush_s
        self._max = max_queued
        self._lines: collections.deque[tuple[float, str, str, int, float, str]] = collections.deque()
        self._dropped = 0  # lines past the cap (about: callers of several threads may race on it)
        self._lock = threading.Lock()  # one writer at a time: the thread, or a flush
        self._queued = threading.Event()  # set with the first line queued after the writer's last look
        self._pid = 0  # the process whose writer runs

    def _forked(self) -> None:
        """A child starts afresh: no writer (threads do not survive a fork), no lock held by one, and not
        the parent's queued lines, which the parent writes."""
        self._lines.clear()
        self._dropped = 0
        self._lock = threading.Lock()
        self._queued = threading.Event()
        self._pid = 0

    def enabled(self) -> bool:
        return self._logger.isEnabledFor(logging.INFO)

    def add(self, method: str, path: str, status: int, seconds: float, client: str) -> None:
        """Queue one request's line (any thread; ``path`` already made loggable)."""
        if len(self._lines) >= self._max:
            self._dropped += 1
        else:
            self._lines.append((time.time(), method, path, status, seconds * 1e3, client))
        if not self._queued.is_set():  # after the append: the writer clears it before it drains the queue
            self._queued.set()
        if not self._pid:  # no writer in this process yet (a forked child starts without: ``_forked``)
            self._start()

    def flush(self, wait: float = -1) -> None:
        """Write every queued line now; ``wait``: give up after this many seconds if the writer holds the
        log (at exit, a stalled handler must not keep the process alive)."""
        if not self._lock.acquire(timeout=wait):
            return
        try:
            lines = self._lines
            logger = self._logger
            while lines:
                created, *args = lines.popleft()
                record = logger.makeRecord(logger.name, logging.INFO, __file__, 0, _FORMAT, tuple(args), None)
                record.created, record.msecs = created, (created % 1) * 1000
                logger.handle(record)
            if self._dropped:
                dropped, self._dropped = self._dropped, 0
                logger.warning("%d access-log lines dropped: the log did not keep up", dropped)
        finally:
            self._lock.release()

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            threading.Thread(target=self._run, name="access-log", daemon=True).start()
        atexit.register(self.flush, EXIT_WAIT_S)

    def _run(self) -> None:
        while True:
            self._queued.wait()
            time.sleep(self._flush_s)  # the lines queued meanwhile go out with it
            self._queued.clear()  # before the queue is drained: a line queued after this sets it again
            if self._lines or self._dropped:
                try:
                    self.flush()
                except Exception:  # a handler's failure: logging reports its own errors; the thread goes on
                    pass


ACCESS_LOG = AccessLog()
os.register_at_fork(after_in_child=ACCESS_LOG._forked)
