"""Inference back-ends behind one small contract (``Engine``), chosen from an explicit table.

This package owns running a model file on a runtime. It never imports ``edge_agent``, and it imports
no runtime at import time: each back-end module imports its runtime inside its constructor, so an
ARM CPU box never loads TensorRT and ``import engines`` stays cheap.

``select_engine(model_path, prefs)`` is the one place that decides which back-end runs a model.
"""

from __future__ import annotations

import importlib
import logging
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

__all__ = [
    "BACKENDS",
    "Engine",
    "EngineError",
    "EngineLoadError",
    "EnginePrefs",
    "EngineRunError",
    "EngineUnavailable",
    "TensorSpec",
    "inspect_model",
    "select_engine",
]

if TYPE_CHECKING:
    from engines.ort import ModelInfo

log = logging.getLogger(__name__)

# name -> (module, class). Order is the preference order used by backend="auto".
# The TensorRT back-end ("trt") joins this table in front of "ort" when it lands.
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
