"""Shared fixtures: a clean environment per test, a temporary model store, hand-made ONNX models."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onnx_builders import constant_model, ultralytics_metadata


@pytest.fixture(autouse=True)
def clean_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No EDGE_AGENT_* variable leaks in from the shell; state goes to a per-test folder."""
    for key in list(os.environ):
        if key.startswith("EDGE_AGENT_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("EDGE_AGENT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("EDGE_AGENT_CONFIG", "")  # never the machine's /etc/edge-agent/config.toml
    yield


@pytest.fixture
def stand_in_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/ on the PYTHONPATH of child processes, so that a TensorRT build child imports trt_stand_in."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).resolve().parent),
                                                      os.environ.get("PYTHONPATH", "")]))


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    from edge_agent.store.model_store import ModelStore

    return ModelStore(tmp_path / "state" / "models")


@pytest.fixture
def detector_onnx(tmp_path: Path) -> Path:
    """A 64x64 'detector' with 2 classes whose output is three fixed boxes (yolov8 layout)."""
    out = np.zeros((6, 3), np.float32)
    out[:4, 0], out[4, 0] = [32, 32, 20, 10], 0.9
    out[:4, 1], out[4, 1] = [33, 32, 20, 10], 0.8  # overlaps box 0, same class
    out[:4, 2], out[5, 2] = [10, 30, 8, 8], 0.7
    return constant_model(tmp_path / "det.onnx", {"output0": out},
                          metadata=ultralytics_metadata("detect", ["a", "b"], (64, 64)))


@pytest.fixture(scope="session")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real daemon (gunicorn) for the session, default settings, nothing preloaded."""
    from servers import running_server

    with running_server(tmp_path_factory.mktemp("http-state")) as server:
        yield server


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Any]:
    """A started Runtime (default settings, one ONNX Runtime thread) with its state in tmp_path: what
    pipelines run in."""
    from edge_agent.runtime import Runtime
    from edge_agent.settings import EngineSettings, Settings

    rt = Runtime(Settings.defaults(tmp_path / "state").model_copy(
        update={"engine": EngineSettings(intra_op_threads=1)}))
    rt.start()
    yield rt
    rt.stop()
