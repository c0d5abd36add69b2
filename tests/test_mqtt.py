"""The MQTT bridge against a real broker (mosquitto): availability, predictions, state, telemetry,
Home Assistant discovery, commands, outages and bounds. The runtime is the daemon's own, in process;
the whole daemon under kill -9 is in test_mqtt_daemon.py."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from brokers import Mosquitto, Subscriber, mosquitto_binary, validator

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto is not installed (.ci/run does)")

DEVICE = "dev1"
BASE = f"edge-agent/{DEVICE}"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = Mosquitto(tmp_path / "broker").start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def sample() -> np.ndarray:
    import cv2

    image = cv2.imread(str(Path(__file__).resolve().parents[1] / "edge_agent/demo/sample.jpg"))
    assert image is not None
    return image


def make_runtime(tmp_path: Path, port: int, **mqtt: Any) -> Any:
    from edge_agent.runtime import Runtime
    from edge_agent.settings import EngineSettings, MqttSettings, Settings

    options: dict[str, Any] = {"enabled": True, "host": "127.0.0.1", "port": port, "device_id": DEVICE,
                               "telemetry_interval_s": 0, "reconnect_min_s": 0.05, "reconnect_max_s": 0.3, **mqtt}
    settings = Settings.defaults(tmp_path / "state").model_copy(
        update={"mqtt": MqttSettings(**options), "engine": EngineSettings(intra_op_threads=1)})
    return Runtime(settings)


def wait_connected(runtime: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not runtime.bridge.snapshot()["connected"]:
        assert time.monotonic() < deadline, runtime.bridge.stats.last_error
        time.sleep(0.02)


def infer(runtime: Any, image: np.ndarray, source: str = "cam1", n: int = 1) -> None:
    from edge_agent.heads import InferenceParams

    loaded, _ = runtime.model("shapes/1")
    for _ in range(n):
        runtime.infer(loaded, [image], InferenceParams(), source=source)


@pytest.fixture
def running(tmp_path: Path, broker: Mosquitto) -> Iterator[Any]:
    runtime = make_runtime(tmp_path, broker.port)
    runtime.start()
    yield runtime
    runtime.stop()


def test_availability_predictions_and_state_follow_the_schemas(tmp_path: Path, broker: Mosquitto,
                                                                sample: np.ndarray) -> None:
    sub = Subscriber(broker.port, [f"{BASE}/#"])
    runtime = make_runtime(tmp_path, broker.port)
    runtime.start()
    try:
        sub.wait_for(lambda ms: any(m.topic == f"{BASE}/status" and m.payload == b"online" for m in ms))
        infer(runtime, sample, n=3)
        predictions = sub.wait_count(f"{BASE}/predictions/cam1", 3)
        check = validator("prediction")
        bodies = [m.json() for m in predictions]
        for body in bodies:
            check.validate(body)
            assert body["source_id"] == "cam1" and body["model_id"] == "shapes/1" and body["device_id"] == DEVICE
            assert body["image"] == {"width": sample.shape[1], "height": sample.shape[0]}
            assert body["captured_at"] <= body["inferred_at"]
            assert len(body["predictions"]) > 0
        assert [b["frame_id"] for b in bodies] == [1, 2, 3]
        assert len({b["message_id"] for b in bodies}) == 3
        # the same image gives the same counts: one retained state message, not three
        states = sub.wait_count(f"{BASE}/state/cam1", 1)
        validator("state").validate(states[0].json())
        counts = states[0].json()["counts"]
        expected: dict[str, int] = {}
        for p in bodies[0]["predictions"]:
            expected[p["class"]] = expected.get(p["class"], 0) + 1
        assert counts == expected and states[0].json()["total"] == len(bodies[0]["predictions"])
        time.sleep(0.2)
        assert len(sub.on(f"{BASE}/state/cam1")) == 1
    finally:
        runtime.stop()
    sub.wait_for(lambda ms: ms[-1].topic == f"{BASE}/status" and ms[-1].payload == b"stopped")
    sub.close()
    # a new subscriber sees the retained state at once: stopped, and the last counts
    late = Subscriber(broker.port, [f"{BASE}/status", f"{BASE}/state/#"], client_id="late", persistent=False)
    got = late.wait_for(lambda ms: len(ms) >= 2)
    assert {(m.topic, m.retain) for m in got} == {(f"{BASE}/status", True), (f"{BASE}/state/cam1", True)}
    assert next(m for m in got if m.topic.endswith("status")).payload == b"stopped"
    late.close()
