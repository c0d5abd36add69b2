"""``LogRing``: the daemon's own recent warnings and errors, kept in memory for the console.

A ``logging.Handler`` that keeps the last records at WARNING and up in a bounded deque (no file, no
journal reads). ``edge_agent.systemd.setup_logging`` installs one on the root logger; the runtime finds
it with ``installed()`` and the console's ``GET /console/status`` shows ``recent()``. It does not
format for the journal or stderr: the other handlers do. Messages are kept redacted
(``edge_agent.redaction.redact``: a camera's ``user:password@``, ``api_key=``, ``token=``, ``password=``
values), since the console shows them to whoever holds the HTTP key.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Any

from edge_agent.redaction import needs_redaction, redact

RING_SIZE = 200


class LogRing(logging.Handler):
    """The last ``size`` records at ``level`` and up, as plain dicts (time, level, logger, message)."""

    def __init__(self, size: int = RING_SIZE, level: int = logging.WARNING) -> None:
        super().__init__(level)
        self._records: collections.deque[dict[str, Any]] = collections.deque(maxlen=size)
        self._guard = threading.Lock()
        self.total = 0  # records kept since start, the ones the ring has let go included

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                message += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
            if needs_redaction(message):
                message = redact(message)
            item = {"time": round(record.created, 3), "level": record.levelname, "logger": record.name,
                    "message": message[:2000]}
        except Exception:  # a bad format string must not break logging: logging's own reporting
            self.handleError(record)
            return
        with self._guard:
            self._records.append(item)
            self.total += 1

    def recent(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The kept records, oldest first (the last ``limit`` of them when given)."""
        with self._guard:
            items = list(self._records)
        return items[-limit:] if limit else items


def installed(logger: logging.Logger | None = None) -> LogRing | None:
    """The ring on ``logger`` (the root logger by default), if ``setup_logging`` put one there."""
    for handler in (logger or logging.getLogger()).handlers:
        if isinstance(handler, LogRing):
            return handler
    return None
