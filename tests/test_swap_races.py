"""Switching a model id to a new version while it serves: no request fails, an old version never comes
back, and a TensorRT engine built for a version replaced meanwhile never serves.

Real parts throughout: the demo models and hand-made ONNX models (tests/onnx_builders.py), a real
``ModelManager`` over a real ``ModelStore`` in tmp_path, the real ``Accelerator`` with its build child
process; only TensorRT is the stand-in of tests/trt_stand_in.py. The provisioner's activation is
reproduced step by step (stage, load the candidate, commit, swap, invalidate) so that a test can act
between two steps."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge_agent.errors import Overloaded
from edge_agent.params import InferenceParams
from edge_agent.serving import manager as serving_manager
from edge_agent.serving.accelerate import Accelerator
from edge_agent.serving.accelerate_setup import build_accelerator
from edge_agent.serving.batching import DynamicBatcher
from edge_agent.serving.loading import load_model, load_stored
from edge_agent.serving.manager import LoadedModel, ModelManager
from edge_agent.serving.model import Model
from edge_agent.settings import load_settings
from edge_agent.store.model_store import ModelStore, sha256_of
from engines import EnginePrefs, choose_backend
from onnx_builders import constant_model, ultralytics_metadata
from trt_stand_in import StandInBackend

TESTS = Path(__file__).resolve().parent
SAMPLE = cv2.imread(str(TESTS.parent / "edge_agent" / "demo" / "sample.jpg"))
ID = "acme/1"

pytestmark = pytest.mark.usefixtures("stand_in_path")  # the build child imports trt_stand_in


def det_onnx(path: Path, x: float) -> Path:
    """A 64x64 detector whose one box (class 0) is centred at ``x``: each version moves it."""
    out = np.zeros((6, 1), np.float32)
    out[:4, 0], out[4, 0] = [x, 32, 20, 10], 0.9
    return constant_model(path, {"output0": out}, metadata=ultralytics_metadata("detect", ["a", "b"], (64, 64)))


@pytest.fixture
def versions(tmp_path: Path) -> list[Path]:
    return [det_onnx(tmp_path / f"v{i}.onnx", 20.0 + 10 * i) for i in range(2)]


def sha(model: LoadedModel | Model | None) -> str:
    assert model is not None
    m = model.model if isinstance(model, LoadedModel) else model
    return m.manifest.weights.sha256


def activate(store: ModelStore, manager: ModelManager, source: Path,
             between: Callable[[], None] = lambda: None) -> None:
    """What ``Provisioner._activate`` does once the checks passed: commit, swap, invalidate."""
    staged = store.stage(source, ID)
    candidate = load_model(staged.manifest, staged.onnx)
    store.commit(staged)
    between()
    if manager.swap(ID, candidate, only_if_loaded=True) is None:
        candidate.close()
        manager.invalidate(ID)


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def target() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


# -- 1. requests over a swap, batching on --------------------------------------------------------


def test_a_request_holding_a_swapped_out_model_runs_it_unbatched(store: ModelStore) -> None:
    manager = ModelManager(store, EnginePrefs(batching=True))
    old, _ = manager.get("shapes/1")
    expected = old.infer([SAMPLE], InferenceParams())[0]
    assert manager.swap("shapes/1", load_stored(store, "shapes/1")) is not None
    assert old.batcher is not None
    assert old.batcher.closed  # what used to answer 503 "being unloaded"
    result = old.infer([SAMPLE, SAMPLE], InferenceParams())
    assert [len(r) for r in result] == [len(expected)] * 2
    np.testing.assert_allclose(result[0].xyxy, expected.xyxy, atol=1e-3)  # type: ignore[union-attr]
    assert manager.unload("shapes/1")
    assert manager.peek("shapes/1") is None  # unload semantics unchanged


def test_an_open_batcher_still_refuses_when_its_queue_is_full(store: ModelStore) -> None:
    """Only a closed batcher's NotReady falls back; Overloaded still reaches the caller (503)."""
    model = load_stored(store, "shapes-cls/1")
    entered, release = threading.Event(), threading.Event()

    def slow(tensors: Any) -> list[list[np.ndarray]]:
        entered.set()
        release.wait(10)
        return model.forward(tensors)

    loaded = LoadedModel(model, DynamicBatcher("shapes-cls/1", slow, max_batch=1, max_queue=1), 0.0)
    running, first = in_thread(lambda: loaded.infer([SAMPLE], InferenceParams()))
    assert entered.wait(10)
    queued, second = in_thread(lambda: loaded.infer([SAMPLE], InferenceParams()))
    deadline = time.monotonic() + 10
    while loaded.batcher.depth == 0:  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.005)
    with pytest.raises(Overloaded):
        loaded.infer([SAMPLE], InferenceParams())
    release.set()
    for t in (running, queued):
        t.join(10)
    for r in (first, second):
        assert isinstance(r[0], list), (first, second)
        assert len(r[0]) == 1, (first, second)


