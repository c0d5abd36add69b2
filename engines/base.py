"""The engine contract: what every inference back-end provides, and the errors it may raise.

An engine takes one pre-processed input batch and returns the raw output tensors. It knows nothing
about images, tasks or classes: that belongs to the task heads in ``edge_agent.heads``.

Error tree (everything ``engines`` raises is one of these, with the runtime's exception chained); it is
the ``EngineError`` branch of the project's one tree, drawn in ``edge_agent/errors.py``::

    EdgeAgentError              the root of every error edge-agent raises
    └── EngineError
        ├── EngineUnavailable   the runtime is not installed or no device answers (choose another back-end)
        │   └── TensorRTUnavailable   (edge_agent.serving.accelerate_setup) no TensorRT here to build with
        ├── EngineLoadError     the model file could not be loaded by this runtime (corrupt or unsupported)
        ├── EngineRunError      a run failed (bad input shape, out of memory, device error)
        ├── BuildFailed         (engines.trt_build) a TensorRT build or its check produced no usable plan
        ├── BuildOutdated       (engines.trt_queue) the model was replaced while its plan was built: not a failure
        └── PycudaBuildError    (engines.pycuda_build) the pycuda wheel could not be built
            └── BuildSkipped    an earlier build failed with the same prerequisites

This module imports nothing outside the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:  # numpy only in annotations: the gunicorn master imports this and stays small
    import numpy as np


class EdgeAgentError(Exception):
    """The root of every error edge-agent raises (the whole tree is drawn in ``edge_agent/errors.py``).

    It is defined here, in the lowest layer, so that ``engines`` (which never imports ``edge_agent``)
    raises members of the same tree. ``message`` is for the log; ``public`` is what a network caller may
    see, where the message holds local detail (paths on disk). ``code`` is the stable name of the error
    in HTTP and MQTT answers.
    """

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, public: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.public = public if public is not None else message


class EngineError(EdgeAgentError):
    """Base of every error an engine raises."""


class EngineUnavailable(EngineError):
    """The back-end cannot be used on this machine (runtime missing, no device)."""


class EngineLoadError(EngineError):
    """The model file could not be loaded by the runtime."""


class EngineRunError(EngineError):
    """Running the model failed."""


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and element type of one model input or output.

    A dimension that is not fixed (a symbolic batch axis, say) is ``None``.
    """

    name: str
    shape: tuple[int | None, ...]
    dtype: str  # numpy dtype name, e.g. "float32"

    @property
    def dynamic_batch(self) -> bool:
        return bool(self.shape) and self.shape[0] is None


@runtime_checkable
class Engine(Protocol):
    """One loaded model on one runtime.

    ``run`` takes a batch whose first axis is at most ``max_batch`` and returns one array per output,
    in the order of ``outputs``. ``close`` releases the runtime's resources; the engine is unusable after.
    """

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_batch: int
    name: str  # back-end name and device, e.g. "onnxruntime:CPUExecutionProvider"

    def run(self, batch: np.ndarray) -> list[np.ndarray]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class EnginePrefs:
    """The one engine configuration: what the caller would like; ``engines.choose_backend`` decides
    what it gets. Built from the settings file in one place (``edge_agent.settings.Settings.engine_prefs``).

    Runtime choice and ONNX Runtime:
    backend: "auto" (best available), or a name from ``engines.BACKENDS``.
    providers: ONNX Runtime execution providers to try in order before the CPU, e.g. ("cuda",).
    intra_op_threads / inter_op_threads: 0 lets the runtime choose (all physical cores). intra_op_threads
        also sizes how many runs a CPU session lets in at once (``engines.ort.concurrent_runs``).
    max_batch: the cap used when a model's batch axis is dynamic; the TensorRT profile's largest batch.
    short_spin: ONNX Runtime's threads spin-wait only briefly for more work between runs, leaving the
        cores to other work of the process (``engines.ort.spin_options``); False: ONNX Runtime's default.

    TensorRT (``engines.trt_queue``):
    opt_batch: the batch size TensorRT tunes its kernels for (the profile's optimum).
    precision: "fp16" (fp32 on GPUs without fast FP16), "fp32" or "int8".
    dla_core: build for this DLA core, with GPU fallback; None: the GPU.
    build_engines: build missing plans in the background.
    workspace_mb: the builder's workspace; 0 derives it from free memory.
    calibration_frames: INT8: how many frames calibrate.

    Dynamic batching (``edge_agent.serving.batching``), the queue that gathers concurrent callers' images:
    batching: on, off, or None (auto): batch on GPU engines, not on the CPU. On the CPU, ONNX Runtime
        already spreads one image over every core, a batch costs about the same per image as single runs,
        and the arena grows to the largest batch: bench/http.py measured lower throughput (0.64x vs 0.72x
        of bare ONNX Runtime with 4 clients) and ~70 MB more peak RSS with batching on.
    batching_max_batch: images in one batched run (also capped by the engine's own maximum).
    batching_max_delay_ms: how long a batch waits for more images.
    batching_max_queue: images waiting at most; beyond, callers are told to retry (``Overloaded``).
    """

    backend: str = "auto"
    providers: tuple[str, ...] = ()
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    max_batch: int = 8
    short_spin: bool = False
    opt_batch: int = 1
    precision: str = "fp16"
    dla_core: int | None = None
    build_engines: bool = True
    workspace_mb: int = 0
    calibration_frames: int = 64
    batching: bool | None = None
    batching_max_batch: int = 8
    batching_max_delay_ms: float = 0.0
    batching_max_queue: int = 64
