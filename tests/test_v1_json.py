"""The JSON body of Roboflow's HTTP guide (seed 004) on the v1 route ``POST /{project}/{version}``
(docs/http-api.md §3.3): every image kind it names, its options, lists, and clear 400s for bad bodies.

Everything runs against the real daemon on loopback ports; the ``url`` images are served by a loopback
HTTP server of the test's own, which the daemon may reach because the test loosens the URL policy
(``allow_http_urls``, ``allow_urls_without_fqdn``, ``allow_non_global_urls``, as in test_http_api.py).
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import requests

from edge_agent.demo.shapes import generate_scene
from helpers import serve_folder
from servers import Server, running_server

DET, SEG, POSE, CLS = "shapes/1", "shapes-seg/1", "shapes-pose/1", "shapes-cls/1"
LOOSE_URLS = {"allow_http_urls": "true", "allow_urls_without_fqdn": "true", "allow_non_global_urls": "true"}


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    return generate_scene(3, size=(480, 640), max_objects=5).image


@pytest.fixture(scope="module")
def jpeg(scene: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", scene)
    assert ok
    return bytes(buf)


@pytest.fixture(scope="module")
def b64(jpeg: bytes) -> str:
    return base64.b64encode(jpeg).decode()


@pytest.fixture(scope="module")
def image_url(tmp_path_factory: pytest.TempPathFactory, jpeg: bytes) -> Iterator[str]:
    """``<base>/scene.jpg`` on a loopback HTTP server; ``<base>/notes.txt`` is not an image."""
    www = tmp_path_factory.mktemp("www")
    (www / "scene.jpg").write_bytes(jpeg)
    (www / "notes.txt").write_text("not an image")
    with serve_folder(www) as base:
        yield f"{base}/scene.jpg"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    settings = {**LOOSE_URLS, "allow_numpy": "true", "preload_models": DET}
    with running_server(tmp_path_factory.mktemp("v1-json"), settings) as found:
        yield found


def _message(r: requests.Response) -> str:
    assert r.headers["Content-Type"].startswith("application/json"), r.text[:200]
    return str(r.json()["message"])


def test_seed_004_snippet_with_a_url(server: Server, image_url: str) -> None:
    """Seed 004's snippet as written, with only its undefined names fixed."""
    workspace_id = "shapes"
    model_id = "1"
    confidence = 0.75
    iou_thresh = 0.5
    api_key = ""

    infer_payload = {
        "image": {
            "type": "url",
            "value": image_url,
        },
        "confidence": confidence,
        "iou_threshold": iou_thresh,
        "api_key": api_key,
    }
    res = requests.post(
        f"{server.url}/{workspace_id}/{model_id}",
        json=infer_payload,
        timeout=60,
    )

    predictions = res.json()
    assert res.status_code == 200, predictions
    assert predictions["image"] == {"width": 640, "height": 480}
    assert len(predictions["predictions"]) >= 3
    assert min(p["confidence"] for p in predictions["predictions"]) >= 0.75


