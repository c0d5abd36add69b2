"""MQTT commands: a table of handlers keyed by name, each with a pydantic model of its arguments.

A request is a JSON object on ``<prefix>/<device>/commands/<name>``; the reply goes to the MQTT 5
response topic with the request's correlation data when given, else to
``<prefix>/<device>/responses/<name>``, and always carries the request's ``correlation_id`` field (for
MQTT 3.1.1 clients). Every request gets exactly one reply: ``ok: true`` with a ``result``, or
``ok: false`` with an ``error``: its ``type`` is the ``code`` of the error raised, a member of the one
tree in ``edge_agent.errors`` (a bug in a handler is ``internal_error``), and its ``message`` says what
went wrong; ``Commands.handle`` is the one place that turns an error into a reply. A long command
(``install_model``) also sends progress replies before it (``ok: true`` with ``progress`` and no
``result``). Handlers run one at a time on threads of their own, so a slow one never holds up the
MQTT connection: downloads (``install_model``, ``load_model``, which may pull) queue on one, rollbacks
and activations on another, the rest on a third, so a long download never holds up ``status`` or an
emergency rollback.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from edge_agent.errors import CommandError, CommandNotJson, CommandTooLarge, EdgeAgentError, UnknownCommand
from edge_agent.inference import Inference
from edge_agent.mqtt.topics import envelope
from edge_agent.pipeline_spec import PIPELINE_ID, PipelineSpec
from edge_agent.pipelines.manager import PipelineManager
from edge_agent.provisioning.provisioner import Progress
from edge_agent.serving.manager import LoadedModel
from edge_agent.store.model_store import StoredModel

log = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 64 * 1024
Respond = Callable[[dict[str, Any]], None]


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NoArgs(Args):
    pass


class ModelArgs(Args):
    model_id: str = Field(min_length=1, max_length=256, description="project/version, or an alias")


class LoadModelArgs(ModelArgs):
    api_key: SecretStr | None = Field(None, max_length=512, description="pulls the model from Roboflow's API "
                                                                        "when the store lacks it")


class InstallModelArgs(ModelArgs):
    url: str = Field(min_length=1, max_length=4096, pattern=r"^https?://", description="the ONNX file or archive")
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$", description="of the file at url; another file is refused")
    activate: bool = Field(True, description="serve it once its checks pass; false: keep it as a revision")


class RollbackModelArgs(ModelArgs):
    to: str | None = Field(None, max_length=80, description="a revision; default: the newest earlier one")


class ActivateModelArgs(ModelArgs):
    revision: str = Field(min_length=1, max_length=80)


class PipelineArgs(Args):
    pipeline_id: str = Field(pattern=PIPELINE_ID)


Handler = Callable[..., dict[str, Any]]
PROGRESS_INTERVAL_S = 0.5  # progress replies of one phase at most this often


class Commands:
    """``commands(name, payload, respond)`` is what the bridge calls for each request."""

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self._table: dict[str, tuple[type[BaseModel], Handler]] = {}
        # Lanes: downloads (installs, and loads that may pull) take minutes, so they queue on a thread
        # of their own; rollbacks and activations on another, so an emergency rollback never waits out
        # a download; everything else (status, unload, pipelines) is answered meanwhile.
        self._lanes = {lane: ThreadPoolExecutor(1, thread_name_prefix=f"mqtt-{lane}")
                       for lane in ("commands", "downloads", "activations")}
        self._lane_of: dict[str, str] = {}

    def register(self, name: str, args: type[BaseModel], handler: Handler, lane: str = "commands") -> None:
        self._table[name] = (args, handler)
        self._lane_of[name] = lane

    @property
    def names(self) -> list[str]:
        return sorted(self._table)

    def __call__(self, name: str, payload: bytes, respond: Respond) -> None:
        try:
            self._lanes[self._lane_of.get(name, "commands")].submit(self.handle, name, payload, respond)
        except RuntimeError:  # shut down: stopping
            pass

    def handle(self, name: str, payload: bytes, respond: Respond) -> None:
        correlation_id: Any = None
        reply: dict[str, Any] = {**envelope(self.device_id), "command": name}
        try:
            data = self._parse(payload)
            correlation_id = data.pop("correlation_id", None)
            if correlation_id is not None and not isinstance(correlation_id, (str, int)):
                correlation_id = None
                raise CommandError("correlation_id must be a string or an integer")
            if name not in self._table:
                raise UnknownCommand(f"unknown command '{name}' (commands: {', '.join(self.names)})")
            model, handler = self._table[name]
            try:
                args = model.model_validate(data)
            except ValidationError as exc:
                raise CommandError(_validation_message(exc)) from None
            if len(inspect.signature(handler).parameters) > 1:
                result = handler(args, self._progress(reply, correlation_id, respond))
            else:
                result = handler(args)
            reply.update(ok=True, result=result)
        except EdgeAgentError as exc:  # the one place an error becomes a reply: ``type`` is the tree's code
            reply.update(ok=False, error={"type": exc.code, "message": exc.public})
        except Exception as exc:  # a bug in a handler: reported, and the bridge goes on
            log.exception("MQTT command %s failed", name)
            reply.update(ok=False, error={"type": "internal_error", "message": f"{type(exc).__name__}"})
        reply["correlation_id"] = correlation_id
        respond(reply)

    @staticmethod
    def _progress(reply: dict[str, Any], correlation_id: Any, respond: Respond) -> Callable[[dict[str, Any]], None]:
        """A callback sending progress replies: every change of phase, and within one at most every
        ``PROGRESS_INTERVAL_S``."""
        last: dict[str, Any] = {"phase": None, "at": 0.0}

        def progress(update: dict[str, Any]) -> None:
            now = time.monotonic()
            if update.get("phase") == last["phase"] and now - last["at"] < PROGRESS_INTERVAL_S:
                return
            last.update(phase=update.get("phase"), at=now)
            respond({**reply, **envelope(reply["device_id"]), "ok": True, "progress": update,
                     "correlation_id": correlation_id})

        return progress

    @staticmethod
    def _parse(payload: bytes) -> dict[str, Any]:
        if len(payload) > MAX_COMMAND_BYTES:
            raise CommandTooLarge(f"a command payload is at most {MAX_COMMAND_BYTES} bytes, "
                                            f"got {len(payload)}")
        if not payload.strip():
            return {}
        try:
            data = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CommandNotJson(f"the payload is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise CommandNotJson(f"the payload must be a JSON object, got {type(data).__name__}")
        return data

    def close(self) -> None:
        for executor in self._lanes.values():
            executor.shutdown(wait=False, cancel_futures=True)


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "payload"
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


class LoadedModels(Protocol):
    """The model manager's operations the model commands call."""

    def loaded(self) -> list[LoadedModel]: ...

    def unload(self, model_id: str) -> bool: ...


