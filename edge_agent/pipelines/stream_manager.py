"""Roboflow's stream-manager shapes (``inference.core.interfaces.stream_manager``): the body of
``POST /inference_pipelines/initialise`` that inference-sdk's ``start_inference_pipeline_with_workflow``
sends, its translation into a ``PipelineSpec``, and the results that ``/inference_pipelines/{id}/consume``
hands out.

A workflow runs here when it is one Roboflow model block (object detection, instance segmentation,
keypoints, classification; versions 1 to 3 and their old names) and its outputs: the block gives the
model and its parameters (``$inputs.<name>`` taken from ``workflows_parameters``, else from the input's
``default_value``), the outputs name what each consumed frame carries. Anything else (another block,
several blocks, a workflow stored on Roboflow's cloud) is an ``InvalidInput`` (400) that names it.
Pure functions and one sink; no HTTP here.
"""

from __future__ import annotations

import base64
import logging
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge_agent.errors import InvalidInput
from edge_agent.pipeline_spec import MAX_SOURCES, RESULTS_BUFFER_MAX, FillingStrategy, PipelineSpec
from edge_agent.pipelines.sources import Frame
from edge_agent.results import Result
from edge_agent.roboflow_json import to_roboflow
from edge_agent.visualize import encode_jpeg

log = logging.getLogger(__name__)

# ------------------------------------------------------------------ the request (manager_app/entities.py)


class _RoboflowShape(BaseModel):
    """A body Roboflow's server reads: unknown keys are ignored, as there (a newer inference-sdk may send
    more), and named in a DEBUG log line."""

    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _note_ignored(cls, data: Any) -> Any:
        if isinstance(data, dict):
            ignored = sorted(str(k) for k in data if k not in cls.model_fields)
            if ignored:
                log.debug("%s: field(s) %s ignored", cls.__name__, ", ".join(ignored))
        return data


class VideoConfiguration(_RoboflowShape):
    type: Literal["VideoConfiguration"] = "VideoConfiguration"
    video_reference: str | int | list[str | int] = Field(
        description="a source (file, rtsp:// or http(s):// URL, camera index, GStreamer form) or a list of them")
    max_fps: float | None = Field(None, gt=0)
    source_buffer_filling_strategy: FillingStrategy | None = "DROP_OLDEST"
    source_buffer_consumption_strategy: Literal["LAZY", "EAGER"] | None = "EAGER"
    video_source_properties: dict[str, float | str] | None = Field(None, description="OpenCV capture properties")
    batch_collection_timeout: float | None = Field(None, ge=0)


class WorkflowConfiguration(_RoboflowShape):
    type: Literal["WorkflowConfiguration"] = "WorkflowConfiguration"
    workflow_specification: dict[str, Any] | None = Field(
        None, description="inline workflow: one Roboflow model block and its outputs (docs/http.md)")
    workspace_name: str | None = Field(None, description="workflows stored on Roboflow's cloud are refused (400)")
    workflow_id: str | None = None
    workflow_version_id: str | None = None
    image_input_name: str = "image"
    workflows_parameters: dict[str, Any] | None = None
    workflows_thread_pool_workers: int = Field(4, description="accepted; no effect")
    cancel_thread_pool_tasks_on_exit: bool = True
    video_metadata_input_name: str = "video_metadata"


class MemorySinkConfiguration(_RoboflowShape):
    type: Literal["MemorySinkConfiguration"] = "MemorySinkConfiguration"
    results_buffer_size: int = Field(64, ge=1, le=RESULTS_BUFFER_MAX)


class RoboflowInitialise(_RoboflowShape):
    """``InitialisePipelinePayload``: what inference-sdk's ``start_inference_pipeline_with_workflow`` sends."""

    video_configuration: VideoConfiguration
    processing_configuration: WorkflowConfiguration
    sink_configuration: MemorySinkConfiguration = Field(default_factory=MemorySinkConfiguration)
    consumption_timeout: float | None = Field(None, description="accepted; no effect")
    api_key: str | None = Field(None, max_length=512)
    predictions_queue_size: int = Field(512, description="accepted; no effect")
    decoding_buffer_size: int = Field(5, description="accepted; no effect")


