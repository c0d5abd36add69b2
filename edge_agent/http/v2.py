"""v2 routes: `POST /infer/{task}` (docs/http-api.md §4). One image in gives one object out; a list gives a list."""

from __future__ import annotations

import functools
from typing import Any

from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel, RootModel

from edge_agent.errors import InvalidInput
from edge_agent.http import common
from edge_agent.http.schemas import (
    ClassificationRequest,
    ClassificationResponse,
    DetectionRequest,
    DetectionResponse,
    ErrorMessage,
    InferenceRequest,
    KeypointsRequest,
    SegmentationRequest,
    ValidationErrorBody,
)
from edge_agent.params import InferenceParams

tag = Tag(name="Inference (v2)", description="Roboflow's `/infer/{task}` routes, as InferenceHTTPClient calls them")
bp = APIBlueprint("v2", __name__, abp_tags=[tag], abp_responses={422: ValidationErrorBody})

ERRORS: dict[str | int, Any] = {400: ErrorMessage, 401: ErrorMessage, 404: ErrorMessage, 413: ErrorMessage,
                          500: ErrorMessage, 503: ErrorMessage}


@functools.cache
def _many(model: type[BaseModel]) -> type[RootModel[Any]]:
    return RootModel[model | list[model]]  # type: ignore[valid-type]


def _infer(route_task: str, body: InferenceRequest, extra: dict[str, Any]) -> Any:
    loaders = common.declared_loaders(body.image)
    loaded = common.load_model(body.model_id)
    want = common.ROUTE_TASKS[route_task]
    if loaded.model.task != want:
        raise InvalidInput(
            f"Model {body.model_id} has task '{loaded.model.task}': send it to "
            f"/infer/{common.TASK_ROUTES[loaded.model.task]} instead of /infer/{route_task}.")
    params = InferenceParams(
        confidence=common.confidence_value(body.confidence),
        disable_preproc_auto_orient=body.disable_preproc_auto_orient,
        disable_preproc_contrast=body.disable_preproc_contrast,
        disable_preproc_grayscale=body.disable_preproc_grayscale,
        disable_preproc_static_crop=body.disable_preproc_static_crop,
        **extra,
    )
    decoded = common.load_images(loaded, loaders, params)
    bodies = common.run(loaded, decoded, params, body.id, body.visualize_predictions,
                        body.visualization_labels, body.visualization_stroke_width,
                        active_learning=not body.disable_active_learning)
    return common.json_answer(bodies if isinstance(body.image, list) else bodies[0])


def _detection_fields(body: DetectionRequest) -> dict[str, Any]:
    return {
        "iou_threshold": body.iou_threshold,
        "class_agnostic_nms": body.class_agnostic_nms,
        "class_filter": body.class_filter,
        "max_detections": body.max_detections,
        "max_candidates": body.max_candidates,
    }


@bp.post("/infer/object_detection", responses={200: _many(DetectionResponse), **ERRORS})
def object_detection(body: DetectionRequest) -> Any:
    """Object detection on one image or a list of images."""
    return _infer("object_detection", body, _detection_fields(body))


@bp.post("/infer/instance_segmentation", responses={200: _many(DetectionResponse), **ERRORS})
def instance_segmentation(body: SegmentationRequest) -> Any:
    """Instance segmentation: detections with their outline in `points`."""
    fields = _detection_fields(body)
    fields.update(mask_decode_mode=body.mask_decode_mode, tradeoff_factor=body.tradeoff_factor)
    return _infer("instance_segmentation", body, fields)


@bp.post("/infer/classification", responses={200: _many(ClassificationResponse), **ERRORS})
def classification(body: ClassificationRequest) -> Any:
    """Single- or multi-label classification."""
    return _infer("classification", body, {})


@bp.post("/infer/keypoints_detection", responses={200: _many(DetectionResponse), **ERRORS})
def keypoints_detection(body: KeypointsRequest) -> Any:
    """Keypoint detection: detections with their named `keypoints`."""
    fields = _detection_fields(body)
    fields["keypoint_confidence"] = body.keypoint_confidence
    return _infer("keypoints_detection", body, fields)
