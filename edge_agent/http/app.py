"""``create_app(services)``: the Flask app (flask-openapi3) with its blueprints, the one error handler,
request limits, the optional API key, CORS, response headers (docs/http-api.md §1.5) and request metrics.

The app receives an ``HttpServices`` (what the routes use of the daemon), never the runtime. Every
error that leaves a route is answered here, in ``_error``: the routes raise members of the
``edge_agent.errors`` tree and never format an error body themselves.

OpenAPI is generated from the pydantic declarations of the routes and served at ``/openapi.json``;
Swagger UI at ``/docs`` and ReDoc at ``/redoc`` use the UI files shipped inside the
flask-openapi3-swagger / -redoc packages, so the docs work with no network.
"""

from __future__ import annotations

import base64
import functools
import hmac
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydantic_core
from flask import Flask, Request, Response, jsonify, redirect, render_template_string, request
from flask.json.provider import DefaultJSONProvider
from flask.sessions import NullSession, SessionInterface, SessionMixin
from flask.typing import ResponseReturnValue
from flask_openapi3 import Info, OpenAPI
from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestEntityTooLarge
from werkzeug.routing import MapAdapter

from edge_agent.errors import (
    EdgeAgentError,
    EngineFailure,
    ModelLoadFailed,
    ModelNotFound,
    NotReady,
    Overloaded,
)
from edge_agent.http import admin, common, console, models, pipelines, v1, v2
from edge_agent.http.access_log import ACCESS_LOG
from edge_agent.http.head import BODY_READ_WHOLE
from edge_agent.http.services import HttpServices

log = logging.getLogger(__name__)

# docs/http-api.md §1.3: routes that never need the API key.
# The console's page and files (``/``, ``/console.js``, ``/console.css``) hold no data; its calls need the key.
OPEN_PATHS = ("/", "/console.js", "/console.css", "/docs", "/docs/", "/redoc", "/swagger", "/openapi.json", "/info",
              "/healthz", "/readiness", "/metrics")
OPEN_PREFIXES = ("/swagger/", "/redoc/")

# docs/http-api.md §5: the public message of each kind of server-side failure (our detail goes in "reason").
INTERNAL_ERROR = "Internal error."
PUBLIC_MESSAGES: dict[type[EdgeAgentError], str] = {
    ModelNotFound: "Requested Roboflow resource not found. Make sure that workspace, project or model you "
                   "referred in request exists.",
    ModelLoadFailed: "Model package is broken.",
    EngineFailure: INTERNAL_ERROR,
    NotReady: "Model is temporarily not ready - retry request.",
    Overloaded: "Model is temporarily not ready - retry request.",
}

# Roboflow routes edge-agent does not implement (docs/http-api.md §6.2), each with the family of models or
# feature it belongs to: a clear 501 instead of the legacy catch-all (or /infer/<task>'s 404). Every route of
# inference-sdk 1.8.3's client that edge-agent does not serve is here.
_WORKFLOWS = "Workflows"
UNSUPPORTED = {
    "/infer/workflows": _WORKFLOWS, "/infer/workflows/<path:rest>": _WORKFLOWS, "/workflows/run": _WORKFLOWS,
    "/workflows/<path:rest>": _WORKFLOWS, "/<workspace>/workflows/<path:rest>": _WORKFLOWS,
    "/infer/lmm": "large multimodal models (LMM)", "/infer/lmm/<path:rest>": "large multimodal models (LMM)",
    "/infer/embeddings": "embedding models", "/infer/action_recognition": "action recognition models",
    "/infer/depth-estimation": "depth estimation models",
    "/infer/depth-estimation/<path:rest>": "depth estimation models",
    "/infer/semantic_segmentation": "semantic segmentation models",
    "/clip/<path:rest>": "CLIP", "/sam/<path:rest>": "Segment Anything (SAM)",
    "/sam2/<path:rest>": "Segment Anything 2 (SAM2)", "/sam3/<path:rest>": "Segment Anything 3 (SAM3)",
    "/sam3_3d/<path:rest>": "SAM3 3D", "/yolo_world/<path:rest>": "YOLO-World",
    "/perception_encoder/<path:rest>": "Perception Encoder", "/doctr/<path:rest>": "DocTR (OCR)",
    "/gaze/<path:rest>": "gaze detection", "/cogvlm/<path:rest>": "CogVLM",
    "/initialise_webrtc_worker": "WebRTC streaming", "/webrtc/<path:rest>": "WebRTC streaming",
}


