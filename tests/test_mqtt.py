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
from helpers import circle_video, needs_openssl

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
    from edge_agent.params import InferenceParams

    loaded, _ = runtime.inference.model("shapes/1")
    for _ in range(n):
        runtime.inference.infer(loaded, [image], InferenceParams(), source=source)


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
            assert body["source_id"] == "cam1"
            assert body["model_id"] == "shapes/1"
            assert body["device_id"] == DEVICE
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
        assert counts == expected
        assert states[0].json()["total"] == len(bodies[0]["predictions"])
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


def _first_occurrences(messages: list[Any]) -> list[dict[str, Any]]:
    """Bodies in arrival order, a message sent twice (after a reconnect) counted once."""
    seen: set[str] = set()
    out = []
    for m in messages:
        body = m.json()
        if body["message_id"] not in seen:
            seen.add(body["message_id"])
            out.append(body)
    return out


def test_a_broker_outage_loses_nothing_and_keeps_the_order(tmp_path: Path, broker: Mosquitto,
                                                            sample: np.ndarray) -> None:
    sub = Subscriber(broker.port, [f"{BASE}/predictions/#"], client_id="outage-subscriber")
    runtime = make_runtime(tmp_path, broker.port)
    runtime.start()
    try:
        wait_connected(runtime)
        stop_producing = threading.Event()
        produced = [0]

        def produce() -> None:  # a steady stream, as a pipeline would make, across the outage
            while not stop_producing.is_set():
                infer(runtime, sample)
                produced[0] += 1
                time.sleep(0.01)

        producer = threading.Thread(target=produce)
        producer.start()
        sub.wait_count(f"{BASE}/predictions/cam1", 10)
        broker.stop()
        at_stop = produced[0]
        deadline = time.monotonic() + 10
        while runtime.bridge.snapshot()["outbox_depth"] < 20:  # stored on disk while the broker is away
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert not runtime.bridge.snapshot()["connected"]
        assert produced[0] > at_stop
        broker.start()
        time.sleep(0.5)
        stop_producing.set()
        producer.join()
        total = produced[0]
        messages = sub.wait_count(f"{BASE}/predictions/cam1", total, timeout=30)
        bodies = _first_occurrences(messages)
        assert [b["frame_id"] for b in bodies] == list(range(1, total + 1))
        deadline = time.monotonic() + 10
        while runtime.bridge.snapshot()["outbox_depth"]:  # every PUBACK deleted its row
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert runtime.bridge.snapshot()["connects"] == 2
    finally:
        runtime.stop()
        sub.close()


def test_a_full_outbox_drops_the_oldest_predictions_and_counts_them(tmp_path: Path, broker: Mosquitto,
                                                                     sample: np.ndarray) -> None:
    from edge_agent.mqtt.outbox import Message

    Subscriber(broker.port, [f"{BASE}/#"], client_id="bounds-subscriber").close()  # its session waits
    broker.stop()  # the broker is away from the start
    runtime = make_runtime(tmp_path, broker.port, outbox_max_messages=10, telemetry_interval_s=0.2)
    runtime.start()
    try:
        runtime.bridge.submit(Message(f"{BASE}/custom", b'{"keep": true}', qos=1))  # not a prediction
        infer(runtime, sample, n=25)
        deadline = time.monotonic() + 10
        while runtime.bridge.snapshot()["dropped"]["outbox_full"] < 16:
            assert time.monotonic() < deadline, runtime.bridge.snapshot()
            time.sleep(0.02)
        assert runtime.bridge.snapshot()["outbox_depth"] == 10
        broker.start()
        sub = Subscriber(broker.port, [f"{BASE}/#"], client_id="bounds-subscriber")
        got = sub.wait_for(lambda ms: sum("/predictions/" in m.topic for m in ms) >= 9
                           and any(m.topic.endswith("/telemetry") for m in ms))
        body = next(m for m in got if m.topic.endswith("/telemetry")).json()
        validator("telemetry").validate(body)
        assert body["mqtt"]["dropped"] == {"outbox_full": 16, "handoff_full": 0}
        from prometheus_client.parser import text_string_to_metric_families

        samples = {(s.name, s.labels.get("reason")): s.value
                   for f in text_string_to_metric_families(runtime.metrics.render().decode()) for s in f.samples}
        assert samples[("edge_agent_mqtt_dropped_total", "outbox_full")] == 16
        sub.close()
    finally:
        runtime.stop()
    # what was kept went out: the custom message and the newest nine predictions, in order
    kept = [m for m in got if m.topic in (f"{BASE}/custom", f"{BASE}/predictions/cam1")]
    assert kept[0].topic == f"{BASE}/custom"
    assert [b["frame_id"] for b in _first_occurrences(kept[1:])] == list(range(17, 26))


