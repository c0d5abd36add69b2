"""TensorRT for the models being served: cached plans, builds in the background, a checked switch-over.

``Accelerator`` sits beside the ``ModelManager``. When a model loads:

- its plan is in the engine cache and valid (``engines.cache``): the model is served by TensorRT at
  once (the plan's tensors are checked against the sidecar when it is deserialised; a plan that fails
  is deleted and rebuilt, never served);
- otherwise ONNX Runtime serves it at once and a build job is queued. One build runs at a time, in a
  child process at low priority (``engines.trt_build``). The plan is then loaded from its temporary
  file and checked against ONNX Runtime on a few images (``compare``, FP16 tolerance, looser
  for INT8); only a plan that passes enters the cache and replaces the ONNX Runtime engine through
  ``ModelManager.swap`` (no request fails over the switch). A build or a check that fails leaves the
  model on ONNX Runtime, says why in its status, and leaves a ``.failed`` marker under the key so the
  same build is not retried on every boot (``edge-agent compile --force`` retries).

A new version may be activated (or rolled back) while a build of the one before runs. The build works
on a pinned copy of the ONNX file whose sha256 is checked against the manifest's, so a plan is only ever
cached under the key of the network it was built from; a plan checked against ONNX Runtime is cached,
but it swaps in only while the store's current version and the served model still have its sha256
(``ModelManager.swap(same_weights=True)`` makes that test and the switch atomic). A job whose version
is no longer current when its turn comes is skipped.

States of a model (``EngineStatus.state``)::

    queued -> building -> verifying -> tensorrt
                     \\-> failed   (ONNX Runtime keeps serving; reason says why)
                     \\-> onnxruntime  (built for a version replaced meanwhile; reason says so)
    tensorrt   (loaded from the cache)

A build's progress never overwrites the status a newer version's engine has reported meanwhile.

The back-end object (``TrtBackend``) is what touches TensorRT: its identity for the cache key, the
module run as the build process and the loading of a plan. Tests give a stand-in with the same three
members, so everything here (queue, child process, cache, check, swap) runs in CI without a GPU.

Putting an ``Accelerator`` together (settings, check and calibration images, the manager's callbacks)
is ``models.accelerate_setup``.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edge_agent.params import InferenceParams
from edge_agent.serving.compare import FP_TOLERANCE, Tolerance, disagreement
from edge_agent.serving.model import Model
from edge_agent.store.manifest import Manifest
from edge_agent.store.model_store import sha256_of
from engines import Choice, Engine, EngineError
from engines.cache import EngineCache, EngineKey
from engines.trt_build import BuildFailed, BuildProcess, BuildSpec

log = logging.getLogger(__name__)

CHECK_IMAGES = 8  # images a new plan is checked on


class _Replaced(Exception):
    """The model's version changed while its engine was built: the build stops, it did not fail."""


@dataclass
class EngineStatus:
    model_id: str
    state: str  # queued | building | verifying | tensorrt | failed | onnxruntime
    backend: str = "onnxruntime"  # what serves the model now
    phase: str | None = None
    progress: float | None = None
    reason: str | None = None
    key: str | None = None
    since: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "model_id"}


@dataclass(frozen=True)
class AccelPrefs:
    precision: str = "fp16"
    dla_core: int | None = None
    max_batch: int = 8
    opt_batch: int = 1
    build: bool = True  # build missing plans in the background
    workspace_mb: int = 0  # 0: derived from free memory
    calibration_frames: int = 64


class Backend(Protocol):
    build_module: str

    def identity(self) -> dict[str, Any]: ...

    def load(self, plan: Path, io: list[dict[str, Any]] | None) -> Engine: ...


class TrtBackend:
    """TensorRT and pycuda on CUDA device 0."""

    build_module = "engines.trt_build"

    def __init__(self, choice: Choice) -> None:
        self.device = choice.device

    def identity(self) -> dict[str, Any]:
        import tensorrt

        d = self.device
        return {"tensorrt": tensorrt.__version__, "gpu": d.gpu_name or "", "compute_capability": d.compute_capability
                or "", "l4t": d.l4t_release}

    def load(self, plan: Path, io: list[dict[str, Any]] | None) -> Engine:
        from engines.trt import TrtEngine

        return TrtEngine(plan, io)


