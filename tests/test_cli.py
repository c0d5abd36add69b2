"""The ``edge-agent`` command, run as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from edge_agent.demo.shapes import generate_scene


def run(*args: str, state: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGE_AGENT_STATE_DIR": str(state)}
    return subprocess.run([sys.executable, "-m", "edge_agent", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_infer_prints_json_and_draws(tmp_path: Path) -> None:
    scene = generate_scene(11, size=(360, 480))
    image = tmp_path / "scene.png"
    cv2.imwrite(str(image), scene.image)
    out = tmp_path / "drawn.jpg"
    done = run("infer", str(image), "--model", "shapes/1", "--visualize", str(out), state=tmp_path)
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["image"] == {"width": 480, "height": 360}
    assert {p["class"] for p in body["predictions"]} <= {"circle", "square", "triangle", "star"}
    assert len(body["predictions"]) >= 1
    drawn = cv2.imread(str(out))
    assert drawn.shape == scene.image.shape
    assert np.abs(drawn.astype(int) - scene.image.astype(int)).sum() > 0  # something was drawn


def test_infer_defaults_to_the_bundled_sample(tmp_path: Path) -> None:
    done = run("infer", state=tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["predictions"]) >= 1


def test_models_add_list_show_remove(tmp_path: Path, detector_onnx: Path) -> None:
    state = tmp_path / "state"
    added = run("models", "add", str(detector_onnx), "--id", "mine/3", state=state)
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["task"] == "object-detection"
    listed = {m["model_id"]: m for m in json.loads(run("models", "list", state=state).stdout)}
    assert listed["mine/3"]["builtin"] is False
    assert listed["shapes/1"]["builtin"] is True
    shown = json.loads(run("models", "show", "mine/3", state=state).stdout)
    assert shown["class_names"] == ["a", "b"]
    assert shown["path"].startswith(str(state))
    assert run("models", "remove", "mine/3", state=state).returncode == 0
    assert "mine/3" not in {m["model_id"] for m in json.loads(run("models", "list", state=state).stdout)}


def test_errors_are_one_clear_line_and_exit_2(tmp_path: Path) -> None:
    missing = run("infer", str(tmp_path / "nope.jpg"), state=tmp_path)
    assert missing.returncode == 2
    assert "Cannot read image file" in missing.stderr
    assert "Traceback" not in missing.stderr
    unknown = run("infer", "--model", "ghost/1", state=tmp_path)
    assert unknown.returncode == 2
    assert "'ghost/1' is not in the model store" in unknown.stderr
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    broken = run("models", "add", str(bad), "--id", "bad/1", state=tmp_path)
    assert broken.returncode == 2
    assert "bad.onnx: not a valid ONNX model" in broken.stderr


def test_an_installed_id_is_its_own_error_type(tmp_path: Path, detector_onnx: Path) -> None:
    """The CLI's --replace hint catches this type (not the message's wording)."""
    import pytest

    from edge_agent.errors import ModelAlreadyInstalled, ModelImportError
    from edge_agent.store.model_store import ModelStore

    store = ModelStore(tmp_path / "models")
    store.install(detector_onnx, "det/1")
    with pytest.raises(ModelAlreadyInstalled) as info:
        store.install(detector_onnx, "det/1")
    assert isinstance(info.value, ModelImportError)
    assert info.value.model_id == "det/1"
    assert info.value.message == "'det/1' is already installed; remove it first or replace it"