class ConsumeRequest(_RoboflowShape):
    excluded_fields: list[str] = Field(default_factory=list, max_length=256,
                                       description="workflow outputs to leave out")
    api_key: str | None = Field(None, max_length=512, description="sent by inference-sdk; not needed here")


# ------------------------------------------------------------------ the model blocks we run

Task = Literal["object-detection", "instance-segmentation", "keypoint-detection", "classification"]
_COMMON = frozenset({"type", "name", "images", "image", "model_id", "disable_active_learning",
                     "active_learning_target_dataset"})
_NMS = ("iou_threshold", "class_filter", "max_detections", "class_agnostic_nms", "max_candidates")
_EXTRA: dict[Task, tuple[str, ...]] = {
    "object-detection": _NMS,
    "instance-segmentation": (*_NMS, "mask_decode_mode", "tradeoff_factor"),
    "keypoint-detection": (*_NMS, "keypoint_confidence"),
    "classification": (),
}
_NAMES: dict[Task, tuple[str, ...]] = {  # Roboflow's type names; v1 also has two old ones
    "object-detection": ("roboflow_object_detection_model", "RoboflowObjectDetectionModel",
                         "ObjectDetectionModel"),
    "instance-segmentation": ("roboflow_instance_segmentation_model", "RoboflowInstanceSegmentationModel",
                              "InstanceSegmentationModel"),
    "keypoint-detection": ("roboflow_keypoint_detection_model", "RoboflowKeypointDetectionModel",
                           "KeypointsDetectionModel"),
    "classification": ("roboflow_classification_model", "RoboflowClassificationModel", "ClassificationModel"),
}


@dataclass(frozen=True)
class Block:
    task: Task
    fields: frozenset[str]  # the fields it may carry
    confidence_mode: bool  # v3: confidence_mode + custom_confidence instead of confidence


def _blocks() -> dict[str, Block]:
    table: dict[str, Block] = {}
    for task, (name, *old) in _NAMES.items():
        plain = frozenset(_COMMON | {"confidence", *_EXTRA[task]})
        v3 = frozenset(_COMMON | {"confidence_mode", "custom_confidence", *_EXTRA[task]})
        for type_name in (f"roboflow_core/{name}@v1", f"roboflow_core/{name}@v2", *old):
            table[type_name] = Block(task, plain, False)
        table[f"roboflow_core/{name}@v3"] = Block(task, v3, True)
    return table


BLOCKS = _blocks()
_PARAMETERS = ("confidence", "iou_threshold", "class_filter", "max_detections", "class_agnostic_nms",
               "max_candidates", "keypoint_confidence", "mask_decode_mode", "tradeoff_factor")
_IMAGE_INPUTS = ("InferenceImage", "WorkflowImage")
_PARAMETER_INPUTS = ("InferenceParameter", "WorkflowParameter")
_OTHER_INPUTS = ("WorkflowVideoMetadata", "WorkflowBatchInput")
StepField = Literal["predictions", "inference_id", "model_id", "*"]
_STEP_OUTPUTS: tuple[StepField, ...] = ("predictions", "inference_id", "model_id", "*")


@dataclass(frozen=True)
class WorkflowOutput:
    """One output of a workflow, what each consumed frame carries under ``name``: a field of the model
    block's result (``predictions``, ``inference_id``, ``model_id``, ``*`` for all three), the frame
    (``image``) or a parameter's value (``value``)."""

    name: str
    kind: Literal["predictions", "inference_id", "model_id", "*", "image", "value"]
    value: Any = None


PREDICTIONS_ONLY = (WorkflowOutput("predictions", "predictions"),)  # what our own request shape consumes


# ------------------------------------------------------------------ translation


