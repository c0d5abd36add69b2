"""systemd integration: sd_notify (READY, STATUS, WATCHDOG, STOPPING) and journald-friendly logging.

``Notifier`` uses systemd-python's ``systemd.daemon.notify`` where the module is installed (Debian's
``python3-systemd``), else the plain datagram protocol to ``$NOTIFY_SOCKET``; without a socket it
does nothing. The gunicorn worker sends the notifications, so the unit needs ``NotifyAccess=all``.

``Monitor`` runs in the worker: once the runtime is ready (preloaded models loaded) and the HTTP port
really answers a request, it sends ``READY=1``; then, every half ``WatchdogSec``, it checks that the
runtime works (the port answers and a loaded model runs an inference) and only then sends
``WATCHDOG=1``, so a wedged daemon is restarted by systemd rather than pinged forever by a thread.
It reads the daemon through ``Watched`` (the ``Runtime`` provides it), never the runtime as a whole.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from edge_agent.logring import LogRing
from edge_agent.params import InferenceParams

if TYPE_CHECKING:  # the gunicorn master imports this module and stays small
    from edge_agent.serving.manager import LoadedModel
    from edge_agent.settings import ServerSettings

log = logging.getLogger(__name__)


class Notifier:
    """Create it in the process that notifies (the worker): with systemd-python it puts the socket
    back into this process's environment, where ``systemd.daemon.notify`` looks for it."""

    def __init__(self, notify_socket: str | None) -> None:
        self.socket_path = notify_socket or None
        self._send: Callable[[str], Any] | None = None
        self.via = "none"  # which way notifications go: "socket", "systemd-python" (the package check reads it)
        if self.socket_path is None:
            return
        try:
            from systemd import daemon  # type: ignore[import-not-found,attr-defined,unused-ignore]  # lazy: optional
        except ImportError:
            self._send, self.via = self._datagram, "socket"
            return
        os.environ["NOTIFY_SOCKET"] = self.socket_path
        self._send, self.via = self._systemd_python(daemon.notify), "systemd-python"

    @staticmethod
    def _systemd_python(notify: Callable[[str], bool]) -> Callable[[str], Any]:
        def send(message: str) -> None:
            if not notify(message):
                raise OSError("systemd.daemon.notify could not send")

        return send

    @property
    def enabled(self) -> bool:
        return self._send is not None

    def _datagram(self, message: str) -> None:
        assert self.socket_path is not None
        address = "\0" + self.socket_path[1:] if self.socket_path.startswith("@") else self.socket_path
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())

    def notify(self, *fields: str) -> bool:
        """Send ``FIELD=value`` lines in one message; False when there is nobody to tell."""
        if self._send is None:
            return False
        try:
            self._send("\n".join(fields))
            return True
        except OSError as exc:  # systemd gone (shutdown) or socket misconfigured: never fatal
            log.warning("sd_notify to %s failed: %s", self.socket_path, exc)
            return False


def probe_host(host: str) -> str:
    """The address to reach our own listener on."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


class Watched(Protocol):
    """What the monitor reads of the running daemon."""

    @property
    def ready(self) -> threading.Event: ...

    @property
    def readiness_detail(self) -> str: ...

    def healthy(self) -> str | None:
        """Why the daemon is not healthy, or None."""

    def building(self) -> str | None:
        """A line on the engine build in progress, if any."""

    def loaded_models(self) -> Sequence[LoadedModel]:
        """The loaded models, the most recently used last."""

    def mqtt_snapshot(self) -> dict[str, Any] | None:
        """``connected`` and ``outbox_depth`` of the MQTT bridge; None when MQTT is off."""


class Monitor:
    """READY=1 once really serving, then WATCHDOG=1 only while the runtime works; STATUS= lines."""

    def __init__(self, watched: Watched, server: ServerSettings, notifier: Notifier,
                 watchdog_usec: int | None) -> None:
        self.watched = watched
        self.server = server
        self.notifier = notifier
        host = probe_host(server.host)
        self.url = f"http://{'[' + host + ']' if ':' in host else host}:{server.port}/healthz"
        self.interval = watchdog_usec / 2e6 if watchdog_usec else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="systemd-monitor", daemon=True)

    def start(self) -> None:
        if self.notifier.enabled:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def status(self) -> str:
        models = [m.model_id for m in self.watched.loaded_models()]
        server = self.server
        state = self.watched.readiness_detail
        text = (f"STATUS={state}; HTTP on {server.host}:{server.port}; "
                f"models loaded: {', '.join(models) if models else 'none'}")
        building = self.watched.building()
        if building:
            text += f"; {building}"
        snap = self.watched.mqtt_snapshot()
        if snap is not None:
            text += f"; MQTT {'connected' if snap['connected'] else 'disconnected'}, outbox {snap['outbox_depth']}"
        return text

    def _runtime_ok(self) -> bool:
        why = self.watched.healthy()
        if why is not None:
            log.error("watchdog: %s", why)
        return why is None

    def _http_ok(self) -> bool:
        try:
            with urllib.request.urlopen(self.url, timeout=5) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def _inference_ok(self) -> bool:
        """A loaded model runs a small image end to end (no model loaded: nothing to prove)."""
        import numpy as np  # lazy: numpy, kept out of the gunicorn master

        loaded = self.watched.loaded_models()
        if not loaded:
            return True
        try:
            # The model itself, not LoadedModel.infer: the probe stays out of the batcher and the metrics.
            loaded[-1].model.run([np.zeros((32, 32, 3), np.uint8)], InferenceParams())
            return True
        except Exception as exc:
            log.error("watchdog: inference on %s failed: %s", loaded[-1].model_id, exc)
            return False

    def _run(self) -> None:
        self.notifier.notify(self.status())
        while not self._stop.is_set():  # READY=1 only when models are loaded and the port answers
            if self.watched.ready.is_set() and self._http_ok():
                break
            self._stop.wait(0.1)
        else:
            return
        self.notifier.notify("READY=1", self.status())
        log.info("ready: %s", self.status()[7:])
        last_status = ""
        while not self._stop.wait(self.interval or 5.0):
            status = self.status()
            if self.interval is not None:
                t0 = time.monotonic()
                if self._runtime_ok() and self._http_ok() and self._inference_ok():
                    self.notifier.notify("WATCHDOG=1")
                else:
                    log.error("watchdog: the runtime does not answer; not pinging systemd")
                if time.monotonic() - t0 > self.interval:
                    log.warning("watchdog check took %.1f s, longer than half WatchdogSec", time.monotonic() - t0)
            if status != last_status:
                self.notifier.notify(status)
                last_status = status


class JournalFormatter(logging.Formatter):
    """stderr lines for journald: ``<priority>`` prefix (sd-daemon(3)), no timestamp (journald adds it)."""

    PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        priority = self.PRIORITIES.get(record.levelno, 6)
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines())


def setup_logging(under_journal: bool, level: int = logging.INFO) -> None:
    """journald with structured fields (systemd-python) or prefixed stderr under systemd; plain stderr
    with timestamps otherwise."""
    root = logging.getLogger()
    root.setLevel(level)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(LogRing())  # the console's recent warnings and errors (edge_agent/logring.py)
    if under_journal:
        try:
            from systemd.journal import JournalHandler  # type: ignore[import-not-found,unused-ignore]  # lazy: optional

            root.addHandler(JournalHandler(SYSLOG_IDENTIFIER="edge-agent"))
            return
        except ImportError:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(JournalFormatter())
            root.addHandler(handler)
            return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
