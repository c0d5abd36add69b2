"""What the HTTP server adds to the bare model: ``edge-agent serve`` vs ONNX Runtime in this process.

Everything is measured in one run, on the demo detector (shapes/1, 320x320) and the bundled sample JPEG
(640x480), against servers this script starts itself on free 127.0.0.1 ports, each with a fresh state
folder in a temporary directory (removed at the end):

  bare   = in this process: cv2.imdecode of the JPEG bytes + the project's letterbox preprocessing
           (preprocess_into) + onnxruntime InferenceSession.run on the same model.onnx + the project's
           decode (threshold, NMS, boxes back to image pixels). No HTTP, no JSON, no base64.
  server = POST /infer/object_detection (v2) with the same JPEG as base64 JSON, requests.Session
           keep-alive, the request body encoded once up front.

  (a) sequential latency: p50 / mean / p90 over --requests requests after warm-up, bare and server
      measured in alternating blocks; ratio server/bare (goal <= 1.15) and the added milliseconds.
  (b) throughput (images/s) with 1, 4 and 8 concurrent clients (threads, each with its own
      requests.Session), for --duration seconds each, batching on (the default) and off
      (--no-batching); the reference is the best of the bare pipeline in a loop on 1 thread and on as
      many threads as clients (one shared session, as the server shares one).
  (c) peak RSS (VmHWM from /proc) of the gunicorn worker (the child of the process started) and of
      the master, after the load tests; reference: a bare subprocess that imported the same libraries,
      created the session and ran the pipeline at batch 1 and once at batch 8 (the server's max batch).
  (d) cold start: time from Popen of ``edge-agent serve`` (no preload) to the first 200 answer of the
      v2 route, polled from the start (so it includes imports, gunicorn boot and the model load);
      reference: Popen of a bare python process to its first pipeline result.

ONNX Runtime threads: the server runs with ORT's defaults (EDGE_AGENT_* variables are removed from its
environment, so intra_op_num_threads = inter_op_num_threads = 0: ORT picks), and the bare session uses
the same SessionOptions as the server's engine (engines/ort.py: ORT_ENABLE_ALL, 0/0 threads).
Client, server and bare pipeline share this machine's cores: the clients' own CPU time (requests, JSON)
is part of the server figures, as it would be for a client on the device itself.

    python bench/http.py [--quick] [--requests N] [--duration S] [--cold-starts K]
"""

from __future__ import annotations

import os
import sys

# This file is named http.py: drop its folder from the import path, or ``import http.client`` (requests,
# urllib) would import this script instead of the standard library's package.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import base64
import json  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODEL_ID = "shapes/1"
ONNX = ROOT / "edge_agent" / "demo" / "store" / "shapes" / "1" / "model.onnx"
SAMPLE = ROOT / "edge_agent" / "demo" / "sample.jpg"
ROUTE = "/infer/object_detection"
CLIENTS = (1, 4, 8)


# -- the bare pipeline ------------------------------------------------------------------------------


