"""Inference back-ends behind one small contract (``Engine``), chosen from an explicit table.

This package owns running a model file on a runtime. It never imports ``edge_agent``, and it imports
no runtime at import time: each back-end module imports its runtime inside its constructor, so an
ARM CPU box never loads TensorRT and ``import engines`` stays cheap.

``choose_backend(prefs)`` is the one place that decides between TensorRT (plans built from the ONNX
and cached, ``engines.trt``/``trt_build``/``cache``) and ONNX Runtime, and says why;
``select_engine(model_path, prefs)`` loads an ONNX file on an ONNX-file back-end (ONNX Runtime).
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
    "select_engine",
]

if TYPE_CHECKING:
    from engines.ort import ModelInfo

log = logging.getLogger(__name__)

# Back-ends that load an ONNX file directly: name -> (module, class), in the order backend="auto" tries
# them. TensorRT is not among them: it runs plans built from the ONNX (``choose_backend``).
BACKENDS: dict[str, tuple[str, str]] = {
    "ort": ("engines.ort", "OrtEngine"),
}


def _load_backend(name: str) -> type:
    try:
        module_name, class_name = BACKENDS[name]
    except KeyError:
        raise EngineUnavailable(
            f"unknown engine back-end {name!r}; known: {', '.join(BACKENDS)}"
        ) from None
    module = importlib.import_module(module_name)
    return getattr(module, class_name)  # type: ignore[no-any-return]


def select_engine(model_path: str | Path, prefs: EnginePrefs | None = None) -> Engine:
    """Load ``model_path`` on the best back-end that ``prefs`` allow.

    With ``backend="auto"`` each back-end of the table is tried in order; one that reports
    ``EngineUnavailable`` is skipped (and why is logged), while an ``EngineLoadError`` (a bad model)
    is raised at once, since another runtime would not fix the file.
    """
    prefs = prefs or EnginePrefs()
    names = list(BACKENDS) if prefs.backend == "auto" else [prefs.backend]
    reasons: list[str] = []
    for name in names:
        try:
            backend = _load_backend(name)
            engine: Engine = backend(Path(model_path), prefs)
            return engine
        except EngineUnavailable as exc:
            reasons.append(f"{name}: {exc}")
            log.info("engine back-end %s unavailable: %s", name, exc)
    raise EngineUnavailable("no engine back-end could load the model: " + "; ".join(reasons))


def inspect_model(model_path: str | Path) -> ModelInfo:
    """Describe an ONNX file (inputs, outputs, metadata_props) without building a serving engine."""
    from engines.ort import inspect

    return inspect(Path(model_path))


@dataclass(frozen=True)
class Choice:
    """The back-end this machine serves with, and why.

    backend: "tensorrt" (ONNX Runtime serves each model until its plan is built and checked) or
    "onnxruntime". ``ort_prefs`` are the preferences for ONNX Runtime, with the CUDA provider added
    where it and a GPU are present.
    """

    backend: str
    reason: str
    device: DeviceInfo
    ort_prefs: EnginePrefs

    def as_dict(self) -> dict[str, object]:
        return {"backend": self.backend, "reason": self.reason, "onnxruntime_providers": list(self.ort_prefs.providers),
                "device": self.device.as_dict()}


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _ort_providers() -> list[str]:
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def choose_backend(prefs: EnginePrefs | None = None, device: DeviceInfo | None = None,
                   has_module: Callable[[str], bool] = _has_module,
                   ort_providers: Callable[[], list[str]] = _ort_providers) -> Choice:
    """TensorRT where ``prefs.backend`` allows it, its bindings and pycuda import and a CUDA GPU
    answers; otherwise ONNX Runtime with its CUDA provider where present, else the CPU.

    Nothing is imported to decide (``find_spec`` and the CUDA driver through ctypes), so the check
    is cheap on a CPU-only box. A ``backend = "trt"`` that cannot be honoured falls back to ONNX
    Runtime too (never brick the device over a setting), with the reason.
    """
    prefs = prefs or EnginePrefs()
    device = device or probe()
    missing = None
    if prefs.backend not in ("auto", "trt"):
        missing = f"engine.backend is {prefs.backend!r}"
    elif not has_module("tensorrt"):
        missing = "TensorRT's Python bindings (tensorrt) are not installed"
    elif not has_module("pycuda"):
        missing = "pycuda is not installed (pip install 'edge-agent[jetson]')"
    elif not device.cuda:
        missing = f"no CUDA GPU answers: {device.cuda_reason}"
    providers = tuple(prefs.providers)
    if not providers and device.cuda:
        try:
            if "CUDAExecutionProvider" in ort_providers():
                providers = ("cuda",)
        except ImportError:  # pragma: no cover - onnxruntime is a hard dependency
            pass
    ort_prefs = replace(prefs, backend="ort", providers=providers)
    serving = "ONNX Runtime on " + (", ".join(providers) + " then CPU" if providers else "the CPU")
    if missing is None:
        return Choice("tensorrt", f"TensorRT on {device.gpu_name} (compute capability "
                      f"{device.compute_capability}); {serving} while an engine builds", device, ort_prefs)
    reason = f"TensorRT not used: {missing}; {serving}"
    level = logging.WARNING if prefs.backend == "trt" else logging.INFO
    log.log(level, "engine back-end: %s", reason)
    return Choice("onnxruntime", reason, device, ort_prefs)
