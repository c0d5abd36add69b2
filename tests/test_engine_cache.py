"""The TensorRT side that runs without a GPU: cache keys, atomic writes, corrupt and mismatched files,
the build process (spawning, progress, failures) with the stand-in builder, workspace sizing, the
device probe and the choice of back-end with TensorRT absent."""

from __future__ import annotations

import dataclasses
import json
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import engines
from engines.cache import EngineCache, EngineKey
from engines.device import DeviceInfo, l4t_release, probe
from engines.trt_build import MIB, BuildFailed, BuildProcess, BuildSpec, available_memory, workspace_limit

TESTS = Path(__file__).resolve().parent
DEMO = TESTS.parent / "edge_agent" / "demo" / "store"

KEY = EngineKey(onnx_sha256="ab" * 32, tensorrt="10.3.0", gpu="Orin", compute_capability="8.7", l4t="36.4.0",
                precision="fp16", dla_core=None, batch=(1, 1, 8))


def _built(cache: EngineCache, key: EngineKey, content: bytes = b"PLAN" * 1000) -> Path:
    tmp = cache.temp_plan(key)
    tmp.write_bytes(content)
    return tmp


def test_every_field_of_the_key_names_another_file() -> None:
    changes = {"onnx_sha256": "cd" * 32, "tensorrt": "8.6.2", "gpu": "Xavier", "compute_capability": "7.2",
               "l4t": "36.3.0", "precision": "int8", "dla_core": 0, "batch": (1, 4, 8)}
    digests = {KEY.digest}
    for name, value in changes.items():
        other = dataclasses.replace(KEY, **{name: value})
        assert other.digest not in digests, name
        digests.add(other.digest)
    assert dataclasses.replace(KEY).digest == KEY.digest  # stable for equal keys
    assert len(KEY.digest) == 32
    assert int(KEY.digest, 16) >= 0


