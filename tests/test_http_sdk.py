"""Roboflow's own client (inference-sdk 1.8.3) and supervision against the real daemon (docs/http-api.md §7.11).

Every call goes through gunicorn on a loopback port to the demo models of the built-in store; results
are compared with the ground truth of generated scenes and with the in-process Python API.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import http.server
import importlib.metadata
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import requests
import supervision as sv
from PIL import Image

from edge_agent.demo.shapes import CLASSES, generate_classification, generate_scene
from metrics import match

inference_sdk = pytest.importorskip("inference_sdk", reason="inference-sdk is installed by .ci/run (--no-deps)")
from inference_sdk import InferenceConfiguration, InferenceHTTPClient  # noqa: E402
from inference_sdk.http.errors import HTTPCallErrorError  # noqa: E402

DET, SEG, POSE, CLS = "shapes/1", "shapes-seg/1", "shapes-pose/1", "shapes-cls/1"
TASKS = {DET: "object-detection", SEG: "instance-segmentation", POSE: "keypoint-detection", CLS: "classification"}


def _scene(seed: int, size: tuple[int, int] = (480, 640)) -> Any:
    return generate_scene(seed, size=size, max_objects=5)


@pytest.fixture(scope="module")
def scene() -> Any:
    return _scene(3)


@pytest.fixture()
def client(http_server: Any) -> InferenceHTTPClient:
    return InferenceHTTPClient(http_server.url, api_key="test-key")


def _boxes(result: dict[str, Any]) -> np.ndarray:
    return np.array([[p["x"] - p["width"] / 2, p["y"] - p["height"] / 2, p["x"] + p["width"] / 2,
                      p["y"] + p["height"] / 2] for p in result["predictions"]], dtype=np.float32).reshape(-1, 4)


def _summary(result: dict[str, Any]) -> list[tuple[str, float, float]]:
    return [(p["class"], round(p["x"]), round(p["y"])) for p in result["predictions"]]


def _recall(result: dict[str, Any], scene: Any) -> float:
    pred_ids = np.array([CLASSES.index(p["class"]) for p in result["predictions"]], dtype=np.int64)
    pairs = match(_boxes(result), pred_ids, scene.boxes, scene.class_ids, 0.5)
    return len(pairs) / max(1, len(scene.boxes))


def test_the_daemon_and_the_client_share_the_headless_opencv() -> None:
    """inference-sdk requires opencv-python; installed with --no-deps, the headless build stays the only cv2."""
    assert "opencv-python-headless" in {d.metadata["Name"] for d in importlib.metadata.distributions()}
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.distribution("opencv-python")
    import cv2 as imported

    assert imported.__version__ == importlib.metadata.version("opencv-python-headless").rsplit(".", 1)[0]


def test_server_info(client: InferenceHTTPClient) -> None:
    info = client.get_server_info()
    assert info.name == "edge-agent"
    assert info.version
    assert info.uuid
    assert client.get_server_info().uuid == info.uuid  # stable


def test_load_list_unload(client: InferenceHTTPClient, http_server: Any) -> None:
    client.unload_all_models()
    assert client.list_loaded_models().models == []
    for _ in range(2):
        client.load_model(DET)
    models = client.list_loaded_models().models
    assert [m.model_id for m in models] == [DET]
    assert models[0].task_type == "object-detection"
    assert (models[0].input_height, models[0].input_width) == (320, 320)
    client.load_model(CLS)
    client.unload_model(DET)
    assert [m.model_id for m in client.list_loaded_models().models] == [CLS]
    client.unload_all_models()
    assert client.list_loaded_models().models == []
    # The store is untouched: the model loads again.
    client.load_model(DET)
    assert [m.model_id for m in client.list_loaded_models().models] == [DET]


@pytest.mark.parametrize("model_id", [DET, SEG, POSE])
def test_v2_detection_family_with_supervision(client: InferenceHTTPClient, scene: Any, model_id: str) -> None:
    result = client.infer(scene.image, model_id=model_id)
    assert isinstance(result, dict)
    assert result["image"] == {"width": 640, "height": 480}
    assert _recall(result, scene) >= 0.6
    detections = sv.Detections.from_inference(result)
    assert len(detections) == len(result["predictions"]) > 0
    assert set(detections.data["class_name"]) <= set(CLASSES)
    if model_id == SEG:
        assert detections.mask is not None
        assert detections.mask.shape == (len(detections), 480, 640)
        assert detections.mask.sum(axis=(1, 2)).min() > 0
    if model_id == POSE:
        keypoints = sv.KeyPoints.from_inference(result)
        assert len(keypoints) == len(detections)
        assert keypoints.xy.shape[2] == 2
        assert keypoints.xy.shape[1] >= 3


def test_v2_classification(client: InferenceHTTPClient) -> None:
    hits = 0
    for seed in range(8):
        image, truth = generate_classification(seed, size=(160, 160))
        result = client.infer(image, model_id=CLS)
        assert result["image"] == {"width": 160, "height": 160}
        assert isinstance(result["predictions"], list)
        assert "top" in result
        assert "confidence" in result
        hits += result["top"] == CLASSES[truth]
    assert hits >= 4  # the demo classifier's top-1 is ~0.64 (docs/demo-models.md)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory: pytest.TempPathFactory, scene: Any) -> Path:
    folder = tmp_path_factory.mktemp("images")
    cv2.imwrite(str(folder / "scene.jpg"), scene.image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return folder


@pytest.fixture(scope="module")
def image_url(image_files: Path) -> Iterator[str]:
    """A plain HTTP server on loopback serving the scene (the SDK downloads URLs itself, docs/http-api.md §7.4)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(image_files))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/scene.jpg"
    httpd.shutdown()
    httpd.server_close()


