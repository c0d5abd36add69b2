"""Roboflow's Python results: ``get_model(...).infer(...)`` returns a list of Roboflow's response objects
(edge_agent/responses.py), one per image, that agree with the HTTP JSON and that supervision reads
directly; unknown Roboflow options are ignored; a missing file is said to be missing. Real demo models."""

from __future__ import annotations

import http.server
import json
import logging
import shutil
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import supervision as sv

import edge_agent
from edge_agent import responses
from edge_agent.demo.shapes import generate_scene
from edge_agent.errors import ImageLoadError
from edge_agent.images import ImageLimits, load_image
from edge_agent.results import Classification, Detections
from edge_agent.roboflow_json import to_roboflow
from edge_agent.serving.model import Model
from onnx_builders import constant_model

SAMPLE = Path(edge_agent.__file__).parent / "demo" / "sample.jpg"
SCENE = generate_scene(3, size=(300, 400)).image
TASKS = {
    "shapes/1": responses.ObjectDetectionInferenceResponse,
    "shapes-seg/1": responses.InstanceSegmentationInferenceResponse,
    "shapes-pose/1": responses.KeypointsDetectionInferenceResponse,
    "shapes-cls/1": responses.ClassificationInferenceResponse,
}


@pytest.fixture(scope="module")
def models() -> Iterator[dict[str, Model]]:
    """The four demo models, loaded once (the state dir of the first test: demo ids are built in)."""
    loaded = {model_id: edge_agent.get_model(model_id) for model_id in TASKS}
    yield loaded
    for model in loaded.values():
        model.close()


def _http_json(response: responses.CvInferenceResponse) -> dict[str, Any]:
    """What HTTP answers for the same numpy result, with the response's detection ids (fresh per call)."""
    assert response.result is not None
    body = to_roboflow(response.result, response.inference_id)
    if isinstance(body["predictions"], list):
        for want, got in zip(body["predictions"], response.predictions):
            if "detection_id" in want:
                want["detection_id"] = got.detection_id
    return body


