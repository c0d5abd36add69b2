"""The daemon under a (test-owned) systemd notify socket: READY=1 only once really serving, periodic
WATCHDOG=1 from a working runtime, STATUS= lines, and on SIGTERM: STOPPING=1, in-flight requests
finished, exit 0. The plain datagram protocol is what runs here (systemd-python is not installed)."""

from __future__ import annotations

import base64
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import pytest
import requests

from edge_agent.demo.shapes import generate_scene
from edge_agent.systemd import JournalFormatter, Notifier
from servers import running_server


class NotifySocket:
    """A datagram socket like systemd's, recording every message with its arrival time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def wait_for(self, key: str, value: str | None = None, timeout: float = 60.0) -> tuple[float, dict[str, str]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, fields in list(self.messages):
                if key in fields and (value is None or fields[key] == value):
                    return t, fields
            time.sleep(0.02)
        raise AssertionError(f"no {key}={value} in {self.messages}")

    def count(self, key: str) -> int:
        return sum(key in f for _, f in self.messages)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture()
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(Path(f"/tmp/ea-notify-{os.getpid()}-{time.monotonic_ns()}.sock"))  # short AF_UNIX path
    yield sock
    sock.close()
    sock.path.unlink(missing_ok=True)


def test_ready_watchdog_status_and_a_clean_stop(tmp_path: Path, notify_socket: NotifySocket) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[server]\nmax_batch_images = 16\n")
    env = {"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "1000000", "EDGE_AGENT_CONFIG": str(config)}
    settings = {"preload_models": "shapes-seg/1"}
    with running_server(tmp_path / "state", settings, env_extra=env, wait_ready=False) as server:
        _, ready = notify_socket.wait_for("READY", "1")
        # READY came only once the port answers and the preloaded model is loaded
        assert requests.get(f"{server.url}/readiness", timeout=10).status_code == 200
        assert "shapes-seg/1" in ready["STATUS"]
        t_ready = time.monotonic()
        while notify_socket.count("WATCHDOG") < 3:
            assert time.monotonic() - t_ready < 10, notify_socket.messages
            time.sleep(0.05)

        # SIGHUP (systemctl reload): the file is read again, RELOADING=1, a new worker, READY=1
        image = generate_scene(5, size=(480, 640)).image
        b64 = base64.b64encode(cv2.imencode(".jpg", image)[1].tobytes()).decode()
        two = {"model_id": "shapes-seg/1", "image": [{"type": "base64", "value": b64}] * 2}

        def reload_and_wait() -> None:
            readies = notify_socket.count("READY")
            os.kill(server.process.pid, signal.SIGHUP)
            deadline = time.monotonic() + 60
            while notify_socket.count("READY") == readies:
                assert time.monotonic() < deadline, notify_socket.messages
                time.sleep(0.05)

        config.write_text("[server]\nmax_batch_images = 1\n")
        reload_and_wait()
        assert notify_socket.count("RELOADING") == 1
        assert notify_socket.count("STOPPING") == 0
        r = requests.post(f"{server.url}/infer/instance_segmentation", json=two, timeout=60)
        assert r.status_code == 400
        assert "at most 1 images" in r.json()["message"]
        config.write_text("[server]\nmax_batch_images = 0\n")  # refused; the running one stays
        reload_and_wait()
        assert "configuration refused" in server.output()
        assert "server.max_batch_images" in server.output()
        assert requests.post(f"{server.url}/infer/instance_segmentation", json=two, timeout=60).status_code == 400
        config.write_text("[server]\nmax_batch_images = 16\n")
        reload_and_wait()
        assert requests.get(f"{server.url}/readiness", timeout=10).status_code == 200

        # a request still running when SIGTERM arrives is answered, then the daemon exits 0
        body = {"model_id": "shapes-seg/1", "image": [{"type": "base64", "value": b64}] * 16}
        result: dict[str, Any] = {}

        def slow_request() -> None:
            r = requests.post(f"{server.url}/infer/instance_segmentation", json=body, timeout=60)
            result["status"], result["n"] = r.status_code, len(r.json())

        client = threading.Thread(target=slow_request)
        client.start()
        time.sleep(0.3)  # the request is in the worker
        os.kill(server.process.pid, signal.SIGTERM)
        t_stop = time.monotonic()
        notify_socket.wait_for("STOPPING", "1", timeout=20)
        client.join(60)
        assert result == {"status": 200, "n": 16}
        assert server.process.wait(30) == 0
        assert time.monotonic() - t_stop < 25  # graceful_timeout_s (20) bounds it
        assert "worker stopped" in server.output()


def test_without_a_notify_socket_nothing_is_sent(tmp_path: Path) -> None:
    assert not Notifier(None).enabled
    assert Notifier(None).notify("READY=1") is False


def test_notifier_speaks_the_datagram_protocol(notify_socket: NotifySocket) -> None:
    n = Notifier(str(notify_socket.path))
    assert n.enabled
    assert n.notify("STATUS=hello", "WATCHDOG=1")
    _, fields = notify_socket.wait_for("STATUS", "hello", timeout=5)
    assert fields["WATCHDOG"] == "1"
    gone = Notifier(str(notify_socket.path.with_suffix(".gone")))
    assert gone.notify("READY=1") is False  # a missing socket is logged, never fatal


def test_journal_lines_carry_the_priority() -> None:
    record = logging.LogRecord("edge_agent.x", logging.ERROR, __file__, 1, "boom\nsecond line", None, None)
    assert JournalFormatter().format(record) == "<3>edge_agent.x: boom\n<3>second line"


def test_watchdog_stops_pinging_when_inference_fails(tmp_path: Path, notify_socket: NotifySocket) -> None:
    """Monitor over a real runtime and HTTP listener (werkzeug, in-process): pings while a loaded model
    infers; once its engine is broken, the pings stop (systemd would then restart the service)."""
    from werkzeug.serving import make_server

    from edge_agent.http.app import create_app
    from edge_agent.runtime import Runtime
    from edge_agent.settings import load_settings
    from edge_agent.systemd import Monitor
    from servers import free_port

    port = free_port()
    settings = load_settings(None, {"EDGE_AGENT_CONFIG": "", "EDGE_AGENT_STATE_DIR": str(tmp_path)},
                             overrides={"server.host": "127.0.0.1", "server.port": port})
    runtime = Runtime(settings)
    httpd = make_server("127.0.0.1", port, create_app(runtime.http_services()), threaded=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    runtime.start()
    loaded, _ = runtime.manager.get("shapes/1")
    monitor = Monitor(runtime, settings.server, Notifier(str(notify_socket.path)), watchdog_usec=200_000)
    monitor.start()
    try:
        notify_socket.wait_for("READY", "1", timeout=10)
        deadline = time.monotonic() + 10
        while notify_socket.count("WATCHDOG") < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        loaded.model.engine.close()  # the engine is gone: inference raises from now on
        time.sleep(0.3)
        before = notify_socket.count("WATCHDOG")
        time.sleep(1.0)
        assert notify_socket.count("WATCHDOG") == before
    finally:
        monitor.stop()
        httpd.shutdown()
