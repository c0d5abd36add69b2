"""Reference metrics for checking models against generated ground truth (plain numpy)."""

from __future__ import annotations

import numpy as np


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) x (M, 4) -> (N, M) IoU of x1 y1 x2 y2 boxes."""
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(br - tl, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)  # type: ignore[no-any-return]


def match(pred_boxes, pred_cls, gt_boxes, gt_cls, iou_thr=0.5):  # type: ignore[no-untyped-def]
    """Greedy matching in prediction order (predictions sorted by confidence): [(pred_i, gt_j)]."""
    pairs, used = [], set()
    if len(pred_boxes) == 0 or len(gt_boxes) == 0:
        return pairs
    ious = box_iou(pred_boxes, gt_boxes)
    for i in range(len(pred_boxes)):
        candidates = [(ious[i, j], j) for j in range(len(gt_boxes))
                      if j not in used and gt_cls[j] == pred_cls[i] and ious[i, j] >= iou_thr]
        if candidates:
            _, j = max(candidates)
            used.add(j)
            pairs.append((i, j))
    return pairs


def average_precision(records, n_gt: int) -> float:  # type: ignore[no-untyped-def]
    """VOC-style AP (all-point interpolation) from [(confidence, is_true_positive)]."""
    if n_gt == 0:
        return float("nan")
    if not records:
        return 0.0
    records = sorted(records, key=lambda r: -r[0])
    tp = np.cumsum([r[1] for r in records])
    fp = np.cumsum([not r[1] for r in records])
    recall = tp / n_gt
    precision = tp / np.maximum(tp + fp, 1e-9)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[1.0], precision, [0.0]])
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    idx = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def map50(samples, num_classes: int) -> tuple[float, list[float]]:  # type: ignore[no-untyped-def]
    """samples: [(pred_boxes, pred_conf, pred_cls, gt_boxes, gt_cls)] -> (mAP@0.5, per-class AP)."""
    per_class = []
    for c in range(num_classes):
        records, n_gt = [], 0
        for pb, pc, pk, gb, gk in samples:
            sel, gsel = pk == c, gk == c
            n_gt += int(gsel.sum())
            pairs = match(pb[sel], pk[sel], gb[gsel], gk[gsel])
            tps = {i for i, _ in pairs}
            records += [(float(conf), i in tps) for i, conf in enumerate(pc[sel])]
        per_class.append(average_precision(records, n_gt))
    valid = [a for a in per_class if not np.isnan(a)]
    return float(np.mean(valid)), per_class