def test_store_then_lookup_gives_the_plan_and_its_sidecar(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    entry = cache.store(KEY, _built(cache, KEY), model_id="shapes/1", io=[{"name": "images"}], verified={"images": 4})
    found = cache.lookup(KEY)
    assert found.entry is not None
    assert found.rejected is None
    assert found.entry.plan == entry.plan
    assert found.entry.plan.read_bytes() == b"PLAN" * 1000
    sidecar = json.loads(cache.paths(KEY)[1].read_text())
    assert sidecar["key"] == KEY.fields()
    assert sidecar["model_id"] == "shapes/1"
    assert sidecar["plan"]["bytes"] == 4000
    assert sidecar["verified"] == {"images": 4}
    assert not list((cache.root / ".tmp").iterdir())  # the temp plan was moved, not copied
    assert cache.lookup(dataclasses.replace(KEY, precision="fp32")).entry is None  # another key: a miss


@pytest.mark.parametrize("damage, reason", [
    (lambda plan, side: plan.write_bytes(plan.read_bytes()[:1000]), "truncated"),
    (lambda plan, side: plan.write_bytes(b"X" + plan.read_bytes()[1:]), "sha256"),
    (lambda plan, side: plan.unlink(), "missing"),
    (lambda plan, side: side.write_text("{not json"), "unreadable sidecar"),
    (lambda plan, side: side.write_text(side.read_text()[:50]), "unreadable sidecar"),
    (lambda plan, side: side.unlink(), "without its sidecar"),
    (lambda plan, side: side.write_text(json.dumps({**json.loads(side.read_text()), "format": 99})), "format"),
])
def test_a_damaged_entry_is_rejected_deleted_and_never_loaded(tmp_path: Path, damage, reason: str) -> None:
    cache = EngineCache(tmp_path)
    cache.store(KEY, _built(cache, KEY), io=[])
    plan, sidecar = cache.paths(KEY)
    damage(plan, sidecar)
    found = cache.lookup(KEY)
    assert found.entry is None
    assert reason in (found.rejected or "")
    assert not plan.exists()
    assert not sidecar.exists()
    assert cache.lookup(KEY) == engines.cache.Lookup(None)  # gone: the next lookup is a plain miss


def test_a_sidecar_of_another_key_is_refused_and_says_which_fields_differ(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    old = dataclasses.replace(KEY, tensorrt="8.6.2", l4t="35.4.1")  # before a JetPack upgrade
    cache.store(old, _built(cache, old))
    plan, sidecar = cache.paths(KEY)
    for src, dst in zip(cache.paths(old), (plan, sidecar)):
        dst.write_bytes(src.read_bytes())  # someone copied the files under the new name
    found = cache.lookup(KEY)
    assert found.entry is None
    assert "l4t, tensorrt differ" in (found.rejected or "")


def test_a_jetpack_upgrade_misses_once_and_prune_removes_the_old_plans(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    old = dataclasses.replace(KEY, tensorrt="8.6.2", l4t="35.4.1")
    cache.store(old, _built(cache, old))
    cache.store(KEY, _built(cache, KEY))
    assert cache.lookup(dataclasses.replace(KEY, tensorrt="10.7.0")).entry is None
    assert cache.prune(tensorrt="10.3.0") == 2  # the 8.6 plan and its sidecar
    assert not any(p.exists() for p in cache.paths(old)), [p for p in cache.paths(old) if p.exists()]
    assert cache.lookup(KEY).entry is not None


def test_failure_markers_are_per_key(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    cache.mark_failed(KEY, "parser refused")
    assert cache.failure(KEY) == "parser refused"
    assert cache.failure(dataclasses.replace(KEY, tensorrt="10.7.0")) is None  # an upgrade retries
    cache.clear_failure(KEY)
    assert cache.failure(KEY) is None


_WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from engines.cache import EngineCache, EngineKey
    key = EngineKey("ab" * 32, "10.3.0", "Orin", "8.7", None, "fp16", None, (1, 1, 8))
    cache = EngineCache(Path(sys.argv[1]))
    n = 0
    while True:
        n += 1
        tmp = cache.temp_plan(key)
        tmp.write_bytes(bytes([n % 256]) * (200_000 + n))
        cache.store(key, tmp, n=n)
        if n == 1:
            print("stored", flush=True)
""")


def test_kill_9_during_stores_leaves_a_valid_entry_or_none(tmp_path: Path) -> None:
    """A power cut at any moment: the next lookup finds a complete, consistent entry or nothing."""
    rng = random.Random(7)
    outcomes = set()
    for _ in range(12):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], cwd=TESTS.parent,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline() == "stored\n"  # busy storing from now on
        time.sleep(rng.random() * 0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        cache = EngineCache(tmp_path)
        found = cache.lookup(dataclasses.replace(KEY, l4t=None))
        if found.entry is not None:
            n = found.entry.sidecar["n"]
            assert found.entry.plan.read_bytes() == bytes([n % 256]) * (200_000 + n)
            outcomes.add("entry")
        else:
            outcomes.add("none")
        cache.prune()
    assert "entry" in outcomes


def test_workspace_is_half_the_free_memory_after_a_reserve_within_bounds() -> None:
    assert workspace_limit(2048 * MIB) == 768 * MIB
    assert workspace_limit(64 * 1024 * MIB) == 4096 * MIB
    assert workspace_limit(1024 * MIB) == 256 * MIB
    with pytest.raises(BuildFailed, match="not enough free memory"):
        workspace_limit(900 * MIB)
    assert available_memory() > 0
    assert available_memory(Path("/nonexistent")) == 0


def test_build_spec_round_trips_through_json() -> None:
    spec = BuildSpec(onnx="/m.onnx", plan="/p.plan", precision="int8", dla_core=1, batch=(1, 2, 8),
                     calibration_frames="/c.npy")
    assert BuildSpec.from_json(spec.to_json()) == spec


def _spec(tmp_path: Path) -> BuildSpec:
    return BuildSpec(onnx=str(DEMO / "shapes-cls" / "1" / "model.onnx"), plan=str(tmp_path / "out.plan"))


def test_build_process_reports_progress_and_returns_the_result(tmp_path: Path, stand_in_path: None) -> None:
    events: list[dict] = []
    result = BuildProcess(_spec(tmp_path), events.append, module="trt_stand_in").run()
    assert result["event"] == "done"
    assert Path(result["plan"]).read_bytes() == (DEMO / "shapes-cls/1/model.onnx").read_bytes()
    assert [e["fraction"] for e in events if e["phase"] == "Building engine"] == [0.333, 0.667, 1.0]
    assert result["io"] == [{"name": "images", "mode": "input", "shape": [-1, 3, 128, 128], "dtype": "float32"},
                            {"name": "output0", "mode": "output", "shape": [-1, 4], "dtype": "float32"}]


@pytest.mark.parametrize("mode, message", [
    ("fail", "ONNX parser refused the model"),
    ("crash", "killed by signal 9"),
])
def test_build_process_failures_say_why(tmp_path: Path, stand_in_path: None, monkeypatch: pytest.MonkeyPatch,
                                        mode: str, message: str) -> None:
    monkeypatch.setenv("STAND_IN_MODE", mode)
    with pytest.raises(BuildFailed, match=message):
        BuildProcess(_spec(tmp_path), module="trt_stand_in").run()
    assert not (tmp_path / "out.plan").exists()


def test_the_real_build_module_without_tensorrt_reports_it_is_not_usable(tmp_path: Path) -> None:
    with pytest.raises(BuildFailed, match="TensorRT is not usable here"):
        BuildProcess(_spec(tmp_path)).run()


def test_a_killed_build_says_it_was_stopped(tmp_path: Path, stand_in_path: None,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    monkeypatch.setenv("STAND_IN_MODE", "slow")
    process = BuildProcess(_spec(tmp_path), module="trt_stand_in")
    threading.Timer(0.8, process.kill).start()
    t0 = time.monotonic()
    with pytest.raises(BuildFailed, match="stopped"):
        process.run()
    assert time.monotonic() - t0 < 3.0  # well before the 3 s the slow build takes


# -- the device and the choice of back-end ---------------------------------------------------------

def test_probe_reads_a_jetson_from_its_files(tmp_path: Path) -> None:
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_text("NVIDIA Jetson AGX Orin Developer Kit\x00")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text(
        "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13\n")
    (tmp_path / "dev").mkdir()
    for name in ("nvhost-ctrl-nvdla0", "nvhost-ctrl-nvdla1", "nvhost-ctrl-gpu"):
        (tmp_path / "dev" / name).touch()
    info = probe(tmp_path, cuda=False)
    assert info.jetson_model == "NVIDIA Jetson AGX Orin Developer Kit"
    assert info.l4t_release == "36.4.0"
    assert info.dla_cores == 2
    assert not info.cuda
    assert l4t_release("# R35 (release), REVISION: 4.1, GCID: 33958178") == "35.4.1"
    assert l4t_release("garbage") is None


@pytest.mark.skipif(probe().cuda, reason="this machine has a CUDA GPU")
def test_probe_of_this_machine_says_why_there_is_no_gpu() -> None:
    info = probe()
    assert info.gpu_name is None
    assert info.cuda_reason != "ok"
    assert info.cuda_reason


def _device(**changes: object) -> DeviceInfo:
    base = DeviceInfo("NVIDIA Jetson Orin Nano Developer Kit", "36.4.0", "Orin", "8.7", 0, "ok")
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_choice_with_tensorrt_absent_on_this_machine() -> None:
    choice = engines.choose_backend(engines.EnginePrefs())
    assert choice.backend == "onnxruntime"
    assert choice.reason.startswith("TensorRT not used: ")
    assert choice.ort_prefs.backend == "ort"


@pytest.mark.parametrize("modules, device, prefs, backend, says", [
    ({"tensorrt", "pycuda"}, _device(), engines.EnginePrefs(), "tensorrt", "TensorRT on Orin (compute capability 8.7)"),
    ({"pycuda"}, _device(), engines.EnginePrefs(), "onnxruntime", "tensorrt) are not installed"),
    ({"tensorrt"}, _device(), engines.EnginePrefs(backend="trt"), "onnxruntime", "pycuda is not installed"),
    ({"tensorrt", "pycuda"}, _device(gpu_name=None, compute_capability=None, cuda_reason="cuInit failed with CUDA "
                                     "error 100"), engines.EnginePrefs(), "onnxruntime", "cuInit failed"),
    ({"tensorrt", "pycuda"}, _device(), engines.EnginePrefs(backend="ort"), "onnxruntime", "engine.backend is 'ort'"),
])
def test_choice_names_the_reason(modules: set[str], device: DeviceInfo, prefs: engines.EnginePrefs, backend: str,
                                 says: str) -> None:
    choice = engines.choose_backend(prefs, device, has_module=modules.__contains__,
                                    ort_providers=lambda: ["CPUExecutionProvider"])
    assert choice.backend == backend
    assert says in choice.reason


def test_onnx_runtime_gets_its_cuda_provider_where_present_and_a_gpu_answers() -> None:
    with_cuda = lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]  # noqa: E731
    choice = engines.choose_backend(engines.EnginePrefs(), _device(), has_module=lambda m: False,
                                    ort_providers=with_cuda)
    assert choice.ort_prefs.providers == ("cuda",)
    assert "ONNX Runtime on cuda then CPU" in choice.reason
    no_gpu = _device(gpu_name=None, cuda_reason="no driver")
    assert engines.choose_backend(engines.EnginePrefs(), no_gpu, has_module=lambda m: False,
                                  ort_providers=with_cuda).ort_prefs.providers == ()


def test_the_choice_names_every_missing_piece_not_only_the_first() -> None:
    no_gpu = _device(gpu_name=None, compute_capability=None, cuda_reason="no driver")
    choice = engines.choose_backend(engines.EnginePrefs(), no_gpu, has_module=lambda m: False,
                                    ort_providers=lambda: ["CPUExecutionProvider"])
    assert choice.missing == ("tensorrt", "pycuda", "cuda")
    assert "tensorrt) are not installed" in choice.reason  # the reason gives the first
    ready = engines.choose_backend(engines.EnginePrefs(), _device(), has_module=lambda m: True,
                                   ort_providers=lambda: ["CPUExecutionProvider"])
    assert ready.missing == ()


def test_tensorrt_is_a_row_of_the_table_that_runs_plans_not_onnx_files(tmp_path: Path) -> None:
    from engines.trt_queue import TrtBackend

    assert list(engines.BACKENDS) == ["trt", "ort"]  # the order back-ends are preferred in
    assert engines.BACKENDS["trt"].runs == "plan"
    with pytest.raises(engines.EngineUnavailable, match="runs plans built from the ONNX file"):
        engines.select_engine(DEMO / "shapes-cls" / "1" / "model.onnx", engines.EnginePrefs(backend="trt"))
    chosen = engines.choose_backend(engines.EnginePrefs(), _device(), has_module=lambda m: True,
                                    ort_providers=lambda: ["CPUExecutionProvider"])
    backend = engines.plan_backend(chosen)
    assert isinstance(backend, TrtBackend)  # made without importing TensorRT
    assert backend.device == chosen.device
    assert engines.plan_backend(engines.choose_backend(engines.EnginePrefs(backend="ort"))) is None


@pytest.mark.parametrize("fixed, prefs, batch", [
    (None, engines.EnginePrefs(), (1, 1, 8)),
    (None, engines.EnginePrefs(max_batch=16, opt_batch=4), (1, 4, 16)),
    (None, engines.EnginePrefs(max_batch=2, opt_batch=4), (1, 2, 2)),  # opt never above max
    (1, engines.EnginePrefs(max_batch=16), (1, 1, 1)),  # a fixed batch is the whole profile
])
def test_the_key_takes_the_batch_profile_from_the_model_or_the_prefs(
        fixed: int | None, prefs: engines.EnginePrefs, batch: tuple[int, int, int]) -> None:
    from engines.trt_queue import plan_key
    from trt_stand_in import IDENTITY

    key = plan_key(IDENTITY, prefs, "ab" * 32, fixed)
    assert key.batch == batch
    assert key.precision == prefs.precision
    assert key.tensorrt == IDENTITY["tensorrt"]


def test_every_error_of_the_tensorrt_side_belongs_to_the_tree() -> None:
    from edge_agent.errors import EdgeAgentError
    from edge_agent.serving.accelerate_setup import TensorRTUnavailable
    from engines.pycuda_build import BuildSkipped, PycudaBuildError
    from engines.trt_queue import BuildOutdated

    assert issubclass(BuildFailed, engines.EngineError)
    assert issubclass(BuildOutdated, engines.EngineError)
    assert issubclass(PycudaBuildError, engines.EngineError)
    assert issubclass(BuildSkipped, PycudaBuildError)
    assert issubclass(TensorRTUnavailable, engines.EngineUnavailable)
    assert issubclass(engines.EngineError, EdgeAgentError)


def test_a_tensorrt_too_old_is_unavailable() -> None:
    from types import SimpleNamespace

    from engines.trt_api import TrtApi

    with pytest.raises(engines.EngineUnavailable, match=r"TensorRT 8\.4\.3 is too old"):
        TrtApi(SimpleNamespace(__version__="8.4.3"))
    assert TrtApi(SimpleNamespace(__version__="10.3.0")).major == 10