@dataclass(frozen=True)
class _Inputs:
    image: str  # the name the frames are fed to
    values: Mapping[str, Any]  # parameters: workflows_parameters over default_value
    declared: frozenset[str]

    def resolve(self, where: str, raw: Any) -> Any:
        """``raw``, or the parameter's value where it is an ``$inputs.<name>`` reference."""
        if not isinstance(raw, str) or not raw.startswith("$"):
            return raw
        if raw.startswith("$inputs."):
            name = raw[len("$inputs."):]
            if name not in self.declared:
                raise InvalidInput(f"{where}: {raw!r} names no input of the workflow specification")
            if name not in self.values:
                raise InvalidInput(f"{where}: {raw!r} has no value: give it in workflows_parameters "
                                   "or as the input's default_value")
            return self.values[name]
        raise InvalidInput(f"{where}: {raw!r} is not supported here: a field is a value or $inputs.<name> "
                           "(this device runs a workflow of one model block)")


def _inputs(spec: Mapping[str, Any], config: WorkflowConfiguration) -> _Inputs:
    declared = spec.get("inputs", [])
    if not isinstance(declared, list):
        raise InvalidInput("workflow_specification.inputs must be a list")
    images, names, defaults = [], set(), {}
    for i, item in enumerate(declared):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput(f"workflow_specification.inputs[{i}] must be an object with a name and a type")
        kind, name = item.get("type"), item["name"]
        if kind in _IMAGE_INPUTS:
            images.append(name)
        elif kind in _PARAMETER_INPUTS:
            if "default_value" in item:
                defaults[name] = item["default_value"]
        elif kind not in _OTHER_INPUTS:
            raise InvalidInput(f"workflow_specification.inputs[{i}] ({name!r}): input type {kind!r} is not "
                               f"supported; accepted: {', '.join(_IMAGE_INPUTS + _PARAMETER_INPUTS + _OTHER_INPUTS)}")
        names.add(name)
    if images != [config.image_input_name]:
        raise InvalidInput(f"the workflow must have one image input, named {config.image_input_name!r} "
                           f"(image_input_name); it has {images or 'none'}")
    values = {**defaults, **(config.workflows_parameters or {})}
    return _Inputs(config.image_input_name, values, frozenset(names))


def _step(spec: Mapping[str, Any]) -> tuple[dict[str, Any], Block]:
    steps = spec.get("steps")
    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
        raise InvalidInput("workflow_specification.steps must be a list of blocks")
    types = [f"{s.get('name')!r} ({s.get('type')!r})" for s in steps]
    if len(steps) != 1:
        raise InvalidInput(f"this device runs a workflow of exactly one Roboflow model block; this one has "
                           f"{len(steps)}: {', '.join(types) or 'none'}")
    step = steps[0]
    block = BLOCKS.get(step.get("type")) if isinstance(step.get("type"), str) else None
    if block is None:
        raise InvalidInput(f"block type {step.get('type')!r} (step {step.get('name')!r}) is not supported here; "
                           "a workflow runs one Roboflow model block: "
                           + ", ".join(f"roboflow_core/{names[0]}@v1..v3" for names in _NAMES.values()))
    unknown = sorted(set(step) - block.fields)
    if unknown:
        raise InvalidInput(f"step {step.get('name')!r} ({step['type']}): field(s) {', '.join(unknown)} not "
                           f"supported; accepted: {', '.join(sorted(block.fields))}")
    if not isinstance(step.get("name"), str):
        raise InvalidInput("the model block needs a name")
    return step, block