def _session_options():  # type: ignore[no-untyped-def]
    """The server engine's options (engines/ort.py), ORT's default thread counts."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 0
    options.inter_op_num_threads = 0
    options.log_severity_level = 3
    return options


class Bare:
    """imdecode + letterbox + session.run + select/NMS + boxes to image pixels, nothing else."""

    def __init__(self) -> None:
        import onnxruntime as ort

        from edge_agent.heads import InferenceParams
        from edge_agent.models.manifest import Manifest

        self.manifest = Manifest.from_json((ONNX.parent / "model.json").read_text(encoding="utf-8"),
                                           str(ONNX.parent / "model.json"))
        self.params = InferenceParams()
        self.session = ort.InferenceSession(str(ONNX), _session_options(), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.ort_version = ort.__version__

    def __call__(self, jpeg: bytes) -> int:
        import cv2

        from edge_agent.heads import detect
        from edge_agent.heads.preprocess import preprocess_into

        m = self.manifest
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        tensor = np.empty((1, 3, m.input.height, m.input.width), np.float32)
        transform = preprocess_into(image, m.preprocess, tensor[0], self.params)
        raw = self.session.run(None, {self.input_name: tensor})
        cand = detect.select(raw[0][0], m.output.layout, len(m.class_names), self.params, m.class_names)
        transform.boxes_to_original(cand.xyxy)
        return len(cand.confidence)


# The bare cold start / memory reference, run as its own process (same imports as Bare).
BARE_CHILD = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np, cv2, onnxruntime as ort
from edge_agent.heads import InferenceParams, detect
from edge_agent.heads.preprocess import preprocess_into
from edge_agent.models.manifest import Manifest
from pathlib import Path
onnx, jpeg = Path(sys.argv[2]), Path(sys.argv[3]).read_bytes()
m = Manifest.from_json((onnx.parent / "model.json").read_text(encoding="utf-8"), "model.json")
o = ort.SessionOptions()
o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
o.intra_op_num_threads = 0
o.inter_op_num_threads = 0
o.log_severity_level = 3
s = ort.InferenceSession(str(onnx), o, providers=["CPUExecutionProvider"])
name, p = s.get_inputs()[0].name, InferenceParams()
t = np.empty((1, 3, m.input.height, m.input.width), np.float32)
image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
tr = preprocess_into(image, m.preprocess, t[0], p)
c = detect.select(s.run(None, {name: t})[0][0], m.output.layout, len(m.class_names), p, m.class_names)
tr.boxes_to_original(c.xyxy)
print("first", len(c.confidence), flush=True)
s.run(None, {name: np.repeat(t, 8, axis=0)})
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print("hwm", hwm, flush=True)
"""


def bare_cold_start(jpeg_path: Path) -> tuple[float, int]:
    """Seconds from Popen to the first result of a bare process, and its VmHWM in kB (after batch 8)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", BARE_CHILD, str(ROOT), str(ONNX), str(jpeg_path)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    elapsed = time.perf_counter() - t0
    rest = proc.stdout.read()
    proc.wait(60)
    if not first.startswith("first") or proc.returncode != 0:
        raise RuntimeError(f"bare child failed ({proc.returncode}): {first!r} {rest!r}")
    hwm = int(next(line.split()[1] for line in rest.splitlines() if line.startswith("hwm")))
    return elapsed, hwm


# -- the servers ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    started: float  # perf_counter at Popen

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _env(state_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env["EDGE_AGENT_STATE_DIR"] = str(state_dir)
    return env


@contextmanager
def running_server(state_dir: Path, args: tuple[str, ...] = ()) -> Iterator[Server]:
    """``edge-agent serve`` on a free port, not waited for; stopped with SIGTERM (then SIGKILL)."""
    port = free_port()
    state_dir.mkdir(parents=True, exist_ok=True)
    log = state_dir / f"server-{port}.log"
    cmd = [sys.executable, "-m", "edge_agent", "serve", "--host", "127.0.0.1", "--port", str(port), *args]
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=_env(state_dir), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", proc, log, t0)
    try:
        yield server
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def wait_ready(server: Server, timeout: float = 60.0) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.output()}")
        try:
            if requests.get(server.url + "/readiness", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"server not ready after {timeout} s:\n{server.output()}")
        time.sleep(0.05)


def first_answer(server: Server, body: bytes, timeout: float = 120.0) -> float:
    """Poll the v2 route from right after Popen; seconds from Popen to the first 200."""
    import requests

    headers = {"Content-Type": "application/json"}
    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.output()}")
        try:
            r = requests.post(server.url + ROUTE, data=body, headers=headers, timeout=timeout)
            if r.status_code == 200:
                return time.perf_counter() - server.started
            raise RuntimeError(f"first request answered {r.status_code}: {r.text[:500]}")
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"no answer after {timeout} s:\n{server.output()}")
        time.sleep(0.01)


def proc_children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            continue
    return kids


def vm_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


# -- measuring --------------------------------------------------------------------------------------


class Stats:
    def __init__(self, samples: list[float]) -> None:
        s = sorted(samples)
        self.n = len(s)
        self.p50 = statistics.median(s) * 1000
        self.mean = statistics.fmean(s) * 1000
        self.p90 = s[min(len(s) - 1, int(0.9 * len(s)))] * 1000


class Failures:
    """Non-200 answers and exceptions seen by the clients (printed at the end, never hidden)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items: dict[str, int] = {}
        self.examples: dict[str, str] = {}

    def add(self, where: str, key: str, example: str) -> None:
        with self._lock:
            k = f"{where}: {key}"
            self.items[k] = self.items.get(k, 0) + 1
            self.examples.setdefault(k, example[:300])