class StoredModels(Protocol):
    """What ``list_models`` reads of the model store."""

    def list(self) -> list[StoredModel]: ...


class ModelChanges(Protocol):
    """The provisioner's operations behind ``install_model``, ``rollback_model`` and ``activate_model``."""

    def install_url(self, url: str, model_id: str, *, sha256: str | None, activate: bool = True,
                    progress: Progress | None = None) -> dict[str, Any]: ...

    def rollback(self, model_id: str, to: str | None = None, progress: Progress | None = None) -> dict[str, Any]: ...

    def activate(self, model_id: str, revision: str, progress: Progress | None = None) -> dict[str, Any]: ...


@dataclass(frozen=True)
class CommandServices:
    """What the commands use of the daemon, and nothing more."""

    device_id: str  # the topic level of this device, in every reply
    inference: Inference  # load_model: loads (and pulls) the way HTTP requests and pipelines do
    models: LoadedModels
    store: StoredModels
    provisioner: ModelChanges
    pipelines: PipelineManager  # the pipeline commands: the same operations as the HTTP routes
    status: Callable[[], dict[str, Any]]  # the device's status (version, readiness, models, engines, ...)


def device_commands(services: CommandServices, bridge_snapshot: Callable[[], dict[str, Any]]) -> Commands:
    """The device's commands: models, pipelines and status."""
    commands = Commands(services.device_id)
    provisioner, pipelines = services.provisioner, services.pipelines

    def describe(loaded: LoadedModel) -> dict[str, Any]:
        m = loaded.model.manifest
        return {"model_id": loaded.model_id, "task": m.task, "classes": list(m.class_names),
                "load_seconds": round(loaded.load_seconds, 3)}

    def load_model(args: LoadModelArgs) -> dict[str, Any]:
        api_key = args.api_key.get_secret_value() if args.api_key else None
        loaded, cold = services.inference.model(args.model_id, api_key)
        return {**describe(loaded), "was_loaded": not cold}

    def install_model(args: InstallModelArgs, progress: Progress) -> dict[str, Any]:
        return provisioner.install_url(args.url, args.model_id, sha256=args.sha256, activate=args.activate,
                                       progress=progress)

    def rollback_model(args: RollbackModelArgs, progress: Progress) -> dict[str, Any]:
        return provisioner.rollback(args.model_id, args.to, progress)

    def activate_model(args: ActivateModelArgs, progress: Progress) -> dict[str, Any]:
        return provisioner.activate(args.model_id, args.revision, progress)

    def unload_model(args: ModelArgs) -> dict[str, Any]:
        return {"model_id": args.model_id, "unloaded": services.models.unload(args.model_id)}

    def list_models(args: NoArgs) -> dict[str, Any]:
        loaded = {m.model_id for m in services.models.loaded()}
        return {"models": [{"model_id": s.manifest.model_id, "task": s.manifest.task,
                            "loaded": s.manifest.model_id in loaded, "builtin": s.builtin}
                           for s in services.store.list()]}

    def status(args: NoArgs) -> dict[str, Any]:
        return {**services.status(), "mqtt": bridge_snapshot(), "commands": commands.names}

    def start_pipeline(args: PipelineSpec) -> dict[str, Any]:
        return pipelines.start(args).status()

    def stop_pipeline(args: PipelineArgs) -> dict[str, Any]:
        return pipelines.terminate(args.pipeline_id).status()

    def pause_pipeline(args: PipelineArgs) -> dict[str, Any]:
        return pipelines.pause(args.pipeline_id).status()

    def resume_pipeline(args: PipelineArgs) -> dict[str, Any]:
        return pipelines.resume(args.pipeline_id).status()

    def pipeline_status(args: PipelineArgs) -> dict[str, Any]:
        return pipelines.get(args.pipeline_id).status()

    def list_pipelines(args: NoArgs) -> dict[str, Any]:
        return {"pipelines": [p.status() for p in pipelines.list()]}

    commands.register("start_pipeline", PipelineSpec, start_pipeline)
    commands.register("stop_pipeline", PipelineArgs, stop_pipeline)
    commands.register("pause_pipeline", PipelineArgs, pause_pipeline)
    commands.register("resume_pipeline", PipelineArgs, resume_pipeline)
    commands.register("pipeline_status", PipelineArgs, pipeline_status)
    commands.register("list_pipelines", NoArgs, list_pipelines)
    commands.register("load_model", LoadModelArgs, load_model, lane="downloads")
    commands.register("install_model", InstallModelArgs, install_model, lane="downloads")
    commands.register("rollback_model", RollbackModelArgs, rollback_model, lane="activations")
    commands.register("activate_model", ActivateModelArgs, activate_model, lane="activations")
    commands.register("unload_model", ModelArgs, unload_model)
    commands.register("list_models", NoArgs, list_models)
    commands.register("status", NoArgs, status)
    return commands
