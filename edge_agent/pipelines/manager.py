"""``PipelineManager``: start, list, pause, resume and terminate pipelines; shared by the HTTP routes
(``/inference_pipelines/...``), the MQTT commands and the runtime (``[[pipelines.streams]]``), so all
behave the same. Each pipeline gets the ``Inference`` the manager was given: the daemon's models,
loaded once and shared with HTTP requests.

A pipeline's outputs on disk (``outputs: ["jsonl", "video"]``) go to ``<state>/pipelines/<id>/``:
callers over the network name what to produce, never where to write.
"""

from __future__ import annotations

import threading
from pathlib import Path

from edge_agent.errors import InvalidInput, PipelineNotFound
from edge_agent.inference import Inference
from edge_agent.params import InferenceParams
from edge_agent.pipeline_spec import PipelineSpec, is_pipeline_id
from edge_agent.pipelines.pipeline import InferencePipeline, JsonLinesSink, PreviewSink, Sink, VideoFileSink


class PipelineManager:
    def __init__(self, inference: Inference, folder: Path) -> None:
        self._inference = inference
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
            pipeline = InferencePipeline(self._inference, spec.model_id, spec.video_reference,
                                         pipeline_id=pipeline_id, params=params, max_fps=spec.max_fps,
                                         realtime=spec.realtime,
                                         api_key=spec.api_key.get_secret_value() if spec.api_key else None)
            if not is_pipeline_id(pipeline.pipeline_id):  # pragma: no cover - generated ids match
                raise InvalidInput(f"bad pipeline id {pipeline.pipeline_id!r}")
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
