"""The v1 ("legacy") route ``POST|GET /{project}/{version}`` in every body form of docs/http-api.md §3.

Body resolution, exactly in the order of docs/http-api.md §3.3: ``?image=<url>`` wins; else a Content-Type is
required; multipart puts the image file in the part named ``file``; anything else is the raw body,
read as base64 text (never JSON-parsed, whatever the Content-Type says) or, with
``image_type=numpy`` and the server allowing it, as a ``.npy`` file. A raw JPEG/PNG body is also
accepted (docs/http-api.md §12 #13). ``confidence``/``overlap`` of 1 or more are percentages.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from flask import Response, jsonify, request
from flask_openapi3 import APIBlueprint, Tag

from edge_agent.errors import ImageLoadError, InvalidInput
from edge_agent.http import common
from edge_agent.http.schemas import DetectionResponse, ErrorMessage, LegacyPath, LegacyQuery, ValidationErrorBody
from edge_agent.images import bytes_from_base64, from_bytes, from_npy, from_url
from edge_agent.params import InferenceParams

tag = Tag(name="Inference (v1, legacy)", description="Roboflow's hosted-API route `/{project}/{version}`")
bp = APIBlueprint("v1", __name__, abp_tags=[tag], abp_responses={422: ValidationErrorBody})

_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")


def _percent(value: float, floor: float = 0.0) -> float:
    value = value / 100.0 if value >= 1 else value
    return max(value, floor)


def _legacy_body(query: LegacyQuery) -> Callable[[bool], np.ndarray]:
    """A loader `f(auto_orient) -> image` for the request's image, per docs/http-api.md §3.3."""
    found = common.services()
    limits = found.limits
    if query.image:
        url = query.image
        return lambda orient: from_url(url, limits, orient)
    content_type = request.headers.get("Content-Type")
    if not content_type:
        raise InvalidInput("Content-Type header not provided with request.")
    if "multipart/form-data" in content_type.lower():
        part = request.files.get("file")
        if part is None:
            raise ImageLoadError("Expected image to be send in part named 'file' of multipart/form-data request")
        data = part.read()
        return lambda orient: from_bytes(data, limits, orient)
    body = request.get_data(cache=False)
    if query.image_type.lower() == "numpy":
        if not found.server.allow_numpy:
            raise ImageLoadError("NumPy image type is not supported in this configuration of `inference`.")
        return lambda orient: from_npy(body, limits)
    if body.startswith(_IMAGE_MAGIC):  # docs/http-api.md §12 #13: raw JPEG/PNG bytes are an image too
        return lambda orient: from_bytes(body, limits, orient)
    return lambda orient: from_bytes(bytes_from_base64(body), limits, orient)


def _legacy(path: LegacyPath, query: LegacyQuery) -> Any:
    model_id = f"{path.project}/{path.version}"
    raw = query.confidence
    best = isinstance(raw, str) and raw.lower() in ("best", "default")
    confidence = common.confidence_value(raw) if best else _percent(common.confidence_value(raw), floor=0.01)
    fmt = query.format.lower()
    visualize = fmt in ("image", "image_and_json")
    loader = _legacy_body(query)
    loaded = common.load_model(model_id)
    task = loaded.model.task
    fields: dict[str, Any] = {"confidence": confidence}
    if task != "classification":
        fields.update(iou_threshold=_percent(query.overlap), max_detections=query.max_detections)
    if task == "instance-segmentation":
        fields.update(mask_decode_mode=query.mask_decode_mode, tradeoff_factor=query.tradeoff_factor)
    if task == "keypoint-detection":
        fields["keypoint_confidence"] = query.keypoint_confidence
    params = InferenceParams(
        disable_preproc_auto_orient=query.disable_preproc_auto_orient,
        disable_preproc_contrast=query.disable_preproc_contrast,
        disable_preproc_grayscale=query.disable_preproc_grayscale,
        disable_preproc_static_crop=query.disable_preproc_static_crop,
        **fields,
    )
    images = common.load_images(loaded, [loader], params)
    if fmt == "image":
        results = common.services().inference.infer(loaded, images, params)
        jpeg = common.visualization(loaded, images[0], results[0], query.labels, query.stroke)
        return Response(jpeg, mimetype="image/jpeg")
    body = common.run(loaded, images, params, None, visualize, query.labels, query.stroke)[0]
    return jsonify(body)


_RESPONSES: dict[Any, Any] = {200: DetectionResponse, 400: ErrorMessage, 404: ErrorMessage, 413: ErrorMessage}


@bp.post("/<project>/<version>", responses=_RESPONSES)
def legacy_post(path: LegacyPath, query: LegacyQuery) -> Any:
    """Infer on the request body: base64 text, a multipart `file` part, or `?image=<url>`.

    The response shape follows the model's task (detection shown; classification, segmentation and
    keypoints as on the v2 routes). `format=image` answers with the JPEG drawing instead.
    """
    return _legacy(path, query)


@bp.get("/<project>/<version>", responses=_RESPONSES)
def legacy_get(path: LegacyPath, query: LegacyQuery) -> Any:
    """Infer on the image at `?image=<url>`."""
    return _legacy(path, query)