def _key(result: dict[str, Any]) -> Any:
    """What must not change between input forms: the objects found (or the top class)."""
    if "top" in result:
        return result["top"]
    return _summary(result)


@pytest.mark.parametrize("model_id", [DET, SEG, POSE, CLS])
def test_every_input_form_gives_the_same_predictions(client: InferenceHTTPClient, image_files: Path,
                                                     image_url: str, model_id: str) -> None:
    path = image_files / "scene.jpg"
    data = path.read_bytes()
    forms = {
        "path": client.infer(str(path), model_id=model_id),
        "base64": client.infer(base64.b64encode(data).decode(), model_id=model_id),
        "url": client.infer(image_url, model_id=model_id),
        "numpy": client.infer(cv2.imread(str(path)), model_id=model_id),
        "pil": client.infer(Image.open(path), model_id=model_id),
    }
    exact = _key(forms["path"])
    assert exact, "the scene has objects"
    assert _key(forms["base64"]) == exact
    assert _key(forms["url"]) == exact
    for name in ("numpy", "pil"):  # re-encoded as JPEG by the client: same objects, boxes within pixels
        other = forms[name]
        if model_id == CLS:
            assert other["top"] == exact, name
            continue
        assert [p[0] for p in _key(other)] == [p[0] for p in exact], name
        assert np.abs(_boxes(other) - _boxes(forms["path"])).max() < 4.0, name
    if model_id != CLS:
        for result in forms.values():
            assert len(sv.Detections.from_inference(result)) == len(exact)


def test_batches_come_back_in_order(http_server: Any) -> None:
    scenes = [_scene(s) for s in (21, 22, 23)]
    images = [s.image for s in scenes]
    client = InferenceHTTPClient(http_server.url, api_key="k")
    single = [client.infer(im, model_id=DET) for im in images]
    configs = [InferenceConfiguration(), InferenceConfiguration(max_batch_size=2),
               InferenceConfiguration(max_concurrent_requests=3),
               InferenceConfiguration(max_batch_size=2, max_concurrent_requests=2)]
    for config in configs:
        client.configure(config)
        results = client.infer(images, model_id=DET)
        assert isinstance(results, list)
        assert len(results) == 3
        assert [_summary(r) for r in results] == [_summary(r) for r in single]
        assert [len(sv.Detections.from_inference(r)) for r in results] == [len(r["predictions"]) for r in single]
    one = client.infer([images[0]], model_id=DET)
    assert isinstance(one, dict)


def test_configuration_changes_results(client: InferenceHTTPClient, scene: Any) -> None:
    base = client.infer(scene.image, model_id=DET)
    n = len(base["predictions"])
    assert n >= 2
    classes = [p["class"] for p in base["predictions"]]
    client.configure(InferenceConfiguration(confidence_threshold=0.99))
    strict = client.infer(scene.image, model_id=DET)
    assert all(p["confidence"] >= 0.99 for p in strict["predictions"]), [p["confidence"] for p in strict["predictions"]]
    assert len(strict["predictions"]) < n
    client.configure(InferenceConfiguration(class_filter=[classes[0]]))
    assert {p["class"] for p in client.infer(scene.image, model_id=DET)["predictions"]} == {classes[0]}
    client.configure(InferenceConfiguration(max_detections=1))
    assert len(client.infer(scene.image, model_id=DET)["predictions"]) == 1
    client.configure(InferenceConfiguration(confidence_threshold=0.05, iou_threshold=0.05, class_agnostic_nms=True))
    agnostic = client.infer(scene.image, model_id=DET)["predictions"]
    client.configure(InferenceConfiguration(confidence_threshold=0.05, iou_threshold=0.95))
    loose = client.infer(scene.image, model_id=DET)["predictions"]
    assert len(loose) > len(agnostic)


