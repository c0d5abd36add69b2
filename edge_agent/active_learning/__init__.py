"""Active learning (docs/active-learning.md): frames sampled by strategy from the results the runtime
announces, kept in a spool on disk, uploaded to the configured targets when they can be reached."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_agent.active_learning.sampler import Sampler
from edge_agent.active_learning.spool import Spool
from edge_agent.active_learning.uploaders import FolderTarget, HttpTarget, MqttOutlet, MqttTarget, Target, Uploader
from edge_agent.errors import ConfigError
from edge_agent.settings import ActiveLearningSettings


class ActiveLearning:
    """The sampler (an event-bus subscriber), the spool and one uploader per target. ``bridge``: the
    MQTT bridge, for the ``mqtt`` target."""

    def __init__(self, settings: ActiveLearningSettings, state_dir: Path, bridge: MqttOutlet | None = None) -> None:
        self.settings = settings
        self.spool = Spool(state_dir / "active_learning" / "spool.sqlite3", settings.spool_max_items,
                           settings.spool_max_bytes, settings.spool_sync)
        targets: list[Target] = []
        for name in settings.targets:
            if name == "folder":
                targets.append(FolderTarget(settings.folder or state_dir / "dataset"))
            elif name == "http":
                if not settings.http_base_url or not settings.http_project:  # the settings refuse this
                    raise ConfigError("the http target needs http_base_url and http_project")
                key = settings.http_api_key.get_secret_value() if settings.http_api_key else None
                targets.append(HttpTarget(settings.http_base_url, settings.http_project, key,
                                          settings.http_batch_name, settings.http_split))
            elif name == "mqtt":
                if bridge is None:  # the settings refuse this
                    raise ConfigError("active_learning.targets has mqtt but [mqtt] is not enabled")
                targets.append(MqttTarget(bridge))
        self.uploaders = [Uploader(self.spool, t, settings.retry_min_s, settings.retry_max_s,
                                   settings.bandwidth_kbps * 1000, settings.thread_priority) for t in targets]
        self.sampler = Sampler(settings.strategies, self.spool, tuple(t.name for t in targets),
                               jpeg_quality=settings.jpeg_quality, max_image_size=settings.max_image_size,
                               dedup_distance=settings.dedup_distance, queue_size=settings.queue_size,
                               sources=lambda s: s != "http" or settings.sample_http_requests,
                               on_stored=self._wake, batching=settings.batching_strategy,
                               priority=settings.thread_priority)

    def _wake(self) -> None:
        for uploader in self.uploaders:
            uploader.wake()

    def start(self) -> None:
        self.sampler.start()
        for uploader in self.uploaders:
            uploader.start()

    def stop(self) -> None:
        """Write the frames already sampled, then stop uploading (what is left waits on disk)."""
        self.sampler.stop()
        for uploader in self.uploaders:
            uploader.stop()

    def status(self) -> dict[str, Any]:
        return {"sampler": dict(self.sampler.stats), "spool": self.spool.stats(),
                "targets": {u.target.name: {**u.stats, "last_error": u.last_error or None} for u in self.uploaders}}
