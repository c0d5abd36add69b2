"""TensorRT back-end: a plan from the engine cache, run with pycuda behind the ``Engine`` contract.

One CUDA context (the device's primary context, shared with anything else in the process) is pushed
around every call. Each thread that runs the engine gets its own execution context, CUDA stream and
buffers (page-locked host buffers and device buffers sized for the profile's largest batch), created
on its first run: TensorRT execution contexts must not be shared between threads, and one stream per
context lets two threads' copies and kernels overlap. ``run`` copies the input in and the outputs out
asynchronously on that stream and waits once.

Written against the TensorRT (8.6, 10.x) and pycuda documentation; no GPU with TensorRT was available
where this project's tests run, so this module runs only in the ``gpu`` test suite and in
``edge-agent selftest`` on a device (docs/jetson.md).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import EngineLoadError, EngineRunError, EngineUnavailable, TensorSpec
from engines.trt_api import IoTensor, TrtApi

log = logging.getLogger(__name__)


def import_runtime() -> tuple[Any, Any]:
    """``(tensorrt, pycuda.driver)``, initialised, or ``EngineUnavailable`` saying which is missing."""
    try:
        import tensorrt as trt  # lazy: tensorrt
    except ImportError as exc:
        raise EngineUnavailable(f"TensorRT's Python bindings are not installed ({exc})") from exc
    try:
        import pycuda.driver as cuda  # lazy: pycuda
    except ImportError as exc:
        raise EngineUnavailable(f"pycuda is not installed ({exc}); install edge-agent[jetson]") from exc
    try:
        cuda.init()
        if cuda.Device.count() < 1:
            raise EngineUnavailable("pycuda sees no CUDA device")
    except cuda.Error as exc:
        raise EngineUnavailable(f"CUDA does not answer: {exc}") from exc
    return trt, cuda


@dataclass
class _Worker:
    """What one thread needs to run the engine."""

    context: Any
    stream: Any
    host: dict[str, np.ndarray]
    device: dict[str, Any]


class TrtEngine:
    """A TensorRT plan, deserialised on CUDA device 0."""

    def __init__(self, plan_path: Path, expected_io: list[dict[str, Any]] | None = None) -> None:
        trt, cuda = import_runtime()
        self._trt, self._cuda = trt, cuda
        self.api = TrtApi(trt)
        self._ctx = cuda.Device(0).retain_primary_context()
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._local = threading.local()
        self._closed = False
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._ctx.push()
        try:
            self._runtime = trt.Runtime(self._logger)
            self._engine = self._runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
        finally:
            cuda.Context.pop()
        if self._engine is None:
            raise EngineLoadError(f"{plan_path}: TensorRT {self.api.version} cannot deserialise this plan")
        io = self.api.io_tensors(self._engine)
        if expected_io is not None:
            found = [t.as_dict() for t in io]
            if found != expected_io:
                raise EngineLoadError(f"{plan_path}: the engine's tensors {found} are not the sidecar's {expected_io}")
        self._io = io
        ins = [t for t in io if t.is_input]
        if len(ins) != 1:
            raise EngineLoadError(f"{plan_path}: expected one image input, the engine has {len(ins)}")
        self._input = ins[0]
        _lo, _opt, hi = self.api.profile_shape(self._engine, self._input.name)
        self.max_batch = int(hi[0])
        self._max_shape = hi
        self.inputs = [_spec(self._input)]
        self.outputs = [_spec(t) for t in io if not t.is_input]
        self.name = f"tensorrt:{self.api.version}"

    # -- per thread ------------------------------------------------------------------------------

    def _worker(self) -> _Worker:
        worker: _Worker | None = getattr(self._local, "worker", None)
        if worker is not None:
            return worker
        cuda = self._cuda
        context = self._engine.create_execution_context()
        if context is None:
            raise EngineRunError(f"{self.name}: cannot create an execution context (out of GPU memory?)")
        context.set_input_shape(self._input.name, self._max_shape)
        host, device = {}, {}
        for t in self._io:
            shape = tuple(context.get_tensor_shape(t.name))
            host[t.name] = cuda.pagelocked_empty(shape, np.dtype(t.dtype))
            device[t.name] = cuda.mem_alloc(host[t.name].nbytes)
            context.set_tensor_address(t.name, int(device[t.name]))
        worker = _Worker(context, cuda.Stream(), host, device)
        with self._lock:
            self._workers.append(worker)
        self._local.worker = worker
        return worker

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        if self._closed:
            raise EngineRunError(f"{self.name}: the engine is closed")
        n = int(batch.shape[0])
        if n > self.max_batch or tuple(batch.shape[1:]) != tuple(self._max_shape[1:]):
            raise EngineRunError(f"{self.name}: input of shape {tuple(batch.shape)} does not fit the profile "
                                 f"(at most {self.max_batch} x {tuple(self._max_shape[1:])})")
        cuda = self._cuda
        self._ctx.push()
        try:
            w = self._worker()
            w.context.set_input_shape(self._input.name, tuple(batch.shape))
            host_in = w.host[self._input.name]
            np.copyto(host_in[:n], batch, casting="same_kind")
            cuda.memcpy_htod_async(w.device[self._input.name], host_in[:n], w.stream)
            if not self.api.execute(w.context, w.stream.handle):
                raise EngineRunError(f"{self.name}: execution failed for a batch of {n}")
            outs = []
            for t in self.outputs:
                rows = w.host[t.name][:n]
                cuda.memcpy_dtoh_async(rows, w.device[t.name], w.stream)
                outs.append(rows)
            w.stream.synchronize()
            return [o.astype(np.float32, copy=True) for o in outs]  # the buffers are reused by the next run
        except cuda.Error as exc:
            raise EngineRunError(f"{self.name}: CUDA error: {exc}") from exc
        finally:
            cuda.Context.pop()

    def close(self) -> None:
        """Free every thread's buffers and contexts, then the engine (call when no run is in flight)."""
        if self._closed:
            return
        self._closed = True
        self._ctx.push()
        try:
            with self._lock:
                for w in self._workers:
                    for mem in w.device.values():
                        mem.free()
                    del w.context
                self._workers.clear()
            del self._engine
            del self._runtime
        finally:
            self._cuda.Context.pop()
            self._ctx.detach()


def _spec(t: IoTensor) -> TensorSpec:
    return TensorSpec(t.name, tuple(None if d < 0 else d for d in t.shape), t.dtype)
