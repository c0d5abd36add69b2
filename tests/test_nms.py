"""NMS against a straightforward reference implementation on random boxes."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.heads.nms import nms


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reference_nms(boxes, scores, thr, classes=None):  # type: ignore[no-untyped-def]
    order = sorted(range(len(boxes)), key=lambda i: -scores[i])
    keep: list[int] = []
    for i in order:
        if all(
            (classes is not None and classes[i] != classes[k]) or _iou(boxes[i], boxes[k]) <= thr for k in keep
        ):
            keep.append(i)
    return keep


def _random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    xy = rng.uniform(0, 200, (n, 2))
    wh = rng.uniform(5, 80, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("thr", [0.1, 0.45, 0.7])
@pytest.mark.parametrize("class_aware", [False, True])
def test_nms_matches_reference(seed: int, thr: float, class_aware: bool) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 150))
    boxes = _random_boxes(rng, n)
    scores = rng.permutation(n).astype(np.float32) / n  # distinct scores: one right answer
    classes = rng.integers(0, 3, n) if class_aware else None
    got = nms(boxes, scores, thr, classes).tolist()
    assert got == reference_nms(boxes, scores, thr, classes)


@pytest.mark.parametrize("seed", range(3))
def test_many_candidates_take_the_loop_and_match_reference(seed: int) -> None:
    """Past ``MATRIX_MAX`` candidates the IoUs are not taken as one matrix: the loop answers the same."""
    from edge_agent.heads import nms as module

    rng = np.random.default_rng(100 + seed)
    n = module.MATRIX_MAX + 1 + int(rng.integers(0, 200))
    boxes = _random_boxes(rng, n)
    scores = rng.permutation(n).astype(np.float32) / n
    assert nms(boxes, scores, 0.45).tolist() == reference_nms(boxes, scores, 0.45)


@pytest.mark.parametrize("seed", range(6))
def test_matrix_and_loop_agree_on_ties_degenerate_boxes_and_nan(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_agent.heads import nms as module

    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 120))
    boxes = _random_boxes(rng, n)
    boxes[1] = np.nan  # a broken output row
    boxes[2, 2] = boxes[2, 0]  # zero width
    boxes[3] = boxes[4]  # the same box twice
    scores = np.round(rng.random(n), 1).astype(np.float32)  # ties: the stable order decides
    classes = rng.integers(0, 3, n)
    matrix_max = module.MATRIX_MAX
    for thr in (0.0, 0.45, 1.0):
        for cls in (None, classes):
            matrix = nms(boxes, scores, thr, cls).tolist()
            monkeypatch.setattr(module, "MATRIX_MAX", 0)
            loop = nms(boxes, scores, thr, cls).tolist()
            monkeypatch.setattr(module, "MATRIX_MAX", matrix_max)
            assert matrix == loop, (thr, cls is not None)


def test_nms_empty_and_single() -> None:
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5).tolist() == []
    assert nms(np.array([[0, 0, 1, 1]], np.float32), np.array([0.3], np.float32), 0.5).tolist() == [0]


def test_identical_boxes_of_other_classes_survive_class_aware_only() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.9, 0.8], np.float32)
    assert nms(boxes, scores, 0.5, np.array([0, 1])).tolist() == [0, 1]
    assert nms(boxes, scores, 0.5, None).tolist() == [0]
