"""How ONNX Runtime sessions are configured from the settings: the threads' wait between runs
(``[engine] idle_spin``, ``engines.ort.spin_options``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edge_agent.settings import ActiveLearningSettings, EngineSettings, Settings
from engines import EnginePrefs
from engines.ort import SHORT_SPIN_US, OrtEngine, spin_options

SPIN_KEY = "session.intra_op.spin_duration_us"
STOP_KEY = "session.force_spinning_stop"


@pytest.mark.parametrize(("version", "short", "expected"), [
    ("1.32.0", False, {}),  # ONNX Runtime's own spin
    ("1.32.0", True, {SPIN_KEY: str(SHORT_SPIN_US)}),
    ("1.26.0", True, {SPIN_KEY: str(SHORT_SPIN_US)}),  # the first release with a spin measured in time
    ("1.25.1", True, {STOP_KEY: "1"}),  # before it: stop spinning when a run returns
    ("1.17.3", True, {STOP_KEY: "1"}),
    ("1.27.0.dev20260101", True, {SPIN_KEY: str(SHORT_SPIN_US)}),
    ("unknown", True, {STOP_KEY: "1"}),
])
def test_spin_options_by_version(version: str, short: bool, expected: dict[str, str]) -> None:
    assert spin_options(version, short) == expected


@pytest.mark.parametrize(("idle_spin", "active_learning", "short"), [
    ("auto", False, False), ("auto", True, True), ("short", False, True), ("long", True, False)])
def test_idle_spin_follows_active_learning_unless_set(tmp_path: Path, idle_spin: str, active_learning: bool,
                                                      short: bool) -> None:
    settings = Settings.defaults(tmp_path).model_copy(update={
        "engine": EngineSettings(idle_spin=idle_spin),
        "active_learning": ActiveLearningSettings(enabled=active_learning, strategies=(
            {"name": "all", "type": "random", "traffic_percentage": 1.0},))})
    assert settings.engine_prefs.short_spin is short
    assert settings.for_pipelines().engine_prefs.short_spin is (idle_spin != "long")


def test_configured_pipelines_wait_short(tmp_path: Path) -> None:
    from edge_agent.settings import PipelineSpec, PipelinesSettings

    streams = (PipelineSpec(model_id="shapes/1", video_reference="rtsp://127.0.0.1:8554/cam", pipeline_id="cam"),)
    settings = Settings.defaults(tmp_path).model_copy(update={"pipelines": PipelinesSettings(streams=streams)})
    assert settings.engine_prefs.short_spin is True
    assert Settings.defaults(tmp_path).engine_prefs.short_spin is False


@pytest.mark.parametrize("short", [False, True])
def test_a_session_runs_with_either_wait(detector_onnx: Path, short: bool) -> None:
    engine = OrtEngine(detector_onnx, EnginePrefs(short_spin=short))
    options = engine._session.get_session_options()
    if short:
        newer = tuple(int(p) for p in ort.__version__.split(".")[:2]) >= (1, 26)
        key, value = (SPIN_KEY, str(SHORT_SPIN_US)) if newer else (STOP_KEY, "1")
        assert options.get_session_config_entry(key) == value
    if not short:  # ONNX Runtime's default: neither key is set
        for key in (SPIN_KEY, STOP_KEY):
            with pytest.raises(RuntimeError, match="does not have configuration"):
                options.get_session_config_entry(key)
    (out,) = engine.run(np.zeros((1, 3, 64, 64), np.float32))
    assert out.shape == (1, 6, 3)


def test_a_scripts_pipeline_waits_short(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``InferencePipeline.init`` (the Python API) makes its runtime with the settings of a pipeline's process."""
    import edge_agent.api as api

    made: list[Settings] = []

    class Made(Exception):
        pass

    def runtime(settings: Settings) -> None:
        made.append(settings)
        raise Made

    monkeypatch.setattr(api, "Runtime", runtime)
    monkeypatch.setenv("EDGE_AGENT_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("EDGE_AGENT_CONFIG", "")
    with pytest.raises(Made):
        api.InferencePipeline.init(model_id="shapes/1", video_reference=str(tmp_path / "clip.mp4"),
                                   on_prediction=lambda *_: None)
    assert made[0].engine_prefs.short_spin is True


@pytest.mark.parametrize(("idle_spin", "hints"), [("auto", 1), ("short", 0)])
def test_the_first_pipeline_on_a_long_spin_says_how_to_wait_short(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                                   idle_spin: str, hints: int) -> None:
    """A daemon whose configuration has no pipelines keeps ONNX Runtime's long spin; the first pipeline
    started through its API logs how to give pipelines the cores."""
    import logging

    import cv2

    from edge_agent.pipeline_spec import PipelineSpec
    from edge_agent.runtime import Runtime

    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(2):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((96, 128, 3), 60 * i, np.uint8))
    runtime = Runtime(Settings.defaults(tmp_path / "state").model_copy(
        update={"engine": EngineSettings(idle_spin=idle_spin, intra_op_threads=1)}))
    runtime.start()
    try:
        with caplog.at_level(logging.INFO, logger="edge_agent.pipelines.manager"):
            for name in ("first", "second"):
                pipeline = runtime.pipelines.start(PipelineSpec(model_id="shapes/1", video_reference=str(folder),
                                                                pipeline_id=name))
                pipeline.join(60)
                assert pipeline.state == "finished"
    finally:
        runtime.stop()
    said = [r for r in caplog.records if 'idle_spin = "short"' in r.getMessage()]
    assert len(said) == hints
