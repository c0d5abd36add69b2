"""What the app's own work for a request costs right after a pause: warm in a loop, after a sleep, after a
run of the model.

bench/http.py measures the server's cost per request beside the bare model. On the 2-core development VM
that cost follows the machine's load, and the stages of a request measured inside the server take 2-3x
what the same code takes in a loop. This script shows why, in this process, with no HTTP and no client:
the Flask app answers one request after another through the front's own call (``front._run_app``, as a
request thread makes it), with the engine's run replaced by its recorded outputs (the JPEG decode, the
letterbox, the decode of the outputs, validation, JSON and the response headers all run), and each
request is timed

  warm         right after the one before it (the baseline);
  after sleep  after a ``time.sleep`` of --pause-ms (the time a model run takes; the CPU is idle);
  after model  after a real run of the model's engine (ONNX Runtime, the same session) on the same input.

Where the ratios are well above 1, what a request costs in the server is not the code's warm cost but
that of code whose caches and branch predictors went cold meanwhile: on a virtual machine that shares
its cores with others, other guests run there during the pause. ``--route v1`` times the legacy route
with a multipart body instead of v2's base64 JSON.

    python bench/cold.py [--requests N] [--pause-ms MS] [--route v2|v1]
"""

# ruff: noqa: E402
from __future__ import annotations

import os
import sys

# This folder holds http.py: drop it from the import path, or ``import http.client`` (werkzeug) would import
# that script instead of the standard library's package.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse
import base64
import io
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.http import front
from edge_agent.http.app import create_app
from edge_agent.http.head import BODY_READ_WHOLE
from edge_agent.runtime import Runtime
from edge_agent.settings import Settings

MODEL_ID = "shapes/1"
SAMPLE = ROOT / "edge_agent" / "demo" / "sample.jpg"
BOUNDARY = "edge-agent-bench"


def request_of(route: str, jpeg: bytes) -> tuple[str, str, bytes]:
    """(path, content type, body) of the request bench/http.py sends."""
    if route == "v2":
        body = json.dumps({"model_id": MODEL_ID, "image": {"type": "base64", "value": base64.b64encode(jpeg).decode()}})
        return "/infer/object_detection", "application/json", body.encode()
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"image.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode()
    return f"/{MODEL_ID}", f"multipart/form-data; boundary={BOUNDARY}", head + jpeg + f"\r\n--{BOUNDARY}--\r\n".encode()


def environ_of(path: str, content_type: str, body: bytes) -> dict[str, Any]:
    """The environ the front makes for such a request from http.client (front._Front.environ)."""
    return {
        "REQUEST_METHOD": "POST", "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": "",
        "SERVER_NAME": "localhost", "SERVER_PORT": "9001", "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "50000", "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body),
        "wsgi.input_terminated": True, BODY_READ_WHOLE: True, "wsgi.errors": sys.stderr,
        "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
        "HTTP_HOST": "127.0.0.1:9001", "HTTP_ACCEPT_ENCODING": "identity", "CONTENT_TYPE": content_type,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1000, help="requests per condition (default 1000)")
    ap.add_argument("--pause-ms", type=float, default=6.0, help="the sleep of 'after sleep' (default 6 ms)")
    ap.add_argument("--route", choices=["v2", "v1"], default="v2")
    args = ap.parse_args()
    if args.requests < 50:
        ap.error("--requests: at least 50 (the conditions take turns in blocks of 50)")

    path, content_type, body = request_of(args.route, SAMPLE.read_bytes())
    with tempfile.TemporaryDirectory() as tmp:
        runtime = Runtime(Settings.defaults(Path(tmp)))
        app = create_app(runtime.http_services())
        runtime.start()
        try:
            loaded, _ = runtime.http_services().inference.model(MODEL_ID)
            engine = loaded.model.engine
            real_run = engine.run
            seen: list[np.ndarray] = []

            def recorded(batch: np.ndarray) -> list[np.ndarray]:
                if not seen:
                    seen.extend([batch.copy(), *real_run(batch)])
                return [out.copy() for out in seen[1:]]

            setattr(engine, "run", recorded)  # noqa: B010 - an instance's method replaced for this run

            def answer() -> None:
                (status, _, _), close = front._run_app(app, environ_of(path, content_type, body))
                if close is not None:
                    close()
                if not status.startswith("200"):
                    raise SystemExit(f"the app answered {status}")

            def model() -> None:
                real_run(seen[0])

            before: dict[str, Callable[[], object] | None] = {
                "warm": None, "after sleep": lambda: time.sleep(args.pause_ms / 1000), "after model": model}
            for _ in range(50):
                answer()
            times: dict[str, list[float]] = {name: [] for name in before}
            pause_model: list[float] = []
            for _ in range(args.requests // 50):  # the conditions take turns, 50 requests each
                for name, pause in before.items():
                    for _ in range(50):
                        if pause is not None:
                            t = time.perf_counter()
                            pause()
                            if name == "after model":
                                pause_model.append(time.perf_counter() - t)
                        t0 = time.perf_counter()
                        answer()
                        times[name].append(time.perf_counter() - t0)
        finally:
            runtime.stop()

    warm = statistics.median(times["warm"])
    print(f"{args.route} ({path}): the app's own time per request, the engine's run replaced by its recorded outputs")
    print(f"{'condition':14s} {'p50':>10s} {'p10':>10s} {'ratio':>7s} {'more than warm':>15s}")
    for name, samples in times.items():
        samples.sort()
        p50 = statistics.median(samples)
        print(f"{name:14s} {p50 * 1e6:8.0f} us {samples[len(samples) // 10] * 1e6:8.0f} us {p50 / warm:6.2f}x "
              f"{(p50 - warm) * 1e6:+12.0f} us")
    print(f"(the model's run before each 'after model' request: p50 {statistics.median(pause_model) * 1e3:.2f} ms; "
          f"'after sleep' slept {args.pause_ms:g} ms)")


if __name__ == "__main__":
    main()
