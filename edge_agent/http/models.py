"""The model store over HTTP (docs/models.md): list and describe stored models, upload a new version
(``PUT /models/{project}/{version}``), roll back and activate kept revisions, remove a model
(``DELETE /models/{project}/{version}``).

Changing the store needs the server's API key: these routes answer 403 while ``server.api_key`` is not
configured (the general key check answers 401 to a missing or wrong key once it is).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

from flask import jsonify, request
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel

from edge_agent.errors import ChecksumMismatch, Forbidden, InvalidInput, PayloadTooLarge
from edge_agent.http import common
from edge_agent.http.schemas import (
    ActivateQuery,
    ActivationResult,
    ErrorMessage,
    LegacyPath,
    ModelUploadQuery,
    RollbackQuery,
    StoredModelInfo,
    StoredModels,
    ValidationErrorBody,
)

tag = Tag(name="Model store", description="Installing, rolling back and listing the models on the device")
bp = APIBlueprint("models", __name__, abp_tags=[tag], abp_responses={422: ValidationErrorBody})

_CHANGE: dict[Any, Any] = {200: ActivationResult, 400: ErrorMessage, 401: ErrorMessage, 403: ErrorMessage,
                           404: ErrorMessage, 409: ErrorMessage, 413: ErrorMessage}


def _require_key() -> None:
    if common.services().server.api_key is None:
        raise Forbidden("Changing the model store over HTTP needs the server's API key: set server.api_key "
                        "in the configuration and send it with the request.")


@bp.get("/models", responses={200: StoredModels})
def list_models() -> Any:
    """Every model in the store (built-in demo models included), with its revisions and the disk use."""
    found = common.services()
    models = [found.provisioner.describe(s.manifest.model_id) for s in found.store.list()]
    budget = found.models_settings.disk_budget_mb
    return jsonify({"models": models, "disk_bytes": found.store.disk_usage(),
                    "disk_budget_bytes": budget * 1024 * 1024 if budget else None})


@bp.get("/models/<project>/<version>", responses={200: StoredModelInfo, 400: ErrorMessage, 404: ErrorMessage})
def describe(path: LegacyPath) -> Any:
    """One stored model: task, sha256, size, whether it is loaded, its revisions."""
    return jsonify(common.services().provisioner.describe(f"{path.project}/{path.version}"))


def _receive(folder: Path, limit: int, sha256: str | None) -> Path:
    """The request body, streamed to a file in ``folder`` under the upload size cap, its sha256 checked."""
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"Upload too large: {length} bytes, the limit is {limit} ([models] max_upload_bytes).")
    mimetype = request.mimetype or ""
    if mimetype.startswith("multipart/"):
        raise InvalidInput("Send the file as the raw request body (Content-Type application/octet-stream, "
                           "application/zip or application/gzip), not as a multipart form.")
    target = folder / "upload.onnx"  # the store reads an archive by its first bytes, whatever its name
    digest = hashlib.sha256()
    size = 0
    request.max_content_length = limit + 1  # this route's own cap replaces the image routes' one
    with target.open("wb") as out:
        while chunk := request.stream.read(1 << 20):
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"Upload too large: more than {limit} bytes ([models] max_upload_bytes).")
            digest.update(chunk)
            out.write(chunk)
    if size == 0:
        raise InvalidInput("The request body is empty: send the ONNX file or archive as the body.")
    if length is not None and size != length:
        raise InvalidInput(f"The upload was cut short: {size} of {length} bytes arrived.")
    if sha256 is not None and digest.hexdigest() != sha256.lower():
        raise ChecksumMismatch(f"The upload's sha256 is {digest.hexdigest()}, not {sha256.lower()}: "
                               "the file is not the one named; nothing was installed.")
    return target


@bp.put("/models/<project>/<version>", responses=_CHANGE)
def upload(path: LegacyPath, query: ModelUploadQuery) -> Any:
    """Install the request body (an ONNX file, or a .zip/.tar.gz of a Roboflow model folder or of an ONNX
    file with its metadata) as this model id. Send it as the raw body; its format is read from its
    first bytes (zip, gzip, tar), not from a name or the Content-Type.
    With `sha256`, a different file is refused. The new version is loaded beside the serving one and
    checked before it serves (409 with the reason when it fails; the old version serves on)."""
    _require_key()
    found = common.services()
    staging = found.store.root / ".staging"
    staging.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="upload.", dir=staging))
    try:
        source = _receive(folder, found.models_settings.max_upload_bytes, query.sha256)
        result = found.provisioner.install_file(source, f"{path.project}/{path.version}", activate=query.activate)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return jsonify(result)


@bp.post("/models/<project>/<version>/rollback", responses=_CHANGE)
def rollback(path: LegacyPath, query: RollbackQuery) -> Any:
    """Serve the newest earlier revision again (or the one `to` names), after the same checks as an
    upload; the version it replaces is kept, so a rollback can be undone."""
    _require_key()
    return jsonify(common.services().provisioner.rollback(f"{path.project}/{path.version}", query.to))


@bp.post("/models/<project>/<version>/activate", responses=_CHANGE)
def activate(path: LegacyPath, query: ActivateQuery) -> Any:
    """Serve a kept revision (one uploaded with `activate=false`), after the same checks."""
    _require_key()
    return jsonify(common.services().provisioner.activate(f"{path.project}/{path.version}", query.revision))


class ModelRemoved(BaseModel):
    removed: str


@bp.delete("/models/<project>/<version>", responses={200: ModelRemoved, 400: ErrorMessage, 401: ErrorMessage,
                                                     403: ErrorMessage, 404: ErrorMessage, 409: ErrorMessage})
def remove(path: LegacyPath) -> Any:
    """Delete a model and its kept revisions from the store; the daemon stops serving it, so its next
    request answers 404 (unless it can be pulled from Roboflow again). Built-in demo models answer 400;
    a model a running pipeline uses answers 409 naming the pipelines (terminate them first)."""
    _require_key()
    return jsonify(common.services().remove_model(f"{path.project}/{path.version}"))
