"""``FakeRoboflow``: Roboflow's model-weights API on a loopback port, for tests.

    with FakeRoboflow({"shapes/1": demo_package(DEMO / "shapes" / "1")}, api_key="good-key") as cloud:
        pull_package("shapes/1", "good-key", folder, api_url=cloud.api_url, device_id="t", policy=...)
        assert cloud.requests["weights"] == 1

Routes, as Roboflow's API answers them (``api_key`` checked on the first four; a wrong one is a 401
with Roboflow's body, an unknown workspace, project or version a 404 with Roboflow's body)::

    GET /?api_key=..                               workspace    {"workspace": ws}
    GET /<ws>/<project>?api_key=..                 project      {"project": {"type": task, ...}}
    GET /<ws>/<project>/<version>?api_key=..       version      {"version": {"modelType": ..., ...}}
    GET /ort/<project>/<version>?api_key=..&..     ort          {"ort": {"model": url, "environment": url, ...}}
    GET /files/<project>/<version>/weights.onnx    weights      the ONNX bytes (like a signed storage URL: no key)
    GET /files/<project>/<version>/environment.json  environment

A package (``demo_package`` makes one from a demo model) is a dict: ``task``, ``model_type`` (None:
no modelType), ``onnx`` (bytes), ``environment`` (dict, or bytes served as they are), ``classes``,
``colors``, ``keypoints_metadata`` (None: left out) and optionally ``ort``: fields merged into the
``ort`` answer, a None value removing one. ``cloud.packages`` may be changed while it runs (serve a
bad ONNX: ``cloud.packages["p/1"] = {**pkg, "onnx": b"junk"}``).

Failure switches (attributes, may be changed while it runs): ``fail_mode`` is None, "hang" (read
the request, answer nothing until ``hang_s`` or shutdown), "truncate" (announce the full
Content-Length, send half, close), "drop" (close without answering), "slow" (send the body
``slow_bytes`` at a time, ``slow_delay_s`` apart), "unsized" (no Content-Length: the body ends when
the connection closes) or an HTTP status as text ("500", "403", "429": that status with a
Roboflow-style error body). ``fail_on`` limits it to some routes (names above; None: all) and
``fail_times`` to the first N matching requests (None: all of them).
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

ROUTES = ("workspace", "project", "version", "ort", "weights", "environment")
BAD_KEY = "This API key does not exist (or has been revoked)."
_PAD_FORMATS = {0: "Fit (black edges) in", 255: "Fit (white edges) in", 114: "Fit (grey edges) in"}
_CONTRAST = {"contrast-stretching": "Contrast Stretching", "histogram-equalization": "Histogram Equalization",
             "adaptive-equalization": "Adaptive Equalization"}
_MODEL_TYPES = {  # output layout -> task -> what Roboflow's version.modelType would say
    "yolov8": {"object-detection": "yolov8n", "instance-segmentation": "yolov8n-seg",
               "keypoint-detection": "yolov8n-pose"},
    "probabilities": {"classification": "yolov8n-cls"},
    "logits": {"classification": "yolov8n-cls"},
    "yolov5": {"object-detection": "yolov5v6n", "instance-segmentation": "yolov5n-seg"},
    "end2end": {"object-detection": "yolov10n"},
}
_PALETTE = ("#C7FC00", "#FE0056", "#0E7AFE", "#FFDD00", "#00FFCE", "#FF8000", "#8622FF", "#FE0000")


def _preprocessing(manifest: dict[str, Any]) -> dict[str, Any]:
    pre, size = manifest["preprocess"], manifest["input"]
    if pre["resize"] == "letterbox":
        fmt = _PAD_FORMATS.get(pre["pad_value"], "Fit (black edges) in")
    elif pre["resize"] == "stretch":
        fmt = "Stretch to"
    else:  # centre crop has no Roboflow equivalent; Roboflow treats this one as a black-edge letterbox
        fmt = "Fill (with center crop) in"
    steps: dict[str, Any] = {}
    if pre["auto_orient"]:
        steps["auto-orient"] = {"enabled": True}
    if pre.get("static_crop"):
        steps["static-crop"] = {"enabled": True, **pre["static_crop"]}
    if pre.get("contrast"):
        steps["contrast"] = {"enabled": True, "type": _CONTRAST[pre["contrast"]]}
    if pre.get("grayscale"):
        steps["grayscale"] = {"enabled": True}
    steps["resize"] = {"enabled": True, "width": str(size["width"]), "height": str(size["height"]), "format": fmt}
    return steps


def _keypoints_metadata(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    k = manifest["output"]["keypoints"]
    entries = []
    for cid, cls in enumerate(manifest["class_names"]):
        names = manifest["keypoint_names"].get(str(cid), [str(i) for i in range(k)])
        edges = manifest.get("skeleton", {}).get(str(cid), [])
        entries.append({"object_class_id": cid, "object_class": cls,
                        "keypoints": {str(i): n for i, n in enumerate(names)},
                        "edges": [{"from": a, "to": b} for a, b in edges]})
    return entries


def demo_package(project_dir: Path) -> dict[str, Any]:
    """What Roboflow would serve for a model of ours (``<store>/<project>/<version>``: model.json + model.onnx).

    Detection, segmentation and keypoint models come back identical once imported. Classification
    cannot: our demo classifier uses a centre crop and no normalisation, which Roboflow's format
    cannot say (its classifiers normalise by 0.5 / ImageNet statistics).
    """
    manifest = json.loads((Path(project_dir) / "model.json").read_text(encoding="utf-8"))
    classes = list(manifest["class_names"])
    colors = dict(manifest.get("colors") or {}) or {c: _PALETTE[i % len(_PALETTE)] for i, c in enumerate(classes)}
    task = manifest["task"]
    environment = {
        "PREPROCESSING": json.dumps(_preprocessing(manifest)),
        "CLASS_MAP": {str(i): c for i, c in enumerate(classes)},
        "COLORS": colors,
        "MULTICLASS": bool(manifest.get("multilabel", False)),
    }
    layout = manifest["output"]["layout"]
    return {
        "task": task,
        "model_type": _MODEL_TYPES.get(layout, {}).get(task, "ort"),
        "onnx": (Path(project_dir) / manifest["weights"]["file"]).read_bytes(),
        "environment": environment,
        "classes": classes,
        "colors": colors,
        "keypoints_metadata": _keypoints_metadata(manifest) if task == "keypoint-detection" else None,
    }


def js(status: int, doc: Any) -> tuple[int, bytes, str]:
    return status, json.dumps(doc).encode(), "application/json"


def _not_found(object_id: str) -> dict[str, Any]:
    return {"error": {"message": f"Unsupported get request. Object with ID '{object_id}' does not exist or "
                                 "cannot be loaded due to missing permissions.",
                      "type": "GraphMethodException", "hint": "You can see your available workspaces, projects "
                      "and versions by issuing a GET request to /"}}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # quiet; request paths hold keys

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        try:
            self.server.fake._handle(self)
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def send(self, status: int, body: bytes, content_type: str = "application/json", length: bool = True) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if length:
            self.send_header("Content-Length", str(len(body)))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    fake: FakeRoboflow

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # clients that time out and hang up are expected
            super().handle_error(request, client_address)


class FakeRoboflow:
    """A threaded ``http.server`` on 127.0.0.1 (a free port) that plays Roboflow's cloud; a context manager."""

    def __init__(self, packages: dict[str, dict[str, Any]] | None = None, *, api_key: str = "good-key",
                 workspace: str = "fake-workspace", fail_mode: str | None = None,
                 fail_on: set[str] | None = None, fail_times: int | None = None, hang_s: float = 30.0,
                 slow_bytes: int = 16 * 1024, slow_delay_s: float = 0.1) -> None:
        self.packages: dict[str, dict[str, Any]] = dict(packages or {})
        self.api_key = api_key
        self.workspace = workspace
        self.fail_mode = fail_mode
        self.fail_on = fail_on
        self.fail_times = fail_times
        self.hang_s = hang_s
        self.slow_bytes = slow_bytes
        self.slow_delay_s = slow_delay_s
        self.requests: Counter[str] = Counter()  # per route name, failed ones included
        self.failures = 0
        self.paths: list[str] = []  # raw request paths, query (and key) included
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- life -----------------------------------------------------------------------------------

    def start(self) -> FakeRoboflow:
        self._stop.clear()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-roboflow", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # hanging and slow handlers return at once
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeRoboflow:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def api_url(self) -> str:
        assert self._server is not None, "FakeRoboflow is not running"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def file_url(self, model_id: str, name: str = "weights.onnx") -> str:
        return f"{self.api_url}/files/{model_id}/{name}"

    @staticmethod
    def closed_url() -> str:
        """An http URL on a loopback port nothing listens on (connections are refused)."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return f"http://127.0.0.1:{port}"

    # -- answers --------------------------------------------------------------------------------

    def _route(self, segments: list[str]) -> str | None:
        if not segments:
            return "workspace"
        if segments[0] == "files" and len(segments) == 4:
            return {"weights.onnx": "weights", "environment.json": "environment"}.get(segments[3])
        if segments[0] == "ort" and len(segments) == 3:
            return "ort"
        return {2: "project", 3: "version"}.get(len(segments))

    def _should_fail(self, route: str) -> str | None:
        with self._lock:
            mode = self.fail_mode
            if mode is None or (self.fail_on is not None and route not in self.fail_on):
                return None
            if self.fail_times is not None and self.failures >= self.fail_times:
                return None
            self.failures += 1
            return mode

    def _handle(self, h: _Handler) -> None:
        parts = urlsplit(h.path)
        segments = [unquote(s) for s in parts.path.split("/") if s]
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        route = self._route(segments)
        with self._lock:
            self.paths.append(h.path)
            self.requests[route or "unknown"] += 1
        if route is None:
            h.send(404, json.dumps(_not_found(parts.path)).encode())
            return
        mode = self._should_fail(route)
        status, body, ctype = self._answer(route, segments, query)
        if mode is None:
            h.send(status, body, ctype)
        else:
            self._fail(h, mode, body, ctype)

    def _answer(self, route: str, segments: list[str], query: dict[str, str]) -> tuple[int, bytes, str]:
        if route in ("weights", "environment"):
            pkg = self.packages.get(f"{segments[1]}/{segments[2]}")
            if pkg is None:
                return js(404, {"error": "Not Found"})
            if route == "weights":
                return 200, pkg["onnx"], "application/octet-stream"
            env = pkg["environment"]
            return 200, env if isinstance(env, bytes) else json.dumps(env).encode(), "application/json"
        if query.get("api_key") != self.api_key:
            return js(401, {"error": {"message": BAD_KEY, "status": 401, "type": "OAuthException",
                                      "hint": "You may retrieve your API key via the Roboflow Dashboard."}})
        if route == "workspace":
            return js(200, {"welcome": "Welcome to the Roboflow API.", "workspace": self.workspace})
        if route == "ort":
            return self._ort(segments[1], segments[2])
        if segments[0] != self.workspace:
            return js(404, _not_found("/".join(segments)))
        project = segments[1]
        pkg = next((p for mid, p in self.packages.items() if mid.split("/")[0] == project), None)
        if pkg is None:
            return js(404, _not_found(f"{self.workspace}/{project}"))
        doc: dict[str, Any] = {"workspace": {"name": self.workspace, "url": self.workspace},
                               "project": {"id": f"{self.workspace}/{project}", "name": project,
                                           "type": pkg["task"], "classes": {c: 1 for c in pkg["classes"] or []}}}
        if route == "project":
            return js(200, doc)
        vpkg = self.packages.get(f"{project}/{segments[2]}")
        if vpkg is None:
            return js(404, _not_found(f"{self.workspace}/{project}/{segments[2]}"))
        version: dict[str, Any] = {"id": f"{self.workspace}/{project}/{segments[2]}", "name": project}
        if vpkg.get("model_type") is not None:
            version["modelType"] = vpkg["model_type"]
        return js(200, {**doc, "version": version})

    def _ort(self, project: str, version: str) -> tuple[int, bytes, str]:
        pkg = self.packages.get(f"{project}/{version}")
        if pkg is None:
            return js(404, _not_found(f"{project}/{version}"))
        ort: dict[str, Any] = {"name": project, "type": pkg["task"],
                               "model": self.file_url(f"{quote(project)}/{quote(version)}"),
                               "environment": self.file_url(f"{quote(project)}/{quote(version)}", "environment.json"),
                               "classes": pkg.get("classes"), "colors": pkg.get("colors"),
                               "keypoints_metadata": pkg.get("keypoints_metadata")}
        ort.update(pkg.get("ort", {}))
        return js(200, {"ort": {k: v for k, v in ort.items() if v is not None}})

    def _fail(self, h: _Handler, mode: str, body: bytes, ctype: str) -> None:
        if mode.isdigit():
            doc = {"error": {"message": f"fake failure {mode}", "status": int(mode)}}
            h.send(int(mode), json.dumps(doc).encode())
            return
        if mode in ("hang", "drop"):
            if mode == "hang":
                self._stop.wait(self.hang_s)
            h.close_connection = True
            return
        if mode == "unsized":
            h.send(200, body, ctype, length=False)
            return
        h.send_response(200)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if mode == "truncate":
            h.wfile.write(body[:len(body) // 2])
            h.close_connection = True
            return
        if mode == "slow":
            for start in range(0, len(body), self.slow_bytes):
                if self._stop.wait(self.slow_delay_s):
                    break
                h.wfile.write(body[start:start + self.slow_bytes])
                h.wfile.flush()
            h.close_connection = True
            return
        raise ValueError(f"unknown fail_mode {mode!r}")

