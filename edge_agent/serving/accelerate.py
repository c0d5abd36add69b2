"""TensorRT for the models being served: the serving side of the build queue (``engines.trt_queue``).

The queue (``engines.trt_queue.BuildQueue``) owns the plans: the key, the cache, one build at a time in
a child process, the states a model's engine goes through. It knows nothing of models; this module
gives it, per model, what only the serving side knows:

- ``check``: a built engine is checked against ONNX Runtime on a few images (``compare``, FP16
  tolerance, looser for INT8) before it may serve; the reference is an ONNX Runtime ``Model`` of the
  version served, and a reference of another version means the model was replaced meanwhile;
- ``serve``: a checked engine is wrapped in a ``Model`` and handed to the ``ModelManager``'s swap with
  ``same_weights``, which serves it only while the served model still has its sha256 (no request fails
  over the switch);
- the calibration tensors for INT8: images pre-processed the way the model expects.

The ``ModelManager`` receives an ``Accelerator`` through its constructor and gives it, per model, a
``SwitchOver``: the reference, its own swap and the sha256 of the version the store holds now. The
accelerator holds nothing of the manager between jobs.

Putting an ``Accelerator`` together (settings, check and calibration images) is
``serving.accelerate_setup``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edge_agent.params import InferenceParams
from edge_agent.serving.compare import FP_TOLERANCE, disagreement
from edge_agent.serving.model import Model
from edge_agent.store.manifest import Manifest
from engines import Engine
from engines.cache import EngineCache, EngineKey
from engines.trt_queue import (
    BuildJob,
    BuildOutdated,
    BuildQueue,
    EngineStatus,
    PlanBackend,
    PlanSource,
    Verdict,
    plan_key,
)

log = logging.getLogger(__name__)

CHECK_IMAGES = 8  # images a new plan is checked on

# (model id, n) -> up to n BGR images
Images = Callable[[str, int], list[np.ndarray]]


class Swap(Protocol):
    """``ModelManager.swap``: serve ``model`` for ``model_id``; None when it was refused."""

    def __call__(self, model_id: str, model: Model, *, same_weights: bool) -> object | None: ...


@dataclass(frozen=True)
class SwitchOver:
    """What the ``ModelManager`` gives the accelerator for one model id, per job.

    ``reference()``: an ONNX Runtime ``Model`` of the version served (the one a new engine is checked
    against); ``swap``: the manager's own swap; ``current_sha256()``: the ONNX sha256 of the version
    the store holds now, None when it holds none.
    """

    reference: Callable[[], Model]
    swap: Swap
    current_sha256: Callable[[], str | None]


def plan_source(manifest: Manifest, onnx: Path) -> PlanSource:
    """The ONNX file of a stored version, as the build queue sees it."""
    spec = manifest.input
    return PlanSource(onnx, manifest.weights.sha256, spec.batch, (3, spec.height, spec.width))


class Accelerator:
    def __init__(self, queue: BuildQueue, images: Images, calibration: Images | None = None) -> None:
        """``images(model_id, n)``: up to n BGR images to check a new engine on; ``calibration(model_id,
        n)``: up to n BGR images for INT8 calibration."""
        self.queue = queue
        self.images = images
        self.calibration = calibration

    @property
    def backend(self) -> PlanBackend:
        return self.queue.backend

    @property
    def cache(self) -> EngineCache:
        return self.queue.cache

    @property
    def builds(self) -> int:
        """Build processes started (tests and selftest: "reloaded without rebuilding")."""
        return self.queue.builds

    def key(self, manifest: Manifest) -> EngineKey:
        """The cache key of the manifest's ONNX file on this machine (needs TensorRT to import)."""
        return plan_key(self.queue.identity(), self.queue.prefs, manifest.weights.sha256, manifest.input.batch)

    def status(self, model_id: str) -> EngineStatus | None:
        return self.queue.status(model_id)

    def statuses(self) -> dict[str, EngineStatus]:
        return self.queue.statuses()

    def building(self) -> EngineStatus | None:
        """The build in progress, if any (for STATUS= and /readiness)."""
        return self.queue.building()

    def stop(self) -> None:
        """Stop the queue and kill a running build (its plan was only ever in the cache's temp folder)."""
        self.queue.stop()

    # -- serving --------------------------------------------------------------------------------

    def cached_engine(self, model_id: str, manifest: Manifest, onnx: Path) -> Engine | None:
        """The model's engine from a valid cached plan, or None (then ONNX Runtime serves it and
        ``schedule`` queues a build)."""
        return self.queue.cached(model_id, plan_source(manifest, onnx))

    def schedule(self, model_id: str, manifest: Manifest, onnx: Path, switch: SwitchOver,
                 force: bool = False) -> EngineStatus | None:
        """Queue a build for a model served by ONNX Runtime (``BuildQueue.schedule``)."""
        return self.queue.schedule(self.job(model_id, manifest, onnx, switch), force)

    def build(self, model_id: str, manifest: Manifest, onnx: Path, switch: SwitchOver, key: EngineKey | None = None,
              on_event: Callable[[dict[str, Any]], None] | None = None) -> EngineStatus:
        """Build, check, cache and switch over; in the calling thread. Returns the final status."""
        return self.queue.build(self.job(model_id, manifest, onnx, switch), key, on_event)

    def job(self, model_id: str, manifest: Manifest, onnx: Path, switch: SwitchOver) -> BuildJob:
        def check(engine: Engine, precision: str) -> Verdict:
            return self.check(model_id, manifest, switch, engine, precision)

        def serve(engine: Engine) -> bool:
            return switch.swap(model_id, Model(manifest, engine), same_weights=True) is not None

        def calibration_tensors(n: int) -> np.ndarray | None:
            return self.calibration_tensors(model_id, switch, n)

        return BuildJob(model_id, plan_source(manifest, onnx), check, serve, switch.current_sha256,
                        calibration_tensors)

    def calibration_tensors(self, model_id: str, switch: SwitchOver, n: int) -> np.ndarray | None:
        """Up to ``n`` calibration images pre-processed as the model expects, as one (N, 3, H, W)
        float32 array; None when there is no image to calibrate on."""
        images = self.calibration(model_id, n) if self.calibration else []
        if not images:
            return None
        reference = switch.reference()
        params = InferenceParams()
        return np.concatenate([reference.prepare(img, params).tensor for img in images])

    def check(self, model_id: str, manifest: Manifest, switch: SwitchOver, engine: Engine,
              precision: str) -> Verdict:
        """Whether ``engine`` may replace ONNX Runtime for this model, and the images used. Raises
        ``BuildOutdated`` when the reference is another version (the model was replaced meanwhile)."""
        tolerance = FP_TOLERANCE.loosened() if precision == "int8" else FP_TOLERANCE
        detail = {"tolerance": asdict(tolerance)}
        reference = switch.reference()
        if reference.manifest.weights.sha256 != manifest.weights.sha256:
            raise BuildOutdated("not checking the engine built")
        candidate = Model(manifest, engine)
        images = self.images(model_id, CHECK_IMAGES)
        if not images:
            return Verdict("no image to check the engine on", 0, detail)
        params = InferenceParams()
        prepared = reference.prepare(images[0], params)
        ref_out = reference.forward([prepared.tensor])[0]
        full = candidate.forward([prepared.tensor] * candidate.engine.max_batch)  # the profile's largest batch
        cand_out = full[0]
        ref_shapes = [o.shape for o in ref_out]
        cand_shapes = [o.shape for o in cand_out]
        if ref_shapes != cand_shapes:
            return Verdict(f"output shapes {cand_shapes} differ from ONNX Runtime's {ref_shapes}", 0, detail)
        if any(not all(np.isfinite(o).all() for o in outs) for outs in full):
            return Verdict("the engine's outputs contain NaN or infinity", 0, detail)
        why = disagreement(reference.run(images, params), candidate.run(images, params), tolerance)
        return Verdict(why, len(images), detail)