class Client:
    """One keep-alive session posting the prepared body; returns the prediction count or raises."""

    def __init__(self, url: str, body: bytes) -> None:
        import requests

        self.session = requests.Session()
        self.url = url + ROUTE
        self.body = body
        self.headers = {"Content-Type": "application/json"}

    def __call__(self) -> int:
        r = self.session.post(self.url, data=self.body, headers=self.headers, timeout=60)
        if r.status_code != 200:
            raise HttpError(r.status_code, r.text)
        return len(r.json()["predictions"])

    def close(self) -> None:
        self.session.close()


class HttpError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text[:300]}")
        self.status = status


def latency_pair(bare: Callable[[], object], http: Callable[[], object], n: int,
                 warmup: int = 20, block: int = 25) -> tuple[Stats, Stats]:
    """Sequential timings of both, in alternating blocks so that drift hits both alike."""
    for _ in range(warmup):
        bare()
        http()
    a: list[float] = []
    b: list[float] = []
    while len(a) < n:
        for fn, out in ((bare, a), (http, b)):
            for _ in range(min(block, n - len(out))):
                t0 = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t0)
    return Stats(a), Stats(b)


def throughput(make_worker: Callable[[], Callable[[], object]], threads: int, duration: float,
               failures: Failures, where: str, warmup: int = 3) -> float:
    """Completed calls per second with ``threads`` threads calling in a loop for ``duration`` seconds."""
    barrier = threading.Barrier(threads + 1)
    counts = [0] * threads
    window: list[float] = [0.0, 0.0]

    def run(i: int) -> None:
        work = make_worker()
        try:
            for _ in range(warmup):
                try:
                    work()
                except Exception:
                    pass
            barrier.wait()
            start, end = window
            while True:
                try:
                    work()
                except HttpError as exc:
                    failures.add(where, f"HTTP {exc.status}", str(exc))
                except Exception as exc:
                    failures.add(where, type(exc).__name__, str(exc))
                else:
                    if time.perf_counter() <= end:
                        counts[i] += 1
                if time.perf_counter() >= end:
                    return
        finally:
            close = getattr(work, "close", None)
            if close is not None:
                close()

    pool = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    window[0] = time.perf_counter() + 0.0
    window[1] = window[0] + duration
    barrier.wait()  # the threads read ``window`` after this
    for t in pool:
        t.join(duration + 120)
    return sum(counts) / duration


