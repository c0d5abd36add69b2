"""Settings: one typed, validated tree, read once at start. The only reader of ``os.environ``.

Sources, each overriding the one before:

1. the TOML file: ``--config PATH``, else ``EDGE_AGENT_CONFIG``, else ``/etc/edge-agent/config.toml``
   (a missing default file is fine: the defaults apply; a missing named file is an error;
   ``EDGE_AGENT_CONFIG=`` empty reads no file);
2. environment variables ``EDGE_AGENT_<SECTION>__<FIELD>`` (``EDGE_AGENT_SERVER__PORT=9002``; lists
   comma-separated, tables as ``key=value,key=value``), and ``EDGE_AGENT_STATE_DIR`` as a shorthand
   for ``EDGE_AGENT_PATHS__STATE_DIR``;
3. command-line flags (``overrides`` of ``load_settings``).

An unknown key (in the file or an ``EDGE_AGENT_*`` variable) or a bad value raises ``ConfigError``
with one line naming the key and where it came from (file and line, variable, or flag).
Sections: ``[paths]``, ``[engine]``, ``[server]`` (listening, limits, URL policy, batching, preloaded
models), ``[mqtt]`` (the bridge: broker, TLS, topics, outbox bounds, telemetry, Home Assistant),
``[models]`` (Roboflow's API, uploads, activation checks, disk budget),
``[pipelines]`` (``[[pipelines.streams]]``: video pipelines started with the daemon),
``[active_learning]`` (sampling strategies, the spool, upload targets).
"""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    PrivateAttr,
    SecretStr,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from edge_agent.errors import ConfigError
from edge_agent.pipeline_spec import MODEL_REF_WHOLE, PipelineSpec
from edge_agent.redaction import redact
from edge_agent.sampling_strategies import Strategy
from engines import EnginePrefs

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack 6)
    import tomli as tomllib

PREFIX = "EDGE_AGENT_"
DEFAULT_CONFIG = Path("/etc/edge-agent/config.toml")


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _user_dir(env: Mapping[str, str], xdg: str, fallback: str) -> Path:
    base = env.get(xdg) or str(Path(env.get("HOME", "~")).expanduser() / fallback)
    return Path(base) / "edge-agent"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PathsSettings(_Section):
    """Where state lives. Defaults: system folders as root, the user's XDG folders otherwise."""

    state_dir: Path = Field(description="models, queues, install id (/var/lib/edge-agent)")
    cache_dir: Path = Field(description="rebuildable caches such as TensorRT engines (/var/cache/edge-agent)")


class EngineSettings(_Section):
    """Inference back-ends (docs/jetson.md): TensorRT where it, pycuda and a CUDA GPU are present (ONNX
    Runtime serves a model until its engine is built and checked), else ONNX Runtime."""

    backend: Literal["auto", "trt", "ort"] = Field(
        "auto", description="auto: TensorRT where usable, else ONNX Runtime; trt: the same, warning when it "
        "falls back; ort: ONNX Runtime only")
    providers: tuple[str, ...] = Field((), description="ONNX Runtime providers to try before the CPU: cuda, tensorrt")
    intra_op_threads: int = Field(0, ge=0, description="0: all cores; also bounds a CPU session's runs at once")
    inter_op_threads: int = Field(0, ge=0)
    idle_spin: Literal["auto", "short", "long"] = Field(
        "auto", description="how ONNX Runtime's threads wait between runs: long (its default: the next run "
        "finds them awake), short (100 us, then they sleep and leave the cores to other work); auto: short "
        "where the configuration has pipelines ([[pipelines.streams]]; a script's InferencePipeline too) or "
        "active learning, whose decoders and writer need the cores between runs; else long. Decided at "
        "start: a device that starts pipelines through the API or MQTT should say short")
    max_batch: int = Field(8, ge=1, le=256, description="batch cap for models with a dynamic batch axis; "
                           "the TensorRT profile's largest batch")
    opt_batch: int = Field(1, ge=1, le=256, description="the batch size TensorRT tunes its kernels for")
    precision: Literal["fp16", "fp32", "int8"] = Field(
        "fp16", description="TensorRT precision; fp16 falls back to fp32 on GPUs without fast FP16")
    dla_core: int | None = Field(None, ge=0, description="build for this DLA core (Xavier, Orin), GPU fallback")
    build_engines: bool = Field(True, description="build missing TensorRT engines in the background")
    workspace_mb: int = Field(0, ge=0, description="TensorRT builder workspace; 0: half the free memory, <= 4 GiB")
    calibration_images: Path | None = Field(None, description="INT8: a folder of typical frames (else the "
                                            "active-learning spool)")
    calibration_frames: int = Field(64, ge=8, le=1024, description="INT8: frames used for calibration")
    check_images: Path | None = Field(None, description="a folder of images a new engine is checked on (else "
                                      "sampled frames and the built-in sample)")

    @model_validator(mode="after")
    def _batches(self) -> EngineSettings:
        if self.opt_batch > self.max_batch:
            raise ValueError(f"opt_batch ({self.opt_batch}) must not exceed max_batch ({self.max_batch})")
        return self


