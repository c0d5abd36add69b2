"""The HTTP API with raw requests: the body forms the SDK never sends, every error of docs/http-api.md §5, the
security defaults of §9, headers, metrics, readiness, the API key, batching and overload.

Everything runs against the real daemon (gunicorn) on loopback ports.
"""

from __future__ import annotations

import base64
import functools
import http.server
import io
import json
import pickle
import ssl
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import requests

from edge_agent.demo.shapes import generate_scene
from helpers import needs_openssl
from servers import Server, running_server

DET, SEG, POSE, CLS = "shapes/1", "shapes-seg/1", "shapes-pose/1", "shapes-cls/1"
NO_MODEL = ("Requested Roboflow resource not found. Make sure that workspace, project or model you referred in "
            "request exists.")


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    ok, buf = cv2.imencode(".jpg", generate_scene(3, size=(480, 640), max_objects=5).image)
    return bytes(buf)


@pytest.fixture(scope="module")
def b64(jpeg: bytes) -> str:
    return base64.b64encode(jpeg).decode()


def _v2(server: Any, task: str, body: dict[str, Any], **kw: Any) -> requests.Response:
    return requests.post(f"{server.url}/infer/{task}", json=body, timeout=60, **kw)


def _image(b64: str) -> dict[str, str]:
    return {"type": "base64", "value": b64}


def _message(r: requests.Response) -> str:
    assert r.headers["Content-Type"].startswith("application/json"), r.text[:200]
    return str(r.json()["message"])


# ------------------------------------------------------------------------------------------- v1 forms


