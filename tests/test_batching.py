"""DynamicBatcher: gathering, bounds, failures, shutdown; and the ModelManager around it."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from edge_agent.errors import ModelNotFound, NotReady, Overloaded
from edge_agent.serving.batching import DynamicBatcher
from helpers import wait


class Gate:
    """A run function that blocks until released, recording batch sizes and the threads it ran on."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.threads: list[str] = []
        self.release = threading.Event()
        self.entered = threading.Event()

    def __call__(self, tensors: Any) -> list[Any]:
        self.entered.set()
        self.release.wait(10)
        self.sizes.append(len(tensors))
        self.threads.append(threading.current_thread().name)
        return [float(t.sum()) for t in tensors]


def _t(v: float) -> np.ndarray:
    return np.full((1, 3, 2, 2), v, np.float32)


def _in_thread(fn: Any, *args: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def target() -> None:
        try:
            out.append(fn(*args))
        except BaseException as exc:  # handed to the test
            out.append(exc)

    t = threading.Thread(target=target)
    t.start()
    return t, out


def _wait_for(cond: Any, timeout: float = 5.0) -> None:
    wait(cond, timeout, interval=0.005)  # tight polling: the batcher's hand-offs take microseconds


def test_a_lone_request_runs_in_its_own_thread_at_once() -> None:
    gate = Gate()
    gate.release.set()
    b = DynamicBatcher("m", gate, max_batch=4)
    assert b.run_many([_t(1)]) == [12.0]
    assert gate.threads == [threading.current_thread().name]
    assert gate.sizes == [1]


def test_requests_arriving_while_the_engine_is_busy_share_the_next_run() -> None:
    gate = Gate()
    b = DynamicBatcher("m", gate, max_batch=4, max_queue=16)
    first, first_out = _in_thread(b.run_many, [_t(1)])
    assert gate.entered.wait(5)
    others = [_in_thread(b.run_many, [_t(v)]) for v in (2, 3, 4, 5, 6)]
    _wait_for(lambda: b.depth == 5)
    gate.release.set()
    for t, _ in [(first, first_out), *others]:
        t.join(10)
    assert first_out == [[12.0]]
    assert [out for _, out in others] == [[[24.0]], [[36.0]], [[48.0]], [[60.0]], [[72.0]]]
    assert gate.sizes == [1, 4, 1]  # no waiting for company; then at most max_batch per run
    assert b.stats.items == 6
    assert b.stats.batches == 3


def test_max_delay_waits_for_a_fuller_batch() -> None:
    calls: list[int] = []

    def run(tensors: Any) -> list[Any]:
        calls.append(len(tensors))
        return [0] * len(tensors)

    b = DynamicBatcher("m", run, max_batch=3, max_delay_s=2.0)
    threads = []
    for v in range(3):
        threads.append(_in_thread(b.run_many, [_t(v)])[0])
        time.sleep(0.02)
    t0 = time.monotonic()
    for t in threads:
        t.join(10)
    assert calls == [3]
    assert time.monotonic() - t0 < 1.5  # a full batch does not wait out the delay


def test_full_queue_refuses_with_overloaded() -> None:
    gate = Gate()
    b = DynamicBatcher("m", gate, max_batch=1, max_queue=2)
    running, _ = _in_thread(b.run_many, [_t(1)])
    assert gate.entered.wait(5)
    waiting = [_in_thread(b.run_many, [_t(2)]), _in_thread(b.run_many, [_t(3)])]
    _wait_for(lambda: b.depth == 2)
    with pytest.raises(Overloaded) as err:
        b.run_many([_t(4)])
    assert err.value.status == 503
    gate.release.set()
    for t, _ in waiting:
        t.join(10)
    running.join(10)
    assert [out for _, out in waiting] == [[[24.0]], [[36.0]]]


def test_a_large_request_into_an_empty_queue_is_taken_whole() -> None:
    gate = Gate()
    gate.release.set()
    b = DynamicBatcher("m", gate, max_batch=2, max_queue=2)
    assert b.run_many([_t(v) for v in (1, 2, 3, 4, 5)]) == [12.0, 24.0, 36.0, 48.0, 60.0]
    assert gate.sizes == [2, 2, 1]


def test_engine_failure_reaches_every_caller_of_the_batch_and_the_next_run_works() -> None:
    gate = Gate()
    fail = threading.Event()

    def run(tensors: Any) -> list[Any]:
        out = gate(tensors)
        if fail.is_set():
            raise RuntimeError("engine exploded")
        return out

    b = DynamicBatcher("m", run, max_batch=4)
    first, first_out = _in_thread(b.run_many, [_t(1)])
    assert gate.entered.wait(5)
    fail.set()
    others = [_in_thread(b.run_many, [_t(v)]) for v in (2, 3)]
    _wait_for(lambda: b.depth == 2)
    gate.release.set()
    for t, _ in [(first, first_out), *others]:
        t.join(10)
    assert all(isinstance(out[0], RuntimeError) for out in [first_out] + [o for _, o in others]), (first_out, others)
    fail.clear()
    assert b.run_many([_t(1)]) == [12.0]


def test_close_refuses_new_work() -> None:
    gate = Gate()
    gate.release.set()
    b = DynamicBatcher("m", gate, max_batch=1)
    b.close()
    with pytest.raises(NotReady):
        b.run_many([_t(1)])


def test_manager_loads_once_under_concurrent_first_requests(store: Any) -> None:
    from edge_agent.serving.manager import ModelManager

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
    for i in range(3):
        with pytest.raises(ModelNotFound):
            manager.get(f"nope/{i}")
    assert manager._loading == {}  # failed loads leave nothing behind
    manager.clear()
    assert manager.loaded() == []


def test_batched_results_equal_unbatched(store: Any) -> None:
    from edge_agent.demo.shapes import generate_scene
    from edge_agent.params import InferenceParams
    from edge_agent.serving.manager import ModelManager
    from engines import EnginePrefs

    images = [generate_scene(s, size=(240, 320)).image for s in range(6)]
    params = InferenceParams()
    plain, _ = ModelManager(store, EnginePrefs(batching=False)).get("shapes-seg/1")
    batched, _ = ModelManager(store, EnginePrefs(batching=True, batching_max_delay_ms=50)).get("shapes-seg/1")
    expected = plain.infer(images, params)
    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(lambda im: batched.infer([im], params)[0], images))
    assert batched.batcher is not None
    assert batched.batcher.stats.batches < len(images)
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g.xyxy, e.xyxy, atol=1e-3)
        assert g.class_id.tolist() == e.class_id.tolist()
        assert [len(p) for p in g.polygons] == [len(p) for p in e.polygons]


