"""Settings: the one place that reads the environment.

Today this holds what the inference core needs (where the model store lives, how engines run).
The daemon's full typed tree (TOML, then ``EDGE_AGENT_*`` variables, then flags) grows here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

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


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    engine: EnginePrefs = field(default_factory=EnginePrefs)

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
        return cls(state_dir=Path(state) if state else _default_state_dir(env), engine=prefs)