# [server] aliases, matched whole (``fullmatch``). _MODEL_ID is store.manifest.parse_model_id's rule,
# repeated here because the settings sit below the store (tests/test_identifiers.py keeps them equal).
_ALIAS = MODEL_REF_WHOLE
_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}/[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class ServerSettings(_Section):
    """The HTTP server (docs/http.md): listening, limits, URL policy, batching, preloaded models."""

    host: str = "0.0.0.0"
    port: int = Field(9001, ge=1, le=65535)
    threads: int = Field(8, ge=1, le=256, description="request threads of the one gunicorn worker")
    max_connections: int = Field(512, ge=8, le=65536, description="open connections; past it a new one gets 503")
    header_timeout_s: float = Field(10.0, gt=0, le=600, description="to receive a request's line and headers")
    body_timeout_s: float = Field(60.0, gt=0, le=3600, description="to receive a request's body after its headers")
    keepalive_s: float = Field(5.0, gt=0, le=600, description="an idle kept-alive connection is closed after it")
    linger_ms: float = Field(2.0, ge=0, le=50, description="after writing an answer, a request thread waits this "
                             "long for the connection's next request and runs it itself (a client sending one "
                             "request after another skips a pass through the event loop); 0: never")
    max_previews: int = Field(32, ge=0, le=1024, description="MJPEG preview watchers per pipeline")
    api_key: SecretStr | None = Field(None, description="when set, every route but the open ones needs it")
    cors_origins: str = "*"
    access_log: bool = Field(True, description="one INFO line per request (logger edge_agent.access): method, "
                                               "path without the query string, status, ms, client")
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(50_000_000, ge=1)
    max_batch_images: int = Field(16, ge=1, description="images in one request")
    allow_numpy: bool = Field(False, description=".npy bodies (never pickle)")
    allow_url_input: bool = True
    allow_http_urls: bool = False
    allow_urls_without_fqdn: bool = False
    allow_non_global_urls: bool = False
    url_allowed_hosts: tuple[str, ...] = ()
    url_blocked_hosts: tuple[str, ...] = ()
    batching: Literal["auto", "on", "off"] = Field("auto", description="auto: on for GPU engines, off on the CPU")
    max_batch: int = Field(8, ge=1, le=256)
    max_queue_delay_ms: float = Field(0.0, ge=0, le=1000)
    max_queue: int = Field(64, ge=1)
    max_loaded_models: int = Field(8, ge=1)
    preload_models: tuple[str, ...] = ()
    aliases: dict[str, str] = Field(default_factory=dict, description='"yolov8n-640" = "coco/3"')
    graceful_timeout_s: int = Field(20, ge=1, le=600)

    @model_validator(mode="after")
    def _whole_aliases(self) -> ServerSettings:
        """Alias names and targets matched whole: no control character, no trailing newline."""
        for name, target in self.aliases.items():
            if not _ALIAS.fullmatch(name):
                raise ValueError(f"alias {name!r}: letters, digits, '.', '_', '-' or '/' only")
            if not _MODEL_ID.fullmatch(target) or ".." in target:
                raise ValueError(f"alias {name!r}: target {target!r} is not '<project>/<version>'")
        return self


# A topic level we build names from: no wildcards, no separators, not empty.
TOPIC_LEVEL = r"^[^/#+\x00]+$"


def _hostname() -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname().split(".")[0]).strip("-")
    return name or "edge-agent"


