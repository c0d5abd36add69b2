"""What hostile HTTP clients cost a normal client: latency of a normal request while they hold connections.

One server (``edge-agent serve --preload shapes/1``, started as the tests start it: tests/servers.py, a free
127.0.0.1 port, a fresh state folder in a temporary directory, default [server] settings, one ONNX Runtime
thread) and, in this process, one normal client: POST /infer/object_detection (v2) with the bundled sample
JPEG as base64 JSON, requests.Session keep-alive, --requests sequential requests per figure after 5 warm-up.
Each figure is its p50 / p90 and the ratio of its p50 to the quiet p50 of the same run:

  quiet              nothing else connected; measured first and last, the reference is the median of both
  header tricklers   256 connections, each sending one byte of an endless header every 0.5 s (one thread);
                     one the server closes (408 after header_timeout_s) is replaced at the next tick
                     (0.5 s). Goal <= 1.5x
  body tricklers     256 connections that sent whole headers (Content-Length 100000) and trickle the body
                     the same way, replaced the same way (408 after body_timeout_s). Goal <= 1.5x
  pipeline           a pipeline on a generated 10 fps video (realtime), nobody watching: what it costs alone
  preview watchers   the same pipeline and 32 watchers of its MJPEG preview reading all they get. Goal <= 1.2x
  idle keep-alive    500 connections that each made one GET /healthz and then say nothing; one the server
                     closes (after keepalive_s) is reopened at the next tick (0.5 s)
  slot release       after the watchers left, a lone watcher that received a frame disconnects: time until
                     the pipeline's status report shows preview_watchers 0 (polled every 5 ms on a keep-alive
                     session); median and max of 5

At the default deadlines (header_timeout_s 10, body_timeout_s 60) a figure is usually over before the
tricklers' first 408: it measures them held, not their replacement burst ("replaced" says which).
The hostile crowds all run on one thread that select()s over their sockets, and read and drop whatever
the server sends them. A request that gets no answer in --timeout seconds counts as a timeout, and a
figure stops after 3 of them (a front whose threads the crowd holds answers nothing). Client, crowd and
server share this machine's cores: the load average at the start is printed, ratios are steadier than
absolute figures.

    python bench/hostile.py [--quick] [--requests N] [--timeout S]
"""

# ruff: noqa: E402
from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "tests"))  # the tests' server and video helpers

import argparse
import base64
import collections
import json
import selectors
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import requests

from helpers import circle_video
from servers import Server, running_server

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "edge_agent" / "demo" / "sample.jpg"
ROUTE = "/infer/object_detection"
TRICKLE_S = 0.5
ENDLESS_HEADER = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 100_000
BODY_HEAD = (b"POST " + ROUTE.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
             b"Content-Length: 100000\r\n\r\n")
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


class Crowd:
    """``n`` connections held from one thread: each sends ``opening`` on connect, then the next byte of
    ``trickle`` every 0.5 s; whatever the server sends is read and dropped (counting each connection's
    first status code and the preview parts), and a connection the server closes is replaced at the next
    tick (not at once: a server that refuses with 503 would be hammered)."""

    def __init__(self, port: int, n: int, opening: bytes, trickle: bytes = b"") -> None:
        self.port, self.n, self.opening, self.trickle = port, n, opening, trickle
        self.pos: dict[socket.socket, int] = {}  # how much of ``trickle`` each has sent; -1: answered
        self.selector = selectors.DefaultSelector()  # epoll: select() stops at descriptor 1023
        self.statuses: collections.Counter[str] = collections.Counter()
        self.replaced = 0
        self.parts = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="crowd", daemon=True)

    def __enter__(self) -> Crowd:
        for _ in range(self.n):
            self._open()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
        for s in self.pos:
            s.close()
        self.selector.close()

    def _open(self) -> None:
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            s.sendall(self.opening)
        except OSError as exc:
            self.statuses[f"connect: {type(exc).__name__}"] += 1
            return
        s.setblocking(False)
        self.pos[s] = 0
        self.selector.register(s, selectors.EVENT_READ)

    def _run(self) -> None:
        next_tick = time.monotonic()
        closed = 0
        while not self.stop.is_set():
            for key, _ in self.selector.select(max(0.0, next_tick - time.monotonic())):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    self.selector.unregister(s)
                    s.close()
                    del self.pos[s]
                    closed += 1
                    continue
                if self.pos[s] >= 0:  # the first bytes of the answer: its status
                    self.statuses[data[9:12].decode("latin-1")] += 1
                    self.pos[s] = -1
                self.parts += data.count(b"--frame")
            if time.monotonic() >= next_tick:
                next_tick += TRICKLE_S
                for _ in range(closed):
                    self._open()
                self.replaced += closed
                closed = 0
                if self.trickle:
                    for s, pos in list(self.pos.items()):
                        if 0 <= pos < len(self.trickle):
                            try:
                                self.pos[s] += s.send(self.trickle[pos:pos + 1])
                            except OSError:
                                pass  # closed: the next select() sees it

    def refused(self) -> int:
        """Connections the server refused (5xx, failed connects): the crowd was smaller than meant."""
        return sum(v for k, v in self.statuses.items() if k.startswith(("5", "connect")))

    def summary(self) -> str:
        got = ", ".join(f"{k} x{v}" for k, v in sorted(self.statuses.items())) or "none"
        return f"answers seen: {got}; replaced {self.replaced}"


