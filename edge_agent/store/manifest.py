"""``model.json``: everything needed to run a stored model, next to its ``model.onnx``.

Owns the schema (task, classes, input size, preprocessing, output layout, keypoints, checksum) and
its validation. It does no I/O beyond parsing and formatting JSON text.
"""

from __future__ import annotations

import json
import re
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge_agent.errors import InvalidModelId, ModelLoadFailed

Task = Literal["object-detection", "instance-segmentation", "keypoint-detection", "classification"]
TASKS: tuple[str, ...] = get_args(Task)
DETECTION_TASKS = ("object-detection", "instance-segmentation", "keypoint-detection")

# Matched whole (``fullmatch``): with ``re.match`` a ``$`` also matches before a trailing newline,
# which let ``"evil\n"`` through as a folder name.
_ID_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def parse_model_id(model_id: str) -> tuple[str, str]:
    """Split ``project/version`` and check both parts are safe directory names (matched whole: no
    control character, no trailing newline)."""
    parts = model_id.split("/") if isinstance(model_id, str) else []
    if len(parts) != 2 or not all(_ID_PART.fullmatch(p) for p in parts) or ".." in model_id:
        raise InvalidModelId(
            f"Invalid model id {model_id!r}: expected '<project>/<version>' with letters, digits, "
            "'.', '_' or '-' in each part (e.g. 'shapes/1')."
        )
    return parts[0], parts[1]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StaticCrop(_Strict):
    """Percentages (0-100) of the image kept before resizing (Roboflow's static-crop step)."""

    x_min: float = Field(ge=0, le=100)
    y_min: float = Field(ge=0, le=100)
    x_max: float = Field(ge=0, le=100)
    y_max: float = Field(ge=0, le=100)

    @model_validator(mode="after")
    def _ordered(self) -> StaticCrop:
        if self.x_min >= self.x_max or self.y_min >= self.y_max:
            raise ValueError("static crop needs x_min < x_max and y_min < y_max")
        return self


class Preprocess(_Strict):
    resize: Literal["letterbox", "stretch", "center-crop"] = Field(
        "letterbox", description="how the image is brought to the input size")
    pad_value: int = Field(114, ge=0, le=255, description="letterbox padding grey level")
    color: Literal["rgb", "bgr"] = "rgb"
    mean: tuple[float, float, float] = Field((0.0, 0.0, 0.0), description="subtracted after /255")
    std: tuple[float, float, float] = Field((1.0, 1.0, 1.0), description="divided after the mean")
    auto_orient: bool = Field(True, description="apply EXIF orientation when decoding")
    static_crop: StaticCrop | None = None
    contrast: Literal["contrast-stretching", "histogram-equalization", "adaptive-equalization"] | None = None
    grayscale: bool = False


class InputSpec(_Strict):
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    batch: int | None = Field(None, description="static batch size; null when the axis is dynamic")


Layout = Literal["yolov8", "yolov5", "end2end", "probabilities", "logits"]


class OutputSpec(_Strict):
    layout: Layout
    mask_channels: int = Field(0, ge=0, description="segmentation: prototype channels")
    keypoints: int = Field(0, ge=0, description="pose: keypoints per object")
    keypoint_dims: int = Field(3, ge=2, le=3, description="pose: 2 (x, y) or 3 (x, y, visibility)")


class Weights(_Strict):
    file: str = "model.onnx"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(gt=0)


class Manifest(_Strict):
    schema_version: int = 1
    model_id: str
    task: Task
    class_names: tuple[str, ...] = Field(min_length=1)
    input: InputSpec
    preprocess: Preprocess
    output: OutputSpec
    multilabel: bool = False
    keypoint_names: dict[int, tuple[str, ...]] = Field(
        default_factory=dict, description="per class id, the names of its keypoints in slot order")
    skeleton: dict[int, tuple[tuple[int, int], ...]] = Field(default_factory=dict)
    colors: dict[str, str] = Field(default_factory=dict, description="class name -> #RRGGBB")
    weights: Weights
    source: dict[str, str] = Field(default_factory=dict, description="where it was imported from")

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        parse_model_id(self.model_id)
        if self.task == "classification" and self.output.layout not in ("probabilities", "logits"):
            raise ValueError(f"classification needs layout probabilities|logits, not {self.output.layout}")
        if self.task != "classification" and self.output.layout not in ("yolov8", "yolov5", "end2end"):
            raise ValueError(f"{self.task} needs layout yolov8|yolov5|end2end, not {self.output.layout}")
        if self.task == "instance-segmentation" and self.output.mask_channels == 0:
            raise ValueError("instance-segmentation needs output.mask_channels > 0")
        if self.task == "keypoint-detection" and self.output.keypoints == 0:
            raise ValueError("keypoint-detection needs output.keypoints > 0")
        return self

    def keypoint_names_for(self, class_id: int) -> tuple[str, ...]:
        """Names of the keypoint slots of a class (default: "0".."K-1")."""
        names = self.keypoint_names.get(class_id)
        if names is None:
            return tuple(str(i) for i in range(self.output.keypoints))
        return names

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> Manifest:
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()
            )
            raise ModelLoadFailed(f"{where}: invalid model.json: {problems}") from exc
