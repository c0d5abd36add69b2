"""GPU check: ONNX Runtime's CUDA provider on the four demo models, through the daemon's own code path,
against bare ONNX Runtime in the same run.

Setup on a machine with an NVIDIA GPU, from the repository root, in a fresh environment. PyPI's
onnxruntime-gpu (1.31) is built for CUDA 13 and cuDNN 9: it needs an NVIDIA driver >= 580, and its
``[cuda,cudnn]`` extras install the CUDA runtime, cuBLAS, cuFFT, cuRAND, NVRTC and cuDNN as wheels. The
project goes in with --no-deps, so that pip never installs the CPU onnxruntime over the GPU one (both own
the ``onnxruntime`` folder; a later plain ``pip install -e .`` would do exactly that)::

    python3 -m venv /tmp/gpu-venv
    /tmp/gpu-venv/bin/pip install 'onnxruntime-gpu[cuda,cudnn]'
    /tmp/gpu-venv/bin/pip install --no-deps -e .
    /tmp/gpu-venv/bin/pip install 'numpy>=1.24' 'opencv-python-headless>=4.8' 'pydantic>=2.5,<3'
    /tmp/gpu-venv/bin/python -c "import onnxruntime as o; print(o.__version__, o.get_available_providers())"
    /tmp/gpu-venv/bin/python bench/gpu_check.py --json $OUT/gpu.json

(numpy, OpenCV and pydantic are what this script imports of the project's requirements.) With a driver
older than 580 (CUDA 12), install an onnxruntime-gpu release built for CUDA 12 instead.

What runs, per model (edge_agent/demo/store/*/1/model.onnx; all four have a dynamic batch axis):
  latency at batch 1, p50/p90: bare InferenceSession on the CUDA provider, bare on the CPU provider, and
      the project's engine (``[engine] providers = ["cuda"]`` -> ``Settings.engine_prefs`` -> the model
      store -> ``engines.ort.OrtEngine``, run through ``Model.forward``); CPU/CUDA and project/bare ratios,
      and the largest difference between the CUDA and CPU outputs;
  batch throughput at 1/4/8/16 images per call (bare and project), images/s and the ratio to batch 1;
  the dynamic batcher as the server uses it (``ModelManager.get`` -> ``LoadedModel.infer``: prepare,
      engine through ``DynamicBatcher``, decode, in each client's thread): images/s of one sequential
      client, of N client threads with batching off and on, the ratios to sequential and the batch sizes.
Every figure is bounded by --seconds and an iteration cap, and the whole run by --budget (default 270 s).

Exit 0: done; 2: no CUDA provider or no GPU (one line says why; nothing is measured); 1: the project's
engine did not run on the CUDA provider although bare ONNX Runtime did. ``--cpu-anyway`` runs the whole
path on the CPU provider instead (the project's engine asks for CUDA, warns and falls back, as the daemon
would), with short figures, to check the script itself on a machine without a GPU.

    python bench/gpu_check.py [--json OUT.json] [--clients 8] [--seconds 1.5] [--cpu-anyway]
"""

# ruff: noqa: E402
from __future__ import annotations

import os
import sys

# bench/http.py sits beside this file: keep this folder off the import path, or ``import http.client``
# (used by edge_agent.url_fetch) would find that script instead of the standard library. The repository
# root goes on it, so that the script also runs without ``pip install -e .``.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

import argparse
import json
import logging
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

MODELS = ("shapes/1", "shapes-seg/1", "shapes-pose/1", "shapes-cls/1")
BATCHES = (1, 4, 8, 16)
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class Unavailable(Exception):
    """No CUDA provider or no GPU here: exit 2 with this message."""


class Clock:
    """The run's deadline and the per-figure bounds."""

    def __init__(self, seconds: float, budget: float, warmup: int = 5, min_iters: int = 3,
                 max_iters: int = 2000) -> None:
        self.seconds, self.warmup, self.min_iters, self.max_iters = seconds, warmup, min_iters, max_iters
        self.deadline = time.monotonic() + budget
        self.skipped: list[str] = []

    def left(self) -> bool:
        return time.monotonic() < self.deadline


def samples(fn: Callable[[], object], clock: Clock) -> list[float]:
    """Seconds per call: the warm-up calls (CUDA allocates and picks its kernels per input shape on the
    first runs), then calls until --seconds has passed (at least ``min_iters``) or the cap is reached."""
    for _ in range(clock.warmup):
        fn()
    out: list[float] = []
    end = time.perf_counter() + clock.seconds
    while len(out) < clock.max_iters and (len(out) < clock.min_iters or time.perf_counter() < end):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def latency(fn: Callable[[], object], clock: Clock) -> dict[str, float]:
    s = sorted(samples(fn, clock))
    return {"p50_ms": round(statistics.median(s) * 1000, 3),
            "p90_ms": round(s[min(len(s) - 1, int(0.9 * len(s)))] * 1000, 3), "runs": len(s)}