# -- main -------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: few requests, short load tests")
    ap.add_argument("--requests", type=int, help="sequential requests per latency figure (default 300)")
    ap.add_argument("--duration", type=float, help="seconds per throughput figure (default 8)")
    ap.add_argument("--cold-starts", type=int, help="cold starts to time, median reported (default 3)")
    args = ap.parse_args()
    n_req = args.requests or (40 if args.quick else 300)
    duration = args.duration or (2.0 if args.quick else 8.0)
    cold_runs = args.cold_starts or (1 if args.quick else 3)

    sys.path.insert(0, str(ROOT))
    import onnxruntime as ort

    jpeg = SAMPLE.read_bytes()
    body = json.dumps({"model_id": MODEL_ID,
                       "image": {"type": "base64", "value": base64.b64encode(jpeg).decode("ascii")}}).encode()
    bare = Bare()
    expected = bare(jpeg)
    failures = Failures()
    t_begin = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="edge-agent-bench-"))
    rows: list[tuple[str, str, str, str]] = []  # label, value, reference, ratio
    notes: list[str] = []
    try:
        # (d) cold start, first: nothing else running; bare reference in its own processes too.
        bare_cold, bare_hwm = [], []
        for _ in range(cold_runs):
            sec, hwm = bare_cold_start(SAMPLE)
            bare_cold.append(sec)
            bare_hwm.append(hwm)
        server_cold = []
        for i in range(cold_runs):
            with running_server(tmp / f"cold-{i}") as server:
                server_cold.append(first_answer(server, body))
        b_cold, s_cold = statistics.median(bare_cold), statistics.median(server_cold)

        # (b) bare throughput, before any server runs.
        bare_tp = {c: throughput(lambda: (lambda: bare(jpeg)), c, duration, failures, f"bare x{c}")
                   for c in CLIENTS}

        lat: dict[str, tuple[Stats, Stats]] = {}
        srv_tp: dict[str, dict[int, float]] = {}
        rss: dict[str, tuple[int, int, int]] = {}
        batch_info: dict[str, str] = {}
        for mode, flags in (("batching on", ()), ("batching off", ("--no-batching",))):
            with running_server(tmp / mode.replace(" ", "-"), ("--preload", MODEL_ID, *flags)) as server:
                wait_ready(server)
                client = Client(server.url, body)
                got = client()
                if got != expected:
                    notes.append(f"{mode}: server found {got} detections, bare {expected}")
                # (a) sequential latency
                lat[mode] = latency_pair(lambda: bare(jpeg), client, n_req)
                client.close()
                # (b) throughput
                srv_tp[mode] = {c: throughput(lambda: Client(server.url, body), c, duration, failures,
                                              f"{mode} x{c}") for c in CLIENTS}
                # (c) memory after the load tests
                if server.process.poll() is not None:
                    raise RuntimeError(f"{mode}: server died:\n{server.output()}")
                kids = proc_children(server.process.pid)
                if len(kids) != 1:
                    notes.append(f"{mode}: master has {len(kids)} children: {kids}")
                worker = kids[0]
                rss[mode] = (vm_kb(worker, "VmHWM"), vm_kb(worker, "VmRSS"), vm_kb(server.process.pid, "VmHWM"))
                import requests

                metrics = requests.get(server.url + "/metrics", timeout=10).text
                batch_info[mode] = _batch_summary(metrics)
                log = server.output()
                bad = [line for line in log.splitlines()
                       if any(w in line for w in ("ERROR", "WARNING", "Traceback", "CRITICAL"))]
                if bad:
                    notes.append(f"{mode}: {len(bad)} error/warning lines in the server log, first: {bad[0][:300]}")

        # -- the table --------------------------------------------------------------------------------
        print(f"edge-agent HTTP bench: model {MODEL_ID}, image {SAMPLE.name} ({len(jpeg)} B JPEG, "
              f"{len(body)} B JSON body), {expected} detections; onnxruntime {bare.ort_version} "
              f"(ORT default threads, both sides), {os.cpu_count()} CPUs")
        print(f"latency: {n_req} sequential requests per figure; throughput: {duration:g} s per figure; "
              f"cold start: median of {cold_runs}")
        print()
        w = 44
        print(f"{'figure':<{w}}{'server':>14}{'bare':>14}{'ratio':>9}  note")
        print("-" * (w + 14 + 14 + 9 + 30))
        for mode in ("batching on", "batching off"):
            b, s = lat[mode]
            print(f"{'(a) latency p50, ' + mode:<{w}}{s.p50:11.2f} ms{b.p50:11.2f} ms{s.p50 / b.p50:8.3f}x"
                  f"  +{s.p50 - b.p50:.2f} ms, goal <= 1.15 {'ok' if s.p50 / b.p50 <= 1.15 else 'MISSED'}")
            print(f"{'(a) latency mean, ' + mode:<{w}}{s.mean:11.2f} ms{b.mean:11.2f} ms{s.mean / b.mean:8.3f}x"
                  f"  +{s.mean - b.mean:.2f} ms")
            print(f"{'(a) latency p90, ' + mode:<{w}}{s.p90:11.2f} ms{b.p90:11.2f} ms{s.p90 / b.p90:8.3f}x")
        for mode in ("batching on", "batching off"):
            for c in CLIENTS:
                ref_threads = 1 if bare_tp[1] >= bare_tp[c] else c
                ref = bare_tp[ref_threads]
                s = srv_tp[mode][c]
                print(f"{f'(b) throughput, {c} client(s), ' + mode:<{w}}{s:9.1f} img/s{ref:9.1f} img/s"
                      f"{s / ref:8.3f}x  bare on {ref_threads} thread(s)")
        for c in CLIENTS:
            print(f"{f'    bare pipeline on {c} thread(s)':<{w}}{'':>14}{bare_tp[c]:9.1f} img/s")
        b_hwm = statistics.median(bare_hwm)
        for mode in ("batching on", "batching off"):
            hwm, now, master = rss[mode]
            print(f"{'(c) peak RSS worker (VmHWM), ' + mode:<{w}}{hwm / 1024:11.1f} MB{b_hwm / 1024:11.1f} MB"
                  f"{hwm / b_hwm:8.3f}x  now {now / 1024:.1f} MB; bare ran batch 1 + batch 8")
            print(f"{'    + master (VmHWM), ' + mode:<{w}}{(hwm + master) / 1024:11.1f} MB{'':>14}{'':>9}"
                  f"  master alone {master / 1024:.1f} MB")
        print(f"{'(d) Popen -> first 200 (no preload)':<{w}}{s_cold * 1000:11.0f} ms{b_cold * 1000:11.0f} ms"
              f"{s_cold / b_cold:8.3f}x  server runs: {', '.join(f'{x * 1000:.0f}' for x in server_cold)} ms;"
              f" bare: {', '.join(f'{x * 1000:.0f}' for x in bare_cold)} ms")
        print()
        for mode in ("batching on", "batching off"):
            print(f"engine batches, {mode}: {batch_info[mode]}")
        if failures.items:
            print("FAILED REQUESTS:")
            for k, v in failures.items.items():
                print(f"  {k}: {v} x, e.g. {failures.examples[k]}")
        else:
            print("failed requests: none")
        for note in notes:
            print("note:", note)
        print(f"bench wall time {time.perf_counter() - t_begin:.0f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _batch_summary(metrics: str) -> str:
    """Engine runs and their sizes, from the server's Prometheus histogram edge_agent_batch_size."""
    count = total = 0.0
    buckets: list[tuple[float, float]] = []
    for line in metrics.splitlines():
        if line.startswith("edge_agent_batch_size_count"):
            count = float(line.rsplit(" ", 1)[1])
        elif line.startswith("edge_agent_batch_size_sum"):
            total = float(line.rsplit(" ", 1)[1])
        elif line.startswith("edge_agent_batch_size_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float(le), float(line.rsplit(" ", 1)[1])))
    if not count:
        return "no engine batches counted (the batcher reports them; none with --no-batching)"
    dist, prev = [], 0.0
    for le, cum in buckets:
        if cum > prev:
            dist.append(f"<={le:g}: {cum - prev:g}")
        prev = cum
    return f"{count:g} runs, {total:g} images, mean {total / count:.2f} per run ({', '.join(dist)})"


if __name__ == "__main__":
    main()
