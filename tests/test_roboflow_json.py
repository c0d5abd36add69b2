"""The Roboflow JSON of every task has the shape of docs/http-api.md §4.6, and supervision reads it unchanged."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import supervision as sv

from edge_agent.results import Classification, Detections
from edge_agent.roboflow_json import to_roboflow, uuid4_strings
from edge_agent.serving.loading import load_stored


def _detections(**kw) -> Detections:  # type: ignore[no-untyped-def]
    base = dict(
        xyxy=np.array([[10, 20, 50, 80], [0, 0, 5, 5]], np.float32),
        confidence=np.array([0.9, 0.5], np.float32),
        class_id=np.array([1, 0], np.int64),
        class_names=("cat", "dog"),
        image_size=(100, 200),
    )
    base.update(kw)
    return Detections(**base)  # type: ignore[arg-type]


def test_detection_ids_are_distinct_uuid4_strings() -> None:
    ids = uuid4_strings(5000)
    assert len(set(ids)) == 5000
    for text in ids:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, text)
    assert uuid4_strings(0) == []


def test_detection_json_shape_and_supervision() -> None:
    body = to_roboflow(_detections(), "req-1")
    json.dumps(body)  # serialisable as is
    assert body["inference_id"] == "req-1"
    assert body["image"] == {"width": 200, "height": 100}
    first = body["predictions"][0]
    assert {k: first[k] for k in ("x", "y", "width", "height", "confidence", "class", "class_id")} == {
        "x": 30.0, "y": 50.0, "width": 40.0, "height": 60.0, "confidence": 0.9, "class": "dog", "class_id": 1}
    assert len({p["detection_id"] for p in body["predictions"]}) == 2
    for p in body["predictions"]:  # Roboflow's detection ids are str(uuid.uuid4())
        parsed = uuid.UUID(p["detection_id"])
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, p["detection_id"])
    assert not any(v is None for p in body["predictions"] for v in p.values()), [
        [k for k, v in p.items() if v is None] for p in body["predictions"]]
    det = sv.Detections.from_inference(body)
    np.testing.assert_allclose(det.xyxy, [[10, 20, 50, 80], [0, 0, 5, 5]])
    assert det.class_id.tolist() == [1, 0]
    assert list(det.data["class_name"]) == ["dog", "cat"]


def test_segmentation_json_gives_supervision_masks() -> None:
    square = np.array([[10, 20], [50, 20], [50, 80], [10, 80]], np.float32)
    small = np.array([[0, 0], [5, 0], [5, 5]], np.float32)
    body = to_roboflow(_detections(polygons=[square, small], task="instance-segmentation"))
    assert body["predictions"][0]["mask_format"] == "polygon"
    det = sv.Detections.from_inference(body)
    assert det.mask is not None
    assert det.mask.shape == (2, 100, 200)
    assert 2000 < det.mask[0].sum() < 2600


def test_empty_mask_keeps_the_detection() -> None:
    """docs/http-api.md §4.6.3: an empty mask gives "points": [] and the detection stays (supervision keeps boxes)."""
    square = np.array([[10, 20], [50, 20], [50, 80], [10, 80]], np.float32)
    body = to_roboflow(_detections(polygons=[square, np.zeros((0, 2), np.float32)], task="instance-segmentation"))
    assert body["predictions"][1]["points"] == []
    assert body["predictions"][1]["mask_format"] == "polygon"
    assert len(sv.Detections.from_inference(body)) == 2


def test_keypoint_json_gives_supervision_keypoints() -> None:
    kps = np.array([[[12, 22, 0.9], [30, 40, 0.2], [0, 0, 0.99]], [[1, 1, 0.8], [2, 2, 0.8], [3, 3, 0.8]]],
                   np.float32)
    names = [("nose", "tail"), ("nose", "tail")]  # the classes name two slots out of three
    body = to_roboflow(_detections(keypoints=kps, keypoint_names=names, keypoint_threshold=0.5))
    first = body["predictions"][0]["keypoints"]
    assert first == [{"x": 12.0, "y": 22.0, "confidence": 0.9, "class_id": 0, "class": "nose"}]
    assert len(body["predictions"][1]["keypoints"]) == 2
    key_points = sv.KeyPoints.from_inference(body)
    assert key_points.xy.shape[0] == 2
    np.testing.assert_allclose(key_points.xy[0][0], [12, 22])


@pytest.mark.parametrize(
    ("scores", "threshold", "top", "listed"),
    [([0.1, 0.7, 0.2], 0.15, "b", ["b", "c"]), ([0.1, 0.7, 0.2], 0.9, "", [])],
)
def test_single_label_classification_json(scores, threshold, top, listed) -> None:  # type: ignore[no-untyped-def]
    body = to_roboflow(Classification(np.array(scores, np.float32), ("a", "b", "c"), (10, 20), threshold=threshold))
    assert body["top"] == top
    assert [p["class"] for p in body["predictions"]] == listed
    assert body["confidence"] == (0.7 if top else 0.0)


def test_multilabel_classification_json() -> None:
    body = to_roboflow(Classification(np.array([0.8, 0.1, 0.5], np.float32), ("a", "b", "c"), (10, 20),
                                      multilabel=True, threshold=0.5))
    assert body["predicted_classes"] == ["a"]  # strictly greater than the threshold
    assert set(body["predictions"]) == {"a", "b", "c"}
    assert body["predictions"]["c"]["class_id"] == 2
    assert "top" not in body


def test_results_validate_their_shapes() -> None:
    with pytest.raises(ValueError, match=r"confidence must have shape \(2\), got \(3,\)"):
        _detections(confidence=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="class_id must be in"):
        _detections(class_id=np.array([0, 5]))
    with pytest.raises(ValueError, match=r"confidence must have shape \(3\)"):
        Classification(np.zeros(2, np.float32), ("a", "b", "c"), (1, 1))


def test_model_results_convert_cleanly(store, detector_onnx: Path) -> None:  # type: ignore[no-untyped-def]
    store.install(detector_onnx, "det/1")
    result = load_stored(store, "det/1").infer_numpy(np.zeros((128, 256, 3), np.uint8))
    det = sv.Detections.from_inference(result.to_json())
    np.testing.assert_allclose(det.xyxy, result.xyxy, atol=0.1)


def test_headless_opencv_is_the_only_cv2() -> None:
    """supervision must not have pulled in the GUI build of OpenCV, which would overwrite cv2."""
    from importlib import metadata

    installed = {d.metadata["Name"].lower() for d in metadata.distributions()}
    assert "opencv-python-headless" in installed
    assert not {"opencv-python", "opencv-contrib-python"} & installed
