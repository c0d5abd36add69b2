"""TensorRT plans for the models being served: the back-end, the cache key, and the build queue.

``TrtBackend`` is the row ``"trt"`` of ``engines.BACKENDS``: TensorRT and pycuda on CUDA device 0. It
is what touches TensorRT: its identity for the cache key, the module run as the build process
(``engines.trt_build``) and the loading of a plan (``engines.trt.TrtEngine``). Tests give a stand-in
with the same three members (``PlanBackend``), so everything else here runs in CI without a GPU.

``BuildQueue`` owns the plans of the models. When a model loads:

- its plan is in the engine cache and valid (``engines.cache``): ``cached`` loads it (the plan's
  tensors are checked against the sidecar when it is deserialised; a plan that fails is deleted and
  rebuilt, never served);
- otherwise the caller serves the ONNX file and ``schedule`` queues a build. One build runs at a time,
  in a thread that starts a child process at low priority (``engines.trt_build.BuildProcess``). The
  plan is then loaded from its temporary file and checked (``BuildJob.check``); only a plan that passes
  enters the cache and is handed to ``BuildJob.serve``. A build or a check that fails leaves the model
  on what served it, says why in its status, and leaves a ``.failed`` marker under the key so the same
  build is not retried on every boot (``build`` called directly retries: ``edge-agent compile
  --force``).

The queue knows nothing of models, images or tasks: per job it is given an ONNX file (``PlanSource``)
and callables (``BuildJob``) that check an engine, switch the model over to it, say which ONNX file the
model's current version has, and give the INT8 calibration tensors.

A new version may be activated (or rolled back) while a build of the one before runs. The build works
on a pinned copy of the ONNX file whose sha256 is checked against the one the job names, so a plan is
only ever cached under the key of the network it was built from; a checked plan is cached, but it is
handed to ``serve`` only while ``current_sha256`` still names its version (and ``serve`` itself may
refuse). A job whose version is no longer current when its turn comes is skipped.

States of a model (``EngineStatus.state``)::

    queued -> building -> verifying -> tensorrt
                     \\-> failed   (the ONNX file keeps serving; reason says why)
                     \\-> onnxruntime  (built for a version replaced meanwhile; reason says so)
    tensorrt   (loaded from the cache)

A build's progress never overwrites the status a newer version's engine has reported meanwhile.
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

from engines.base import EdgeAgentError, Engine, EngineError, EnginePrefs
from engines.cache import EngineCache, EngineKey, sha256_file
from engines.device import DeviceInfo
from engines.trt_build import BuildFailed, BuildProcess, BuildSpec

log = logging.getLogger(__name__)


class BuildOutdated(EngineError):
    """The model's version changed while its engine was built: the build stops; it did not fail."""


class PlanBackend(Protocol):
    """What builds and loads plans: TensorRT (``TrtBackend``), or a stand-in in the tests."""

    build_module: str  # run as ``python -m <build_module> SPEC_JSON`` (``engines.trt_build``)

    def identity(self) -> dict[str, Any]:
        """The runtime and device a plan is valid for: tensorrt, gpu, compute_capability, l4t."""
        ...

    def load(self, plan: Path, io: list[dict[str, Any]] | None) -> Engine:
        """The plan, deserialised; its tensors checked against ``io`` (the sidecar's) when given."""
        ...


class TrtBackend:
    """TensorRT and pycuda on CUDA device 0."""

    build_module = "engines.trt_build"

    def __init__(self, device: DeviceInfo) -> None:
        self.device = device

    def identity(self) -> dict[str, Any]:
        import tensorrt  # lazy: tensorrt

        d = self.device
        return {"tensorrt": tensorrt.__version__, "gpu": d.gpu_name or "", "compute_capability": d.compute_capability
                or "", "l4t": d.l4t_release}

    def load(self, plan: Path, io: list[dict[str, Any]] | None) -> Engine:
        from engines.trt import TrtEngine  # lazy: pycuda and tensorrt

        return TrtEngine(plan, io)


