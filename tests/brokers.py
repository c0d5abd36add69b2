"""A real MQTT broker (Debian's mosquitto) on a free loopback port, and a subscriber that records what
it receives, for the bridge's tests."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servers import free_port


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if Path(p).exists()), None)


class Mosquitto:
    """``mosquitto -c <conf>`` on 127.0.0.1:<port>, with persistence in its folder (a restart keeps
    sessions and retained messages, as a production broker would). ``stop`` is a clean shutdown
    (SIGTERM: it saves its database), ``start`` again reuses the port."""

    def __init__(self, folder: Path, port: int | None = None, extra: str = "") -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError("mosquitto is not installed (.ci/run installs it)")
        self.binary = binary
        self.folder = folder
        self.port = port or free_port()
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        self.log = folder / "mosquitto.log"

    def config(self) -> str:
        # As root, mosquitto would switch to the 'mosquitto' user, who cannot write the test's folder.
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name}\n" if os.geteuid() == 0 else ""
        return (f"{user}listener {self.port} 127.0.0.1\n"
                f"persistence true\npersistence_location {self.folder}/\n"
                "autosave_interval 0\n"  # save on shutdown only
                f"allow_anonymous true\nlog_dest stderr\nlog_type error\nlog_type warning\n{self.extra}")

    def start(self, timeout: float = 10.0) -> Mosquitto:
        conf = self.folder / "mosquitto.conf"
        conf.write_text(self.config())
        out = open(self.log, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen([self.binary, "-c", str(conf)], stdout=out, stderr=out)
        out.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mosquitto does not listen on {self.port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    properties: Any
    at: float

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """A paho client (its own network thread) recording every message on ``topics``. ``persistent``:
    a fixed session that the broker keeps while the subscriber is away (QoS 1 messages wait for it)."""

    def __init__(self, port: int, topics: list[str], client_id: str = "test-subscriber", protocol: int = 5,
                 persistent: bool = True) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self.connected = threading.Event()
        v5 = protocol == 5
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
                                  clean_session=None if v5 else not persistent)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.topics = topics

        def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
            if not reason.is_failure:
                for topic in self.topics:
                    client.subscribe(topic, qos=1)
                self.connected.set()

        def on_message(client: Any, userdata: Any, msg: Any) -> None:
            with self._cond:
                self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain),
                                              getattr(msg, "properties", None), time.monotonic()))
                self._cond.notify_all()

        self.client.on_connect = on_connect
        self.client.on_message = on_message
        self.client.on_disconnect = lambda *a: self.connected.clear()
        kwargs: dict[str, Any] = {}
        if v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600 if persistent else 0
            kwargs = {"clean_start": not persistent, "properties": props}
        self.client.connect("127.0.0.1", port, 30, **kwargs)
        self.client.loop_start()
        if not self.connected.wait(10):
            raise RuntimeError("the subscriber could not connect")
        time.sleep(0.2)  # the SUBACKs

    def on(self, topic_prefix: str) -> list[Received]:
        with self._cond:
            return [m for m in self.messages if m.topic.startswith(topic_prefix)]

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    last = [(m.topic, m.payload[:80]) for m in self.messages[-5:]]
                    raise AssertionError(f"timed out; received {len(self.messages)}, the last: {last}")
                self._cond.wait(left)
            return list(self.messages)

    def wait_count(self, topic_prefix: str, n: int, timeout: float = 10.0) -> list[Received]:
        self.wait_for(lambda ms: sum(m.topic.startswith(topic_prefix) for m in ms) >= n, timeout)
        return self.on(topic_prefix)

    def publish(self, topic: str, payload: bytes | str, properties: Any = None) -> None:
        self.client.publish(topic, payload, qos=1, properties=properties).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def validator(kind: str) -> Any:
    """A JSON Schema validator for one payload kind of edge_agent/mqtt/schemas (formats checked)."""
    import jsonschema

    from edge_agent.mqtt.topics import schema_path

    schema = json.loads(schema_path(kind).read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)
