"""``edge-agent selftest`` and ``edge-agent compile``: the real commands on this machine (no TensorRT:
its checks are skipped with the reason), and the whole selftest with the TensorRT stand-in, so that
the build, cache reload and truncation checks a device runs are exercised here too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent import selftest
from edge_agent.settings import load_settings
from trt_stand_in import StandInBackend

TESTS = Path(__file__).resolve().parent


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGE_AGENT_CONFIG": "", "EDGE_AGENT_STATE_DIR": str(tmp_path / "state"),
           "EDGE_AGENT_PATHS__CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-m", "edge_agent", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_selftest_command_passes_on_onnx_runtime_and_says_why_tensorrt_is_skipped(tmp_path: Path) -> None:
    done = _cli(tmp_path, "selftest", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    verdicts = {c["name"]: c for c in report["checks"]}
    assert report["ok"] is True
    for model_id in selftest.DEMO_MODELS:
        assert verdicts[f"onnxruntime {model_id}"]["verdict"] == "PASS"
    assert verdicts["onnxruntime shapes/1"]["detail"] == "6 of the sample's 6 shapes found"
    assert verdicts["tensorrt"]["verdict"] == "SKIP" and "TensorRT not used" in verdicts["tensorrt"]["detail"]


def test_selftest_text_report_and_a_failing_check(tmp_path: Path) -> None:
    done = _cli(tmp_path, "selftest")
    assert done.returncode == 0 and "selftest passed: 6 pass, 0 fail, 1 skip" in done.stdout
    checks = selftest.run(load_settings(None, {"EDGE_AGENT_CONFIG": "", "EDGE_AGENT_STATE_DIR": str(tmp_path)}),
                          models=("shapes/1", "missing/9"))
    failed = [c for c in checks if c.ok is False]
    assert [c.name for c in failed] == ["onnxruntime missing/9"] and "not in the model store" in failed[0].detail
    assert selftest.as_dict(checks)["ok"] is False


def test_compile_without_tensorrt_exits_2_with_the_reason(tmp_path: Path) -> None:
    done = _cli(tmp_path, "compile", "shapes/1")
    assert done.returncode == 2
    assert "cannot build a TensorRT engine here: TensorRT not used:" in done.stderr


def test_the_whole_selftest_with_the_tensorrt_stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    settings = load_settings(None, {"EDGE_AGENT_CONFIG": "", "EDGE_AGENT_STATE_DIR": str(tmp_path / "state")},
                             overrides={"paths.cache_dir": str(tmp_path / "cache")})
    seen: list[str] = []
    checks = selftest.run(settings, backend=StandInBackend(), report=lambda c: seen.append(c.name))
    by_name = {c.name: c for c in checks}
    assert seen == [c.name for c in checks]  # reported as they end
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]
    for model_id in selftest.DEMO_MODELS:
        assert "built and checked" in by_name[f"tensorrt engine {model_id}"].detail
        assert "without a build" in by_name[f"tensorrt reload {model_id}"].detail
    assert "rejected (the plan has" in by_name["tensorrt truncated plan"].detail
    assert len(list((tmp_path / "cache" / "engines").glob("*.plan"))) == 4

    again = selftest.run(settings, backend=StandInBackend())  # a second run finds every engine cached
    assert all(c.ok for c in again)
    assert all("engine cache" in c.detail for c in again if c.name.startswith("tensorrt engine"))
