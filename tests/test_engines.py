"""The engine layer: back-end selection, provider choice, and error translation at the boundary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import engines
from edge_agent.serving.loading import load_stored
from engines.ort import choose_providers


@pytest.mark.parametrize(
    ("wanted", "available", "expected"),
    [
        ((), ["CPUExecutionProvider"], ["CPUExecutionProvider"]),
        (("cuda",), ["CPUExecutionProvider"], ["CPUExecutionProvider"]),  # asked for, absent: CPU, warned
        (("cuda",), ["CUDAExecutionProvider", "CPUExecutionProvider"],
         ["CUDAExecutionProvider", "CPUExecutionProvider"]),
        (("tensorrt", "cuda"), ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
         ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]),
    ],
)
def test_provider_order(wanted: tuple[str, ...], available: list[str], expected: list[str]) -> None:
    assert choose_providers(wanted, available) == expected


def test_select_engine_runs_on_cpu(detector_onnx: Path) -> None:
    engine = engines.select_engine(detector_onnx, engines.EnginePrefs(intra_op_threads=1, max_batch=4))
    assert engine.name == "onnxruntime:CPUExecutionProvider"
    assert engine.inputs[0].shape == (None, 3, 64, 64)
    assert engine.inputs[0].dynamic_batch
    assert engine.max_batch == 4
    outputs = engine.run(np.zeros((3, 3, 64, 64), np.float32))
    assert outputs[0].shape == (3, 6, 3)
    engine.close()


def test_errors_are_translated(detector_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(engines.EngineUnavailable, match="unknown engine back-end 'warp-drive'"):
        engines.select_engine(detector_onnx, engines.EnginePrefs(backend="warp-drive"))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"nope")
    with pytest.raises(engines.EngineLoadError, match=r"bad\.onnx: ONNX Runtime cannot load it") as info:
        engines.select_engine(bad)
    assert info.value.__cause__ is not None  # the runtime's exception is chained
    engine = engines.select_engine(detector_onnx)
    with pytest.raises(engines.EngineRunError, match=r"run failed for input of shape \(1, 3, 32, 32\)"):
        engine.run(np.zeros((1, 3, 32, 32), np.float32))


def test_engine_failure_reaches_the_caller_typed(store, detector_onnx: Path) -> None:  # type: ignore[no-untyped-def]
    from edge_agent.errors import EngineFailure

    store.install(detector_onnx, "det/1")
    model = load_stored(store, "det/1")
    model.engine.close()  # a broken engine: every run fails
    with pytest.raises(EngineFailure, match="model det/1"):
        model.infer(np.zeros((64, 64, 3), np.uint8))


def test_importing_engines_loads_no_runtime() -> None:
    import subprocess
    import sys

    code = "import sys, engines, edge_agent; print('onnxruntime' in sys.modules, 'cv2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
