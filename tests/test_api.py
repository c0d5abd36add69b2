"""The Python API: get_model on the pre-installed demo ids, the numpy path (``infer_numpy``): one image
or a list, to_json. Roboflow's ``infer`` and its response objects: tests/test_python_results.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edge_agent
from edge_agent.demo.shapes import generate_scene
from edge_agent.errors import ModelNotFound


def test_get_model_and_infer_single_and_list() -> None:
    model = edge_agent.get_model("shapes/1")
    scene = generate_scene(3, size=(300, 400))
    one = model.infer_numpy(scene.image, confidence=0.5)
    assert one.to_json()["image"] == {"width": 400, "height": 300}
    many = model.infer_numpy([scene.image, scene.image])
    assert isinstance(many, list)
    assert len(many) == 2


def test_demo_ids_are_preinstalled() -> None:
    ids = {s.manifest.model_id: s.manifest.task for s in edge_agent.open_store().list()}
    assert ids == {
        "shapes/1": "object-detection",
        "shapes-seg/1": "instance-segmentation",
        "shapes-pose/1": "keypoint-detection",
        "shapes-cls/1": "classification",
    }


def test_user_models_come_from_the_state_dir(detector_onnx: Path, tmp_path: Path) -> None:
    edge_agent.open_store().install(detector_onnx, "mine/1")
    assert (tmp_path / "state" / "models" / "mine" / "1" / "model.onnx").is_file()
    result = edge_agent.get_model("mine/1").infer_numpy(np.zeros((64, 64, 3), np.uint8))
    assert len(result) == 2
    with pytest.raises(ModelNotFound):
        edge_agent.get_model("mine/2")


def test_unknown_option_of_the_numpy_path_is_a_clear_error() -> None:
    """``infer_numpy`` is strict; Roboflow's ``infer`` ignores unknown options (tests/test_python_results.py)."""
    from edge_agent.errors import InvalidInput

    with pytest.raises(InvalidInput, match="unknown inference option"):
        edge_agent.get_model("shapes/1").infer_numpy(np.zeros((8, 8, 3), np.uint8), confidance=0.5)


def test_get_model_serves_on_onnx_runtime_when_tensorrt_is_asked_for_but_absent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``engine.backend = "trt"`` on a machine without TensorRT: the daemon falls back to ONNX Runtime
    with the reason, and so must the Python API (it once raised EngineUnavailable)."""
    monkeypatch.setenv("EDGE_AGENT_ENGINE__BACKEND", "trt")
    model = edge_agent.get_model("shapes/1")
    assert model.engine.name.startswith("onnxruntime")
    assert len(model.infer_numpy(generate_scene(3, size=(300, 400)).image, confidence=0.5)) > 0