class MqttSettings(_Section):
    """The MQTT bridge (docs/mqtt.md): broker, credentials, topics, outbox bounds, telemetry."""

    enabled: bool = Field(False, description="run the bridge")
    host: str = Field("localhost", min_length=1, description="broker host name or address")
    port: int = Field(1883, ge=1, le=65535, description="1883, or 8883 with TLS by convention")
    protocol: Literal["auto", "5", "3.1.1"] = Field(
        "auto", description="auto: MQTT 5, falling back to 3.1.1 when the broker refuses 5")
    client_id: str = Field("", description="empty: edge-agent-<install id>, unique per device")
    username: str | None = None
    password: SecretStr | None = None
    keepalive_s: int = Field(30, ge=5, le=3600)
    tls: bool = Field(False, description="TLS with the system's CAs (implied by tls_ca_file)")
    tls_ca_file: FilePath | None = Field(None, description="CA bundle that signed the broker's certificate")
    tls_cert_file: FilePath | None = Field(None, description="client certificate (with tls_key_file)")
    tls_key_file: FilePath | None = None
    tls_insecure: bool = Field(False, description="skip the broker host name check (test brokers only)")
    topic_prefix: str = Field("edge-agent", pattern=TOPIC_LEVEL)
    device_id: str = Field(default_factory=_hostname, pattern=TOPIC_LEVEL,
                           description="the device's topic level (default: the host name)")
    qos: Literal[0, 1] = Field(1, description="QoS of predictions; QoS 1 goes through the outbox on disk")
    publish_http_predictions: bool = Field(False, description="also publish HTTP inference results (source 'http')")
    state_topics: bool = Field(True, description="retained per-class counts per source")
    telemetry_interval_s: float = Field(30.0, ge=0, description="0: no telemetry")
    reconnect_min_s: float = Field(1.0, gt=0)
    reconnect_max_s: float = Field(60.0, gt=0)
    max_inflight: int = Field(32, ge=1, le=65535, description="QoS 1 messages awaiting PUBACK at once")
    handoff_size: int = Field(10_000, ge=1, description="messages waiting for the bridge thread (in memory)")
    outbox_max_messages: int = Field(100_000, ge=10)
    outbox_max_bytes: int = Field(256 * 1024 * 1024, ge=64 * 1024)
    outbox_sync: Literal["full", "normal"] = Field(
        "full", description="full: each write survives a power cut; normal: faster, may lose the last second")
    stop_flush_s: float = Field(5.0, ge=0, le=60, description="on stop, time given to empty the outbox")
    home_assistant: bool = Field(False, description="Home Assistant MQTT discovery for per-class counts")
    home_assistant_prefix: str = Field("homeassistant", pattern=TOPIC_LEVEL)

    @model_validator(mode="after")
    def _consistent(self) -> MqttSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        if self.password is not None and self.username is None:
            raise ValueError("password needs a username")
        return self

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.tls_ca_file is not None or self.tls_cert_file is not None


def _first_error(exc: ValidationError, what: str) -> str:
    """The first problem pydantic found in one table of a list, as ``<field>: <message>``."""
    err = exc.errors(include_url=False)[0]
    return f"{'.'.join(str(p) for p in err['loc']) or what}: {err['msg']}"


