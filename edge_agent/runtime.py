"""Runtime: the composition root of the daemon. It builds the parts in order and stops them in reverse.

The model store, the model manager (with its batchers), metrics, the image-input limits of network
callers, the per-install id, the readiness state, the event bus that results are announced on, the
pipeline manager, and the MQTT bridge and active learning when enabled. Each consumer gets
its narrow piece, never the runtime: the HTTP app an ``HttpServices`` (``http_services``), the
systemd monitor the ``Watched`` view the runtime itself provides (readiness, health, loaded models,
the engine build, MQTT).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent import __version__
from edge_agent.atomic_files import write_text
from edge_agent.errors import ModelInUse
from edge_agent.events import EventBus
from edge_agent.http.services import HttpServices
from edge_agent.images import ImageLimits
from edge_agent.inference import Inference
from edge_agent.logring import installed as installed_log_ring
from edge_agent.metrics import Metrics
from edge_agent.pipelines.manager import PipelineManager
from edge_agent.provisioning.provisioner import Provisioner
from edge_agent.serving.accelerate_setup import build_accelerator
from edge_agent.serving.manager import LoadedModel, ModelManager
from edge_agent.settings import Settings
from edge_agent.store.model_store import ModelStore
from edge_agent.telemetry import RuntimeStats, SystemStats
from edge_agent.url_fetch import UrlPolicy
from engines import choose_backend
from engines.trt_queue import PlanBackend

if TYPE_CHECKING:  # built only when enabled: their modules load paho and the uploaders then
    from edge_agent.active_learning import ActiveLearning
    from edge_agent.mqtt.bridge import Bridge

log = logging.getLogger(__name__)

PIPELINE_HANG_S = 120.0  # a running pipeline whose streaming source it has not read for this long hangs
CONSOLE_SAMPLE_S = 1.0  # the console's system figures are sampled at most this often


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
    def __init__(self, settings: Settings, engine_backend: PlanBackend | None = None) -> None:
        """``engine_backend``: the TensorRT back-end to use instead of the one chosen for this machine
        (tests give a stand-in; see ``engines.trt_queue.PlanBackend``)."""
        self.settings = settings
        s = settings.server
        self.version = __version__
        self.started_at = time.time()
        self.metrics = Metrics()
        self.stats = RuntimeStats()
        self.events = EventBus()
        self.events.subscribe(lambda event: self.stats.on_frame(event.source_id))
        self.store = ModelStore(settings.models_dir, keep_revisions=settings.models.keep_revisions)
        self.engine_choice = choose_backend(settings.engine_prefs)
        self.accelerator = build_accelerator(
            settings, self.engine_choice, backend=engine_backend,
            spool=lambda: self.active_learning.spool if self.active_learning is not None else None)
        self.manager = ModelManager(
            self.store,
            self.engine_choice.ort_prefs,
            max_loaded=s.max_loaded_models,
            aliases=s.aliases,
            on_load=self.metrics.on_load,
            on_batch=self._on_batch,
            accelerator=self.accelerator,
        )
        self.metrics.watch(self.manager.queue_depths, lambda: len(self.manager.loaded()))
        self.provisioner = Provisioner(settings.models, self.store, self.manager, device_id=settings.mqtt.device_id,
                                       server_key=settings.server_key(),
                                       protected=lambda: settings.named_models() | self._models_in_use())
        self.metrics.watch_provisioning(self.provisioner.counts)
        self.inference = Inference(self.provisioner, self.manager, self.metrics, self.events)
        self.limits = ImageLimits(
            max_pixels=s.max_image_pixels,
            allow_files=False,  # docs/http-api.md §9.3: never read server files for a network caller
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
        self.stopping = threading.Event()  # set when the process is told to stop (before ``stop``)
        self.readiness_detail = "starting"
        self._preloader: threading.Thread | None = None
        mqtt, al = settings.mqtt, settings.active_learning
        # HTTP results are announced (source "http") only when an outlet asked for them.
        wanted = (mqtt.enabled and mqtt.publish_http_predictions) or (al.enabled and al.sample_http_requests)
        self.http_source = "http" if wanted else None
        self.bridge: Bridge | None = None
        self.active_learning: ActiveLearning | None = None
        self._system: SystemStats | None = None
        # The console's own CPU sample (the telemetry's stays untouched), shared by concurrent page loads
        # under a lock and kept CONSOLE_SAMPLE_S: the CPU share is measured between two samples.
        self._console_system = SystemStats()
        self._console_lock = threading.Lock()
        self._console_sample: tuple[float, dict[str, Any]] | None = None
        long_spin = settings.engine.idle_spin == "auto" and not settings.engine_prefs.short_spin
        self.pipelines = PipelineManager(self.inference, settings.state_dir / "pipelines", long_spin=long_spin)
        self.metrics.watch_pipelines(lambda: [p.status() for p in self.pipelines.list()])
        if mqtt.enabled:
            self._build_bridge()
        if al.enabled:
            from edge_agent.active_learning import ActiveLearning  # lazy: only when enabled

            self.active_learning = ActiveLearning(al, settings.state_dir, self.bridge)
            self.events.subscribe(self.active_learning.sampler)
            self.metrics.watch_active_learning(self.active_learning.status)

    def _on_batch(self, model_id: str, size: int, seconds: float) -> None:
        self.metrics.on_batch(model_id, size, seconds)
        self.stats.on_batch(model_id, size, seconds)

    def _build_bridge(self) -> None:
        from edge_agent.mqtt import ha_discovery  # lazy: MQTT only when enabled
        from edge_agent.mqtt.bridge import Bridge  # lazy: paho, only when MQTT is enabled
        from edge_agent.mqtt.commands import CommandServices, device_commands  # lazy: MQTT only when enabled

        mqtt = self.settings.mqtt
        services = CommandServices(device_id=mqtt.device_id, inference=self.inference, models=self.manager,
                                   store=self.store, provisioner=self.provisioner, pipelines=self.pipelines,
                                   status=self.status)
        self.commands = device_commands(services, lambda: bridge.snapshot())
        discovery = None
        if mqtt.home_assistant:
            def discovery(source_id: str, class_names: tuple[str, ...]) -> list[tuple[str, bytes]]:
                return ha_discovery.configs(bridge.topics, mqtt.home_assistant_prefix, self.version, source_id,
                                            class_names)
        bridge = Bridge(mqtt, self.settings.state_dir, client_id=f"edge-agent-{self.install_id}",
                        commands=self.commands, telemetry=self.telemetry, discovery=discovery)
        self.bridge = bridge
        publish_http = mqtt.publish_http_predictions
        self.events.subscribe(lambda event: (publish_http or event.source_id != "http") and bridge.submit(event))
        self.metrics.watch_mqtt(bridge.snapshot)

    def start(self) -> None:
        """Clean up after interrupted installs, start the MQTT bridge, then load the preloaded models
        in the background."""
        try:
            self.store.clean()
        except OSError as exc:
            log.warning("cannot clean the model store: %s", exc)
        self.provisioner.evict_quietly()
        if self.bridge is not None:
            self.bridge.start()
        if self.active_learning is not None:
            self.active_learning.start()
        for spec in self.settings.pipelines.streams:  # declared in the configuration
            try:
                self.pipelines.start(spec)
            except Exception as exc:  # one bad declaration does not stop the others
                log.error("cannot start pipeline %s: %s", spec.pipeline_id, exc)
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

    def http_services(self) -> HttpServices:
        """What the HTTP app uses of the daemon (``create_app`` takes this, never the runtime)."""
        return HttpServices(
            version=self.version, install_id=self.install_id, engine_choice=self.engine_choice,
            server=self.settings.server, models_settings=self.settings.models, limits=self.limits,
            metrics=self.metrics, inference=self.inference, models=self.manager, store=self.store,
            provisioner=self.provisioner, pipelines=self.pipelines, readiness=self, engine_status=self.engine_status,
            http_source=self.http_source, stopping=self.stopping, console_status=self.console_status,
            settings_view=self.settings_view, remove_model=self.remove_model)

    def settings_view(self) -> dict[str, Any]:
        """The effective settings, secrets masked, and where each value came from (``GET /console/config``)."""
        return {"settings": self.settings.public(), "sources": self.settings.sources()}

    def loaded_models(self) -> list[LoadedModel]:
        """The models loaded now, least recently used first."""
        return self.manager.loaded()

    def mqtt_snapshot(self) -> dict[str, Any] | None:
        """The MQTT bridge's connection state and outbox depth; None when MQTT is off."""
        return self.bridge.snapshot() if self.bridge is not None else None

    def remove_model(self, model_id: str) -> dict[str, Any]:
        """Delete a model and its revisions from the store and stop serving it (``DELETE /models/...``).
        Refused (409) while a pipeline that is not done uses it; built-in demo models answer 400."""
        model_id = self.manager.resolve(model_id)
        users = sorted(p.pipeline_id for p in self.pipelines.list()
                       if not p.done and self.manager.resolve(p.model_id) == model_id)
        if users:
            raise ModelInUse(f"Model {model_id!r} is used by the running pipeline(s) {', '.join(users)}: "
                             "terminate them first (POST /inference_pipelines/{id}/terminate), then remove it.")
        self.store.remove(model_id)  # ModelNotFound (404), or a built-in demo model (400)
        self.manager.invalidate(model_id)  # a load in flight is not kept
        self.manager.unload(model_id)
        log.info("removed %s from the model store", model_id)
        return {"removed": model_id}

    def _models_in_use(self) -> set[str]:
        """Ids eviction must leave alone beyond the provisioner's own list: running pipelines' models."""
        return {p.model_id for p in self.pipelines.list()}

    def engine_status(self, model_id: str) -> dict[str, Any]:
        """What serves ``model_id`` and where its TensorRT engine stands (state, progress, reason)."""
        found = self.accelerator.status(model_id) if self.accelerator is not None else None
        if found is not None:
            return found.as_dict()
        return {"state": "onnxruntime", "backend": "onnxruntime", "reason": self.engine_choice.reason}

    def engines(self) -> dict[str, dict[str, Any]]:
        """``engine_status`` of every loaded model and of every model with a build queued or done."""
        ids = [m.model_id for m in self.manager.loaded()]
        if self.accelerator is not None:
            ids += [i for i in self.accelerator.statuses() if i not in ids]
        return {model_id: self.engine_status(model_id) for model_id in ids}

    def building(self) -> str | None:
        """A line on the engine build in progress, if any (STATUS=, /readiness)."""
        b = self.accelerator.building() if self.accelerator is not None else None
        if b is None:
            return None
        pct = f" {b.progress * 100:.0f}%" if b.progress is not None else ""
        return f"building the TensorRT engine of {b.model_id}: {b.phase or b.state}{pct}"

    def status(self) -> dict[str, Any]:
        """What the device is doing, for the MQTT ``status`` command."""
        return {"version": self.version, "uptime_s": round(time.time() - self.started_at, 3),
                "ready": self.ready.is_set(), "readiness": self.readiness_detail,
                "models_loaded": [m.model_id for m in self.manager.loaded()],
                "engine": self.engine_choice.backend, "engines": self.engines(),
                "pipelines": {p.pipeline_id: p.state for p in self.pipelines.list()},
                "active_learning": self.active_learning.status() if self.active_learning is not None else None}

    def telemetry(self) -> dict[str, Any]:
        """The body of a telemetry message: the system's figures and what ran since the last one."""
        if self._system is None:
            self._system = SystemStats()
        return {"uptime_s": round(time.time() - self.started_at, 3), "version": self.version,
                "system": self._system.snapshot(), **self.stats.take(),
                "pipelines": {p.pipeline_id: _pipeline_figures(p.status()) for p in self.pipelines.list()},
                "engines": self.engines(),
                **({"active_learning": self.active_learning.status()} if self.active_learning is not None else {})}

    def console_status(self) -> dict[str, Any]:
        """The console's overview (``GET /console/status``): ``status()`` with the system's figures,
        the back-end and why, MQTT, per-pipeline figures and the recent warnings and errors. It reads
        and never takes: the telemetry counters stay for the MQTT telemetry message."""
        ring = installed_log_ring()
        return {**self.status(), "engine_choice": self.engine_choice.as_dict(),
                "building": self.building(), "system": self._console_system_figures(),
                "mqtt": self.mqtt_snapshot(),
                "pipelines": {p.pipeline_id: _pipeline_figures(p.status()) for p in self.pipelines.list()},
                "api_key_set": self.settings.server.api_key is not None,
                "log": {"kept": ring is not None, "total": ring.total if ring is not None else 0,
                        "recent": ring.recent(50) if ring is not None else []}}

    def _console_system_figures(self) -> dict[str, Any]:
        """The system's figures for the console, sampled at most once every CONSOLE_SAMPLE_S."""
        with self._console_lock:
            now = time.monotonic()
            if self._console_sample is None or now - self._console_sample[0] >= CONSOLE_SAMPLE_S:
                self._console_sample = (now, self._console_system.snapshot())
            return self._console_sample[1]

    def start_active_learning(self) -> bool:
        """Start active learning alone, where ``[active_learning]`` is enabled: for a runtime that
        serves Python-API pipelines and starts nothing else. True when it started."""
        if self.active_learning is None:
            return False
        self.active_learning.start()
        return True

    def stop_active_learning(self) -> None:
        """Write what was sampled and stop uploading (``start_active_learning``'s end)."""
        if self.active_learning is not None:
            self.active_learning.stop()

    def healthy(self) -> str | None:
        """Why the runtime is not healthy (for the watchdog), or None."""
        if self.bridge is not None and not self.bridge.alive():
            return "the MQTT bridge thread has stopped"
        pipelines = self.pipelines.list()
        stuck = [p.pipeline_id for p in pipelines if p.stuck()]
        if stuck:
            return f"the thread of pipeline(s) {', '.join(stuck)} has stopped"
        hung = [p.pipeline_id for p in pipelines if p.stalled_for() > PIPELINE_HANG_S]
        if hung:
            return f"pipeline(s) {', '.join(hung)} took no frame for {PIPELINE_HANG_S:.0f} s while the source delivers"
        return None

    def stop(self) -> None:
        """Stop in reverse order of start: the bridge flushes what it holds, then the models go."""
        self.ready.clear()
        self.stopping.set()
        self.readiness_detail = "stopping"
        self.pipelines.stop_all()  # producers first: their last results still reach the bridge
        if self.active_learning is not None:
            self.active_learning.stop()  # before the bridge: its MQTT uploads go through it
        if self.bridge is not None:
            self.bridge.stop()
            self.commands.close()
        if self.accelerator is not None:
            self.accelerator.stop()  # kills a build in progress; its plan never reached the cache
        self.manager.clear()


def _pipeline_figures(status: dict[str, Any]) -> dict[str, Any]:
    """The telemetry figures of a pipeline (the full status is the ``pipeline_status`` command's)."""
    source = status["source"]
    return {"state": status["state"], "source_fps": source["source_fps"], "inference_fps": status["inference_fps"],
            "dropped": source["dropped"], "reconnects": source["reconnects"], "latency_s": status["latency_s"],
            "frames_inferred": status["frames_inferred"]}
