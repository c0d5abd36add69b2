"""Provisioning from a device's own tools: ``edge-agent models add URL`` / ``rollback`` / ``show`` /
``evict`` run as real processes, the Python API's ``get_model(api_key=...)`` and a pipeline's
``api_key`` pulling from a loopback fake of Roboflow's cloud, and the disk budget at start-up."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from fake_roboflow import FakeRoboflow, demo_package

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "edge_agent" / "demo" / "store"
SAMPLE = ROOT / "edge_agent" / "demo" / "sample.jpg"
KEY = "rf-key-local-77b1"


def _variant(note: str) -> bytes:
    import onnx

    model = onnx.load(str(DEMO / "shapes/1/model.onnx"))
    entry = model.metadata_props.add()
    entry.key, entry.value = "edge_agent_test", note
    return bytes(model.SerializeToString())


def _cli(*args: str, state: Path) -> Any:
    env = {**os.environ, "EDGE_AGENT_STATE_DIR": str(state), "EDGE_AGENT_CONFIG": "",
           "EDGE_AGENT_SERVER__PORT": "1"}  # no daemon answers there: the CLI says so and goes on
    done = subprocess.run([sys.executable, "-m", "edge_agent", *args], capture_output=True, text=True, env=env,
                          timeout=120)
    return done


@pytest.fixture
def files(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    folder = tmp_path / "files"
    folder.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(SimpleHTTPRequestHandler, directory=str(folder)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", folder
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_cli_add_from_url_rollback_and_show(tmp_path: Path, files: tuple[str, Path]) -> None:
    base, folder = files
    state = tmp_path / "state"
    v1, v2 = _variant("one"), _variant("two")
    (folder / "v1.onnx").write_bytes(v1)
    (folder / "v2.onnx").write_bytes(v2)
    sha1, sha2 = hashlib.sha256(v1).hexdigest(), hashlib.sha256(v2).hexdigest()

    done = _cli("models", "add", f"{base}/v1.onnx", "--id", "line/1", "--sha256", "0" * 64, state=state)
    assert done.returncode == 2
    assert "sha256" in done.stderr
    assert _cli("models", "show", "line/1", state=state).returncode == 2  # nothing was installed
    assert not list((state / "models").rglob("*.part"))

    done = _cli("models", "add", f"{base}/v1.onnx", "--id", "line/1", "--sha256", sha1, state=state)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["sha256"] == sha1
    assert "no daemon answered" in done.stdout
    done = _cli("models", "add", f"{base}/v2.onnx", "--id", "line/1", "--sha256", sha2, state=state)
    assert done.returncode == 0, done.stderr
    shown = json.loads(_cli("models", "show", "line/1", state=state).stdout)
    assert shown["weights"]["sha256"] == sha2
    assert [r["sha256"] for r in shown["revisions"]] == [sha1]

    # A classifier as a new version of a detector is refused; the store is unchanged.
    done = _cli("models", "add", str(DEMO / "shapes-cls/1/model.onnx"), "--id", "line/1", "--replace", state=state)
    assert done.returncode == 2, done.stderr
    assert "task" in done.stderr, done.stderr
    assert json.loads(_cli("models", "show", "line/1", state=state).stdout)["weights"]["sha256"] == sha2

    done = _cli("models", "rollback", "line/1", state=state)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["sha256"] == sha1, done.stderr
    shown = json.loads(_cli("models", "show", "line/1", state=state).stdout)
    assert shown["weights"]["sha256"] == sha1
    assert [r["sha256"] for r in shown["revisions"]] == [sha2]
    done = _cli("infer", str(SAMPLE), "--model", "line/1", state=state)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["predictions"], done.stderr


def test_python_api_and_pipelines_pull_with_a_key(tmp_path: Path) -> None:
    import edge_agent
    from edge_agent.pipeline_spec import PipelineSpec
    from edge_agent.runtime import Runtime
    from edge_agent.settings import EngineSettings, ModelsSettings, Settings

    packages = {"hard-hats/3": demo_package(DEMO / "shapes" / "1"), "parts/7": demo_package(DEMO / "shapes" / "1")}
    with FakeRoboflow(packages, api_key=KEY) as cloud:
        settings = Settings.defaults(tmp_path / "state").model_copy(update={
            "engine": EngineSettings(intra_op_threads=1),
            "models": ModelsSettings(api_url=cloud.api_url, download_timeout_s=2, download_retries=0)})
        model = edge_agent.get_model("hard-hats/3", KEY, settings=settings)
        reference = edge_agent.get_model("shapes/1", settings=settings)
        assert [p["class"] for p in model.infer_numpy(str(SAMPLE)).to_json()["predictions"]] == \
            [p["class"] for p in reference.infer_numpy(str(SAMPLE)).to_json()["predictions"]]
        assert cloud.requests["weights"] == 1
        edge_agent.get_model("hard-hats/3", KEY, settings=settings)
        assert cloud.requests["weights"] == 1  # the store has it now

        frames = tmp_path / "frames"
        frames.mkdir()
        for i in range(3):
            cv2.imwrite(str(frames / f"{i}.jpg"), cv2.imread(str(SAMPLE)))
        rt = Runtime(settings)
        rt.start()
        try:
            spec = PipelineSpec.model_validate({"model_id": "parts/7", "video_reference": str(frames),
                                                "pipeline_id": "pulled", "api_key": KEY})
            pipeline = rt.pipelines.start(spec)
            pipeline.join(60)
            assert pipeline.state == "finished", pipeline.status()
            assert pipeline.frames_inferred == 3, pipeline.status()
            assert KEY not in json.dumps(pipeline.status())
            assert KEY not in json.dumps(spec.model_dump(mode="json"))
        finally:
            rt.stop()
        assert cloud.requests["weights"] == 2


def _budget_mb_for_three(size: int) -> int:
    """A disk budget in whole MiB with room for three models of ``size`` bytes (and, checked below, not four)."""
    return max(1, (3 * size + size // 2) // (1024 * 1024))


_DEMO_SIZE = (DEMO / "shapes/1/model.onnx").stat().st_size


@pytest.mark.skipif(not 3 * _DEMO_SIZE < _budget_mb_for_three(_DEMO_SIZE) * 1024 * 1024 < 4 * _DEMO_SIZE,
                    reason="the demo model's size does not suit this budget arithmetic")
def test_the_disk_budget_evicts_unused_models_at_start(tmp_path: Path) -> None:
    from edge_agent.runtime import Runtime
    from edge_agent.settings import EngineSettings, ModelsSettings, ServerSettings, Settings
    from edge_agent.store.model_store import ModelStore

    store = ModelStore(tmp_path / "state" / "models")
    onnx = DEMO / "shapes/1/model.onnx"
    for i, model_id in enumerate(("old/1", "pinned/1", "preloaded/1", "recent/1")):
        store.install(onnx, model_id)
        store.touch(model_id, now=1_000_000.0 + i, force=True)  # long ago, oldest first
    size = onnx.stat().st_size
    settings = Settings.defaults(tmp_path / "state").model_copy(update={
        "engine": EngineSettings(intra_op_threads=1),
        "server": ServerSettings(preload_models=("preloaded/1",)),
        # room for three of the four; every one is idle long enough to go
        "models": ModelsSettings(disk_budget_mb=_budget_mb_for_three(size), evict_after_days=1, pinned=("pinned/1",))})
    budget = settings.models.disk_budget_mb * 1024 * 1024
    rt = Runtime(settings)
    rt.start()
    try:
        assert rt.ready.wait(60)
        kept = {s.manifest.model_id for s in rt.store.list() if not s.builtin}
        assert kept == {"pinned/1", "preloaded/1", "recent/1"}, kept
        assert rt.store.disk_usage() <= budget
        assert np.isfinite(rt.store.last_used("preloaded/1") or np.nan)
    finally:
        rt.stop()
