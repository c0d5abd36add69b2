"""``PipelineManager``: start, list, pause, resume and terminate pipelines; shared by the HTTP routes
(``/inference_pipelines/...``), the MQTT commands and the runtime (``[[pipelines.streams]]``), so all
behave the same. Each pipeline gets the ``Inference`` the manager was given: the daemon's models,
loaded once and shared with HTTP requests.

A pipeline's outputs on disk (``outputs: ["jsonl", "video"]``) go to ``<state>/pipelines/<id>/``
(``predictions.jsonl``; ``annotated.mp4``, or ``annotated-<n>.mp4`` per source of several):
callers over the network name what to produce, never where to write. Each pipeline also keeps its last
``results_buffer_size`` results for ``/inference_pipelines/{id}/consume`` (a ``ResultsBuffer``: Roboflow
JSON, the frame only when a workflow output asks for it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from edge_agent.errors import InvalidInput, PipelineNotFound
from edge_agent.inference import Inference
from edge_agent.params import InferenceParams
from edge_agent.pipeline_spec import PipelineSpec, is_pipeline_id
from edge_agent.pipelines.entities import BufferConsumptionStrategy, BufferFillingStrategy
from edge_agent.pipelines.file_outputs import AnnotatedVideoFile, JsonLinesSink
from edge_agent.pipelines.pipeline import InferencePipeline, PreviewSink, Sink
from edge_agent.pipelines.stream_manager import PREDICTIONS_ONLY, ResultsBuffer, WorkflowOutput
from edge_agent.pipelines.watchdog import BasePipelineWatchDog

log = logging.getLogger(__name__)


def _source_options(spec: PipelineSpec) -> dict[str, Any]:
    """Roboflow's video options of ``spec`` as the pipeline takes them (``ADAPTIVE_DROP_OLDEST`` acts as
    ``DROP_OLDEST`` there, ``ADAPTIVE_DROP_LATEST`` as ``DROP_LATEST``)."""
    filling, consumption = spec.source_buffer_filling_strategy, spec.source_buffer_consumption_strategy
    return {"buffer_filling": BufferFillingStrategy(filling) if filling else None,
            "buffer_consumption": BufferConsumptionStrategy(consumption) if consumption else None,
            "video_source_properties": spec.video_source_properties,
            "batch_collection_timeout": spec.batch_collection_timeout}


class PipelineManager:
    def __init__(self, inference: Inference, folder: Path, long_spin: bool = False) -> None:
        """``long_spin``: the models run with ONNX Runtime's long spin between runs (``[engine] idle_spin``
        "auto" on a configuration with no pipelines): the first pipeline started says how to give them the
        cores."""
        self._inference = inference
        self.folder = folder
        self._spin_hint = long_spin
        self._pipelines: dict[str, InferencePipeline] = {}
        self.previews: dict[str, PreviewSink] = {}
        self.results: dict[str, ResultsBuffer] = {}
        self._lock = threading.Lock()

    def start(self, spec: PipelineSpec, outputs: Sequence[WorkflowOutput] = PREDICTIONS_ONLY) -> InferencePipeline:
        """Starts the pipeline ``spec`` declares; ``outputs`` name what each consumed result carries
        (a workflow's outputs; by default the predictions, as ``predictions``)."""
        pipeline_id = spec.pipeline_id or None
        with self._lock:
            if pipeline_id is not None and pipeline_id in self._pipelines and \
                    not self._pipelines[pipeline_id].done:
                raise InvalidInput(f"pipeline {pipeline_id!r} is running; terminate it first")
            params = InferenceParams(confidence=spec.confidence, iou_threshold=spec.iou_threshold,
                                     class_filter=tuple(spec.class_filter) if spec.class_filter else None,
                                     max_detections=spec.max_detections,
                                     class_agnostic_nms=spec.class_agnostic_nms, max_candidates=spec.max_candidates,
                                     keypoint_confidence=spec.keypoint_confidence,
                                     mask_decode_mode=spec.mask_decode_mode, tradeoff_factor=spec.tradeoff_factor)
            pipeline = InferencePipeline(self._inference, spec.model_id, spec.video_reference,
                                         pipeline_id=pipeline_id, params=params, max_fps=spec.max_fps,
                                         realtime=spec.realtime, active_learning=spec.active_learning,
                                         api_key=spec.api_key.get_secret_value() if spec.api_key else None,
                                         watchdog=BasePipelineWatchDog(), **_source_options(spec))
            if not is_pipeline_id(pipeline.pipeline_id):  # pragma: no cover - generated ids match
                raise InvalidInput(f"bad pipeline id {pipeline.pipeline_id!r}")
            preview = PreviewSink()
            results = ResultsBuffer(spec.results_buffer_size, spec.model_id, outputs)
            if self._spin_hint:
                self._spin_hint = False
                log.info("pipelines run faster with [engine] idle_spin = \"short\" (this configuration has no "
                         "[[pipelines.streams]], so ONNX Runtime's threads spin-wait between runs, as suits HTTP "
                         "requests, and take cores from video decoding)")
            sinks: list[Sink] = [preview, results]
            out = self.folder / pipeline.pipeline_id
            if "jsonl" in spec.outputs:
                sinks.append(JsonLinesSink(out / "predictions.jsonl", pipeline.pipeline_id))
            if "video" in spec.outputs:
                sinks.append(AnnotatedVideoFile(out / "annotated.mp4", fps=spec.max_fps or 25.0,
                                                sources=len(pipeline.sources)))  # annotated-<n>.mp4 for several
            pipeline.sinks.extend(sinks)
            self._pipelines[pipeline.pipeline_id] = pipeline
            self.previews[pipeline.pipeline_id] = preview
            self.results[pipeline.pipeline_id] = results
        pipeline.start()
        log.info("pipeline %s started: model %s, source(s): %s", pipeline.pipeline_id, spec.model_id,
                 ", ".join(s.kind for s in pipeline.sources))  # not the reference: a URL may carry a password
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

    def consume(self, pipeline_id: str, excluded_fields: Iterable[str] = ()) -> dict[str, Any]:
        """The oldest buffered result of a pipeline (Roboflow's ``outputs`` and ``frames_metadata``;
        both empty when there is none), taken out of its buffer."""
        self.get(pipeline_id)
        with self._lock:
            results = self.results.get(pipeline_id)
        if results is None:  # terminated just now
            raise PipelineNotFound(f"no pipeline {pipeline_id!r}")
        return results.consume(excluded_fields)

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
            self.results.pop(pipeline_id, None)
        log.info("pipeline %s terminated (%s, %d frames inferred)", pipeline_id, pipeline.state,
                 pipeline.frames_inferred)
        return pipeline

    def stop_all(self) -> None:
        for pipeline in self.list():
            pipeline.terminate(wait=2.0)