def test_telemetry_reports_models_sources_and_the_system(tmp_path: Path, broker: Mosquitto,
                                                         sample: np.ndarray) -> None:
    sub = Subscriber(broker.port, [f"{BASE}/telemetry"])
    runtime = make_runtime(tmp_path, broker.port, telemetry_interval_s=0.3)
    runtime.start()
    try:
        wait_connected(runtime)
        infer(runtime, sample, n=4)
        check = validator("telemetry")

        def has_activity(ms: list[Any]) -> bool:  # the four frames may span several reports
            bodies = [m.json() for m in ms]
            return sum(b["sources"].get("cam1", {}).get("frames", 0) for b in bodies) >= 4

        bodies = [m.json() for m in sub.wait_for(has_activity)]
        for body in bodies:
            check.validate(body)
        assert sum(b["sources"].get("cam1", {}).get("frames", 0) for b in bodies) == 4
        models = [b["models"]["shapes/1"] for b in bodies if "shapes/1" in b["models"]]
        assert sum(m["images"] for m in models) >= 4
        assert all(m["engine_ms_mean"] > 0 for m in models), [m["engine_ms_mean"] for m in models]
        system = bodies[-1]["system"]
        assert 0 < system["memory"]["available_bytes"] <= system["memory"]["total_bytes"]
        assert system["process_rss_bytes"] > 10 * 2**20
        assert bodies[-1]["mqtt"]["connected"] is True
    finally:
        runtime.stop()
        sub.close()


def test_jetson_gpu_and_thermal_zones_are_read_from_sysfs(tmp_path: Path) -> None:
    """No Jetson here: the same reader on a copy of an Orin's sysfs layout (JetPack 6)."""
    from edge_agent.telemetry import SystemStats

    sys_root = tmp_path / "sys"
    gpu = sys_root / "devices/platform/bus@0/17000000.gpu"
    gpu.mkdir(parents=True)
    (gpu / "load").write_text("437\n")
    freq = sys_root / "class/devfreq/17000000.gpu"
    freq.mkdir(parents=True)
    (freq / "cur_freq").write_text("624750000\n")
    for i, (kind, milli) in enumerate([("cpu-thermal", "48500"), ("gpu-thermal", "46000"), ("cpu-thermal", "47000")]):
        zone = sys_root / f"class/thermal/thermal_zone{i}"
        zone.mkdir(parents=True)
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(milli + "\n")
    stats = SystemStats(sys=sys_root)
    snap = stats.snapshot()
    assert snap["gpu"] == {"load_percent": 43.7, "frequency_hz": 624750000, "memory_shared_with_system": True}
    assert snap["temperatures_c"] == {"cpu-thermal": 48.5, "gpu-thermal": 46.0, "cpu-thermal.2": 47.0}
    schema = json.loads((Path(__file__).resolve().parents[1] / "edge_agent/mqtt/schemas/telemetry.schema.json")
                        .read_text())
    import jsonschema

    jsonschema.validate(snap, schema["properties"]["system"])
    assert "gpu" not in SystemStats(sys=tmp_path / "elsewhere").snapshot()  # not a Jetson: left out


