"""Every output layout decoded from hand-made models whose raw outputs are known exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.errors import InvalidInput
from edge_agent.results import Classification, Detections
from edge_agent.serving.loading import load_stored
from onnx_builders import constant_model, ultralytics_metadata

BLACK_64 = np.zeros((64, 64, 3), np.uint8)


def _install(store, tmp_path: Path, name: str, outputs, md, **kw):  # type: ignore[no-untyped-def]
    path = constant_model(tmp_path / f"{name}.onnx", outputs, metadata=md, **kw)
    store.install(path, f"{name}/1")
    return load_stored(store, f"{name}/1")


def test_yolov8_detection_nms_filter_and_letterbox(store, detector_onnx: Path) -> None:
    store.install(detector_onnx, "det/1")
    model = load_stored(store, "det/1")
    image = np.zeros((128, 256, 3), np.uint8)  # letterboxed: scale 0.25, 16 px of padding top and bottom
    r = model.infer_numpy(image)
    assert isinstance(r, Detections)
    assert r.class_id.tolist() == [0, 1]
    np.testing.assert_allclose(r.xyxy, [[88, 44, 168, 84], [24, 40, 56, 72]], atol=1e-4)
    np.testing.assert_allclose(r.confidence, [0.9, 0.7], atol=1e-6)
    assert model.infer_numpy(image, iou_threshold=0.99).confidence.tolist() == pytest.approx([0.9, 0.8, 0.7])
    assert model.infer_numpy(image, class_filter=["b"]).class_id.tolist() == [1]
    assert len(model.infer_numpy(image, max_detections=1)) == 1
    assert len(model.infer_numpy(image, confidence=0.95)) == 0
    assert len(model.infer_numpy(image, max_candidates=1)) == 1
    batch = model.infer_numpy([image, image, image])
    assert isinstance(batch, list)
    assert [len(b) for b in batch] == [2, 2, 2]


def test_class_agnostic_nms_suppresses_across_classes(store, tmp_path: Path) -> None:
    out = np.zeros((6, 2), np.float32)
    out[:4, 0], out[4, 0] = [32, 32, 20, 20], 0.9
    out[:4, 1], out[5, 1] = [32, 33, 20, 20], 0.8
    model = _install(store, tmp_path, "agn", {"output0": out}, ultralytics_metadata("detect", ["a", "b"], (64, 64)))
    assert len(model.infer_numpy(BLACK_64)) == 2
    assert model.infer_numpy(BLACK_64, class_agnostic_nms=True).class_id.tolist() == [0]


def test_yolov5_layout_uses_objectness(store, tmp_path: Path) -> None:
    out = np.zeros((3, 7), np.float32)  # (N, 5 + nc), nc = 2
    out[0] = [32, 32, 20, 10, 0.9, 0.1, 0.8]
    out[1] = [10, 10, 8, 8, 0.2, 0.9, 0.1]
    out[2] = [50, 50, 8, 8, 0.6, 0.3, 0.1]
    model = _install(store, tmp_path, "v5", {"output0": out}, ultralytics_metadata("detect", ["a", "b"], (64, 64)))
    assert model.manifest.output.layout == "yolov5"
    r = model.infer_numpy(BLACK_64)
    assert r.class_id.tolist() == [1, 0]
    np.testing.assert_allclose(r.confidence, [0.9, 0.6], atol=1e-6)
    np.testing.assert_allclose(r.xyxy[0], [22, 27, 42, 37], atol=1e-4)


def test_end2end_layout_skips_nms(store, tmp_path: Path) -> None:
    out = np.zeros((4, 6), np.float32)
    out[0] = [10, 10, 30, 30, 0.95, 1]
    out[1] = [11, 11, 31, 31, 0.90, 1]  # would be suppressed by NMS; end2end keeps it
    out[2] = [40, 40, 50, 50, 0.10, 0]
    md = ultralytics_metadata("detect", ["a", "b"], (64, 64), end2end="True")
    model = _install(store, tmp_path, "e2e", {"output0": out}, md)
    assert model.manifest.output.layout == "end2end"
    r = model.infer_numpy(BLACK_64)
    assert r.class_id.tolist() == [1, 1]
    np.testing.assert_allclose(r.xyxy, out[:2, :4], atol=1e-4)


def test_segmentation_mask_to_polygon(store, tmp_path: Path) -> None:
    nc, nm = 1, 32
    out = np.zeros((4 + nc + nm, 2), np.float32)
    out[:5, 0] = [24, 24, 20, 20, 0.9]  # box 14..34 around the mask
    out[5, 0] = 1.0  # coefficient 0 selects prototype 0
    protos = np.full((nm, 16, 16), -10.0, np.float32)
    protos[0, 4:8, 4:8] = 10.0  # cells 4..7 -> input pixels 16..32
    md = ultralytics_metadata("segment", ["blob"], (64, 64))
    model = _install(store, tmp_path, "seg", {"output0": out, "output1": protos}, md)
    # The outline runs through the centres of the mask's boundary pixels, so coarser modes lose up to
    # half a mask pixel per side: 0.5 px (accurate), 1 px (tradeoff 0.5), 2 px (fast) of input.
    for mode, tol, area_tol in (("accurate", 1.5, 40), ("fast", 4.0, 100), ("tradeoff", 3.0, 70)):
        r = model.infer_numpy(BLACK_64, mask_decode_mode=mode, tradeoff_factor=0.5)
        poly = r.polygons[0]
        assert len(poly) >= 4, mode
        np.testing.assert_allclose(poly.min(axis=0), [16, 16], atol=tol, err_msg=mode)
        np.testing.assert_allclose(poly.max(axis=0), [32, 32], atol=tol, err_msg=mode)
        mask = r.masks()[0]
        assert abs(int(mask.sum()) - 256) < area_tol, mode
    with pytest.raises(InvalidInput, match="Invalid mask decode argument"):
        model.infer_numpy(BLACK_64, mask_decode_mode="sloppy")


def test_empty_mask_keeps_detection_with_empty_polygon(store, tmp_path: Path) -> None:
    out = np.zeros((4 + 1 + 32, 1), np.float32)
    out[:5, 0] = [24, 24, 20, 20, 0.9]
    protos = np.full((32, 16, 16), -10.0, np.float32)
    md = ultralytics_metadata("segment", ["blob"], (64, 64))
    model = _install(store, tmp_path, "seg0", {"output0": out, "output1": protos}, md)
    r = model.infer_numpy(BLACK_64)
    assert len(r) == 1
    assert r.polygons[0].shape == (0, 2)
    assert r.to_json()["predictions"][0]["points"] == []


def test_keypoints_mapped_named_and_filtered(store, tmp_path: Path) -> None:
    out = np.zeros((4 + 1 + 6, 1), np.float32)
    out[:5, 0] = [32, 32, 40, 40, 0.9]
    out[5:, 0] = [20, 22, 0.9, 40, 42, 0.1]
    md = ultralytics_metadata("pose", ["thing"], (64, 64), kpt_shape="[2, 3]", kpt_names="{0: ['head', 'tail']}")
    model = _install(store, tmp_path, "pose", {"output0": out}, md)
    image = np.zeros((128, 128, 3), np.uint8)  # scale 0.5: everything doubles
    r = model.infer_numpy(image, keypoint_confidence=0.5)
    np.testing.assert_allclose(r.keypoints[0], [[40, 44, 0.9], [80, 84, 0.1]], atol=1e-4)
    kps = r.to_json()["predictions"][0]["keypoints"]
    assert kps == [{"x": 40.0, "y": 44.0, "confidence": 0.9, "class_id": 0, "class": "head"}]


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ([0.1, 0.7, 0.2], [0.1, 0.7, 0.2]),  # already probabilities: kept as they are
        ([1.0, 3.0, 0.0], np.exp([1.0, 3.0, 0.0]) / np.exp([1.0, 3.0, 0.0]).sum()),  # logits: softmax
    ],
)
def test_single_label_classification(store, tmp_path: Path, row, expected) -> None:  # type: ignore[no-untyped-def]
    md = ultralytics_metadata("classify", ["x", "y", "z"], (32, 32))
    model = _install(store, tmp_path, "cls", {"output0": np.array(row, np.float32)}, md, input_hw=(32, 32))
    r = model.infer_numpy(np.zeros((50, 80, 3), np.uint8), confidence=0.15)
    assert isinstance(r, Classification)
    np.testing.assert_allclose(r.confidence, expected, atol=1e-5)
    body = r.to_json()
    assert body["top"] == "y"
    assert body["confidence"] == pytest.approx(round(float(np.max(expected)), 4))
    ranked = sorted(zip("xyz", expected), key=lambda t: -t[1])
    assert [p["class"] for p in body["predictions"]] == [n for n, s in ranked if s >= 0.15]


def test_static_batch_model_runs_lists_one_by_one(store, tmp_path: Path) -> None:
    out = np.zeros((6, 1), np.float32)
    out[:5, 0] = [32, 32, 20, 10, 0.9]
    md = ultralytics_metadata("detect", ["a", "b"], (64, 64))
    model = _install(store, tmp_path, "static", {"output0": out}, md, batch=1)
    assert model.manifest.input.batch == 1
    assert model.engine.max_batch == 1
    results = model.infer_numpy([BLACK_64] * 3)
    assert [len(r) for r in results] == [1, 1, 1]


@pytest.mark.parametrize(
    ("row", "expected"),
    [([2.0, -2.0, 0.5], 1 / (1 + np.exp(-np.array([2.0, -2.0, 0.5])))),  # logits: sigmoid
     ([0.9, 0.1, 0.6], [0.9, 0.1, 0.6])],  # already probabilities: kept
)
def test_multilabel_classification(store, tmp_path: Path, row, expected) -> None:  # type: ignore[no-untyped-def]
    path = constant_model(tmp_path / "ml.onnx", {"output0": np.array(row, np.float32)}, input_hw=(32, 32))
    store.install(path, "ml/1", task="classification", class_names=("rust", "crack", "dent"))
    store.update("ml/1", multilabel=True)
    r = load_stored(store, "ml/1").infer_numpy(np.zeros((40, 40, 3), np.uint8), confidence=0.55)
    np.testing.assert_allclose(r.confidence, expected, atol=1e-5)
    body = r.to_json()
    assert body["predicted_classes"] == [n for n, s in zip(("rust", "crack", "dent"), expected) if s > 0.55]
    assert set(body["predictions"]) == {"rust", "crack", "dent"}