def throughput(call: Callable[[], object], clients: int, clock: Clock) -> dict[str, float]:
    """Calls per second (one image each) of ``clients`` threads calling ``call`` for --seconds."""
    stop = threading.Event()
    counts = [0] * clients
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            while not stop.is_set():
                call()
                counts[i] += 1
        except BaseException as exc:  # reported below; the other clients stop too
            errors.append(exc)
            stop.set()

    for _ in range(clock.warmup):
        call()
    threads = [threading.Thread(target=client, args=(i,), name=f"gpu-check-client-{i}") for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    stop.wait(clock.seconds)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return {"images_per_s": round(sum(counts) / elapsed, 1), "clients": clients, "calls": sum(counts)}


def cuda_check(ort: Any, cpu_anyway: bool) -> tuple[dict[str, Any], bool]:
    """The device, and whether ``onnxruntime.preload_dlls()`` was needed; raises ``Unavailable``."""
    from edge_agent.store.model_store import BUILTIN_ROOT
    from engines.device import probe

    device = probe()
    if cpu_anyway:
        return device.as_dict(), False
    available = ort.get_available_providers()
    if CUDA not in available:
        raise Unavailable(f"onnxruntime {ort.__version__} has no {CUDA} (providers: {', '.join(available)}): "
                          "install onnxruntime-gpu as the top of bench/gpu_check.py says")
    if not device.cuda:
        raise Unavailable(f"no CUDA GPU answers: {device.cuda_reason}")
    model = str(BUILTIN_ROOT / MODELS[0].replace("/", os.sep) / "model.onnx")
    if CUDA in bare_session(ort, model, [CUDA, CPU]).get_providers():
        return device.as_dict(), False
    ort.preload_dlls()  # the CUDA and cuDNN libraries of the nvidia-* wheels, where they are not on the path
    if CUDA in bare_session(ort, model, [CUDA, CPU]).get_providers():
        return device.as_dict(), True
    raise Unavailable(f"{device.gpu_name} answers, but ONNX Runtime's {CUDA} did not load even after "
                      "onnxruntime.preload_dlls() (its CUDA/cuDNN libraries: see ONNX Runtime's error above)")


def bare_session(ort: Any, model: str, providers: list[str]) -> Any:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=providers)


def latencies(ort: Any, ctx: dict[str, Any], loaded: Any, tensor: np.ndarray, clock: Clock) -> dict[str, Any]:
    """Batch 1: bare on the accelerator's provider list, bare on the CPU, the project's engine."""
    path = str(ctx["manager"].onnx_path(loaded.model_id)[1])
    accel, cpu = bare_session(ort, path, ctx["providers"]), bare_session(ort, path, [CPU])
    name = accel.get_inputs()[0].name
    out_accel, out_cpu = accel.run(None, {name: tensor}), cpu.run(None, {name: tensor})
    result: dict[str, Any] = {
        "bare_provider": accel.get_providers()[0],
        "bare_accel": latency(lambda: accel.run(None, {name: tensor}), clock),
        "bare_cpu": latency(lambda: cpu.run(None, {name: tensor}), clock),
        "project": latency(lambda: loaded.model.forward([tensor]), clock),
        "max_abs_diff_accel_vs_cpu": float(max(np.abs(a - c).max() for a, c in zip(out_accel, out_cpu))),
    }
    result["cpu_over_accel_p50"] = round(result["bare_cpu"]["p50_ms"] / result["bare_accel"]["p50_ms"], 2)
    result["project_over_bare_p50"] = round(result["project"]["p50_ms"] / result["bare_accel"]["p50_ms"], 3)
    ctx["sessions"][loaded.model_id] = (accel, name)
    return result


def batch_throughput(ctx: dict[str, Any], loaded: Any, tensor: np.ndarray, clock: Clock) -> dict[str, Any]:
    """Images/s at each batch size: bare ``session.run`` on a stacked array, and ``Model.forward`` on
    separate tensors (it stacks them, as the batcher's run does)."""
    accel, name = ctx["sessions"][loaded.model_id]
    static = loaded.model.manifest.input.batch
    rows: dict[str, Any] = {}
    for n in BATCHES:
        if n > loaded.model.engine.max_batch or (static and n != static) or not clock.left():
            clock.skipped.append(f"{loaded.model_id} batch {n}")
            continue
        stacked, tensors = np.repeat(tensor, n, axis=0), [tensor] * n
        bare = statistics.median(samples(lambda s=stacked: accel.run(None, {name: s}), clock))
        project = statistics.median(samples(lambda ts=tensors: loaded.model.forward(ts), clock))
        rows[str(n)] = {"bare_images_per_s": round(n / bare, 1), "project_images_per_s": round(n / project, 1)}
    base = rows.get("1")
    for row in rows.values():
        for key in ("bare", "project"):
            if base:
                row[f"{key}_vs_batch1"] = round(row[f"{key}_images_per_s"] / base[f"{key}_images_per_s"], 2)
    return rows


