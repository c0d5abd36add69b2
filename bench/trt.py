"""TensorRT on the GPU: our engine's latency against trtexec's for the same plan, FP32 vs FP16, batch
1/4/8, and the end-to-end HTTP latency against the engine's.

Needs a machine where TensorRT is usable (a Jetson with JetPack, or x86 with TensorRT and pycuda);
elsewhere it prints why and exits 2. Every figure is measured in this run:

  engine   TrtEngine.run on a prepared batch (host -> device copy, execution, device -> host copy),
           median per batch and per image
  trtexec  trtexec --loadEngine on the same plan file: its median "Host Latency" (which also includes
           the copies) and "GPU Compute Time"; ratio engine / trtexec host latency
  http     POST /infer/object_detection with the sample JPEG to ``edge-agent serve`` serving the same
           FP16 engine (from the cache): median round trip, ratio to the engine's batch-1 latency

    python bench/trt.py [--model shapes/1] [--runs 300]
"""

# ruff: noqa: E402
from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]  # see bench/core.py

import argparse
import base64
import importlib.util
import json
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TRTEXEC_PLACES = ("/usr/src/tensorrt/bin/trtexec", "/usr/local/tensorrt/bin/trtexec")


def _bench_http() -> Any:
    """bench/http.py's server helpers (loaded by path: the name "http" is the standard library's)."""
    spec = importlib.util.spec_from_file_location("bench_http", Path(_HERE) / "http.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_http"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _median_ms(fn: Any, runs: int, warmup: int = 30) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1000


def trtexec(plan: Path, input_name: str, shape: tuple[int, ...]) -> dict[str, float] | None:
    exe = shutil.which("trtexec") or next((p for p in TRTEXEC_PLACES if Path(p).is_file()), None)
    if exe is None:
        return None
    dims = "x".join(str(d) for d in shape)
    out = subprocess.run([exe, f"--loadEngine={plan}", f"--shapes={input_name}:{dims}", "--iterations=300",
                          "--warmUp=500", "--duration=0"], capture_output=True, text=True, timeout=300).stdout
    figures = {}
    for label, key in (("Host Latency", "host"), ("GPU Compute Time", "gpu")):
        m = re.search(label + r": min = [\d.]+ ms, max = [\d.]+ ms, mean = [\d.]+ ms, median = ([\d.]+) ms", out)
        if m:
            figures[key] = float(m.group(1))
    return figures or None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="shapes/1")
    ap.add_argument("--runs", type=int, default=300)
    args = ap.parse_args()

    import engines
    from edge_agent.serving.accelerate_setup import compile_model, offline_accelerator
    from edge_agent.settings import load_settings

    choice = engines.choose_backend()
    print(f"back-end: {choice.reason}")
    if choice.backend != "tensorrt":
        return 2
    state = Path(tempfile.mkdtemp(prefix="bench-trt-"))
    env = {"EDGE_AGENT_CONFIG": "", "EDGE_AGENT_STATE_DIR": str(state), **{k: v for k, v in os.environ.items()
                                                                           if k in ("HOME", "XDG_CACHE_HOME")}}
    rows = []
    engine_b1_fp16 = None
    for precision in ("fp32", "fp16"):
        settings = load_settings(None, env, overrides={"engine.precision": precision})
        accelerator, manager = offline_accelerator(settings)
        t0 = time.perf_counter()
        status = compile_model(accelerator, manager, args.model)
        print(f"{precision}: {status.state} in {time.perf_counter() - t0:.1f} s ({status.reason})")
        if status.state != "tensorrt":
            continue
        manifest, onnx = manager.store.verified_onnx(args.model)
        plan = accelerator.cache.paths(accelerator.key(manifest))[0]
        engine = accelerator.cached_engine(args.model, manifest, onnx)
        assert engine is not None
        h, w = manifest.input.height, manifest.input.width
        for batch in (1, 4, 8):
            if batch > engine.max_batch:
                continue
            x = np.random.default_rng(0).random((batch, 3, h, w), dtype=np.float32)
            ms = _median_ms(lambda e=engine, x=x: e.run(x), args.runs)
            ref = trtexec(plan, engine.inputs[0].name, (batch, 3, h, w))
            if precision == "fp16" and batch == 1:
                engine_b1_fp16 = ms
            rows.append((precision, batch, ms, ref))
        engine.close()

    print(f"\n{'precision':<9} {'batch':>5} {'engine ms':>10} {'ms/image':>9} {'trtexec host':>13} "
          f"{'trtexec gpu':>12} {'engine/trtexec':>15}")
    for precision, batch, ms, ref in rows:
        host = f"{ref['host']:.3f}" if ref and "host" in ref else "-"
        gpu = f"{ref['gpu']:.3f}" if ref and "gpu" in ref else "-"
        ratio = f"{ms / ref['host']:.2f}x" if ref and "host" in ref else "no trtexec"
        print(f"{precision:<9} {batch:>5} {ms:>10.3f} {ms / batch:>9.3f} {host:>13} {gpu:>12} {ratio:>15}")
    fp = {(p, b): ms for p, b, ms, _ in rows}
    for batch in (1, 4, 8):
        if ("fp32", batch) in fp and ("fp16", batch) in fp:
            print(f"fp16 vs fp32, batch {batch}: {fp[('fp32', batch)] / fp[('fp16', batch)]:.2f}x faster")

    if engine_b1_fp16 is None:
        return 1
    bench_http = _bench_http()
    import requests

    body = json.dumps({"model_id": args.model, "image": {"type": "base64", "value": base64.b64encode(
        (ROOT / "edge_agent" / "demo" / "sample.jpg").read_bytes()).decode("ascii")}}).encode()
    with bench_http.running_server(state / "server", ("--preload", args.model)) as server:
        bench_http.wait_ready(server, timeout=600)
        registry = requests.get(server.url + "/model/registry", timeout=10).json()
        engine_state = registry["models"][0]["engine"]
        print(f"\nserver: {args.model} served by {engine_state['backend']} ({engine_state['reason']})")
        client = bench_http.Client(server.url, body)
        http_ms = _median_ms(client, args.runs)
        client.close()
    print(f"http round trip (JPEG decode, preprocess, engine, NMS, JSON): {http_ms:.3f} ms median; "
          f"engine alone (fp16, batch 1) {engine_b1_fp16:.3f} ms: {http_ms / engine_b1_fp16:.2f}x, "
          f"+{http_ms - engine_b1_fp16:.3f} ms")
    shutil.rmtree(state, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