@dataclass
class _Job:
    model_id: str
    manifest: Manifest
    onnx: Path
    key: EngineKey


class Accelerator:
    def __init__(self, backend: Backend, cache: EngineCache, prefs: AccelPrefs,
                 reference: Callable[[str], Model], on_ready: Callable[[str, Model], Any],
                 images: Callable[[str, int], list[np.ndarray]],
                 calibration: Callable[[str, int], list[np.ndarray]] | None = None,
                 current: Callable[[str], str | None] | None = None) -> None:
        """``reference(model_id)``: an ONNX Runtime ``Model`` to check a new plan against;
        ``on_ready(model_id, model)``: switch the served model (``ModelManager.swap`` with
        ``same_weights``), returning None when the model is no longer loaded or serves another version;
        ``images(model_id, n)``: up to n BGR images to check on; ``calibration(model_id, n)``: up to n
        BGR images for INT8 calibration; ``current(model_id)``: the ONNX sha256 of the version the
        store holds now, None when it holds none (without it every build counts as current)."""
        self.backend = backend
        self.cache = cache
        self.prefs = prefs
        self.reference = reference
        self.on_ready = on_ready
        self.images = images
        self.calibration = calibration
        self.current = current
        self._identity: dict[str, Any] | None = None
        self._status: dict[str, EngineStatus] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._queued: set[str] = set()  # key digests queued or building
        self._stop = threading.Event()
        self._current: BuildProcess | None = None
        self._thread: threading.Thread | None = None
        self.builds = 0  # build processes started (tests and selftest: "reloaded without rebuilding")

    # -- keys and status ------------------------------------------------------------------------

    def identity(self) -> dict[str, Any]:
        if self._identity is None:
            self._identity = self.backend.identity()
        return self._identity

    def key(self, manifest: Manifest) -> EngineKey:
        ident = self.identity()
        static = manifest.input.batch
        if static:
            batch = (static, static, static)
        else:
            hi = max(1, self.prefs.max_batch)
            batch = (1, max(1, min(self.prefs.opt_batch, hi)), hi)
        return EngineKey(onnx_sha256=manifest.weights.sha256, tensorrt=ident["tensorrt"], gpu=ident["gpu"],
                         compute_capability=ident["compute_capability"], l4t=ident.get("l4t"),
                         precision=self.prefs.precision, dla_core=self.prefs.dla_core, batch=batch)

    def _set(self, model_id: str, state: str, **fields: Any) -> EngineStatus:
        status = EngineStatus(model_id, state, **fields)
        with self._lock:
            self._status[model_id] = status
        return status

    def _set_own(self, model_id: str, key: EngineKey, state: str, **fields: Any) -> EngineStatus:
        """``_set`` for a build of ``key``, unless a newer version's engine (another key) has reported
        a status meanwhile: that one stands. Returns the build's status either way."""
        status = EngineStatus(model_id, state, key=key.digest, **fields)
        with self._lock:
            found = self._status.get(model_id)
            if found is None or found.key == key.digest:
                self._status[model_id] = status
        return status

    def _update(self, model_id: str, key: EngineKey, **fields: Any) -> None:
        with self._lock:
            status = self._status.get(model_id)
            if status is not None and status.key == key.digest:
                for k, v in fields.items():
                    setattr(status, k, v)

    def is_current(self, model_id: str, manifest: Manifest) -> bool:
        """Whether ``manifest`` is the version of ``model_id`` the store holds now."""
        if self.current is None:
            return True
        return self.current(model_id) == manifest.weights.sha256

    def _outdated(self, model_id: str, key: EngineKey, manifest: Manifest, what: str) -> EngineStatus:
        """Log and report a build (or job) of a version that no longer serves."""
        now = self.current(model_id) if self.current is not None else None
        reason = (f"{what} for sha256 {manifest.weights.sha256[:12]}, no longer the model's current version "
                  f"(the store has {now[:12] if now else 'none'} now)")
        log.info("TensorRT engine for %s: %s", model_id, reason)
        return self._set_own(model_id, key, "onnxruntime", reason=reason)

    def status(self, model_id: str) -> EngineStatus | None:
        with self._lock:
            return self._status.get(model_id)

    def statuses(self) -> dict[str, EngineStatus]:
        with self._lock:
            return dict(self._status)

    def building(self) -> EngineStatus | None:
        """The build in progress, if any (for STATUS= and /readiness)."""
        with self._lock:
            return next((s for s in self._status.values() if s.state in ("building", "verifying")), None)

    # -- serving --------------------------------------------------------------------------------

    def cached_engine(self, model_id: str, manifest: Manifest, onnx: Path) -> Engine | None:
        """The model's engine from a valid cached plan, or None (then ONNX Runtime serves it and
        ``schedule`` queues a build)."""
        try:
            key = self.key(manifest)
        except Exception as exc:  # TensorRT fails to import after all: stay on ONNX Runtime
            self._set(model_id, "failed", reason=f"TensorRT is not usable: {exc}")
            return None
        found = self.cache.lookup(key)
        if found.entry is None:
            if found.rejected:
                self._set(model_id, "queued", reason=f"cached plan rejected: {found.rejected}", key=key.digest)
            return None
        sidecar = found.entry.sidecar
        try:
            if not sidecar.get("verified"):
                raise EngineError("the plan was never checked against ONNX Runtime")
            engine = self.backend.load(found.entry.plan, sidecar.get("io"))
            want = (3, manifest.input.height, manifest.input.width)
            if tuple(engine.inputs[0].shape[1:]) != want:
                engine.close()
                raise EngineError(f"the plan's input is {engine.inputs[0].shape[1:]}, the model's {want}")
        except (EngineError, OSError) as exc:
            log.warning("engine cache: %s for %s cannot be used, rebuilding: %s", found.entry.plan.name, model_id, exc)
            self.cache.discard(key)
            self._set(model_id, "queued", reason=f"cached plan rejected: {exc}", key=key.digest)
            return None
        self._set(model_id, "tensorrt", backend="tensorrt", key=key.digest,
                  reason=f"loaded from the engine cache ({found.entry.plan.name})")
        return engine

    def schedule(self, model_id: str, manifest: Manifest, onnx: Path, force: bool = False) -> EngineStatus | None:
        """Queue a build for a model served by ONNX Runtime (no-op when one is queued, or when this key
        failed before, unless ``force``)."""
        if not self.prefs.build and not force:
            return None
        try:
            key = self.key(manifest)
        except Exception as exc:
            return self._set(model_id, "failed", reason=f"TensorRT is not usable: {exc}")
        failed = self.cache.failure(key)
        if failed and not force:
            return self._set(model_id, "failed", reason=f"an earlier build failed: {failed} "
                             "(edge-agent compile --force retries)", key=key.digest)
        with self._lock:
            if key.digest in self._queued:
                return self._status.get(model_id)
            self._queued.add(key.digest)
        status = self._set(model_id, "queued", key=key.digest,
                           reason=(self.status(model_id) or EngineStatus(model_id, "")).reason)
        self._queue.put(_Job(model_id, manifest, onnx, key))
        self._ensure_thread()
        return status

    # -- building -------------------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="engine-build", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            job = self._queue.get()
            if job is None:
                return
            try:
                if not self.is_current(job.model_id, job.manifest):  # replaced while it waited
                    self._outdated(job.model_id, job.key, job.manifest, "not building the engine")
                    continue
                self.build(job.model_id, job.manifest, job.onnx, job.key)
            except Exception:  # a bug here must not kill the queue
                log.exception("engine build for %s", job.model_id)
            finally:
                with self._lock:
                    self._queued.discard(job.key.digest)

    def build(self, model_id: str, manifest: Manifest, onnx: Path, key: EngineKey | None = None,
              on_event: Callable[[dict[str, Any]], None] | None = None) -> EngineStatus:
        """Build, check, cache and switch over; in the calling thread. Returns the final status."""
        key = key or self.key(manifest)
        started = time.time()
        self._set(model_id, "building", phase="starting", progress=0.0, key=key.digest)
        self.cache.clear_failure(key)
        tmp = self.cache.temp_plan(key)
        pinned = tmp.with_suffix(".onnx")
        try:
            self._pin(model_id, manifest, onnx, pinned)
            result = self._run_build(model_id, self._spec(model_id, manifest, pinned, key, tmp), key, on_event)
            self._set_own(model_id, key, "verifying", phase="checking against ONNX Runtime")
            if on_event is not None:
                on_event({"event": "progress", "phase": "checking against ONNX Runtime", "fraction": None})
            engine = self.backend.load(tmp, result["io"])
            tolerance = FP_TOLERANCE.loosened() if result.get("precision") == "int8" else FP_TOLERANCE
            try:
                why, checked = self._check(model_id, manifest, engine, tolerance)
            except Exception:
                engine.close()
                raise
            if why is not None:
                engine.close()
                raise BuildFailed(f"the engine disagrees with ONNX Runtime: {why}")
            self.cache.store(key, tmp, model_id=model_id, io=result["io"], precision=result.get("precision"),
                             build_seconds=result.get("seconds"), workspace_bytes=result.get("workspace_bytes"),
                             verified={"images": checked, "tolerance": asdict(tolerance)})
        except _Replaced as exc:  # not a failure of the build: no .failed marker
            tmp.unlink(missing_ok=True)
            return self._outdated(model_id, key, manifest, str(exc))
        except (BuildFailed, EngineError, OSError, ValueError) as exc:
            tmp.unlink(missing_ok=True)
            reason = str(exc)
            if not self._stop.is_set():
                self.cache.mark_failed(key, reason)
            log.error("TensorRT engine for %s: %s; ONNX Runtime keeps serving it", model_id, reason)
            return self._set_own(model_id, key, "failed", reason=reason)
        finally:
            pinned.unlink(missing_ok=True)
        seconds = time.time() - started
        log.info("TensorRT engine for %s built and checked in %.1f s (%s)", model_id, seconds, result.get("precision"))
        return self._switch(model_id, manifest, key, engine, f"built and checked in {seconds:.1f} s, "
                            f"{result.get('precision')}")

    def _run_build(self, model_id: str, spec: BuildSpec, key: EngineKey,
                   on_event: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
        """The build child process, run to its end; its result (plan, io, precision...)."""
        def event(e: dict[str, Any]) -> None:
            if e.get("event") == "progress":
                self._update(model_id, key, phase=e.get("phase"), progress=e.get("fraction"))
            if on_event is not None:
                on_event(e)

        process = BuildProcess(spec, event, module=self.backend.build_module)
        if self._stop.is_set():
            raise BuildFailed("the daemon is stopping")
        self._current = process
        self.builds += 1
        try:
            return process.run()
        finally:
            self._current = None

    def _switch(self, model_id: str, manifest: Manifest, key: EngineKey, engine: Engine,
                reason: str) -> EngineStatus:
        """Serve the checked (and cached) engine, if its version is still the one the store holds and
        the one served; otherwise close it and say why (the plan waits in the cache)."""
        # The store is asked first: a newer version may be committed but not swapped in yet. Then
        # swap(same_weights=True) tests the served model's sha256 and switches in one atomic step.
        current = self.is_current(model_id, manifest)
        served = self.on_ready(model_id, Model(manifest, engine)) if current else None
        if served is not None:
            return self._set(model_id, "tensorrt", backend="tensorrt", key=key.digest, reason=reason)
        engine.close()
        if not current or not self.is_current(model_id, manifest):
            return self._outdated(model_id, key, manifest, "the engine was built, checked and cached, but not "
                                  "swapped in: it is")
        return self._set_own(model_id, key, "tensorrt", backend="onnxruntime", reason=reason)  # not loaded

    def _pin(self, model_id: str, manifest: Manifest, onnx: Path, pinned: Path) -> None:
        """Hard-link (or copy) ``onnx`` to ``pinned``, the file the build reads, and check that it is
        the manifest's version. The store swaps versions by renaming folders, so the pinned file is one
        whole version; a different one means the model was replaced meanwhile (``_Replaced``) or,
        while the manifest is still current, that the file on disk is damaged (``BuildFailed``)."""
        try:
            os.link(onnx, pinned)
        except FileNotFoundError as exc:  # between two renames of a commit
            raise _Replaced("not building the engine") from exc
        except OSError:  # another file system, or no hard links there
            shutil.copyfile(onnx, pinned)
        found = sha256_of(pinned)
        if found == manifest.weights.sha256:
            return
        if not self.is_current(model_id, manifest):
            raise _Replaced("not building the engine")
        raise BuildFailed(f"{onnx}: its sha256 is {found[:12]}, its manifest says "
                          f"{manifest.weights.sha256[:12]}; the file is damaged: install the model again")

    def _spec(self, model_id: str, manifest: Manifest, onnx: Path, key: EngineKey, plan: Path) -> BuildSpec:
        frames = None
        calib_cache = None
        if self.prefs.precision == "int8":
            frames = self._calibration_frames(model_id, manifest, plan)
            calib_cache = str(self.cache.root / "calibration" / f"{key.onnx_sha256[:16]}.cache")
        ident = self.identity()
        return BuildSpec(
            onnx=str(onnx), plan=str(plan), precision=self.prefs.precision, dla_core=self.prefs.dla_core,
            batch=key.batch, workspace_bytes=self.prefs.workspace_mb << 20,
            timing_cache=str(self.cache.timing_cache(ident["tensorrt"], ident["gpu"], ident["compute_capability"])),
            calibration_frames=frames, calibration_cache=calib_cache,
            compute_capability=ident["compute_capability"] or None)

    def _calibration_frames(self, model_id: str, manifest: Manifest, plan: Path) -> str:
        images = self.calibration(model_id, self.prefs.calibration_frames) if self.calibration else []
        if not images:
            raise BuildFailed("INT8 needs calibration images: set engine.calibration_images to a folder of "
                              "typical frames, or let active learning sample some first")
        reference = self.reference(model_id)
        params = InferenceParams()
        frames = np.concatenate([reference.prepare(img, params).tensor for img in images])
        path = plan.with_suffix(".calib.npy")
        np.save(path, frames)
        return str(path)

    def _check(self, model_id: str, manifest: Manifest, engine: Engine,
               tolerance: Tolerance) -> tuple[str | None, int]:
        """Why ``engine`` may not replace ONNX Runtime for this model, or None; and the images used.
        Raises ``_Replaced`` when the reference is another version (the model was replaced meanwhile)."""
        reference = self.reference(model_id)
        if reference.manifest.weights.sha256 != manifest.weights.sha256:
            raise _Replaced("not checking the engine built")
        candidate = Model(manifest, engine)
        images = self.images(model_id, CHECK_IMAGES)
        if not images:
            return "no image to check the engine on", 0
        params = InferenceParams()
        prepared = reference.prepare(images[0], params)
        ref_out = reference.forward([prepared.tensor])[0]
        full = candidate.forward([prepared.tensor] * candidate.engine.max_batch)  # the profile's largest batch
        cand_out = full[0]
        ref_shapes = [o.shape for o in ref_out]
        cand_shapes = [o.shape for o in cand_out]
        if ref_shapes != cand_shapes:
            return f"output shapes {cand_shapes} differ from ONNX Runtime's {ref_shapes}", 0
        if any(not all(np.isfinite(o).all() for o in outs) for outs in full):
            return "the engine's outputs contain NaN or infinity", 0
        why = disagreement(reference.infer_arrays(images, params), candidate.infer_arrays(images, params), tolerance)
        return why, len(images)

    # -- lifecycle ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the queue and kill a running build (its plan was only ever in the cache's temp folder)."""
        self._stop.set()
        current = self._current
        if current is not None:
            current.kill()
        self._queue.put(None)
        thread = self._thread
        if thread is not None:
            thread.join(timeout=10)
