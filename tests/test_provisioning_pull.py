"""Pulling models from Roboflow's API through the whole daemon (gunicorn), with Roboflow's own client
(inference-sdk) as the caller and a loopback fake of the cloud (tests/fake_roboflow.py) serving the
project's demo models: the first request downloads and serves, later ones do not download, concurrent
first requests download once, a restart with the cloud gone still serves; a wrong key, an unknown
model, a truncated download and a cloud that hangs each answer clearly and leave the store as it was."""

from __future__ import annotations

import base64
import threading
from pathlib import Path
from typing import Any

import pytest
import requests

from fake_roboflow import FakeRoboflow, demo_package
from servers import Server, running_server

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "edge_agent" / "demo" / "store"
SAMPLE = ROOT / "edge_agent" / "demo" / "sample.jpg"
KEY = "rf-key-9f3a51c7d2"

inference_sdk = pytest.importorskip("inference_sdk", reason="inference-sdk is installed by .ci/run (--no-deps)")
from inference_sdk import InferenceHTTPClient  # noqa: E402
from inference_sdk.http.errors import HTTPCallErrorError  # noqa: E402


def _env(cloud: FakeRoboflow, **extra: str) -> dict[str, str]:
    return {"EDGE_AGENT_MODELS__OFFLINE": "false", "EDGE_AGENT_MODELS__API_URL": cloud.api_url,
            "EDGE_AGENT_MODELS__DOWNLOAD_TIMEOUT_S": "2", "EDGE_AGENT_MODELS__DOWNLOAD_RETRIES": "1",
            "EDGE_AGENT_MODELS__PULL_RETRY_S": "0",
            **{f"EDGE_AGENT_MODELS__{k.upper()}": v for k, v in extra.items()}}


def _stored(server: Server) -> set[str]:
    return {m["model_id"] for m in requests.get(f"{server.url}/models", timeout=10).json()["models"]}


def _leftovers(state: Path) -> list[Path]:
    """Files of a download that did not become a model: anything in staging, any .part file."""
    models = state / "models"
    return [p for p in models.rglob("*") if p.is_file() and (".staging" in p.parts or p.name.endswith(".part"))]


def _infer(server: Server, model_id: str, key: str = KEY) -> Any:
    return InferenceHTTPClient(server.url, api_key=key).infer(str(SAMPLE), model_id=model_id)


@pytest.fixture(scope="module")
def packages() -> dict[str, dict[str, Any]]:
    return {"hard-hats/3": demo_package(DEMO / "shapes" / "1"),
            "parts-seg/2": demo_package(DEMO / "shapes-seg" / "1"),
            "gauges/5": demo_package(DEMO / "shapes-pose" / "1")}


