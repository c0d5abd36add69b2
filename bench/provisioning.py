"""What provisioning costs, against baselines measured in the same run, in one process:

  pull        first use of a model pulled from a loopback fake of Roboflow's API (tests/fake_roboflow.py:
              four API calls, two downloads, import, load)  vs  install of the same ONNX from a local
              file + load (the baseline)
  activation  a new version staged, loaded beside the serving one, checked and swapped  vs  a cold
              load of the same model (the baseline)
  under load  request latency (p50 / p99) of 3 threads inferring on the model while new versions are
              activated  vs  the same threads with nothing happening; failed requests counted

    python bench/provisioning.py [--rounds 5]
"""

# ruff: noqa: E402
from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]  # see bench/core.py
sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "tests"))  # the fake of Roboflow's API

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(_HERE).parent
DEMO = ROOT / "edge_agent" / "demo" / "store"
KEY = "bench-key-0000"


def _variant(path: Path, dest: Path, note: str) -> Path:
    import onnx

    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = "bench", note
    onnx.save(model, str(dest))
    return dest


class _Load:
    def __init__(self, rt: Any, model_id: str, image: np.ndarray, threads: int = 3) -> None:
        from edge_agent.params import InferenceParams

        self.latencies: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        params = InferenceParams()

        def run() -> None:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                try:
                    loaded, _ = rt.inference.model(model_id)
                    rt.inference.infer(loaded, [image], params)
                    self.latencies.append(time.perf_counter() - t0)
                except Exception:
                    self.failures += 1

        self._threads = [threading.Thread(target=run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> _Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def percentiles(self) -> tuple[float, float]:
        ms = np.array(self.latencies) * 1000
        return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    from edge_agent.demo.shapes import generate_scene
    from edge_agent.runtime import Runtime
    from edge_agent.settings import ModelsSettings, Settings
    from fake_roboflow import FakeRoboflow, demo_package

    onnx = DEMO / "shapes" / "1" / "model.onnx"
    image = generate_scene(7, size=(480, 640)).image
    with tempfile.TemporaryDirectory() as tmp_name, \
            FakeRoboflow({f"pulled-{i}/1": demo_package(DEMO / "shapes" / "1") for i in range(args.rounds)},
                         api_key=KEY) as cloud:
        tmp = Path(tmp_name)
        settings = Settings.defaults(tmp / "state").model_copy(
            update={"models": ModelsSettings(api_url=cloud.api_url)})
        rt = Runtime(settings)
        rt.start()
        try:
            local, pulled = [], []
            for i in range(args.rounds):
                t0 = time.perf_counter()
                rt.store.install(onnx, f"local-{i}/1")
                rt.inference.model(f"local-{i}/1")
                local.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                rt.inference.model(f"pulled-{i}/1", KEY)
                pulled.append(time.perf_counter() - t0)

            rt.store.install(onnx, "acme/1")
            variants = [_variant(onnx, tmp / f"v{i}.onnx", str(i)) for i in range(args.rounds)]
            cold, activation = [], []
            for _ in range(args.rounds):
                rt.manager.unload("acme/1")
                t0 = time.perf_counter()
                rt.inference.model("acme/1")
                cold.append(time.perf_counter() - t0)
            with _Load(rt, "acme/1", image) as quiet:
                time.sleep(3.0)
            with _Load(rt, "acme/1", image) as busy:
                for variant in variants:
                    t0 = time.perf_counter()
                    result = rt.provisioner.install_file(variant, "acme/1")
                    activation.append(time.perf_counter() - t0)
                    assert result["serving"], result
                time.sleep(0.5)
        finally:
            rt.stop()

    med = statistics.median
    print(f"pull (first use, fake cloud on loopback)  {med(pulled) * 1000:8.1f} ms   "
          f"local install + load {med(local) * 1000:8.1f} ms   ratio {med(pulled) / med(local):5.2f}x")
    print(f"activation (stage, load, check, swap)     {med(activation) * 1000:8.1f} ms   "
          f"cold load            {med(cold) * 1000:8.1f} ms   ratio {med(activation) / med(cold):5.2f}x")
    q50, q99 = quiet.percentiles()
    b50, b99 = busy.percentiles()
    print(f"latency, 3 threads, quiet                 p50 {q50:6.1f} ms  p99 {q99:6.1f} ms  "
          f"({len(quiet.latencies)} requests, {quiet.failures} failed)")
    print(f"latency, 3 threads, {args.rounds} activations          p50 {b50:6.1f} ms  p99 {b99:6.1f} ms  "
          f"({len(busy.latencies)} requests, {busy.failures} failed)   p99 ratio {b99 / q99:5.2f}x")


if __name__ == "__main__":
    main()
