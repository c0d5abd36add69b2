"""What the v1 and v2 routes share: loading the model for a request, decoding its images under the
server's limits, running them and formatting the results (spec §4.6, §4.7)."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from flask import current_app, g, request

from edge_agent.errors import InvalidInput
from edge_agent.params import InferenceParams
from edge_agent.roboflow_json import to_roboflow
from edge_agent.runtime import Runtime
from edge_agent.serving.manager import LoadedModel

# Route task names (v2) <-> the model store's task names.
ROUTE_TASKS = {
    "object_detection": "object-detection",
    "instance_segmentation": "instance-segmentation",
    "classification": "classification",
    "keypoints_detection": "keypoint-detection",
}
TASK_ROUTES = {task: route for route, task in ROUTE_TASKS.items()}


def runtime() -> Runtime:
    return current_app.extensions["edge_agent"]  # type: ignore[no-any-return]


def given_keys() -> list[str]:
    """The request's API keys, in spec §1.3 precedence: query, then Bearer header, then JSON body
    (the SDK's literal ``api_key=None`` is no key)."""
    keys = []
    query_key = request.args.get("api_key")
    if query_key and query_key != "None":
        keys.append(query_key)
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        keys.append(auth[7:].strip())
    if request.is_json:
        body = request.get_json(silent=True)
        if isinstance(body, dict) and isinstance(body.get("api_key"), str):
            keys.append(body["api_key"])
    return keys


def load_model(model_id: str) -> LoadedModel:
    """Load (or find) the model and note it for the response headers and metrics. A model the store
    lacks is pulled from Roboflow's API with the request's key (when the device is online)."""
    keys = given_keys()
    loaded, cold = runtime().model(model_id, keys[0] if keys else None)
    g.model_id = loaded.model_id
    if cold:
        g.load_time = loaded.load_seconds
    return loaded


def decode_images(loaded: LoadedModel, loaders: Sequence[Callable[[bool], np.ndarray]],
                  params: InferenceParams) -> list[np.ndarray]:
    """Call each image loader with the auto-orient flag this model and request call for (spec §2.2)."""
    orient = loaded.model.manifest.preprocess.auto_orient and not params.disable_preproc_auto_orient
    return [load(orient) for load in loaders]


def confidence_value(value: float | str, default: float = 0.4) -> float:
    """``"best"``/``"default"`` mean the model's default threshold (spec §4.2)."""
    if isinstance(value, str):
        if value.lower() in ("best", "default"):
            return default
        try:
            return float(value)
        except ValueError:
            raise InvalidInput(f'confidence must be a number or "best"/"default", got {value!r}') from None
    return float(value)


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 BGR image
        raise RuntimeError("JPEG encoding failed")
    return bytes(buf)


def visualization(loaded: LoadedModel, image: np.ndarray, result: Any, labels: bool, stroke: int) -> bytes:
    from edge_agent.visualize import draw

    return encode_jpeg(draw(image, result, labels=labels, stroke=stroke, colours=loaded.model.manifest.colors))


def run(loaded: LoadedModel, images: list[np.ndarray], params: InferenceParams, inference_id: str | None,
        visualize: bool, labels: bool, stroke: int) -> list[dict[str, Any]]:
    """Infer and format; every item of a batch carries the same ``inference_id`` (spec §4.6)."""
    rt = runtime()
    inference_id = inference_id or str(uuid.uuid4())
    arrived = time.time() - (time.perf_counter() - g.t0) if "t0" in g else None
    results = rt.infer(loaded, images, params, source=rt.http_source, captured_at=arrived, inference_id=inference_id)
    bodies = []
    for image, result in zip(images, results):
        body = to_roboflow(result, inference_id)
        if visualize:
            body["visualization"] = base64.b64encode(
                visualization(loaded, image, result, labels, stroke)).decode("ascii")
        bodies.append(body)
    g.processing_time = max((r.time for r in results), default=0.0)
    return bodies
