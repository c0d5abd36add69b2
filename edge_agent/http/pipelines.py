"""Pipeline management (docs/http.md): Roboflow's ``/inference_pipelines/...`` shape (list, initialise,
status, pause, resume, terminate, consume) over the daemon's ``PipelineManager``, and the live MJPEG
preview ``GET /pipelines/{pipeline_id}/preview.mjpg``. The MQTT pipeline commands do the same operations.

``initialise`` takes two bodies: Roboflow's (``video_configuration`` + ``processing_configuration`` with a
workflow of one model block, what inference-sdk's ``start_inference_pipeline_with_workflow`` sends;
translated by ``pipelines.stream_manager``) and our own shorter ``PipelineSpec``."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from enum import Enum
from typing import Annotated, Any

from flask import Response, jsonify, request
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel, Discriminator, Field, RootModel, ValidationError
from pydantic import Tag as Branch

from edge_agent.errors import InvalidInput, Overloaded, PipelineNotFound
from edge_agent.http import common
from edge_agent.http.schemas import ErrorMessage, ValidationErrorBody
from edge_agent.pipeline_spec import PIPELINE_ID, PipelineSpec
from edge_agent.pipelines.pipeline import InferencePipeline, PreviewWatcher
from edge_agent.pipelines.stream_manager import ConsumeRequest, RoboflowInitialise, translate

tag = Tag(name="Pipelines", description="Video pipelines: start, watch, pause, resume, terminate")
bp = APIBlueprint("pipelines", __name__, abp_responses={422: ValidationErrorBody})



class MjpegStream:
    """The preview's body. The daemon's front (``edge_agent.http.front``) has the frames pushed to it as
    they come, so a watcher holds no request thread; any other WSGI server iterates it."""

    def __init__(self, watcher: PreviewWatcher, done: Callable[[], bool]) -> None:
        self._watcher = watcher
        self._done = done

    @staticmethod
    def part(jpeg: bytes) -> bytes:
        return (b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: " + str(len(jpeg)).encode()
                + b"\r\n\r\n" + jpeg + b"\r\n")

    def subscribe(self, deliver: Callable[[bytes], None]) -> None:
        self._watcher.push_to(lambda jpeg: deliver(self.part(jpeg)))

    def finished(self) -> bool:
        return self._done()

    def __iter__(self) -> Iterator[bytes]:
        seen = -1
        while not self._done():
            seen, jpeg = self._watcher.next(seen, timeout=1.0)
            if jpeg is not None:
                yield self.part(jpeg)

    def close(self) -> None:
        self._watcher.close()


class PipelinePath(BaseModel):
    pipeline_id: str = Field(pattern=PIPELINE_ID)


class Context(BaseModel):
    request_id: str
    pipeline_id: str | None = None


class CommandResponse(BaseModel):
    status: str = Field(examples=["success"])
    context: Context


class ListResponse(CommandResponse):
    pipelines: list[str]


class StatusResponse(CommandResponse):
    report: dict[str, Any] = Field(description="state, source (kind, state, fps, dropped, reconnects, "
                                               "last_error), frames_inferred, inference_fps, latency_s, ...; "
                                               "Roboflow's inference_throughput, latency_reports, "
                                               "sources_metadata, video_source_status_updates")


class FrameMetadata(BaseModel):
    frame_timestamp: datetime
    frame_id: int
    source_id: int | None


class ConsumeResponse(CommandResponse):
    outputs: list[dict[str, Any]] = Field(description="the oldest buffered frame's workflow outputs, keyed by "
                                                      "their names (empty: nothing buffered)")
    frames_metadata: list[FrameMetadata]


def _which(body: Any) -> str:
    """Roboflow's body has ``video_configuration``/``processing_configuration``; ours does not."""
    if isinstance(body, dict):
        return "roboflow" if {"video_configuration", "processing_configuration"} & body.keys() else "edge_agent"
    return "roboflow" if isinstance(body, RoboflowInitialise) else "edge_agent"


class InitialiseBody(RootModel[Annotated[Annotated[RoboflowInitialise, Branch("roboflow")]
                                         | Annotated[PipelineSpec, Branch("edge_agent")], Discriminator(_which)]]):
    """Roboflow's ``InitialisePipelinePayload`` (a workflow of one model block) or our ``PipelineSpec``."""


def _roboflow_report(pipeline: InferencePipeline) -> dict[str, Any]:
    """The pipeline's report with the fields of Roboflow's ``PipelineStateReport`` (its watchdog's) added:
    ``video_source_status_updates``, ``latency_reports``, ``inference_throughput``, ``sources_metadata``."""
    report = pipeline.status()
    found = pipeline.watchdog.get_report()
    if found is not None:
        report.update(_jsonable(dataclasses.asdict(found)))
    return report


