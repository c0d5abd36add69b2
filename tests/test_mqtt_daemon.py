"""The whole daemon (``edge-agent serve``) with its MQTT bridge against a real broker: HTTP results
published, the outbox surviving ``kill -9`` while the broker is down, the last will, a clean stop."""

from __future__ import annotations

import base64
import os
import signal
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from brokers import Mosquitto, Subscriber, mosquitto_binary, validator
from helpers import wait
from servers import Server, running_server

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto is not installed (.ci/run does)")

BASE = "edge-agent/daemon1"
SAMPLE = base64.b64encode((Path(__file__).resolve().parents[1] / "edge_agent/demo/sample.jpg").read_bytes())


def _env(port: int) -> dict[str, str]:
    return {"EDGE_AGENT_MQTT__ENABLED": "true", "EDGE_AGENT_MQTT__HOST": "127.0.0.1",
            "EDGE_AGENT_MQTT__PORT": str(port), "EDGE_AGENT_MQTT__DEVICE_ID": "daemon1",
            "EDGE_AGENT_MQTT__PUBLISH_HTTP_PREDICTIONS": "true", "EDGE_AGENT_MQTT__TELEMETRY_INTERVAL_S": "0",
            "EDGE_AGENT_MQTT__RECONNECT_MIN_S": "0.05", "EDGE_AGENT_MQTT__RECONNECT_MAX_S": "0.3"}


def _infer(server: Server, n: int) -> None:
    for _ in range(n):
        request = urllib.request.Request(f"{server.url}/shapes/1", data=SAMPLE, method="POST",
                                         headers={"Content-Type": "application/x-www-form-urlencoded"})
        with urllib.request.urlopen(request, timeout=30) as r:
            assert r.status == 200


def _metric(server: Server, name: str) -> float:
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def _wait(predicate: Any, timeout: float = 15.0) -> None:
    wait(predicate, timeout, interval=0.05)


def _kill9(server: Server) -> None:
    """What a power cut or the kernel's OOM killer does: no clean-up at all, master and worker."""
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait(10)


def test_outbox_survives_kill_9_while_the_broker_is_down(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker").start()
    sub = Subscriber(broker.port, [f"{BASE}/#"], client_id="daemon-subscriber")
    state = tmp_path / "state"
    args = ("--preload", "shapes/1")
    try:
        with running_server(state, args=args, env_extra=_env(broker.port)) as server:
            sub.wait_for(lambda ms: any(m.payload == b"online" for m in ms))
            _infer(server, 3)
            sub.wait_count(f"{BASE}/predictions/http", 3)
            broker.stop()
            _infer(server, 4)  # HTTP answers as ever; its results wait on disk
            _wait(lambda: _metric(server, "edge_agent_mqtt_outbox_messages") == 4)
            _kill9(server)
        broker.start()
        with running_server(state, args=args, env_extra=_env(broker.port)) as server:
            sub.wait_count(f"{BASE}/predictions/http", 7, timeout=30)  # replayed from the outbox
            _wait(lambda: _metric(server, "edge_agent_mqtt_outbox_messages") == 0)
            _infer(server, 2)
            sub.wait_count(f"{BASE}/predictions/http", 9)
            server.process.send_signal(signal.SIGTERM)  # a clean stop says so
            server.process.wait(30)
        sub.wait_for(lambda ms: [m.payload for m in ms if m.topic == f"{BASE}/status"][-1:] == [b"stopped"])
        with running_server(state, args=args, env_extra=_env(broker.port)) as server:
            sub.wait_for(lambda ms: [m.payload for m in ms if m.topic == f"{BASE}/status"][-1:] == [b"online"])
            _kill9(server)
        sub.wait_for(lambda ms: [m.payload for m in ms if m.topic == f"{BASE}/status"][-1:] == [b"offline"])
    finally:
        sub.close()
        broker.stop()
    check = validator("prediction")
    seen: set[str] = set()
    bodies = []
    for m in sub.on(f"{BASE}/predictions/http"):
        body = m.json()
        check.validate(body)
        if body["message_id"] not in seen:
            seen.add(body["message_id"])
            bodies.append(body)
    # the first daemon's seven (three live, four from the outbox after the crash), then the second's two
    assert [b["frame_id"] for b in bodies] == [1, 2, 3, 4, 5, 6, 7, 1, 2]
    assert [b["captured_at"] for b in bodies[:7]] == sorted(b["captured_at"] for b in bodies[:7])
    # The broker's clean shutdown sends the will of the device it cut off (and the subscriber sees it
    # again, retained, when it subscribes anew): repeats collapsed, the device's life reads
    # online, cut off, online after the crash, stopped (SIGTERM), online, killed.
    statuses = [m.payload for m in sub.on(f"{BASE}/status")]
    changes = [s for i, s in enumerate(statuses) if i == 0 or s != statuses[i - 1]]
    assert changes == [b"online", b"offline", b"online", b"stopped", b"online", b"offline"], statuses
