"""``edge-agent selftest``: the on-device check after flashing. Runs the bundled demo models and, where
TensorRT is used, the engine checks of the ``gpu`` test suite; prints a report.

Checks, in order:

1. the device (Jetson model, L4T release, GPU) and the back-end chosen, with the reason;
2. per demo model, ONNX Runtime: it loads and finds what the sample image holds (six shapes for the
   detection models, valid scores for the classifier);
3. where TensorRT is used, per demo model: its engine is built (or taken from the cache) and passes the
   check against ONNX Runtime; it is then loaded again from the cache without a build, and its results
   on the sample image agree with ONNX Runtime's;
4. where TensorRT is used, once: a truncated copy of a plan (in a scratch cache) is rejected and rebuilt.

A check that cannot run here (no TensorRT) is reported as skipped with the reason, not as passed. Where
TensorRT is not used, the ``tensorrt`` check names each missing piece and what to do
(``why_no_tensorrt``): the ``tensorrt`` module (JetPack: python3-libnvinfer, seen through the system
site-packages), pycuda (the failed build's record and log, else what building it needs:
``engines.pycuda_build``), a CUDA GPU that answers (``engines.device``). A machine that is not a Jetson
and has no NVIDIA GPU gets one plain line instead: nothing is wrong with serving on the CPU there.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.params import InferenceParams  # light: dataclasses and the error tree

if TYPE_CHECKING:
    import numpy as np

    from edge_agent.results import Result
    from edge_agent.settings import Settings
    from engines import Choice
    from engines.trt_queue import PlanBackend

DEMO_MODELS = ("shapes/1", "shapes-seg/1", "shapes-pose/1", "shapes-cls/1")
SAMPLE_SHAPES = 6  # objects in the bundled sample image
NO_GPU = "no NVIDIA GPU: ONNX Runtime on the CPU"
PACKAGE_WHEELS = Path("/opt/edge-agent/wheels")  # where the Debian package keeps pycuda's sdist and wheels


@dataclass
class Check:
    name: str
    ok: bool | None  # None: skipped
    detail: str
    seconds: float = 0.0

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "FAIL", None: "SKIP"}[self.ok]


def _timed(name: str, fn: Callable[[], tuple[bool | None, str]]) -> Check:
    t0 = time.monotonic()
    try:
        ok, detail = fn()
    except Exception as exc:  # a check that raises has failed; the report goes on
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    return Check(name, ok, detail, round(time.monotonic() - t0, 2))


def _sample() -> np.ndarray:
    from edge_agent.images import load_image  # lazy: cv2
    from edge_agent.serving.accelerate_setup import SAMPLE_IMAGE  # lazy: numpy

    return load_image(SAMPLE_IMAGE)


def _expected(result: Result) -> tuple[bool, str]:
    from edge_agent.results import Classification  # lazy: numpy

    if isinstance(result, Classification):
        total = float(result.confidence.sum())
        name = result.class_names[result.top[0]]
        return abs(total - 1.0) < 1e-3, f"top class {name} ({result.top[1]:.2f}), scores sum to {total:.3f}"
    return len(result) == SAMPLE_SHAPES, f"{len(result)} of the sample's {SAMPLE_SHAPES} shapes found"


def run(settings: Settings, backend: PlanBackend | None = None, models: tuple[str, ...] = DEMO_MODELS,
        report: Callable[[Check], None] = lambda c: None) -> list[Check]:
    """Run every check; ``report`` is called as each ends. ``backend`` replaces TensorRT (tests)."""
    from edge_agent.serving.accelerate_setup import (  # lazy: numpy, the serving modules
        TensorRTUnavailable,
        compile_model,
        offline_accelerator,
    )
    from edge_agent.serving.compare import disagreement  # lazy: numpy
    from edge_agent.serving.loading import load_stored  # lazy: onnxruntime
    from edge_agent.serving.model import Model  # lazy: numpy
    from edge_agent.store.model_store import ModelStore  # lazy: the store
    from engines import choose_backend  # lazy: onnxruntime

    checks: list[Check] = []

    def add(check: Check) -> Check:
        checks.append(check)
        report(check)
        return check

    choice = choose_backend(settings.engine_prefs)
    d = choice.device
    add(Check("device", True, f"{d.jetson_model or 'not a Jetson'}; L4T {d.l4t_release or '-'}; "
              f"GPU {d.gpu_name or 'none'} ({d.compute_capability or d.cuda_reason}); DLA cores {d.dla_cores}"))
    add(Check("back-end", True, choice.reason))

    store = ModelStore(settings.models_dir)
    image = _sample()
    params = InferenceParams()
    reference: dict[str, Any] = {}
    for model_id in models:
        def ort_check(model_id: str = model_id) -> tuple[bool, str]:
            model = load_stored(store, model_id, choice.ort_prefs)
            reference[model_id] = (model, model.run([image], params))
            return _expected(reference[model_id][1][0])
        add(_timed(f"onnxruntime {model_id}", ort_check))

    try:
        accelerator, manager = offline_accelerator(settings, backend)
    except TensorRTUnavailable:
        add(Check("tensorrt", None, why_no_tensorrt(choice, settings.engine_prefs.backend,
                                                    Path(settings.paths.cache_dir) / "pycuda")))
        return checks

    for model_id in models:
        def build_check(model_id: str = model_id) -> tuple[bool, str]:
            status = compile_model(accelerator, manager, model_id)
            return status.state == "tensorrt", status.reason or status.state
        if not add(_timed(f"tensorrt engine {model_id}", build_check)).ok or model_id not in reference:
            continue

        def reload_check(model_id: str = model_id) -> tuple[bool, str]:
            builds = accelerator.builds
            manifest, onnx = store.verified_onnx(model_id)
            engine = accelerator.cached_engine(model_id, manifest, onnx)
            if engine is None:
                return False, f"not loaded from the cache: {accelerator.status(model_id)}"
            try:
                results = Model(manifest, engine).run([image], params)
            finally:
                engine.close()
            if accelerator.builds != builds:
                return False, "the engine was built again"
            why = disagreement(reference[model_id][1], results)
            return why is None, why or f"loaded from the cache without a build ({engine.name}); agrees with ONNX " \
                "Runtime"
        add(_timed(f"tensorrt reload {model_id}", reload_check))

    def truncation_check() -> tuple[bool, str]:
        model_id = models[-1]
        manifest, _onnx = store.verified_onnx(model_id)
        key = accelerator.key(manifest)
        with tempfile.TemporaryDirectory(prefix="edge-agent-selftest-") as scratch:
            scratch_acc, scratch_manager = offline_accelerator(settings, backend, cache_dir=Path(scratch))
            plan, sidecar = accelerator.cache.paths(key)
            new_plan, new_sidecar = scratch_acc.cache.paths(key)
            new_plan.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(sidecar, new_sidecar)
            new_plan.write_bytes(plan.read_bytes()[: plan.stat().st_size // 2])
            found = scratch_acc.cache.lookup(key)
            if found.entry is not None:
                return False, "a truncated plan was accepted"
            status = compile_model(scratch_acc, scratch_manager, model_id)
            ok = status.state == "tensorrt" and scratch_acc.builds == 1
            return ok, f"rejected ({found.rejected}), rebuilt: {status.reason}"
    add(_timed("tensorrt truncated plan", truncation_check))
    return checks


def text_line(check: Check) -> str:
    """``PASS  name  detail (seconds)``; a detail's further lines (a list of what is missing) below it."""
    first, *more = check.detail.splitlines() or [""]
    return f"{check.verdict}  {check.name:<32} {first} ({check.seconds:.1f} s)\n" + "".join(
        f"{'':<39}{line}\n" for line in more)