def test_home_assistant_discovery_gives_a_sensor_per_class(tmp_path: Path, broker: Mosquitto,
                                                           sample: np.ndarray) -> None:
    import jinja2

    sub = Subscriber(broker.port, ["homeassistant/#", f"{BASE}/state/#"])
    runtime = make_runtime(tmp_path, broker.port, home_assistant=True)
    runtime.start()
    try:
        wait_connected(runtime)
        infer(runtime, sample)
        classes = runtime.inference.model("shapes/1")[0].model.manifest.class_names
        sub.wait_count("homeassistant/sensor/", len(classes) + 1)
        state = sub.wait_count(f"{BASE}/state/cam1", 1)[-1].json()
    finally:
        runtime.stop()
        sub.close()
    # retained: what Home Assistant finds when it starts after the device
    late = Subscriber(broker.port, ["homeassistant/#"], client_id="home-assistant", persistent=False)
    configs = late.wait_count("homeassistant/sensor/", len(classes) + 1)
    late.close()
    env = jinja2.Environment()
    seen = {}
    for m in configs:
        assert m.retain
        assert m.topic.startswith(f"homeassistant/sensor/{DEVICE}/")
        assert m.topic.endswith("/config")
        config = m.json()
        assert config["state_topic"] == f"{BASE}/state/cam1"
        assert config["availability"][0]["topic"] == f"{BASE}/status"
        assert config["device"]["identifiers"] == [f"edge-agent_{DEVICE}"]
        value = env.from_string(config["value_template"]).render(value_json=state)
        seen[config["name"]] = int(value)
    expected = {f"cam1 {c}": state["counts"].get(c, 0) for c in classes}
    expected["cam1 total"] = state["total"]
    assert seen == expected
    assert state["total"] > 0


def _v5_request(sub: Subscriber, name: str, payload: bytes | str, correlation: bytes) -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "client/replies"
    props.CorrelationData = correlation
    sub.publish(f"{BASE}/commands/{name}", payload, properties=props)


