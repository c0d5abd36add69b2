"""The Python API's pipeline: ``edge_agent.InferencePipeline``, with Roboflow's ``init`` and
``init_with_custom_logic``; each pipeline gets a runtime of its own.

    from edge_agent import InferencePipeline
    from edge_agent.pipelines.sinks import render_boxes

    pipeline = InferencePipeline.init(model_id="shapes/1", video_reference="video.mp4",
                                      on_prediction=render_boxes)
    pipeline.start()   # blocks: sinks run on this thread (use_main_thread=True), as Roboflow's
    pipeline.join()

A pipeline only needs an ``Inference`` (``edge_agent.pipelines.pipeline``); building the parts behind
one (store, model manager, TensorRT where used, provisioner) is the runtime's work, which sits above
the pipelines. So ``init`` lives here, at the top, where the package's Python API does. When the
settings enable ``[active_learning]``, the runtime's sampler and uploaders run while the pipeline
does (``active_learning_enabled=False`` keeps its frames out).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from edge_agent.params import InferenceParams
from edge_agent.pipelines import gst, pipeline
from edge_agent.pipelines.dispatch import SinkHandler
from edge_agent.pipelines.entities import (
    BufferConsumptionStrategy,
    BufferFillingStrategy,
    PipelineStateReport,
    SinkMode,
    StatusHandler,
    StatusUpdate,
    UpdateSeverity,
    VideoFrame,
)
from edge_agent.pipelines.pipeline import FrameHandler, SourceProperties, VideoReference
from edge_agent.pipelines.sinks import multi_sink
from edge_agent.pipelines.sources import STREAM_SCHEMES
from edge_agent.pipelines.watchdog import BasePipelineWatchDog, NullPipelineWatchdog, PipelineWatchDog
from edge_agent.runtime import Runtime
from edge_agent.settings import Settings

__all__ = ["BasePipelineWatchDog", "BufferConsumptionStrategy", "BufferFillingStrategy", "InferencePipeline",
           "NullPipelineWatchdog", "PipelineStateReport", "PipelineWatchDog", "SinkMode", "StatusUpdate",
           "UpdateSeverity", "VideoFrame"]

log = logging.getLogger(__name__)

References = VideoReference | Sequence[VideoReference]
PARAM_NAMES = ("class_agnostic_nms", "confidence", "iou_threshold", "max_candidates", "max_detections",
               "mask_decode_mode", "tradeoff_factor")


class InferencePipeline(pipeline.InferencePipeline):
    """``edge_agent.pipelines.pipeline.InferencePipeline`` with Roboflow's constructors, and ``start``
    dispatching on the calling thread by default."""

    runtime: Runtime | None = None  # the runtime ``init`` built for it, kept as long as the pipeline

    @classmethod
    def init(cls, model_id: str, video_reference: References, on_prediction: SinkHandler | None = None,
             api_key: str | None = None, max_fps: float | None = None, watchdog: PipelineWatchDog | None = None,
             status_update_handlers: list[StatusHandler] | None = None,
             source_buffer_filling_strategy: BufferFillingStrategy | str | None = None,
             source_buffer_consumption_strategy: BufferConsumptionStrategy | str | None = None,
             class_agnostic_nms: bool | None = None, confidence: float | None = None,
             iou_threshold: float | None = None, max_candidates: int | None = None, max_detections: int | None = None,
             mask_decode_mode: str | None = "accurate", tradeoff_factor: float | None = 0.0,
             active_learning_enabled: bool | None = None, video_source_properties: SourceProperties | None = None,
             batch_collection_timeout: float | None = None, sink_mode: SinkMode = SinkMode.ADAPTIVE,
             predictions_queue_size: int = 512, **options: Any) -> InferencePipeline:
        """A pipeline running ``model_id`` on ``video_reference`` (one or a list), with a runtime of its
        own (settings from the environment, models from the local store, pulled with ``api_key`` when
        missing). Roboflow's arguments, same names and meaning; the post-processing ones left ``None``
        take the device's defaults. ``options``: ours (``realtime``, ``sinks``, ``pipeline_id``,
        ``class_filter``, ``keypoint_confidence``, ...); Roboflow's that mean nothing here
        (``active_learning_target_dataset``, ``decoding_buffer_size``) are accepted and ignored."""
        model_id, video_reference = _in_order(model_id, video_reference)
        given: dict[str, Any] = {
            "class_agnostic_nms": class_agnostic_nms, "confidence": confidence, "iou_threshold": iou_threshold,
            "max_candidates": max_candidates, "max_detections": max_detections,
            "mask_decode_mode": mask_decode_mode, "tradeoff_factor": tradeoff_factor}
        extra = {k: options.pop(k) for k in list(options) if k in _param_fields()}
        params = InferenceParams(**{k: v for k, v in given.items() if v is not None}, **extra)
        runtime = Runtime(Settings.from_env().for_pipelines())
        sampling = runtime.active_learning is not None  # [active_learning] enabled: it runs with the pipeline

        def start_sampling() -> None:
            runtime.start_active_learning()
        made = cls(runtime.inference, model_id, video_reference, params=params, api_key=api_key,
                   on_prediction=_sink(on_prediction), max_fps=max_fps, watchdog=watchdog,
                   status_update_handlers=status_update_handlers or (), buffer_filling=source_buffer_filling_strategy,
                   buffer_consumption=source_buffer_consumption_strategy,
                   active_learning=active_learning_enabled is not False,
                   video_source_properties=video_source_properties,
                   batch_collection_timeout=batch_collection_timeout, sink_mode=sink_mode,
                   predictions_queue_size=predictions_queue_size,
                   on_pipeline_start=start_sampling if sampling else None,
                   on_pipeline_end=runtime.stop_active_learning if sampling else None, **_ours(options))
        made.runtime = runtime
        return made

    @classmethod
    def init_with_custom_logic(cls, video_reference: References, on_video_frame: FrameHandler,
                               on_prediction: SinkHandler | None = None,
                               on_pipeline_start: Callable[[], None] | None = None,
                               on_pipeline_end: Callable[[], None] | None = None, max_fps: float | None = None,
                               watchdog: PipelineWatchDog | None = None,
                               status_update_handlers: list[StatusHandler] | None = None,
                               source_buffer_filling_strategy: BufferFillingStrategy | str | None = None,
                               source_buffer_consumption_strategy: BufferConsumptionStrategy | str | None = None,
                               video_source_properties: SourceProperties | None = None,
                               batch_collection_timeout: float | None = None, sink_mode: SinkMode = SinkMode.ADAPTIVE,
                               predictions_queue_size: int = 512, **options: Any) -> InferencePipeline:
        """A pipeline whose frames go to ``on_video_frame`` (a list of ``VideoFrame``, one per source
        that gave one; it returns one prediction per frame, in order) instead of a model; no runtime."""
        return cls(None, None, video_reference, on_video_frame=on_video_frame, on_prediction=_sink(on_prediction),
                   on_pipeline_start=on_pipeline_start, on_pipeline_end=on_pipeline_end, max_fps=max_fps,
                   watchdog=watchdog, status_update_handlers=status_update_handlers or (),
                   buffer_filling=source_buffer_filling_strategy, buffer_consumption=source_buffer_consumption_strategy,
                   video_source_properties=video_source_properties, batch_collection_timeout=batch_collection_timeout,
                   sink_mode=sink_mode, predictions_queue_size=predictions_queue_size, **_ours(options))

    def start(self, use_main_thread: bool = True) -> None:
        """Start; with ``use_main_thread`` (the default) run ``on_prediction`` on this thread and return
        when the pipeline has ended (``terminate`` from a sink or another thread ends it)."""
        super().start(use_main_thread)


def _param_fields() -> set[str]:
    import dataclasses  # lazy: only when a pipeline is made

    return {f.name for f in dataclasses.fields(InferenceParams)} - set(PARAM_NAMES)


OUR_OPTIONS = {"realtime", "sinks", "pipeline_id", "source_options"}
IGNORED = {"active_learning_target_dataset", "decoding_buffer_size"}


def _ours(options: dict[str, Any]) -> dict[str, Any]:
    """Our own keyword arguments; Roboflow's that mean nothing here are dropped (debug log); anything
    else is a TypeError naming it, as a misspelt argument is in Python."""
    unknown = set(options) - OUR_OPTIONS - IGNORED
    if unknown:
        raise TypeError(f"InferencePipeline.init: unexpected argument(s) {sorted(unknown)}")
    for name in set(options) & IGNORED:
        log.debug("InferencePipeline: %s is Roboflow's and means nothing on this device; ignored", name)
    return {k: v for k, v in options.items() if k in OUR_OPTIONS}


def _sink(on_prediction: SinkHandler | Sequence[SinkHandler] | None) -> SinkHandler | None:
    """A list of sinks runs as ``multi_sink``."""
    if on_prediction is None or callable(on_prediction):
        return on_prediction
    return partial(multi_sink, sinks=list(on_prediction))


def _is_video(value: object) -> bool:
    if not isinstance(value, str):
        return True  # a camera index or a list of references
    return value.isdigit() or value.lower().startswith(STREAM_SCHEMES) or gst.is_reference(value) or \
        Path(value).exists()


def _in_order(model_id: Any, video_reference: Any) -> tuple[str, Any]:
    """Roboflow's newer ``init`` takes ``video_reference`` first: a positional call in that order
    (a video where the model id goes, a model id where the video goes) is put right."""
    if _is_video(model_id) and isinstance(video_reference, str) and not _is_video(video_reference):
        log.debug("InferencePipeline.init: arguments in (video_reference, model_id) order; taken as such")
        return video_reference, model_id
    return model_id, video_reference