@pytest.mark.parametrize("model_id", list(TASKS))
def test_one_image_gives_a_list_of_one_response_of_roboflow_class(models: dict[str, Model], model_id: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydantic's deprecated dict()/json() would warn here
        results = models[model_id].infer(SCENE, confidence=0.2)
        assert isinstance(results, list) and len(results) == 1
        response = results[0]
        assert type(response) is TASKS[model_id]
        assert (response.image.width, response.image.height) == (400, 300)
        assert response.time is not None and response.time > 0
        assert response.inference_id and response.frame_id is None
        body = response.dict(by_alias=True, exclude_none=True)
        assert body == _http_json(response)
        assert json.loads(response.json(by_alias=True, exclude_none=True)) == body
        assert "visualization" in response.model_dump() and "visualization" not in body
    first = response.predictions[0]
    assert body["predictions"][0]["class"] == first.class_name  # alias "class" in the JSON
    assert "class" not in response.dict()["predictions"][0]  # field names without by_alias, as pydantic
    assert isinstance(response.result, Classification if model_id == "shapes-cls/1" else Detections)


def test_detection_attributes_match_the_numpy_result(models: dict[str, Model]) -> None:
    response = models["shapes/1"].infer(image=SCENE)[0]
    numpy = models["shapes/1"].infer_numpy(SCENE)
    assert isinstance(numpy, Detections) and len(numpy) == len(response.predictions) > 0
    for i, p in enumerate(response.predictions):
        x0, y0, x1, y1 = numpy.xyxy[i]
        assert (p.x, p.y, p.width, p.height) == pytest.approx(((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0),
                                                              abs=0.06)
        assert p.confidence == pytest.approx(float(numpy.confidence[i]), abs=1e-4)
        assert (p.class_id, p.class_name) == (int(numpy.class_id[i]), numpy.class_name[i])
        assert len(p.detection_id) == 36 and p.tracker_id is None and p.parent_id is None
    assert len({p.detection_id for p in response.predictions}) == len(response.predictions)


def test_segmentation_points_and_keypoints_are_objects(models: dict[str, Model]) -> None:
    seg = models["shapes-seg/1"].infer(SCENE)[0]
    assert seg.predictions and all(len(p.points) >= 3 for p in seg.predictions)
    assert isinstance(seg.predictions[0].points[0], responses.Point)
    pose = models["shapes-pose/1"].infer(SCENE, keypoint_confidence=0.5)[0]
    keypoints = [k for p in pose.predictions for k in p.keypoints]
    assert keypoints and all(k.confidence >= 0.5 for k in keypoints)
    assert isinstance(keypoints[0], responses.Keypoint) and keypoints[0].class_name
    i = next(i for i, p in enumerate(pose.predictions) if p.keypoints)
    assert pose.dict(by_alias=True)["predictions"][i]["keypoints"][0]["class"] == \
        pose.predictions[i].keypoints[0].class_name
    cls = models["shapes-cls/1"].infer(SCENE, confidence=0.0)[0]
    assert cls.top == cls.predictions[0].class_name and cls.confidence == cls.predictions[0].confidence
    assert len(cls.predictions) == 4  # every class at confidence 0


@pytest.mark.parametrize("model_id", ["shapes/1", "shapes-seg/1", "shapes-pose/1"])
def test_supervision_reads_the_response_object_as_it_reads_the_http_json(
        models: dict[str, Model], model_id: str) -> None:
    response = models[model_id].infer(SCENE, confidence=0.2)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = sv.Detections.from_inference(response)
    want = sv.Detections.from_inference(_http_json(response))
    assert len(got) == len(want) > 0
    np.testing.assert_array_equal(got.xyxy, want.xyxy)
    np.testing.assert_array_equal(got.confidence, want.confidence)
    np.testing.assert_array_equal(got.class_id, want.class_id)
    np.testing.assert_array_equal(got.data["class_name"], want.data["class_name"])
    if model_id == "shapes-seg/1":
        assert got.mask is not None and want.mask is not None
        np.testing.assert_array_equal(got.mask, want.mask)
    if model_id == "shapes-pose/1":
        points, reference = sv.KeyPoints.from_inference(response), sv.KeyPoints.from_inference(_http_json(response))
        np.testing.assert_array_equal(points.xy, reference.xy)
        np.testing.assert_array_equal(points.keypoint_confidence, reference.keypoint_confidence)


def test_keypoints_dump_by_alias_as_the_http_json_and_roboflow_do(models: dict[str, Model]) -> None:
    """Roboflow's Keypoint declares ``class_name = Field(alias="class")`` (its current
    inference/core/entities/responses/inference.py; an older one wrote ``field="class"``, no alias), and
    builds keypoints with ``**{"class": name}``: ``.dict(by_alias=True)`` gives "class", as our HTTP JSON."""
    response = models["shapes-pose/1"].infer(SCENE, confidence=0.2)[0]
    dumped = response.dict(by_alias=True, exclude_none=True)["predictions"]
    http = _http_json(response)["predictions"]
    assert [p["keypoints"] for p in dumped] == [p["keypoints"] for p in http]
    assert any(p["keypoints"] for p in http) and all(set(k) == {"x", "y", "confidence", "class_id", "class"}
                                                     for p in http for k in p["keypoints"])
    assert responses.Keypoint(x=1, y=2, confidence=0.5, class_id=0, **{"class": "nose"}).class_name == "nose"


def test_a_list_of_images_gives_one_response_each_sharing_one_inference_id(models: dict[str, Model]) -> None:
    small = cv2.resize(SCENE, (200, 150))
    results = models["shapes/1"].infer(image=[SCENE, small, str(SAMPLE)])
    assert [(r.image.width, r.image.height) for r in results] == [(400, 300), (200, 150), (640, 480)]
    assert len({r.inference_id for r in results}) == 1
    numpy = models["shapes/1"].infer_numpy([SCENE, small, str(SAMPLE)])
    assert isinstance(numpy, list)
    assert [len(r.predictions) for r in results] == [len(n) for n in numpy]


def test_supported_options_apply_and_roboflow_only_ones_are_ignored(
        models: dict[str, Model], caplog: pytest.LogCaptureFixture) -> None:
    model = models["shapes/1"]
    every = model.infer(SCENE, confidence=0.05)[0].predictions
    assert len(every) > 1
    assert len(model.infer(SCENE, confidence=0.05, max_detections=1)[0].predictions) == 1
    only = every[0].class_name
    assert {p.class_name for p in model.infer(SCENE, confidence=0.05, class_filter=[only])[0].predictions} == {only}
    assert model.infer(SCENE, confidence=0.999)[0].predictions == []
    roboflow_only = {
        "fix_batch_size": True, "disable_active_learning": True, "active_learning_target_dataset": "x",
        "source": "workflow-execution", "usage_billable": False, "return_image_dims": True,
        "source_info": "pipeline", "api_key": "k", "visualize_predictions": True, "some_future_option": 1,
    }
    with caplog.at_level(logging.DEBUG, logger="edge_agent.serving.model"):
        ignored = model.infer(SCENE, confidence=0.05, iou_threshold=None, tradeoff_factor=None,
                              class_agnostic_nms=False, disable_preproc_auto_orient=True, **roboflow_only)
    assert len(ignored[0].predictions) == len(every)  # None means the default; the rest change nothing
    logged = {r.getMessage().split("ignored option ")[1].split("=")[0]: r.levelno for r in caplog.records}
    assert logged == dict.fromkeys(roboflow_only, logging.DEBUG)
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="edge_agent.serving.model"):
        assert len(model.infer(SCENE, confidance=0.9)[0].predictions) > 0  # ignored, with a warning
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "did you mean 'confidence'?" in caplog.records[0].getMessage()


def test_options_are_typed_as_on_http(models: dict[str, Model]) -> None:
    """confidence="best"/"default" is the default threshold (as on HTTP), numbers may come as text, one
    class name is a filter of one; anything else is a clear InvalidInput naming the option."""
    from edge_agent.errors import InvalidInput
    from edge_agent.serving.model import roboflow_params

    model = models["shapes/1"]
    default = model.infer(SCENE)[0].predictions
    for word in ("best", "default", "BEST"):
        assert [p.confidence for p in model.infer(SCENE, confidence=word)[0].predictions] == \
            [p.confidence for p in default]
    assert roboflow_params({"confidence": "0.25", "max_detections": "5", "iou_threshold": 1,
                            "class_filter": "circle", "max_candidates": 10.0}) == roboflow_params(
        {"confidence": 0.25, "max_detections": 5, "iou_threshold": 1.0, "class_filter": ["circle"],
         "max_candidates": 10})
    assert len(model.infer(SCENE, confidence=0.05, max_detections="1")[0].predictions) == 1
    every = model.infer(SCENE, confidence=0.05)[0].predictions
    only = every[0].class_name
    assert {p.class_name for p in model.infer(SCENE, confidence=0.05, class_filter=only)[0].predictions} == {only}
    for options, message in [
        ({"confidence": "lots"}, "confidence must be a number or \"best\"/\"default\", got 'lots'"),
        ({"max_detections": "five"}, "max_detections must be a number, got 'five'"),
        ({"max_detections": 2.5}, "max_detections must be a whole number, got 2.5"),
        ({"iou_threshold": True}, "iou_threshold must be a number, got True"),
        ({"class_filter": [1, 2]}, "class_filter must be a class name or a list of class names"),
        ({"class_agnostic_nms": "yes"}, "class_agnostic_nms must be True or False, got 'yes'"),
    ]:
        with pytest.raises(InvalidInput) as info:
            model.infer(SCENE, **options)
        assert message in info.value.message, info.value.message


def test_a_long_string_is_no_file_name(models: dict[str, Model]) -> None:
    """A string too long for a file name (ENAMETOOLONG) is read as base64, not an OSError."""
    with pytest.raises(ImageLoadError) as info:
        load_image("A" * 300)
    assert info.value.cause == "Data is not image."  # base64's answer, not the file system's
    with pytest.raises(ImageLoadError):
        models["shapes/1"].infer("A" * 5000)


def test_a_missing_file_is_said_to_be_missing(models: dict[str, Model], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ImageLoadError) as info:
        models["shapes/1"].infer("photo.jpg")
    assert info.value.cause == f"Image file 'photo.jpg' does not exist (relative to {tmp_path})."
    with pytest.raises(ImageLoadError, match=r"Image file '/no/such/dir/photo.png' does not exist\.$"):
        load_image("/no/such/dir/photo.png")
    with pytest.raises(ImageLoadError, match="'photo' is neither an existing image file nor base64 image data"):
        load_image("photo")
    (tmp_path / "photo.jpg").write_bytes(SAMPLE.read_bytes())
    assert models["shapes/1"].infer("photo.jpg")[0].image.width == 640
    assert load_image("photo.jpg").shape == cv2.imread(str(SAMPLE)).shape
    # Where files may not be read (a network caller), a string is base64 text only, as before.
    with pytest.raises(ImageLoadError) as refused:
        load_image("photo.jpg", ImageLimits(allow_files=False))
    assert refused.value.cause == "Malformed base64 input image."


def test_multilabel_classification_response(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from edge_agent.serving.loading import load_stored

    path = constant_model(tmp_path / "ml.onnx", {"output0": np.array([0.9, 0.1, 0.6], np.float32)},
                          input_hw=(32, 32))
    store.install(path, "ml/1", task="classification", class_names=("rust", "crack", "dent"))
    store.update("ml/1", multilabel=True)
    response = load_stored(store, "ml/1").infer(np.zeros((40, 40, 3), np.uint8), confidence=0.55)[0]
    assert type(response) is responses.MultiLabelClassificationInferenceResponse
    assert response.predicted_classes == ["rust", "dent"]
    assert response.predictions["dent"].confidence == pytest.approx(0.6)
    assert response.dict(by_alias=True, exclude_none=True) == _http_json(response)


def test_response_objects_are_built_from_http_json_too() -> None:
    body = {"inference_id": "i", "time": 0.1, "image": {"width": 4, "height": 3}, "predictions": [
        {"x": 1.0, "y": 1.0, "width": 2.0, "height": 2.0, "confidence": 0.9, "class": "a", "class_id": 0,
         "detection_id": "d"}]}
    response = responses.response_from_type("object-detection", body)
    assert response.result is None
    assert response.dict(by_alias=True, exclude_none=True) == body
    with pytest.raises(ValueError, match="unknown task 'depth'"):
        responses.response_from_type("depth", body)


# Roboflow's docs/using_inference/native_python_api.md, "Quickstart" (the supervision example), with
# only the import and the model id changed, and one line mended: the page indexes the response object
# a second time (``results[0].predictions`` after ``results = model.infer(image)[0]``), which raises
# TypeError under Roboflow's own package too.
NATIVE_PYTHON_API = '''
from edge_agent import get_model
import supervision as sv
import cv2

# Load model
model = get_model(model_id="shapes/1")

# Load image with cv2
image = cv2.imread("people-walking.jpg")

# Run inference
results = model.infer(image)[0]

# Load results into Supervision Detection API
detections = sv.Detections.from_inference(results)

# Create Supervision annotators
bounding_box_annotator = sv.BoxAnnotator()
label_annotator = sv.LabelAnnotator()

# Extract labels array from inference results
labels = [p.class_name for p in results.predictions]



# Apply results to image using Supervision annotators
annotated_image = bounding_box_annotator.annotate(scene=image, detections=detections)
annotated_image = label_annotator.annotate(
    scene=annotated_image, detections=detections, labels=labels
)

# Write annotated image to file or display image
sv.plot_image(annotated_image)
'''

# The same page, "Different Image Types" and "Inference Parameters" (the URL is a local server's).
IMAGE_TYPES = '''
from edge_agent import get_model

import cv2
from PIL import Image

model = get_model(model_id="shapes/1")

image_url = IMAGE_URL
local_image_file = "people-walking.jpg"
pil_image = Image.open(local_image_file)
numpy_image = cv2.imread(local_image_file)

results = model.infer(image_url)
#or     = model.infer(local_image_file)
#or     = model.infer(pil_image)
#or     = model.infer(numpy_image)
by_kind = [model.infer(i) for i in (image_url, local_image_file, pil_image, numpy_image)]

results = model.infer("people-walking.jpg", confidence=0.75, iou_threshold=0.5)
'''


@pytest.fixture
def sample_url(tmp_path: Path) -> Iterator[str]:
    shutil.copy(SAMPLE, tmp_path / "people-walking.jpg")
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="sample-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/people-walking.jpg"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_roboflow_native_python_api_docs_run_unchanged(tmp_path: Path, sample_url: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")  # headless: plt.show() draws nowhere
    shown: list[np.ndarray] = []
    monkeypatch.setattr(sv, "plot_image", lambda image, *a, **k: shown.append(image))
    scope: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        exec(compile(NATIVE_PYTHON_API, "native_python_api.md", "exec"), scope)  # noqa: S102
    assert len(scope["detections"]) == len(scope["labels"]) > 0
    assert shown and shown[0].shape == cv2.imread(str(SAMPLE)).shape
    assert not np.array_equal(shown[0], cv2.imread(str(SAMPLE)))  # boxes were drawn

    scope = {"IMAGE_URL": sample_url}
    exec(compile(IMAGE_TYPES, "native_python_api.md", "exec"), scope)  # noqa: S102
    kinds = [[(p.class_name, p.x, p.y) for p in r[0].predictions] for r in scope["by_kind"]]
    assert kinds[0] and all(k == kinds[0] for k in kinds)
    assert all(p.confidence >= 0.75 for p in scope["results"][0].predictions)


def test_settings_passed_where_the_api_key_goes_is_a_type_error(tmp_path: Path) -> None:
    from edge_agent.settings import Settings

    with pytest.raises(TypeError, match="settings is keyword-only"):
        edge_agent.get_model("shapes/1", Settings.defaults(tmp_path))  # type: ignore[arg-type]