@dataclass(frozen=True)
class PlanSource:
    """The ONNX file a plan is built from, and what of it the key and the checks need."""

    onnx: Path
    sha256: str  # the file's, as its version names it
    batch: int | None  # the model's fixed batch size; None when its batch axis is dynamic
    input_chw: tuple[int, int, int]  # the image input without the batch axis: (3, H, W)


@dataclass(frozen=True)
class Verdict:
    """A built engine checked against what serves the model now."""

    why: str | None  # why the engine may not serve; None when it passed
    images: int = 0  # images it was checked on
    detail: dict[str, Any] = field(default_factory=dict)  # kept in the sidecar's "verified" (the tolerance)


@dataclass(frozen=True)
class BuildJob:
    """One model's build, with what the queue asks of the code that serves the model.

    ``check(engine, precision)``: whether the engine may serve (may raise ``BuildOutdated`` when what
    it is checked against is another version); ``serve(engine)``: switch the model over to the engine,
    False when it is refused (the model was replaced or unloaded meanwhile; the queue then closes the
    engine); ``current_sha256()``: the ONNX sha256 of the version the model has now, None when it has
    none; ``calibration_tensors(n)``: up to n pre-processed (N, 3, H, W) float32 inputs for INT8, or None.
    """

    model_id: str
    source: PlanSource
    check: Callable[[Engine, str], Verdict]
    serve: Callable[[Engine], bool]
    current_sha256: Callable[[], str | None]
    calibration_tensors: Callable[[int], np.ndarray | None]

    @property
    def current(self) -> bool:
        """Whether the job's ONNX file is still the model's current version."""
        return self.current_sha256() == self.source.sha256


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


def plan_key(identity: dict[str, Any], prefs: EnginePrefs, sha256: str, fixed_batch: int | None) -> EngineKey:
    """The cache key of the ONNX file ``sha256`` built with ``prefs`` by the back-end of ``identity``: a
    fixed batch size is the profile; a dynamic batch axis gets (1, opt_batch, max_batch)."""
    if fixed_batch:
        batch = (fixed_batch, fixed_batch, fixed_batch)
    else:
        hi = max(1, prefs.max_batch)
        batch = (1, max(1, min(prefs.opt_batch, hi)), hi)
    return EngineKey(onnx_sha256=sha256, tensorrt=identity["tensorrt"], gpu=identity["gpu"],
                     compute_capability=identity["compute_capability"], l4t=identity.get("l4t"),
                     precision=prefs.precision, dla_core=prefs.dla_core, batch=batch)


