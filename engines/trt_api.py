"""Every TensorRT call that differs between 8.6 (JetPack 5) and 10.x (JetPack 6, x86), in one place.

``TrtApi(tensorrt_module)`` wraps the imported module; the builder (``trt_build``) and the runtime
(``trt``) call through it and nothing else checks a version. Written against NVIDIA's Python API
documentation for 8.6 and 10.x; it has not run against a real TensorRT in this project's CI (there
is no GPU there): see docs/jetson.md for what was verified where.

The differences handled:
- network creation: 8.x needs the ``EXPLICIT_BATCH`` flag, 10.x is always explicit-batch (the flag is
  deprecated there);
- workspace: ``set_memory_pool_limit(MemoryPoolType.WORKSPACE, n)`` (8.4+), ``max_workspace_size``
  before that;
- fast FP16: ``builder.platform_has_fast_fp16`` (deprecated in 10.x, still present), else the GPU's
  compute capability;
- progress: ``IProgressMonitor`` exists in the 10.x Python bindings only;
- engine I/O: the named-tensor API (8.5+), ``get_tensor_profile_shape`` (8.5+) or
  ``get_profile_shape`` (older);
- execution: ``execute_async_v3`` with tensor addresses (8.5+).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from engines.base import EngineUnavailable


@dataclass(frozen=True)
class IoTensor:
    name: str
    is_input: bool
    shape: tuple[int, ...]  # -1 for a dynamic axis
    dtype: str  # numpy dtype name

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "mode": "input" if self.is_input else "output", "shape": list(self.shape),
                "dtype": self.dtype}


class TrtApi:
    def __init__(self, trt: Any) -> None:
        self.trt = trt
        self.version: str = trt.__version__
        self.major = int(self.version.split(".")[0])
        if self.major < 8 or (self.major == 8 and int(self.version.split(".")[1]) < 5):
            raise EngineUnavailable(f"TensorRT {self.version} is too old: 8.5 or newer is needed (named-tensor API)")

    # -- building -------------------------------------------------------------------------------

    def network_flags(self) -> int:
        if self.major >= 10:
            return 0
        return 1 << int(self.trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)

    def set_workspace(self, config: Any, nbytes: int) -> None:
        if hasattr(config, "set_memory_pool_limit"):
            config.set_memory_pool_limit(self.trt.MemoryPoolType.WORKSPACE, nbytes)
        else:  # pragma: no cover - TensorRT < 8.4 is refused above
            config.max_workspace_size = nbytes

    def fast_fp16(self, builder: Any, compute_capability: str | None) -> bool:
        has = getattr(builder, "platform_has_fast_fp16", None)
        if has is not None:
            return bool(has)
        if compute_capability is None:
            return False
        major, minor = (int(p) for p in compute_capability.split("."))
        return (major, minor) >= (5, 3) and (major, minor) != (6, 1)

    def fast_int8(self, builder: Any) -> bool:
        return bool(getattr(builder, "platform_has_fast_int8", True))

    @property
    def has_progress_monitor(self) -> bool:
        return hasattr(self.trt, "IProgressMonitor")

    def use_dla(self, builder: Any, config: Any, core: int) -> None:
        cores = int(getattr(builder, "num_DLA_cores", 0))
        if core >= cores:
            raise ValueError(f"DLA core {core} asked for, this device has {cores}")
        config.default_device_type = self.trt.DeviceType.DLA
        config.DLA_core = core
        config.set_flag(self.trt.BuilderFlag.GPU_FALLBACK)

    # -- engines --------------------------------------------------------------------------------

    def nptype(self, dtype: Any) -> str:
        return str(np.dtype(self.trt.nptype(dtype)).name)

    def io_tensors(self, engine: Any) -> list[IoTensor]:
        trt = self.trt
        tensors = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            tensors.append(IoTensor(
                name=name,
                is_input=engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                shape=tuple(int(d) for d in engine.get_tensor_shape(name)),
                dtype=self.nptype(engine.get_tensor_dtype(name)),
            ))
        return tensors

    def profile_shape(self, engine: Any, name: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) shapes of input ``name`` in optimisation profile 0."""
        if hasattr(engine, "get_tensor_profile_shape"):
            shapes = engine.get_tensor_profile_shape(name, 0)
        else:  # pragma: no cover - older bindings
            shapes = engine.get_profile_shape(0, name)
        lo, opt, hi = (tuple(int(d) for d in s) for s in shapes)
        return lo, opt, hi

    def execute(self, context: Any, stream_handle: int) -> bool:
        return bool(context.execute_async_v3(stream_handle))
