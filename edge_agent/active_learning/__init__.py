"""Active learning (docs/active-learning.md): frames sampled by strategy from the results the runtime
announces, kept in a spool on disk, uploaded to the configured targets when they can be reached.

Several processes may share a state directory (the daemon, and a pipeline of the Python API): each
samples into the spool, and only the one holding the lock file ``uploaders.lock`` beside the spool
(``fcntl.flock``) runs the uploaders, since the spool hands out deliveries without claiming them. The
others try for the lock again whenever they store a frame, so uploads go on when the holder stops.
"""

from __future__ import annotations

import fcntl
import logging
import threading
from pathlib import Path
from typing import IO, Any

from edge_agent.active_learning.sampler import Sampler
from edge_agent.active_learning.spool import Spool
from edge_agent.active_learning.uploaders import FolderTarget, HttpTarget, MqttOutlet, MqttTarget, Target, Uploader
from edge_agent.errors import ConfigError
from edge_agent.settings import ActiveLearningSettings

log = logging.getLogger(__name__)


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
        # Uploaders keep the normal priority: those of http and mqtt wait on the network, and the folder
        # target's, run at nice +10 in bench/active_learning.py, gained no measurable throughput while
        # it fell behind (a low-priority thread preempted holding the GIL stalls the pipeline too).
        self.uploaders = [Uploader(self.spool, t, settings.retry_min_s, settings.retry_max_s,
                                   settings.bandwidth_kbps * 1000) for t in targets]
        self._lock_path = self.spool.path.parent / "uploaders.lock"
        self._lock_file: IO[bytes] | None = None
        self._uploading = False
        self._started = False
        self._guard = threading.Lock()
        # The folder target is written by the sampler's writer itself (sampler.py); its uploader retries
        # what that could not write, and counts both.
        direct = next((t for t in targets if isinstance(t, FolderTarget)), None)
        folder = next((u for u in self.uploaders if u.target is direct), None)
        self.sampler = Sampler(settings.strategies, self.spool, tuple(t.name for t in targets),
                               jpeg_quality=settings.jpeg_quality, max_image_size=settings.max_image_size,
                               dedup_distance=settings.dedup_distance, queue_size=settings.queue_size,
                               sources=lambda s: s != "http" or settings.sample_http_requests,
                               on_stored=self._wake, batching=settings.batching_strategy,
                               priority=settings.thread_priority,
                               direct=direct,
                               on_direct=folder.count_sent if folder is not None else lambda items: None)

    @property
    def uploading(self) -> bool:
        """Whether this process runs the uploaders (it holds ``uploaders.lock``)."""
        return self._uploading

    def _wake(self) -> None:
        if not self._uploading:
            self._start_uploaders()
        for uploader in self.uploaders:
            uploader.wake()

    def _take_upload_lock(self) -> bool:
        if self._lock_file is None:
            self._lock_file = open(self._lock_path, "ab")  # noqa: SIM115 - held until stop()
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another process (or ActiveLearning) on this state directory uploads
            return False
        return True

    def _start_uploaders(self) -> None:
        with self._guard:
            if self._uploading or not self._started or not self.uploaders:
                return
            if not self._take_upload_lock():
                return
            self._uploading = True
            for uploader in self.uploaders:
                uploader.start()
        log.info("active learning: this process uploads the spool %s", self.spool.path)

    def start(self) -> None:
        self._started = True
        self.sampler.start()
        self._start_uploaders()
        if self.uploaders and not self._uploading:
            log.info("active learning: another process holds %s and uploads; this one only samples into the "
                     "spool", self._lock_path)

    def stop(self) -> None:
        """Write the frames already sampled, then stop uploading (what is left waits on disk)."""
        with self._guard:
            self._started = False
        self.sampler.stop()
        if self._uploading:
            for uploader in self.uploaders:
                uploader.stop()
            self._uploading = False
        if self._lock_file is not None:
            self._lock_file.close()  # closing releases the flock
            self._lock_file = None

    def status(self) -> dict[str, Any]:
        return {"sampler": dict(self.sampler.stats), "spool": self.spool.stats(),
                "targets": {u.target.name: {**u.stats, "last_error": u.last_error or None} for u in self.uploaders}}
