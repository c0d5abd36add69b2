"""Putting an ``Accelerator`` together: for the daemon's ``Runtime`` and for ``edge-agent compile`` / selftest.

``build_accelerator`` wires an ``Accelerator`` (``serving.accelerate``) to a ``ModelManager``: the
TensorRT back-end, the engine cache, the ``[engine]`` settings, the images a new plan is checked on
(``engine.check_images``, else frames the active-learning spool sampled, topped up by ``builtin_images``)
and those INT8 calibrates on, the store's current sha256 and the swap. ``offline_accelerator`` and
``compile_model`` serve the CLI and the selftest, where nothing is served and builds run in the
calling thread. ``folder_images``, ``builtin_images`` and ``decode_jpegs`` decode those images.

``serving.accelerate`` re-exports the names other modules import from it; so that either module can be
imported first, this one imports ``serving.accelerate`` inside the functions that need it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_agent.errors import EdgeAgentError
from edge_agent.serving.model import Model
from engines import Choice
from engines.cache import EngineCache

if TYPE_CHECKING:
    from edge_agent.serving.accelerate import Accelerator, Backend, EngineStatus

log = logging.getLogger(__name__)

SAMPLE_IMAGE = Path(__file__).resolve().parent.parent / "demo" / "sample.jpg"
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def folder_images(folder: Path | None, n: int) -> list[np.ndarray]:
    """Up to ``n`` images of ``folder`` (sorted by name), decoded to BGR; unreadable files are skipped."""
    import cv2

    if folder is None or not Path(folder).is_dir():
        return []
    images: list[np.ndarray] = []
    for path in sorted(Path(folder).iterdir()):
        if len(images) >= n:
            break
        if path.suffix.lower() in _IMAGE_SUFFIXES:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None:
                images.append(image)
    return images


def builtin_images(n: int) -> list[np.ndarray]:
    """The bundled sample image and generated scenes of shapes (deterministic)."""
    import cv2

    from edge_agent.demo.shapes import generate_scene

    sample = cv2.imread(str(SAMPLE_IMAGE), cv2.IMREAD_COLOR)
    images = [sample] if sample is not None else []
    seed = 0
    while len(images) < n:
        images.append(generate_scene(1000 + seed, size=(480, 640)).image)
        seed += 1
    return images[:n]


def decode_jpegs(blobs: list[bytes]) -> list[np.ndarray]:
    import cv2

    decoded = (cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR) for b in blobs)
    return [img for img in decoded if img is not None]


def build_accelerator(settings: Any, choice: Choice, manager: Any, spool: Callable[[], Any] = lambda: None,
                      backend: Backend | None = None) -> Accelerator | None:
    """The ``Accelerator`` for a ``ModelManager`` when TensorRT was chosen (or a ``backend`` is given),
    attached to the manager; None otherwise. ``spool()`` gives the active-learning spool, if any."""
    from edge_agent.serving.accelerate import Accelerator, AccelPrefs, TrtBackend

    if backend is None:
        if choice.backend != "tensorrt":
            return None
        backend = TrtBackend(choice)
    e = settings.engine

    def sampled(model_id: str, n: int) -> list[np.ndarray]:
        s = spool()
        return decode_jpegs(s.recent_jpegs(model_id, n)) if s is not None else []

    def check_images(model_id: str, n: int) -> list[np.ndarray]:
        chosen = folder_images(e.check_images, n)
        if not chosen:
            chosen = sampled(model_id, n // 2)
        return chosen + builtin_images(n - len(chosen))

    def calibration(model_id: str, n: int) -> list[np.ndarray]:
        return folder_images(e.calibration_images, n) or sampled(model_id, n)

    def reference(model_id: str) -> Model:
        served = manager.peek(model_id)
        if served is not None and served.model.engine.name.startswith("onnxruntime"):
            return served.model  # type: ignore[no-any-return]
        return manager.store.load(model_id, manager.engine_prefs)  # type: ignore[no-any-return]

    cache = EngineCache(settings.paths.cache_dir)
    prefs = AccelPrefs(precision=e.precision, dla_core=e.dla_core, max_batch=e.max_batch, opt_batch=e.opt_batch,
                       build=e.build_engines, workspace_mb=e.workspace_mb, calibration_frames=e.calibration_frames)

    def current(model_id: str) -> str | None:
        try:
            return manager.onnx_path(model_id)[0].weights.sha256  # type: ignore[no-any-return]
        except (EdgeAgentError, OSError):  # removed, or unreadable: not the version built, either way
            return None

    def on_ready(model_id: str, model: Model) -> Any:
        return manager.swap(model_id, model, same_weights=True)

    accelerator = Accelerator(backend, cache, prefs, reference, on_ready, check_images, calibration, current)
    manager.accelerator = accelerator
    try:
        ident = accelerator.identity()
        removed = cache.prune(tensorrt=ident["tensorrt"])
        if removed:
            log.info("engine cache: removed %d file(s) built by another TensorRT version", removed)
    except Exception as exc:  # identity needs TensorRT to import; a failure shows per model later
        log.warning("engine cache: cannot prune: %s", exc)
    return accelerator


class TensorRTUnavailable(Exception):
    """TensorRT cannot be used on this machine; the message says why."""


def offline_accelerator(settings: Any, backend: Backend | None = None,
                        cache_dir: Path | None = None) -> tuple[Accelerator, Any]:
    """An ``Accelerator`` and its ``ModelManager`` outside the daemon (``edge-agent compile``, selftest):
    nothing is served, builds run in the calling thread. ``cache_dir`` overrides the configured one."""
    from edge_agent.serving.manager import ModelManager
    from edge_agent.store.model_store import ModelStore
    from engines import choose_backend

    choice = choose_backend(settings.engine_prefs)
    if backend is None and choice.backend != "tensorrt":
        raise TensorRTUnavailable(choice.reason)
    manager = ModelManager(ModelStore(settings.models_dir), choice.ort_prefs)
    if cache_dir is not None:
        settings = settings.model_copy(update={"paths": settings.paths.model_copy(update={"cache_dir": cache_dir})})
    accelerator = build_accelerator(settings, choice, manager, backend=backend)
    assert accelerator is not None
    return accelerator, manager


def compile_model(accelerator: Accelerator, manager: Any, model_id: str, force: bool = False,
                  on_event: Callable[[dict[str, Any]], None] | None = None) -> EngineStatus:
    """The model's engine: from the cache when valid (unless ``force``), else built and checked now."""
    from edge_agent.serving.accelerate import EngineStatus

    manifest, onnx = manager.store.verified_onnx(model_id)
    key = accelerator.key(manifest)
    if not force:
        failed = accelerator.cache.failure(key)
        if failed:
            return EngineStatus(model_id, "failed", key=key.digest,
                                reason=f"an earlier build failed: {failed} (--force retries)")
        engine = accelerator.cached_engine(model_id, manifest, onnx)
        if engine is not None:
            engine.close()
            return accelerator.status(model_id) or EngineStatus(model_id, "tensorrt", "tensorrt", key=key.digest)
    return accelerator.build(model_id, manifest, onnx, key, on_event)
