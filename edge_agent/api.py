"""The Python API's pipeline: ``edge_agent.InferencePipeline``, whose ``init`` gives a pipeline a
runtime of its own.

    pipeline = edge_agent.InferencePipeline.init("shapes/1", "video.mp4", on_prediction=print)
    pipeline.start(); pipeline.join()

A pipeline only needs an ``Inference`` (``edge_agent.pipelines.pipeline``); building the parts behind
one (store, model manager, TensorRT where used, provisioner) is the runtime's work, which sits above
the pipelines. So ``init`` lives here, at the top, where the package's Python API does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from edge_agent.params import InferenceParams
from edge_agent.pipelines import pipeline
from edge_agent.runtime import Runtime
from edge_agent.settings import Settings


class InferencePipeline(pipeline.InferencePipeline):
    """``edge_agent.pipelines.pipeline.InferencePipeline``, with ``init``."""

    runtime: Runtime | None = None  # the runtime ``init`` built for it, kept as long as the pipeline

    @classmethod
    def init(cls, model_id: str, video_reference: str | int, on_prediction: Callable[..., None] | None = None,
             **options: Any) -> InferencePipeline:
        """A pipeline with a runtime of its own (settings from the environment, models from the local
        store). ``options``: the fields of ``InferenceParams`` (``confidence=0.5``) and the keyword
        arguments of ``InferencePipeline`` (``max_fps``, ``realtime``, ``sinks``, ``api_key``, ...)."""
        names = {f.name for f in dataclasses.fields(InferenceParams)}
        params = InferenceParams(**{k: options.pop(k) for k in list(options) if k in names})
        runtime = Runtime(Settings.from_env())
        made = cls(runtime.inference, model_id, video_reference, params=params, on_prediction=on_prediction,
                   **options)
        made.runtime = runtime
        return made
