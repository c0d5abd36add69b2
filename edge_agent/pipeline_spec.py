"""``PipelineSpec``: what a pipeline runs, declared once for its three sources: the body of
``POST /inference_pipelines/initialise``, the MQTT ``start_pipeline`` command, and a
``[[pipelines.streams]]`` table of the configuration (validated with the settings, at start).

It sits with the settings, below the pipelines that run it, so that the settings validate the
configuration's pipelines without importing the code that runs them.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr

# For pydantic's ``pattern=`` (Rust regex, where ``$`` is the end of the text: "p\n" is refused).
# Python's ``re`` lets ``$`` match before a trailing newline: check with ``is_pipeline_id`` instead.
PIPELINE_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_PIPELINE_ID_WHOLE = re.compile(PIPELINE_ID[1:-1])  # the same rule, for fullmatch in Python
# A model id or an alias (settings' [server] aliases rule, a superset of "<project>/<version>"), for
# pydantic's ``pattern=`` as above: no control character reaches the model manager.
MODEL_REF = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,255}$"
MODEL_REF_WHOLE = re.compile(MODEL_REF[1:-1])  # the same rule, for fullmatch in Python


MAX_SOURCES = 16  # video references in one pipeline, at most
FillingStrategy = Literal["WAIT", "DROP_OLDEST", "ADAPTIVE_DROP_OLDEST", "DROP_LATEST", "ADAPTIVE_DROP_LATEST"]
RESULTS_BUFFER_MAX = 1024  # results kept per pipeline for /consume, at most (Roboflow's default: 64)


def is_pipeline_id(value: object) -> bool:
    """Is ``value`` a pipeline id, matched whole (no control character, no trailing newline)?"""
    return isinstance(value, str) and _PIPELINE_ID_WHOLE.fullmatch(value) is not None


def _whole_float_to_int(value: object) -> object:
    """JSON Schema counts 5.0 as an integer; strict pydantic would refuse it."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


JsonInt = Annotated[int, BeforeValidator(_whole_float_to_int)]


class PipelineSpec(BaseModel):
    """What a pipeline runs: the body of ``POST /inference_pipelines/initialise`` and of the MQTT
    ``start_pipeline`` command."""

    model_config = ConfigDict(extra="forbid", strict=True)  # no "yes" for true, no "5" for 5

    model_id: str = Field(min_length=1, max_length=256, pattern=MODEL_REF, description="project/version or an alias")
    video_reference: str | int | Annotated[list[str | int], Field(min_length=1, max_length=MAX_SOURCES)] = Field(
        description="file path, image folder, rtsp:// or http(s):// URL, camera index or /dev/videoN, GStreamer: "
                    "gst:<launch>, csi:N, rtsp+hw://, v4l2:/dev/videoN (docs/http.md); a list: several sources "
                    "in one pipeline")
    pipeline_id: str | None = Field(None, pattern=PIPELINE_ID, description="default: generated")
    confidence: float = Field(0.4, ge=0, le=1)
    iou_threshold: float = Field(0.3, ge=0, le=1)
    class_filter: list[str] | None = None
    max_detections: JsonInt = Field(300, ge=1)
    class_agnostic_nms: bool = False
    max_candidates: JsonInt = Field(3000, ge=1)
    keypoint_confidence: float = Field(0.0, ge=0, le=1, description="keypoint models: hide points below it")
    mask_decode_mode: Literal["accurate", "fast", "tradeoff"] = "accurate"
    tradeoff_factor: float = Field(0.0, ge=0, le=1)
    max_fps: float | None = Field(None, gt=0, description="infer at most this many frames a second")
    realtime: bool = Field(False, description="files: pace at their frame rate, newest frame wins "
                                              "(default: every frame, as fast as the model goes)")
    source_buffer_filling_strategy: FillingStrategy | None = Field(
        None, description="Roboflow's: WAIT (every frame), DROP_OLDEST (newest frame wins), DROP_LATEST; the "
                          "ADAPTIVE_ forms as the plain ones. Default: WAIT for files, DROP_OLDEST for streams")
    source_buffer_consumption_strategy: Literal["LAZY", "EAGER"] | None = Field(
        None, description="LAZY: the oldest buffered frame first; EAGER: the newest, dropping the rest")
    video_source_properties: dict[str, float] | list[dict[str, float] | None] | None = Field(
        None, description="OpenCV capture properties (frame_width, frame_height, fps, ...): one dict for every "
                          "source or one per source")
    batch_collection_timeout: float | None = Field(None, ge=0, description="several sources: wait at most this "
                                                                           "long (s) for the slower ones (0: no wait)")
    active_learning: bool = Field(True, description="false: the pipeline's frames are never sampled for active "
                                                    "learning (a workflow block's disable_active_learning)")
    outputs: list[Literal["jsonl", "video"]] = Field(default_factory=list,
                                                     description="files under <state>/pipelines/<id>/")
    results_buffer_size: JsonInt = Field(64, ge=1, le=RESULTS_BUFFER_MAX,
                                         description="results kept for /inference_pipelines/{id}/consume "
                                                     "(the oldest go first)")
    api_key: SecretStr | None = Field(None, max_length=512, description="Roboflow API key: the model is pulled from "
                                                                  "Roboflow's API when the store lacks it")