def test_no_request_fails_over_many_swaps_with_batching_on(store: ModelStore) -> None:
    manager = ModelManager(store, EnginePrefs(batching=True, batching_max_batch=4))
    models = [load_stored(store, "shapes/1"), load_stored(store, "shapes/1")]
    expected = len(manager.get("shapes/1")[0].infer([SAMPLE], InferenceParams())[0])
    stop = threading.Event()
    errors: list[BaseException] = []
    counts: list[int] = []

    def client() -> None:
        while not stop.is_set():
            try:
                loaded, _ = manager.get("shapes/1")
                counts.extend(len(r) for r in loaded.infer([SAMPLE] * (1 + len(counts) % 3), InferenceParams()))
            except BaseException as exc:  # noqa: BLE001 - every failure is the test's business
                errors.append(exc)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(6)]
    for t in threads:
        t.start()
    swaps = 0
    deadline = time.monotonic() + 15.0
    while (swaps < 200 or len(counts) < 200) and time.monotonic() < deadline:
        assert manager.swap("shapes/1", models[swaps % 2]) is not None
        swaps += 1
        time.sleep(0.002)
    stop.set()
    for t in threads:
        t.join(10)
    assert not errors, errors[:3]
    assert swaps >= 200
    assert len(counts) >= 200
    assert set(counts) == {expected}


# -- 2. a cold load racing with an activation ---------------------------------------------------


class GatedLoads:
    """The manager's ``load_stored``, really loading, whose first load stops after reading the model
    until ``release`` is set."""

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        self.loads: list[Model] = []

    def __call__(self, store: ModelStore, model_id: str, prefs: Any = None, engine_for: Any = None) -> Model:
        model = load_stored(store, model_id, prefs, engine_for)
        self.loads.append(model)
        if len(self.loads) == 1:
            self.entered.set()
            assert self.release.wait(10)
        return model


