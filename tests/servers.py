"""Starting the real daemon (``edge-agent serve``, gunicorn) on a free loopback port for a test."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    port: int
    state_dir: Path
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _env(state_dir: Path, settings: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env["EDGE_AGENT_STATE_DIR"] = str(state_dir)
    env["EDGE_AGENT_CONFIG"] = ""  # no configuration file: only what the test sets
    env["EDGE_AGENT_ENGINE__INTRA_OP_THREADS"] = "1"  # several servers may run side by side in a test run
    env["EDGE_AGENT_MODELS__OFFLINE"] = "true"  # never Roboflow's real API (env_extra may point at a fake)
    for key, value in settings.items():
        env[f"EDGE_AGENT_SERVER__{key.upper()}"] = value
    return env


@contextmanager
def running_server(state_dir: Path, settings: Mapping[str, str] | None = None, args: tuple[str, ...] = (),
                   env_extra: Mapping[str, str] | None = None, wait_ready: bool = True,
                   timeout: float = 60.0) -> Iterator[Server]:
    """``edge-agent serve`` on 127.0.0.1:<free port>; stopped with SIGTERM (then SIGKILL) afterwards."""
    port = free_port()
    state_dir.mkdir(parents=True, exist_ok=True)
    log = state_dir / f"server-{port}.log"
    env = _env(state_dir, settings or {})
    env.update(env_extra or {})
    cmd = [sys.executable, "-m", "edge_agent", "serve", "--host", "127.0.0.1", "--port", str(port), *args]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", port, state_dir, proc, log)
    try:
        deadline = time.monotonic() + timeout
        path = "/readiness" if wait_ready else "/healthz"
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{server.output()}")
            try:
                with urllib.request.urlopen(server.url + path, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after {timeout} s:\n{server.output()}")
            time.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