def _parameters(step: Mapping[str, Any], block: Block, inputs: _Inputs) -> dict[str, Any]:
    where = f"step {step['name']!r}"
    image = step.get("images", step.get("image"))
    if image != f"$inputs.{inputs.image}":
        raise InvalidInput(f"{where}: images must be '$inputs.{inputs.image}' (the video frames), got {image!r}")
    if "model_id" not in step:
        raise InvalidInput(f"{where}: model_id is missing")
    found: dict[str, Any] = {"model_id": inputs.resolve(f"{where}.model_id", step["model_id"])}
    for name in _PARAMETERS:
        if name in step:
            value = inputs.resolve(f"{where}.{name}", step[name])
            if value is not None:
                found[name] = value
    if block.confidence_mode:
        mode = inputs.resolve(f"{where}.confidence_mode", step.get("confidence_mode", "best"))
        if mode == "custom":
            found["confidence"] = inputs.resolve(f"{where}.custom_confidence", step.get("custom_confidence", 0.4))
        elif mode not in ("best", "default"):
            raise InvalidInput(f"{where}: confidence_mode must be best, default or custom, got {mode!r}")
    disable = inputs.resolve(f"{where}.disable_active_learning", step.get("disable_active_learning", True))
    if not isinstance(disable, bool):  # Roboflow's model blocks default it to True: no sampling
        raise InvalidInput(f"{where}: disable_active_learning must be true or false, got {disable!r}")
    found["active_learning"] = not disable
    return found


def _outputs(spec: Mapping[str, Any], step_name: str, inputs: _Inputs) -> tuple[WorkflowOutput, ...]:
    declared = spec.get("outputs", [])
    if not isinstance(declared, list):
        raise InvalidInput("workflow_specification.outputs must be a list")
    outputs: list[WorkflowOutput] = []
    for i, item in enumerate(declared):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) \
                or not isinstance(item.get("selector"), str):
            raise InvalidInput(f"workflow_specification.outputs[{i}] must be an object with a name and a selector")
        if item.get("type", "JsonField") != "JsonField":
            raise InvalidInput(f"output {item['name']!r}: type {item.get('type')!r} is not supported (JsonField)")
        outputs.append(_output(item["name"], item["selector"], step_name, inputs))
    names = [o.name for o in outputs]
    if len(set(names)) != len(names):
        raise InvalidInput(f"workflow outputs must have different names: {names}")
    return tuple(outputs)


def _output(name: str, selector: str, step_name: str, inputs: _Inputs) -> WorkflowOutput:
    if selector == f"$inputs.{inputs.image}":
        return WorkflowOutput(name, "image")
    if selector.startswith("$inputs."):
        return WorkflowOutput(name, "value", inputs.resolve(f"output {name!r}", selector))
    prefix = f"$steps.{step_name}."
    field = selector[len(prefix):] if selector.startswith(prefix) else None
    if field in _STEP_OUTPUTS:
        return WorkflowOutput(name, field)
    raise InvalidInput(f"output {name!r}: selector {selector!r} is not supported; accepted: "
                       f"{', '.join(prefix + f for f in _STEP_OUTPUTS)}, $inputs.<name>")


def _video(video: VideoConfiguration) -> dict[str, Any]:
    """The ``PipelineSpec`` fields of a ``video_configuration`` (a list of one source is that source)."""
    ref = video.video_reference
    if ref == []:
        raise InvalidInput("video_reference: an empty list; give a source or a list of them")
    if isinstance(ref, list) and len(ref) > MAX_SOURCES:
        raise InvalidInput(f"video_reference: {len(ref)} sources; one pipeline reads at most {MAX_SOURCES}")
    return {"video_reference": ref[0] if isinstance(ref, list) and len(ref) == 1 else ref,
            "max_fps": float(video.max_fps) if video.max_fps else None,
            "source_buffer_filling_strategy": video.source_buffer_filling_strategy,
            "source_buffer_consumption_strategy": video.source_buffer_consumption_strategy,
            "video_source_properties": video.video_source_properties or None,
            "batch_collection_timeout": video.batch_collection_timeout}  # 0 stays 0: take what is there


