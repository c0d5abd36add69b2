"""Building a TensorRT plan from an ONNX file, in a child process that reports its progress.

A build takes minutes on a Jetson and up to gigabytes of memory; in the serving process it would
stall requests and could take the daemon down with it. So ``BuildProcess`` runs
``python -m engines.trt_build SPEC.json`` at low priority (nice 10, idle I/O class) and reads JSON
lines from its stdout::

    {"event": "progress", "phase": "Building engine", "fraction": 0.42}
    {"event": "done", "plan": "...", "io": [...], "precision": "fp16", "seconds": 93.1, ...}
    {"event": "error", "message": "..."}

The parent kills the child when the daemon stops; the child writes its plan only to the temporary
path it was given, so a killed build leaves nothing the cache would take.

``build`` is the TensorRT side: ONNX parser, FP16 when the GPU has fast FP16, INT8 with the entropy
calibrator, a DLA core with GPU fallback, one optimisation profile for the batch sizes the batcher
uses, a workspace limit derived from free memory, the timing cache on disk, and TensorRT's progress
monitor where the bindings have it. Version differences go through ``engines.trt_api``.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engines.base import EngineError
from engines.calibration import load_frames, make_calibrator
from engines.trt_api import TrtApi

log = logging.getLogger(__name__)

MIB = 1 << 20
MIN_WORKSPACE = 256 * MIB
MAX_WORKSPACE = 4096 * MIB
RESERVE = 512 * MIB  # left to the serving process and the system while a build runs


class BuildFailed(EngineError):
    """The build did not produce a usable plan; the message says why (TensorRT's own words where it gave any)."""


@dataclass(frozen=True)
class BuildSpec:
    onnx: str
    plan: str  # where to write the plan (a temporary path of the cache)
    precision: str = "fp16"  # fp16 falls back to fp32 where the GPU has no fast FP16
    dla_core: int | None = None
    batch: tuple[int, int, int] = (1, 1, 8)
    workspace_bytes: int = 0  # 0: derived from free memory in the build process
    timing_cache: str | None = None
    calibration_frames: str | None = None  # .npy of (N, 3, H, W) float32, for int8
    calibration_cache: str | None = None
    compute_capability: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> BuildSpec:
        data = json.loads(text)
        data["batch"] = tuple(data["batch"])
        return cls(**data)


def available_memory(meminfo: Path = Path("/proc/meminfo")) -> int:
    """MemAvailable in bytes (on a Jetson the GPU shares this memory)."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def workspace_limit(free_bytes: int) -> int:
    """Half of what is free after a reserve for the rest of the system, within [256 MiB, 4 GiB].

    Raises ``BuildFailed`` when not even the minimum fits: better no engine than an OOM-killed board.
    """
    usable = (free_bytes - RESERVE) // 2
    if usable < MIN_WORKSPACE:
        raise BuildFailed(
            f"not enough free memory to build an engine: {free_bytes // MIB} MiB free, "
            f"need at least {(2 * MIN_WORKSPACE + RESERVE) // MIB} MiB")
    return int(min(usable, MAX_WORKSPACE))


class _Progress:
    """Turns TensorRT's nested phases into one fraction for the outermost phase, at most twice a second."""

    def __init__(self, emit: Callable[[dict[str, Any]], None]) -> None:
        self.emit = emit
        self.phases: dict[str, tuple[str | None, int]] = {}
        self.top: str | None = None
        self.last = 0.0

    def start(self, name: str, parent: str | None, steps: int) -> None:
        self.phases[name] = (parent, max(1, steps))
        if parent is None:
            self.top = name
            self.emit({"event": "progress", "phase": name, "fraction": 0.0})

    def step(self, name: str, step: int) -> bool:
        parent, steps = self.phases.get(name, (None, 1))
        now = time.monotonic()
        if name == self.top and now - self.last >= 0.5:
            self.last = now
            self.emit({"event": "progress", "phase": name, "fraction": round(min(1.0, (step + 1) / steps), 3)})
        return True  # never cancel: a stop kills the process

    def finish(self, name: str) -> None:
        self.phases.pop(name, None)


def _monitor(trt: Any, progress: _Progress) -> Any:
    class Monitor(trt.IProgressMonitor):  # type: ignore[misc]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.lock = threading.Lock()  # TensorRT may call from several threads

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with self.lock:
                progress.start(phase_name, parent_phase, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            with self.lock:
                return progress.step(phase_name, step)

        def phase_finish(self, phase_name: str) -> None:
            with self.lock:
                progress.finish(phase_name)

    return Monitor()


def build(spec: BuildSpec, emit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Build ``spec.onnx`` into ``spec.plan``; returns what the sidecar records. Needs TensorRT, a GPU
    and (for INT8) pycuda."""
    import tensorrt as trt  # lazy: tensorrt, in the build process only

    api = TrtApi(trt)
    t0 = time.monotonic()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(api.network_flags())
    parser = trt.OnnxParser(network, logger)
    emit({"event": "progress", "phase": "parsing the ONNX model", "fraction": None})
    if not parser.parse_from_file(spec.onnx):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildFailed(f"TensorRT's ONNX parser refused {spec.onnx}: {errors or 'no detail'}")

    config = builder.create_builder_config()
    free = available_memory()
    api.set_workspace(config, spec.workspace_bytes or workspace_limit(free))

    precision = spec.precision
    if precision == "fp16" and not api.fast_fp16(builder, spec.compute_capability):
        emit({"event": "note", "message": "this GPU has no fast FP16; building FP32"})
        precision = "fp32"
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # INT8 layers without an INT8 kernel fall back to FP16
    calibrator = None
    if precision == "int8":
        if not api.fast_int8(builder):
            raise BuildFailed("INT8 asked for, but this GPU has no fast INT8")
        if not spec.calibration_frames:
            raise BuildFailed("INT8 needs calibration frames (engine.calibration_images, or the active-learning spool)")
        import pycuda.autoinit  # noqa: F401  # lazy: pycuda, for INT8 only (a context for the calibrator's buffer)
        import pycuda.driver as cuda  # lazy: pycuda

        config.set_flag(trt.BuilderFlag.INT8)
        calibrator = make_calibrator(trt, cuda, load_frames(Path(spec.calibration_frames)), spec.batch[1],
                                     Path(spec.calibration_cache or spec.plan + ".calib"))
        config.int8_calibrator = calibrator
    if spec.dla_core is not None:
        try:
            api.use_dla(builder, config, spec.dla_core)
        except ValueError as exc:
            raise BuildFailed(str(exc)) from None

    lo, opt, hi = spec.batch
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = list(tensor.shape)
        if any(d < 0 for d in shape[1:]):
            raise BuildFailed(f"input {tensor.name} has dynamic axes other than the batch: {shape}")
        if shape[0] < 0:
            profile.set_shape(tensor.name, [lo, *shape[1:]], [opt, *shape[1:]], [hi, *shape[1:]])
        else:
            profile.set_shape(tensor.name, shape, shape, shape)
    config.add_optimization_profile(profile)

    timing = None
    if spec.timing_cache:
        path = Path(spec.timing_cache)
        blob = path.read_bytes() if path.is_file() else b""
        timing = config.create_timing_cache(blob)
        if not config.set_timing_cache(timing, ignore_mismatch=False):
            timing = config.create_timing_cache(b"")  # a cache from another GPU: start afresh
            config.set_timing_cache(timing, ignore_mismatch=True)

    progress = _Progress(emit)
    monitor = None
    if api.has_progress_monitor:
        monitor = _monitor(trt, progress)
        config.progress_monitor = monitor
    else:
        emit({"event": "progress", "phase": "building (this TensorRT reports no steps)", "fraction": None})

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildFailed("TensorRT could not build the engine (see the build log above for its reason)")
    plan = Path(spec.plan)
    with plan.open("wb") as f:
        f.write(memoryview(serialized))
        f.flush()
        os.fsync(f.fileno())
    if timing is not None and spec.timing_cache:
        path = Path(spec.timing_cache)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
        tmp.replace(path)

    engine = trt.Runtime(logger).deserialize_cuda_engine(plan.read_bytes())
    if engine is None:
        raise BuildFailed("the plan TensorRT just built does not deserialise")
    return {"event": "done", "plan": str(plan), "precision": precision, "tensorrt": api.version,
            "io": [t.as_dict() for t in api.io_tensors(engine)], "seconds": round(time.monotonic() - t0, 1),
            "workspace_bytes": spec.workspace_bytes or workspace_limit(free),
            "progress_monitor": monitor is not None}


def _lower_priority() -> None:
    """Run the build behind serving: nice 10, the idle I/O class, and die with the daemon (a build
    orphaned by a kill -9 of the daemon would otherwise go on holding memory)."""
    try:
        os.nice(10)
    except OSError:
        pass
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent is already gone
            os._exit(1)
        # ioprio_set(IOPRIO_WHO_PROCESS, 0, IOPRIO_CLASS_IDLE << 13) on x86-64 / aarch64
        nr = {"x86_64": 251, "aarch64": 30}.get(os.uname().machine)
        if nr is not None:
            libc.syscall(nr, 1, 0, 3 << 13)
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    """The build process: ``python -m engines.trt_build SPEC_JSON``; JSON lines on stdout."""
    args = sys.argv[1:] if argv is None else argv
    out = sys.stdout

    def emit(event: dict[str, Any]) -> None:
        out.write(json.dumps(event) + "\n")
        out.flush()

    sys.stdout = sys.stderr  # anything a library prints must not corrupt the event stream
    _lower_priority()
    try:
        spec = BuildSpec.from_json(args[0])
        emit(build(spec, emit))
        return 0
    except EngineError as exc:  # BuildFailed, or EngineUnavailable from TrtApi (a TensorRT too old)
        emit({"event": "error", "message": str(exc)})
    except ImportError as exc:
        emit({"event": "error", "message": f"TensorRT is not usable here: {exc}"})
    except Exception as exc:  # noqa: BLE001 - anything else is reported, with its type
        emit({"event": "error", "message": f"{type(exc).__name__}: {exc}"})
    return 1


class BuildProcess:
    """One build in a child process; ``run`` blocks until it ends and returns the child's ``done`` event.

    ``module`` is the module run with ``python -m``: ``engines.trt_build`` in production; the tests
    give a stand-in that builds without a GPU, so this code (spawning, progress, errors, kill) is the
    one that runs in production.
    """

    def __init__(self, spec: BuildSpec, on_event: Callable[[dict[str, Any]], None] = lambda e: None,
                 module: str = "engines.trt_build", python: str = sys.executable) -> None:
        self.spec = spec
        self.on_event = on_event
        self.command = [python, "-m", module, spec.to_json()]
        self._proc: subprocess.Popen[str] | None = None
        self._killed = threading.Event()

    def run(self) -> dict[str, Any]:
        self._proc = subprocess.Popen(
            self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True)
        stderr_tail: deque[str] = deque(maxlen=20)
        stderr = self._proc.stderr
        assert stderr is not None
        reader = threading.Thread(target=lambda: stderr_tail.extend(stderr), name="build-stderr", daemon=True)
        reader.start()
        result: dict[str, Any] | None = None
        error: str | None = None
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                stderr_tail.append(line)
                continue
            if event.get("event") == "done":
                result = event
            elif event.get("event") == "error":
                error = str(event.get("message"))
            else:
                self.on_event(event)
        code = self._proc.wait()
        reader.join(timeout=2)
        if self._killed.is_set():
            raise BuildFailed("the build was stopped")
        if result is not None and code == 0:
            return result
        detail = error or "".join(stderr_tail).strip()[-2000:] or "no output"
        if code < 0:
            detail = f"killed by signal {-code} (out of memory?); {detail}"
        raise BuildFailed(detail)

    def kill(self) -> None:
        self._killed.set()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()


if __name__ == "__main__":
    sys.exit(main())
