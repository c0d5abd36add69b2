"""The TensorRT suite: real TensorRT and pycuda on a CUDA GPU (a Jetson, or x86 with TensorRT).
Skipped where TensorRT is not usable, with the reason; nothing here is faked.

Not yet run on a machine with TensorRT (docs/jetson.md says what ran where)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

import engines
from edge_agent import selftest
from edge_agent.params import InferenceParams
from edge_agent.serving.accelerate_setup import compile_model, offline_accelerator
from edge_agent.serving.compare import disagreement
from edge_agent.serving.loading import load_stored
from edge_agent.serving.model import Model
from edge_agent.settings import Settings, load_settings

CHOICE = engines.choose_backend()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(CHOICE.backend != "tensorrt", reason=CHOICE.reason)]


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    return load_settings(None, {"EDGE_AGENT_CONFIG": "", "EDGE_AGENT_STATE_DIR": str(tmp_path / "state")},
                         overrides={"paths.cache_dir": str(tmp_path / "cache"), **overrides})


def test_build_run_compare_reload_and_rebuild_every_demo_model(tmp_path: Path) -> None:
    checks = selftest.run(_settings(tmp_path))
    failed = [c for c in checks if c.ok is not True]
    assert not failed, failed
    assert len(list((tmp_path / "cache" / "engines").glob("*.plan"))) == len(selftest.DEMO_MODELS)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_every_batch_size_of_the_profile_agrees_with_onnx_runtime(tmp_path: Path, precision: str) -> None:
    accelerator, manager = offline_accelerator(_settings(tmp_path, **{"engine.precision": precision}))
    status = compile_model(accelerator, manager, "shapes/1")
    assert status.state == "tensorrt", status
    manifest, onnx = manager.store.verified_onnx("shapes/1")
    engine = accelerator.cached_engine("shapes/1", manifest, onnx)
    assert engine is not None
    assert engine.max_batch == 8
    reference = load_stored(manager.store, "shapes/1", CHOICE.ort_prefs)
    images = [selftest._sample()] + [np.roll(selftest._sample(), 40 * i, axis=1) for i in range(1, 8)]
    params = InferenceParams()
    model = Model(manifest, engine)
    try:
        for n in (1, 4, 8):
            assert disagreement(reference.run(images[:n], params), model.run(images[:n], params)) \
                is None
    finally:
        engine.close()


def test_one_engine_from_several_threads(tmp_path: Path) -> None:
    """Each thread gets its own execution context and stream; results stay right under concurrency."""
    accelerator, manager = offline_accelerator(_settings(tmp_path))
    assert compile_model(accelerator, manager, "shapes-pose/1").state == "tensorrt"
    manifest, onnx = manager.store.verified_onnx("shapes-pose/1")
    engine = accelerator.cached_engine("shapes-pose/1", manifest, onnx)
    assert engine is not None
    model = Model(manifest, engine)
    image = selftest._sample()
    expected = model.run([image], InferenceParams())
    errors: list[str] = []

    def worker() -> None:
        for _ in range(50):
            why = disagreement(expected, model.run([image], InferenceParams()))
            if why:
                errors.append(why)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine.close()
    assert not errors, errors[:3]
