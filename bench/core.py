"""How much the inference core adds to the bare model: ``Model.run`` vs ONNX Runtime ``session.run``.

Both sides run in this process, in the same run, on the same model file and the same image:
  bare  = onnxruntime.InferenceSession.run on the already preprocessed tensor (the model alone)
  core  = Model.run on the loaded BGR image (preprocess + run + decode + NMS + mapping back)
Printed: medians, the ratio core/bare and the per-stage split of the core's extra time.

    python bench/core.py [--model shapes/1] [--runs 200] [--size 480x640]
"""

# ruff: noqa: E402
from __future__ import annotations

import os
import sys

# bench/http.py sits beside this file: keep this folder off the import path, or ``import http.client``
# (used by edge_agent.url_fetch) would find that script instead of the standard library.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np


def _median_ms(fn: Callable[[], object], runs: int, warmup: int = 10) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="shapes/1")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--size", default="480x640", help="HxW of the test image")
    args = ap.parse_args()
    h, w = (int(v) for v in args.size.split("x"))

    import onnxruntime as ort

    import edge_agent
    from edge_agent.demo.shapes import generate_scene
    from edge_agent.heads import detect
    from edge_agent.heads.preprocess import preprocess_into
    from edge_agent.params import InferenceParams
    from edge_agent.results import Detections
    from edge_agent.serving.loading import load_model

    store = edge_agent.open_store()
    manifest, onnx_path = store.verified_onnx(args.model)
    model = load_model(manifest, onnx_path)
    image = generate_scene(7, size=(h, w)).image
    params = InferenceParams()

    tensor = np.empty((1, 3, manifest.input.height, manifest.input.width), np.float32)
    preprocess_into(image, manifest.preprocess, tensor[0], params)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    raw = session.run(None, {name: tensor})

    bare = _median_ms(lambda: session.run(None, {name: tensor}), args.runs)
    core = _median_ms(lambda: model.run([image], params), args.runs)
    pre = _median_ms(lambda: preprocess_into(image, manifest.preprocess, tensor[0], params), args.runs)
    post = _median_ms(lambda: detect.select(raw[0][0], manifest.output.layout, len(manifest.class_names),
                                            params, manifest.class_names), args.runs)
    result = model.run([image], params)[0]
    found = f"{len(result)} detections" if isinstance(result, Detections) else "a classification"

    print(f"model {args.model} ({manifest.task}, input {manifest.input.width}x{manifest.input.height}), "
          f"image {w}x{h}, {found}, onnxruntime {ort.__version__}, {args.runs} runs")
    print(f"{'bare session.run':<28}{bare:8.2f} ms   1.00")
    print(f"{'Model.run (loaded image)':<28}{core:8.2f} ms   {core / bare:.3f}x   (+{core - bare:.2f} ms)")
    print(f"{'  of which preprocess':<28}{pre:8.2f} ms")
    print(f"{'  of which select + NMS':<28}{post:8.3f} ms")


if __name__ == "__main__":
    main()
