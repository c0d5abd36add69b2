"""``edge-agent selftest`` and ``edge-agent compile``: the real commands on this machine (no TensorRT:
its checks are skipped with the reason), the whole selftest with the TensorRT stand-in, so that the
build, cache reload and truncation checks a device runs are exercised here too, and what the
``tensorrt`` check says on a Jetson that lacks a piece (stand-in device facts, file trees and CUDA)."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest

import engines
from edge_agent import selftest
from edge_agent.settings import load_settings
from engines import pycuda_build
from engines.device import DeviceInfo, probe
from trt_stand_in import StandInBackend


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
    assert verdicts["tensorrt"]["verdict"] == "SKIP"
    device = probe()
    if device.jetson_model is None and not device.cuda:  # CI: plainly no GPU, nothing to fix
        assert verdicts["tensorrt"]["detail"] == "no NVIDIA GPU: ONNX Runtime on the CPU"
    else:
        assert verdicts["tensorrt"]["detail"].startswith("TensorRT not used: ")
        assert "\nmissing:\n- " in verdicts["tensorrt"]["detail"]


def test_selftest_text_report_and_a_failing_check(tmp_path: Path) -> None:
    done = _cli(tmp_path, "selftest")
    assert done.returncode == 0
    assert "selftest passed: 6 pass, 0 fail, 1 skip" in done.stdout
    checks = selftest.run(load_settings(None, {"EDGE_AGENT_CONFIG": "", "EDGE_AGENT_STATE_DIR": str(tmp_path)}),
                          models=("shapes/1", "missing/9"))
    failed = [c for c in checks if c.ok is False]
    assert [c.name for c in failed] == ["onnxruntime missing/9"]
    assert "not in the model store" in failed[0].detail
    assert selftest.as_dict(checks)["ok"] is False


def test_compile_without_tensorrt_exits_2_with_the_reason(tmp_path: Path) -> None:
    done = _cli(tmp_path, "compile", "shapes/1")
    assert done.returncode == 2
    assert "cannot build a TensorRT engine here: TensorRT not used:" in done.stderr


def test_the_whole_selftest_with_the_tensorrt_stand_in(tmp_path: Path, stand_in_path: None) -> None:
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
    assert all(c.ok for c in again), [c for c in again if not c.ok]
    assert all("engine cache" in c.detail for c in again if c.name.startswith("tensorrt engine")), [
        c for c in again if c.name.startswith("tensorrt engine")]


# ----------------------------------------------------------------------------- why TensorRT is not used

ORIN = DeviceInfo("NVIDIA Jetson Orin Nano Developer Kit", "36.3.0", "Orin", "8.7", 0, "ok")
PY = f"python{sys.version_info[0]}.{sys.version_info[1]}"


def _why(device: DeviceInfo, modules: set[str], cache: Path, backend: str = "auto", **stand_ins: object) -> str:
    """What the ``tensorrt`` check says, the back-end chosen with the same stand-in modules."""
    choice = engines.choose_backend(engines.EnginePrefs(backend=backend), device, has_module=modules.__contains__,
                                    ort_providers=lambda: ["CPUExecutionProvider"])
    return selftest.why_no_tensorrt(choice, backend, cache, **stand_ins)  # type: ignore[arg-type]


def _venv(tmp_path: Path, system_site: bool) -> Path:
    prefix = tmp_path / "venv"
    prefix.mkdir(exist_ok=True)
    (prefix / "pyvenv.cfg").write_text(f"home = /usr/bin\ninclude-system-site-packages = {str(system_site).lower()}\n")
    return prefix


def _no_cuda(tmp_path: Path) -> dict[str, str]:
    return {"PATH": str(tmp_path / "empty-bin")}  # no toolkit, no compilers: every CUDA piece is named


def test_a_machine_without_an_nvidia_gpu_gets_one_plain_line(tmp_path: Path) -> None:
    device = DeviceInfo(None, None, None, None, 0, "the CUDA driver (libcuda.so.1) is not installed")
    for modules in (set(), {"tensorrt", "pycuda"}):
        assert _why(device, modules, tmp_path) == selftest.NO_GPU


def test_the_setting_that_turned_tensorrt_off_is_named(tmp_path: Path) -> None:
    text = _why(ORIN, {"tensorrt", "pycuda"}, tmp_path, "ort")
    assert text == "TensorRT not used: engine.backend is 'ort'; ONNX Runtime on the CPU " \
                   '(engine.backend = "auto" uses TensorRT where it is present)'


@pytest.mark.parametrize(("system_tensorrt", "system_site", "jetson", "says"), [
    (True, False, True, "the tensorrt module: installed at {root}/usr/lib/{py}/dist-packages/tensorrt, but this "
                        "environment ({prefix}) does not see the system site-packages: set "
                        "include-system-site-packages = true in {prefix}/pyvenv.cfg"),
    (False, True, True, "the tensorrt module is not importable: install python3-libnvinfer (apt-get install "
                        "python3-libnvinfer, part of nvidia-jetpack)"),
    (False, False, True, "install python3-libnvinfer (apt-get install python3-libnvinfer, part of nvidia-jetpack); "
                         "and this environment ({prefix}) does not see the system site-packages"),
    (False, True, False, "the tensorrt module is not importable: install NVIDIA's TensorRT Python bindings "
                         "(python3-libnvinfer, or pip install tensorrt)"),
])
def test_a_missing_tensorrt_module_says_what_to_install(tmp_path: Path, system_tensorrt: bool, system_site: bool,
                                                       jetson: bool, says: str) -> None:
    root = tmp_path / "root"
    if system_tensorrt:
        (root / "usr/lib" / PY / "dist-packages/tensorrt").mkdir(parents=True)
    prefix = _venv(tmp_path, system_site)
    device = ORIN if jetson else dataclasses.replace(ORIN, jetson_model=None, l4t_release=None, gpu_name="RTX 4090")
    text = _why(device, {"pycuda"}, tmp_path / "cache", system_root=root, prefix=prefix)
    lines = text.splitlines()
    assert lines[0] == "TensorRT not used: TensorRT's Python bindings (tensorrt) are not installed; ONNX Runtime on " \
                       "the CPU"
    assert lines[1] == "missing:"
    assert len(lines) == 3
    assert says.format(root=root, py=PY, prefix=prefix) in lines[2]


def test_pycuda_not_built_names_what_its_build_needs_and_the_command(tmp_path: Path) -> None:
    root = tmp_path / "root"
    sdist = root / "opt/edge-agent/wheels/pycuda-2025.1.2.tar.gz"
    sdist.parent.mkdir(parents=True)
    sdist.write_bytes(b"")
    text = _why(ORIN, {"tensorrt"}, tmp_path / "cache", system_root=root, prefix=_venv(tmp_path, True),
                env=_no_cuda(tmp_path))
    lines = text.splitlines()[2:]
    assert lines[0] == "- pycuda is not installed; building it here needs:"
    assert lines[1].startswith("  nvcc, the CUDA toolkit: not found (looked in CUDA_HOME, /usr/local/cuda, PATH); "
                               "install nvidia-cuda-toolkit (JetPack: cuda-toolkit-12-* / nvidia-jetpack)")
    assert [line.split(":")[0] for line in lines[2:6]] == ["  cuda.h", "  curand.h", "  libcuda.so", "  libcurand.so"]
    assert "  a C++ compiler (g++ or c++): not found (looked on PATH); install g++ (build-essential)" in lines
    assert lines[-1] == (f"  then, as root: {sys.executable} -m engines.pycuda_build --sdist {sdist} --find-links "
                         f"/opt/edge-agent/wheels --cache {tmp_path / 'cache'} --install")


def test_a_failed_pycuda_build_is_reported_with_its_log_and_the_retry(tmp_path: Path) -> None:
    cache, wheels = tmp_path / "cache", tmp_path / "wheels"
    wheels.mkdir()
    sdist = wheels / "pycuda-2025.1.2.tar.gz"
    sdist.write_bytes(b"not read: the prerequisites are missing")
    with pytest.raises(pycuda_build.PycudaBuildError):  # what the postinst met on this device
        pycuda_build.build(sdist, wheels, cache, env=_no_cuda(tmp_path), system_root=tmp_path / "root")
    key = pycuda_build.cache_key("2025.1.2", None)
    text = _why(ORIN, {"tensorrt"}, cache, prefix=_venv(tmp_path, True))
    lines = text.splitlines()[2:]
    assert re.fullmatch(r"- pycuda: its build failed \(.+\): not built: \d+ of its prerequisites are missing", lines[0])
    assert lines[1] == "  missing: nvcc, the CUDA toolkit: not found (looked in CUDA_HOME, /usr/local/cuda, PATH); " \
                       "install nvidia-cuda-toolkit (JetPack: cuda-toolkit-12-* / nvidia-jetpack)"
    assert lines[-2:] == [f"  log: {cache / key / 'build.log'}",
                          f"  then, as root: {sys.executable} -m engines.pycuda_build --sdist {sdist} --find-links "
                          f"{wheels} --cache {cache} --force --install"]
    assert key.endswith(platform.machine())


def test_a_jetson_whose_gpu_does_not_answer_gets_the_reason_and_the_fix(tmp_path: Path) -> None:
    device = dataclasses.replace(ORIN, gpu_name=None, compute_capability=None,
                                 cuda_reason="cuInit failed with CUDA error 999 (no usable GPU, or no access to its "
                                             "device files)")
    text = _why(device, {"tensorrt", "pycuda"}, tmp_path)
    assert text.splitlines() == [
        "TensorRT not used: no CUDA GPU answers: cuInit failed with CUDA error 999 (no usable GPU, or no access to its "
        "device files); ONNX Runtime on the CPU", "missing:",
        "- a CUDA GPU that answers: cuInit failed with CUDA error 999 (no usable GPU, or no access to its device "
        "files) (JetPack's nvidia-l4t-cuda provides libcuda; the user running edge-agent needs the video and render "
        "groups)"]


def test_the_text_report_puts_a_list_under_its_check() -> None:
    check = selftest.Check("tensorrt", None, "TensorRT not used: x\nmissing:\n- tensorrt\n- pycuda", 0.04)
    assert selftest.text_line(check) == (
        "SKIP  tensorrt                         TensorRT not used: x (0.0 s)\n"
        + " " * 39 + "missing:\n" + " " * 39 + "- tensorrt\n" + " " * 39 + "- pycuda\n")
    assert selftest.text_line(selftest.Check("device", True, "one line")) == f"PASS  {'device':<32} one line (0.0 s)\n"