def test_base64_and_numpy_images(server: Server, b64: str, scene: np.ndarray) -> None:
    r = requests.post(f"{server.url}/{DET}", json={"image": {"type": "base64", "value": b64}}, timeout=60)
    assert r.status_code == 200, r.text
    from_base64 = r.json()
    assert len(from_base64["predictions"]) >= 3
    npy = io.BytesIO()
    np.save(npy, scene, allow_pickle=False)
    body = {"image": {"type": "numpy", "value": base64.b64encode(npy.getvalue()).decode()}}
    r = requests.post(f"{server.url}/{DET}", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["image"] == {"width": 640, "height": 480}
    assert len(r.json()["predictions"]) == len(from_base64["predictions"])


def test_body_options_take_effect_and_the_query_wins(server: Server, b64: str) -> None:
    url = f"{server.url}/{DET}"
    image = {"type": "base64", "value": b64}
    every = requests.post(url, json={"image": image, "confidence": 0.01}, timeout=60).json()["predictions"]
    scores = sorted(p["confidence"] for p in every)
    assert len(scores) >= 2
    cut = (scores[0] + scores[-1]) / 2  # a threshold with predictions on both sides
    kept = requests.post(url, json={"image": image, "confidence": cut}, timeout=60).json()["predictions"]
    assert 0 < len(kept) < len(every)
    assert all(p["confidence"] >= cut for p in kept)
    one = requests.post(url, json={"image": image, "confidence": 0.01, "max_detections": 1}, timeout=60).json()
    assert len(one["predictions"]) == 1
    # A query parameter wins over the body's value of the same option (docs/http-api.md §3.3).
    r = requests.post(url + "?confidence=1", json={"image": image, "confidence": cut}, timeout=60)
    assert len(r.json()["predictions"]) == len(every)
    r = requests.post(url + "?max_detections=2", json={"image": image, "confidence": 0.01, "max_detections": 1},
                      timeout=60)
    assert len(r.json()["predictions"]) == 2
    # v2 options the query string lacks, and the body's id and visualisation fields.
    name = every[0]["class"]
    body: dict[str, Any] = {"image": image, "confidence": 0.01, "class_filter": [name], "id": "req-1",
                            "visualize_predictions": True}
    r = requests.post(url, json=body, timeout=60)
    answer = r.json()
    assert {p["class"] for p in answer["predictions"]} == {name}
    assert answer["inference_id"] == "req-1"
    assert base64.b64decode(answer["visualization"]).startswith(b"\xff\xd8\xff")


def test_a_list_of_images_answers_a_list(server: Server, b64: str, image_url: str) -> None:
    body = {"image": [{"type": "base64", "value": b64}, {"type": "url", "value": image_url}], "confidence": 0.5}
    r = requests.post(f"{server.url}/{DET}", json=body, timeout=60)
    assert r.status_code == 200, r.text
    answers = r.json()
    assert isinstance(answers, list) and len(answers) == 2
    assert answers[0]["predictions"] == [{**p, "detection_id": answers[0]["predictions"][i]["detection_id"]}
                                         for i, p in enumerate(answers[1]["predictions"])]
    r = requests.post(f"{server.url}/{DET}?format=image", json=body, timeout=60)
    assert r.status_code == 400
    assert "send one image" in _message(r)


def test_every_task_reads_the_json_body(server: Server, b64: str) -> None:
    image = {"type": "base64", "value": b64}
    r = requests.post(f"{server.url}/{CLS}", json={"image": image, "confidence": 0.0, "iou_threshold": 0.5},
                      timeout=60)
    assert r.status_code == 200, r.text  # classification ignores iou_threshold, as the seed says
    assert r.json()["predictions"]
    r = requests.post(f"{server.url}/{SEG}", json={"image": image, "mask_decode_mode": "fast"}, timeout=60)
    assert r.status_code == 200 and all(p["points"] for p in r.json()["predictions"])
    r = requests.post(f"{server.url}/{SEG}", json={"image": image, "mask_decode_mode": "sloppy"}, timeout=60)
    assert r.status_code == 400
    assert "mask_decode_mode" in _message(r)
    r = requests.post(f"{server.url}/{POSE}", json={"image": image, "keypoint_confidence": 0.99}, timeout=60)
    assert r.status_code == 200
    assert all(p["keypoints"] == [] for p in r.json()["predictions"]), r.text[:300]


def test_format_image_draws_the_json_image(server: Server, b64: str) -> None:
    r = requests.post(f"{server.url}/{DET}?format=image", json={"image": {"type": "base64", "value": b64}},
                      timeout=60)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "image/jpeg"
    assert cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR).shape == (480, 640, 3)