@pytest.mark.parametrize("meanwhile, loads, serves", [
    ("nothing", 1, 0),
    ("activation", 2, 1),  # commit, swap (returns None: not loaded yet), invalidate
    ("commit and invalidate", 2, 1),
    ("invalidate only", 2, 0),  # a spurious invalidate costs a load, never a wrong version
])
def test_a_load_begun_before_an_activation_never_reinstates_the_old_version(
        tmp_path: Path, versions: list[Path], meanwhile: str, loads: int, serves: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    gate = GatedLoads()
    monkeypatch.setattr(serving_manager, "load_stored", gate)
    store = ModelStore(tmp_path / "models", builtin_root=None)
    store.install(versions[0], ID)
    manager = ModelManager(store, EnginePrefs(batching=True))
    first, got_first = in_thread(lambda: manager.get(ID))
    assert gate.entered.wait(10)  # the old version is loaded, not yet served
    second, got_second = in_thread(lambda: manager.get(ID))  # waits for the first load
    assert manager.loading() == {ID}
    # Done in a thread: none of these may wait for the load in flight (it holds the id's load lock).
    if meanwhile == "activation":
        act, acted = in_thread(lambda: activate(store, manager, versions[1]))
    elif meanwhile == "commit and invalidate":
        act, acted = in_thread(lambda: (store.commit(store.stage(versions[1], ID)), manager.invalidate(ID)))
    elif meanwhile == "invalidate only":
        act, acted = in_thread(lambda: manager.invalidate(ID))
    else:
        act, acted = in_thread(lambda: None)
    act.join(5)
    assert not act.is_alive(), acted
    assert not isinstance(acted[0], BaseException), acted
    gate.release.set()
    for t in (first, second):
        t.join(10)
    (loaded, cold), (other, other_cold) = got_first[0], got_second[0]
    assert cold
    assert not other_cold
    assert other is loaded
    assert sha(loaded) == sha(manager.peek(ID)) == sha256_of(versions[serves])
    assert len(gate.loads) == loads
    assert manager.cold_starts == 1
    assert manager.loading() == set()
    if loads == 2:  # the stale load was thrown away: its engine released, its batcher closed
        assert not hasattr(gate.loads[0].engine, "_session")
    assert len(loaded.infer([SAMPLE], InferenceParams())[0]) == 1


def test_a_failed_load_leaves_nothing_loading(tmp_path: Path) -> None:
    manager = ModelManager(ModelStore(tmp_path / "models", builtin_root=None))
    with pytest.raises(Exception, match="not in the model store"):
        manager.get("nobody/1")
    assert manager.loading() == set()


# -- 3. TensorRT builds of a version replaced meanwhile ------------------------------------------


@pytest.fixture
def accelerated(tmp_path: Path, versions: list[Path]) -> Iterator[tuple[ModelStore, ModelManager, Accelerator]]:
    """acme/1 at version 0, loaded and served by ONNX Runtime; builds only when the test asks."""
    settings = load_settings(None, {"EDGE_AGENT_CONFIG": "", "EDGE_AGENT_STATE_DIR": str(tmp_path / "state")},
                             overrides={"paths.cache_dir": str(tmp_path / "cache"), "engine.build_engines": False})
    store = ModelStore(tmp_path / "models", builtin_root=None)
    store.install(versions[0], ID)
    accelerator = build_accelerator(settings, choose_backend(settings.engine_prefs), backend=StandInBackend())
    assert accelerator is not None
    manager = ModelManager(store, EnginePrefs(batching=True), accelerator=accelerator)
    loaded, _ = manager.get(ID)
    assert loaded.model.engine.name.startswith("onnxruntime")
    yield store, manager, accelerator
    accelerator.stop()
    manager.clear()


@pytest.mark.parametrize("when, builds, cached", [
    ("before the build", 0, False),  # the ONNX file is already the new one: nothing is built
    ("while building", 1, False),  # built from the old file, but there is no old reference to check it on
    ("while checking", 1, True),  # checked against the old version: cached, but not swapped in
])
def test_an_engine_of_a_replaced_version_never_serves(
        accelerated: tuple[ModelStore, ModelManager, Accelerator], versions: list[Path],
        when: str, builds: int, cached: bool) -> None:
    store, manager, accelerator = accelerated
    manifest, onnx = manager.onnx_path(ID)  # version 0, as the build job holds them
    key = accelerator.key(manifest)
    backend: StandInBackend = accelerator.backend  # type: ignore[assignment]
    images = accelerator.images
    done: list[bool] = []

    def activate_once() -> None:
        if not done:
            done.append(True)
            activate(store, manager, versions[1])

    if when == "before the build":
        activate_once()
    elif when == "while checking":  # after the reference (version 0) was taken, before the swap
        accelerator.images = lambda model_id, n: (activate_once(), images(model_id, n))[1]

    def on_event(event: dict[str, Any]) -> None:
        if when == "while building" and event.get("event") == "progress" and event.get("fraction"):
            activate_once()

    status = accelerator.build(ID, manifest, onnx, manager.switch_over(ID), on_event=on_event)
    assert done, status
    assert status.state == "onnxruntime", status
    assert status.backend == "onnxruntime", status
    assert "no longer the model's current version" in (status.reason or ""), status
    assert accelerator.status(ID) == status
    served = manager.peek(ID)
    assert sha(served) == sha256_of(versions[1])
    assert served.model.engine.name.startswith("onnxruntime")  # type: ignore[union-attr]
    assert accelerator.builds == builds
    assert all(e.closed for e in backend.loaded), [e for e in backend.loaded if not e.closed]
    assert accelerator.cache.failure(key) is None  # not a failure: no marker, a later rollback may build it
    entry = accelerator.cache.lookup(key).entry
    assert (entry is not None) == cached
    assert not list((accelerator.cache.root / ".tmp").glob("*"))  # no temp plan or pinned ONNX left
    if cached:  # the plan is kept: a rollback to version 0 is served by it at once, without a build
        assert entry is not None
        assert entry.sidecar["verified"]["images"] > 0
        store.rollback(ID)
        manager.unload(ID)
        again, _ = manager.get(ID)
        assert sha(again) == sha256_of(versions[0])
        assert again.model.engine.name == "tensorrt-stand-in"
        assert accelerator.builds == 1


def test_a_queued_build_of_a_replaced_version_is_skipped(
        accelerated: tuple[ModelStore, ModelManager, Accelerator], versions: list[Path]) -> None:
    store, manager, accelerator = accelerated
    manifest, onnx = manager.onnx_path(ID)
    activate(store, manager, versions[1])
    accelerator.schedule(ID, manifest, onnx, manager.switch_over(ID), force=True)
    deadline = time.monotonic() + 10
    while (status := accelerator.status(ID)) is None or status.state != "onnxruntime":
        assert time.monotonic() < deadline, status
        time.sleep(0.02)
    assert accelerator.builds == 0, status
    assert "not building" in (status.reason or ""), status


def test_a_build_of_the_current_version_still_swaps_in(
        accelerated: tuple[ModelStore, ModelManager, Accelerator]) -> None:
    _, manager, accelerator = accelerated
    manifest, onnx = manager.onnx_path(ID)
    status = accelerator.build(ID, manifest, onnx, manager.switch_over(ID))
    assert status.state == "tensorrt", status
    assert status.backend == "tensorrt", status
    assert manager.peek(ID).model.engine.name == "tensorrt-stand-in"  # type: ignore[union-attr]


def test_swap_same_weights_refuses_another_version(
        accelerated: tuple[ModelStore, ModelManager, Accelerator], versions: list[Path]) -> None:
    """The accelerator's switch: the served model's sha256 is tested and replaced in one step."""
    store, manager, _ = accelerated
    old = load_stored(store, ID)
    activate(store, manager, versions[1])
    assert manager.swap(ID, old, same_weights=True) is None
    assert sha(manager.peek(ID)) == sha256_of(versions[1])
    assert manager.swap(ID, load_stored(store, ID), same_weights=True) is not None
    manager.unload(ID)
    assert manager.swap(ID, load_stored(store, ID), same_weights=True) is None  # not loaded: nothing to switch