def test_first_request_pulls_later_ones_do_not_and_offline_restart_serves(
        tmp_path: Path, packages: dict[str, dict[str, Any]]) -> None:
    state = tmp_path / "state"
    with FakeRoboflow(packages, api_key=KEY) as cloud:
        env = _env(cloud)
        with running_server(state, env_extra=env) as server:
            reference = _infer(server, "shapes/1")
            first = _infer(server, "hard-hats/3")
            assert cloud.requests["weights"] == 1
            assert cloud.requests["ort"] == 1
            assert sorted(p["class"] for p in first["predictions"]) == \
                sorted(p["class"] for p in reference["predictions"])
            assert [round(p["x"]) for p in first["predictions"]] == [round(p["x"]) for p in reference["predictions"]]
            for _ in range(3):
                _infer(server, "hard-hats/3")
            assert cloud.requests["weights"] == 1  # served from the store
            # Four concurrent first requests for another model: one download; the others wait for it.
            results: list[Any] = []
            threads = [threading.Thread(target=lambda: results.append(_infer(server, "parts-seg/2")))
                       for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert len(results) == 4
            assert all(r["predictions"] for r in results), results
            assert cloud.requests["weights"] == 2
            assert cloud.requests["ort"] == 2
            # /model/add with a key pulls too (what the SDK sends when the model is not loaded)
            r = requests.post(f"{server.url}/model/add", json={"model_id": "gauges/5", "api_key": KEY}, timeout=120)
            assert r.status_code == 200
            assert any(m["model_id"] == "gauges/5" for m in r.json()["models"]), r.text
            log = server.output()
        assert KEY not in log
        assert KEY not in "".join(p.read_text(errors="replace") for p in (state / "models").rglob("*.json"))
    # The cloud is gone: a restart still serves what was pulled.
    with running_server(state, env_extra=env) as server:
        again = _infer(server, "hard-hats/3")
        assert [p["class"] for p in again["predictions"]] == [p["class"] for p in first["predictions"]]
        # An id never pulled, asked for with a key while the cloud cannot be reached: 503 with the reason.
        r = requests.post(f"{server.url}/never-seen/1?api_key={KEY}", data=base64.b64encode(SAMPLE.read_bytes()),
                          headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=60)
        assert r.status_code == 503, r.text
        assert r.json()["error"] == "cloud_unavailable", r.text
        assert "connect" in r.json()["message"]
        assert KEY not in r.text
        assert "never-seen/1" not in _stored(server)


def test_cloud_errors_answer_clearly_and_leave_the_store_as_it_was(
        tmp_path: Path, packages: dict[str, dict[str, Any]]) -> None:
    state = tmp_path / "state"
    with FakeRoboflow(packages, api_key=KEY) as cloud, running_server(state, env_extra=_env(cloud)) as server:
        before = _stored(server)
        with pytest.raises(HTTPCallErrorError) as wrong:
            _infer(server, "hard-hats/3", key="not-the-key")
        assert wrong.value.status_code == 401
        with pytest.raises(HTTPCallErrorError) as unknown:
            _infer(server, "no-such-project/1")
        assert unknown.value.status_code == 404

        cloud.fail_mode, cloud.fail_on = "truncate", {"weights"}
        r = requests.post(f"{server.url}/model/add", json={"model_id": "hard-hats/3", "api_key": KEY}, timeout=120)
        assert r.status_code == 502, r.text
        assert r.json()["error"] == "download_failed", r.text
        assert "truncated" in r.text, r.text

        cloud.fail_mode, cloud.fail_on, cloud.hang_s = "hang", {"ort"}, 20.0
        r = requests.post(f"{server.url}/model/add", json={"model_id": "hard-hats/3", "api_key": KEY}, timeout=120)
        assert r.status_code == 503, r.text
        assert r.json()["error"] == "cloud_unavailable", r.text
        # Another model is served meanwhile (the built-in ones never wait on the cloud).
        assert _infer(server, "shapes/1")["predictions"]

        cloud.packages["hard-hats/3"] = {**packages["hard-hats/3"], "onnx": b"this is not an onnx file"}
        cloud.fail_mode = None
        r = requests.post(f"{server.url}/model/add", json={"model_id": "hard-hats/3", "api_key": KEY}, timeout=120)
        assert r.status_code == 502, r.text
        assert r.json()["error"] == "download_failed", r.text
        assert "cannot be used" in r.json()["message"]
        assert ".staging" not in r.text

        assert _stored(server) == before
        assert not _leftovers(state)
        assert KEY not in server.output()
        # The cloud works again: the same id now pulls and serves.
        cloud.packages["hard-hats/3"] = packages["hard-hats/3"]
        assert _infer(server, "hard-hats/3")["predictions"]
        assert "hard-hats/3" in _stored(server)


def test_offline_devices_never_call_the_cloud(tmp_path: Path, packages: dict[str, dict[str, Any]]) -> None:
    with FakeRoboflow(packages, api_key=KEY) as cloud, \
            running_server(tmp_path / "state", env_extra=_env(cloud, offline="true")) as server:
        with pytest.raises(HTTPCallErrorError) as err:
            _infer(server, "hard-hats/3")
        assert err.value.status_code == 404
        assert sum(cloud.requests.values()) == 0


def test_a_dead_cloud_is_asked_once_and_never_ties_up_the_server(
        tmp_path: Path, packages: dict[str, dict[str, Any]]) -> None:
    with FakeRoboflow(packages, api_key=KEY, fail_mode="hang", fail_on={"ort"}, hang_s=20.0) as cloud, \
            running_server(tmp_path / "state", env_extra={**_env(cloud), "EDGE_AGENT_MODELS__PULL_RETRY_S": "60"}) \
            as server:
        statuses: list[int] = []

        def add() -> None:
            r = requests.post(f"{server.url}/model/add", json={"model_id": "hard-hats/3", "api_key": KEY},
                              timeout=120)
            statuses.append(r.status_code)

        threads = [threading.Thread(target=add) for _ in range(4)]
        for t in threads:
            t.start()
        assert _infer(server, "shapes/1")["predictions"]  # answered while the pull hangs
        for t in threads:
            t.join(120)
        assert statuses == [503] * 4
        asked = cloud.requests["ort"]
        assert asked == 2  # one pull: its first try and one retry, shared by the four callers
        add()  # within pull_retry_s: the remembered answer, the cloud is not asked again
        assert statuses[-1] == 503
        assert cloud.requests["ort"] == asked


def test_the_device_key_is_never_sent_to_roboflow(tmp_path: Path, packages: dict[str, dict[str, Any]]) -> None:
    local = "device-local-key-5521"
    with FakeRoboflow(packages, api_key=KEY) as cloud:
        with running_server(tmp_path / "a", settings={"api_key": local}, env_extra=_env(cloud)) as server:
            with pytest.raises(HTTPCallErrorError) as err:
                _infer(server, "hard-hats/3", key=local)  # the key that opens the device, not a Roboflow one
            assert err.value.status_code == 404
            assert sum(cloud.requests.values()) == 0
        env = {**_env(cloud), "EDGE_AGENT_MODELS__API_KEY": KEY}  # the device's own Roboflow key
        with running_server(tmp_path / "b", settings={"api_key": local}, env_extra=env) as server:
            assert _infer(server, "hard-hats/3", key=local)["predictions"]
            assert all(local not in path for path in cloud.paths), [path for path in cloud.paths if local in path]
            assert KEY not in server.output()
            assert local not in server.output()
