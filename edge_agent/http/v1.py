"""The v1 ("legacy") route ``POST|GET /{project}/{version}`` in every body form of docs/http-api.md §3.

Body resolution, exactly in the order of docs/http-api.md §3.3: ``?image=<url>`` wins; else a Content-Type is
required; multipart puts the image file in the part named ``file``; anything else is the raw body,
read as base64 text (whatever the Content-Type says) or, with ``image_type=numpy`` and the server
allowing it, as a ``.npy`` file. A raw JPEG/PNG body is also accepted (docs/http-api.md §12 #13), and a
body that starts with ``{`` (never base64 nor an image file) is the JSON object of Roboflow's HTTP guide
(seed 004): ``{"image": {"type": "url" | "base64" | "numpy", "value": ...} or a list, "confidence", ...}``
with the fields of a v2 body; a query parameter given on the URL wins over the same option in the body.
``confidence``/``overlap`` of 1 or more on the query string are percentages.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Response, abort, request
from flask_openapi3 import APIBlueprint, Tag
from pydantic import ValidationError

from edge_agent.errors import ImageLoadError, InvalidInput
from edge_agent.http import common
from edge_agent.http.schemas import (
    DetectionResponse,
    ErrorMessage,
    KeypointsRequest,
    LegacyPath,
    LegacyQuery,
    SegmentationRequest,
    ValidationErrorBody,
)
from edge_agent.images import bytes_from_base64, from_bytes, from_npy, from_url
from edge_agent.params import InferenceParams
from edge_agent.store.importers import BINARY_IMAGE_SIGNATURES

tag = Tag(name="Inference (v1, legacy)", description="Roboflow's hosted-API route `/{project}/{version}`")
bp = APIBlueprint("v1", __name__, abp_tags=[tag], abp_responses={422: ValidationErrorBody})

_UTF8_BOM = b"\xef\xbb\xbf"  # json.loads reads bytes that start with it


def _percent(value: float, floor: float = 0.0) -> float:
    value = value / 100.0 if value >= 1 else value
    return max(value, floor)


# The Content-Disposition that requests, curl and the SDK write (no escapes, no RFC 2231 parameters).
_PLAIN_DISPOSITION = re.compile(r'form-data; name="([^"\\;]*)"(; filename="[^"\\;]*")?')
# werkzeug's parser answers 413 once the bytes it holds at a time (a 64 kB read, a part's headers, a
# boundary's tail) pass max_form_memory_size: under this cap, or past these headers, the body is left to it.
_SMALLEST_FORM_MEMORY = 128 * 1024
_MAX_PART_HEADERS = 8 * 1024
# Larger bodies go to werkzeug, which keeps a large file part in a temporary file: read here, the body
# would sit in memory twice (the whole, and the part).
_SHORTCUT_MAX_BODY = 1024 * 1024


def _plain_multipart_file() -> bytes | None:
    """The ``file`` part of a plainly written multipart body, or None to leave the body to werkzeug's form
    parser, whose answer this matches (tests/test_http_cost.py holds them side by side).

    werkzeug's parser costs about 0.4 ms on a 25 kB JPEG (a regular expression scans the whole body for
    the boundary); these few ``find`` calls read the usual body (CRLF line breaks, quoted names, a
    filename) in a tenth of that. Anything else (line breaks other than CRLF, continued, escaped or long
    headers, a missing Content-Disposition, more parts or larger fields than the server's limits) is
    left to werkzeug, as is the answer when no part qualifies, and any body over 1 MiB.
    """
    length = request.content_length
    if length is None or length > _SHORTCUT_MAX_BODY:
        return None
    boundary = request.mimetype_params.get("boundary", "")
    if request.mimetype != "multipart/form-data" or not boundary or not boundary.isascii():
        return None
    memory = request.max_form_memory_size
    if memory is not None and memory < _SMALLEST_FORM_MEMORY:
        return None
    body = request.get_data()  # cached: the form parser reads the same bytes if it is needed
    delimiter = b"--" + boundary.encode()
    first = 2 if body.startswith(b"\r\n") else 0  # werkzeug's test client writes a line break first
    if not body.startswith(delimiter + b"\r\n", first):
        return None
    found = None
    start = first + len(delimiter) + 2
    for _ in range(request.max_form_parts or 1000):
        end = body.find(delimiter, start)
        if end < 2 or body[end - 2:end] != b"\r\n":
            return None
        head_end = body.find(b"\r\n\r\n", start, min(end, start + _MAX_PART_HEADERS))
        if head_end < 0:
            return None
        disposition = None
        seen_disposition = False
        for line in body[start:head_end].split(b"\r\n"):
            name, colon, value = line.partition(b":")
            if not colon or line[:1] in (b" ", b"\t") or b"\r" in line or b"\n" in line or not line.isascii():
                return None
            if name.strip(b" \t").lower() == b"content-disposition":
                if seen_disposition:  # werkzeug reads the first one only: leave such a part to it
                    return None
                seen_disposition = True
                disposition = _PLAIN_DISPOSITION.fullmatch(value.strip(b" \t").decode())
        if disposition is None:
            return None
        data = body[head_end + 4:end - 2]
        if disposition.group(2) is None:  # a field, which werkzeug keeps in memory under the cap
            if memory is not None and len(data) > memory:
                return None
        elif found is None and disposition.group(1) == "file":
            found = data
        after = body[end + len(delimiter):end + len(delimiter) + 2]
        if after == b"--":
            epilogue = len(body) - end - len(delimiter) - 2
            if body.find(delimiter, end + len(delimiter)) >= 0 or (memory is not None and epilogue > memory):
                return None  # werkzeug refuses a long epilogue (413): its answer, not ours
            return found
        if after != b"\r\n":
            return None
        start = end + len(delimiter) + 2
    return None


class JsonBody(SegmentationRequest, KeypointsRequest):
    """The JSON body of docs/http-api.md §3.3 (seed 004): a v2 request body whose model id is the path."""

    model_id: str = ""


@dataclass(frozen=True)
class LegacySource:
    """Where a legacy request's images come from: loaders ``f(auto_orient) -> image``, and the JSON body
    when the request has one."""

    loaders: list[common.Loader]
    body: JsonBody | None = None


# A member of a union in pydantic's error locations ("ImageInput", "list[ImageInput]", "float", "literal[...]").
_UNION_MEMBER = re.compile(r"[A-Z]\w*|\w+\[.*\]|float|int|str|bool")


def _json_problem(error: Any) -> str:
    parts = [str(part) for part in error["loc"] if not _UNION_MEMBER.fullmatch(str(part))]
    where = ".".join(parts) or "body"
    given = error.get("input")
    shown = f" (got {given!r})" if isinstance(given, (int, float, bool)) or (
        isinstance(given, str) and len(given) <= 80) else ""
    return f"{where}: {error['msg']}{shown}"


def json_body(raw: bytes) -> JsonBody:
    """The request body as the JSON object of docs/http-api.md §3.3, or a 400 that names the problem."""
    try:
        data = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError for bytes that are no UTF-8/16/32
        raise InvalidInput(f"The request body starts with '{{' but is not valid JSON ({exc}). Send "
                           '{"image": {"type": "base64" | "url", "value": "..."}, "confidence": 0.5, ...}.') from None
    if not isinstance(data, dict):  # pragma: no cover - a body starting with "{" parses to an object or fails
        raise InvalidInput("The JSON body must be an object.")
    if "image" not in data:
        raise InvalidInput('The JSON body has no "image": send {"image": {"type": "base64" | "url", "value": "..."}}.')
    data.pop("model_id", None)  # the path names the model
    try:
        return JsonBody.model_validate(data)
    except ValidationError as exc:
        problems = [_json_problem(e) for e in exc.errors(include_url=False, include_context=False)]
        fields: dict[str, str] = {}
        for problem in problems:  # a union field (confidence) fails once per member: name the field once
            fields.setdefault(problem.split(":", 1)[0].split(".", 1)[0], problem)
        raise InvalidInput("Invalid JSON body: " + "; ".join(fields.values())) from None


def _legacy_body(query: LegacyQuery) -> LegacySource:
    """The request's image source, per docs/http-api.md §3.3."""
    found = common.services()
    limits = found.limits
    if query.image:
        url = query.image
        return LegacySource([lambda orient: from_url(url, limits, orient)])
    content_type = request.headers.get("Content-Type")
    if not content_type:
        raise InvalidInput("Content-Type header not provided with request.")
    if "multipart/form-data" in content_type.lower():
        data = _plain_multipart_file()
        if data is None:
            part = request.files.get("file")
            if part is None:
                raise ImageLoadError("Expected image to be send in part named 'file' of multipart/form-data request")
            data = part.read()
        return LegacySource([lambda orient: from_bytes(data, limits, orient)])
    body = request.get_data(cache=False)
    if query.image_type.lower() == "numpy":
        if not found.server.allow_numpy:
            raise ImageLoadError("NumPy image type is not supported in this configuration of `inference`.")
        return LegacySource([lambda orient: from_npy(body, limits)])
    if body.startswith(BINARY_IMAGE_SIGNATURES):  # docs/http-api.md §12 #13: raw JPEG/PNG bytes are an image too
        return LegacySource([lambda orient: from_bytes(body, limits, orient)])
    if body[:64].lstrip().removeprefix(_UTF8_BOM)[:1] == b"{":  # never base64 nor an image: seed 004's JSON body
        parsed = json_body(body)
        return LegacySource(common.declared_loaders(parsed.image), parsed)
    return LegacySource([lambda orient: from_bytes(bytes_from_base64(body), limits, orient)])


# The options each task takes (docs/http-api.md §3.4; the JSON body adds the v2 ones the query lacks), and
# the query parameter that sets each option on the query string (the query wins when both set one).
_DETECTION = ("iou_threshold", "max_detections", "class_agnostic_nms", "class_filter", "max_candidates")
_TASK_OPTIONS = {
    "classification": (),
    "object-detection": _DETECTION,
    "instance-segmentation": (*_DETECTION, "mask_decode_mode", "tradeoff_factor"),
    "keypoint-detection": (*_DETECTION, "keypoint_confidence"),
}
_PREPROC = ("disable_preproc_auto_orient", "disable_preproc_contrast", "disable_preproc_grayscale",
            "disable_preproc_static_crop")
_QUERY_NAMES = {"iou_threshold": "overlap"}


def _query_options(query: LegacyQuery, task: str) -> dict[str, Any]:
    raw = query.confidence
    best = isinstance(raw, str) and raw.lower() in ("best", "default")
    confidence = common.confidence_value(raw) if best else _percent(common.confidence_value(raw), floor=0.01)
    options: dict[str, Any] = {"confidence": confidence}
    if task != "classification":
        options.update(iou_threshold=_percent(query.overlap), max_detections=query.max_detections)
    if task == "instance-segmentation":
        options.update(mask_decode_mode=query.mask_decode_mode, tradeoff_factor=query.tradeoff_factor)
    if task == "keypoint-detection":
        options["keypoint_confidence"] = query.keypoint_confidence
    for name in _PREPROC:
        options[name] = getattr(query, name)
    return options


def _body_options(options: dict[str, Any], query: LegacyQuery, body: JsonBody, task: str) -> None:
    """Lay the JSON body's options over the query's, where the query string did not set them."""
    given = body.model_fields_set
    for name in ("confidence", *_TASK_OPTIONS[task], *_PREPROC):
        if name in given and _QUERY_NAMES.get(name, name) not in query.model_fields_set:
            value = getattr(body, name)
            options[name] = common.confidence_value(value) if name == "confidence" else value


def _legacy(path: LegacyPath, query: LegacyQuery) -> Any:
    model_id = f"{path.project}/{path.version}"
    fmt = query.format.lower()
    source = _legacy_body(query)
    body = source.body
    loaded = common.load_model(model_id, fallback_key=body.api_key if body is not None else None)
    task = loaded.model.task
    options = _query_options(query, task)
    labels, stroke, visualize, inference_id = query.labels, query.stroke, fmt in ("image", "image_and_json"), None
    if body is not None:
        _body_options(options, query, body, task)
        labels = labels if "labels" in query.model_fields_set else body.visualization_labels
        stroke = stroke if "stroke" in query.model_fields_set else body.visualization_stroke_width
        visualize, inference_id = visualize or body.visualize_predictions, body.id
        if fmt == "image" and len(source.loaders) > 1:
            raise InvalidInput("format=image answers one drawing: send one image, not a list.")
    params = InferenceParams(**options)
    images = common.load_images(loaded, source.loaders, params)
    if fmt == "image":
        results = common.services().inference.infer(loaded, images, params)
        jpeg = common.visualization(loaded, images[0], results[0], labels, stroke)
        return Response(jpeg, mimetype="image/jpeg")
    sample = not (query.disable_active_learning or (body is not None and body.disable_active_learning))
    answers = common.run(loaded, images, params, inference_id, visualize, labels, stroke, active_learning=sample)
    return common.json_answer(answers if body is not None and isinstance(body.image, list) else answers[0])


_RESPONSES: dict[Any, Any] = {200: DetectionResponse, 400: ErrorMessage, 404: ErrorMessage, 413: ErrorMessage}
_View = Callable[[LegacyPath, LegacyQuery], Any]


def _validated(view: _View) -> Callable[..., Any]:
    """The route validated here, and documented by flask-openapi3 from ``view``'s signature as before.

    flask-openapi3 reads a query model field by field (``request.args.get`` for each of the 19 fields,
    each miss raising and catching an exception inside werkzeug): the stage took 93 us in process on the
    2-core VM, 34 us this way. The same dict goes to the same model: the first
    value of each key, unknown keys ignored, and a failure is the app's 422 (``common.validation_error``).
    The attribute is the one flask-openapi3's own ``validate_request`` decorator sets to say "the function
    validates"."""

    @functools.wraps(view)
    def validated(**path_args: str) -> Any:
        try:
            path = LegacyPath.model_validate(path_args)
            query = LegacyQuery.model_validate(request.args.to_dict())
        except ValidationError as exc:
            abort(common.validation_error(exc))
        return view(path, query)

    validated.__dict__["__delay_validate_request__"] = True
    return validated


@bp.post("/<project>/<version>", responses=_RESPONSES)
@_validated
def legacy_post(path: LegacyPath, query: LegacyQuery) -> Any:
    """Infer on the request body: base64 text, a multipart `file` part, or `?image=<url>`.

    The response shape follows the model's task (detection shown; classification, segmentation and
    keypoints as on the v2 routes). `format=image` answers with the JPEG drawing instead.
    """
    return _legacy(path, query)


@bp.get("/<project>/<version>", responses=_RESPONSES)
@_validated
def legacy_get(path: LegacyPath, query: LegacyQuery) -> Any:
    """Infer on the image at `?image=<url>`."""
    return _legacy(path, query)
