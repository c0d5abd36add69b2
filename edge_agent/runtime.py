"""Runtime: the composition root of the daemon. It builds the parts in order and stops them in reverse.

Today: the model store, the model manager (with its batchers), metrics, the image-input limits of
network callers, the per-install id and the readiness state. The HTTP app, and later pipelines and
the MQTT bridge, take a ``Runtime`` and share its model manager.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from edge_agent import __version__
from edge_agent.atomic_files import write_text
from edge_agent.heads import InferenceParams
from edge_agent.images import ImageLimits
from edge_agent.metrics import Metrics
from edge_agent.models.manager import BatchingPrefs, LoadedModel, ModelManager
from edge_agent.models.store import ModelStore
from edge_agent.results import Result
from edge_agent.settings import Settings
from edge_agent.url_fetch import UrlPolicy

log = logging.getLogger(__name__)


def _install_id(state_dir: Path) -> str:
    """A stable id for this installation (``/info``'s uuid), kept in the state folder."""
    path = state_dir / "install_id"
    try:
        value = path.read_text().strip()
        uuid.UUID(value)
        return value
    except (OSError, ValueError):
        pass
    value = str(uuid.uuid4())
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        write_text(path, value + "\n")
    except OSError as exc:  # read-only state: still answer, with an id for this run only
        log.warning("cannot keep the install id in %s: %s", path, exc)
    return value


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        s = settings.server
        self.version = __version__
        self.started_at = time.time()
        self.metrics = Metrics()
        self.store = ModelStore(settings.models_dir)
        self.manager = ModelManager(
            self.store,
            settings.engine_prefs,
            BatchingPrefs({"on": True, "off": False}.get(s.batching), s.max_batch, s.max_queue_delay_ms,
                          s.max_queue),
            max_loaded=s.max_loaded_models,
            aliases=s.aliases,
            on_load=self.metrics.on_load,
            on_batch=self.metrics.on_batch,
        )
        self.metrics.watch(self.manager.queue_depths, lambda: len(self.manager.loaded()))
        self.limits = ImageLimits(
            max_pixels=s.max_image_pixels,
            allow_files=False,  # spec §9.3: never read server files for a network caller
            url_policy=UrlPolicy(
                allow_urls=s.allow_url_input,
                allow_http=s.allow_http_urls,
                allow_ip_hosts=s.allow_urls_without_fqdn,
                allow_non_global=s.allow_non_global_urls,
                allowed_hosts=s.url_allowed_hosts,
                blocked_hosts=s.url_blocked_hosts,
            ),
        )
        self.install_id = _install_id(settings.state_dir)
        self.ready = threading.Event()
        self.readiness_detail = "starting"
        self._preloader: threading.Thread | None = None

    def start(self) -> None:
        """Clean up after interrupted installs, then load the preloaded models in the background."""
        try:
            self.store.clean()
        except OSError as exc:
            log.warning("cannot clean the model store: %s", exc)
        preload = self.settings.server.preload_models
        if not preload:
            self._set_ready()
            return
        self.readiness_detail = f"loading {len(preload)} model(s)"
        self._preloader = threading.Thread(target=self._preload, args=(preload,), name="preload", daemon=True)
        self._preloader.start()

    def _preload(self, model_ids: tuple[str, ...]) -> None:
        failed = []
        for model_id in model_ids:
            try:
                self.manager.get(model_id)
            except Exception as exc:  # reported, and the rest still load; readiness says so
                log.error("cannot preload %s: %s", model_id, exc)
                failed.append(f"preloading {model_id} failed: {exc}")
        if failed:
            self.readiness_detail = "; ".join(failed)
        else:
            self._set_ready()

    def _set_ready(self) -> None:
        self.readiness_detail = "ready"
        self.ready.set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self.ready.wait(timeout)

    def model(self, model_id: str) -> tuple[LoadedModel, bool]:
        return self.manager.get(model_id)

    def infer(self, loaded: LoadedModel, images: list[np.ndarray], params: InferenceParams) -> list[Result]:
        results = loaded.infer(images, params)
        self.metrics.images.labels(loaded.model_id).inc(len(images))
        return results

    def stop(self) -> None:
        self.ready.clear()
        self.readiness_detail = "stopping"
        self.manager.clear()