def test_commands_are_answered_with_their_correlation_and_bad_ones_with_errors(running: Any,
                                                                              broker: Mosquitto) -> None:
    wait_connected(running)
    check = validator("response")
    request_check = validator("command")
    # MQTT 5: response topic and correlation data
    client = Subscriber(broker.port, ["client/replies"], client_id="v5-client")
    request = {"model_id": "shapes/1"}
    request_check.validate(request)
    _v5_request(client, "load_model", json.dumps(request), b"corr-1")
    reply = client.wait_count("client/replies", 1, timeout=30)[0]
    body = reply.json()
    check.validate(body)
    assert reply.properties.CorrelationData == b"corr-1"
    assert body["ok"] is True
    assert body["command"] == "load_model"
    assert body["result"]["model_id"] == "shapes/1"
    assert "shapes/1" in [m.model_id for m in running.manager.loaded()]  # it happened
    _v5_request(client, "unload_model", b'{"model_id": "shapes/1"}', b"corr-2")
    body = client.wait_count("client/replies", 2)[1].json()
    assert body["ok"]
    assert body["result"]["unloaded"] is True
    assert not running.manager.loaded()
    client.close()

    # MQTT 3.1.1: the default response topic and a correlation_id in the payload
    old = Subscriber(broker.port, [f"{BASE}/responses/#"], client_id="v311-client", protocol=4)
    cases = [
        ("status", b'{"correlation_id": 7}', None),
        ("list_models", b"", None),
        ("status", b"not json", "invalid_json"),
        ("status", b"[1, 2]", "invalid_json"),
        ("load_model", b'{"correlation_id": "a"}', "invalid_command"),  # model_id missing
        ("load_model", b'{"model_id": "shapes/1", "colour": 1}', "invalid_command"),  # unknown field
        ("load_model", b'{"model_id": "nope/9"}', "model_not_found"),
        ("reboot", b"{}", "unknown_command"),
        ("status", b"x" * (70 * 1024), "too_large"),
        ("status", b'{"correlation_id": {"a": 1}}', "invalid_command"),
    ]
    for name, payload, _ in cases:
        old.publish(f"{BASE}/commands/{name}", payload)
    replies = old.wait_count(f"{BASE}/responses/", len(cases), timeout=30)
    # Commands of one lane run one at a time, in order (load_model is in the downloads lane): pair each
    # case with the replies to its command name, in order.
    by_name: dict[str, list[Any]] = {}
    for reply in replies:
        by_name.setdefault(reply.topic.rsplit("/", 1)[-1], []).append(reply)
    taken: dict[str, int] = {}
    ordered = []
    for name, _payload, _error in cases:
        ordered.append(by_name[name][taken.get(name, 0)])
        taken[name] = taken.get(name, 0) + 1
    for (name, payload, error), reply in zip(cases, ordered):
        body = reply.json()
        check.validate(body)
        assert reply.topic == f"{BASE}/responses/{name}"
        assert body["command"] == name
        if error is None:
            assert body["ok"] is True, body
        else:
            assert body["ok"] is False, (payload[:40], body)
            assert body["error"]["type"] == error, (payload[:40], body)
    assert ordered[0].json()["correlation_id"] == 7
    assert ordered[0].json()["result"]["ready"] is True
    assert {m["model_id"] for m in ordered[1].json()["result"]["models"]} >= {"shapes/1", "shapes-cls/1"}
    assert ordered[4].json()["correlation_id"] == "a"
    assert "model_id" in ordered[4].json()["error"]["message"]
    assert "colour" in ordered[5].json()["error"]["message"]
    assert "load_model" in ordered[7].json()["error"]["message"]  # lists the commands there are
    old.close()
    assert running.bridge.alive()
    assert running.bridge.snapshot()["connected"]


def test_mqtt_3_1_1_only(tmp_path: Path, broker: Mosquitto, sample: np.ndarray) -> None:
    sub = Subscriber(broker.port, [f"{BASE}/#"], protocol=4)
    runtime = make_runtime(tmp_path, broker.port, protocol="3.1.1")
    runtime.start()
    try:
        wait_connected(runtime)
        assert runtime.bridge.snapshot()["protocol"] == "3.1.1"
        infer(runtime, sample)
        validator("prediction").validate(sub.wait_count(f"{BASE}/predictions/cam1", 1)[0].json())
    finally:
        runtime.stop()
        sub.close()


