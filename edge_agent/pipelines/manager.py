"""``StreamManager``: start, list, pause, resume and terminate pipelines; shared by the HTTP routes
(``/inference_pipelines/...``) and the MQTT commands, so both behave the same.

A pipeline's outputs on disk (``outputs: ["jsonl", "video"]``) go to ``<state>/pipelines/<id>/``:
callers over the network name what to produce, never where to write.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr

from edge_agent.errors import EdgeAgentError, InvalidInput
from edge_agent.params import InferenceParams
from edge_agent.pipelines.pipeline import InferencePipeline, JsonLinesSink, PreviewSink, Sink, VideoFileSink

PIPELINE_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class PipelineNotFound(EdgeAgentError):
    status = 404
    code = "pipeline_not_found"


def _whole_float_to_int(value: Any) -> Any:
    """JSON Schema counts 5.0 as an integer; strict pydantic would refuse it."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


JsonInt = Annotated[int, BeforeValidator(_whole_float_to_int)]


class PipelineSpec(BaseModel):
    """What a pipeline runs: the body of ``POST /inference_pipelines/initialise`` and of the MQTT
    ``start_pipeline`` command."""

    model_config = ConfigDict(extra="forbid", strict=True)  # no "yes" for true, no "5" for 5

    model_id: str = Field(min_length=1, max_length=256, description="project/version or an alias")
    video_reference: str | int = Field(description="file path, image folder, rtsp:// or http(s):// URL, "
                                                   "camera index or /dev/videoN, GStreamer: gst:<launch>, "
                                                   "csi:N, rtsp+hw://, v4l2:/dev/videoN (docs/http.md)")
    pipeline_id: str | None = Field(None, pattern=PIPELINE_ID, description="default: generated")
    confidence: float = Field(0.4, ge=0, le=1)
    iou_threshold: float = Field(0.3, ge=0, le=1)
    class_filter: list[str] | None = None
    max_detections: JsonInt = Field(300, ge=1)
    max_fps: float | None = Field(None, gt=0, description="infer at most this many frames a second")
    realtime: bool = Field(False, description="files: pace at their frame rate, newest frame wins "
                                              "(default: every frame, as fast as the model goes)")
    outputs: list[Literal["jsonl", "video"]] = Field(default_factory=list,
                                                     description="files under <state>/pipelines/<id>/")
    api_key: SecretStr | None = Field(None, max_length=512, description="Roboflow API key: the model is pulled from "
                                                                  "Roboflow's API when the store lacks it")


class StreamManager:
    def __init__(self, runtime: Any, folder: Path) -> None:
        self.runtime = runtime
        self.folder = folder
        self._pipelines: dict[str, InferencePipeline] = {}
        self.previews: dict[str, PreviewSink] = {}
        self._lock = threading.Lock()

    def start(self, spec: PipelineSpec) -> InferencePipeline:
        pipeline_id = spec.pipeline_id or None
        with self._lock:
            if pipeline_id is not None and pipeline_id in self._pipelines and \
                    not self._pipelines[pipeline_id].done:
                raise InvalidInput(f"pipeline {pipeline_id!r} is running; terminate it first")
            params = InferenceParams(confidence=spec.confidence, iou_threshold=spec.iou_threshold,
                                     class_filter=tuple(spec.class_filter) if spec.class_filter else None,
                                     max_detections=spec.max_detections)
            pipeline = InferencePipeline(self.runtime, spec.model_id, spec.video_reference,
                                         pipeline_id=pipeline_id, params=params, max_fps=spec.max_fps,
                                         realtime=spec.realtime,
                                         api_key=spec.api_key.get_secret_value() if spec.api_key else None)
            if not re.match(PIPELINE_ID, pipeline.pipeline_id):  # pragma: no cover - generated ids match
                raise InvalidInput("bad pipeline id")
            preview = PreviewSink()
            sinks: list[Sink] = [preview]
            out = self.folder / pipeline.pipeline_id
            if "jsonl" in spec.outputs:
                sinks.append(JsonLinesSink(out / "predictions.jsonl", pipeline.pipeline_id))
            if "video" in spec.outputs:
                sinks.append(VideoFileSink(out / "annotated.mp4", fps=spec.max_fps or 25.0))
            pipeline.sinks.extend(sinks)
            self._pipelines[pipeline.pipeline_id] = pipeline
            self.previews[pipeline.pipeline_id] = preview
        pipeline.start()
        return pipeline

    def get(self, pipeline_id: str) -> InferencePipeline:
        with self._lock:
            pipeline = self._pipelines.get(pipeline_id)
        if pipeline is None:
            raise PipelineNotFound(f"no pipeline {pipeline_id!r}")
        return pipeline

    def list(self) -> list[InferencePipeline]:
        with self._lock:
            return list(self._pipelines.values())

    def pause(self, pipeline_id: str) -> InferencePipeline:
        pipeline = self.get(pipeline_id)
        pipeline.pause()
        return pipeline

    def resume(self, pipeline_id: str) -> InferencePipeline:
        pipeline = self.get(pipeline_id)
        pipeline.resume()
        return pipeline

    def terminate(self, pipeline_id: str) -> InferencePipeline:
        """Stops it and forgets it; returns at once even when its source is dead or its model loads."""
        pipeline = self.get(pipeline_id)
        pipeline.terminate(wait=1.0)
        with self._lock:
            self._pipelines.pop(pipeline_id, None)
            self.previews.pop(pipeline_id, None)
        return pipeline

    def stop_all(self) -> None:
        for pipeline in self.list():
            pipeline.terminate(wait=2.0)