def as_dict(checks: list[Check]) -> dict[str, Any]:
    return {"ok": all(c.ok is not False for c in checks), "checks": [asdict(c) | {"verdict": c.verdict}
                                                                      for c in checks]}


# ------------------------------------------------------------------------------- why TensorRT is not used


def why_no_tensorrt(choice: Choice, setting: str, pycuda_cache: Path, system_root: Path = Path("/"),
                    prefix: Path | None = None, env: Mapping[str, str] | None = None) -> str:
    """The ``tensorrt`` check's text where TensorRT is not used: ``choice.reason``, then one line per
    missing piece saying what to do (the reason gives the first; ``choice.missing`` names them all).
    ``setting`` is ``engine.backend``; ``system_root``, ``prefix`` (the environment, default
    ``sys.prefix``) and ``env`` let tests point at stand-ins."""
    d = choice.device
    if setting == "ort":
        return f"{choice.reason} (engine.backend = \"auto\" uses TensorRT where it is present)"
    if d.jetson_model is None and not d.cuda:
        return NO_GPU  # the "device" check above says what the CUDA driver answered
    lines = [choice.reason, "missing:"]
    if "tensorrt" in choice.missing:
        lines.append("- " + _tensorrt_missing(d.jetson_model is not None, system_root, prefix or Path(sys.prefix)))
    if "pycuda" in choice.missing:
        first, *more = _pycuda_missing(pycuda_cache, system_root, env)
        lines += ["- " + first] + ["  " + line for line in more]
    if "cuda" in choice.missing:
        fix = ("JetPack's nvidia-l4t-cuda provides libcuda; the user running edge-agent needs the video and "
               "render groups" if d.jetson_model else "install the NVIDIA driver; nvidia-smi should list the GPU")
        lines.append(f"- a CUDA GPU that answers: {d.cuda_reason} ({fix})")
    return "\n".join(lines)