@pytest.mark.parametrize("fmt", ["base64", "numpy", "pillow"])
def test_visualisation_formats(client: InferenceHTTPClient, scene: Any, fmt: str) -> None:
    client.configure(InferenceConfiguration(visualize_predictions=True, output_visualisation_format=fmt,
                                            visualize_labels=True))
    result = client.infer(scene.image, model_id=SEG)
    vis = result["visualization"]
    if fmt == "base64":
        decoded = cv2.imdecode(np.frombuffer(base64.b64decode(vis), np.uint8), cv2.IMREAD_COLOR)
        assert decoded.shape == scene.image.shape
    elif fmt == "numpy":
        assert isinstance(vis, np.ndarray)
        assert vis.shape == scene.image.shape
    else:
        assert vis.size == (640, 480)


def test_client_downsizing_keeps_original_coordinates(client: InferenceHTTPClient) -> None:
    big = _scene(31, size=(3000, 4000))
    client.configure(InferenceConfiguration(client_downsizing_disabled=False))
    result = client.infer(big.image, model_id=DET)
    assert result["image"] == {"width": 4000, "height": 3000}
    assert _recall(result, big) >= 0.6


def test_async_client(client: InferenceHTTPClient, scene: Any) -> None:
    async def run_all() -> list[Any]:
        return list(await asyncio.gather(*(client.infer_async(scene.image, model_id=m) for m in TASKS)))

    results = asyncio.run(run_all())
    for model_id, result in zip(TASKS, results):
        assert result["image"] == {"width": 640, "height": 480}, model_id
        assert result["predictions"] or model_id == CLS


def test_legacy_mode_matches_v2(client: InferenceHTTPClient, scene: Any) -> None:
    v2 = {m: client.infer(scene.image, model_id=m) for m in (DET, SEG, POSE)}
    client.select_api_v0()
    for model_id, expected in v2.items():
        legacy = client.infer(scene.image, model_id=model_id)
        assert _summary(legacy) == _summary(expected), model_id
        assert len(sv.Detections.from_inference(legacy)) == len(expected["predictions"])
        if model_id == SEG:
            assert [p["points"] for p in legacy["predictions"]] == [p["points"] for p in expected["predictions"]]
    image, _ = generate_classification(3, size=(160, 160))
    assert client.infer(image, model_id=CLS)["top"] in CLASSES
    client.configure(InferenceConfiguration(format="image"))
    drawn = client.infer(scene.image, model_id=DET)
    assert set(drawn) == {"visualization"}
    jpeg = base64.b64decode(drawn["visualization"])
    assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == scene.image.shape


def test_legacy_keypoint_threshold(client: InferenceHTTPClient, scene: Any) -> None:
    client.select_api_v0()
    every = client.infer(scene.image, model_id=POSE)
    client.configure(InferenceConfiguration(keypoint_confidence_threshold=0.5))
    some = client.infer(scene.image, model_id=POSE)
    all_kp = [k for p in every["predictions"] for k in p["keypoints"]]
    kept = [k for p in some["predictions"] for k in p["keypoints"]]
    assert kept
    assert all(k["confidence"] >= 0.5 for k in kept), [k["confidence"] for k in kept]
    assert len(kept) == sum(k["confidence"] >= 0.5 for k in all_kp)


def test_without_key_and_with_header_transport(http_server: Any, scene: Any) -> None:
    no_key = InferenceHTTPClient(http_server.url)
    assert no_key.infer(scene.image, model_id=DET)["predictions"]
    header = InferenceHTTPClient(http_server.url, api_key="k")
    header.configure(InferenceConfiguration(api_key_transport="header"))
    assert header.infer(scene.image, model_id=DET)["predictions"]


def _count(http_server: Any, route: str, status: str) -> float:
    text = requests.get(http_server.url + "/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("edge_agent_http_requests_total{") and f'route="{route}"' in line \
                and f'status="{status}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_unknown_model_fails_fast(client: InferenceHTTPClient, http_server: Any, scene: Any) -> None:
    before = _count(http_server, "/model/add", "404")
    with pytest.raises(HTTPCallErrorError) as err:
        client.infer(scene.image, model_id="no-such/7")
    assert err.value.status_code == 404
    assert "not found" in err.value.api_message
    assert _count(http_server, "/model/add", "404") == before + 1  # one request, no retries
    client.select_api_v0()
    before = _count(http_server, "/<project>/<version>", "404")
    with pytest.raises(HTTPCallErrorError) as err:
        client.infer(scene.image, model_id="no-such/7")
    assert err.value.status_code == 404
    assert _count(http_server, "/<project>/<version>", "404") == before + 1
