"""ModelManager: the loaded models, shared by every caller (HTTP, pipelines, MQTT commands).

``get(model_id)`` loads from the model store on first use (one load per id even when many callers
ask at once), keeps at most ``max_loaded`` models (least recently used unloaded first) and gives a
``LoadedModel`` whose ``infer`` runs through the model's dynamic batcher.

Unloading never pulls an engine from under a running request: the batcher finishes what is queued,
and the engine is freed when the last request holding the model lets go of it. A request that took the
model just before its batcher closed runs the engine itself, unbatched, so a swap fails no request.

Each id has a generation, bumped by every ``swap`` that may change the version served and by
``invalidate`` (the provisioner calls it after committing a version of an id that was not loaded). A
cold load that began under an older generation may hold the version the store had before: it is
discarded and the id loaded again, so an old version is never reinstated.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_agent.errors import EdgeAgentError, ModelLoadFailed, ModelNotFound, NotReady
from edge_agent.params import InferenceParams
from edge_agent.results import Result
from edge_agent.serving.accelerate import Accelerator, SwitchOver
from edge_agent.serving.batching import DynamicBatcher
from edge_agent.serving.loading import load_stored
from edge_agent.serving.model import Model
from edge_agent.store.manifest import Manifest, parse_model_id
from edge_agent.store.model_store import ModelStore
from engines import EnginePrefs
from engines.trt_queue import EngineStatus

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: Model
    batcher: DynamicBatcher[list[np.ndarray]] | None
    load_seconds: float
    loaded_at: float = field(default_factory=time.time)
    on_batch: Callable[[int, float], None] | None = None  # (images, seconds) per engine run outside a batcher

    @property
    def model_id(self) -> str:
        return self.model.model_id

    def infer(self, images: Sequence[np.ndarray], params: InferenceParams) -> list[Result]:
        """Loaded BGR images to results by ``Model.run``: each image prepared and decoded in the calling
        thread, the engine run through the batcher where there is one (else in this thread)."""
        return self.model.run(images, params, self._forward)

    def _forward(self, tensors: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
        """One chunk's engine run: through the batcher (another caller's run may take these tensors
        along), else in the calling thread, reported to ``on_batch``."""
        batcher = self.batcher
        if batcher is not None and not batcher.closed:
            try:
                return batcher.run_many(tensors)
            except NotReady:
                if not batcher.closed:
                    raise
                # Swapped or unloaded since this caller took the model: its engine is still valid (it
                # is freed only when the last holder lets go), so run it here rather than fail.
        t_run = time.perf_counter()
        outputs = self.model.forward(tensors)
        if self.on_batch is not None:
            self.on_batch(len(tensors), time.perf_counter() - t_run)
        return outputs


class ModelManager:
    def __init__(
        self,
        store: ModelStore,
        engine_prefs: EnginePrefs = EnginePrefs(),
        max_loaded: int = 8,
        aliases: Mapping[str, str] | None = None,
        on_load: Callable[[str, float], None] | None = None,
        on_batch: Callable[[str, int, float], None] | None = None,
        accelerator: Accelerator | None = None,
    ) -> None:
        """``engine_prefs``: how models load on ONNX Runtime and how they are batched; ``accelerator``:
        TensorRT where it is used (a cached plan serves at once; otherwise ONNX Runtime serves and a
        build is queued)."""
        self.store = store
        self.engine_prefs = engine_prefs
        self.accelerator = accelerator
        self.max_loaded = max(1, max_loaded)
        self.aliases = dict(aliases or {})
        self._on_load = on_load
        self._on_batch = on_batch
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}  # ids being loaded, each with its load lock
        self._generation: dict[str, int] = {}  # per id: bumped when the version served may change
        self.cold_starts = 0

    def onnx_path(self, model_id: str) -> tuple[Manifest, Path]:
        """The manifest and ONNX path of a stored model (no checksum: it was verified when loaded)."""
        stored = self.store.get(model_id)
        manifest: Manifest = stored.manifest
        return manifest, stored.path / manifest.weights.file

    def resolve(self, model_id: str) -> str:
        return self.aliases.get(model_id, model_id)

    def loaded(self) -> list[LoadedModel]:
        with self._lock:
            return list(self._loaded.values())

    def peek(self, model_id: str) -> LoadedModel | None:
        with self._lock:
            return self._loaded.get(self.resolve(model_id))

    def loading(self) -> set[str]:
        """The ids being loaded right now (the provisioner keeps them from eviction)."""
        with self._lock:
            return set(self._loading)

    def get(self, model_id: str) -> tuple[LoadedModel, bool]:
        """The loaded model and whether this call loaded it (a cold start)."""
        model_id = self.resolve(model_id)
        while True:
            with self._lock:
                hit = self._loaded.get(model_id)
                if hit is not None:
                    self._loaded.move_to_end(model_id)
                else:
                    id_lock = self._loading.setdefault(model_id, threading.Lock())
            if hit is not None:
                self.store.touch(model_id)  # in memory; written at most once a minute per id
                return hit, False
            with id_lock:  # one load per id; the others wait for it and then find it loaded
                with self._lock:
                    hit = self._loaded.get(model_id)
                    if hit is None and self._loading.get(model_id) is not id_lock:
                        continue  # loaded and unloaded again, or failed, meanwhile: start over
                if hit is not None:
                    return hit, False
                try:
                    parse_model_id(model_id)
                    loaded, evicted = self._load_current(model_id)
                except BaseException:  # unknown ids must not pile up in _loading
                    with self._lock:
                        if self._loading.get(model_id) is id_lock:
                            del self._loading[model_id]
                    raise
            break
        for old in evicted:
            log.info("unloading %s (least recently used; at most %d models loaded)", old.model_id, self.max_loaded)
            self._retire(old)
        if not loaded.model.engine.name.startswith("tensorrt"):
            self._schedule(model_id)  # served by ONNX Runtime until it is ready
        return loaded, True

    # -- TensorRT -------------------------------------------------------------------------------

    def schedule_engine(self, model_id: str) -> EngineStatus | None:
        """Queue a TensorRT build for ``model_id`` if it is loaded and ONNX Runtime serves it (the
        provisioner calls it after activating a version: the new ONNX file has its own engine key)."""
        loaded = self.peek(model_id)
        if loaded is None or loaded.model.engine.name.startswith("tensorrt"):
            return None
        return self._schedule(loaded.model_id)

    def _schedule(self, model_id: str) -> EngineStatus | None:
        if self.accelerator is None:
            return None
        manifest, onnx = self.onnx_path(model_id)
        return self.accelerator.schedule(model_id, manifest, onnx, self.switch_over(model_id))

    def switch_over(self, model_id: str) -> SwitchOver:
        """What the accelerator needs to check a new engine of ``model_id`` and serve it: the model
        served now as the reference, this manager's swap, the version the store holds now."""
        model_id = self.resolve(model_id)

        def reference() -> Model:
            served = self.peek(model_id)
            if served is not None and served.model.engine.name.startswith("onnxruntime"):
                return served.model
            return load_stored(self.store, model_id, self.engine_prefs)

        def current_sha256() -> str | None:
            try:
                return self.onnx_path(model_id)[0].weights.sha256
            except (EdgeAgentError, OSError):  # removed, or unreadable: not the version built, either way
                return None

        return SwitchOver(reference, self.swap, current_sha256)

    def _load_current(self, model_id: str) -> tuple[LoadedModel, list[LoadedModel]]:
        """Load ``model_id`` (its load lock held) and make it served, unless a swap or ``invalidate``
        happened meanwhile: then what was loaded may be the version before, so it is thrown away and
        the id loaded again. Returns the model served and the models evicted to make room."""
        while True:
            with self._lock:
                generation = self._generation.get(model_id, 0)
            loaded = self._load(model_id)
            with self._lock:
                current = self._generation.get(model_id, 0) == generation
                served = self._loaded.get(model_id)  # swap(only_if_loaded=False) may have put one in
                if current or served is not None:
                    self._loading.pop(model_id, None)
                if current and served is None:
                    self._loaded[model_id] = loaded
                    evicted = []
                    while len(self._loaded) > self.max_loaded:
                        evicted.append(self._loaded.popitem(last=False)[1])
                    self.cold_starts += 1
                    return loaded, evicted
            log.info("discarding the load of %s: a new version was activated while it loaded", model_id)
            self._retire(loaded)
            loaded.model.close()  # never served, so no request holds it
            if served is not None:
                return served, []

    def _load(self, model_id: str) -> LoadedModel:
        t0 = time.perf_counter()
        cached = self.accelerator.cached_engine if self.accelerator is not None else None
        try:
            model: Model = load_stored(self.store, model_id, self.engine_prefs, cached)
        except (ModelNotFound, ModelLoadFailed, FileNotFoundError):
            # The store reads without a lock: a load that falls between the two renames of a commit or
            # a rollback of this id finds it missing or half there. Once more, after the commit.
            if not self.store.revisions(model_id):
                raise
            time.sleep(0.2)
            model = load_stored(self.store, model_id, self.engine_prefs, cached)
        seconds = time.perf_counter() - t0
        self.store.touch(model_id)  # the last use, for the store's eviction of unused models
        log.info("loaded %s (%s, engine %s) in %.2f s", model_id, model.task, model.engine.name, seconds)
        if self._on_load is not None:
            self._on_load(model_id, seconds)
        return self._wrap(model_id, model, seconds)

    def _wrap(self, model_id: str, model: Model, seconds: float) -> LoadedModel:
        """A ``LoadedModel`` around ``model``, with a batcher when batching applies to its engine."""
        batcher = None
        on_batch = None
        if self._on_batch is not None:
            hook = self._on_batch

            def on_batch(n: int, seconds: float) -> None:
                hook(model_id, n, seconds)

        p = self.engine_prefs
        # Auto: batch on GPU engines, not on the CPU (why: ``EnginePrefs``).
        enabled = p.batching if p.batching is not None else "CPUExecutionProvider" not in model.engine.name
        if enabled:
            batcher = DynamicBatcher(
                model_id, model.forward, max_batch=min(p.batching_max_batch, model.engine.max_batch),
                max_delay_s=p.batching_max_delay_ms / 1000.0, max_queue=p.batching_max_queue, on_batch=on_batch)
        return LoadedModel(model, batcher, seconds, on_batch=on_batch)

    def swap(self, model_id: str, model: Model, *, only_if_loaded: bool = True,
             same_weights: bool = False) -> LoadedModel | None:
        """Serve ``model`` for ``model_id`` from now on, atomically.

        A request that already holds the old ``LoadedModel`` finishes on it (its batcher drains what
        is queued, and a request that comes too late for the batcher runs the old engine itself);
        every ``get`` after this returns the new one, so no request fails over the switch. With
        ``only_if_loaded`` (the default) nothing happens when the id was unloaded meanwhile, and None
        is returned. With ``same_weights`` (a new engine for the version that serves, such as a
        TensorRT build) nothing happens, and None is returned, unless the model served now has the
        same ONNX sha256 as ``model``: a build of a version replaced meanwhile never serves. The new
        model keeps the old one's place in the LRU order.

        A swap that may change the version (not ``same_weights``) also does what ``invalidate`` does.
        """
        model_id = self.resolve(model_id)
        loaded = self._wrap(model_id, model, 0.0)
        with self._lock:
            if not same_weights:
                self._generation[model_id] = self._generation.get(model_id, 0) + 1
            old = self._loaded.get(model_id)
            if old is None:
                refused = only_if_loaded or same_weights
            else:
                refused = same_weights and old.model.manifest.weights.sha256 != model.manifest.weights.sha256
            if not refused:
                self._loaded[model_id] = loaded
        if refused:
            self._retire(loaded)
            return None
        if old is not None:
            self._retire(old)
        log.info("%s now served by %s", model_id, model.engine.name)
        return loaded

    def invalidate(self, model_id: str) -> None:
        """A new version of ``model_id`` is in the store: a load of it in flight now is discarded and
        loaded again when done (call after committing a version of an id that is not loaded)."""
        model_id = self.resolve(model_id)
        with self._lock:
            self._generation[model_id] = self._generation.get(model_id, 0) + 1

    @staticmethod
    def _retire(loaded: LoadedModel) -> None:
        if loaded.batcher is not None:
            loaded.batcher.close()

    def unload(self, model_id: str) -> bool:
        with self._lock:
            loaded = self._loaded.pop(self.resolve(model_id), None)
        if loaded is None:
            return False
        self._retire(loaded)
        log.info("unloaded %s", loaded.model_id)
        return True

    def clear(self) -> None:
        with self._lock:
            everything = list(self._loaded.values())
            self._loaded.clear()
        for loaded in everything:
            self._retire(loaded)

    def queue_depths(self) -> dict[str, int]:
        return {m.model_id: m.batcher.depth for m in self.loaded() if m.batcher is not None}