def _tables(data: Any, key: str, noun: str, validate: Callable[[Any], Any], name: Callable[[Any], object],
            unique: str) -> Any:
    """``data[key]``'s tables each validated here, so that a problem names its table
    (``streams[1].model_id: ...``), and their names (``name``) checked to differ."""
    if not isinstance(data, dict) or not isinstance(data.get(key), (list, tuple)):
        return data
    items = []
    for i, item in enumerate(data[key]):
        try:
            items.append(validate(item))
        except ValidationError as exc:
            raise ValueError(f"{key}[{i}].{_first_error(exc, noun)}") from None
        except ValueError as exc:
            raise ValueError(f"{key}[{i}]: {exc}") from None
    names = [name(x) for x in items]
    if len(set(names)) != len(names):
        raise ValueError(f"{key}: {unique}")
    return {**data, key: tuple(items)}


class PipelinesSettings(_Section):
    """Pipelines the daemon starts itself (``[[pipelines.streams]]`` tables, docs/http.md#pipelines)."""

    streams: tuple[PipelineSpec, ...] = Field((), description="each: model_id, video_reference, pipeline_id, ...")

    @model_validator(mode="before")
    @classmethod
    def _specs(cls, data: Any) -> Any:
        """Each table validated as a ``PipelineSpec`` here, so that a problem names its table:
        ``[pipelines]: streams[1].model_id: ...``."""
        def spec(item: Any) -> PipelineSpec:
            found = item if isinstance(item, PipelineSpec) else PipelineSpec.model_validate(item)
            if found.pipeline_id is None:
                raise ValueError("a declared pipeline needs a pipeline_id")
            return found

        return _tables(data, "streams", "stream", spec, lambda s: s.pipeline_id, "pipeline_id values must differ")


_STRATEGY: TypeAdapter[Strategy] = TypeAdapter(Strategy)


class BatchingStrategy(_Section):
    """``[active_learning.batching_strategy]``, Roboflow's block of the same name: the labelling batch
    each sample joins (its name goes with every upload)."""

    batches_name_prefix: str = Field(min_length=1, max_length=64, description="batch names start with it")
    recreation_interval: Literal["never", "daily", "weekly", "monthly"] = Field(
        "never", description="a new batch each UTC day, week (from Monday) or month: <prefix>_<YYYY_MM_DD>")
    max_batch_images: int | None = Field(None, ge=1, description="samples per batch (none: no cap)")
    when_full: Literal["skip", "next_batch"] = Field(
        "skip", description="a full batch: skip samples until the next interval (Roboflow), or open "
                            "<name>_2, <name>_3, ...")


