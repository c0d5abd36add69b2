"""Do two runs of a model agree? Used before a new engine or a new model version takes over.

``disagreement(reference, candidate, tolerance)`` compares the results of the same images and
says, in words, the first way they differ beyond the tolerance, or returns None when they agree.

The rule (docs/architecture.md, "Checking before a switch"):

- Detection tasks: every reference detection whose confidence is at least ``min_confidence`` must
  have a candidate detection of the same class with box IoU >= ``box_iou`` and a confidence within
  ``confidence`` of its own; and the other way round. Detections below ``min_confidence`` are
  ignored on both sides (a score that close to the threshold may fairly fall on either side of it).
  Keypoints of matched detections must lie within ``keypoint_px`` pixels (visible ones only);
  instance masks are compared through their boxes.
- Classification: the scores of every class within ``confidence``, and the same top class unless
  the reference's top two are closer than ``confidence`` (a tie may fairly go either way).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge_agent.results import Classification, Detections, Result


@dataclass(frozen=True)
class Tolerance:
    box_iou: float = 0.9
    confidence: float = 0.05
    min_confidence: float = 0.5
    keypoint_px: float = 4.0
    keypoint_min_confidence: float = 0.5

    def loosened(self) -> Tolerance:
        """For INT8 engines, whose quantisation moves scores and edges more than FP16 does."""
        return Tolerance(box_iou=0.75, confidence=0.15, min_confidence=0.6, keypoint_px=10.0,
                         keypoint_min_confidence=0.6)


FP_TOLERANCE = Tolerance()


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (N, 4) with every box of ``b`` (M, 4), xyxy."""
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(br - tl, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    iou: np.ndarray = inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)
    return iou


def _unmatched(ref: Detections, cand: Detections, tol: Tolerance, what: str) -> str | None:
    """The first confident detection of ``ref`` with no counterpart in ``cand``, in words."""
    keep = np.flatnonzero(ref.confidence >= tol.min_confidence)
    if not len(keep):
        return None
    # a counterpart may itself be just under min_confidence: the tolerance on scores applies to it
    near = np.flatnonzero(cand.confidence >= tol.min_confidence - tol.confidence)
    iou = _iou(ref.xyxy[keep], cand.xyxy[near]) if len(near) else np.zeros((len(keep), 0))
    for row, i in enumerate(keep):
        same_class = cand.class_id[near] == ref.class_id[i]
        ok = same_class & (iou[row] >= tol.box_iou) & (np.abs(cand.confidence[near] - ref.confidence[i])
                                                        <= tol.confidence)
        name = ref.class_names[int(ref.class_id[i])]
        box = ", ".join(f"{v:.0f}" for v in ref.xyxy[i])
        if not ok.any():
            best = float(iou[row][same_class].max()) if same_class.any() else 0.0
            return (f"{what} {name} ({ref.confidence[i]:.2f}) at [{box}] has no counterpart "
                    f"(best IoU of the same class {best:.2f}, need {tol.box_iou:.2f} and scores within "
                    f"{tol.confidence:.2f})")
        if ref.keypoints is not None and cand.keypoints is not None:
            j = near[np.flatnonzero(ok)[np.argmax(iou[row][ok])]]
            visible = ref.keypoints[i, :, 2] >= tol.keypoint_min_confidence
            dist = np.linalg.norm(ref.keypoints[i, visible, :2] - cand.keypoints[j, visible, :2], axis=1)
            if len(dist) and float(dist.max()) > tol.keypoint_px:
                return (f"{what} {name} at [{box}]: a keypoint moved {float(dist.max()):.1f} px "
                        f"(at most {tol.keypoint_px:.1f})")
    return None


def _classification(ref: Classification, cand: Classification, tol: Tolerance) -> str | None:
    if ref.class_names != cand.class_names:
        return "the class lists differ"
    diff = np.abs(ref.confidence - cand.confidence)
    worst = int(np.argmax(diff))
    if diff[worst] > tol.confidence:
        return (f"score of {ref.class_names[worst]} differs by {diff[worst]:.3f} "
                f"({ref.confidence[worst]:.3f} vs {cand.confidence[worst]:.3f}; at most {tol.confidence:.3f})")
    top_ref, top_cand = ref.top[0], cand.top[0]
    if top_ref != top_cand and not ref.multilabel:
        ordered = np.sort(ref.confidence)[::-1]
        if len(ordered) < 2 or ordered[0] - ordered[1] >= tol.confidence:
            return f"top class {ref.class_names[top_ref]} became {cand.class_names[top_cand]}"
    return None


def disagreement(reference: Sequence[Result], candidate: Sequence[Result],
                 tolerance: Tolerance = FP_TOLERANCE) -> str | None:
    """How ``candidate`` (a new engine or version) differs from ``reference`` on the same images, or
    None when they agree within ``tolerance``. Image ``i`` of each list must be the same image."""
    if len(reference) != len(candidate):
        return f"{len(candidate)} results for {len(reference)} images"
    for n, (ref, cand) in enumerate(zip(reference, candidate), 1):
        if type(ref) is not type(cand):
            return f"image {n}: the task changed ({ref.task} -> {cand.task})"
        if isinstance(ref, Classification):
            assert isinstance(cand, Classification)
            why = _classification(ref, cand, tolerance)
        else:
            assert isinstance(cand, Detections)
            if ref.class_names != cand.class_names:
                why = "the class lists differ"
            else:
                why = (_unmatched(ref, cand, tolerance, "reference detection")
                       or _unmatched(cand, ref, tolerance, "new detection"))
        if why:
            return f"image {n}: {why}"
    return None
