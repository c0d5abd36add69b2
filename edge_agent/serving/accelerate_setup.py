"""Putting an ``Accelerator`` together: for the daemon's ``Runtime`` and for ``edge-agent compile`` / selftest.

``build_accelerator`` makes an ``Accelerator`` (``serving.accelerate``) for the back-end chosen: the
TensorRT back-end (``engines.plan_backend``), the engine cache, the build queue with the engine
configuration (``Settings.engine_prefs``), the images a new plan is checked on (``engine.check_images``,
else frames the active-learning spool sampled, topped up by ``builtin_images``) and those INT8
calibrates on. The ``ModelManager`` then receives it through its constructor. ``offline_accelerator``
and ``compile_model`` serve the CLI and the selftest, where nothing is served and builds run in the
calling thread. ``folder_images``, ``builtin_images`` and ``read_jpegs`` read those images.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from edge_agent.serving.accelerate import Accelerator
from edge_agent.serving.manager import ModelManager
from edge_agent.store.model_store import ModelStore
from engines import Choice, EngineUnavailable, choose_backend, plan_backend
from engines.cache import EngineCache
from engines.trt_queue import BuildQueue, EngineStatus, PlanBackend

if TYPE_CHECKING:  # pydantic: the settings are only passed through here
    from edge_agent.settings import Settings

log = logging.getLogger(__name__)

SAMPLE_IMAGE = Path(__file__).resolve().parent.parent / "demo" / "sample.jpg"
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def folder_images(folder: Path | None, n: int) -> list[np.ndarray]:
    """Up to ``n`` images of ``folder`` (sorted by name), read as BGR; unreadable files are skipped."""
    import cv2  # lazy: cv2

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
    import cv2  # lazy: cv2

    from edge_agent.demo.shapes import generate_scene  # lazy: cv2

    sample = cv2.imread(str(SAMPLE_IMAGE), cv2.IMREAD_COLOR)
    images = [sample] if sample is not None else []
    seed = 0
    while len(images) < n:
        images.append(generate_scene(1000 + seed, size=(480, 640)).image)
        seed += 1
    return images[:n]


def read_jpegs(blobs: list[bytes]) -> list[np.ndarray]:
    """The JPEG files ``blobs`` as BGR images; unreadable ones are skipped."""
    import cv2  # lazy: cv2

    images = (cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR) for b in blobs)
    return [img for img in images if img is not None]


class JpegSpool(Protocol):
    """Where sampled frames are kept: the active-learning spool."""

    def recent_jpegs(self, model_id: str, limit: int) -> list[bytes]: ...


def build_accelerator(settings: Settings, choice: Choice, spool: Callable[[], JpegSpool | None] = lambda: None,
                      backend: PlanBackend | None = None) -> Accelerator | None:
    """The ``Accelerator`` when a plan back-end (TensorRT) was chosen or a ``backend`` is given (tests
    give a stand-in); None otherwise. ``spool()`` gives the active-learning spool, if any."""
    backend = backend or plan_backend(choice)
    if backend is None:
        return None
    e = settings.engine

    def sampled(model_id: str, n: int) -> list[np.ndarray]:
        s = spool()
        return read_jpegs(s.recent_jpegs(model_id, n)) if s is not None else []

    def check_images(model_id: str, n: int) -> list[np.ndarray]:
        chosen = folder_images(e.check_images, n)
        if not chosen:
            chosen = sampled(model_id, n // 2)
        return chosen + builtin_images(n - len(chosen))

    def calibration(model_id: str, n: int) -> list[np.ndarray]:
        return folder_images(e.calibration_images, n) or sampled(model_id, n)

    queue = BuildQueue(backend, EngineCache(settings.paths.cache_dir), settings.engine_prefs)
    queue.prune()
    return Accelerator(queue, check_images, calibration)


class TensorRTUnavailable(EngineUnavailable):
    """TensorRT cannot be used on this machine; the message says why."""


def offline_accelerator(settings: Settings, backend: PlanBackend | None = None,
                        cache_dir: Path | None = None) -> tuple[Accelerator, ModelManager]:
    """An ``Accelerator`` and its ``ModelManager`` outside the daemon (``edge-agent compile``, selftest):
    nothing is served, builds run in the calling thread. ``cache_dir`` overrides the configured one."""
    choice = choose_backend(settings.engine_prefs)
    if cache_dir is not None:
        settings = settings.model_copy(update={"paths": settings.paths.model_copy(update={"cache_dir": cache_dir})})
    accelerator = build_accelerator(settings, choice, backend=backend)
    if accelerator is None:
        raise TensorRTUnavailable(choice.reason)
    store = ModelStore(settings.models_dir, keep_revisions=settings.models.keep_revisions)
    return accelerator, ModelManager(store, choice.ort_prefs, accelerator=accelerator)


def compile_model(accelerator: Accelerator, manager: ModelManager, model_id: str, force: bool = False,
                  on_event: Callable[[dict[str, Any]], None] | None = None) -> EngineStatus:
    """The model's engine: from the cache when valid (unless ``force``), else built and checked now."""
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
    return accelerator.build(model_id, manifest, onnx, manager.switch_over(model_id), key, on_event)
