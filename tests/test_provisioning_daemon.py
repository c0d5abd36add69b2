"""Model provisioning through the whole daemon (``edge-agent serve``, gunicorn): uploads over HTTP, a
bad version refused while the old one serves under load, a good one swapped in with no failed request,
rollback, and ``install_model`` over a real MQTT broker with progress replies."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from brokers import Mosquitto, Subscriber, mosquitto_binary, validator
from servers import Server, running_server

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "edge_agent" / "demo" / "store"
SAMPLE = base64.b64encode((ROOT / "edge_agent/demo/sample.jpg").read_bytes())
KEY = "upload-key-0123"
AUTH = {"Authorization": f"Bearer {KEY}"}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _variant(path: Path, note: str) -> bytes:
    """The same network with one more metadata entry: other bytes and sha256, the same predictions."""
    import onnx

    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = "edge_agent_test", note
    return bytes(model.SerializeToString())


def _put(server: Server, model_id: str, data: bytes, **query: Any) -> requests.Response:
    return requests.put(f"{server.url}/models/{model_id}", data=data, params=query, timeout=120,
                        headers={**AUTH, "Content-Type": "application/octet-stream"})


def _infer(server: Server, model_id: str) -> requests.Response:
    return requests.post(f"{server.url}/{model_id}", data=SAMPLE, params={"api_key": KEY}, timeout=60,
                         headers={"Content-Type": "application/x-www-form-urlencoded"})


def _classes(response: requests.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return sorted(p["class"] for p in response.json()["predictions"])


class _Load:
    """Requests in a loop from a few threads; every status is recorded."""

    def __init__(self, server: Server, model_id: str, threads: int = 3) -> None:
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(server, model_id), daemon=True)
                         for _ in range(threads)]

    def _run(self, server: Server, model_id: str) -> None:
        while not self._stop.is_set():
            self.statuses.append(_infer(server, model_id).status_code)

    def __enter__(self) -> _Load:
        for t in self._threads:
            t.start()
        while len(self.statuses) < 6:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)


@pytest.fixture
def keyed_server(tmp_path: Path) -> Iterator[Server]:
    with running_server(tmp_path / "state", settings={"api_key": KEY}) as server:
        yield server


def test_uploads_need_the_server_key(tmp_path: Path) -> None:
    onnx_bytes = (DEMO / "shapes/1/model.onnx").read_bytes()
    with running_server(tmp_path / "state") as server:  # no server.api_key configured
        r = _put(server, "acme/1", onnx_bytes)
        assert r.status_code == 403
        assert "server.api_key" in r.json()["message"]
        assert requests.post(f"{server.url}/models/acme/1/rollback", timeout=10).status_code == 403
        assert requests.get(f"{server.url}/models/acme/1", timeout=10).status_code == 404


def test_upload_checks_sha256_and_size_and_serves(keyed_server: Server) -> None:
    server = keyed_server
    onnx_bytes = (DEMO / "shapes/1/model.onnx").read_bytes()
    r = requests.put(f"{server.url}/models/acme/1", data=onnx_bytes, timeout=60)
    assert r.status_code == 401  # the key is required
    r = _put(server, "acme/1", onnx_bytes, sha256="0" * 64)
    assert r.status_code == 400
    assert r.json()["error"] == "checksum_mismatch"
    assert requests.get(f"{server.url}/models/acme/1", params={"api_key": KEY}, timeout=10).status_code == 404
    r = _put(server, "acme/1", b"")
    assert r.status_code == 400
    assert "empty" in r.json()["message"]
    r = _put(server, "acme/1", b"not an onnx file at all")
    assert r.status_code == 400, r.text
    r = _put(server, "acme/1", onnx_bytes, sha256=_sha(onnx_bytes))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["activated"] is True
    assert body["sha256"] == _sha(onnx_bytes)
    assert body["check"]["ok"] is True
    assert _classes(_infer(server, "acme/1")) == _classes(_infer(server, "shapes/1"))
    listed = requests.get(f"{server.url}/models", params={"api_key": KEY}, timeout=10).json()
    assert any(m["model_id"] == "acme/1" and m["sha256"] == _sha(onnx_bytes) for m in listed["models"]), [
        (m["model_id"], m["sha256"]) for m in listed["models"]]
    assert listed["disk_bytes"] >= len(onnx_bytes)


def test_bad_version_refused_under_load_good_one_swapped_and_rolled_back(keyed_server: Server) -> None:
    server = keyed_server
    first = (DEMO / "shapes/1/model.onnx").read_bytes()
    second = _variant(DEMO / "shapes/1/model.onnx", "v2")
    assert _put(server, "acme/1", first).status_code == 200
    expected = _classes(_infer(server, "acme/1"))
    with _Load(server, "acme/1") as load:
        # A classifier offered as a new version of a detector: loads, but is refused; the old one serves on.
        bad = _put(server, "acme/1", (DEMO / "shapes-cls/1/model.onnx").read_bytes())
        assert bad.status_code == 409, bad.text
        assert bad.json()["error"] == "activation_refused", bad.text
        assert "task" in bad.json()["message"]
        info = requests.get(f"{server.url}/models/acme/1", params={"api_key": KEY}, timeout=10).json()
        assert info["sha256"] == _sha(first)
        assert info["revisions"] == []
        good = _put(server, "acme/1", second, sha256=_sha(second))
        assert good.status_code == 200, good.text
        assert good.json()["serving"] is True, good.text
        time.sleep(0.3)
    assert load.statuses, "no request ran during the swap"
    assert set(load.statuses) == {200}, sorted(set(load.statuses))
    info = requests.get(f"{server.url}/models/acme/1", params={"api_key": KEY}, timeout=10).json()
    assert info["sha256"] == _sha(second)
    assert [r["sha256"] for r in info["revisions"]] == [_sha(first)]
    assert _classes(_infer(server, "acme/1")) == expected

    with _Load(server, "acme/1") as load:
        back = requests.post(f"{server.url}/models/acme/1/rollback", headers=AUTH, timeout=60)
        assert back.status_code == 200, back.text
        assert back.json()["sha256"] == _sha(first), back.text
        time.sleep(0.3)
    assert set(load.statuses) == {200}
    info = requests.get(f"{server.url}/models/acme/1", params={"api_key": KEY}, timeout=10).json()
    assert info["sha256"] == _sha(first)
    assert [r["sha256"] for r in info["revisions"]] == [_sha(second)]


def test_install_without_activation_then_activate(keyed_server: Server) -> None:
    server = keyed_server
    first = (DEMO / "shapes/1/model.onnx").read_bytes()
    second = _variant(DEMO / "shapes/1/model.onnx", "later")
    assert _put(server, "acme/2", first).status_code == 200
    r = _put(server, "acme/2", second, activate="false")
    assert r.status_code == 200, r.text
    assert r.json()["activated"] is False, r.text
    revision = r.json()["revision"]
    info = requests.get(f"{server.url}/models/acme/2", params={"api_key": KEY}, timeout=10).json()
    assert info["sha256"] == _sha(first)
    assert _sha(second) in [r["sha256"] for r in info["revisions"]]
    r = requests.post(f"{server.url}/models/acme/2/activate", params={"revision": revision}, headers=AUTH,
                      timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["sha256"] == _sha(second), r.text


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Plain files over HTTP on loopback (what a fleet operator's artefact store would be)."""
    folder = tmp_path / "files"
    folder.mkdir()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(folder))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", folder
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto is not installed (.ci/run does)")
def test_install_model_over_mqtt_with_progress(tmp_path: Path, file_server: tuple[str, Path]) -> None:
    base_url, folder = file_server
    data = _variant(DEMO / "shapes/1/model.onnx", "mqtt")
    (folder / "acme-3.onnx").write_bytes(data)
    broker = Mosquitto(tmp_path / "broker").start()
    env = {"EDGE_AGENT_MQTT__ENABLED": "true", "EDGE_AGENT_MQTT__HOST": "127.0.0.1",
           "EDGE_AGENT_MQTT__PORT": str(broker.port), "EDGE_AGENT_MQTT__DEVICE_ID": "prov1",
           "EDGE_AGENT_MQTT__TELEMETRY_INTERVAL_S": "0"}
    sub = Subscriber(broker.port, ["edge-agent/prov1/responses/#"], client_id="prov-subscriber")
    check = validator("response")
    try:
        with running_server(tmp_path / "state", settings={"api_key": KEY}, env_extra=env) as server:
            time.sleep(0.5)
            bad = {"model_id": "acme/3", "url": f"{base_url}/acme-3.onnx", "sha256": "1" * 64,
                   "correlation_id": "bad"}
            sub.publish("edge-agent/prov1/commands/install_model", json.dumps(bad))
            replies = sub.wait_for(lambda ms: any(m.json().get("correlation_id") == "bad" and "progress" not in
                                                  m.json() for m in ms), timeout=60)
            final = [m.json() for m in replies if m.json().get("correlation_id") == "bad" and
                     "progress" not in m.json()][-1]
            assert final["ok"] is False, final
            assert final["error"]["type"] == "checksum_mismatch", final
            missing = {"model_id": "acme/3", "url": f"{base_url}/nope.onnx", "sha256": _sha(data),
                       "correlation_id": "404"}
            sub.publish("edge-agent/prov1/commands/install_model", json.dumps(missing))
            good = {"model_id": "acme/3", "url": f"{base_url}/acme-3.onnx", "sha256": _sha(data),
                    "correlation_id": "good"}
            sub.publish("edge-agent/prov1/commands/install_model", json.dumps(good))
            replies = sub.wait_for(lambda ms: any(m.json().get("correlation_id") == "good" and "result" in m.json()
                                                  for m in ms), timeout=60)
            for m in replies:
                check.validate(m.json())
            mine = [m.json() for m in replies if m.json().get("correlation_id") == "good"]
            phases = [m["progress"]["phase"] for m in mine if "progress" in m]
            assert "downloading" in phases, phases
            assert "checking" in phases, phases
            assert mine[-1]["ok"] is True, mine[-1]
            assert mine[-1]["result"]["sha256"] == _sha(data), mine[-1]
            failed = [m.json() for m in replies if m.json().get("correlation_id") == "404" and "error" in m.json()]
            assert failed, failed
            assert failed[0]["error"]["type"] == "download_failed", failed
            assert _classes(_infer(server, "acme/3")) == _classes(_infer(server, "shapes/1"))
            sub.publish("edge-agent/prov1/commands/rollback_model",
                        json.dumps({"model_id": "acme/3", "correlation_id": "rb"}))
            replies = sub.wait_for(lambda ms: any(m.json().get("correlation_id") == "rb" and "progress" not in
                                                  m.json() for m in ms), timeout=60)
            rb = [m.json() for m in replies if m.json().get("correlation_id") == "rb" and "progress" not in m.json()]
            assert rb[-1]["ok"] is False
            assert rb[-1]["error"]["type"] in ("model_not_found", "model_import_failed")
    finally:
        sub.close()
        broker.stop()


