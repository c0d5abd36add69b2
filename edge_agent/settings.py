"""Settings: the one place that reads the environment.

Today this holds what the inference core and the HTTP server need; section fields are read from
``EDGE_AGENT_<SECTION>__<FIELD>`` variables (``EDGE_AGENT_SERVER__PORT=9002``). The daemon's full
typed tree (TOML, then ``EDGE_AGENT_*`` variables, then flags) grows here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from edge_agent.errors import InvalidInput
from engines import EnginePrefs

PREFIX = "EDGE_AGENT_"


def _default_state_dir(env: Mapping[str, str]) -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/edge-agent")
    base = env.get("XDG_DATA_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".local" / "share")
    return Path(base) / "edge-agent"


def _int(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(PREFIX + key)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidInput(f"environment variable {PREFIX + key}={raw!r}: expected an integer") from None


T = TypeVar("T")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _convert(key: str, raw: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            low = raw.strip().lower()
            if low not in _TRUE | _FALSE:
                raise ValueError
            return low in _TRUE
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            return tuple(p.strip() for p in raw.split(",") if p.strip())
        if isinstance(default, dict):
            pairs = [p.split("=", 1) for p in raw.split(",") if p.strip()]
            return {k.strip(): v.strip() for k, v in pairs}
    except ValueError:
        kind = "true or false" if isinstance(default, bool) else type(default).__name__
        raise InvalidInput(f"environment variable {key}={raw!r}: expected {kind}") from None
    return raw or None if default is None else raw


def _section_from_env(section: T, name: str, env: Mapping[str, str]) -> T:
    changes = {}
    for f in fields(section):  # type: ignore[arg-type]
        key = f"{PREFIX}{name.upper()}__{f.name.upper()}"
        if key in env:
            changes[f.name] = _convert(key, env[key], getattr(section, f.name))
    return replace(section, **changes) if changes else section  # type: ignore[type-var]


@dataclass(frozen=True)
class ServerSettings:
    """The HTTP server (spec ../shared/spec/http-api.md): listening, limits, security, batching."""

    host: str = "0.0.0.0"
    port: int = 9001
    threads: int = 8  # gunicorn threads of the one worker
    api_key: str | None = None  # when set, every route but the open ones needs it (spec §1.3)
    cors_origins: str = "*"
    max_body_bytes: int = 32 * 1024 * 1024
    max_image_pixels: int = 50_000_000
    max_batch_images: int = 16  # images in one request
    allow_numpy: bool = False  # .npy bodies (never pickle)
    allow_url_input: bool = True
    allow_http_urls: bool = False
    allow_urls_without_fqdn: bool = False
    allow_non_global_urls: bool = False
    url_allowed_hosts: tuple[str, ...] = ()
    url_blocked_hosts: tuple[str, ...] = ()
    batching: str = "auto"  # auto (on for GPU engines, off on the CPU: measured in bench/http.py) | on | off
    max_batch: int = 8
    max_queue_delay_ms: float = 0.0
    max_queue: int = 64
    max_loaded_models: int = 8
    preload_models: tuple[str, ...] = ()
    aliases: dict[str, str] = field(default_factory=dict)  # "yolov8n-640" -> "coco/3"
    graceful_timeout_s: int = 20


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    engine: EnginePrefs = field(default_factory=EnginePrefs)
    server: ServerSettings = field(default_factory=ServerSettings)

    @property
    def models_dir(self) -> Path:
        return self.state_dir / "models"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """EDGE_AGENT_STATE_DIR, EDGE_AGENT_ENGINE__BACKEND, EDGE_AGENT_ENGINE__PROVIDERS (comma list),
        EDGE_AGENT_ENGINE__INTRA_OP_THREADS, EDGE_AGENT_ENGINE__INTER_OP_THREADS, EDGE_AGENT_ENGINE__MAX_BATCH."""
        env = os.environ if environ is None else environ
        state = env.get(PREFIX + "STATE_DIR")
        providers = tuple(p.strip() for p in env.get(PREFIX + "ENGINE__PROVIDERS", "").split(",") if p.strip())
        prefs = EnginePrefs(
            backend=env.get(PREFIX + "ENGINE__BACKEND", "auto"),
            providers=providers,
            intra_op_threads=_int(env, "ENGINE__INTRA_OP_THREADS", 0),
            inter_op_threads=_int(env, "ENGINE__INTER_OP_THREADS", 0),
            max_batch=_int(env, "ENGINE__MAX_BATCH", 8),
        )
        server = _section_from_env(ServerSettings(), "server", env)
        if server.batching not in ("auto", "on", "off"):
            raise InvalidInput(f"{PREFIX}SERVER__BATCHING={server.batching!r}: expected auto, on or off")
        return cls(state_dir=Path(state) if state else _default_state_dir(env), engine=prefs, server=server)
