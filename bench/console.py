"""What an open console costs the API: inference throughput with the console's polling vs without.

One ``edge-agent serve`` (API key set, shapes/1 preloaded) on a free 127.0.0.1 port, its state in a
temporary folder. --clients threads each POST the bundled sample JPEG (base64 JSON) to
/infer/object_detection on a keep-alive connection as fast as the server answers. Rounds of --duration
seconds alternate "closed" (nothing else) and "open": a thread makes the calls the console's overview
makes, GET /console/status every 2 s (console.js POLL_MS) with the key, as a browser tab would (the
browser itself runs on another machine; its rendering is not the device's cost). --poll-s shortens the
interval to see how the cost grows with it. Printed: images/s per round, the median of each, and the
cost (1 - open/closed) from the medians; the goal is under 2 %. On a busy or shared machine the rounds'
spread is larger than that: the figure that holds there is the estimate from the route's own cost, the
median time of a /console/status answer (X-Processing-Time, 50 calls on an idle server, and the CPU the
worker used for them from /proc) over the poll interval: the share of one core the open tab takes.

    python bench/console.py [--clients 2] [--duration 10] [--rounds 6] [--poll-s 2.0]
"""

# ruff: noqa: E402
from __future__ import annotations

import os
import sys

# bench/http.py sits beside this file: keep this folder off the import path (``import http.client``).
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "tests"))  # servers.running_server

import argparse
import base64
import http.client
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from servers import running_server

ROOT = Path(_HERE).parent
KEY = "bench-console-key"
SAMPLE = ROOT / "edge_agent" / "demo" / "sample.jpg"


def _client(url: str, body: bytes, stop: threading.Event, counts: list[int], index: int) -> None:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    while not stop.is_set():
        conn.request("POST", "/infer/object_detection", body=body, headers=headers)
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            raise RuntimeError(f"inference answered {r.status}")
        counts[index] += 1
    conn.close()


def _console(url: str, stop: threading.Event, poll_s: float, calls: list[int]) -> None:
    """The overview tab: GET /console/status every ``poll_s`` seconds, on its own connection."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    while not stop.wait(poll_s):
        conn.request("GET", "/console/status", headers={"Authorization": f"Bearer {KEY}"})
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            raise RuntimeError(f"/console/status answered {r.status}")
        calls[0] += 1
    conn.close()


def _round(url: str, body: bytes, clients: int, duration: float, poll_s: float | None) -> tuple[float, int]:
    stop = threading.Event()
    counts = [0] * clients
    calls = [0]
    threads = [threading.Thread(target=_client, args=(url, body, stop, counts, i), daemon=True)
               for i in range(clients)]
    if poll_s is not None:
        threads.append(threading.Thread(target=_console, args=(url, stop, poll_s, calls), daemon=True))
    start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(duration)
    stop.set()
    for t in threads:
        t.join(60)
    return sum(counts) / (time.perf_counter() - start), calls[0]


def _status_cost(url: str, pid: int, calls: int = 50) -> tuple[float, float]:
    """Median X-Processing-Time of /console/status and the worker process tree's CPU seconds per call."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    times = []
    cpu0 = _cpu_seconds(pid)
    for _ in range(calls):
        conn.request("GET", "/console/status", headers={"Authorization": f"Bearer {KEY}"})
        r = conn.getresponse()
        r.read()
        times.append(float(r.headers["X-Processing-Time"]))
    cpu = (_cpu_seconds(pid) - cpu0) / calls
    conn.close()
    return statistics.median(times), cpu


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its children's threads (the gunicorn worker)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if proc.name == str(pid) or fields[1] == str(pid):  # the master, or a child of it (the worker)
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per round")
    p.add_argument("--rounds", type=int, default=6, help="rounds of each kind (closed, open), alternating")
    p.add_argument("--poll-s", type=float, default=2.0, help="the console's poll interval (console.js: 2 s)")
    args = p.parse_args()
    body = json.dumps({"model_id": "shapes/1", "image": {"type": "base64",
                                                         "value": base64.b64encode(SAMPLE.read_bytes()).decode()}})
    settings = {"api_key": KEY, "preload_models": "shapes/1", "access_log": "false"}
    with tempfile.TemporaryDirectory(prefix="bench-console.") as state, running_server(Path(state), settings) as server:
        _round(server.url, body.encode(), args.clients, 2.0, None)  # warm-up
        answer_s, cpu_s = _status_cost(server.url, server.process.pid)
        closed, opened, polls = [], [], 0
        for i in range(args.rounds):
            for kind in (("closed", "open") if i % 2 == 0 else ("open", "closed")):
                rate, calls = _round(server.url, body.encode(), args.clients, args.duration,
                                     args.poll_s if kind == "open" else None)
                (opened if kind == "open" else closed).append(rate)
                polls += calls
                print(f"round {i + 1} {kind:6s} {rate:8.1f} images/s" + (f"  ({calls} status calls)" if calls else ""))
    c, o = statistics.median(closed), statistics.median(opened)
    print(f"\nclosed median {c:.1f} images/s, open median {o:.1f} images/s ({args.clients} clients, "
          f"{args.rounds} x {args.duration:.0f} s each, /console/status every {args.poll_s} s, {polls} calls)")
    print(f"cost of an open console: {100 * (1 - o / c):+.2f} % of throughput (goal < 2 %; noise: closed rounds "
          f"spread {100 * (max(closed) - min(closed)) / c:.1f} %)")
    print(f"/console/status: {answer_s * 1e3:.2f} ms to answer, {cpu_s * 1e3:.2f} ms of the daemon's CPU a call; "
          f"every {args.poll_s} s that is {100 * max(answer_s, cpu_s) / args.poll_s:.3f} % of one core")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