def test_legacy_base64_body_with_any_content_type(http_server: Server, b64: str) -> None:
    for ctype in ("application/x-www-form-urlencoded", "application/json", "text/plain"):
        r = requests.post(f"{http_server.url}/{DET}", data=b64, headers={"Content-Type": ctype}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["image"] == {"width": 640, "height": 480}
        assert len(body["predictions"]) >= 3
        for p in body["predictions"]:
            assert set(p) == {"x", "y", "width", "height", "confidence", "class", "class_id", "detection_id"}
    data_uri = "data:image/jpeg;base64," + b64[:60] + "\n" + b64[60:]
    r = requests.post(f"{http_server.url}/{DET}", data=data_uri, headers={"Content-Type": "text/plain"}, timeout=60)
    assert r.status_code == 200
    assert r.json()["predictions"]


def test_legacy_multipart_and_raw_bytes(http_server: Server, jpeg: bytes) -> None:
    r = requests.post(f"{http_server.url}/{SEG}", files={"file": ("a.jpg", jpeg, "image/jpeg")}, timeout=60)
    assert r.status_code == 200, r.text
    for p in r.json()["predictions"]:
        assert p["mask_format"] == "polygon"
        assert len(p["points"]) >= 3
    r = requests.post(f"{http_server.url}/{SEG}", files={"image": ("a.jpg", jpeg, "image/jpeg")}, timeout=60)
    assert r.status_code == 400
    assert _message(r) == ("Could not load input image. Cause: Expected image to be send in part named 'file' of "
                           "multipart/form-data request")
    # docs/http-api.md §12 #13: raw JPEG bytes are recognised by their magic number
    r = requests.post(f"{http_server.url}/{DET}", data=jpeg, headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert r.status_code == 200
    assert r.json()["predictions"]


def test_legacy_body_errors(http_server: Server) -> None:
    url = f"{http_server.url}/{DET}"
    r = requests.post(url, data=b"", timeout=30)  # requests sends no Content-Type for an empty body
    assert r.status_code == 400
    assert _message(r) == "Content-Type header not provided with request."
    r = requests.post(url, data="", headers={"Content-Type": "text/plain"}, timeout=30)
    assert r.status_code == 400
    assert _message(r) == "Could not load input image. Cause: Empty image payload."
    r = requests.post(url, data="not*base64!", headers={"Content-Type": "text/plain"}, timeout=30)
    assert r.status_code == 400
    assert _message(r) == "Could not load input image. Cause: Malformed base64 input image."
    r = requests.post(url, data=b"\x00\x01\xfe\xff" * 10, headers={"Content-Type": "text/plain"}, timeout=30)
    assert r.status_code == 400
    assert "raw bytes instead of a base64-encoded string" in _message(r)
    r = requests.post(url, data=base64.b64encode(b"hello world"), headers={"Content-Type": "text/plain"}, timeout=30)
    assert r.status_code == 400
    assert _message(r) == "Could not load input image. Cause: Data is not image."
    r = requests.post(url + "?image_type=numpy", data=b"\x93NUMPY", headers={"Content-Type": "text/plain"}, timeout=30)
    assert r.status_code == 400
    assert "NumPy image type is not supported" in _message(r)


def test_legacy_confidence_and_overlap_are_percentages(http_server: Server, b64: str) -> None:
    def preds(query: str) -> list[dict[str, Any]]:
        r = requests.post(f"{http_server.url}/{DET}?{query}", data=b64, headers={"Content-Type": "text/plain"},
                          timeout=60)
        assert r.status_code == 200, r.text
        return list(r.json()["predictions"])

    half = preds("confidence=50")
    assert half
    assert all(p["confidence"] >= 0.5 for p in half), [p["confidence"] for p in half]
    assert [p["confidence"] for p in half] == [p["confidence"] for p in preds("confidence=0.5")]
    floor = preds("confidence=1&overlap=90")  # 1 -> 0.01; 90 -> 0.9
    assert len(floor) > len(half)
    assert min(p["confidence"] for p in floor) >= 0.01
    assert len(preds("confidence=1&overlap=90")) >= len(preds("confidence=1&overlap=0.1"))
    assert len(preds("confidence=best")) == len(preds("confidence=0.4"))
    assert len(preds("confidence=0.01&max_detections=2")) == 2
    r = requests.post(f"{http_server.url}/{DET}?confidence=lots", data=b64, headers={"Content-Type": "text/plain"},
                      timeout=30)
    assert r.status_code == 400
    assert "confidence" in _message(r)


def test_legacy_formats_and_unknown_parameters(http_server: Server, b64: str) -> None:
    url = f"{http_server.url}/{DET}?api_key=x&labels=True&stroke=3&disable_active_learning=False&countinference=false"
    r = requests.post(url + "&format=image", data=b64, headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "image/jpeg"
    assert cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR).shape == (480, 640, 3)
    r = requests.post(url + "&format=image_and_json", data=b64, headers={"Content-Type": "text/plain"}, timeout=60)
    vis = base64.b64decode(r.json()["visualization"])
    assert vis[:3] == b"\xff\xd8\xff"
    assert r.json()["predictions"]
    r = requests.post(url + "&format=xml", data=b64, headers={"Content-Type": "text/plain"}, timeout=60)
    assert r.status_code == 200
    assert "visualization" not in r.json()


def test_legacy_query_errors_are_422_naming_the_parameter(http_server: Server, b64: str) -> None:
    """The legacy route validates its query itself (http/v1.py): the same 422 as the other routes' models,
    located in the query; a repeated parameter counts by its first value."""
    plain = {"Content-Type": "text/plain"}
    for query, field, kind in (("max_detections=0", "max_detections", "greater_than_equal"),
                               ("stroke=thick", "stroke", "int_parsing"),
                               ("labels=maybe", "labels", "bool_parsing"),
                               ("max_detections=x&max_detections=3", "max_detections", "int_parsing")):
        r = requests.post(f"{http_server.url}/{DET}?{query}", data=b64, headers=plain, timeout=30)
        assert r.status_code == 422, (query, r.text)
        detail = r.json()["detail"]
        assert [(d["loc"], d["type"]) for d in detail] == [(["query", field], kind)], (query, detail)
    r = requests.post(f"{http_server.url}/{DET}?max_detections=1&max_detections=x&confidence=0.01", data=b64,
                      headers=plain, timeout=60)
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 1


def test_legacy_routes_do_not_capture_specific_routes(http_server: Server) -> None:
    r = requests.get(f"{http_server.url}/model/registry?api_key=None", timeout=30)
    assert r.status_code == 200
    assert "models" in r.json()
    r = requests.get(f"{http_server.url}/clear_cache", timeout=30)
    assert r.status_code == 200
    assert r.json() == "Cache Cleared"
    r = requests.get(f"{http_server.url}/start/{DET}", timeout=60)
    assert r.json() == {"status": 200, "message": "inference session started from local memory."}
    for path in ("/infer/workflows", "/workflows/run", "/infer/workflows/ws/flow", "/ws/workflows/flow",
                 "/infer/semantic_segmentation", "/clip/embed_image", "/yolo_world/infer",
                 "/perception_encoder/embed_image", "/sam3/concept_segment", "/sam3_3d/infer"):
        r = requests.post(http_server.url + path, json={}, timeout=30)
        assert r.status_code == 501
        assert _message(r) == f"Not supported by edge-agent: {path}"


def test_legacy_url_policy_errors(http_server: Server) -> None:
    cases = {
        "http://example.com/a.jpg": "Providing images via non https:// URL is not supported",
        "https://127.0.0.1/a.jpg": "Providing images via URL without FQDN is not supported",
        "https://localhost/a.jpg": "Providing images via URL without FQDN is not supported",
    }
    for url, message in cases.items():
        r = requests.get(f"{http_server.url}/{DET}", params={"image": url}, timeout=30)
        assert r.status_code == 400, url
        assert message in _message(r), url
    r = requests.get(f"{http_server.url}/{DET}", timeout=30)
    assert r.status_code == 400
    assert _message(r) == "Content-Type header not provided with request."


# ------------------------------------------------------------------------------------------- v2


def test_v2_batch_list_in_list_out(http_server: Server, b64: str) -> None:
    body = {"model_id": DET, "id": "req-1", "image": [_image(b64), _image(b64), _image(b64)]}
    r = _v2(http_server, "object_detection", body)
    assert r.status_code == 200
    out = r.json()
    assert isinstance(out, list)
    assert len(out) == 3
    assert {o["inference_id"] for o in out} == {"req-1"}
    ids = [p["detection_id"] for o in out for p in o["predictions"]]
    assert len(ids) == len(set(ids))
    assert out[0]["predictions"][0].keys() == out[2]["predictions"][0].keys()
    one = _v2(http_server, "object_detection", {"model_id": DET, "image": [_image(b64)]}).json()
    assert isinstance(one, list)
    assert len(one) == 1
    bare = _v2(http_server, "object_detection", {"model_id": DET, "image": _image(b64)}).json()
    assert isinstance(bare, dict)
    assert "visualization" not in bare
    assert "frame_id" not in bare


def test_v2_every_task_and_its_shape(http_server: Server, b64: str) -> None:
    seg = _v2(http_server, "instance_segmentation", {"model_id": SEG, "image": _image(b64),
                                                     "mask_decode_mode": "fast", "response_mask_format": "rle"})
    assert seg.status_code == 200
    assert all(p["points"] for p in seg.json()["predictions"]), [
        p for p in seg.json()["predictions"] if not p["points"]]
    pose = _v2(http_server, "keypoints_detection", {"model_id": POSE, "image": _image(b64),
                                                    "keypoint_confidence": 0.5, "visualize_predictions": True})
    assert pose.status_code == 200
    for p in pose.json()["predictions"]:
        for k in p["keypoints"]:
            assert k["confidence"] >= 0.5
            assert isinstance(k["class_id"], int)
    assert base64.b64decode(pose.json()["visualization"])[:2] == b"\xff\xd8"
    cls = _v2(http_server, "classification", {"model_id": CLS, "image": _image(b64), "confidence": "best"})
    assert cls.status_code == 200
    assert set(cls.json()) >= {"predictions", "top", "confidence", "inference_id", "time"}
    assert cls.headers["X-Model-Id"] == CLS
    assert float(cls.headers["X-Processing-Time"]) > 0
    assert cls.headers["X-Model-Cold-Start"] in ("true", "false")


def test_v2_errors(http_server: Server, b64: str) -> None:
    r = _v2(http_server, "object_detection", {"image": _image(b64)})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "model_id"]
    assert r.json()["detail"][0]["type"] == "missing"
    r = requests.post(f"{http_server.url}/infer/object_detection", data="{not json",
                      headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 422
    assert r.json()["detail"]
    cases: list[tuple[str, dict[str, Any], int, str]] = [
        ("object_detection", {"model_id": "nope/1", "image": _image(b64)}, 404, NO_MODEL),
        ("object_detection", {"model_id": "no-slash", "image": _image(b64)}, 400, "model id"),
        ("object_detection", {"model_id": CLS, "image": _image(b64)}, 400, "/infer/classification"),
        ("object_detection", {"model_id": DET, "image": {"type": "base64", "value": "@@@"}}, 400,
         "Could not load input image. Cause: Malformed base64 input image."),
        ("object_detection", {"model_id": DET, "image": {"type": "base64", "value": 12}}, 400, "string"),
        ("object_detection", {"model_id": DET, "image": {"type": "file", "value": "/etc/passwd"}}, 400,
         "Loading images from local filesystem is disabled."),
        ("object_detection", {"model_id": DET, "image": {"type": "numpy", "value": "AAAA"}}, 400,
         "NumPy image type is not supported in this configuration of `inference`."),
        ("object_detection", {"model_id": DET, "image": {"type": "pil", "value": "x"}}, 400, "in-process"),
        ("object_detection", {"model_id": DET, "image": {"type": "jpeg2000", "value": "x"}}, 400,
         "Image declaration contains not recognised image type."),
        ("object_detection", {"model_id": DET, "image": {"type": "URL", "value": "http://example.com/a.jpg"}}, 400,
         "non https://"),
        ("object_detection", {"model_id": DET, "image": []}, 400, "empty"),
        ("object_detection", {"model_id": DET, "image": [_image(b64)] * 17}, 400,
         "Batch too large: at most 16 images per request."),
        ("object_detection", {"model_id": DET, "image": _image(b64), "confidence": 3}, 400, "confidence"),
        ("instance_segmentation", {"model_id": SEG, "image": _image(b64), "mask_decode_mode": "slow"}, 400,
         "Invalid mask decode argument sent. tradeoff_factor must be in [0.0, 1.0], mask_decode_mode: must be one "
         "of ['accurate', 'fast', 'tradeoff']"),
        ("no_such_task", {"model_id": DET, "image": _image(b64)}, 404, "Unknown task 'no_such_task'"),
    ]
    for task, body, status, message in cases:
        r = _v2(http_server, task, body)
        assert r.status_code == status, (body, r.text)
        assert message in _message(r), (body, r.text)
    deep = "[" * 100_000 + "]" * 100_000
    for path, text in (("/infer/object_detection", deep), ("/model/add", deep),
                       ("/infer/object_detection", '{"model_id": "shapes/1", "image": ' + deep + "}")):
        r = requests.post(http_server.url + path, data=text, headers={"Content-Type": "application/json"}, timeout=30)
        assert r.status_code == 400
        assert "nested too deeply" in _message(r)
    r = requests.get(f"{http_server.url}/no/such/route/here", timeout=30)
    assert r.status_code == 404
    assert r.json() == {"detail": "Not Found"}


def test_unknown_fields_and_api_key_none_are_ignored(http_server: Server, b64: str) -> None:
    body = {"model_id": DET, "image": _image(b64), "api_key": None, "disable_active_learning": False,
            "source": "x", "allow_reduced_mask_resolution": False, "usage_billable": True, "start": 3}
    assert _v2(http_server, "object_detection", body).status_code == 200
    r = requests.post(f"{http_server.url}/model/add?api_key=None", json={"model_id": DET, "api_key": None},
                      timeout=60)
    assert r.status_code == 200
    assert DET in [m["model_id"] for m in r.json()["models"]]
    assert r.json()["gpu_memory_total"] is None  # management responses keep their null keys


def test_model_management_errors(http_server: Server) -> None:
    r = requests.post(f"{http_server.url}/model/add", json={"model_id": "nope/3"}, timeout=30)
    assert r.status_code == 404
    assert _message(r) == NO_MODEL
    assert r.json()["reason"] == "Model 'nope/3' is not in this device's model store."  # no paths
    r = requests.post(f"{http_server.url}/model/remove", json={"model_id": "never/1"}, timeout=30)
    assert r.status_code == 200
    r = requests.post(f"{http_server.url}/model/clear", timeout=30)
    assert r.status_code == 200
    assert r.json()["models"] == []


def test_service_routes_and_metrics(http_server: Server, b64: str) -> None:
    assert requests.get(f"{http_server.url}/healthz", timeout=10).json() == {"status": "healthy"}
    assert requests.get(f"{http_server.url}/readiness", timeout=10).json() == {"status": "ready"}
    landing = requests.get(f"{http_server.url}/", timeout=10)  # the console (tests/test_console.py), linking /docs
    assert landing.status_code == 200
    assert 'href="docs"' in landing.text
    doc = requests.get(f"{http_server.url}/openapi.json", timeout=10).json()
    assert doc["info"]["title"] == "edge-agent"
    assert "/infer/object_detection" in doc["paths"]
    assert "/{project}/{version}" in doc["paths"]
    assert "/model/registry" in doc["paths"]
    answer = _v2(http_server, "object_detection", {"model_id": DET, "image": _image(b64)})
    text = requests.get(f"{http_server.url}/metrics", timeout=10).text
    for needle in ('edge_agent_http_requests_total{model="shapes/1",route="/infer/object_detection",status="200"}',
                   'edge_agent_http_request_duration_seconds_bucket{le="0.5",model="shapes/1"',
                   'edge_agent_batch_size_count{model="shapes/1"}',
                   'edge_agent_model_load_seconds{model="shapes/1"}', "edge_agent_models_loaded "):
        assert needle in text, needle
    # CORS (docs/http-api.md §1.5): every answer allows the configured origins; the allowed headers and
    # methods come with a browser's preflight only.
    assert answer.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Methods" not in answer.headers
    assert "Access-Control-Allow-Headers" not in answer.headers
    preflight = requests.options(f"{http_server.url}/infer/object_detection", timeout=10, headers={
        "Origin": "http://elsewhere.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert preflight.headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type"
    assert "DELETE" in preflight.headers["Access-Control-Allow-Methods"]  # DELETE /models/{project}/{version}


# ------------------------------------------------------------------------------------------- configured servers


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    settings = {"api_key": "s3cret", "max_body_bytes": "300000", "max_image_pixels": "400000",
                "max_batch_images": "2", "allow_numpy": "true"}
    with running_server(tmp_path_factory.mktemp("strict"), settings) as server:
        yield server


def test_api_key_channels(strict_server: Server, b64: str) -> None:
    url = strict_server.url
    body = {"model_id": DET, "image": _image(b64)}
    r = _v2(strict_server, "object_detection", body)
    assert r.status_code == 401
    assert r.json() == {"status": 401, "message": "Unauthorized api_key"}
    # A browser's preflight carries no key, and is answered (the request it announces needs the key).
    preflight = requests.options(f"{url}/infer/object_detection", timeout=10, headers={
        "Origin": "http://elsewhere.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type"
    assert _v2(strict_server, "object_detection", {**body, "api_key": "wrong"}).status_code == 401
    assert _v2(strict_server, "object_detection", {**body, "api_key": "s3cret"}).status_code == 200
    assert _v2(strict_server, "object_detection", body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert requests.post(f"{url}/infer/object_detection?api_key=s3cret", json=body, timeout=60).status_code == 200
    r = requests.post(f"{url}/{DET}?api_key=s3cret", data=b64, headers={"Content-Type": "text/plain"}, timeout=60)
    assert r.status_code == 200
    assert requests.get(f"{url}/model/registry?api_key=None", timeout=10).status_code == 401
    for open_path in ("/", "/docs", "/redoc", "/openapi.json", "/info", "/healthz", "/readiness", "/metrics"):
        assert requests.get(url + open_path, timeout=10).status_code == 200, open_path


def test_limits(strict_server: Server, b64: str) -> None:
    headers = {"Authorization": "Bearer s3cret"}
    small = base64.b64encode(cv2.imencode(".png", np.zeros((100, 100, 3), np.uint8))[1].tobytes()).decode()
    r = _v2(strict_server, "object_detection", {"model_id": DET, "image": [_image(small)] * 3}, headers=headers)
    assert r.status_code == 400
    assert _message(r) == "Batch too large: at most 2 images per request."
    big = base64.b64encode(cv2.imencode(".png", np.zeros((700, 700, 3), np.uint8))[1].tobytes()).decode()
    r = _v2(strict_server, "object_detection", {"model_id": DET, "image": _image(big)}, headers=headers)
    assert r.status_code == 400
    assert _message(r) == "Could not load input image. Cause: Image exceeds the maximum of 400000 pixels."
    r = _v2(strict_server, "object_detection", {"model_id": DET, "image": _image("A" * 400_000)}, headers=headers)
    assert r.status_code == 413
    assert _message(r) == "Request body too large. Limit: 300000 bytes."
    r = requests.post(f"{strict_server.url}/{DET}", data=b"A" * 400_000, timeout=30,
                      headers={**headers, "Content-Type": "text/plain"})
    assert r.status_code == 413


def test_numpy_input_never_unpickles(strict_server: Server, tmp_path: Path) -> None:
    headers = {"Authorization": "Bearer s3cret", "Content-Type": "application/octet-stream"}
    image = generate_scene(3, size=(150, 200)).image  # .npy in base64 stays under the 300 kB body limit
    buf = io.BytesIO()
    np.save(buf, image, allow_pickle=False)
    npy = buf.getvalue()
    r = requests.post(f"{strict_server.url}/{DET}?image_type=numpy", data=npy, headers=headers, timeout=60)
    assert r.status_code == 200
    assert r.json()["image"] == {"width": 200, "height": 150}
    body = {"model_id": DET, "image": {"type": "numpy", "value": base64.b64encode(npy).decode()}}
    assert _v2(strict_server, "object_detection", body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_Evil(str(marker)))
    buf = io.BytesIO()
    np.save(buf, np.array([_Evil(str(marker))], dtype=object), allow_pickle=True)
    for payload in (evil, buf.getvalue()):
        r = requests.post(f"{strict_server.url}/{DET}?image_type=numpy", data=payload, headers=headers, timeout=30)
        assert r.status_code == 400
        assert _message(r) == "Could not load input image. Cause: Could not deserialize pickle payload."
    assert not marker.exists()
    buf = io.BytesIO()
    np.save(buf, np.zeros((8, 8, 4), np.uint8))
    r = requests.post(f"{strict_server.url}/{DET}?image_type=numpy", data=buf.getvalue(), headers=headers, timeout=30)
    assert r.status_code == 400
    assert "expected 1 or 3 channels" in _message(r)


class _Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (Path.touch, (Path(self.path),))


def test_readiness_reports_a_failed_preload(tmp_path: Path) -> None:
    with running_server(tmp_path / "state", {"preload_models": "shapes/1,nope/9"}, wait_ready=False) as server:
        for _ in range(100):
            r = requests.get(f"{server.url}/readiness", timeout=10)
            if "nope/9" in r.json().get("reason", ""):
                break
            threading.Event().wait(0.1)
        assert r.status_code == 503
        assert r.json()["status"] == "not ready"
        assert "nope/9" in r.json()["reason"]
        assert requests.get(f"{server.url}/healthz", timeout=10).status_code == 200
        registry = requests.get(f"{server.url}/model/registry", timeout=10).json()
        assert [m["model_id"] for m in registry["models"]] == ["shapes/1"]


# ------------------------------------------------------------------------------------------- URLs and TLS


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory, jpeg: bytes) -> Path:
    """A self-signed certificate for 127.0.0.1 and a JPEG to serve (tests that ask for this are marked
    needs_openssl)."""
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem"), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    (folder / "www").mkdir()
    (folder / "www" / "scene.jpg").write_bytes(jpeg)
    (folder / "www" / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def https_url(tls_files: Path) -> Iterator[str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tls_files / "www"))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tls_files / "cert.pem", tls_files / "key.pem")
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@needs_openssl
def test_image_urls_over_tls(tmp_path: Path, tls_files: Path, https_url: str) -> None:
    """A device configured to trust a local HTTPS host fetches from it; certificates are checked."""
    settings = {"allow_urls_without_fqdn": "true", "allow_non_global_urls": "true", "preload_models": DET}
    env = {"SSL_CERT_FILE": str(tls_files / "cert.pem")}
    with running_server(tmp_path / "state", settings, env_extra=env) as server:
        r = requests.get(f"{server.url}/{DET}", params={"image": f"{https_url}/scene.jpg"}, timeout=60)
        assert r.status_code == 200
        assert len(r.json()["predictions"]) >= 3
        body = {"model_id": DET, "image": {"type": "url", "value": f"{https_url}/scene.jpg"}}
        assert _v2(server, "object_detection", body).json()["image"] == {"width": 640, "height": 480}
        r = requests.get(f"{server.url}/{DET}", params={"image": f"{https_url}/notes.txt"}, timeout=60)
        assert r.status_code == 400
        assert "could not be decoded into image" in _message(r)
        r = requests.get(f"{server.url}/{DET}", params={"image": f"{https_url}/missing.jpg"}, timeout=60)
        assert r.status_code == 400
    with running_server(tmp_path / "state2", settings) as server:  # the certificate is not trusted here
        r = requests.get(f"{server.url}/{DET}", params={"image": f"{https_url}/scene.jpg"}, timeout=60)
        assert r.status_code == 400
        assert "Could not load input image" in _message(r)


# ------------------------------------------------------------------------------------------- batching


def test_concurrent_requests_are_batched_and_overload_is_a_503(tmp_path: Path, b64: str) -> None:
    settings = {"batching": "on", "max_queue_delay_ms": "30", "preload_models": DET}
    with running_server(tmp_path / "state", settings) as server:
        body = {"model_id": DET, "image": _image(b64)}
        with ThreadPoolExecutor(6) as pool:
            statuses = list(pool.map(lambda _: _v2(server, "object_detection", body).status_code, range(12)))
        assert statuses == [200] * 12
        text = requests.get(f"{server.url}/metrics", timeout=10).text
        count = _metric(text, 'edge_agent_batch_size_count{model="shapes/1"}')
        total = _metric(text, 'edge_agent_batch_size_sum{model="shapes/1"}')
        assert total == 12
        assert count < 12  # some engine runs served several requests
        assert 'edge_agent_queue_depth{model="shapes/1"} 0.0' in text
    settings = {"batching": "on", "max_queue": "1", "max_batch": "1", "preload_models": DET, "threads": "16"}
    with running_server(tmp_path / "state3", settings) as server:
        body = {"model_id": DET, "image": [_image(b64)] * 4}
        with ThreadPoolExecutor(12) as pool:
            responses = list(pool.map(lambda _: _v2(server, "object_detection", body), range(24)))
        assert {r.status_code for r in responses} <= {200, 503}
        refused = [r for r in responses if r.status_code == 503]
        assert refused, "a queue of one under 24 concurrent requests of 4 images must refuse some"
        for r in refused:
            assert r.headers["Retry-After"] == "1"
            assert _message(r) == "Model is temporarily not ready - retry request."
        assert requests.get(f"{server.url}/healthz", timeout=10).status_code == 200


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics")


def test_openapi_declares_the_request_schemas(http_server: Server) -> None:
    doc = requests.get(f"{http_server.url}/openapi.json", timeout=10).json()
    schemas = doc["components"]["schemas"]
    assert {"DetectionRequest", "SegmentationRequest", "KeypointsRequest", "ClassificationRequest",
            "ModelAddRequest"} <= set(schemas)
    assert schemas["SegmentationRequest"]["properties"]["mask_decode_mode"]["default"] == "accurate"
    assert json.dumps(doc).count("cdn") == 0


def test_an_engine_error_answers_500_without_its_detail(tmp_path: Path) -> None:
    """A member of the error tree with no code of its own (here the engines' branch) is answered by the
    one error handler as an internal error: its text, which names a local path, stays in the log."""
    from edge_agent.http.app import create_app
    from edge_agent.runtime import Runtime
    from edge_agent.settings import Settings
    from engines import EngineRunError

    runtime = Runtime(Settings.defaults(tmp_path))
    app = create_app(runtime.http_services())

    @app.get("/boom", doc_ui=False)
    def boom() -> Any:
        raise EngineRunError("run failed for /var/lib/edge-agent/models/shapes/1/model.onnx")

    try:
        r = app.test_client().get("/boom")
    finally:
        runtime.stop()
    assert r.status_code == 500
    assert r.get_json() == {"message": "Internal error.", "error": "internal_error"}


def test_no_session_is_kept_and_a_write_to_one_is_an_internal_error(tmp_path: Path) -> None:
    """The app keeps no sessions (no secret key): every request shares one null session, empty to read, and
    a view that writes to it fails as under Flask's own null session, as an internal error."""
    from flask import session

    from edge_agent.http.app import create_app
    from edge_agent.runtime import Runtime
    from edge_agent.settings import Settings

    runtime = Runtime(Settings.defaults(tmp_path))
    app = create_app(runtime.http_services())

    @app.get("/read-session", doc_ui=False)
    def read_session() -> Any:
        return {"keys": sorted(session.keys())}

    @app.get("/write-session", doc_ui=False)
    def write_session() -> Any:
        session["user"] = "x"
        return {}

    try:
        client = app.test_client()
        assert client.get("/read-session").get_json() == {"keys": []}
        written = client.get("/write-session")
        assert client.get("/read-session").get_json() == {"keys": []}
        assert "Set-Cookie" not in written.headers
    finally:
        runtime.stop()
    assert written.status_code == 500
    assert written.get_json() == {"message": "Internal error."}
