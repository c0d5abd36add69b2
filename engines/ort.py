"""ONNX Runtime back-end: CPU by default, CUDA or TensorRT execution providers when asked and present.

Owns the session options, the provider order and the translation of ONNX Runtime's exceptions into
``EngineError``. Imports ``onnxruntime`` only when an engine is built.
"""

from __future__ import annotations

import logging
import os
import threading
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import EngineLoadError, EnginePrefs, EngineRunError, EngineUnavailable, TensorSpec

log = logging.getLogger(__name__)

_PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
_logged_providers: set[tuple[str, ...]] = set()

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}


def _named(why: str, model_path: Path) -> str:
    """``model.onnx: why`` for a network caller: ONNX Runtime's text names the file by its whole path."""
    return f"{model_path.name}: {why.replace(str(model_path), model_path.name)}"


def _spec(arg: Any) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in arg.shape)
    return TensorSpec(name=arg.name, shape=shape, dtype=_ORT_TYPES.get(arg.type, arg.type))


def choose_providers(wanted: tuple[str, ...], available: list[str]) -> list[str]:
    """The providers to ask ONNX Runtime for: the wanted ones that exist, in order, then the CPU."""
    chosen: list[str] = []
    for short in wanted:
        full = _PROVIDER_NAMES.get(short.lower(), short)
        if full in available and full not in chosen:
            chosen.append(full)
        elif full not in available:
            log.warning("ONNX Runtime provider %s requested but not available (have: %s)",
                        full, ", ".join(available))
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


SHORT_SPIN_US = 100  # EnginePrefs.short_spin: an idle thread spin-waits this long, then sleeps


def spin_options(version: str, short: bool) -> dict[str, str]:
    """How the session's threads wait for work between runs (``EnginePrefs.short_spin``).

    By default ONNX Runtime's threads spin-wait a long while after each run (before 1.26, a million
    pause instructions: a few to tens of milliseconds, by CPU), so that the next run finds them awake.
    That is the lowest latency when runs follow one another with little else in between (HTTP
    requests), but it holds the cores that work beside inference needs (a pipeline's video decoding,
    the active-learning writer). ``short``: from 1.26 they spin 100 us (the gaps inside a run), then
    sleep; before 1.26 they stop spinning when a run returns. Measured on 2 cores with the demo
    detector: HTTP requests one after another answer 0.2-0.3 ms sooner with the default spin (the
    server's own inference time, bench/http.py); a pipeline ran 117-125 frames/s with a 1 ms spin
    against 92 with the default. 100 us rather than 1 ms (2026-12-06, rotated rounds in one process): the
    pipeline alone as fast (1.00-1.06x), 1.5-3 ms less CPU a frame, and sampling every frame for active
    learning kept 0.91-0.93x of it instead of 0.84-0.88x, since the writer now gets the core the pool
    thread held spinning through the pipeline's serial steps between runs; back-to-back runs of the model
    alone took the same time. No spin at all (0 us) cost the pipeline alone 16 % of its frames/s. The
    price: 2 and 4 pipelines processing files flat out on one session got 0.92-0.97x and 0.88-0.96x of
    their total with 1 ms (the next pipeline's run comes after the pool thread has gone to sleep).
    """
    if not short:
        return {}
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except ValueError:
        major, minor = 0, 0
    if (major, minor) >= (1, 26):
        return {"session.intra_op.spin_duration_us": str(SHORT_SPIN_US)}
    return {"session.force_spinning_stop": "1"}


