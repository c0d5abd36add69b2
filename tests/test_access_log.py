"""The access log's writer thread (edge_agent/http/access_log.py): lines keep their request's time and order,
appear without a flush, the thread sleeps while no line comes, and a handler that blocks holds up neither
the caller, nor memory, nor the flush at exit."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import pytest

from edge_agent.http import access_log
from edge_agent.http.access_log import AccessLog


class Kept(logging.Handler):
    def __init__(self, gate: threading.Event | None = None) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.gate = gate

    def emit(self, record: logging.LogRecord) -> None:
        if self.gate is not None:
            self.gate.wait(30)
        self.records.append(record)


@pytest.fixture()
def logger() -> logging.Logger:
    found = logging.getLogger(f"test.access.{time.monotonic_ns()}")
    found.setLevel(logging.INFO)
    found.propagate = False
    return found


def _wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_lines_are_written_by_the_thread_in_order_with_their_own_time(logger: logging.Logger) -> None:
    kept = Kept()
    logger.addHandler(kept)
    access = AccessLog(logger, flush_s=0.05)
    before = time.time()
    access.add("POST", "/infer/object_detection", 200, 0.0123, "127.0.0.1")
    time.sleep(0.02)
    access.add("GET", "/healthz", 200, 0.0004, "127.0.0.1")
    after = time.time()
    _wait_for(lambda: len(kept.records) == 2)  # no flush: the writer wrote them
    first, second = kept.records
    assert first.getMessage() == "POST /infer/object_detection 200 12.3 ms 127.0.0.1"
    assert second.getMessage() == "GET /healthz 200 0.4 ms 127.0.0.1"
    assert first.levelno == logging.INFO and first.name == logger.name
    assert before <= first.created < second.created <= after  # when the request ended, not when written
    assert first.threadName == "access-log"


def test_the_writer_sleeps_while_no_line_comes(logger: logging.Logger, monkeypatch: pytest.MonkeyPatch) -> None:
    naps: list[float] = []

    class Clock:  # the module's ``time``, with its writer's naps counted
        time = staticmethod(time.time)

        @staticmethod
        def sleep(seconds: float) -> None:
            naps.append(seconds)
            time.sleep(seconds)

    monkeypatch.setattr(access_log, "time", Clock)
    kept = Kept()
    logger.addHandler(kept)
    access = AccessLog(logger, flush_s=0.01)
    access.add("GET", "/a", 200, 0.001, "127.0.0.1")
    _wait_for(lambda: len(kept.records) == 1)
    time.sleep(0.3)  # 30 of its periods with nothing queued
    assert naps == [0.01]  # one nap for the line, none while idle
    access.add("GET", "/b", 200, 0.001, "127.0.0.1")
    access.add("GET", "/c", 200, 0.001, "127.0.0.1")
    _wait_for(lambda: len(kept.records) == 3)
    time.sleep(0.1)
    assert [r.getMessage().split()[1] for r in kept.records] == ["/a", "/b", "/c"]
    assert len(naps) == 2  # the two lines went out together


def test_a_blocked_handler_delays_lines_but_never_the_caller_and_the_queue_is_capped(logger: logging.Logger) -> None:
    gate = threading.Event()
    kept = Kept(gate)
    logger.addHandler(kept)
    access = AccessLog(logger, flush_s=0.01, max_queued=100)
    access.add("GET", "/first", 200, 0.001, "127.0.0.1")
    time.sleep(0.2)  # the writer now waits in the handler with the first line
    t0 = time.perf_counter()
    for i in range(1000):
        access.add("GET", f"/{i}", 200, 0.001, "127.0.0.1")
    assert time.perf_counter() - t0 < 1.0  # the caller was never held up by the handler
    access.flush(wait=0.1)  # as at exit: gives up while the writer is stuck in the handler
    assert kept.records == []
    gate.set()
    _wait_for(lambda: any(r.levelno == logging.WARNING for r in kept.records))
    messages = [r.getMessage() for r in kept.records]
    assert messages[0] == "GET /first 200 1.0 ms 127.0.0.1"
    assert len(messages) == 1 + 100 + 1  # the first, the 100 queued, the count of the rest
    assert messages[1:101] == [f"GET /{i} 200 1.0 ms 127.0.0.1" for i in range(100)]
    assert messages[-1] == "900 access-log lines dropped: the log did not keep up"


def test_flush_writes_what_is_queued_at_once(logger: logging.Logger) -> None:
    kept = Kept()
    logger.addHandler(kept)
    access = AccessLog(logger, flush_s=60)  # the thread would not wake in this test
    access.add("GET", "/a", 404, 0.002, "-")
    assert kept.records == []
    access.flush()
    assert [r.getMessage() for r in kept.records] == ["GET /a 404 2.0 ms -"]


def test_a_logger_above_info_is_seen_as_off(logger: logging.Logger) -> None:
    logger.setLevel(logging.WARNING)
    assert not AccessLog(logger).enabled()
    logger.setLevel(logging.INFO)
    assert AccessLog(logger).enabled()
