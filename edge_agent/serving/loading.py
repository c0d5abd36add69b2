"""Turning a stored model into a running ``Model``: the engine is built here, never in the store.

The store hands out verified manifests and ONNX paths (``ModelStore.verified_onnx``, a staged
candidate's ``manifest`` and ``onnx``); ``load_model`` puts an engine under them: the one an
``engine_for`` supplies (a cached TensorRT plan), else the ONNX file loaded by
``engines.select_engine``. ``load_stored`` is the two steps for an id of the store.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import engines
from edge_agent.errors import ModelLoadFailed
from edge_agent.serving.model import Model
from edge_agent.store.manifest import Manifest

# (model id, manifest, ONNX path) -> an engine for it, or None to load the ONNX file itself.
EngineFor = Callable[[str, Manifest, Path], engines.Engine | None]


class VerifiedModels(Protocol):
    """Where ``load_stored`` reads a model: ``ModelStore`` is one."""

    def verified_onnx(self, model_id: str) -> tuple[Manifest, Path]: ...


def load_model(manifest: Manifest, onnx: Path, prefs: engines.EnginePrefs | None = None,
               engine_for: EngineFor | None = None) -> Model:
    """A ready ``Model`` for the (already verified) ``onnx`` that ``manifest`` describes."""
    engine = engine_for(manifest.model_id, manifest, onnx) if engine_for is not None else None
    if engine is None:
        try:
            engine = engines.select_engine(onnx, prefs)
        except engines.EngineError as exc:
            raise ModelLoadFailed(f"model {manifest.model_id}: {exc}",
                                  public=f"model {manifest.model_id}: {exc.public}") from exc
    return Model(manifest, engine)


def load_stored(store: VerifiedModels, model_id: str, prefs: engines.EnginePrefs | None = None,
                engine_for: EngineFor | None = None) -> Model:
    """A ready ``Model`` for ``model_id`` of ``store``: checksum verified, engine built."""
    manifest, onnx = store.verified_onnx(model_id)
    return load_model(manifest, onnx, prefs, engine_for)
