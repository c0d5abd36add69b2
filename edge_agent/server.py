"""``edge-agent serve``: gunicorn started from code, one worker that owns the runtime.

One worker because the runtime (loaded models, batchers, pipelines and the MQTT bridge) must exist
once per device: several workers would each load every model. The worker is ``FrontWorker``
(``edge_agent/http/front.py``): an event loop reads whole requests, request threads run the app;
the engine itself runs outside the GIL.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

from gunicorn.app.base import BaseApplication

from edge_agent.errors import EdgeAgentError
from edge_agent.settings import Settings, SystemdEnv

if TYPE_CHECKING:  # built in the worker only: the master stays small
    from flask import Flask

    from edge_agent.runtime import Runtime
    from edge_agent.systemd import Monitor, Notifier

# What ``signal.getsignal`` returns: a handler, SIG_DFL/SIG_IGN, or None.
SignalHandler = Callable[[int, FrameType | None], Any] | int | None

log = logging.getLogger(__name__)


class EdgeAgentServer(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings, sd_env: SystemdEnv = SystemdEnv(),
                 reread: Callable[[], Settings] | None = None) -> None:
        self.settings = settings
        self.sd_env = sd_env
        self.reread = reread  # SIGHUP: read the configuration again (file, environment, flags)
        self.notifier: Notifier | None = None  # made in the worker (load), which speaks to systemd
        self.master_notifier: Notifier | None = None  # made in the master (when_ready): RELOADING, STOPPING
        self.runtime: Runtime | None = None
        self.monitor: Monitor | None = None
        super().__init__()

    def reload(self) -> None:
        """SIGHUP (``systemctl reload``): re-read the configuration; gunicorn then replaces the worker,
        whose READY=1 ends the reload. A configuration that does not validate is refused (logged) and
        the running one stays in force."""
        if self.reread is not None:
            try:
                self.settings = self.reread()
                log.info("reload: configuration read again")
            except EdgeAgentError as exc:
                log.error("reload: configuration refused, keeping the running one: %s", exc.message)
        if self.master_notifier is not None:
            usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            self.master_notifier.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")
        super().reload()

    def load_config(self) -> None:
        s = self.settings.server
        runtime_holder = self

        def when_ready(arbiter: object) -> None:
            # STOPPING=1 comes from the master, on the signals that stop it: on SIGHUP gunicorn
            # replaces its worker (the new one sends READY=1 again) and systemd must not see a stop.
            if runtime_holder.sd_env.notify_socket is None:
                return
            from edge_agent.systemd import Notifier  # lazy: only under systemd

            master = runtime_holder.master_notifier = Notifier(runtime_holder.sd_env.notify_socket)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
                queued = signal.getsignal(sig)

                def on_stop(signum: int, frame: FrameType | None, queued: SignalHandler = queued) -> None:
                    master.notify("STOPPING=1", "STATUS=stopping: finishing in-flight requests")
                    if callable(queued):
                        queued(signum, frame)

                signal.signal(sig, on_stop)

        def post_worker_init(worker: object) -> None:
            # Long-lived responses (the MJPEG preview) end as soon as the worker is told to stop, not at
            # graceful_timeout: the runtime's ``stopping`` is set before gunicorn's own handler runs.
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
                queued = signal.getsignal(sig)

                def on_stop(signum: int, frame: FrameType | None, queued: SignalHandler = queued) -> None:
                    if runtime_holder.runtime is not None:
                        runtime_holder.runtime.stopping.set()
                    if callable(queued):
                        queued(signum, frame)

                signal.signal(sig, on_stop)

        def worker_exit(server: object, worker: object) -> None:
            if runtime_holder.monitor is not None:
                runtime_holder.monitor.stop()
            if runtime_holder.runtime is not None:
                runtime_holder.runtime.stop()
            log.info("worker stopped: in-flight requests finished, models unloaded")

        options = {
            "bind": [f"[{s.host}]:{s.port}" if ":" in s.host else f"{s.host}:{s.port}"],
            "workers": 1,
            "worker_class": "edge_agent.http.front.FrontWorker",  # reads whole requests, then a thread runs them
            "timeout": 120,  # a stuck worker is restarted; inference holds no lock that long
            "graceful_timeout": s.graceful_timeout_s,
            "accesslog": None,  # the app logs requests (http/app.py) without query strings (api keys)
            "errorlog": "-",
            "loglevel": "info",
            "proc_name": "edge-agent",
            "worker_exit": worker_exit,
            "post_worker_init": post_worker_init,
            "when_ready": when_ready,
            "control_socket_disable": True,  # no control socket in the home folder of the service user
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        """Called in the worker: build the runtime there, so that it owns the models."""
        # The web stack, the models and their engines load in the worker, never in the master.
        from edge_agent.http.app import create_app  # lazy: flask
        from edge_agent.runtime import Runtime  # lazy: numpy, onnxruntime
        from edge_agent.systemd import Monitor, Notifier  # lazy: urllib.request

        notifier = self.notifier = Notifier(self.sd_env.notify_socket)
        runtime = self.runtime = Runtime(self.settings)
        app = create_app(runtime.http_services())
        runtime.start()
        monitor = self.monitor = Monitor(runtime, self.settings.server, notifier, self.sd_env.watchdog_usec)
        monitor.start()
        return app


def serve(settings: Settings, sd_env: SystemdEnv = SystemdEnv(),
          reread: Callable[[], Settings] | None = None) -> None:
    s = settings.server
    log.info("edge-agent serving on %s:%d (%d threads)%s", s.host, s.port, s.threads,
             "; notifying systemd" if sd_env.notify_socket else "")
    EdgeAgentServer(settings, sd_env, reread).run()
