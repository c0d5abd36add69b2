"""``DELETE /models/{project}/{version}`` through the whole daemon: the key rule of the other store
changes, a loaded model removed and no longer served, built-in demo models and unknown ids refused,
and a model a running pipeline uses refused (409 naming the pipeline) until the pipeline ends."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from helpers import circle_video, wait
from servers import Server, running_server

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "edge_agent" / "demo" / "store"
SAMPLE = base64.b64encode((ROOT / "edge_agent/demo/sample.jpg").read_bytes())
KEY = "remove-key-0123"
AUTH = {"Authorization": f"Bearer {KEY}"}
ONNX = (DEMO / "shapes/1/model.onnx").read_bytes()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("remove-state"), settings={"api_key": KEY}) as found:
        yield found


def _put(server: Server, model_id: str) -> None:
    r = requests.put(f"{server.url}/models/{model_id}", data=ONNX, timeout=120,
                     headers={**AUTH, "Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text


def _delete(server: Server, model_id: str, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.delete(f"{server.url}/models/{model_id}", headers=AUTH if headers is None else headers,
                           timeout=30)


def _infer(server: Server, model_id: str) -> requests.Response:
    return requests.post(f"{server.url}/{model_id}", data=SAMPLE, params={"api_key": KEY}, timeout=60,
                         headers={"Content-Type": "application/x-www-form-urlencoded"})


def _listed(server: Server) -> set[str]:
    r = requests.get(f"{server.url}/models", headers=AUTH, timeout=10)
    assert r.status_code == 200, r.text
    return {m["model_id"] for m in r.json()["models"]}


def test_removing_needs_the_server_key(tmp_path: Path) -> None:
    with running_server(tmp_path / "state") as bare:  # no server.api_key configured
        r = _delete(bare, "shapes/1", headers={})
        assert r.status_code == 403
        assert "server.api_key" in r.json()["message"]
        assert "shapes/1" in _listed(bare)


def test_a_wrong_key_is_refused(server: Server) -> None:
    _put(server, "keyed/1")
    assert _delete(server, "keyed/1", headers={}).status_code == 401
    assert _delete(server, "keyed/1", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert "keyed/1" in _listed(server)


def test_a_loaded_model_is_removed_and_no_longer_served(server: Server) -> None:
    _put(server, "acme/1")
    assert _infer(server, "acme/1").status_code == 200  # loaded now
    assert requests.get(f"{server.url}/models/acme/1", headers=AUTH, timeout=10).json()["loaded"] is True
    r = _delete(server, "acme/1")
    assert r.status_code == 200, r.text
    assert r.json() == {"removed": "acme/1"}
    assert "acme/1" not in _listed(server)
    assert requests.get(f"{server.url}/models/acme/1", headers=AUTH, timeout=10).status_code == 404
    r = _infer(server, "acme/1")
    assert r.status_code == 404, r.text
    loaded = requests.get(f"{server.url}/model/registry", params={"api_key": KEY}, timeout=10).json()
    assert "acme/1" not in {m["model_id"] for m in loaded["models"]}
    r = _delete(server, "acme/1")  # a second time: gone
    assert r.status_code == 404 and "acme/1" in r.json()["reason"], r.text  # Roboflow's message, then ours


def test_built_in_demo_models_and_unknown_ids_are_refused(server: Server) -> None:
    r = _delete(server, "shapes/1")
    assert r.status_code == 400, r.text
    assert "built-in demo model" in r.json()["message"] and "shapes/1" in r.json()["message"]
    assert "shapes/1" in _listed(server)
    assert _infer(server, "shapes/1").status_code == 200
    r = _delete(server, "nobody/7")
    assert r.status_code == 404, r.text
    assert r.json()["error"] == "model_not_found" and "nobody/7" in r.json()["reason"]


def test_a_model_a_running_pipeline_uses_is_refused(server: Server, tmp_path: Path) -> None:
    _put(server, "busy/1")
    video = tmp_path / "circle.mp4"
    circle_video(video, frames=40)
    r = requests.post(f"{server.url}/inference_pipelines/initialise", headers=AUTH, timeout=30, json={
        "model_id": "busy/1", "video_reference": str(video), "pipeline_id": "p-busy", "max_fps": 2})
    assert r.status_code == 200, r.text
    try:
        r = _delete(server, "busy/1")
        assert r.status_code == 409, r.text
        assert r.json()["error"] == "model_in_use"
        assert "p-busy" in r.json()["message"] and "busy/1" in r.json()["message"]
        assert "busy/1" in _listed(server)
    finally:
        requests.post(f"{server.url}/inference_pipelines/p-busy/terminate", headers=AUTH, timeout=30)

    statuses: list[int] = []

    def ended() -> bool:  # terminate returns at once; the pipeline's thread ends soon after
        statuses.append(_delete(server, "busy/1").status_code)
        return statuses[-1] != 409

    wait(ended)
    assert statuses[-1] == 200
    assert "busy/1" not in _listed(server)