class Figure:
    def __init__(self, samples: list[float], timeouts: int, errors: collections.Counter[str]) -> None:
        s = sorted(samples)
        self.n = len(s)
        self.p50 = statistics.median(s) * 1000 if s else float("nan")
        self.p90 = s[min(len(s) - 1, int(0.9 * len(s)))] * 1000 if s else float("nan")
        self.timeouts = timeouts
        self.errors = errors


def measure(session: requests.Session, url: str, body: bytes, n: int, timeout: float) -> Figure:
    """``n`` sequential requests after 5 warm-up; stops after 3 timeouts."""
    samples: list[float] = []
    timeouts = 0
    errors: collections.Counter[str] = collections.Counter()
    for i in range(n + 5):
        t0 = time.perf_counter()
        try:
            r = session.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=timeout)
        except requests.Timeout:
            timeouts += 1
            if timeouts >= 3:
                break
            continue
        except requests.RequestException as exc:
            errors[type(exc).__name__] += 1
            continue
        if r.status_code != 200:
            errors[f"HTTP {r.status_code}"] += 1
        elif i >= 5:
            samples.append(time.perf_counter() - t0)
    return Figure(samples, timeouts, errors)


def status_report(session: requests.Session, server: Server, pipeline_id: str) -> dict[str, object]:
    r = session.get(f"{server.url}/inference_pipelines/{pipeline_id}/status", timeout=10)
    r.raise_for_status()
    return dict(r.json()["report"])