def test_a_new_version_of_an_unloaded_model_is_checked_against_the_stored_one(keyed_server: Server) -> None:
    server = keyed_server
    detector = (DEMO / "shapes/1/model.onnx").read_bytes()
    assert _put(server, "acme/4", detector).status_code == 200
    requests.post(f"{server.url}/model/remove", json={"model_id": "acme/4"}, headers=AUTH, timeout=10)
    registry = requests.get(f"{server.url}/model/registry", headers=AUTH, timeout=10).json()
    assert all(m["model_id"] != "acme/4" for m in registry["models"]), [m["model_id"] for m in registry["models"]]
    bad = _put(server, "acme/4", (DEMO / "shapes-cls/1/model.onnx").read_bytes())
    assert bad.status_code == 409, bad.text
    assert "task" in bad.json()["message"], bad.text
    info = requests.get(f"{server.url}/models/acme/4", headers=AUTH, timeout=10).json()
    assert info["sha256"] == _sha(detector)
    assert info["loaded"] is False


def test_corrupt_archives_are_refused_with_a_4xx(keyed_server: Server) -> None:
    import io
    import zipfile

    server = keyed_server
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model.onnx", (DEMO / "shapes/1/model.onnx").read_bytes())
    whole = buffer.getvalue()
    for name, data, ctype in (("cut.zip", whole[: len(whole) // 2], "application/zip"),
                              ("cut.tar.gz", b"\x1f\x8b\x08\x00" + b"\x00" * 64, "application/gzip")):
        r = requests.put(f"{server.url}/models/acme/5", data=data, timeout=60,
                         headers={**AUTH, "Content-Type": ctype})
        assert r.status_code == 400, (name, r.text)
        assert r.json()["error"] == "model_import_failed", (name, r.text)
        assert ".staging" not in r.text
    r = requests.put(f"{server.url}/models/acme/5", data=whole, timeout=60,
                     headers={**AUTH, "Content-Type": "application/octet-stream"})  # sniffed as a zip
    assert r.status_code == 200, r.text


def test_a_version_that_disagrees_on_the_golden_set_is_refused(tmp_path: Path) -> None:
    import cv2
    import numpy as np

    from edge_agent.demo.shapes import CLASSES, generate_scene
    from onnx_builders import constant_model, ultralytics_metadata

    golden = tmp_path / "golden"
    golden.mkdir()
    for seed in range(4):
        cv2.imwrite(str(golden / f"{seed}.jpg"), generate_scene(300 + seed, size=(320, 320), max_objects=4).image)
    out = np.zeros((4 + len(CLASSES), 1), np.float32)
    out[:4, 0], out[4, 0] = [160, 160, 60, 60], 0.95  # one confident circle in the middle, whatever the image
    stubborn = constant_model(tmp_path / "stubborn.onnx", {"output0": out}, input_hw=(320, 320),
                              metadata=ultralytics_metadata("detect", list(CLASSES), (320, 320)))
    env = {"EDGE_AGENT_MODELS__CHECK_IMAGES": str(golden), "EDGE_AGENT_MODELS__CHECK_TOLERANCE": "0.25"}
    with running_server(tmp_path / "state", settings={"api_key": KEY}, env_extra=env) as server:
        detector = (DEMO / "shapes/1/model.onnx").read_bytes()
        assert _put(server, "acme/6", detector).status_code == 200
        r = _put(server, "acme/6", stubborn.read_bytes())
        assert r.status_code == 409, r.text
        assert "golden" in r.json()["message"], r.text
        r = _put(server, "acme/6", _variant(DEMO / "shapes/1/model.onnx", "same network"))
        assert r.status_code == 200, r.text
        assert r.json()["check"]["images_compared"] == 4, r.text
