"""What the v1 and v2 routes share: the services of the app, the state of a request, loading the
model for a request, reading its images under the server's limits, running them and formatting the
results (docs/http-api.md §4.6, §4.7)."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pydantic_core
from flask import Response, current_app, jsonify, request
from pydantic import ValidationError

from edge_agent.errors import InvalidInput
from edge_agent.http.head import keys_in
from edge_agent.http.schemas import ImageInput
from edge_agent.http.services import HttpServices
from edge_agent.images import from_declaration
from edge_agent.params import InferenceParams
from edge_agent.results import Result
from edge_agent.roboflow_json import to_roboflow
from edge_agent.serving.manager import LoadedModel
from edge_agent.visualize import draw, encode_jpeg

# Route task names (v2) <-> the model store's task names.
ROUTE_TASKS = {
    "object_detection": "object-detection",
    "instance_segmentation": "instance-segmentation",
    "classification": "classification",
    "keypoints_detection": "keypoint-detection",
}
TASK_ROUTES = {task: route for route, task in ROUTE_TASKS.items()}

SERVICES_KEY = "edge_agent"  # in app.extensions
STATE_KEY = "edge_agent.request"  # in the WSGI environ of a request


def services() -> HttpServices:
    """The services of the app that handles the current request (given to ``create_app``)."""
    found = current_app.extensions[SERVICES_KEY]
    if not isinstance(found, HttpServices):  # pragma: no cover - create_app stores nothing else there
        raise TypeError(f"app.extensions[{SERVICES_KEY!r}] is not HttpServices: {found!r}")
    return found


@dataclass
class RequestState:
    """What a request learns on its way, for its response headers and metrics."""

    started: float = field(default_factory=time.perf_counter)  # perf_counter at arrival
    model_id: str = ""  # the model it ran, if any
    load_time: float | None = None  # seconds this request spent loading the model (cold start)
    processing_time: float | None = None  # seconds of inference, when it ran a model

    def arrived_at(self) -> float:
        """Wall-clock time at arrival."""
        return time.time() - (time.perf_counter() - self.started)


def request_state() -> RequestState:
    """The state of the current request (made at its start by the app; made here if it was not)."""
    state = request.environ.get(STATE_KEY)
    if not isinstance(state, RequestState):
        state = request.environ[STATE_KEY] = RequestState()
    return state


def given_keys() -> list[str]:
    """The request's API keys, in docs/http-api.md §1.3 precedence: query, then Bearer header, then JSON
    body."""
    # (an empty query string is not parsed into ``args``: 3 us a request)
    keys = keys_in(request.args.get("api_key") if request.query_string else None,
                   request.headers.get("Authorization", ""))
    if request.is_json:
        body = request.get_json(silent=True)
        if isinstance(body, dict) and isinstance(body.get("api_key"), str):
            keys.append(body["api_key"])
    return keys


def load_model(model_id: str, fallback_key: str | None = None) -> LoadedModel:
    """Load (or find) the model and note it for the response headers and metrics. A model the store
    lacks is pulled from Roboflow's API with the request's key (when the device is online).
    ``fallback_key``: a key the route read from a body of its own (v1's JSON body), used after the query's
    and the Bearer header's (docs/http-api.md §1.3)."""
    keys = given_keys()
    if fallback_key and fallback_key != "None":
        keys.append(fallback_key)
    loaded, cold = services().inference.model(model_id, keys[0] if keys else None)
    state = request_state()
    state.model_id = loaded.model_id
    if cold:
        state.load_time = loaded.load_seconds
    return loaded


Loader = Callable[[bool], np.ndarray]  # auto_orient -> the image


def declared_loaders(image: ImageInput | list[ImageInput]) -> list[Loader]:
    """The loaders of a JSON body's ``image`` (one, or a list; v2 and v1's JSON body), under the server's
    limits; a 400 for an empty list or one past ``[server] max_batch_images``."""
    found = services()
    images = image if isinstance(image, list) else [image]
    if not images:
        raise InvalidInput("image: the list of images is empty.")
    if len(images) > found.server.max_batch_images:
        raise InvalidInput(f"Batch too large: at most {found.server.max_batch_images} images per request.")
    limits, allow_numpy = found.limits, found.server.allow_numpy

    def loader(declared: ImageInput) -> Loader:
        return lambda orient: from_declaration(declared.type, declared.value, limits, orient, allow_numpy)

    return [loader(declared) for declared in images]


def load_images(loaded: LoadedModel, loaders: Sequence[Loader],
                params: InferenceParams) -> list[np.ndarray]:
    """Call each image loader with the auto-orient flag this model and request call for (docs/http-api.md §2.2)."""
    orient = loaded.model.auto_orient(params)
    return [load(orient) for load in loaders]


def confidence_value(value: float | str, default: float = 0.4) -> float:
    """``"best"``/``"default"`` mean the model's default threshold (docs/http-api.md §4.2)."""
    if isinstance(value, str):
        if value.lower() in ("best", "default"):
            return default
        try:
            return float(value)
        except ValueError:
            raise InvalidInput(f'confidence must be a number or "best"/"default", got {value!r}') from None
    return float(value)


_LOCATIONS = {"LegacyQuery": "query", "LegacyPath": "path"}


def validation_error(e: ValidationError) -> Response:
    """docs/http-api.md §5: 422 with pydantic v2's error list under ``detail`` (large inputs left out); the
    app's answer to a request that fails its route's declared models."""
    detail = []
    where = _LOCATIONS.get(e.title, "body")
    for err in e.errors(include_url=False, include_context=False):
        item: dict[str, Any] = {"type": err["type"], "loc": [where, *err["loc"]], "msg": err["msg"]}
        inp = err.get("input")
        if isinstance(inp, (int, float, bool)) or inp is None or (isinstance(inp, str) and len(inp) <= 200):
            item["input"] = inp
        detail.append(item)
    response = jsonify({"detail": detail})
    response.status_code = 422
    return response


def visualization(loaded: LoadedModel, image: np.ndarray, result: Result, labels: bool, stroke: int) -> bytes:
    return encode_jpeg(draw(image, result, labels=labels, stroke=stroke, colours=loaded.model.manifest.colors))


def json_answer(body: Any) -> Response:
    """An inference answer (Roboflow's response objects: dicts, lists, strings, numbers) as ``jsonify``
    writes it, by pydantic-core's serializer: 5.5 us for six detections where ``json.dumps`` takes 20 us.
    The same JSON values; the text differs only where both are valid (``1e-7`` for ``1e-07``, UTF-8 for
    ``\\u`` escapes). What it cannot write (a lone surrogate in a class name) goes to ``jsonify``."""
    try:
        text = pydantic_core.to_json(body, inf_nan_mode="constants")
    except pydantic_core.PydanticSerializationError:
        return jsonify(body)
    return current_app.response_class(text + b"\n", mimetype="application/json")


def run(loaded: LoadedModel, images: list[np.ndarray], params: InferenceParams, inference_id: str | None,
        visualize: bool, labels: bool, stroke: int, active_learning: bool = True) -> list[dict[str, Any]]:
    """Infer and format; every item of a batch carries the same ``inference_id`` (docs/http-api.md §4.6).
    ``active_learning=False`` (the request's ``disable_active_learning``): never sampled."""
    found = services()
    state = request_state()
    inference_id = inference_id or str(uuid.uuid4())
    results = found.inference.infer(loaded, images, params, source=found.http_source,
                                    captured_at=state.arrived_at(), inference_id=inference_id,
                                    active_learning=active_learning)
    bodies = []
    for image, result in zip(images, results):
        body = to_roboflow(result, inference_id)
        if visualize:
            body["visualization"] = base64.b64encode(
                visualization(loaded, image, result, labels, stroke)).decode("ascii")
        bodies.append(body)
    state.processing_time = max((r.time for r in results), default=0.0)
    return bodies