@pytest.mark.parametrize(("body", "message"), [
    (b'{"image": {"type": "base64", "value": ', "is not valid JSON"),
    (b'  {"image": 1,}', "is not valid JSON"),
    (b'{"confidence": 0.5}', 'has no "image"'),
    (b'{"image": "abc"}', "Invalid JSON body: image"),
    (b'{"image": {"value": "abc"}}', "image.type: Field required"),
    (b'{"image": {"type": "base64", "value": "abc"}, "confidence": "lots"}', "confidence:"),
    (b'{"image": {"type": "base64", "value": "abc"}, "max_detections": 0}', "max_detections:"),
    (b'{"image": {"type": "base64", "value": 5}}', "needs its value as a string"),
    (b'{"image": {"type": "base64", "value": "bm90IGFuIGltYWdl"}}', "Data is not image"),
    (b'{"image": {"type": "file", "value": "/etc/passwd"}}', "local filesystem is disabled"),
    (b'{"image": {"type": "pickle", "value": "abc"}}', "not recognised image type"),
    (b'{"image": {"type": "numpy", "value": "gASVAAAAAAAAAAB9lC4="}}', "Could not deserialize"),
    (b'{"image": []}', "the list of images is empty"),
    (b'{"image": {"type": "base64", "value": "abc"}, "confidence": 2}', "confidence must be between 0 and 1"),
])
def test_bad_json_bodies_are_clear_400s(server: Server, body: bytes, message: str) -> None:
    r = requests.post(f"{server.url}/{DET}", data=body, headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 400, r.text
    assert message in _message(r), _message(r)


def test_null_options_are_the_defaults_on_v1_and_v2(server: Server, b64: str) -> None:
    """Roboflow declares the options Optional with defaults: an explicit null is the default, not a 400."""
    image = {"type": "base64", "value": b64}
    nulls = {"confidence": None, "iou_threshold": None, "max_detections": None, "class_filter": None,
             "visualization_stroke_width": None, "visualize_predictions": None, "id": None, "api_key": None}
    plain = requests.post(f"{server.url}/{DET}", json={"image": image}, timeout=60)
    assert plain.status_code == 200, plain.text
    for url, body in ((f"{server.url}/{DET}", {"image": image, **nulls}),
                      (f"{server.url}/infer/object_detection", {"model_id": DET, "image": image, **nulls})):
        r = requests.post(url, json=body, timeout=60)
        assert r.status_code == 200, (url, r.text)
        assert [p["confidence"] for p in r.json()["predictions"]] == \
            [p["confidence"] for p in plain.json()["predictions"]]


def test_a_url_the_policy_refuses_and_one_that_is_no_image(server: Server, image_url: str,
                                                          tmp_path: Path) -> None:
    notes = image_url.replace("scene.jpg", "notes.txt")
    r = requests.post(f"{server.url}/{DET}", json={"image": {"type": "url", "value": notes}}, timeout=60)
    assert r.status_code == 400
    assert "could not be decoded into image" in _message(r)
    with running_server(tmp_path / "state", {"preload_models": DET}) as strict:  # the default URL policy
        r = requests.post(f"{strict.url}/{DET}", json={"image": {"type": "url", "value": image_url}}, timeout=60)
        assert r.status_code == 400
        assert "Could not load input image" in _message(r)
        npy = io.BytesIO()
        np.save(npy, np.zeros((8, 8, 3), np.uint8))
        body = {"image": {"type": "numpy", "value": base64.b64encode(npy.getvalue()).decode()}}
        r = requests.post(f"{strict.url}/{DET}", json=body, timeout=60)
        assert r.status_code == 400
        assert "NumPy image type is not supported" in _message(r)


def test_a_base64_body_sent_as_json_is_still_base64(server: Server, b64: str) -> None:
    """The SDK's v0 mode sends base64 text with ``Content-Type: application/json`` (docs/http-api.md §7.3)."""
    r = requests.post(f"{server.url}/{DET}", data=b64, headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 200
    assert len(r.json()["predictions"]) >= 3


def test_the_body_api_key_opens_a_device_with_a_key(tmp_path: Path, b64: str) -> None:
    with running_server(tmp_path / "state", {"api_key": "k3y", "preload_models": DET}) as keyed:
        body = {"image": {"type": "base64", "value": b64}, "api_key": "k3y"}
        assert requests.post(f"{keyed.url}/{DET}", json=body, timeout=60).status_code == 200
        r = requests.post(f"{keyed.url}/{DET}", json={**body, "api_key": "wrong"}, timeout=60)
        assert r.status_code == 401
        # A byte-order mark before the object (some Windows tools write one) is JSON too.
        raw = b"\xef\xbb\xbf" + json.dumps(body).encode()
        r = requests.post(f"{keyed.url}/{DET}?api_key=k3y", data=raw, headers={"Content-Type": "text/plain"},
                          timeout=60)
        assert r.status_code == 200, r.text


def test_the_body_api_key_pulls_a_missing_model(tmp_path: Path, b64: str) -> None:
    """The JSON body's ``api_key`` is the key a pull from Roboflow's API uses (after the query's and the
    Bearer header's, docs/http-api.md §1.3); v1 reads the body itself, so the key must reach the pull."""
    from fake_roboflow import FakeRoboflow, demo_package

    demo = Path(__file__).resolve().parents[1] / "edge_agent" / "demo" / "store" / "shapes" / "1"
    key = "rf-body-key-5c1e"
    with FakeRoboflow({"hard-hats/3": demo_package(demo)}, api_key=key) as cloud:
        env = {"EDGE_AGENT_MODELS__OFFLINE": "false", "EDGE_AGENT_MODELS__API_URL": cloud.api_url,
               "EDGE_AGENT_MODELS__DOWNLOAD_TIMEOUT_S": "5", "EDGE_AGENT_MODELS__PULL_RETRY_S": "0"}
        with running_server(tmp_path / "state", env_extra=env) as server:
            image = {"type": "base64", "value": b64}
            r = requests.post(f"{server.url}/hard-hats/3", json={"image": image}, timeout=120)
            assert r.status_code in (401, 403, 404), r.text  # no key: nothing to pull with
            r = requests.post(f"{server.url}/hard-hats/3", json={"image": image, "api_key": "wrong"}, timeout=120)
            assert r.status_code in (401, 403), r.text
            r = requests.post(f"{server.url}/hard-hats/3", json={"image": image, "api_key": key}, timeout=120)
            assert r.status_code == 200, r.text
            assert len(r.json()["predictions"]) >= 3
