"""The first hour of a new user (issue 19, "Why" item 7): what they type and what they should see.

The CLI runs as a user runs it (``python -m edge_agent`` in a subprocess), the daemon is the real one on a
loopback port, drawings come from ``edge_agent.visualize`` itself.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import requests

from edge_agent.cli import REMOVED_NOTE, SAMPLE_IMAGE
from edge_agent.results import Detections
from edge_agent.visualize import colour_for, draw, label_box
from servers import running_server

DEMO_STORE = Path(__file__).resolve().parent.parent / "edge_agent" / "demo" / "store"


def _cli(state: Path, *args: str, port: int | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env.update(EDGE_AGENT_STATE_DIR=str(state), EDGE_AGENT_CONFIG="", EDGE_AGENT_MODELS__OFFLINE="true",
               EDGE_AGENT_ENGINE__INTRA_OP_THREADS="1")
    if port is not None:
        env["EDGE_AGENT_SERVER__PORT"] = str(port)
    return subprocess.run([sys.executable, "-m", "edge_agent", *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)


# ------------------------------------------------------------------------------------------- models add


@pytest.mark.parametrize(("name", "data", "says"), [
    ("picture.jpg", None, "picture.jpg: this is a JPEG image, not a model"),
    ("photo.png", cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes(), "this is a PNG image, not a model"),
    ("junk.bin", b"\x00junk" * 100, "neither a zip nor a tar file"),
])
def test_adding_a_file_that_is_no_model_says_so_in_one_line(tmp_path: Path, name: str, data: bytes | None,
                                                             says: str) -> None:
    path = tmp_path / name
    if data is None:
        shutil.copy(SAMPLE_IMAGE, path)
    else:
        path.write_bytes(data)
    done = _cli(tmp_path / "state", "models", "add", str(path))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert says in lines[0]
    assert "ReadError" not in lines[0]
    assert "a model is an .onnx file, a Roboflow model folder, or a .zip or .tar(.gz) of one" in lines[0]


def test_already_installed_names_replace(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    shutil.copytree(DEMO_STORE / "shapes" / "1", folder)
    state = tmp_path / "state"
    assert _cli(state, "models", "add", str(folder), "--id", "mine/1").returncode == 0
    again = _cli(state, "models", "add", str(folder), "--id", "mine/1")
    assert again.returncode == 2
    assert "'mine/1' is already installed: add --replace" in again.stderr
    assert _cli(state, "models", "add", str(folder), "--id", "mine/1", "--replace").returncode == 0


def test_models_remove_says_what_the_daemon_does_next(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    shutil.copytree(DEMO_STORE / "shapes" / "1", folder)
    state = tmp_path / "state"
    assert _cli(state, "models", "add", str(folder), "--id", "mine/1").returncode == 0
    jpeg = SAMPLE_IMAGE.read_bytes()
    with running_server(state) as server:
        r = requests.post(f"{server.url}/mine/1", files={"file": ("a.jpg", jpeg, "image/jpeg")}, timeout=60)
        assert r.status_code == 200
        done = _cli(state, "models", "remove", "mine/1", port=server.port)
        assert done.returncode == 0, done.stderr
        assert REMOVED_NOTE in done.stdout
        r = requests.post(f"{server.url}/mine/1", files={"file": ("a.jpg", jpeg, "image/jpeg")}, timeout=60)
        assert r.status_code == 404  # what the note says


# ---------------------------------------------------------------------------------------------- labels


@pytest.mark.parametrize(("x", "y"), [(0, 0), (630, 0), (630, 470), (-20, 500), (300, 8), (639, 479)])
def test_label_box_lies_inside_the_image(x: int, y: int) -> None:
    x0, y0 = label_box(x, y, 90, 18, 640, 480)
    assert 0 <= x0 and x0 + 90 < 640
    assert 0 <= y0 and y0 + 18 < 480


def test_label_box_stays_above_the_point_when_there_is_room() -> None:
    assert label_box(100, 200, 90, 18, 640, 480) == (100, 182)


def test_a_label_at_the_right_edge_is_drawn_whole() -> None:
    """A box touching the right edge: its label moves left into the image instead of being cut off."""
    image = np.zeros((200, 300, 3), np.uint8)
    result = Detections(xyxy=np.array([[280.0, 100.0, 299.0, 150.0]], np.float32),
                        confidence=np.array([0.9], np.float32), class_id=np.array([2]),
                        class_names=("circle", "square", "triangle", "star"), image_size=(200, 300))
    canvas = draw(image, result, labels=True, stroke=1)
    colour = np.array(colour_for(2, "triangle"), np.uint8)
    (text_w, text_h), base = cv2.getTextSize("triangle 0.90", cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
    band = canvas[100 - text_h - base - 2:100]  # the label's rows, above the box
    columns = np.where((band == colour).all(axis=2).any(axis=0))[0]
    assert columns.min() == 300 - (text_w + 4) - 1  # shifted left by what would have been cut off
    assert columns.max() == 299  # the label's right side on the image's last column, not past it


# ------------------------------------------------------------------------------------------------- docs


def test_docs_with_a_slash_and_redoc_offline(tmp_path: Path) -> None:
    with running_server(tmp_path / "state", {"api_key": "k3y"}) as server:
        for page in ("docs", "redoc", "swagger"):
            r = requests.get(f"{server.url}/{page}/", allow_redirects=False, timeout=30)
            assert r.status_code == 308, page  # open without the key, like the page itself
            assert r.headers["Location"] == f"../{page}"
            r = requests.get(f"{server.url}/{page}/", timeout=30)
            assert r.status_code == 200 and r.url == f"{server.url}/{page}"
            assert r.headers["Content-Type"].startswith("text/html")
        page = requests.get(f"{server.url}/redoc", timeout=30).text
        assert "google-fonts" not in page and "fonts.googleapis" not in page
        script = requests.get(f"{server.url}/redoc/js/redoc.standalone.js", timeout=30)
        assert script.status_code == 200 and "javascript" in script.headers["Content-Type"]
        assert len(script.content) > 500_000
        assert "cdn.redoc.ly" not in script.text
        assert "data:image/svg+xml;base64," in script.text  # the sidebar logo, from the package's own file


# ------------------------------------------------------------------------------------------- access log


def _access_lines(output: str, probes: bool = True) -> list[str]:
    """The access-log lines; ``probes=False``: without those of ``GET /healthz`` and ``/readiness``."""
    lines = [line for line in output.splitlines() if "edge_agent.access:" in line]
    return lines if probes else [line for line in lines if not re.search(r"access: GET /(healthz|readiness) ", line)]


def _logged_so_far(server: Any, logging_on: bool = True) -> str:
    """The server's output once the lines of every request answered so far are in it: a request's line
    is queued as its answer is written, and the access log's thread writes queued lines in order, so
    once the line of one more request (a probe) is in the output, the lines before it are too. With
    the log off, the output after the writer would have written."""
    from edge_agent.http.access_log import FLUSH_S

    probes = len(re.findall(r"access: GET /healthz ", str(server.output())))
    assert requests.get(f"{server.url}/healthz", timeout=30).status_code == 200
    deadline = time.monotonic() + (10.0 if logging_on else 3 * FLUSH_S)
    while time.monotonic() < deadline:
        output = str(server.output())
        if len(re.findall(r"access: GET /healthz ", output)) > probes:
            return output
        time.sleep(0.02)
    assert not logging_on, "the probe's access-log line did not appear"
    return str(server.output())


def test_every_request_is_logged_once_without_its_query(tmp_path: Path) -> None:
    jpeg = SAMPLE_IMAGE.read_bytes()
    with running_server(tmp_path / "state", {"preload_models": "shapes/1"}) as server:
        before = len(_access_lines(_logged_so_far(server), probes=False))
        requests.post(f"{server.url}/shapes/1?api_key=s3cret-key&confidence=50",
                      files={"file": ("a.jpg", jpeg, "image/jpeg")}, timeout=60)
        requests.get(f"{server.url}/no/such/route/at/all", timeout=30)
        requests.post(f"{server.url}/infer/object_detection", data=b"{", timeout=30,
                      headers={"Content-Type": "application/json"})
        # A percent-decoded line break must not forge a line of its own.
        requests.get(f"{server.url}/a%0aedge_agent.access:%20GET%20/forged%20200%0d%1b[2J", timeout=30)
        # a static file of the offline docs: werkzeug never closes such a response, so it is logged at once
        assert requests.get(f"{server.url}/swagger/css/swagger-ui.css", timeout=30).status_code == 200
        output = _logged_so_far(server)
        lines = _access_lines(output, probes=False)[before:]
    assert not any(line.startswith("edge_agent.access: GET /forged") for line in output.splitlines())
    assert len(lines) == 5, lines
    assert re.search(r"GET /a\\nedge_agent\.access: GET /forged 200\\r\\x1b\[2J 4\d\d ", lines[3]), lines[3]
    assert re.search(r"POST /shapes/1 200 \d+\.\d ms 127\.0\.0\.1$", lines[0]), lines[0]
    assert re.search(r"GET /no/such/route/at/all 404 \d+\.\d ms 127\.0\.0\.1$", lines[1]), lines[1]
    assert re.search(r"POST /infer/object_detection (400|422) ", lines[2]), lines[2]
    assert re.search(r"GET /swagger/css/swagger-ui.css 200 \d+\.\d ms 127\.0\.0\.1$", lines[4]), lines[4]
    assert "s3cret-key" not in "\n".join(lines)


def test_loggable_escapes_control_characters_only() -> None:
    from edge_agent.http.app import loggable

    assert loggable("/shapes/1") == "/shapes/1"
    assert loggable("/caf\u00e9 x") == "/caf\u00e9 x"
    assert loggable("/a\nb\r\x00") == "/a\\nb\\r\\x00"


# Every route of inference-sdk 1.8.3's client that edge-agent does not serve, with its family.
SDK_UNSERVED = {
    "/infer/lmm/cogvlm": "large multimodal models", "/infer/lmm": "large multimodal models",
    "/infer/embeddings": "embedding models", "/infer/action_recognition": "action recognition",
    "/infer/depth-estimation": "depth estimation", "/infer/depth-estimation/depth-anything-v2/small":
        "depth estimation", "/webrtc/offer": "WebRTC", "/initialise_webrtc_worker": "WebRTC",
    "/clip/embed_image": "CLIP", "/sam2/segment_image": "SAM2", "/infer/workflows/ws/flow": "Workflows",
}


def test_sdk_routes_edge_agent_does_not_serve_answer_501_naming_their_family(tmp_path: Path) -> None:
    with running_server(tmp_path / "state", wait_ready=False) as server:
        for path, family in SDK_UNSERVED.items():
            r = requests.post(server.url + path, json={"model_id": "x/1", "image": []}, timeout=30)
            assert r.status_code == 501, (path, r.status_code, r.text)
            assert r.json()["message"] == f"Not supported by edge-agent: {path}"
            assert family in r.json()["reason"], (path, r.json())
        r = requests.post(server.url + "/infer/no_such_task", json={}, timeout=30)  # an unknown task stays 404
        assert r.status_code == 404
        assert "Unknown task 'no_such_task'" in r.json()["message"]


def test_access_log_can_be_turned_off(tmp_path: Path) -> None:
    with running_server(tmp_path / "state", {"access_log": "false"}) as server:
        for _ in range(3):
            assert requests.get(f"{server.url}/healthz", timeout=30).status_code == 200
        output = _logged_so_far(server, logging_on=False)
    assert _access_lines(output) == []


# ------------------------------------------------------------------------------------- classification demo


def test_documented_classification_example_shows_an_answer(tmp_path: Path) -> None:
    """docs/demo-models.md: the classifier on the bundled scene, with the confidence the docs give."""
    done = _cli(tmp_path / "state", "infer", "--model", "shapes-cls/1", "--confidence", "0.05")
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    assert answer["top"] in ("circle", "square", "triangle", "star")
    assert answer["predictions"][0]["class"] == answer["top"]
    docs = (Path(__file__).resolve().parent.parent / "docs" / "demo-models.md").read_text()
    assert "edge-agent infer --model shapes-cls/1 --confidence 0.05" in docs