def concurrent_runs(intra_op_threads: int) -> int:
    """How many runs a CPU session lets in at once: as many as the cores this process may use can
    serve with ``intra_op_threads`` threads each (0: ONNX Runtime's default, one per core, so one run).

    Each run in flight keeps its own intermediate tensors in ONNX Runtime's arena, and runs beyond the
    cores only share them out. YOLOv8n-sized 640x640 model, 2 cores, default threads, 8 HTTP clients
    (bench/http.py --model heavy): unbounded, the server's peak RSS (master and worker) was 332 MB and
    4-client throughput 0.96x bare ONNX Runtime on 4 threads; one run at a time, 229-233 MB and
    1.00-1.04x (0.86-0.97x with 2 or 4 runs at a time: each run's threads spin-wait on the cores the
    other needs)."""
    cores = len(os.sched_getaffinity(0))
    return max(1, cores // (intra_op_threads or cores))


class OrtEngine:
    """An ONNX model in an ``onnxruntime.InferenceSession``."""

    def __init__(self, model_path: Path, prefs: EnginePrefs) -> None:
        try:
            import onnxruntime as ort  # lazy: onnxruntime
        except ImportError as exc:  # pragma: no cover - onnxruntime is a hard dependency
            raise EngineUnavailable(f"onnxruntime is not installed ({exc})") from exc

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = prefs.intra_op_threads
        options.inter_op_num_threads = prefs.inter_op_threads
        for key, value in spin_options(ort.__version__, prefs.short_spin).items():
            options.add_session_config_entry(key, value)
        options.log_severity_level = 3  # errors only; ORT's warnings go to stderr, not our logs
        providers = choose_providers(prefs.providers, ort.get_available_providers())
        # On the CPU, no memory pattern: it plans one block per input shape and keeps it for the session's
        # life. Without it (YOLOv8n-sized model) batches of 1..8 peaked at 306 MB instead of 388, 8
        # concurrent batch-1 runs at 104 instead of 115, and a run cost ~1% more CPU. GPU providers keep
        # ONNX Runtime's default: not measured there.
        options.enable_mem_pattern = providers[0] != "CPUExecutionProvider"
        try:
            self._session = ort.InferenceSession(str(model_path), options, providers=providers)
        except Exception as exc:  # ORT raises its own untyped exceptions (Fail, InvalidGraph, ...)
            why = f"ONNX Runtime cannot load it: {exc}"
            raise EngineLoadError(f"{model_path}: {why}", public=_named(why, model_path)) from exc

        used = tuple(self._session.get_providers())
        if used not in _logged_providers:
            _logged_providers.add(used)
            log.info("onnxruntime %s providers: %s", ort.__version__, ", ".join(used))
        self.name = f"onnxruntime:{used[0]}"
        self.inputs = [_spec(a) for a in self._session.get_inputs()]
        self.outputs = [_spec(a) for a in self._session.get_outputs()]
        if len(self.inputs) != 1:
            raise EngineLoadError(
                f"{model_path}: expected one image input, the model has {len(self.inputs)}: "
                + ", ".join(i.name for i in self.inputs)
            )
        batch_dim = self.inputs[0].shape[0] if self.inputs[0].shape else None
        self.max_batch = batch_dim if batch_dim is not None else max(1, prefs.max_batch)
        self._input_name = self.inputs[0].name
        self._output_names = [o.name for o in self.outputs]
        # The bound is for the CPU: a GPU provider's runs queue on the device, not on the cores.
        # (one run at a time, the usual case, is a plain lock: a semaphore is Python code, 2-3 us a run)
        runs = concurrent_runs(prefs.intra_op_threads)
        self._runs: AbstractContextManager[Any] = (
            nullcontext() if used[0] != "CPUExecutionProvider"
            else threading.Lock() if runs == 1 else threading.BoundedSemaphore(runs))

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        try:
            with self._runs:
                outputs = self._session.run(self._output_names, {self._input_name: batch})
        except Exception as exc:
            raise EngineRunError(
                f"{self.name}: run failed for input of shape {tuple(batch.shape)}: {exc}"
            ) from exc
        return list(outputs)

    def close(self) -> None:
        # ORT frees the session when the last reference goes; drop ours explicitly.
        self.__dict__.pop("_session", None)


@dataclass(frozen=True)
class ModelInfo:
    """What an ONNX file declares: its tensors and its ``metadata_props``."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    metadata: dict[str, str]


def inspect(model_path: Path) -> ModelInfo:
    """Open ``model_path`` with ONNX Runtime (no graph optimisation) and describe it.

    Raises ``EngineLoadError`` naming the file when ONNX Runtime cannot load it, so a corrupt or
    unsupported file is caught before it enters the model store.
    """
    import onnxruntime as ort  # lazy: onnxruntime

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        why = f"not a valid ONNX model for ONNX Runtime: {exc}"
        raise EngineLoadError(f"{model_path}: {why}", public=_named(why, model_path)) from exc
    return ModelInfo(
        inputs=[_spec(a) for a in session.get_inputs()],
        outputs=[_spec(a) for a in session.get_outputs()],
        metadata=dict(session.get_modelmeta().custom_metadata_map),
    )
