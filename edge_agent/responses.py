"""Roboflow's Python response objects: what ``Model.infer`` returns, one per image.

The classes, attribute names and aliases are those of Roboflow Inference's
``inference.core.entities.responses.inference`` (pydantic v2 models), so code written against
``inference.get_model(...).infer(...)`` runs unchanged: ``results[0].predictions[0].class_name``,
``.dict(by_alias=True, exclude_none=True)`` (``"class"``), ``.json()``, ``model_dump`` and
``supervision.Detections.from_inference(response)``.

Each object is built from the Roboflow JSON that HTTP answers with (``roboflow_json.to_roboflow``),
so the Python API and HTTP cannot disagree. The numpy value it was made from stays reachable as
``response.result`` (``Detections`` / ``Classification``) for code that wants arrays.

``dict()`` and ``json()`` are this module's own methods over ``model_dump`` / ``model_dump_json``:
pydantic v2 deprecates its own and would warn on every call (supervision calls ``dict`` once per
frame). This module imports pydantic: import it lazily from hot paths.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_serializer

from edge_agent import roboflow_json
from edge_agent.results import Classification, Result

JsonDict = dict[str, Any]


def _new_id() -> str:
    return str(uuid.uuid4())


class _RoboflowModel(BaseModel):
    """Fields fill by name or alias (``class_name`` / ``class``); ``dict``/``json`` never warn."""

    model_config = ConfigDict(populate_by_name=True, protected_namespaces=())

    def dict(self, **kwargs: Any) -> JsonDict:  # pydantic's own is deprecated: it warns on every call
        """``model_dump(**kwargs)``: e.g. ``dict(by_alias=True, exclude_none=True)`` is the HTTP JSON."""
        return self.model_dump(**kwargs)

    def json(self, **kwargs: Any) -> str:  # pydantic's own is deprecated: it warns on every call
        """``model_dump_json(**kwargs)``: a JSON string."""
        return self.model_dump_json(**kwargs)


class Point(_RoboflowModel):
    x: float = Field(description="The x-axis pixel coordinate of the point")
    y: float = Field(description="The y-axis pixel coordinate of the point")


class Keypoint(Point):
    confidence: float = Field(description="Model confidence regarding keypoint visibility")
    class_id: int = Field(description="The keypoint's slot in the skeleton")
    class_name: str = Field(alias="class", description="The keypoint's name")


class ObjectDetectionPrediction(_RoboflowModel):
    x: float = Field(description="The center x-axis pixel coordinate of the prediction")
    y: float = Field(description="The center y-axis pixel coordinate of the prediction")
    width: float = Field(description="The width of the prediction bounding box in number of pixels")
    height: float = Field(description="The height of the prediction bounding box in number of pixels")
    confidence: float = Field(description="The detection confidence as a fraction between 0 and 1")
    class_name: str = Field(alias="class", description="The predicted class label")
    class_confidence: float | None = Field(None, description="The class label confidence")
    class_id: int = Field(description="The class id of the prediction")
    tracker_id: int | None = Field(None, description="The tracker id of the prediction if tracking is enabled")
    detection_id: str = Field(default_factory=_new_id, description="Unique identifier of detection")
    parent_id: str | None = Field(None, description="Identifier of parent image region")


class InstanceSegmentationPrediction(ObjectDetectionPrediction):
    points: list[Point] = Field(description="The list of points that make up the instance polygon")
    mask_format: str | None = Field(None, description='How the mask is given: "polygon"')


class KeypointsPrediction(ObjectDetectionPrediction):
    keypoints: list[Keypoint]


class ClassificationPrediction(_RoboflowModel):
    class_name: str = Field(alias="class", description="The predicted class label")
    class_id: int = Field(description="Numeric ID associated with the class label")
    confidence: float = Field(description="The class label confidence as a fraction between 0 and 1")


class MultiLabelClassificationPrediction(_RoboflowModel):
    confidence: float = Field(description="The class label confidence as a fraction between 0 and 1")
    class_id: int | None = Field(None, description="Numeric ID associated with the class label")


class InferenceResponseImage(_RoboflowModel):
    width: int = Field(description="The original width of the image used in inference")
    height: int = Field(description="The original height of the image used in inference")


class InferenceResponse(_RoboflowModel):
    inference_id: str | None = Field(None, description="Unique identifier of inference")
    frame_id: int | None = Field(None, description="The frame id of the image, if it came from a video")
    time: float | None = Field(None, description="Seconds the whole call took, preprocessing included")
    _result: Result | None = PrivateAttr(default=None)

    @property
    def result(self) -> Result | None:
        """The numpy value this response was made from (None when it was built from JSON)."""
        return self._result


class CvInferenceResponse(InferenceResponse):
    image: list[InferenceResponseImage] | InferenceResponseImage
    visualization: Any | None = Field(None, description="Encoded image of the drawn predictions")

    @field_serializer("visualization", when_used="json")
    def _visualization_as_base64(self, visualization: Any | None) -> str | None:
        return None if visualization is None else base64.b64encode(visualization).decode("ascii")


class ObjectDetectionInferenceResponse(CvInferenceResponse):
    predictions: list[ObjectDetectionPrediction]


class InstanceSegmentationInferenceResponse(CvInferenceResponse):
    predictions: list[InstanceSegmentationPrediction]


class KeypointsDetectionInferenceResponse(CvInferenceResponse):
    predictions: list[KeypointsPrediction]


class ClassificationInferenceResponse(CvInferenceResponse):
    predictions: list[ClassificationPrediction]
    top: str = Field(description="The top predicted class label")
    confidence: float = Field(description="The confidence of the top predicted class label")
    parent_id: str | None = Field(None, description="Identifier of parent image region")


class MultiLabelClassificationInferenceResponse(CvInferenceResponse):
    predictions: dict[str, MultiLabelClassificationPrediction]
    predicted_classes: list[str] = Field(description="The list of predicted classes")
    parent_id: str | None = Field(None, description="Identifier of parent image region")


_BY_TASK: dict[str, type[CvInferenceResponse]] = {
    "object-detection": ObjectDetectionInferenceResponse,
    "instance-segmentation": InstanceSegmentationInferenceResponse,
    "keypoint-detection": KeypointsDetectionInferenceResponse,
    "classification": ClassificationInferenceResponse,
}


def response_from_type(task: str, body: JsonDict, multilabel: bool = False) -> CvInferenceResponse:
    """A response object of ``task``'s class from its Roboflow JSON (an HTTP answer, a pipeline's)."""
    if task == "classification" and (multilabel or isinstance(body.get("predictions"), dict)):
        return MultiLabelClassificationInferenceResponse.model_validate(body)
    try:
        cls = _BY_TASK[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(_BY_TASK)}") from None
    return cls.model_validate(body)


def from_result(result: Result, inference_id: str | None = None) -> CvInferenceResponse:
    """One image's response object, from its Roboflow JSON; ``response.result`` keeps ``result``."""
    multilabel = isinstance(result, Classification) and result.multilabel
    response = response_from_type(result.task, roboflow_json.to_roboflow(result, inference_id), multilabel)
    response._result = result
    return response
