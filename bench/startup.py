"""Daemon start-up and idle footprint: ``edge-agent serve --preload shapes/1`` from process start to
systemd's READY=1 (sent once the port answers and the model is loaded), median of N runs, and the
idle RSS of the gunicorn master and worker once ready. The baseline, measured in the same run, is a
bare Python process that imports onnxruntime and loads the same model into an InferenceSession.

    python bench/startup.py [--runs 5]
"""

# ruff: noqa: E402
from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ONNX = ROOT / "edge_agent/demo/store/shapes/1/model.onnx"
BARE = "import onnxruntime as ort, sys; ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def daemon_run(tmp: Path) -> tuple[float, int, int]:
    """Seconds to READY=1, and the master's and worker's RSS (kB) once ready."""
    sock_path = tmp / f"notify-{time.monotonic_ns()}.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(60)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env.update(EDGE_AGENT_CONFIG="", EDGE_AGENT_STATE_DIR=str(tmp / "state"), NOTIFY_SOCKET=str(sock_path))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "edge_agent", "serve", "--host", "127.0.0.1", "--port",
                             str(_free_port()), "--preload", "shapes/1"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while True:
            message = sock.recv(4096).decode()
            if "READY=1" in message.splitlines():
                ready = time.perf_counter() - t0
                break
        time.sleep(2.0)  # settle
        worker = _children(proc.pid)[0]
        return ready, _rss_kb(proc.pid), _rss_kb(worker)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        sock.close()


def bare_run() -> tuple[float, int]:
    t0 = time.perf_counter()
    code = BARE + "; import time; print(open('/proc/self/status').read().split('VmRSS:')[1].split()[0])"
    out = subprocess.run([sys.executable, "-c", code, str(ONNX)], capture_output=True, text=True, check=True)
    return time.perf_counter() - t0, int(out.stdout.strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edge-agent-startup-") as tmp:
        daemon, bare = [], []
        for _ in range(args.runs):  # alternating, so that drift in machine load hits both
            bare.append(bare_run())
            daemon.append(daemon_run(Path(tmp)))
    ready = statistics.median(r for r, _, _ in daemon)
    bare_s = statistics.median(b for b, _ in bare)
    master = statistics.median(m for _, m, _ in daemon) / 1024
    worker = statistics.median(w for _, _, w in daemon) / 1024
    bare_rss = statistics.median(r for _, r in bare) / 1024
    print(f"{'figure':44s} {'daemon':>10s} {'bare ORT':>10s} {'ratio':>7s}")
    print(f"{'start to READY=1 / to session loaded (median)':44s} {ready:9.2f}s {bare_s:9.2f}s {ready / bare_s:6.2f}x")
    print(f"{'idle RSS worker, model loaded':44s} {worker:8.1f}MB {bare_rss:8.1f}MB {worker / bare_rss:6.2f}x")
    print(f"{'idle RSS master':44s} {master:8.1f}MB")
    print(f"runs: daemon READY {[round(r, 2) for r, _, _ in daemon]} s; bare {[round(b, 2) for b, _ in bare]} s")


if __name__ == "__main__":
    main()