# Swagger UI's validator badge would send the device's address to validator.swagger.io.
SWAGGER_CONFIG = {"validatorUrl": None}
# The docs pages load nothing from outside the device (the bundled ReDoc links a logo on a CDN).
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'")
DOCS_PAGES = ("/docs", "/redoc", "/swagger")  # "/" is the console, with its own CSP
# The ReDoc page of flask-openapi3-redoc, less its commented-out link to a Google Fonts stylesheet.
REDOC_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
    <title>ReDoc</title>
    <link rel="shortcut icon" href="redoc/images/redoc.svg">
    <meta charset="utf-8"/>
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <style>body { margin: 0; padding: 0; }</style>
</head>
<body>
  <div id="redoc"></div>
  <script src="redoc/js/redoc.standalone.js"></script>
  <script>
    const redoc_config = JSON.parse(`{{ redoc_config|default('{}')|tojson }}`);
    Redoc.init("{{ doc_url }}", redoc_config, document.getElementById("redoc"))
  </script>
</body>
</html>
"""
REDOC_CDN_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"


@functools.cache
def redoc_script() -> bytes:
    """The bundled ReDoc script with its sidebar logo (the one thing it loads from a CDN) made a data:
    URI of the package's own logo, so the page asks nothing of the internet."""
    import flask_openapi3_redoc  # lazy: only /redoc needs it

    folder = Path(flask_openapi3_redoc.__file__).parent / "templates" / "redoc"
    logo = base64.b64encode((folder / "images" / "redoc.svg").read_bytes())
    return (folder / "js" / "redoc.standalone.js").read_bytes().replace(
        REDOC_CDN_LOGO, b"data:image/svg+xml;base64," + logo)


def _to_page(page: str) -> Callable[[], ResponseReturnValue]:
    """``/docs/`` -> ``/docs``: a relative redirect, right behind a proxy that adds a path prefix too."""
    return lambda: redirect(f"../{page}", 308)


class FrontRequest(Request):
    """A request whose body the front already read whole within the route's cap (``BODY_READ_WHOLE`` in the
    environ) is read as it is: no app-wide ``MAX_CONTENT_LENGTH`` over it, which would wrap the body in
    werkzeug's ``LimitedStream`` (read in Python, 64 KiB at a time: 25 us for a 33 KB JSON body). A cap
    a route sets on its request (``PUT /models``) still applies; under any other server, so does the app's."""

    @property
    def max_content_length(self) -> int | None:
        if self._max_content_length is None and self.environ.get(BODY_READ_WHOLE):
            return None
        return super().max_content_length

    @max_content_length.setter
    def max_content_length(self, value: int | None) -> None:
        self._max_content_length = value


class CompactJSON(DefaultJSONProvider):
    """JSON answers as compact as Roboflow's, keys in the order the code writes them; request bodies parsed
    by pydantic-core's parser (jiter): 3.5 us for a 33 KB base64 body where the standard library takes
    27 us. What it refuses goes to the standard library, which answers as before (UTF-16 bodies, a UTF-8
    BOM, lone surrogates, nesting past 200 levels, and every error)."""

    sort_keys = False
    compact = True

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        if not kwargs:
            try:
                return pydantic_core.from_json(s)
            except ValueError:
                pass
        return super().loads(s, **kwargs)


class NoSessions(SessionInterface):
    """The app keeps no sessions (no secret key, no cookie): every request gets the same ``NullSession``,
    which refuses to be written to as Flask's own does, instead of one made for it."""

    null = NullSession()

    def make_null_session(self, app: Flask) -> NullSession:
        return self.null

    def open_session(self, app: Flask, request: Request) -> SessionMixin | None:
        return self.null

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        pass  # never called: a null session is not saved


