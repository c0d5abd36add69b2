"""Inference back-ends behind one small contract (``Engine``), chosen from an explicit table.

This package owns running a model file on a runtime. It never imports ``edge_agent``, and it imports
no runtime at import time: each back-end module imports its runtime inside its constructor, so an
ARM CPU box never loads TensorRT and ``import engines`` stays cheap.

``BACKENDS`` is the table of back-ends, in the order they are preferred: TensorRT, which runs plans
built from the ONNX file and cached (``engines.trt_queue``: the back-end, the key and the build queue;
``trt``, ``trt_build``, ``cache``), then ONNX Runtime, which loads the ONNX file itself.
``choose_backend(prefs)`` walks the table and is the one place that decides which serves, and says
why; ``plan_backend(choice)`` gives the chosen plan back-end; ``select_engine(model_path, prefs)``
loads an ONNX file on an ONNX-file back-end.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from engines.base import (
    Engine,
    EngineError,
    EngineLoadError,
    EnginePrefs,
    EngineRunError,
    EngineUnavailable,
    TensorSpec,
)
from engines.device import DeviceInfo, probe

__all__ = [
    "BACKENDS",
    "BackendEntry",
    "Choice",
    "DeviceInfo",
    "Engine",
    "EngineError",
    "EngineLoadError",
    "EnginePrefs",
    "EngineRunError",
    "EngineUnavailable",
    "TensorSpec",
    "choose_backend",
    "inspect_model",
    "plan_backend",
    "select_engine",
]

if TYPE_CHECKING:
    from engines.ort import ModelInfo
    from engines.trt_queue import PlanBackend

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendEntry:
    """One row of ``BACKENDS``.

    label: what serves, as statuses and ``Choice.backend`` name it.
    runs: "onnx" (the back-end loads the ONNX file: ``attr`` is an ``Engine`` class taking
        ``(path, prefs)``) or "plan" (it runs plans built from the ONNX file: ``attr`` is a
        ``trt_queue.PlanBackend`` class taking the ``DeviceInfo``).
    needs: the modules it imports, each with what to say when it cannot be; gpu: it needs a CUDA GPU.
    """

    label: str
    title: str  # for people: "TensorRT"
    runs: str
    module: str
    attr: str
    needs: tuple[tuple[str, str], ...] = ()
    gpu: bool = False

    def unmet(self, device: DeviceInfo, has_module: Callable[[str], bool]) -> list[tuple[str, str]]:
        """What this machine lacks for the back-end, every piece: (name, why) with name a module or
        "cuda" (a GPU that answers). Nothing is imported to find out."""
        missing = [(name, why) for name, why in self.needs if not has_module(name)]
        if self.gpu and not device.cuda:
            missing.append(("cuda", f"no CUDA GPU answers: {device.cuda_reason}"))
        return missing


# The back-ends, keyed by the name ``engine.backend`` gives them, in the order they are preferred.
BACKENDS: dict[str, BackendEntry] = {
    "trt": BackendEntry("tensorrt", "TensorRT", "plan", "engines.trt_queue", "TrtBackend",
                        needs=(("tensorrt", "TensorRT's Python bindings (tensorrt) are not installed"),
                               ("pycuda", "pycuda is not installed (pip install 'edge-agent[jetson]')")),
                        gpu=True),
    "ort": BackendEntry("onnxruntime", "ONNX Runtime", "onnx", "engines.ort", "OrtEngine"),
}


def _engine_class(name: str) -> Callable[[Path, EnginePrefs], Engine]:
    try:
        row = BACKENDS[name]
    except KeyError:
        raise EngineUnavailable(
            f"unknown engine back-end {name!r}; known: {', '.join(BACKENDS)}"
        ) from None
    if row.runs != "onnx":
        raise EngineUnavailable(f"engine back-end {name!r} runs plans built from the ONNX file, not the file "
                                "itself (engines.trt_queue)")
    engine_class: Callable[[Path, EnginePrefs], Engine] = getattr(importlib.import_module(row.module), row.attr)
    return engine_class


def select_engine(model_path: str | Path, prefs: EnginePrefs | None = None) -> Engine:
    """Load ``model_path`` on the best back-end that ``prefs`` allow.

    With ``backend="auto"`` each ONNX-file back-end of the table is tried in order; one that reports
    ``EngineUnavailable`` is skipped (and why is logged), while an ``EngineLoadError`` (a bad model)
    is raised at once, since another runtime would not fix the file.
    """
    prefs = prefs or EnginePrefs()
    names = [n for n, row in BACKENDS.items() if row.runs == "onnx"] if prefs.backend == "auto" else [prefs.backend]
    reasons: list[str] = []
    for name in names:
        try:
            return _engine_class(name)(Path(model_path), prefs)
        except EngineUnavailable as exc:
            reasons.append(f"{name}: {exc}")
            log.info("engine back-end %s unavailable: %s", name, exc)
    raise EngineUnavailable("no engine back-end could load the model: " + "; ".join(reasons))


def inspect_model(model_path: str | Path) -> ModelInfo:
    """Describe an ONNX file (inputs, outputs, metadata_props) without building a serving engine."""
    from engines.ort import inspect  # lazy: numpy and onnxruntime (engines.ort)

    return inspect(Path(model_path))


@dataclass(frozen=True)
class Choice:
    """The back-end this machine serves with, and why.

    backend: the label of the row chosen: "tensorrt" (ONNX Runtime serves each model until its plan is
    built and checked) or "onnxruntime". ``ort_prefs`` are the preferences for ONNX Runtime, with the
    CUDA provider added where it and a GPU are present. ``missing`` names every piece the back-ends
    preferred over ONNX Runtime lack here ("tensorrt", "pycuda", "cuda"), not only the first that
    ``reason`` gives.
    """

    backend: str
    reason: str
    device: DeviceInfo
    ort_prefs: EnginePrefs
    missing: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {"backend": self.backend, "reason": self.reason, "onnxruntime_providers": list(self.ort_prefs.providers),
                "device": self.device.as_dict()}


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _ort_providers() -> list[str]:
    import onnxruntime  # lazy: onnxruntime

    return list(onnxruntime.get_available_providers())


def choose_backend(prefs: EnginePrefs | None = None, device: DeviceInfo | None = None,
                   has_module: Callable[[str], bool] = _has_module,
                   ort_providers: Callable[[], list[str]] = _ort_providers) -> Choice:
    """The first plan back-end of ``BACKENDS`` (TensorRT) that ``prefs.backend`` allows and this
    machine has all of (its modules import, a CUDA GPU answers); otherwise ONNX Runtime with its CUDA
    provider where present, else the CPU.

    Nothing is imported to decide (``find_spec`` and the CUDA driver through ctypes), so the check
    is cheap on a CPU-only box. A ``backend = "trt"`` that cannot be honoured falls back to ONNX
    Runtime too (never brick the device over a setting), with the reason.
    """
    prefs = prefs or EnginePrefs()
    device = device or probe()
    providers = tuple(prefs.providers)
    if not providers and device.cuda:
        try:
            if "CUDAExecutionProvider" in ort_providers():
                providers = ("cuda",)
        except ImportError:  # pragma: no cover - onnxruntime is a hard dependency
            pass
    ort_prefs = replace(prefs, backend="ort", providers=providers)
    serving = "ONNX Runtime on " + (", ".join(providers) + " then CPU" if providers else "the CPU")
    not_used: list[str] = []
    missing: list[str] = []
    for name, row in BACKENDS.items():
        if row.runs != "plan":
            continue
        unmet = row.unmet(device, has_module)
        missing += [piece for piece, _ in unmet]
        if prefs.backend not in ("auto", name):
            not_used.append(f"{row.title} not used: engine.backend is {prefs.backend!r}")
        elif unmet:
            not_used.append(f"{row.title} not used: {unmet[0][1]}")
        else:
            return Choice(row.label, f"{row.title} on {device.gpu_name} (compute capability "
                          f"{device.compute_capability}); {serving} while an engine builds", device, ort_prefs,
                          tuple(missing))
    reason = "; ".join([*not_used, serving])
    asked = BACKENDS.get(prefs.backend)  # a plan back-end asked for by name and not used: a warning
    level = logging.WARNING if asked is not None and asked.runs == "plan" else logging.INFO
    log.log(level, "engine back-end: %s", reason)
    return Choice("onnxruntime", reason, device, ort_prefs, tuple(missing))


def plan_backend(choice: Choice) -> PlanBackend | None:
    """The plan back-end ``choice`` chose (``trt_queue.TrtBackend`` for TensorRT), or None where an
    ONNX-file back-end serves."""
    row = next((r for r in BACKENDS.values() if r.label == choice.backend and r.runs == "plan"), None)
    if row is None:
        return None
    backend_class: Callable[[DeviceInfo], PlanBackend] = getattr(importlib.import_module(row.module), row.attr)
    return backend_class(choice.device)
