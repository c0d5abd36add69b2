"""The bound on concurrent runs of one ONNX Runtime CPU session (``engines.ort.concurrent_runs``)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engines import EnginePrefs
from engines.ort import OrtEngine, concurrent_runs

CALLERS = 8


class _Inside:
    """Wraps a real session and counts the runs inside it. Each run waits there until as many runs are
    inside as the bound allows (or as are still to come), then gives one more caller a moment to come
    in: a gate that lets it through shows in ``most``. A right gate never does, however long the wait,
    so the outcome does not depend on timing."""

    def __init__(self, session: Any, bound: int) -> None:
        self._session = session
        self._bound = bound
        self._cond = threading.Condition()
        self.inside = self.most = 0
        self.pending = CALLERS

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self._cond:
            self.inside += 1
            self.most = max(self.most, self.inside)
            self._cond.notify_all()
            self._cond.wait_for(lambda: self.inside >= min(self._bound, self.pending))
            self._cond.wait_for(lambda: self.inside > self._bound, timeout=0.05)
        try:
            return list(self._session.run(names, feeds))
        finally:
            with self._cond:
                self.inside -= 1
                self.pending -= 1
                self._cond.notify_all()


@pytest.mark.parametrize(("cores", "intra", "expected"), [
    (2, 0, 1),  # ORT's default threads: one per core, so one run fills them
    (2, 1, 2),
    (8, 1, 8),
    (8, 2, 4),
    (8, 16, 1),
])
def test_bound_follows_cores_and_threads(monkeypatch: pytest.MonkeyPatch, cores: int, intra: int,
                                         expected: int) -> None:
    monkeypatch.setattr("engines.ort.os.sched_getaffinity", lambda pid: set(range(cores)))
    assert concurrent_runs(intra) == expected


def test_concurrent_callers_never_exceed_the_bound(detector_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("engines.ort.os.sched_getaffinity", lambda pid: {0, 1, 2})
    engine = OrtEngine(detector_onnx, EnginePrefs(intra_op_threads=1))
    inside = _Inside(engine._session, bound=3)
    engine._session = inside
    start = threading.Barrier(CALLERS)
    shapes: list[tuple[int, ...]] = []

    def call() -> None:
        start.wait()
        shapes.append(engine.run(np.zeros((1, 3, 64, 64), np.float32))[0].shape)

    threads = [threading.Thread(target=call) for _ in range(CALLERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine.close()
    assert shapes == [(1, 6, 3)] * CALLERS  # every caller got its answer
    assert inside.most == 3  # the bound was reached, never passed