def batcher_throughput(loaded: Any, image: np.ndarray, clients: int, clock: Clock) -> dict[str, Any]:
    """``LoadedModel.infer`` as the HTTP handlers call it: one sequential client, then ``clients`` threads
    without the batcher (each runs the engine itself, as with ``--batching off``) and with it."""
    from edge_agent.params import InferenceParams
    from edge_agent.serving.manager import LoadedModel

    params = InferenceParams()
    unbatched = LoadedModel(loaded.model, None, 0.0)  # the same engine, the server's path without batching
    batcher = loaded.batcher
    rows: dict[str, Any] = {"sequential": throughput(lambda: loaded.infer([image], params), 1, clock)}
    if clock.left():
        rows["threads_batching_off"] = throughput(lambda: unbatched.infer([image], params), clients, clock)
    if clock.left():
        before_batches, before_items = batcher.stats.batches, batcher.stats.items
        sizes_before = dict(batcher.stats.sizes)
        rows["threads_batching_on"] = throughput(lambda: loaded.infer([image], params), clients, clock)
        batches = batcher.stats.batches - before_batches
        rows["threads_batching_on"]["mean_batch"] = round((batcher.stats.items - before_items) / max(1, batches), 2)
        rows["threads_batching_on"]["batch_sizes"] = {
            str(k): v - sizes_before.get(k, 0) for k, v in sorted(batcher.stats.sizes.items())
            if v - sizes_before.get(k, 0)}
    base = rows["sequential"]["images_per_s"]
    for row in rows.values():
        row["vs_sequential"] = round(row["images_per_s"] / base, 2)
    return rows


def check_model(ort: Any, ctx: dict[str, Any], model_id: str, clock: Clock) -> dict[str, Any]:
    from edge_agent.demo.shapes import generate_scene
    from edge_agent.params import InferenceParams

    t0 = time.perf_counter()
    loaded, _ = ctx["manager"].get(model_id)
    load_s = time.perf_counter() - t0
    m = loaded.model.manifest
    image = generate_scene(7, size=(480, 640)).image
    tensor = loaded.model.prepare(image, InferenceParams()).tensor
    result: dict[str, Any] = {
        "task": m.task, "input": f"{m.input.width}x{m.input.height}",
        "dynamic_batch": loaded.model.engine.inputs[0].dynamic_batch, "engine": loaded.model.engine.name,
        "engine_max_batch": loaded.model.engine.max_batch, "load_s": round(load_s, 2),
        "batcher_max_batch": loaded.batcher.max_batch}
    result["latency_batch1"] = latencies(ort, ctx, loaded, tensor, clock)
    result["batch_throughput"] = batch_throughput(ctx, loaded, tensor, clock)
    if clock.left():
        result["batcher"] = batcher_throughput(loaded, image, ctx["clients"], clock)
    else:
        clock.skipped.append(f"{model_id} batcher")
    return result


def print_model(model_id: str, r: dict[str, Any], clients: int) -> None:
    lat = r["latency_batch1"]
    accel = lat["bare_provider"].replace("ExecutionProvider", "")
    accel += " in CUDA's place" if accel == "CPU" else ""
    print(f"\n{model_id} ({r['task']}, {r['input']}, {'dynamic' if r['dynamic_batch'] else 'static'} batch) "
          f"engine {r['engine']} (max batch {r['engine_max_batch']}), loaded in {r['load_s']} s")
    print("  batch 1 latency            p50 ms   p90 ms")
    for key, label in (("bare_accel", f"bare {accel}"), ("bare_cpu", "bare CPU"),
                       ("project", "project Model.forward")):
        print(f"    {label:<24}{lat[key]['p50_ms']:8.3f} {lat[key]['p90_ms']:8.3f}")
    print(f"    CPU / {accel} p50 {lat['cpu_over_accel_p50']}x; project / bare p50 "
          f"{lat['project_over_bare_p50']}x; max |accel - CPU| output {lat['max_abs_diff_accel_vs_cpu']:.2e}")
    print("  images per call     bare img/s  x batch1   project img/s  x batch1")
    for n, row in r["batch_throughput"].items():
        print(f"    {n:>3}             {row['bare_images_per_s']:10.1f} {row.get('bare_vs_batch1', 0):8.2f}x "
              f"{row['project_images_per_s']:14.1f} {row.get('project_vs_batch1', 0):8.2f}x")
    if "batcher" in r:
        print(f"  LoadedModel.infer (prepare + engine + decode)       img/s  x sequential  (batcher max batch "
              f"{r['batcher_max_batch']})")
        for key, label in (("sequential", "1 client, sequential"), ("threads_batching_off", f"{clients} clients, "
                           "batching off"), ("threads_batching_on", f"{clients} clients, batching on")):
            if key in r["batcher"]:
                row = r["batcher"][key]
                extra = f"  mean batch {row['mean_batch']} {row['batch_sizes']}" if "mean_batch" in row else ""
                print(f"    {label:<46}{row['images_per_s']:8.1f} {row['vs_sequential']:8.2f}x{extra}")