class RefuseMqtt5:
    """A loopback TCP proxy to the broker that answers an MQTT 5 CONNECT as a 3.1.1-only broker does
    (CONNACK, return code 1: unacceptable protocol version) and passes everything else through."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.refused = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        first = conn.recv(65536)
        # CONNECT: fixed header, remaining length, then "\0\4MQTT" and the protocol level byte
        level = first[first.index(b"MQTT") + 4] if b"MQTT" in first else None
        if level == 5:
            self.refused += 1
            conn.sendall(b"\x20\x02\x00\x01")
            conn.close()
            return
        up = socket.create_connection(("127.0.0.1", self.upstream))
        up.sendall(first)

        def pipe(a: socket.socket, b: socket.socket) -> None:
            try:
                while data := a.recv(65536):
                    b.sendall(data)
            except OSError:
                pass
            finally:
                for s in (a, b):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        threading.Thread(target=pipe, args=(conn, up), daemon=True).start()
        threading.Thread(target=pipe, args=(up, conn), daemon=True).start()

    def close(self) -> None:
        self.server.close()


def test_auto_falls_back_to_3_1_1_when_the_broker_refuses_mqtt_5(tmp_path: Path, broker: Mosquitto,
                                                                 sample: np.ndarray) -> None:
    proxy = RefuseMqtt5(broker.port)
    sub = Subscriber(broker.port, [f"{BASE}/#"])
    runtime = make_runtime(tmp_path, proxy.port)  # protocol = "auto"
    runtime.start()
    try:
        wait_connected(runtime)
        assert proxy.refused == 1
        assert runtime.bridge.snapshot()["protocol"] == "3.1.1"
        infer(runtime, sample)
        sub.wait_count(f"{BASE}/predictions/cam1", 1)
        statuses = [m.payload for m in sub.on(f"{BASE}/status")]
        assert b"online" in statuses, statuses
    finally:
        runtime.stop()
        sub.close()
        proxy.close()


def _make_certificates(folder: Path) -> dict[str, Path]:
    """A CA, a broker certificate for 127.0.0.1 and a client certificate, made with openssl."""
    import subprocess

    folder.mkdir(parents=True, exist_ok=True)
    p = {n: folder / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem", "client.key",
                                 "client.csr", "client.pem", "san.cnf")}

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test CA",
        "-keyout", str(p["ca.key"]), "-out", str(p["ca.pem"]))
    p["san.cnf"].write_text("subjectAltName=IP:127.0.0.1\n")
    for who, cn in (("server", "127.0.0.1"), ("client", "edge-device")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", str(p[f"{who}.key"]),
            "-out", str(p[f"{who}.csr"]))
        extra = ["-extfile", str(p["san.cnf"])] if who == "server" else []
        run("x509", "-req", "-in", str(p[f"{who}.csr"]), "-CA", str(p["ca.pem"]), "-CAkey", str(p["ca.key"]),
            "-CAcreateserial", "-days", "2", "-out", str(p[f"{who}.pem"]), *extra)
    return p


@needs_openssl
def test_tls_with_a_client_certificate_and_a_password(tmp_path: Path, sample: np.ndarray) -> None:
    import subprocess

    certs = _make_certificates(tmp_path / "certs")
    passwords = tmp_path / "broker" / "passwords"
    passwords.parent.mkdir(parents=True)
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "edge-device", "s3cret"], check=True)
    passwords.chmod(0o600)
    tls_port = __import__("servers").free_port()
    broker = Mosquitto(tmp_path / "broker", extra=(
        f"listener {tls_port} 127.0.0.1\ncafile {certs['ca.pem']}\ncertfile {certs['server.pem']}\n"
        f"keyfile {certs['server.key']}\nrequire_certificate true\npassword_file {passwords}\n"
        "per_listener_settings false\n")).start()
    sub = Subscriber(broker.port, [f"{BASE}/#"])  # the plain listener of the same broker
    tls = {"tls_ca_file": certs["ca.pem"], "tls_cert_file": certs["client.pem"], "tls_key_file": certs["client.key"]}
    wrong = make_runtime(tmp_path / "wrong", tls_port, username="edge-device", password="wrong", **tls)
    runtime = make_runtime(tmp_path, tls_port, username="edge-device", password="s3cret", **tls)
    wrong.start()
    runtime.start()
    try:
        wait_connected(runtime)
        infer(runtime, sample)
        validator("prediction").validate(sub.wait_count(f"{BASE}/predictions/cam1", 1)[0].json())
        assert not wrong.bridge.snapshot()["connected"]
        assert "refused" in wrong.bridge.stats.last_error or "Not authorized" in wrong.bridge.stats.last_error
    finally:
        runtime.stop()
        wrong.stop()
        sub.close()
        broker.stop()


def test_a_full_hand_off_drops_instead_of_blocking_and_a_failing_subscriber_is_isolated(tmp_path: Path) -> None:
    from edge_agent.events import EventBus
    from edge_agent.mqtt.bridge import Bridge
    from edge_agent.mqtt.outbox import Message
    from edge_agent.settings import MqttSettings

    bridge = Bridge(MqttSettings(enabled=True, handoff_size=2, device_id=DEVICE), tmp_path, "cid")  # not started
    assert bridge.submit(Message("a", b"1"))
    assert bridge.submit(Message("a", b"2"))
    assert bridge.submit(Message("a", b"3")) is False  # the producer goes on at once
    assert bridge.snapshot()["dropped"]["handoff_full"] == 1

    bus = EventBus()
    got: list[Any] = []

    def broken(event: Any) -> None:
        raise RuntimeError("subscriber bug")

    bus.subscribe(broken)
    unsubscribe = bus.subscribe(got.append)
    bus.publish("event")  # type: ignore[arg-type]
    assert got == ["event"]
    unsubscribe()
    bus.publish("again")  # type: ignore[arg-type]
    assert got == ["event"]
    assert bus.active
    assert [bus.next_frame_id("http") for _ in range(3)] == [1, 2, 3]
    assert bus.next_frame_id("cam") == 1


def test_a_pipeline_started_over_mqtt_publishes_every_frame(running: Any, broker: Mosquitto,
                                                            tmp_path: Path) -> None:
    wait_connected(running)
    video = tmp_path / "moving.mp4"
    circle_video(video, frames=12)
    client = Subscriber(broker.port, [f"{BASE}/responses/#", f"{BASE}/predictions/#"], client_id="pipe-client")
    request = {"model_id": "shapes/1", "video_reference": str(video), "pipeline_id": "cam-door",
               "confidence": 0.5, "correlation_id": "p1"}
    validator("command").validate(request)
    client.publish(f"{BASE}/commands/start_pipeline", json.dumps(request))
    reply = client.wait_count(f"{BASE}/responses/start_pipeline", 1)[0].json()
    validator("response").validate(reply)
    assert reply["ok"]
    assert reply["result"]["pipeline_id"] == "cam-door"
    assert reply["correlation_id"] == "p1"
    predictions = client.wait_count(f"{BASE}/predictions/cam-door", 12, timeout=60)
    bodies = [m.json() for m in predictions]
    assert [b["frame_id"] for b in bodies] == list(range(1, 13))
    for b in bodies:
        assert b["source_id"] == "cam-door"
        assert b["captured_at"] <= b["inferred_at"]
    client.publish(f"{BASE}/commands/list_pipelines", b"{}")
    client.publish(f"{BASE}/commands/start_pipeline", b'{"model_id": "shapes/1"}')  # no video_reference
    client.publish(f"{BASE}/commands/stop_pipeline", b'{"pipeline_id": "cam-door"}')
    client.publish(f"{BASE}/commands/stop_pipeline", b'{"pipeline_id": "cam-door"}')  # gone now
    listed = client.wait_count(f"{BASE}/responses/list_pipelines", 1)[0].json()
    assert [p["pipeline_id"] for p in listed["result"]["pipelines"]] == ["cam-door"]
    assert listed["result"]["pipelines"][0]["state"] == "finished"
    starts = client.wait_count(f"{BASE}/responses/start_pipeline", 2)
    assert starts[1].json()["error"]["type"] == "invalid_command"
    assert "video_reference" in starts[1].json()["error"]["message"]
    stops = client.wait_count(f"{BASE}/responses/stop_pipeline", 2)
    assert stops[0].json()["ok"]
    assert stops[1].json()["error"]["type"] == "pipeline_not_found"
    client.close()


def test_the_watchdog_question_names_a_dead_bridge(tmp_path: Path, broker: Mosquitto) -> None:
    runtime = make_runtime(tmp_path, broker.port)
    assert runtime.healthy() == "the MQTT bridge thread has stopped"  # built, never started
    runtime.start()
    try:
        wait_connected(runtime)
        assert runtime.healthy() is None
    finally:
        runtime.stop()
    assert runtime.healthy() == "the MQTT bridge thread has stopped"
