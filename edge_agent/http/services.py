"""``HttpServices``: everything the HTTP routes use of the daemon, and nothing more.

The runtime (the composition root) builds one and hands it to ``create_app``; the routes reach it
through ``edge_agent.http.common.services()``. Where a route needs several operations of one part,
a Protocol here names just those operations, so that the routes never hold the whole runtime, the
model manager or the store.

This module imports no Flask: the runtime builds an ``HttpServices`` without loading the web stack.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edge_agent.images import ImageLimits
from edge_agent.inference import Inference
from edge_agent.metrics import Metrics
from edge_agent.pipeline_spec import PipelineSpec
from edge_agent.pipelines.pipeline import InferencePipeline, PreviewSink
from edge_agent.pipelines.stream_manager import WorkflowOutput
from edge_agent.serving.manager import LoadedModel
from edge_agent.settings import ModelsSettings, ServerSettings
from edge_agent.store.model_store import StoredModel
from engines import Choice


class LoadedModels(Protocol):
    """The model manager's operations behind ``/model/...`` and the response headers."""

    @property
    def cold_starts(self) -> int: ...

    def loaded(self) -> list[LoadedModel]: ...

    def unload(self, model_id: str) -> bool: ...

    def clear(self) -> None: ...


class StoredModels(Protocol):
    """What ``/models`` reads of the model store, and where an upload is staged."""

    @property
    def root(self) -> Path: ...

    def list(self) -> list[StoredModel]: ...

    def disk_usage(self) -> int: ...


class ModelChanges(Protocol):
    """The provisioner's operations behind ``/models/...``: describe, install, roll back, activate."""

    def describe(self, model_id: str) -> dict[str, Any]: ...

    def install_file(self, source: Path, model_id: str, *, activate: bool = True) -> dict[str, Any]: ...

    def rollback(self, model_id: str, to: str | None = None) -> dict[str, Any]: ...

    def activate(self, model_id: str, revision: str) -> dict[str, Any]: ...


class Pipelines(Protocol):
    """The pipeline manager's operations behind ``/inference_pipelines/...`` and the preview."""

    @property
    def previews(self) -> Mapping[str, PreviewSink]: ...

    def start(self, spec: PipelineSpec, outputs: Sequence[WorkflowOutput] = ...) -> InferencePipeline: ...

    def consume(self, pipeline_id: str, excluded_fields: Iterable[str] = ...) -> dict[str, Any]: ...

    def get(self, pipeline_id: str) -> InferencePipeline: ...

    def list(self) -> Sequence[InferencePipeline]: ...

    def pause(self, pipeline_id: str) -> object: ...

    def resume(self, pipeline_id: str) -> object: ...

    def terminate(self, pipeline_id: str) -> object: ...


class Readiness(Protocol):
    """Whether the daemon serves yet (``/readiness``), and the engine build in progress, if any."""

    @property
    def ready(self) -> threading.Event: ...

    @property
    def readiness_detail(self) -> str: ...

    def building(self) -> str | None: ...


@dataclass(frozen=True)
class HttpServices:
    """What ``create_app`` and the routes receive from the runtime."""

    version: str
    install_id: str  # /info's uuid
    engine_choice: Choice  # the back-end chosen for this device, and why (/info)
    server: ServerSettings
    models_settings: ModelsSettings  # upload cap and disk budget of /models
    limits: ImageLimits  # what a network caller's images may be
    metrics: Metrics
    inference: Inference  # every route that runs a model goes through it
    models: LoadedModels
    store: StoredModels
    provisioner: ModelChanges
    pipelines: Pipelines
    readiness: Readiness
    engine_status: Callable[[str], dict[str, Any]]  # what serves a model id, and its TensorRT state
    http_source: str | None  # the event source of HTTP results, None when no outlet wants them
    stopping: threading.Event  # set when the process is told to stop: previews end
    # The console (edge_agent/http/console.py): what the device is doing now (read-only: it takes
    # nothing from the telemetry counters), and the effective settings with secrets masked.
    console_status: Callable[[], dict[str, Any]]
    settings_view: Callable[[], dict[str, Any]]
    # DELETE /models/{id}: refused while a running pipeline uses it; else stop serving it and delete it
    remove_model: Callable[[str], dict[str, Any]]
