"""Pulling a model from Roboflow's API into a Roboflow-layout folder (docs/http-api.md §10.1), as Roboflow's own
inference server does for its "ort" packages.

The requests, in order (every one carries ``api_key``)::

    GET <api>/?nocache=true                                       -> {"workspace": ws}
    GET <api>/<ws>/<project>?nocache=true                         -> {"project": {"type": task}}
    GET <api>/<ws>/<project>/<version>?nocache=true               -> {"version": {"modelType": ...}}
    GET <api>/ort/<project>/<version>?nocache=true&device=..&dynamic=true
                              -> {"ort": {"model": url, "environment": url, "classes", "colors", ...}}
    GET the model URL (weights.onnx), GET the environment URL (environment.json)

Owns those requests and the folder it writes (model_type.json, weights.onnx, environment.json,
class_names.txt, keypoints_metadata.json). It does not import the folder (``importers``) nor install
it (``store``). The key goes into query strings only: never into a file, a log line or a message.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from edge_agent import atomic_files
from edge_agent.errors import DownloadFailed, ModelNotFound, UnsupportedModel
from edge_agent.provisioning.download import DownloadPolicy, Progress, download, fetch_json
from edge_agent.store.importers import ROBOFLOW_TASKS
from edge_agent.store.manifest import parse_model_id

log = logging.getLogger(__name__)

MAX_ENVIRONMENT_BYTES = 16 * 1024 * 1024


def _url(api_url: str, segments: tuple[str, ...], query: dict[str, str]) -> str:
    path = "/".join(quote(s, safe="") for s in segments)
    return f"{api_url.rstrip('/')}/{path}?{urlencode(query)}"


def _field(doc: Any, path: str) -> Any:
    """``doc["a"]["b"]`` for path "a.b"; DownloadFailed naming the field when it is not there."""
    value = doc
    for name in path.split("."):
        if not isinstance(value, dict) or value.get(name) in (None, ""):
            raise DownloadFailed(f"Roboflow's API answered without {path}")
        value = value[name]
    return value


def _text(doc: Any, path: str) -> str:
    value = _field(doc, path)
    if not isinstance(value, str):
        raise DownloadFailed(f"Roboflow's API answered with {path} of type {type(value).__name__}, not a string")
    return value


def _describe(model_id: str, api_key: str, api_url: str, device_id: str,
              policy: DownloadPolicy) -> tuple[str, str, dict[str, Any]]:
    """The project's task, the version's architecture and the ``ort`` description of the package."""
    project, version = parse_model_id(model_id)
    key = {"api_key": api_key}
    try:
        workspace = _text(fetch_json(_url(api_url, (), {**key, "nocache": "true"}), policy), "workspace")
        project_doc = fetch_json(_url(api_url, (workspace, project), {**key, "nocache": "true"}), policy)
        version_doc = fetch_json(_url(api_url, (workspace, project, version), {**key, "nocache": "true"}), policy)
        ort_doc = fetch_json(_url(api_url, ("ort", project, version),
                                  {"nocache": "true", "device": device_id, "dynamic": "true", **key}), policy)
    except ModelNotFound as exc:
        raise ModelNotFound(f"Roboflow has no model {model_id!r} that this API key can read ({exc.message})",
                            public=f"Roboflow has no model {model_id!r} that this API key can read "
                                   f"({exc.public})") from None
    task = _text(project_doc, "project.type")
    if task not in ROBOFLOW_TASKS:
        raise UnsupportedModel(f"Roboflow project {project!r} is a {task!r} project; edge-agent serves "
                               f"{', '.join(ROBOFLOW_TASKS)} models")
    version_meta = _field(version_doc, "version")
    model_type = (version_meta.get("modelType") if isinstance(version_meta, dict) else None) or "ort"
    if not isinstance(_field(ort_doc, "ort"), dict):
        raise DownloadFailed("Roboflow's API answered with ort that is not an object")
    return task, str(model_type), ort_doc


def _environment(path: Path, ort: dict[str, Any]) -> dict[str, Any]:
    """Parse the downloaded environment.json and complete it with the ``ort`` answer's colours."""
    try:
        env = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise DownloadFailed("environment.json from Roboflow is not valid JSON") from None
    if not isinstance(env, dict):
        raise DownloadFailed("environment.json from Roboflow is not a JSON object")
    if "PREPROCESSING" not in env:
        raise DownloadFailed("environment.json from Roboflow has no PREPROCESSING")
    if isinstance(ort.get("colors"), dict):
        env["COLORS"] = ort["colors"]  # as Roboflow's server does: the API's colours win
        atomic_files.write_text(path, json.dumps(env, indent=2) + "\n")
    return env


def _class_names(env: dict[str, Any], ort: dict[str, Any]) -> list[str]:
    """From CLASS_MAP (indexed by class id, what Roboflow's server reads), else from ``ort.classes``."""
    cmap = env.get("CLASS_MAP")
    names: Any = ort.get("classes")
    if isinstance(cmap, dict) and cmap:
        try:
            names = [str(cmap[str(i)]) for i in range(len(cmap))]
        except KeyError:
            raise DownloadFailed("environment.json from Roboflow has a CLASS_MAP not numbered "
                                 f"0..{len(cmap) - 1}") from None
    elif names is None:
        raise DownloadFailed("Roboflow's API answered without ort.classes, and environment.json has no CLASS_MAP")
    if not isinstance(names, list) or not names or \
            not all(isinstance(c, str) and c.strip() and "\n" not in c for c in names):
        raise DownloadFailed("Roboflow's API answered with class names that are not a list of names")
    return [c.strip() for c in names]


def pull_package(model_id: str, api_key: str, dest_dir: Path, *, api_url: str, device_id: str,
                 policy: DownloadPolicy, progress: Progress | None = None) -> Path:
    """Download ``model_id`` ("project/version") from Roboflow's API into ``dest_dir``; returns it.

    ``dest_dir`` (empty, made if missing) then holds a folder ``importers.from_roboflow`` reads. On
    failure the files written here are removed again. ``progress`` follows the weights download.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        task, model_type, ort_doc = _describe(model_id, api_key, api_url, device_id, policy)
        ort = ort_doc["ort"]
        log.info("pulling %s from %s (%s, %s)", model_id, api_url, task, model_type)
        keypoints = ort.get("keypoints_metadata")
        if task == "keypoint-detection" and not isinstance(keypoints, list):
            raise DownloadFailed("Roboflow's API answered without ort.keypoints_metadata (a keypoint model)")
        model_url, env_url = _text(ort_doc, "ort.model"), _text(ort_doc, "ort.environment")
        written.append(dest_dir / "weights.onnx")
        download(model_url, dest_dir / "weights.onnx", policy, progress=progress)
        written.append(dest_dir / "environment.json")
        download(env_url, dest_dir / "environment.json",
                 dataclasses.replace(policy, max_bytes=min(policy.max_bytes, MAX_ENVIRONMENT_BYTES)))
        classes = _class_names(_environment(dest_dir / "environment.json", ort), ort)
        files: dict[str, str] = {
            "model_type.json": json.dumps({"project_task_type": task, "model_type": model_type,
                                           "model_id": model_id}, indent=2) + "\n",
            "class_names.txt": "".join(f"{c}\n" for c in classes),
        }
        if isinstance(keypoints, list):
            files["keypoints_metadata.json"] = json.dumps(keypoints, indent=2) + "\n"
        for name, text in files.items():
            written.append(dest_dir / name)
            atomic_files.write_text(dest_dir / name, text)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    log.info("pulled %s into %s", model_id, dest_dir)
    return dest_dir
