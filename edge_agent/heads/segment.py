"""Instance masks from prototype coefficients to polygons in original-image pixels (docs/http-api.md §10.7.3).

Only the part of the prototype grid under each box is computed: the mask logits of a crop are
``coeffs @ protos[:, crop]``, upsampled to the resolution that ``mask_decode_mode`` asks for,
zeroed outside the box and thresholded at logit 0 (sigmoid 0.5) before the largest outer contour
is taken.
"""

from __future__ import annotations

import math

import numpy as np

from edge_agent.heads.preprocess import Transform
from edge_agent.params import InferenceParams


def _grid_factor(params: InferenceParams, proto_h: int, input_h: int) -> float:
    """How many mask pixels per prototype cell the decode mode works at."""
    if params.mask_decode_mode == "fast":
        return 1.0
    if params.mask_decode_mode == "tradeoff":
        f = params.tradeoff_factor
        return max(1.0, int(proto_h * (1 - f) + input_h * f) / proto_h)
    return input_h / proto_h  # accurate: network-input resolution


def polygons(
    coeffs: np.ndarray,
    protos: np.ndarray,
    boxes_in: np.ndarray,
    input_hw: tuple[int, int],
    transform: Transform,
    params: InferenceParams,
) -> list[np.ndarray]:
    """One (P, 2) float32 outline per detection, in original-image pixels ((0, 2) if the mask is empty)."""
    import cv2  # lazy: cv2

    nm, mh, mw = protos.shape
    sx, sy = input_hw[1] / mw, input_hw[0] / mh
    k = _grid_factor(params, mh, input_hw[0])
    flat = protos.reshape(nm, -1)
    out: list[np.ndarray] = []
    for coef, (x1, y1, x2, y2) in zip(coeffs, boxes_in):
        bx1, by1, bx2, by2 = x1 / sx, y1 / sy, x2 / sx, y2 / sy  # box in prototype cells
        c0, r0 = max(0, math.floor(bx1) - 1), max(0, math.floor(by1) - 1)
        c1, r1 = min(mw, math.ceil(bx2) + 1), min(mh, math.ceil(by2) + 1)
        if c1 <= c0 or r1 <= r0:
            out.append(np.zeros((0, 2), np.float32))
            continue
        rows = np.arange(r0, r1)
        cells = (rows[:, None] * mw + np.arange(c0, c1)[None, :]).ravel()
        logits = (coef @ flat[:, cells]).reshape(r1 - r0, c1 - c0)
        if k != 1.0:
            size = (max(1, round((c1 - c0) * k)), max(1, round((r1 - r0) * k)))
            logits = cv2.resize(logits, size, interpolation=cv2.INTER_LINEAR)
        gh, gw = logits.shape
        # Keep only pixels whose centre lies inside the box (box in this grid's pixel units).
        xs = (np.arange(gw) + 0.5) / k + c0
        ys = (np.arange(gh) + 0.5) / k + r0
        inside = ((ys >= by1) & (ys <= by2))[:, None] & ((xs >= bx1) & (xs <= bx2))[None, :]
        binary = ((logits > 0) & inside).astype(np.uint8)
        contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        if not contours:
            out.append(np.zeros((0, 2), np.float32))
            continue
        largest = max(contours, key=lambda c: (cv2.contourArea(c), len(c))).reshape(-1, 2)
        in_px = np.empty(largest.shape, np.float32)
        in_px[:, 0] = ((largest[:, 0] + 0.5) / k + c0) * sx
        in_px[:, 1] = ((largest[:, 1] + 0.5) / k + r0) * sy
        out.append(transform.points_to_original(in_px))
    return out
