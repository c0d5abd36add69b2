"""Decoding YOLO-family detection outputs (boxes, and the extra columns of masks and keypoints).

Layouts (docs/http-api.md §10.7), per image:
  yolov8   (4 + nc + extra, N): cx, cy, w, h, class scores, then extra columns
  yolov5   (N, 5 + nc + extra): cx, cy, w, h, objectness, class scores, extra (confidence = objectness,
           as Roboflow does)
  end2end  (K, 6 + extra): x1, y1, x2, y2, confidence, class id, extra; already suppressed
The extra columns are 32 mask coefficients (segmentation) or K x 3 keypoint values (pose); they ride
through selection and NMS untouched, and ``segment`` / ``keypoints`` finish them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_agent.heads.nms import nms
from edge_agent.params import InferenceParams


@dataclass
class Candidates:
    """Detections of one image after selection and NMS, still in network-input pixels."""

    xyxy: np.ndarray  # (M, 4) float32
    confidence: np.ndarray  # (M,) float32
    class_id: np.ndarray  # (M,) int64
    extra: np.ndarray  # (M, E) float32


def _cxcywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    out = np.empty_like(b, dtype=np.float32)
    half_w, half_h = b[:, 2] / 2, b[:, 3] / 2
    out[:, 0] = b[:, 0] - half_w
    out[:, 1] = b[:, 1] - half_h
    out[:, 2] = b[:, 0] + half_w
    out[:, 3] = b[:, 1] + half_h
    return out


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    if len(scores) <= k:
        return np.arange(len(scores))
    return np.argpartition(-scores, k - 1)[:k]


def select(
    pred: np.ndarray, layout: str, num_classes: int, params: InferenceParams, class_names: tuple[str, ...]
) -> Candidates:
    """Threshold, top-k, NMS, class filter and max detections for one image's raw output."""
    if layout == "yolov8":
        scores = pred[4:4 + num_classes]
        best = scores.max(axis=0) if num_classes > 1 else scores[0]
        idx = np.flatnonzero(best >= params.confidence)
        idx = idx[_top_k(best[idx], params.max_candidates)]
        rows = pred[:, idx].T
        conf = best[idx]
        cls = rows[:, 4:4 + num_classes].argmax(axis=1) if num_classes > 1 else np.zeros(len(idx), np.int64)
        boxes = _cxcywh_to_xyxy(rows[:, :4])
        extra = rows[:, 4 + num_classes:]
    elif layout == "yolov5":
        obj = pred[:, 4]
        idx = np.flatnonzero(obj >= params.confidence)
        idx = idx[_top_k(obj[idx], params.max_candidates)]
        rows = pred[idx]
        conf = obj[idx]
        cls = rows[:, 5:5 + num_classes].argmax(axis=1)
        boxes = _cxcywh_to_xyxy(rows[:, :4])
        extra = rows[:, 5 + num_classes:]
    else:  # end2end: already suppressed by the network
        conf_all = pred[:, 4]
        idx = np.flatnonzero(conf_all >= params.confidence)
        rows = pred[idx]
        conf = conf_all[idx]
        cls = rows[:, 5].round().astype(np.int64).clip(0, num_classes - 1)
        boxes = rows[:, :4].astype(np.float32)
        extra = rows[:, 6:]

    cls = cls.astype(np.int64)
    if layout != "end2end":
        keep = nms(boxes, conf, params.iou_threshold, None if params.class_agnostic_nms else cls)
    else:
        keep = np.argsort(-conf, kind="stable")
    if params.class_filter is not None:
        wanted = np.asarray([name in params.class_filter for name in class_names], dtype=bool)
        keep = keep[wanted[cls[keep]]]
    keep = keep[: params.max_detections]
    return Candidates(
        xyxy=boxes[keep],
        confidence=conf[keep].astype(np.float32),
        class_id=cls[keep],
        extra=np.ascontiguousarray(extra[keep], dtype=np.float32),
    )
