"""A stand-in for TensorRT where there is no GPU: the one fake of the engine tests.

Everything around TensorRT is real in the tests that use it: the build runs as a child process started
by ``engines.trt_build.BuildProcess`` and reports progress in the same JSON lines; its plan goes
through the real engine cache (temp file, atomic store, sidecar, validation); the check against ONNX
Runtime, the swap in the ``ModelManager`` and the status reporting are the production code. What is
faked is only TensorRT itself: the "plan" is a copy of the ONNX file and "loading" it opens it with
ONNX Runtime.

Child side: ``python -m trt_stand_in SPEC_JSON`` (with tests/ on PYTHONPATH). ``STAND_IN_MODE`` picks
what the build does: ``ok`` (default), ``slow`` (takes ~3 s in steps), ``endless`` (5 minutes), ``fail``
(reports a parser error), ``crash`` (killed by SIGKILL mid-build, as the OOM killer would).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

IDENTITY = {"tensorrt": "0.0.0-stand-in", "gpu": "Stand-in GPU", "compute_capability": "0.0", "l4t": None}


def _io(onnx: str) -> list[dict[str, Any]]:
    import onnxruntime as ort

    session = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
    types = {"tensor(float)": "float32"}
    io = []
    for mode, args in (("input", session.get_inputs()), ("output", session.get_outputs())):
        for a in args:
            io.append({"name": a.name, "mode": mode, "shape": [d if isinstance(d, int) else -1 for d in a.shape],
                       "dtype": types.get(a.type, a.type)})
    return io


def main() -> int:
    spec = json.loads(sys.argv[1])
    mode = os.environ.get("STAND_IN_MODE", "ok")

    def emit(event: dict[str, Any]) -> None:
        print(json.dumps(event), flush=True)

    emit({"event": "progress", "phase": "parsing the ONNX model", "fraction": None})
    if mode == "fail":
        print("stand-in builder: some TensorRT-like log line on stderr", file=sys.stderr, flush=True)
        emit({"event": "error", "message": "TensorRT's ONNX parser refused the model: stand-in failure"})
        return 1
    if spec["precision"] == "int8":  # the calibration frames the queue wrote must be what TensorRT reads
        from engines.calibration import load_frames

        try:
            load_frames(Path(spec["calibration_frames"] or ""))
        except (OSError, ValueError) as exc:
            emit({"event": "error", "message": f"stand-in builder: bad calibration frames: {exc}"})
            return 1
    steps = {"slow": 6, "endless": 600}.get(mode, 3)
    for i in range(steps):
        emit({"event": "progress", "phase": "Building engine", "fraction": round((i + 1) / steps, 3)})
        time.sleep(0.5 if mode in ("slow", "endless") else 0.02)
        if mode == "crash" and i == 1:
            os.kill(os.getpid(), signal.SIGKILL)
    shutil.copyfile(spec["onnx"], spec["plan"])
    emit({"event": "done", "plan": spec["plan"], "precision": spec["precision"], "tensorrt": IDENTITY["tensorrt"],
          "io": _io(spec["onnx"]), "seconds": 0.1, "workspace_bytes": spec["workspace_bytes"],
          "progress_monitor": True})
    return 0


class StandInEngine:
    """The "plan" (an ONNX copy) in ONNX Runtime; ``scale`` != 1 multiplies every output (a bad engine)."""

    def __init__(self, plan: Path, io: list[dict[str, Any]] | None, scale: float = 1.0) -> None:
        from engines import EngineLoadError, EnginePrefs
        from engines.ort import OrtEngine

        self._ort = OrtEngine(plan, EnginePrefs(max_batch=8))
        found = _io(str(plan))
        if io is not None and found != io:
            raise EngineLoadError(f"{plan}: the engine's tensors {found} are not the sidecar's {io}")
        self.inputs, self.outputs, self.max_batch = self._ort.inputs, self._ort.outputs, self._ort.max_batch
        self.name = "tensorrt-stand-in"
        self.scale = scale
        self.runs = 0
        self.closed = False

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        self.runs += 1
        outs = self._ort.run(batch)
        return [o * self.scale for o in outs] if self.scale != 1.0 else outs

    def close(self) -> None:
        self.closed = True
        self._ort.close()


class StandInBackend:
    """``engines.trt_queue.PlanBackend`` without TensorRT."""

    build_module = "trt_stand_in"

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale
        self.loaded: list[StandInEngine] = []

    def identity(self) -> dict[str, Any]:
        return dict(IDENTITY)

    def load(self, plan: Path, io: list[dict[str, Any]] | None) -> StandInEngine:
        engine = StandInEngine(plan, io, self.scale)
        self.loaded.append(engine)
        return engine


if __name__ == "__main__":
    sys.exit(main())
