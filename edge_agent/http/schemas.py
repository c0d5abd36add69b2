"""Request and response schemas of the HTTP API, declared once (pydantic) for validation and OpenAPI.

Field names, defaults and shapes follow docs/http-api.md (§3, §4, §6). Unknown fields are
ignored (the SDK sends several that only matter to Roboflow). Response models document the shapes;
responses themselves are built by ``edge_agent.roboflow_json`` (null fields left out).
"""

from __future__ import annotations

from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Confidence = float | Literal["best", "default"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")

    @classmethod
    @cache
    def _cached_schema(cls) -> dict[str, Any]:
        return super().model_json_schema()

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        # flask-openapi3 asks for the schema of query models on every request; build it once.
        if args or kwargs:
            return super().model_json_schema(*args, **kwargs)
        return cls._cached_schema()


# ---------------------------------------------------------------------------------------- v2 requests


class ImageInput(_Model):
    """One image. Over HTTP: ``base64`` (any format OpenCV decodes), ``url`` (https, checked per
    docs/http-api.md §9.2) or, when the server enables it, ``numpy`` (base64 of a ``.npy`` file; never unpickled)."""

    type: str = Field(description="base64 | url | numpy (case-insensitive)", examples=["base64"])
    value: Any = Field(None, description="base64 text (a data: URI prefix is allowed), or a URL")


class InferenceRequest(_Model):
    model_id: str = Field(description='"<project>/<version>", e.g. "shapes/1"', examples=["shapes/1"])
    image: ImageInput | list[ImageInput] = Field(description="one image, or a list (a list gives a list)")
    api_key: str | None = Field(None, description="only checked when the server is configured with a key")
    id: str | None = Field(None, description="becomes inference_id (default: a fresh UUID4)")
    confidence: Confidence = Field(0.4, description='0..1; "best"/"default" = the model default (0.4)')
    visualize_predictions: bool = False
    visualization_stroke_width: int = Field(1, ge=1, le=100)
    visualization_labels: bool = False
    disable_preproc_auto_orient: bool = False
    disable_preproc_contrast: bool = False
    disable_preproc_grayscale: bool = False
    disable_preproc_static_crop: bool = False
    disable_active_learning: bool = Field(False, description="never sample these images for active learning")

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        """Roboflow declares the options ``Optional`` with defaults: an explicit ``null`` is the default."""
        if isinstance(data, dict) and None in data.values():
            return {key: value for key, value in data.items() if value is not None}
        return data


class ClassificationRequest(InferenceRequest):
    pass


class DetectionRequest(InferenceRequest):
    iou_threshold: float = Field(0.3, description="NMS IoU threshold, 0..1")
    class_agnostic_nms: bool = False
    class_filter: list[str] | None = Field(None, description="keep only these class names")
    max_detections: int = Field(300, ge=1)
    max_candidates: int = Field(3000, ge=1, description="boxes fed into NMS (pre-NMS top-k)")
    fix_batch_size: bool = False


class SegmentationRequest(DetectionRequest):
    mask_decode_mode: str = Field("accurate", description="accurate | fast | tradeoff")
    tradeoff_factor: float = Field(0.0, description="0..1, for tradeoff mode")
    response_mask_format: str = Field("polygon", description="polygon (rle is answered as polygon)")


class KeypointsRequest(DetectionRequest):
    keypoint_confidence: float = Field(0.0, description="omit keypoints below this visibility")


# ---------------------------------------------------------------------------------------- v1 query


class LegacyPath(_Model):
    project: str
    version: str


class LegacyQuery(_Model):
    api_key: str | None = None
    confidence: float | str = Field(
        0.4, description='0..1, or a percentage >= 1 (50 -> 0.5), or "best"/"default"')
    overlap: float = Field(0.3, description="NMS IoU threshold; >= 1 is a percentage")
    max_detections: int = Field(300, ge=1)
    keypoint_confidence: float = 0.0
    format: str = Field("json", description="json | image (JPEG bytes) | image_and_json")
    labels: bool = False
    stroke: int = Field(1, ge=1, le=100)
    image: str | None = Field(None, description="URL of the image; the body is then ignored")
    image_type: str = Field("base64", description="how to read a raw body: base64 | numpy")
    mask_decode_mode: str = "accurate"
    tradeoff_factor: float = 0.0
    response_mask_format: str = "polygon"
    disable_preproc_auto_orient: bool = False
    disable_preproc_contrast: bool = False
    disable_preproc_grayscale: bool = False
    disable_preproc_static_crop: bool = False
    disable_active_learning: bool = Field(False, description="never sample this image for active learning")


# ---------------------------------------------------------------------------------------- management


class ModelAddRequest(_Model):
    model_id: str = Field(examples=["shapes/1"])
    api_key: str | None = None
    model_type: str | None = None


class ModelRemoveRequest(_Model):
    model_id: str = Field(examples=["shapes/1"])


class EngineState(BaseModel):
    """What serves a model and where its TensorRT engine stands (docs/jetson.md#tensorrt-engines)."""

    state: Literal["onnxruntime", "queued", "building", "verifying", "tensorrt", "failed"] = Field(
        description="onnxruntime: TensorRT is not used on this device (reason says why)")
    backend: Literal["onnxruntime", "tensorrt"] = Field(description="what serves the model now")
    phase: str | None = None
    progress: float | None = Field(None, description="0..1 of the build's current top-level phase")
    reason: str | None = None
    key: str | None = Field(None, description="the engine cache key's digest")
    since: float | None = None


class ModelDescription(BaseModel):
    model_id: str
    task_type: Literal["object-detection", "instance-segmentation", "classification", "keypoint-detection"]
    batch_size: int | None = Field(description="static batch size; null when dynamic")
    input_height: int | None
    input_width: int | None
    vram_bytes: int | None = None
    request_aliases: list[str] = []
    request_paths: list[str] = []
    engine: EngineState | None = Field(None, description="edge-agent: the model's engine")


class Registry(BaseModel):
    models: list[ModelDescription]
    total_vram_bytes: int | None = None
    gpu_memory_used: int | None = None
    gpu_memory_total: int | None = None
    torch_cuda_allocated: int | None = None
    torch_cuda_reserved: int | None = None
    torch_cuda_allocator_cache: int | None = None
    non_torch_gpu_memory: int | None = None


class EngineChoice(BaseModel):
    backend: Literal["tensorrt", "onnxruntime"]
    reason: str = Field(description="why this back-end (and why not TensorRT, when it is not used)")
    onnxruntime_providers: list[str]
    device: dict[str, Any] = Field(description="Jetson model, L4T release, GPU, compute capability, DLA cores")


class ServerInfo(BaseModel):
    name: str = "edge-agent"
    version: str
    uuid: str
    engine: EngineChoice | None = Field(None, description="edge-agent: the inference back-end chosen and why")


class Status(BaseModel):
    status: str
    reason: str | None = None
    engines: str | None = Field(None, description="/readiness: the TensorRT engine build in progress, if any "
                                "(models are served by ONNX Runtime meanwhile)")


class ValidationErrorItem(BaseModel):
    type: str
    loc: list[str | int] = Field(description='where: "body", "query" or "path", then the field path')
    msg: str
    input: Any = Field(None, description="the offending value, left out when large")


class ValidationErrorBody(BaseModel):
    """docs/http-api.md §5: request validation errors (pydantic v2's list, FastAPI's envelope)."""

    detail: list[ValidationErrorItem]


class ErrorMessage(BaseModel):
    message: str
    reason: str | None = Field(None, description="edge-agent's detail, when Roboflow's message is generic")


# ---------------------------------------------------------------------------------------- responses


class ImageSize(BaseModel):
    width: int
    height: int


class Point(BaseModel):
    x: float
    y: float


class Keypoint(BaseModel):
    x: float
    y: float
    confidence: float
    class_id: int
    class_: str = Field(alias="class")


class Prediction(BaseModel):
    x: float
    y: float
    width: float
    height: float
    confidence: float
    class_: str = Field(alias="class")
    class_id: int
    detection_id: str
    points: list[Point] | None = Field(None, description="instance segmentation: the outline")
    mask_format: str | None = Field(None, description='instance segmentation: "polygon"')
    keypoints: list[Keypoint] | None = Field(None, description="keypoint detection")


class _Response(BaseModel):
    inference_id: str
    time: float = Field(description="seconds of model work (decode, preprocess, forward, postprocess)")
    image: ImageSize
    visualization: str | None = Field(None, description="base64 JPEG, when visualize_predictions")


class DetectionResponse(_Response):
    predictions: list[Prediction]


class ClassPrediction(BaseModel):
    class_: str = Field(alias="class")
    class_id: int
    confidence: float


class MultiLabelScore(BaseModel):
    confidence: float
    class_id: int


class ClassificationResponse(_Response):
    predictions: list[ClassPrediction] | dict[str, MultiLabelScore] = Field(
        description="single-label: classes above the threshold, best first; multi-label: every class by name")
    top: str | None = Field(None, description="single-label only")
    confidence: float | None = Field(None, description="single-label only")
    predicted_classes: list[str] | None = Field(None, description="multi-label only")


# ------------------------------------------------------------------------------- model provisioning


class ModelUploadQuery(_Model):
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$",
                               description="sha256 of the uploaded file; a different file is refused (400)")
    activate: bool = Field(True, description="serve it once its checks pass; false: keep it as a revision to "
                                             "activate later")


