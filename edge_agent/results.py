"""The one result type that flows everywhere: ``Detections`` or ``Classification``, per image.

Plain dataclasses of numpy arrays, validated on construction with expected-versus-actual messages.
The Roboflow JSON is written in ``edge_agent.roboflow_json``; ``to_json`` here calls it so that Python
users get Roboflow's JSON (docs/http-api.md §4.6) in one call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_agent import roboflow_json


def _check(name: str, array: np.ndarray, shape: tuple[int | None, ...]) -> None:
    ok = array.ndim == len(shape) and all(s is None or s == a for s, a in zip(shape, array.shape))
    if not ok:
        want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {array.shape}")


@dataclass
class Detections:
    """Objects found in one image, in original-image pixels, sorted by confidence (highest first).

    xyxy: (N, 4) float32 corners; confidence: (N,) float32; class_id: (N,) int64.
    polygons: per detection an (M, 2) float32 outline (instance segmentation), else None.
    keypoints: (N, K, 3) float32 x, y, confidence (keypoint detection), else None.
    keypoint_names: per detection, the names of its keypoint slots (the class's skeleton).
    keypoint_threshold: keypoints below it are left out of formatted output.
    """

    xyxy: np.ndarray
    confidence: np.ndarray
    class_id: np.ndarray
    class_names: tuple[str, ...]
    image_size: tuple[int, int]  # (height, width) of the decoded image
    task: str = "object-detection"
    polygons: list[np.ndarray] | None = None
    keypoints: np.ndarray | None = None
    keypoint_names: list[tuple[str, ...]] | None = None
    keypoint_threshold: float = 0.0
    time: float = 0.0  # seconds of model work for this image (decode excluded)
    frame_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.xyxy)
        _check("xyxy", self.xyxy, (n, 4))
        _check("confidence", self.confidence, (n,))
        _check("class_id", self.class_id, (n,))
        if self.polygons is not None and len(self.polygons) != n:
            raise ValueError(f"polygons must have one entry per detection ({n}), got {len(self.polygons)}")
        if self.keypoints is not None:
            _check("keypoints", self.keypoints, (n, None, 3))
        if n and (self.class_id.min() < 0 or self.class_id.max() >= len(self.class_names)):
            raise ValueError(f"class_id must be in [0, {len(self.class_names)}), got {self.class_id}")

    def __len__(self) -> int:
        return len(self.xyxy)

    @property
    def class_name(self) -> list[str]:
        return [self.class_names[i] for i in self.class_id]

    def masks(self) -> np.ndarray:
        """(N, H, W) bool masks rasterised from the polygons (empty polygons give empty masks)."""
        import cv2  # lazy: cv2

        h, w = self.image_size
        out = np.zeros((len(self), h, w), dtype=np.uint8)
        for i, poly in enumerate(self.polygons or []):
            if len(poly) >= 3:
                cv2.fillPoly(out[i], [np.round(poly).astype(np.int32)], 1)
        return out.astype(bool)

    def to_json(self, inference_id: str | None = None) -> dict[str, Any]:
        """The Roboflow response object of docs/http-api.md §4.6 for this image."""
        return roboflow_json.detections_response(self, inference_id)


@dataclass
class Classification:
    """Class scores of one image.

    confidence: (C,) float32, one score per class (softmax for single-label, sigmoid for multi-label).
    threshold: the confidence threshold asked for; formatted output lists the classes at or above it.
    """

    confidence: np.ndarray
    class_names: tuple[str, ...]
    image_size: tuple[int, int]
    multilabel: bool = False
    threshold: float = 0.0
    time: float = 0.0
    frame_id: int | None = None
    task: str = "classification"

    def __post_init__(self) -> None:
        _check("confidence", self.confidence, (len(self.class_names),))

    @property
    def top(self) -> tuple[int, float]:
        i = int(np.argmax(self.confidence))
        return i, float(self.confidence[i])

    def to_json(self, inference_id: str | None = None) -> dict[str, Any]:
        return roboflow_json.classification_response(self, inference_id)


Result = Detections | Classification