def setup(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """The model store (the built-in demo models), and a manager with the settings the daemon would get
    from ``[engine] providers = ["cuda"]`` and ``[server] batching = "on"``."""
    from edge_agent.serving.manager import ModelManager
    from edge_agent.settings import load_settings
    from edge_agent.store.model_store import ModelStore

    settings = load_settings(None, {"EDGE_AGENT_CONFIG": "", "EDGE_AGENT_STATE_DIR": str(tmp)},
                             overrides={"engine.backend": "ort", "engine.providers": ("cuda",),
                                        "engine.max_batch": max(BATCHES), "server.batching": "on"})
    store = ModelStore(tmp / "models")
    manager = ModelManager(store, settings.engine_prefs)
    return {"store": store, "manager": manager, "sessions": {}, "clients": args.clients,
            "providers": [CPU] if args.cpu_anyway else [CUDA, CPU]}


def run(args: argparse.Namespace, ort: Any) -> tuple[int, dict[str, Any]]:
    device, preloaded = cuda_check(ort, args.cpu_anyway)
    if args.cpu_anyway:  # a check of the script: short figures, few repetitions
        clock = Clock(args.seconds or 0.1, args.budget, warmup=1, min_iters=1)
    else:
        clock = Clock(args.seconds or 1.5, args.budget)
    summary: dict[str, Any] = {
        "ok": True, "mode": "cpu-anyway" if args.cpu_anyway else "cuda", "onnxruntime": ort.__version__,
        "providers_available": ort.get_available_providers(), "device": device, "preload_dlls_needed": preloaded,
        "clients": args.clients, "seconds_per_figure": clock.seconds, "models": {}}
    print(f"onnxruntime {ort.__version__} ({', '.join(ort.get_available_providers())}); "
          f"GPU: {device['gpu_name'] or device['cuda_reason']}; mode {summary['mode']}"
          + ("; onnxruntime.preload_dlls() was needed" if preloaded else ""))
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        ctx = setup(args, Path(tmp))
        try:
            for model_id in args.models:
                if not clock.left():
                    clock.skipped.append(model_id)
                    continue
                summary["models"][model_id] = r = check_model(ort, ctx, model_id, clock)
                print_model(model_id, r, args.clients)
        finally:
            ctx["manager"].clear()
    summary["skipped_for_time"] = clock.skipped
    wrong = [m for m, r in summary["models"].items() if not args.cpu_anyway and not r["engine"].endswith(CUDA)]
    if wrong:
        summary["ok"] = False
        summary["reason"] = f"the project's engine did not use {CUDA} for {', '.join(wrong)} (bare ONNX Runtime did)"
    return (1 if wrong else 0), summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="write the summary here")
    ap.add_argument("--clients", type=int, default=8, help="concurrent client threads for the batcher figures")
    ap.add_argument("--seconds", type=float, default=0.0, help="time per figure (default 1.5; 0.1 with "
                    "--cpu-anyway)")
    ap.add_argument("--budget", type=float, default=270.0, help="stop starting figures after this many seconds")
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--cpu-anyway", action="store_true", help="no GPU needed: run everything on the CPU provider "
                    "(checks the script, measures nothing about GPUs)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    t0 = time.monotonic()
    import onnxruntime as ort

    try:
        code, summary = run(args, ort)
    except Unavailable as exc:
        print(f"gpu_check: not run: {exc}", file=sys.stderr)
        code, summary = 2, {"ok": False, "reason": str(exc), "onnxruntime": ort.__version__,
                            "providers_available": ort.get_available_providers()}
    summary["exit"], summary["seconds"] = code, round(time.monotonic() - t0, 1)
    if code == 0:
        print(f"\ndone in {summary['seconds']} s" + (f"; skipped for time: {', '.join(summary['skipped_for_time'])}"
                                                     if summary.get("skipped_for_time") else ""))
    elif code == 1:
        print(f"gpu_check: {summary['reason']}", file=sys.stderr)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
