"""``edge-agent serve``: gunicorn started from code, one worker that owns the runtime, threads for
concurrency.

One worker because the runtime (loaded models, batchers, later pipelines and the MQTT bridge) must
exist once per device: several workers would each load every model. Concurrency comes from the
worker's threads; the engine itself runs outside the GIL.
"""

from __future__ import annotations

import logging
from typing import Any

from gunicorn.app.base import BaseApplication

from edge_agent.settings import Settings

log = logging.getLogger(__name__)


class EdgeAgentServer(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.runtime: Any = None
        super().__init__()

    def load_config(self) -> None:
        s = self.settings.server
        runtime_holder = self

        def worker_exit(server: Any, worker: Any) -> None:
            if runtime_holder.runtime is not None:
                runtime_holder.runtime.stop()

        options = {
            "bind": [f"[{s.host}]:{s.port}" if ":" in s.host else f"{s.host}:{s.port}"],
            "workers": 1,
            "worker_class": "gthread",
            "threads": max(1, s.threads),
            "timeout": 120,  # a stuck worker is restarted; inference holds no lock that long
            "graceful_timeout": s.graceful_timeout_s,
            "keepalive": 5,
            "accesslog": None,  # the legacy route carries api keys in URLs; metrics count requests
            "errorlog": "-",
            "loglevel": "info",
            "proc_name": "edge-agent",
            "worker_exit": worker_exit,
            "limit_request_line": 8190,
            "control_socket_disable": True,  # no control socket in the home folder of the service user
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        """Called in the worker: build the runtime there, so that it owns the models."""
        from edge_agent.http.app import create_app
        from edge_agent.runtime import Runtime

        self.runtime = Runtime(self.settings)
        app = create_app(self.runtime)
        self.runtime.start()
        return app


def serve(settings: Settings) -> None:
    s = settings.server
    log.info("edge-agent serving on %s:%d (%d threads)", s.host, s.port, s.threads)
    EdgeAgentServer(settings).run()