class BuildQueue:
    def __init__(self, backend: PlanBackend, cache: EngineCache, prefs: EnginePrefs) -> None:
        self.backend = backend
        self.cache = cache
        self.prefs = prefs
        self._identity: dict[str, Any] | None = None
        self._status: dict[str, EngineStatus] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[BuildJob, EngineKey] | None] = queue.Queue()
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

    def key(self, source: PlanSource) -> EngineKey:
        return plan_key(self.identity(), self.prefs, source.sha256, source.batch)

    def prune(self) -> None:
        """Remove leftovers of interrupted builds and the plans another TensorRT version built."""
        try:
            removed = self.cache.prune(tensorrt=self.identity()["tensorrt"])
            if removed:
                log.info("engine cache: removed %d file(s) built by another TensorRT version", removed)
        except Exception as exc:  # identity needs TensorRT to import; a failure shows per model later
            log.warning("engine cache: cannot prune: %s", exc)

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

    def _outdated(self, job: BuildJob, key: EngineKey, what: str) -> EngineStatus:
        """Log and report a build (or job) of a version that no longer serves."""
        now = job.current_sha256()
        reason = (f"{what} for sha256 {job.source.sha256[:12]}, no longer the model's current version "
                  f"(the store has {now[:12] if now else 'none'} now)")
        log.info("TensorRT engine for %s: %s", job.model_id, reason)
        return self._set_own(job.model_id, key, "onnxruntime", reason=reason)

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

    def cached(self, model_id: str, source: PlanSource) -> Engine | None:
        """The model's engine from a valid cached plan, or None (then the ONNX file serves it and
        ``schedule`` queues a build)."""
        try:
            key = self.key(source)
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
            if tuple(engine.inputs[0].shape[1:]) != source.input_chw:
                engine.close()
                raise EngineError(f"the plan's input is {engine.inputs[0].shape[1:]}, the model's {source.input_chw}")
        except (EngineError, OSError) as exc:
            log.warning("engine cache: %s for %s cannot be used, rebuilding: %s", found.entry.plan.name, model_id, exc)
            self.cache.discard(key)
            self._set(model_id, "queued", reason=f"cached plan rejected: {exc}", key=key.digest)
            return None
        self._set(model_id, "tensorrt", backend="tensorrt", key=key.digest,
                  reason=f"loaded from the engine cache ({found.entry.plan.name})")
        return engine

    def schedule(self, job: BuildJob, force: bool = False) -> EngineStatus | None:
        """Queue a build for a model its ONNX file serves (no-op when one is queued, or when this key
        failed before, unless ``force``)."""
        if not self.prefs.build_engines and not force:
            return None
        model_id = job.model_id
        try:
            key = self.key(job.source)
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
        self._queue.put((job, key))
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
            item = self._queue.get()
            if item is None:
                return
            job, key = item
            try:
                if not job.current:  # replaced while it waited
                    self._outdated(job, key, "not building the engine")
                    continue
                self.build(job, key)
            except Exception:  # a bug here must not kill the queue
                log.exception("engine build for %s", job.model_id)
            finally:
                with self._lock:
                    self._queued.discard(key.digest)

    def build(self, job: BuildJob, key: EngineKey | None = None,
              on_event: Callable[[dict[str, Any]], None] | None = None) -> EngineStatus:
        """Build, check, cache and switch over; in the calling thread. Returns the final status."""
        model_id = job.model_id
        key = key or self.key(job.source)
        started = time.time()
        queued = self.status(model_id)  # why it is built (a rejected cached plan, say) stays said while it builds
        self._set(model_id, "building", phase="starting", progress=0.0, key=key.digest,
                  reason=queued.reason if queued is not None and queued.state == "queued" else None)
        self.cache.clear_failure(key)
        tmp = self.cache.temp_plan(key)
        pinned = tmp.with_suffix(".onnx")
        try:
            self._pin(job, pinned)
            result = self._run_build(model_id, self._spec(job, pinned, key, tmp), key, on_event)
            self._set_own(model_id, key, "verifying", phase="checking against ONNX Runtime")
            if on_event is not None:
                on_event({"event": "progress", "phase": "checking against ONNX Runtime", "fraction": None})
            engine = self.backend.load(tmp, result["io"])
            try:
                verdict = job.check(engine, str(result.get("precision")))
            except Exception:
                engine.close()
                raise
            if verdict.why is not None:
                engine.close()
                raise BuildFailed(f"the engine disagrees with ONNX Runtime: {verdict.why}")
            self.cache.store(key, tmp, model_id=model_id, io=result["io"], precision=result.get("precision"),
                             build_seconds=result.get("seconds"), workspace_bytes=result.get("workspace_bytes"),
                             verified={"images": verdict.images, **verdict.detail})
        except BuildOutdated as exc:  # not a failure of the build: no .failed marker
            tmp.unlink(missing_ok=True)
            return self._outdated(job, key, str(exc))
        # BuildFailed is an EngineError; a check can also fail with the serving layer's errors (the engine
        # failing its run, a reference that does not load), members of the same tree: all are failures.
        except (EdgeAgentError, OSError, ValueError) as exc:
            tmp.unlink(missing_ok=True)
            reason = str(exc)
            if not self._stop.is_set():
                self.cache.mark_failed(key, reason)
            log.error("TensorRT engine for %s: %s; ONNX Runtime keeps serving it", model_id, reason)
            return self._set_own(model_id, key, "failed", reason=reason)
        finally:
            pinned.unlink(missing_ok=True)
            tmp.with_suffix(".calib.npy").unlink(missing_ok=True)  # INT8 frames: hundreds of MB
        seconds = time.time() - started
        log.info("TensorRT engine for %s built and checked in %.1f s (%s)", model_id, seconds, result.get("precision"))
        return self._switch(job, key, engine, f"built and checked in {seconds:.1f} s, {result.get('precision')}")

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

    def _switch(self, job: BuildJob, key: EngineKey, engine: Engine, reason: str) -> EngineStatus:
        """Serve the checked (and cached) engine, if its version is still the model's current one and
        ``serve`` takes it; otherwise close it and say why (the plan waits in the cache)."""
        # The current version is asked first: a newer one may be committed but not served yet. Then
        # ``serve`` tests the served model's sha256 and switches in one atomic step.
        current = job.current
        served = job.serve(engine) if current else False
        if served:
            return self._set(job.model_id, "tensorrt", backend="tensorrt", key=key.digest, reason=reason)
        engine.close()
        if not current or not job.current:
            return self._outdated(job, key, "the engine was built, checked and cached, but not swapped in: it is")
        return self._set_own(job.model_id, key, "tensorrt", backend="onnxruntime", reason=reason)  # not loaded

    def _pin(self, job: BuildJob, pinned: Path) -> None:
        """Hard-link (or copy) the job's ONNX file to ``pinned``, the file the build reads, and check
        that it is the job's version. The store swaps versions by renaming folders, so the pinned file
        is one whole version; a different one means the model was replaced meanwhile
        (``BuildOutdated``) or, while the job's version is still current, that the file on disk is
        damaged (``BuildFailed``)."""
        onnx = job.source.onnx
        try:
            os.link(onnx, pinned)
        except FileNotFoundError as exc:  # between two renames of a commit
            raise BuildOutdated("not building the engine") from exc
        except OSError:  # another file system, or no hard links there
            shutil.copyfile(onnx, pinned)
        found = sha256_file(pinned)
        if found == job.source.sha256:
            return
        if not job.current:
            raise BuildOutdated("not building the engine")
        raise BuildFailed(f"{onnx}: its sha256 is {found[:12]}, its manifest says "
                          f"{job.source.sha256[:12]}; the file is damaged: install the model again")

    def _spec(self, job: BuildJob, onnx: Path, key: EngineKey, plan: Path) -> BuildSpec:
        frames = None
        calib_cache = None
        if self.prefs.precision == "int8":
            frames = self._calibration_file(job, plan)
            calib_cache = str(self.cache.root / "calibration" / f"{key.onnx_sha256[:16]}.cache")
        ident = self.identity()
        return BuildSpec(
            onnx=str(onnx), plan=str(plan), precision=self.prefs.precision, dla_core=self.prefs.dla_core,
            batch=key.batch, workspace_bytes=self.prefs.workspace_mb << 20,
            timing_cache=str(self.cache.timing_cache(ident["tensorrt"], ident["gpu"], ident["compute_capability"])),
            calibration_frames=frames, calibration_cache=calib_cache,
            compute_capability=ident["compute_capability"] or None)

    def _calibration_file(self, job: BuildJob, plan: Path) -> str:
        """The job's calibration tensors in a ``.npy`` beside the temporary plan (the build process
        memory-maps it: ``engines.calibration``)."""
        tensors = job.calibration_tensors(self.prefs.calibration_frames)
        if tensors is None or len(tensors) == 0:
            raise BuildFailed("INT8 needs calibration images: set engine.calibration_images to a folder of "
                              "typical frames, or let active learning sample some first")
        path = plan.with_suffix(".calib.npy")
        np.save(path, tensors)
        return str(path)

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