def translate(body: RoboflowInitialise) -> tuple[PipelineSpec, tuple[WorkflowOutput, ...]]:
    """The pipeline a Roboflow ``initialise`` body asks for, and its workflow outputs; ``InvalidInput``
    naming what this device cannot run."""
    config, video = body.processing_configuration, body.video_configuration
    spec = config.workflow_specification
    if spec is None:
        if config.workspace_name or config.workflow_id:
            raise InvalidInput(
                f"workflow {config.workspace_name}/{config.workflow_id} is stored on Roboflow's cloud; this device "
                "runs a workflow given inline: send its workflow_specification instead")
        raise InvalidInput("processing_configuration.workflow_specification is required")
    inputs = _inputs(spec, config)
    step, block = _step(spec)
    fields = _parameters(step, block, inputs)
    outputs = _outputs(spec, step["name"], inputs)
    fields.update(_video(video), results_buffer_size=body.sink_configuration.results_buffer_size)
    if body.api_key:
        fields["api_key"] = body.api_key
    try:
        return PipelineSpec.model_validate(fields), outputs
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"] if "[" not in str(p))  # not a union's member tags
        where = where if where.startswith("video_") or where == "batch_collection_timeout" \
            else f"step {step['name']!r}: {where}"
        raise InvalidInput(f"{where}: {err['msg']} (got {err.get('input')!r:.100})") from None


# ------------------------------------------------------------------ results for /consume


@dataclass(frozen=True)
class BufferedResult:
    frame_id: int
    source_id: int
    captured_at: float
    response: dict[str, Any]  # the Roboflow response of the frame (polygons, not masks: bounded size)
    jpeg: bytes | None  # the frame, only when an output asks for it


class ResultsBuffer:
    """A pipeline sink that keeps its last ``size`` results for ``/consume`` (the oldest go first)."""

    def __init__(self, size: int, model_id: str, outputs: Sequence[WorkflowOutput]) -> None:
        self.model_id = model_id
        self.outputs = tuple(outputs)
        self._with_image = any(o.kind == "image" for o in self.outputs)
        self._items: deque[BufferedResult] = deque(maxlen=size)
        self._lock = threading.Lock()

    def __call__(self, frame: Frame, result: Result) -> None:
        jpeg = encode_jpeg(frame.image, quality=80) if self._with_image else None
        item = BufferedResult(frame.frame_id, frame.source_id, frame.captured_at, to_roboflow(result), jpeg)
        with self._lock:
            self._items.append(item)

    def __len__(self) -> int:
        return len(self._items)

    def pop(self) -> BufferedResult | None:
        with self._lock:
            return self._items.popleft() if self._items else None

    def consume(self, excluded_fields: Iterable[str] = ()) -> dict[str, Any]:
        """Roboflow's ``ConsumePipelineResponse`` body, less status and context: the oldest result (one
        frame a call, also with several sources: its ``source_id`` says whose)."""
        item = self.pop()
        if item is None:
            return {"outputs": [], "frames_metadata": []}
        return {"outputs": [frame_outputs(self.outputs, item, self.model_id, set(excluded_fields))],
                "frames_metadata": [frame_metadata(item)]}


def frame_outputs(outputs: Sequence[WorkflowOutput], item: BufferedResult, model_id: str,
                  excluded: set[str]) -> dict[str, Any]:
    """One frame's workflow outputs, keyed by their names, less the ``excluded`` ones."""
    inference_id = item.response.get("inference_id")
    body: dict[str, Any] = {}
    for out in outputs:
        if out.name in excluded:
            continue
        if out.kind == "predictions":
            body[out.name] = item.response
        elif out.kind == "inference_id":
            body[out.name] = inference_id
        elif out.kind == "model_id":
            body[out.name] = model_id
        elif out.kind == "*":
            body[out.name] = {"inference_id": inference_id, "predictions": item.response, "model_id": model_id}
        elif out.kind == "image":
            body[out.name] = {"type": "base64", "value": base64.b64encode(item.jpeg or b"").decode("ascii")}
        else:
            body[out.name] = out.value
    return body


def frame_metadata(item: BufferedResult) -> dict[str, Any]:
    moment = datetime.fromtimestamp(item.captured_at, tz=timezone.utc)
    return {"frame_timestamp": moment.isoformat(), "frame_id": item.frame_id, "source_id": item.source_id}
