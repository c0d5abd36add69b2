"""Model management and service routes (docs/http-api.md §6): registry, add, remove, clear, info, health,
readiness, Prometheus metrics, and the legacy `/clear_cache` and `/start/...` routes."""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify
from flask_openapi3 import APIBlueprint, Tag

from edge_agent.http import common
from edge_agent.http.schemas import (
    ErrorMessage,
    LegacyPath,
    ModelAddRequest,
    ModelRemoveRequest,
    Registry,
    ServerInfo,
    Status,
    ValidationErrorBody,
)
from edge_agent.serving.manager import LoadedModel

models_tag = Tag(name="Models", description="Loading and unloading models (the model store is never touched)")
service_tag = Tag(name="Service", description="Identity, health, readiness and metrics")
bp = APIBlueprint("admin", __name__, abp_responses={422: ValidationErrorBody})


def _description(loaded: LoadedModel) -> dict[str, Any]:
    m = loaded.model.manifest
    return {
        "model_id": loaded.model_id,
        "task_type": m.task,
        "batch_size": m.input.batch,
        "input_height": m.input.height,
        "input_width": m.input.width,
        "vram_bytes": None,
        "request_aliases": [],
        "request_paths": [f"/{loaded.model_id}", f"/infer/{common.TASK_ROUTES[m.task]}"],
        "engine": common.services().engine_status(loaded.model_id),
    }


def _registry() -> Response:
    models = [_description(m) for m in common.services().models.loaded()]
    return jsonify({"models": models, **{k: None for k in Registry.model_fields if k != "models"}})


@bp.get("/model/registry", tags=[models_tag], responses={200: Registry})
def registry() -> Any:
    """The loaded models."""
    return _registry()


@bp.post("/model/add", tags=[models_tag], responses={200: Registry, 400: ErrorMessage, 404: ErrorMessage,
                                                     500: ErrorMessage})
def model_add(body: ModelAddRequest) -> Any:
    """Load a model from the model store (a no-op when it is loaded)."""
    common.load_model(body.model_id)
    return _registry()


@bp.post("/model/remove", tags=[models_tag], responses={200: Registry})
def model_remove(body: ModelRemoveRequest) -> Any:
    """Unload a model (not an error when it is not loaded). Its files stay in the store."""
    common.services().models.unload(body.model_id)
    return _registry()


@bp.post("/model/clear", tags=[models_tag], responses={200: Registry})
def model_clear() -> Any:
    """Unload every model."""
    common.services().models.clear()
    return _registry()


_TEXT = {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}
_CLEARED = {"description": 'the JSON string "Cache Cleared"',
            "content": {"application/json": {"schema": {"type": "string"}}}}


@bp.get("/clear_cache", tags=[models_tag], responses={200: _CLEARED})
def clear_cache() -> Any:
    """Legacy: unload every model; answers the JSON string "Cache Cleared"."""
    common.services().models.clear()
    return jsonify("Cache Cleared")


@bp.get("/start/<project>/<version>", tags=[models_tag],
        responses={200: Status, 400: ErrorMessage, 404: ErrorMessage, 500: ErrorMessage})
def start(path: LegacyPath) -> Any:
    """Legacy: load a model."""
    common.load_model(f"{path.project}/{path.version}")
    return jsonify({"status": 200, "message": "inference session started from local memory."})


@bp.get("/info", tags=[service_tag], responses={200: ServerInfo})
def info() -> Any:
    """Server name, version, this installation's stable id, and the inference back-end chosen (and why)."""
    found = common.services()
    return jsonify({"name": "edge-agent", "version": found.version, "uuid": found.install_id,
                    "engine": found.engine_choice.as_dict()})


@bp.get("/healthz", tags=[service_tag], responses={200: Status, 503: Status})
def healthz() -> Any:
    """The process answers."""
    return jsonify({"status": "healthy"})


@bp.get("/readiness", tags=[service_tag], responses={200: Status, 503: Status})
def readiness() -> Any:
    """Ready once the preloaded models are loaded (by ONNX Runtime while their TensorRT engines build:
    ``engines`` then says which build runs and how far it is)."""
    readiness = common.services().readiness
    building = readiness.building()
    extra = {"engines": building} if building else {}
    if readiness.ready.is_set():
        return jsonify({"status": "ready", **extra})
    return jsonify({"status": "not ready", "reason": readiness.readiness_detail, **extra}), 503


@bp.get("/metrics", tags=[service_tag], responses={200: _TEXT})
def metrics() -> Any:
    """Prometheus text format: requests, latencies, batch sizes, queue depth, model load times."""
    found = common.services().metrics
    return Response(found.render(), content_type=found.CONTENT_TYPE)
