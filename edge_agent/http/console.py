"""The device console (docs/http.md, "Console"): the page at ``/``, its script and stylesheet, and the
three JSON routes only the console uses.

- ``GET /``, ``/console.js``, ``/console.css``: files shipped in ``edge_agent/http/console/``, open
  like ``/docs`` (they hold no data; every call the page makes needs the key when one is set).
- ``GET /console/status``: what the device is doing (``HttpServices.console_status``).
- ``GET /console/config``: the effective settings, secrets masked (``edge-agent config show``), and where
  each value came from (``sources``: a file and line, an environment variable, a flag or ``default``).
- ``POST /console/config/check``: a pasted TOML configuration validated like ``edge-agent config check``
  (file only, no environment), never applied. It does not look at the device's files (the answer is the
  same whether a named certificate exists or not), and a body over ``MAX_CONFIG_BYTES`` is refused (413)
  before it is read.

Everything else the console does goes through the documented API routes (models, inference,
pipelines). This module does not serve the API docs (``app.py``) and reads no log file.
"""

from __future__ import annotations

import functools
import re
import tempfile
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, jsonify, request

from edge_agent.errors import EdgeAgentError, InvalidInput, PayloadTooLarge
from edge_agent.http import common
from edge_agent.http.head import MAX_CONFIG_BYTES
from edge_agent.settings import load_settings

FOLDER = Path(__file__).resolve().parent / "console"
ASSETS = {"/console.js": ("console.js", "text/javascript"), "/console.css": ("console.css", "text/css")}
# The page loads nothing from elsewhere, runs no inline script, and is never framed (clickjacking).
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
PASTED = "the pasted configuration"
# The console's own routes are for the page the device serves: no CORS headers, whatever
# ``[server] cors_origins`` says, so no other site's script reads them.
PRIVATE_PREFIX = "/console/"

bp = Blueprint("console", __name__)


@functools.cache
def asset(name: str) -> bytes:
    """A file of the console, read once (they ship in the package and never change while it runs)."""
    return (FOLDER / name).read_bytes()


def _file(name: str, mimetype: str) -> Response:
    response = Response(asset(name), mimetype=mimetype)
    response.headers["Cache-Control"] = "no-cache"  # revalidate: an upgrade brings new files
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def index() -> Response:
    """The console page (``GET /``, in place of flask-openapi3's index of the docs)."""
    response = _file("index.html", "text/html")
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def _asset_view(name: str, mimetype: str) -> Any:
    return lambda: _file(name, mimetype)


for _path, (_name, _type) in ASSETS.items():
    bp.add_url_rule(_path, f"asset_{_name.replace('.', '_')}", _asset_view(_name, _type), methods=["GET"])


@bp.get("/console/status")
def status() -> Any:
    """What the device is doing now: back-end and why, models and engines, system, MQTT, pipelines, log."""
    return jsonify(common.services().console_status())


@bp.get("/console/config")
def config() -> Any:
    """The effective settings with secrets masked, as ``edge-agent config show`` prints them, and where each
    value came from (``sources``, by dotted key)."""
    view = common.services().settings_view()
    settings = view["settings"]
    return jsonify({"config_file": settings.get("config_file"), "settings": settings, "sources": view["sources"]})


_LINE = re.compile(r"\bline (\d+)")


@bp.post("/console/config/check")
def config_check() -> Any:
    """Validate the body (a TOML configuration, as text) the way ``edge-agent config check`` does, without
    the environment and without applying it: ``{"ok": true}`` or ``{"ok": false, "error", "line"}``."""
    declared = request.content_length
    if declared is not None and declared > MAX_CONFIG_BYTES:  # refused unread
        raise PayloadTooLarge(f"The configuration is {declared} bytes; the console checks at most {MAX_CONFIG_BYTES}.")
    raw = request.stream.read(MAX_CONFIG_BYTES + 1)  # a body without a length (chunked) is read up to the limit
    if len(raw) > MAX_CONFIG_BYTES:
        raise PayloadTooLarge(f"The configuration is over {MAX_CONFIG_BYTES} bytes; the console checks at most that.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"The configuration is not UTF-8 text (byte {exc.start}).") from None
    with tempfile.TemporaryDirectory(prefix="edge-agent-check.") as folder:
        path = Path(folder) / "config.toml"
        path.write_text(text, encoding="utf-8")
        try:
            load_settings(path, environ={}, check_files=False)  # no answer tells which files exist
        except EdgeAgentError as exc:
            message = exc.message.replace(str(path), PASTED)
            found = _LINE.search(message)
            return jsonify({"ok": False, "error": message, "line": int(found.group(1)) if found else None})
    return jsonify({"ok": True, "error": None, "line": None})
