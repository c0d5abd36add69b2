"""Topic names and payloads of the MQTT bridge (docs/mqtt.md), with no paho: pure functions of data.

Every JSON payload is an object carrying ``message_id`` (unique, for consumers to de-duplicate what a
reconnect sent twice), ``device_id`` and a ``timestamp``; its JSON Schema is
``edge_agent/mqtt/schemas/<kind>.schema.json`` (``schema_path``). Timestamps are RFC 3339 UTC strings
with milliseconds.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.events import PredictionEvent, timestamp
from edge_agent.results import Classification
from edge_agent.roboflow_json import to_roboflow

SCHEMAS = Path(__file__).resolve().parent / "schemas"

ONLINE, OFFLINE, STOPPED = b"online", b"offline", b"stopped"


def schema_path(kind: str) -> Path:
    return SCHEMAS / f"{kind}.schema.json"


def dumps(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


@dataclass(frozen=True)
class Topics:
    prefix: str
    device_id: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.device_id}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def telemetry(self) -> str:
        return f"{self.base}/telemetry"

    def predictions(self, source_id: str) -> str:
        return f"{self.base}/predictions/{source_id}"

    def state(self, source_id: str) -> str:
        return f"{self.base}/state/{source_id}"

    def active_learning(self, source_id: str) -> str:
        return f"{self.base}/active_learning/{source_id}"

    @property
    def commands(self) -> str:
        """The subscription: every command name."""
        return f"{self.base}/commands/+"

    def command(self, name: str) -> str:
        return f"{self.base}/commands/{name}"

    def response(self, name: str) -> str:
        return f"{self.base}/responses/{name}"

    def command_name(self, topic: str) -> str | None:
        head = f"{self.base}/commands/"
        return topic[len(head):] if topic.startswith(head) and "/" not in topic[len(head):] else None


def envelope(device_id: str, epoch: float | None = None) -> dict[str, Any]:
    return {"message_id": str(uuid.uuid4()), "device_id": device_id, "timestamp": timestamp(epoch)}


def prediction_payload(device_id: str, event: PredictionEvent) -> dict[str, Any]:
    """One inferred frame: where and when it came from, and the Roboflow-format result."""
    return {
        **to_roboflow(event.result, event.inference_id),
        **envelope(device_id, event.inferred_at),
        "source_id": event.source_id,
        "model_id": event.model_id,
        "frame_id": event.frame_id,
        "captured_at": timestamp(event.captured_at),
        "inferred_at": timestamp(event.inferred_at),
    }


def counts(event: PredictionEvent) -> dict[str, int]:
    """Objects per class in the frame (classification: the top class counts one)."""
    result = event.result
    if isinstance(result, Classification):
        if result.multilabel:
            names = [n for n, c in zip(result.class_names, result.confidence) if c > result.threshold]
            return dict.fromkeys(names, 1)
        return {result.class_names[result.top[0]]: 1}
    out: dict[str, int] = {}
    for name in result.class_name:
        out[name] = out.get(name, 0) + 1
    return out


def state_payload(device_id: str, event: PredictionEvent, per_class: dict[str, int]) -> dict[str, Any]:
    """The current per-class counts of a source (retained)."""
    return {
        **envelope(device_id, event.inferred_at),
        "source_id": event.source_id,
        "model_id": event.model_id,
        "frame_id": event.frame_id,
        "counts": per_class,
        "total": sum(per_class.values()),
    }