class EdgeAgentApp(OpenAPI):
    """The app (flask-openapi3's ``OpenAPI``) with less done again for every request (6-8 us of the 200 us
    a v2 request's Python takes in a warm loop, more in the server):

    - a request's URL adapter is bound in one step, as Flask binds it (the same host, script name, method,
      path and query; no ``SERVER_NAME``, subdomain or host matching, and none is configured), but the
      host is read once (Flask reads it, then ``bind_to_environ`` again) and the scheme stays the
      request's: ``bind_to_environ`` makes it ``ws`` for a request with ``Connection: Upgrade`` and
      ``Upgrade: websocket``, where no route matches, and answered such a request with 400 on every
      route. The front serves no upgrade: it answers the request as plain HTTP, then closes the
      connection (edge_agent/http/front.py);
    - whether a view or hook is a coroutine function (``ensure_sync``, three times a request) is
      looked at once per function;
    - no session object per request (``NoSessions``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.session_interface = NoSessions()
        self._sync: dict[Callable[..., Any], Callable[..., Any]] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        sync = self._sync.get(func)
        if sync is None:
            sync = self._sync[func] = super().ensure_sync(func)
        return sync

    def create_url_adapter(self, request: Request | None) -> MapAdapter | None:
        url_map = self.url_map
        if (request is None or self.config["SERVER_NAME"] is not None or self.config["TRUSTED_HOSTS"] is not None
                or url_map.host_matching or self.subdomain_matching):
            return super().create_url_adapter(request)
        env = request.environ
        return url_map.bind(request.host, _wsgi_text(env.get("SCRIPT_NAME")), url_map.default_subdomain or "",
                            env["wsgi.url_scheme"], env["REQUEST_METHOD"], _wsgi_text(env.get("PATH_INFO")),
                            _wsgi_text(env.get("QUERY_STRING")))


def _wsgi_text(value: str | None) -> str | None:
    """A WSGI environ string (bytes as latin-1) as text, as werkzeug decodes it."""
    return None if value is None else value.encode("latin-1").decode(errors="replace")


def _internal(exc: EdgeAgentError) -> bool:
    """A member of the tree with no code of its own (the root itself, the engines' ``EngineError``
    branch) is a failure inside the daemon: its text may name local paths and is only logged."""
    return exc.code == EdgeAgentError.code


def _error_status(exc: EdgeAgentError) -> int:
    return 500 if _internal(exc) else exc.status


# An absolute path (two or more segments) that does not continue a word, a URL or another path; device
# nodes (/dev/video0, a pipeline's camera) are names the caller gave, and /infer/... names a route: both stay.
_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~-])/(?!(?:dev|infer)/)(?:[^\s'\"/:,;()\[\]<>]+/)+([^\s'\"/:,;()\[\]<>]*)")


def without_paths(text: str) -> str:
    """``text`` with each absolute server path replaced by its base name (issue 18 item 6: a public error
    body names the file, never where the device keeps it)."""
    return _ABSOLUTE_PATH.sub(lambda m: m.group(1) or "(a folder on the device)", text)


def _error_body(exc: EdgeAgentError) -> dict[str, Any]:
    if _internal(exc):
        return {"message": INTERNAL_ERROR, "error": exc.code}
    public = without_paths(exc.public)
    for cls in type(exc).__mro__:
        if cls in PUBLIC_MESSAGES:
            return {"message": PUBLIC_MESSAGES[cls], "reason": public, "error": exc.code}
    return {"message": public, "error": exc.code}


def _docs_page() -> str:
    from flask_openapi3_swagger.templates import swagger_html_string  # lazy: only /docs needs the template

    # The template links its assets relative to the page (swagger/...), which /docs serves from /swagger/.
    return render_template_string(swagger_html_string, doc_url="openapi.json", swagger_config=SWAGGER_CONFIG,
                                  oauth_config=None)


def create_app(services: HttpServices) -> OpenAPI:
    server = services.server
    api_key = server.api_key.get_secret_value() if server.api_key is not None else ""
    app = EdgeAgentApp(
        "edge_agent",
        info=Info(title="edge-agent", version=services.version,
                  description="Roboflow-compatible inference API of an edge-agent device (port 9001)."),
        doc_prefix="",
        doc_url="/openapi.json",
        security_schemes={},
        validation_error_status=422,
        validation_error_callback=common.validation_error,
    )
    app.config["MAX_CONTENT_LENGTH"] = server.max_body_bytes  # under the front: its per-route caps (front.py)
    app.request_class = FrontRequest
    app.config["SWAGGER_CONFIG"] = SWAGGER_CONFIG
    app.config["REDOC_HTML_STRING"] = REDOC_PAGE
    app.json = CompactJSON(app)
    app.extensions[common.SERVICES_KEY] = services
    app.register_api(admin.bp)
    app.register_api(models.bp)
    app.register_api(v2.bp)
    app.register_api(v1.bp)
    app.register_api(pipelines.bp)
    app.register_blueprint(console.bp)
    app.view_functions["openapi.openapi"] = console.index  # "/": the console, not flask-openapi3's list of UIs

    @app.get("/docs", doc_ui=False)
    def docs() -> Any:
        return _docs_page()

    @app.get("/redoc/js/redoc.standalone.js", doc_ui=False)
    def redoc_js() -> Any:
        return Response(redoc_script(), mimetype="text/javascript")

    for page in ("docs", "redoc", "swagger"):
        app.add_url_rule(f"/{page}/", f"{page}_slash", _to_page(page), methods=["GET"])

    app.add_url_rule("/infer/<task>", "unknown_task", _unknown_task, methods=["POST"])
    for i, (rule, family) in enumerate(UNSUPPORTED.items()):
        app.add_url_rule(rule, f"unsupported_{i}", _unsupported, methods=["GET", "POST"],
                         defaults={"family": family})

    @app.before_request
    def _start() -> ResponseReturnValue | None:
        request.environ[common.STATE_KEY] = common.RequestState()
        if api_key and not _open(request.path) and request.method != "OPTIONS":
            if not _key_ok(api_key):
                return jsonify({"status": 401, "message": "Unauthorized api_key"}), 401
        return None

    @app.after_request
    def _finish(response: Response) -> Response:
        state = common.request_state()
        elapsed = time.perf_counter() - state.started
        model_id = state.model_id
        h = response.headers
        processing = state.processing_time if state.processing_time is not None else elapsed
        h["X-Processing-Time"] = f"{processing:.6f}"
        if model_id:
            h["X-Model-Id"] = model_id
            h["X-Model-Cold-Start"] = "true" if state.load_time is not None else "false"
            h["X-Model-Cold-Start-Count"] = str(services.models.cold_starts)
            if state.load_time is not None:
                h["X-Model-Load-Time"] = f"{state.load_time:.6f}"
        path = request.path
        if server.cors_origins and not path.startswith(console.PRIVATE_PREFIX):
            h["Access-Control-Allow-Origin"] = server.cors_origins
            if request.method == "OPTIONS":  # a browser's preflight: the only answer these two matter in
                h["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
                h["Access-Control-Allow-Methods"] = "GET, POST, PUT, DELETE, OPTIONS"
        if path in DOCS_PAGES:
            h["Content-Security-Policy"] = DOCS_CSP
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        # One access-log line per request: method, path (never the query string, which may carry an api_key),
        # status, milliseconds, client; off with ``[server] access_log = false``. Queued here, before the
        # answer goes out (a deque append; its thread writes it): a request the client sends after this
        # answer is logged after it.
        if server.access_log and ACCESS_LOG.enabled():
            ACCESS_LOG.add(request.method, loggable(path), response.status_code, elapsed, request.remote_addr or "-")
        record = functools.partial(services.metrics.observe_request, rule, model_id, response.status_code, elapsed)
        if response.direct_passthrough:  # werkzeug hands such a body over as it is and never closes the response
            record()  # (the MJPEG preview, static files)
        else:  # once the answer is sent: WSGI's close of the body, which the front calls after the write
            response.call_on_close(record)
        return response

    @app.errorhandler(Exception)
    def _error(exc: Exception) -> ResponseReturnValue:
        if isinstance(exc, EdgeAgentError):
            status = _error_status(exc)
            if status >= 500:
                log.warning("%s %s: %s", request.method, loggable(request.path), exc, exc_info=status == 500)
            elif exc.message != exc.public or _ABSOLUTE_PATH.search(exc.message):  # the detail the body leaves out
                log.info("%s %s (%d): %s", request.method, loggable(request.path), status, exc.message)
            response = jsonify(_error_body(exc))
            response.status_code = status
            if isinstance(exc, (Overloaded, NotReady)):
                response.headers["Retry-After"] = "1"
            return response
        if isinstance(exc, RecursionError):  # json.loads of deeply nested input
            return jsonify({"message": "Request body could not be parsed: it is nested too deeply."}), 400
        if isinstance(exc, RequestEntityTooLarge):
            return jsonify({"message": f"Request body too large. Limit: {server.max_body_bytes} bytes."}), 413
        if isinstance(exc, HTTPException):
            if isinstance(exc, MethodNotAllowed):
                return jsonify({"detail": exc.name}), 405, {"Allow": ", ".join(sorted(exc.valid_methods or ()))}
            if exc.code == 404:
                return jsonify({"detail": exc.name}), 404
            return jsonify({"message": exc.description or exc.name}), exc.code or 400
        log.exception("%s %s failed", request.method, loggable(request.path))
        return jsonify({"message": INTERNAL_ERROR}), 500

    return app


def loggable(text: str) -> str:
    """``text`` with control characters escaped (``\\n``, ``\\x1b``): a percent-decoded path such as
    ``/a%0a127.0.0.1 GET /admin`` cannot forge a line of the log."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _unknown_task(task: str) -> ResponseReturnValue:
    known = ", ".join(f"/infer/{t}" for t in common.ROUTE_TASKS)
    return jsonify({"message": f"Unknown task '{task}'. Routes: {known}."}), 404


def _unsupported(family: str, **_: str) -> ResponseReturnValue:
    served = ", ".join(f"/infer/{t}" for t in common.ROUTE_TASKS)
    return jsonify({"message": f"Not supported by edge-agent: {request.path}",
                    "reason": f"{family}: edge-agent serves Roboflow's trained models only ({served} and "
                              "/{project}/{version})"}), 501


def _open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def _key_ok(expected: str) -> bool:
    given = common.given_keys()
    if not given:
        return False
    return hmac.compare_digest(given[0].encode(), expected.encode())