def _sees_system_site_packages(prefix: Path) -> bool:
    """False for a virtual environment made without --system-site-packages."""
    try:
        cfg = (prefix / "pyvenv.cfg").read_text()
    except OSError:
        return True  # not a virtual environment: the system's site-packages are on the path
    for line in cfg.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "include-system-site-packages":
            return value.strip().lower() == "true"
    return False


def _tensorrt_missing(jetson: bool, system_root: Path, prefix: Path) -> str:
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    system = [system_root / "usr/lib" / v / "dist-packages/tensorrt" for v in (version, "python3")]
    installed = next((p for p in system if p.is_dir()), None)
    sees = _sees_system_site_packages(prefix)
    venv = f"this environment ({prefix}) does not see the system site-packages: set include-system-site-packages " \
           f"= true in {prefix / 'pyvenv.cfg'} (the edge-agent package's environment has it)"
    if installed is not None:
        return f"the tensorrt module: installed at {installed}, but {venv if not sees else 'not importable here'}"
    where = "install python3-libnvinfer (apt-get install python3-libnvinfer, part of nvidia-jetpack)" if jetson \
        else "install NVIDIA's TensorRT Python bindings (python3-libnvinfer, or pip install tensorrt)"
    return f"the tensorrt module is not importable: {where}" + ("" if sees else f"; and {venv}")


def _pycuda_missing(cache: Path, system_root: Path, env: Mapping[str, str] | None) -> list[str]:
    """Why pycuda is missing, one line each: the failed build's record, or what building it needs."""
    from engines import pycuda_build  # lazy: only on a Jetson

    failure = pycuda_build.latest_failure(cache)
    if failure is not None:
        first, *more = failure.lines()
        return [f"pycuda: its build failed ({failure.time}): {first}", *more,
                f"then, as root: {sys.executable} -m engines.pycuda_build --sdist {failure.sdist} --find-links "
                f"{failure.find_links} --cache {cache} --force --install"]
    sdists = sorted((system_root / PACKAGE_WHEELS.relative_to("/")).glob("pycuda-*.tar.gz"))
    sdist = sdists[-1] if sdists else "pycuda-<version>.tar.gz"
    build = (f"{sys.executable} -m engines.pycuda_build --sdist {sdist} --find-links {PACKAGE_WHEELS} "
             f"--cache {cache} --install")
    missing = pycuda_build.prerequisites(env, system_root)
    if missing:
        return ["pycuda is not installed; building it here needs:", *(m.message() for m in missing),
                f"then, as root: {build}"]
    return ["pycuda is not installed, and everything its build needs is here; as root:", build]