class RollbackQuery(_Model):
    to: str | None = Field(None, max_length=80, description="a revision (stamp or sha256 prefix); default: the "
                                                            "newest earlier one")


class ActivateQuery(_Model):
    revision: str = Field(min_length=1, max_length=80, description="a revision (stamp or sha256 prefix)")


class CheckReportBody(BaseModel):
    ok: bool
    reason: str | None = None
    seconds: float | None = None
    images_compared: int | None = None
    disagreeing: int | None = None


class RevisionInfo(BaseModel):
    revision: str = Field(description="UTC stamp it was replaced at")
    sha256: str


class StoredModelInfo(BaseModel):
    model_id: str
    task: str
    sha256: str
    bytes: int
    builtin: bool
    loaded: bool
    revisions: list[RevisionInfo] = Field(description="earlier versions kept for rollback, newest first")


class StoredModels(BaseModel):
    models: list[StoredModelInfo]
    disk_bytes: int = Field(description="the store's size on disk, revisions included")
    disk_budget_bytes: int | None = Field(None, description="[models] disk_budget_mb, when set")


class ActivationResult(BaseModel):
    model_id: str
    activated: bool = Field(description="false: installed as a revision, not serving")
    serving: bool | None = Field(None, description="the model was loaded and now serves the new version")
    sha256: str
    revision: str | None = Field(None, description="when not activated: the revision to activate")
    check: CheckReportBody