def test_auto_batching_is_off_for_cpu_engines(store: Any) -> None:
    from edge_agent.serving.manager import ModelManager
    from engines import EnginePrefs

    runs: list[tuple[str, int]] = []
    auto, _ = ModelManager(store, on_batch=lambda mid, n, s: runs.append((mid, n))).get("shapes/1")
    assert "CPUExecutionProvider" in auto.model.engine.name
    assert auto.batcher is None
    from edge_agent.demo.shapes import generate_scene
    from edge_agent.params import InferenceParams

    auto.infer([generate_scene(s, size=(120, 160)).image for s in range(3)], InferenceParams())
    assert runs == [("shapes/1", 3)]  # engine runs are still counted for /metrics
    forced, _ = ModelManager(store, EnginePrefs(batching=True)).get("shapes/1")
    assert forced.batcher is not None


def test_one_run_path_in_chunks_of_the_engine_batch(store: Any) -> None:
    """``Model.run`` alone and ``LoadedModel.infer`` with and without a batcher give the same results;
    no engine run takes more than the engine's maximum batch; every result carries the whole call's time."""
    from edge_agent.demo.shapes import generate_scene
    from edge_agent.params import InferenceParams
    from edge_agent.serving.manager import ModelManager
    from engines import EnginePrefs

    images = [generate_scene(s, size=(120, 160)).image for s in range(5)]
    params = InferenceParams(confidence=0.3)
    runs: list[int] = []
    plain, _ = ModelManager(store, EnginePrefs(batching=False, max_batch=2),
                            on_batch=lambda mid, n, s: runs.append(n)).get("shapes/1")
    batched, _ = ModelManager(store, EnginePrefs(batching=True, max_batch=2)).get("shapes/1")
    assert plain.model.engine.max_batch == 2, "the demo detector's batch axis is dynamic, capped by max_batch"
    alone = plain.model.run(images, params)
    assert runs == [], "Model.run alone is not a served run: nothing reported"
    unbatched = plain.infer(images, params)
    assert runs == [2, 2, 1]
    through_batcher = batched.infer(images, params)
    assert batched.batcher is not None
    assert batched.batcher.stats.sizes == {2: 2, 1: 1}
    for name, results in (("unbatched", unbatched), ("batched", through_batcher)):
        assert [len(r) for r in results] == [len(r) for r in alone], name
        for a, b in zip(alone, results):
            np.testing.assert_allclose(b.xyxy, a.xyxy, atol=1e-4, err_msg=name)
        assert len({r.time for r in results}) == 1, f"{name}: one time for the whole call"