def _jsonable(value: Any) -> Any:
    """Enums as their values and times in ISO 8601, as Roboflow's server answers them."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Enum):
        return _jsonable(value.value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _ok(pipeline_id: str | None, **extra: Any) -> Response:
    return jsonify({"status": "success", "context": {"request_id": str(uuid.uuid4()), "pipeline_id": pipeline_id},
                    **extra})


@bp.get("/inference_pipelines/list", tags=[tag], responses={200: ListResponse})
def list_pipelines() -> Any:
    """The pipelines the device runs (finished and failed ones too, until terminated)."""
    return _ok(None, pipelines=[p.pipeline_id for p in common.services().pipelines.list()])


@bp.post("/inference_pipelines/initialise", tags=[tag], responses={200: CommandResponse, 400: ErrorMessage})
def initialise(body: InitialiseBody) -> Any:
    """Start a pipeline: a source, a model, parameters; in Roboflow's shape (a workflow of one Roboflow
    model block, inline) or ours. Its results go to ``/consume``, to MQTT (when enabled) as
    ``predictions/<pipeline_id>``, to the preview, and to the files named in ``outputs``."""
    pipelines = common.services().pipelines
    if isinstance(body.root, RoboflowInitialise):
        spec, outputs = translate(body.root)
        pipeline = pipelines.start(spec, outputs)
    else:
        pipeline = pipelines.start(body.root)
    return _ok(pipeline.pipeline_id)


@bp.get("/inference_pipelines/<pipeline_id>/status", tags=[tag], responses={200: StatusResponse, 404: ErrorMessage})
def status(path: PipelinePath) -> Any:
    """State, source and inference figures of a pipeline."""
    return _ok(path.pipeline_id, report=_roboflow_report(common.services().pipelines.get(path.pipeline_id)))


@bp.post("/inference_pipelines/<pipeline_id>/pause", tags=[tag], responses={200: CommandResponse, 404: ErrorMessage})
def pause(path: PipelinePath) -> Any:
    """Stop inferring (a live source keeps only its newest frame meanwhile)."""
    common.services().pipelines.pause(path.pipeline_id)
    return _ok(path.pipeline_id)


@bp.post("/inference_pipelines/<pipeline_id>/resume", tags=[tag], responses={200: CommandResponse, 404: ErrorMessage})
def resume(path: PipelinePath) -> Any:
    """Infer again after a pause."""
    common.services().pipelines.resume(path.pipeline_id)
    return _ok(path.pipeline_id)


@bp.post("/inference_pipelines/<pipeline_id>/terminate", tags=[tag],
         responses={200: CommandResponse, 404: ErrorMessage})
def terminate(path: PipelinePath) -> Any:
    """Stop and forget a pipeline; answers at once, also when its source is dead or its model loads."""
    common.services().pipelines.terminate(path.pipeline_id)
    return _ok(path.pipeline_id)


@bp.get("/inference_pipelines/<pipeline_id>/consume", tags=[tag],
        responses={200: ConsumeResponse, 400: ErrorMessage, 404: ErrorMessage})
def consume(path: PipelinePath) -> Any:
    """The oldest buffered result, taken out of the buffer (Roboflow's shape; inference-sdk's
    ``consume_inference_pipeline_result``). An optional JSON body ``{"excluded_fields": [...]}`` names
    outputs to leave out, as Roboflow's GET does."""
    return _consume(path.pipeline_id)


@bp.post("/inference_pipelines/<pipeline_id>/consume", tags=[tag],
         responses={200: ConsumeResponse, 400: ErrorMessage, 404: ErrorMessage})
def consume_post(path: PipelinePath) -> Any:
    """The same as ``GET``, for clients that send no body with a GET."""
    return _consume(path.pipeline_id)


def _consume(pipeline_id: str) -> Response:
    """The optional body is read here, not declared: Roboflow's consume is a GET, and a GET's body has no
    defined meaning in OpenAPI."""
    raw = request.get_json(silent=True) if request.content_length else {}
    try:
        wanted = ConsumeRequest.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise InvalidInput(f"{where}: {err['msg']} (the body, if any, is JSON: "
                           '{"excluded_fields": [output names]})') from None
    return _ok(pipeline_id, **common.services().pipelines.consume(pipeline_id, wanted.excluded_fields))


_MJPEG = {"description": "JPEG frames, each a part of a multipart/x-mixed-replace stream (boundary 'frame')",
          "content": {"multipart/x-mixed-replace": {"schema": {"type": "string", "format": "binary"}}}}


@bp.get("/pipelines/<pipeline_id>/preview.mjpg", tags=[tag],
        responses={200: _MJPEG, 404: ErrorMessage, 503: ErrorMessage})
def preview(path: PipelinePath) -> Any:
    """The live preview: frames with boxes, masks, keypoints and labels drawn, as MJPEG
    (``multipart/x-mixed-replace``, for a browser's ``<img>``), up to 10 frames a second."""
    found = common.services()
    pipeline = found.pipelines.get(path.pipeline_id)
    sink = found.pipelines.previews.get(path.pipeline_id)
    if sink is None:  # terminated just now
        raise PipelineNotFound(f"no pipeline {path.pipeline_id!r}")
    limit = found.server.max_previews
    watcher = sink.watch(limit)
    if watcher is None:
        raise Overloaded(f"at most {limit} preview watchers per pipeline ([server] max_previews)")
    stopping = found.stopping
    body = MjpegStream(watcher, lambda: pipeline.done or stopping.is_set())
    return Response(body, mimetype="multipart/x-mixed-replace; boundary=frame", direct_passthrough=True,
                    headers={"Cache-Control": "no-store"})
