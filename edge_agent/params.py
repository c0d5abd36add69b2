"""``InferenceParams``: the per-request options of one inference, validated, understood by every task head.

Defaults are Roboflow's. HTTP requests, pipelines, MQTT commands, the CLI and the Python API build one;
the heads (``edge_agent.heads``) read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_agent.errors import InvalidInput

MASK_DECODE_MODES = ("accurate", "fast", "tradeoff")


@dataclass(frozen=True)
class InferenceParams:
    """Per-request options (docs/http-api.md §4.2-§4.4 names). Defaults are Roboflow's."""

    confidence: float = 0.4
    iou_threshold: float = 0.3
    class_agnostic_nms: bool = False
    max_detections: int = 300
    max_candidates: int = 3000
    class_filter: tuple[str, ...] | None = None
    keypoint_confidence: float = 0.0
    mask_decode_mode: str = "accurate"
    tradeoff_factor: float = 0.0
    disable_preproc_auto_orient: bool = False
    disable_preproc_contrast: bool = False
    disable_preproc_grayscale: bool = False
    disable_preproc_static_crop: bool = False

    def __post_init__(self) -> None:
        if self.class_filter is not None and not isinstance(self.class_filter, tuple):
            object.__setattr__(self, "class_filter", tuple(self.class_filter))  # a list from JSON or a caller
        if self.mask_decode_mode not in MASK_DECODE_MODES or not 0.0 <= self.tradeoff_factor <= 1.0:
            raise InvalidInput(
                "Invalid mask decode argument sent. tradeoff_factor must be in [0.0, 1.0], "
                f"mask_decode_mode: must be one of {list(MASK_DECODE_MODES)}")
        for name in ("confidence", "iou_threshold", "keypoint_confidence"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise InvalidInput(f"{name} must be between 0 and 1, got {value!r}")
        if self.max_detections < 1 or self.max_candidates < 1:
            raise InvalidInput("max_detections and max_candidates must be at least 1")
