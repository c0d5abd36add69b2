"""DynamicBatcher: gathering, bounds, failures, shutdown; and the ModelManager around it."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from edge_agent.batching import DynamicBatcher
from edge_agent.errors import ModelNotFound, NotReady, Overloaded


class Gate:
    """A run function that blocks until released, recording the batch sizes it was given."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.release = threading.Event()
        self.entered = threading.Event()

    def __call__(self, tensors: Any) -> list[Any]:
        self.entered.set()
        self.release.wait(10)
        self.sizes.append(len(tensors))
        return [float(t.sum()) for t in tensors]


def _t(v: float) -> np.ndarray:
    return np.full((1, 3, 2, 2), v, np.float32)


def test_lone_request_runs_at_once_and_busy_time_gathers_a_batch() -> None:
    gate = Gate()
    b = DynamicBatcher("m", gate, max_batch=4, max_queue=16)
    first = b.submit(_t(1))
    assert gate.entered.wait(5)
    queued = [b.submit(_t(v)) for v in (2, 3, 4, 5, 6)]  # arrive while the engine is busy
    gate.release.set()
    assert first.result(5) == 12.0
    assert [f.result(5) for f in queued] == [24.0, 36.0, 48.0, 60.0, 72.0]
    assert gate.sizes == [1, 4, 1]  # no waiting for company; then at most max_batch
    assert b.stats.items == 6
    b.close()


def test_max_delay_waits_for_a_fuller_batch() -> None:
    calls: list[int] = []

    def run(tensors: Any) -> list[Any]:
        calls.append(len(tensors))
        return [0] * len(tensors)

    b = DynamicBatcher("m", run, max_batch=8, max_delay_s=0.3)
    futures = []
    for v in range(3):
        futures.append(b.submit(_t(v)))
        time.sleep(0.02)
    for f in futures:
        f.result(5)
    assert calls == [3]
    b.close()


def test_full_queue_refuses_with_overloaded() -> None:
    gate = Gate()
    b = DynamicBatcher("m", gate, max_batch=1, max_queue=2)
    running = b.submit(_t(1))
    assert gate.entered.wait(5)
    waiting = [b.submit(_t(2)), b.submit(_t(3))]
    with pytest.raises(Overloaded) as err:
        b.submit(_t(4))
    assert err.value.status == 503
    gate.release.set()
    assert running.result(5) == 12.0 and [f.result(5) for f in waiting] == [24.0, 36.0]
    b.close()


def test_engine_failure_reaches_every_caller_and_the_worker_survives() -> None:
    fail = threading.Event()
    fail.set()

    def run(tensors: Any) -> list[Any]:
        if fail.is_set():
            raise RuntimeError("engine exploded")
        return [1] * len(tensors)

    b = DynamicBatcher("m", run, max_batch=4)
    with pytest.raises(RuntimeError, match="exploded"):
        b.submit(_t(1)).result(5)
    fail.clear()
    assert b.submit(_t(1)).result(5) == 1
    b.close()


def test_close_finishes_queued_work_then_refuses() -> None:
    gate = Gate()
    b = DynamicBatcher("m", gate, max_batch=1, max_queue=8)
    futures = [b.submit(_t(v)) for v in (1, 2, 3)]
    assert gate.entered.wait(5)
    closer = threading.Thread(target=b.close)
    closer.start()
    gate.release.set()
    closer.join(10)
    assert [f.result(5) for f in futures] == [12.0, 24.0, 36.0]
    with pytest.raises(NotReady):
        b.submit(_t(1))


def test_manager_loads_once_under_concurrent_first_requests(store: Any) -> None:
    from edge_agent.models.manager import ModelManager

    loads: list[str] = []
    manager = ModelManager(store, on_load=lambda mid, s: loads.append(mid), max_loaded=2)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: manager.get("shapes/1"), range(8)))
    assert loads == ["shapes/1"]
    assert sum(cold for _, cold in results) == 1
    assert len({id(m) for m, _ in results}) == 1
    # LRU: a third model unloads the least recently used one.
    manager.get("shapes-cls/1")
    manager.get("shapes/1")
    manager.get("shapes-seg/1")
    assert [m.model_id for m in manager.loaded()] == ["shapes/1", "shapes-seg/1"]
    with pytest.raises(ModelNotFound):
        manager.get("nope/1")
    manager.clear()
    assert manager.loaded() == []


def test_batched_results_equal_unbatched(store: Any) -> None:
    from edge_agent.demo.shapes import generate_scene
    from edge_agent.heads import InferenceParams
    from edge_agent.models.manager import BatchingPrefs, ModelManager

    images = [generate_scene(s, size=(240, 320)).image for s in range(6)]
    params = InferenceParams()
    plain, _ = ModelManager(store, batching=BatchingPrefs(enabled=False)).get("shapes-seg/1")
    batched, _ = ModelManager(store, batching=BatchingPrefs(max_delay_ms=50)).get("shapes-seg/1")
    expected = plain.infer(images, params)
    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(lambda im: batched.infer([im], params)[0], images))
    assert batched.batcher is not None and batched.batcher.stats.batches < len(images)
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g.xyxy, e.xyxy, atol=1e-3)
        assert g.class_id.tolist() == e.class_id.tolist()
        assert [len(p) for p in g.polygons] == [len(p) for p in e.polygons]
