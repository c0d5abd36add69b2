"""Issue 18 item 6: public error bodies carry no absolute server paths; the log keeps the detail.

Each case below is a failure whose log message names a file on the device (the store, the staging
folder of an upload, an unpacked archive). Over the real daemon (gunicorn) its JSON body must keep the
status it has (docs/http-api.md §5) and name no path: no piece of the server's state directory and
no /tmp, /var or /home.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from edge_agent.http.app import without_paths
from edge_agent.store.model_store import ModelStore
from onnx_builders import constant_model, ultralytics_metadata
from servers import Server, running_server

KEY = "s3cret"
AUTH = {"Authorization": f"Bearer {KEY}"}
IMAGE = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415408d763f8cfc0"
    "000003010100c9fe92ef0000000049454e44ae426082")).decode()  # a 1x1 PNG

# case: the status it answers today (docs/http-api.md §5)
CASES = {
    "corrupt model (checksum)": 500,
    "corrupt model (ONNX Runtime)": 500,
    "upload of a bad file": 400,
    "upload of an archive with an unusable file": 400,
    "upload of an archive with no model": 400,
    "rollback without revisions": 404,
    "missing model": 404,
}


def _detector(path: Path) -> Path:
    out = np.zeros((6, 3), np.float32)
    out[:4, 0], out[4, 0] = [32, 32, 20, 10], 0.9
    return constant_model(path, {"output0": out}, metadata=ultralytics_metadata("detect", ["a", "b"], (64, 64)))


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _plant(state: Path, onnx: Path) -> None:
    """Two stored models with broken weights: one fails its checksum, one passes it but is not ONNX."""
    store = ModelStore(state / "models")
    store.install(onnx, "broken/1")
    (store.get("broken/1").path / "model.onnx").write_bytes(b"garbage " * 64)
    store.install(onnx, "garbled/1")
    folder = store.get("garbled/1").path
    garbage = b"not an onnx protobuf at all " * 8
    (folder / "model.onnx").write_bytes(garbage)
    manifest = json.loads((folder / "model.json").read_text())
    manifest["weights"].update(sha256=hashlib.sha256(garbage).hexdigest(), bytes=len(garbage))
    (folder / "model.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    state = tmp_path_factory.mktemp("error-paths")
    _plant(state, _detector(tmp_path_factory.mktemp("onnx") / "det.onnx"))
    with running_server(state, {"api_key": KEY}) as s:
        yield s


@pytest.fixture(scope="module")
def answers(server: Server) -> dict[str, requests.Response]:
    url = server.url

    def infer(model_id: str) -> requests.Response:
        body = {"model_id": model_id, "image": {"type": "base64", "value": IMAGE}, "api_key": KEY}
        return requests.post(f"{url}/infer/object_detection", json=body, timeout=60)

    def put(model_id: str, data: bytes) -> requests.Response:
        return requests.put(f"{url}/models/{model_id}", data=data, headers=AUTH, timeout=60)

    return {
        "corrupt model (checksum)": infer("broken/1"),
        "corrupt model (ONNX Runtime)": infer("garbled/1"),
        "upload of a bad file": put("up/1", b"\x08\x01 this is not an ONNX model"),
        "upload of an archive with an unusable file": put("up/2", _zip({"model.onnx": b"garbage"})),
        "upload of an archive with no model": put("up/3", _zip({"readme.txt": b"nothing here"})),
        "rollback without revisions": requests.post(f"{url}/models/broken/1/rollback", headers=AUTH, timeout=60),
        "missing model": infer("missing/1"),
    }


def _leaks(text: str, state: Path) -> list[str]:
    needles = {str(state), str(state.resolve()), "/tmp", "/var", "/home"}
    return sorted(n for n in needles if n in text)


@pytest.mark.parametrize("case", CASES)
def test_status_is_unchanged(answers: dict[str, requests.Response], case: str) -> None:
    assert answers[case].status_code == CASES[case], answers[case].text[:300]


@pytest.mark.parametrize("case", CASES)
def test_body_names_no_server_path(answers: dict[str, requests.Response], server: Server, case: str) -> None:
    assert _leaks(answers[case].text, server.state_dir) == [], answers[case].text[:300]


@pytest.mark.parametrize("case", ["corrupt model (checksum)", "upload of an archive with no model"])
def test_log_keeps_the_path(answers: dict[str, requests.Response], server: Server, case: str) -> None:
    """The detail the body leaves out stays in the daemon's log."""
    needle = {"corrupt model (checksum)": "broken/1/model.onnx: checksum mismatch",
              "upload of an archive with no model": ": expected a Roboflow model folder"}[case]
    lines = [line for line in server.output().splitlines() if needle in line]
    assert any(str(server.state_dir) in line for line in lines), lines


@pytest.mark.parametrize(("text", "shown"), [
    ("/var/lib/edge-agent/models/a/1/model.onnx: missing", "model.onnx: missing"),
    ("Load model from /tmp/x/.staging/up.1/package.onnx failed", "Load model from package.onnx failed"),
    ("cannot fetch https://example.com/a/b.jpg", "cannot fetch https://example.com/a/b.jpg"),
    ("cannot open /dev/video0", "cannot open /dev/video0"),
    ("send it to /infer/classification instead", "send it to /infer/classification instead"),
    ("install it under 'my-project/1'", "install it under 'my-project/1'"),
])
def test_without_paths(text: str, shown: str) -> None:
    assert without_paths(text) == shown