class ActiveLearningSettings(_Section):
    """Sampling frames for labelling and uploading them (docs/active-learning.md)."""

    enabled: bool = False
    strategies: tuple[Strategy, ...] = Field((), description="[[active_learning.strategies]] tables (Roboflow's "
                                                            "types)")
    sample_http_requests: bool = Field(False, description="also sample the images of HTTP inference requests")
    targets: tuple[Literal["folder", "http", "mqtt"], ...] = Field(("folder",), description="where samples go")
    folder: Path | None = Field(None, description="YOLO data set (default <state>/dataset)")
    http_base_url: str | None = Field(None, description="Roboflow-style upload API base URL")
    http_project: str | None = Field(None, description="the dataset (project) to upload to")
    http_api_key: SecretStr | None = None
    http_batch_name: str = Field("edge-agent", description="the http target's batch without a batching_strategy")
    batching_strategy: BatchingStrategy | None = Field(None, description="Roboflow's batching_strategy: batch "
                                                                         "names, recreation, images per batch")
    http_split: Literal["train", "valid", "test"] = "train"
    jpeg_quality: int = Field(75, ge=1, le=100)
    max_image_size: int = Field(1280, ge=0, description="longest side of the stored JPEG; 0: as captured")
    dedup_distance: int = Field(6, ge=0, le=64, description="skip frames within this Hamming distance "
                                                             "(64-bit dHash) of a recent sample; 0: off")
    queue_size: int = Field(64, ge=1, description="sampled frames waiting to be encoded (in memory)")
    thread_priority: Literal["idle", "low", "normal"] = Field(
        "low", description="the sampler's writer thread (uploaders keep the normal priority): low (nice +10, "
                           "the default), normal, or idle (SCHED_IDLE: only CPU that inference leaves; on a "
                           "busy device it may never run, so frames are dropped and the spool waits, and it "
                           "can be descheduled holding the GIL or the spool's write lock)")
    spool_max_items: int = Field(10_000, ge=1)
    spool_max_bytes: int = Field(1024 * 1024 * 1024, ge=1024 * 1024)
    spool_sync: Literal["full", "normal"] = "full"
    bandwidth_kbps: float = Field(0.0, ge=0, description="upload cap per network target (http, mqtt) in kB/s; 0: none")
    retry_min_s: float = Field(5.0, gt=0)
    retry_max_s: float = Field(600.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _strategies(cls, data: Any) -> Any:
        """Each table validated as a strategy here, so that a problem names its table:
        ``[active_learning]: strategies[0].threshold: ...``."""
        return _tables(data, "strategies", "strategy", _STRATEGY.validate_python, lambda s: s.name,
                       "names must differ (limits are counted per name)")

    @model_validator(mode="after")
    def _check(self) -> ActiveLearningSettings:
        if self.enabled and not self.strategies:
            raise ValueError("enabled without strategies: add [[active_learning.strategies]]")
        if self.enabled and not self.targets:
            raise ValueError("enabled without targets")
        if "http" in self.targets and (not self.http_base_url or not self.http_project):
            raise ValueError("the http target needs http_base_url and http_project")
        if self.retry_max_s < self.retry_min_s:
            raise ValueError("retry_max_s must be >= retry_min_s")
        if self.batching_strategy is not None and self.http_batch_name != "edge-agent":
            raise ValueError("set either http_batch_name or batching_strategy.batches_name_prefix, not both")
        return self


class ModelsSettings(_Section):
    """``[models]``: where models come from (Roboflow's API, uploads), how new versions are checked
    before they serve, and the store's disk budget."""

    offline: bool = Field(False, description="never contact Roboflow's API (unknown ids are then a plain 404)")
    api_key: SecretStr | None = Field(None, description="Roboflow API key for pulls when a request brings none "
                                                        "(a request's key is used first; never server.api_key)")
    api_url: str = Field("https://api.roboflow.com", pattern=r"^https?://[^\s?#]+$",
                         description="Roboflow's API (base URL of the model-weights routes)")
    download_timeout_s: float = Field(30.0, gt=0, le=600, description="connect and per-read timeout")
    download_deadline_s: float = Field(900.0, gt=0, description="a whole model download must end within this")
    download_retries: int = Field(3, ge=0, le=10, description="retries of a failed request, with backoff")
    pull_retry_s: float = Field(30.0, ge=0, le=3600, description="a failed pull of an id is answered from "
                                                                 "memory this long before the cloud is asked again")
    max_download_bytes: int = Field(1024 * 1024 * 1024, ge=1024, description="largest file downloaded")
    max_upload_bytes: int = Field(1024 * 1024 * 1024, ge=1024, description="largest PUT /models/... body")
    keep_revisions: int = Field(2, ge=1, le=20, description="earlier versions of an id kept for rollback")
    check_images: Path | None = Field(None, description="golden set: a new version's predictions on these "
                                                        "images must agree with the serving one's")
    check_tolerance: float = Field(0.1, ge=0, le=1, description="share of golden-set images that may "
                                                                "disagree with the serving version")
    disk_budget_mb: int = Field(0, ge=0, description="evict unused models beyond this; 0: no budget")
    evict_after_days: float = Field(30.0, ge=0, description="only models unused this long are evicted")
    pinned: tuple[str, ...] = Field((), description="model ids never evicted")


class Settings(_Section):
    paths: PathsSettings
    engine: EngineSettings = Field(default_factory=EngineSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    models: ModelsSettings = Field(default_factory=ModelsSettings)
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    pipelines: PipelinesSettings = Field(default_factory=PipelinesSettings)
    active_learning: ActiveLearningSettings = Field(default_factory=ActiveLearningSettings)

    @model_validator(mode="after")
    def _across(self) -> Settings:
        if self.active_learning.enabled and "mqtt" in self.active_learning.targets and not self.mqtt.enabled:
            raise ValueError("active_learning.targets has mqtt but [mqtt] is not enabled")
        return self
    config_file: Path | None = Field(None, description="the file these settings were read from, if any")
    # where each value came from ({"server.port": "<file> line 3"}), set by load_settings; "default" otherwise
    _origins: dict[str, str] = PrivateAttr(default_factory=dict)

    @property
    def state_dir(self) -> Path:
        return self.paths.state_dir

    @property
    def models_dir(self) -> Path:
        return self.paths.state_dir / "models"

    def named_models(self) -> set[str]:
        """The model ids the configuration names: preloaded, alias targets, declared pipelines' models
        (eviction keeps them)."""
        server = self.server
        return set(server.preload_models) | set(server.aliases.values()) | {
            spec.model_id for spec in self.pipelines.streams}

    def server_key(self) -> str | None:
        """This device's own HTTP API key, if one is set."""
        return self.server.api_key.get_secret_value() if self.server.api_key is not None else None

    @property
    def engine_prefs(self) -> EnginePrefs:
        """The one engine configuration (``engines.EnginePrefs``): the [engine] section, and the
        dynamic batching of [server]."""
        e, s = self.engine, self.server
        return EnginePrefs(
            backend=e.backend, providers=e.providers, intra_op_threads=e.intra_op_threads,
            inter_op_threads=e.inter_op_threads, max_batch=e.max_batch, opt_batch=e.opt_batch, precision=e.precision,
            short_spin=e.idle_spin == "short" or (e.idle_spin == "auto" and (
                self.active_learning.enabled or bool(self.pipelines.streams))),
            dla_core=e.dla_core, build_engines=e.build_engines, workspace_mb=e.workspace_mb,
            calibration_frames=e.calibration_frames, batching={"on": True, "off": False}.get(s.batching),
            batching_max_batch=s.max_batch, batching_max_delay_ms=s.max_queue_delay_ms, batching_max_queue=s.max_queue)

    def for_pipelines(self) -> Settings:
        """These settings in a process that runs video pipelines (a script's ``InferencePipeline``):
        ``[engine] idle_spin = "auto"`` is "short" there, as in a daemon with configured streams."""
        if self.engine.idle_spin != "auto":
            return self
        return self.model_copy(update={"engine": self.engine.model_copy(update={"idle_spin": "short"})})

    @classmethod
    def defaults(cls, state_dir: Path, cache_dir: Path | None = None) -> Settings:
        return cls(paths=PathsSettings(state_dir=state_dir, cache_dir=cache_dir or state_dir / "cache"))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings of this process: config file, then environment (no flags)."""
        return load_settings(environ=environ)

    def public(self) -> dict[str, Any]:
        """Effective values as plain data, secrets masked (``config show``)."""
        data: dict[str, Any] = self.model_dump(mode="json")
        key = self.server.api_key
        data["server"]["api_key"] = None if key is None else "***"
        data["mqtt"]["password"] = None if self.mqtt.password is None else "***"
        data["models"]["api_key"] = None if self.models.api_key is None else "***"
        data["pipelines"]["streams"] = [s.model_dump(mode="json") for s in self.pipelines.streams]
        data["active_learning"]["strategies"] = [s.model_dump(mode="json") for s in self.active_learning.strategies]
        data["active_learning"]["http_api_key"] = None if self.active_learning.http_api_key is None else "***"
        # credentials inside URLs: camera user:password@, upload and API URLs with keys or tokens
        for stream in data["pipelines"]["streams"]:
            ref = stream.get("video_reference")
            stream["video_reference"] = ([_shown(r) for r in ref] if isinstance(ref, list) else _shown(ref))
        data["active_learning"]["http_base_url"] = _shown(data["active_learning"]["http_base_url"])
        data["models"]["api_url"] = _shown(data["models"]["api_url"])
        return data

    def sources(self) -> dict[str, str]:
        """Where each setting's value came from, by dotted key: ``"<file> line N"``, ``"environment
        variable EDGE_AGENT_..."``, ``"command-line flag for ..."`` or ``"default"``."""
        return {f"{name}.{key}": self._origins.get(f"{name}.{key}", "default")
                for name, section in SECTIONS.items() for key in section.model_fields}


def _shown(value: Any) -> Any:
    """A string value with its credentials redacted; anything else (a camera index, None) as it is."""
    return redact(value) if isinstance(value, str) else value


SECTIONS: dict[str, type[_Section]] = {"paths": PathsSettings, "engine": EngineSettings, "server": ServerSettings,
                                       "models": ModelsSettings, "mqtt": MqttSettings, "pipelines": PipelinesSettings,
                                       "active_learning": ActiveLearningSettings}


# --------------------------------------------------------------------------------------------- loading


def _default_paths(env: Mapping[str, str]) -> dict[str, str]:
    if _is_root():
        return {"state_dir": "/var/lib/edge-agent", "cache_dir": "/var/cache/edge-agent"}
    return {"state_dir": str(_user_dir(env, "XDG_DATA_HOME", ".local/share")),
            "cache_dir": str(_user_dir(env, "XDG_CACHE_HOME", ".cache"))}


def _read_toml(path: Path) -> tuple[dict[str, Any], str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file: {exc.strerror}") from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def _line_of(text: str, section: str, key: str) -> int | None:
    """The line where ``key`` is set inside ``[section]`` (1-based), for error messages."""
    current = ""
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        header = re.match(r"^\[([^\[\]]+)\]", stripped)
        if header:
            current = header.group(1).strip()
            continue
        if current == section and re.match(rf"^{re.escape(key)}\s*=", stripped):
            return number
        if not section and current == "" and re.match(rf"^{re.escape(key)}\s*=", stripped):
            return number
    return None


def _env_value(field_type: Any, raw: str) -> Any:
    """An environment string in the shape pydantic validates for the field (lists, tables)."""
    text = str(field_type)
    if "tuple" in text or "list" in text:
        return [p.strip() for p in raw.split(",") if p.strip()]
    tables = [a for a in (get_args(field_type) or (field_type,)) if isinstance(a, type) and issubclass(a, BaseModel)]
    if text.startswith("dict") or tables:  # a table: key=value,key=value
        pairs = [p.split("=", 1) for p in raw.split(",") if p.strip()]
        if any(len(p) != 2 for p in pairs):
            return raw  # pydantic names the problem
        return {k.strip(): v.strip() for k, v in pairs}
    if raw == "" and "None" in text:
        return None
    return raw


def load_settings(config_file: Path | str | None = None, environ: Mapping[str, str] | None = None,
                  overrides: Mapping[str, Any] | None = None, check_files: bool = True) -> Settings:
    """Read and validate the settings (file, then environment, then ``overrides`` such as
    ``{"server.port": 9002}`` from flags). Raises ``ConfigError`` naming the key and its source.

    ``check_files=False`` (the console's check of a pasted file) does not look at the files the settings
    name (``[mqtt] tls_ca_file``...): the configuration file itself stands in for each, so the answer is
    the same whether they exist or not. Such settings are for validation only."""
    env = os.environ if environ is None else environ
    data: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    origin: dict[tuple[str, str], str] = {}

    named = str(config_file) if config_file is not None else env.get(PREFIX + "CONFIG")
    path = Path(named) if named else DEFAULT_CONFIG
    used_file: Path | None = None
    if named == "":  # EDGE_AGENT_CONFIG= (empty): no file at all, not even the default
        pass
    elif named is not None or path.exists():
        raw, text = _read_toml(path)
        used_file = path
        for section, values in raw.items():
            if section not in SECTIONS or not isinstance(values, dict):
                line = _line_of(text, "", section) or _section_line(text, section)
                raise ConfigError(f"{path}{_at(line)}: unknown section or key '{section}' "
                                  f"(sections: {', '.join(SECTIONS)})")
            for key, value in values.items():
                data[section][key] = value
                line = _line_of(text, section, key) or _section_line(text, f"{section}.{key}")  # or its table
                origin[(section, key)] = f"{path}{_at(line)}"

    for var, raw_value in env.items():
        if not var.startswith(PREFIX) or var == PREFIX + "CONFIG":
            continue
        if var == PREFIX + "STATE_DIR":
            section, key = "paths", "state_dir"
        else:
            name = var[len(PREFIX):].lower()
            section, sep, key = name.partition("__")
            if not sep or section not in SECTIONS or key not in SECTIONS[section].model_fields:
                raise ConfigError(f"environment variable {var}: unknown setting (expected "
                                  f"{PREFIX}<SECTION>__<FIELD>, sections: {', '.join(SECTIONS)})")
        field_type = SECTIONS[section].model_fields[key].annotation
        data[section][key] = _env_value(field_type, raw_value)
        origin[(section, key)] = f"environment variable {var}"

    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        data[section][key] = value
        origin[(section, key)] = f"command-line flag for {dotted}"

    defaults = _default_paths(env)
    for key, value in defaults.items():
        data["paths"].setdefault(key, value)
    if not check_files and used_file is not None:
        _stand_in_for_files(data, used_file)
    try:
        settings = Settings.model_validate({**data, "config_file": used_file})
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = [str(p) for p in err["loc"]]
        section, key = (loc + ["", ""])[:2]
        where = origin.get((section, key), "default")
        dotted = ".".join(loc)
        if err["type"] == "extra_forbidden":
            fields = ", ".join(SECTIONS[section].model_fields) if section in SECTIONS else ""
            raise ConfigError(f"{where}: unknown key '{dotted}' (known in [{section}]: {fields})") from None
        if not key:  # a rule across keys of a section (e.g. TLS certificate and key go together)
            where = f"[{section}]: " if section else ""
            raise ConfigError(f"{where}{err['msg'].removeprefix('Value error, ')}") from None
        got = "***" if key in ("api_key", "password", "http_api_key") else repr(err.get("input"))
        raise ConfigError(f"{where}: {dotted}: {err['msg']} (got {got})") from None
    settings._origins = {f"{section}.{key}": where for (section, key), where in origin.items()}
    return settings


def _stand_in_for_files(data: dict[str, dict[str, Any]], stand_in: Path) -> None:
    """Every file path the settings would check for existence (``FilePath`` fields) given as ``stand_in``."""
    for name, section in SECTIONS.items():
        for key, field in section.model_fields.items():
            is_file = field.annotation is FilePath or FilePath in get_args(field.annotation)
            if is_file and isinstance(data[name].get(key), str) and data[name][key]:
                data[name][key] = str(stand_in)


def _section_line(text: str, section: str) -> int | None:
    for number, line in enumerate(text.splitlines(), 1):
        if re.match(rf"^\s*\[\[?\s*{re.escape(section)}\s*[\].]", line):  # [table], [[array.of.tables]]
            return number
    return None


def _at(line: int | None) -> str:
    return f" line {line}" if line else ""


@dataclass(frozen=True)
class SystemdEnv:
    """What systemd tells a service through its environment (sd_notify(3), sd_watchdog_enabled(3))."""

    notify_socket: str | None = None
    watchdog_usec: int | None = None
    journal_stream: str | None = None


def systemd_environment(environ: Mapping[str, str] | None = None, consume: bool = False) -> SystemdEnv:
    """Read systemd's variables. ``consume`` takes NOTIFY_SOCKET out of this process's environment so
    that nothing else (gunicorn's master announces READY=1 as soon as it has booted) speaks for us."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    if consume and environ is None:
        sock = os.environ.pop("NOTIFY_SOCKET", None)
        return SystemdEnv(sock or None, int(usec) if usec.isdigit() and int(usec) > 0 else None,
                          env.get("JOURNAL_STREAM") or None)
    return SystemdEnv(
        notify_socket=env.get("NOTIFY_SOCKET") or None,
        watchdog_usec=int(usec) if usec.isdigit() and int(usec) > 0 else None,
        journal_stream=env.get("JOURNAL_STREAM") or None,
    )
