"""Greedy non-maximum suppression, vectorised over the remaining boxes, class-aware or not."""

from __future__ import annotations

import numpy as np


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    iou_threshold: float,
    class_ids: np.ndarray | None = None,
) -> np.ndarray:
    """Indices of the boxes kept, highest score first.

    boxes: (N, 4) x1 y1 x2 y2. A box is suppressed when its IoU with a kept box of the same class
    (any class when ``class_ids`` is None) is greater than ``iou_threshold``.
    """
    if len(boxes) == 0:
        return np.empty(0, dtype=np.int64)
    boxes = boxes.astype(np.float32, copy=False)
    if class_ids is not None:
        # Shift each class to its own region so that boxes of different classes never overlap.
        span = float(boxes.max() - min(float(boxes.min()), 0.0)) + 1.0
        boxes = boxes + (class_ids.astype(np.float32) * span)[:, None]
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1).clip(0) * (y2 - y1).clip(0)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        if rest.size == 0:
            break
        w = (np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest])).clip(0)
        h = (np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest])).clip(0)
        inter = w * h
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)