def slot_release(server: Server, pipeline_id: str, session: requests.Session) -> list[float]:
    """Seconds from a watcher's close to preview_watchers back at 0, five times."""
    def until_unwatched(limit: float = 10.0) -> None:
        end = time.monotonic() + limit
        while status_report(session, server, pipeline_id)["preview_watchers"] != 0:
            if time.monotonic() > end:
                raise RuntimeError(f"preview_watchers still above 0 after {limit:g} s")
            time.sleep(0.005)

    out = []
    until_unwatched()  # the crowd's, closed just now
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(f"GET /pipelines/{pipeline_id}/preview.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            got = b""
            while got.count(b"--frame") < 2:  # a whole part: the watcher is counted
                data = s.recv(65536)  # the socket's 10 s timeout bounds each wait
                if not data:
                    raise RuntimeError("the preview ended before a whole part")
                got += data
        t0 = time.perf_counter()
        until_unwatched()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 40 requests per figure")
    ap.add_argument("--requests", type=int, help="sequential requests per figure (default 300)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds a request may take before it counts "
                                                                 "as a timeout (default 10)")
    args = ap.parse_args()
    n_req = args.requests or (40 if args.quick else 300)

    jpeg = SAMPLE.read_bytes()
    body = json.dumps({"model_id": "shapes/1",
                       "image": {"type": "base64", "value": base64.b64encode(jpeg).decode("ascii")}}).encode()
    figures: list[tuple[str, Figure, Crowd | None, float | None]] = []  # name, figure, crowd, goal
    t_begin = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edge-agent-hostile-") as tmp:
        video = Path(tmp) / "long.mp4"
        circle_video(video, frames=600 if args.quick else 1800, fps=10.0)  # 60 s / 180 s at 10 fps, paced
        with running_server(Path(tmp) / "state", args=("--preload", "shapes/1")) as server, \
                requests.Session() as session:
            url = server.url + ROUTE

            def under(name: str, crowd: Crowd | None, goal: float | None) -> None:
                if crowd is None:
                    figures.append((name, measure(session, url, body, n_req, args.timeout), None, goal))
                    return
                with crowd:
                    time.sleep(1.0)  # every connection opened and sending
                    figures.append((name, measure(session, url, body, n_req, args.timeout), crowd, goal))

            under("quiet (first)", None, None)
            under("256 header tricklers", Crowd(server.port, 256, b"", ENDLESS_HEADER), 1.5)
            under("256 body tricklers", Crowd(server.port, 256, BODY_HEAD, b"a" * 100_000), 1.5)
            r = session.post(f"{server.url}/inference_pipelines/initialise", timeout=10,
                             json={"model_id": "shapes/1", "video_reference": str(video), "realtime": True,
                                   "pipeline_id": "cam"})
            r.raise_for_status()
            under("pipeline, no watcher", None, None)
            watch = b"GET /pipelines/cam/preview.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            watchers = Crowd(server.port, 32, watch)
            under("pipeline + 32 preview watchers", watchers, 1.2)
            frames_note = f"; {watchers.parts} preview parts received in all"
            report = status_report(session, server, "cam")
            release = slot_release(server, "cam", session) if "preview_watchers" in report else []
            if report["state"] != "running":
                frames_note += f"; the pipeline was {report['state']} at the end (video too short?)"
            session.post(f"{server.url}/inference_pipelines/cam/terminate", timeout=10)
            under("500 idle keep-alive connections", Crowd(server.port, 500, HEALTHZ), None)
            under("quiet (last)", None, None)

    quiet = statistics.median([f.p50 for name, f, _, _ in figures if name.startswith("quiet")])
    print(f"edge-agent hostile-client bench: v2 {ROUTE} (shapes/1, {SAMPLE.name} {len(jpeg)} B as {len(body)} B "
          f"JSON), {n_req} sequential requests per figure; {os.cpu_count()} CPUs, load average at start "
          f"{os.getloadavg()[0]:.2f}; quiet p50 (reference) {quiet:.2f} ms")
    print()
    w = 34
    print(f"{'figure':<{w}}{'p50':>10}{'p90':>10}{'ratio':>8}  {'goal':<10}{'n':>5}{'timeouts':>9}  crowd")
    print("-" * (w + 10 + 10 + 8 + 12 + 5 + 9 + 40))
    for name, f, crowd, goal in figures:
        ratio = f.p50 / quiet
        verdict = ""
        if goal is not None:  # met only with every request answered and the whole crowd held
            met = ratio <= goal and not f.timeouts and not f.errors and not (crowd and crowd.refused())
            verdict = f"{goal}x {'ok' if met else 'MISSED'}"
        errors = "; errors: " + ", ".join(f"{k} x{v}" for k, v in f.errors.items()) if f.errors else ""
        print(f"{name:<{w}}{f.p50:7.2f} ms{f.p90:7.2f} ms{ratio:7.2f}x  {verdict:<10}{f.n:>5}{f.timeouts:>9}  "
              f"{crowd.summary() if crowd else ''}{errors}")
    if release:
        print(f"{'slot release after a disconnect':<{w}}{statistics.median(release) * 1000:7.1f} ms  "
              f"(median of {len(release)}, max {max(release) * 1000:.1f} ms)")
    else:
        print("slot release: not measured, the status report has no preview_watchers")
    print(f"preview watchers{frames_note}")
    print(f"bench wall time {time.perf_counter() - t_begin:.0f} s")


if __name__ == "__main__":
    main()
