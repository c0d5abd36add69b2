"""Procedural synthetic "shapes" data: seeded scenes with exact ground truth.

Runtime code (numpy + OpenCV only).  Used by the self-test, by the test-suite (seeded ground
truth) and by ``tools/train_demo_models.py`` (training data for the demo models).

Conventions
-----------
* Images are ``H x W x 3`` uint8 **BGR** (OpenCV order).  ``size`` arguments are ``(height, width)``.
* Coordinates are continuous pixel coordinates with pixel ``(col, row)`` covering
  ``[col, col + 1) x [row, row + 1)`` (so the centre of the top-left pixel is ``(0.5, 0.5)``).
  Boxes are ``x1, y1, x2, y2`` with ``x2 = last visible column + 1``.  This convention maps
  linearly under ``cv2.resize`` (``x' = x * scale``), which is what letterboxing needs.
* Objects are drawn in list order; later objects occlude earlier ones.  ``masks[i]`` holds the
  pixels where object ``i`` is the topmost object (binarised anti-aliased coverage >= 50%).
* Drop rule (identical for training and evaluation, since both use this module): an object
  whose visible area is below ``MIN_VISIBLE_FRACTION`` (35%) of its full geometric area
  (including any part outside the image), or whose visible box is narrower or lower than
  ``MIN_VISIBLE_BOX`` (6 px), is still drawn but is *not* part of the ground truth.  Such
  objects are, by construction, mostly hidden or cut by the border, so they never look like a
  full unlabelled object.
* Keypoints are the shape vertices (square: 4 corners, triangle: 3 corners, star: 5 outer tips,
  circle: none) in canonical order: sorted by the clockwise angle from "straight up" measured at
  the shape centre, ``atan2(dx, -dy) mod 2*pi``, smallest first.  Unused slots are all zero.
  A vertex is visible (1.0) when it lies inside the image and no later object covers its pixel.
  Invisible vertices keep their (possibly out-of-image) coordinates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "CLASSES",
    "NUM_KEYPOINTS",
    "KEYPOINT_NAMES",
    "VERTEX_COUNT",
    "MIN_VISIBLE_FRACTION",
    "MIN_VISIBLE_BOX",
    "ShapesScene",
    "generate_scene",
    "generate_classification",
    "canonical_vertex_order",
]

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star")
NUM_KEYPOINTS = 5
KEYPOINT_NAMES = ("v0", "v1", "v2", "v3", "v4")
VERTEX_COUNT = {"circle": 0, "square": 4, "triangle": 3, "star": 5}

MIN_VISIBLE_FRACTION = 0.35
MIN_VISIBLE_BOX = 6
#: object size (circumscribed diameter) as a fraction of the shorter image side, log-uniform
SCENE_SIZE_RANGE = (0.06, 0.35)
#: object size for ``generate_classification`` (fraction of the shorter side, uniform)
CLASSIFICATION_SIZE_RANGE = (0.30, 0.80)

_PLACEMENT_TRIES = 8
_MIN_IN_IMAGE = 0.6  # a new object must have >= 60% of its area inside the image
_MIN_KEEP_VISIBLE = 0.5  # ... and must not leave an earlier object with < 50% of its area visible

_SHIFT = 4  # OpenCV sub-pixel drawing: coordinates are multiplied by 2**_SHIFT
_ONE = float(1 << _SHIFT)
_TWO_PI = 2.0 * math.pi


@dataclass(frozen=True)
class ShapesScene:
    """One generated scene and its ground truth (see the module docstring for conventions)."""

    image: np.ndarray  # H x W x 3 uint8, BGR
    boxes: np.ndarray  # (N, 4) float32, x1 y1 x2 y2 pixels, tight box of the visible part
    class_ids: np.ndarray  # (N,) int64 indexes into CLASSES
    masks: np.ndarray  # (N, H, W) bool, visible pixels of each object
    keypoints: np.ndarray  # (N, 5, 3) float32: x, y, visible (1.0 / 0.0)


def _as_rng(rng: np.random.Generator | int) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def canonical_vertex_order(vertices: np.ndarray, centre: tuple[float, float]) -> np.ndarray:
    """Return ``vertices`` (K, 2) sorted by clockwise angle from straight up around ``centre``."""
    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 2)
    if len(v) == 0:
        return v
    ang = np.mod(np.arctan2(v[:, 0] - centre[0], -(v[:, 1] - centre[1])), _TWO_PI)
    return v[np.argsort(ang, kind="stable")]


# --------------------------------------------------------------------------------------------
# backgrounds, clutter, colours
# --------------------------------------------------------------------------------------------


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """float32 H x W x 3 background: solid, linear gradient or smooth noise texture."""
    kind = int(rng.integers(3))
    if kind == 0:
        small = np.tile(rng.uniform(0, 255, 3).astype(np.float32), (2, 2, 1))
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)  # fastest fill
    elif kind == 1:
        # a linear ramp sampled on a coarse grid; bilinear upsampling keeps it linear (and is fast)
        c1, c2 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
        a = rng.uniform(0, _TWO_PI)
        g = 9
        xs = np.linspace(0.0, 1.0, g, dtype=np.float32)[None, :] * math.cos(a)
        ys = np.linspace(0.0, 1.0, g, dtype=np.float32)[:, None] * math.sin(a)
        t = xs + ys
        t -= t.min()
        t /= max(float(t.max()), 1e-6)
        small = c1 + (c2 - c1) * t[..., None]
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    else:
        base = rng.uniform(40, 215, 3).astype(np.float32)
        cell = rng.uniform(4.0, 48.0)
        gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
        amp = rng.uniform(12.0, 45.0)
        grid = rng.standard_normal((gh, gw, 3)).astype(np.float32) * np.float32(amp)
        if rng.random() < 0.5:  # grey texture
            grid[:] = grid[..., :1]
        grid += base
        img = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    return img


def _random_colour(rng: np.random.Generator, against: np.ndarray, min_dist: float = 100.0) -> np.ndarray:
    """A random colour at least ``min_dist`` (L2 in BGR) away from ``against``."""
    cand = rng.uniform(0, 255, (24, 3))
    d = np.linalg.norm(cand - against[None, :], axis=1)
    ok = np.flatnonzero(d >= min_dist)
    if len(ok):
        return cand[ok[0]].astype(np.float32)
    # fallback: push away from the local colour
    return np.where(against > 127.5, against - 150.0, against + 150.0).clip(0, 255).astype(np.float32)


def _draw_clutter(rng: np.random.Generator, img: np.ndarray, n_lines: int, n_blobs: int) -> None:
    """Thin random polylines and small elliptical blobs; these are *not* objects."""
    h, w = img.shape[:2]
    short = min(h, w)
    for _ in range(n_lines):
        k = int(rng.integers(2, 4))
        pts = rng.uniform((-0.1 * w, -0.1 * h), (1.1 * w, 1.1 * h), (k, 2))
        pts = np.round(pts * _ONE).astype(np.int32)
        col = tuple(float(c) for c in rng.uniform(0, 255, 3))
        cv2.polylines(img, [pts], False, col, int(rng.integers(1, 3)), cv2.LINE_AA, _SHIFT)
    max_axis = max(1.5, 0.015 * short)
    for _ in range(n_blobs):
        c = rng.uniform((0, 0), (w, h))
        ax = rng.uniform(1.0, max_axis, 2)
        col = tuple(float(c) for c in rng.uniform(0, 255, 3))
        cv2.ellipse(
            img,
            (int(round(c[0] * _ONE)), int(round(c[1] * _ONE))),
            (int(round(ax[0] * _ONE)), int(round(ax[1] * _ONE))),
            float(rng.uniform(0, 180)),
            0.0,
            360.0,
            col,
            -1,
            cv2.LINE_AA,
            _SHIFT,
        )


_NOISE_BANK: np.ndarray | None = None
_NOISE_BANK_SIZE = 1024


def _noise(rng: np.random.Generator, h: int, w: int, ch: int) -> np.ndarray:
    """Unit Gaussian noise (h, w, ch) float32: a random window of a fixed, lazily created bank
    (drawing fresh normals per pixel dominated the generator's run time)."""
    global _NOISE_BANK
    if h > _NOISE_BANK_SIZE or w > _NOISE_BANK_SIZE:
        return rng.standard_normal((h, w, ch), dtype=np.float32)
    if _NOISE_BANK is None:
        _NOISE_BANK = np.random.default_rng(20260).standard_normal(
            (_NOISE_BANK_SIZE, _NOISE_BANK_SIZE, 3), dtype=np.float32
        )
    oy = int(rng.integers(0, _NOISE_BANK_SIZE - h + 1))
    ox = int(rng.integers(0, _NOISE_BANK_SIZE - w + 1))
    c = int(rng.integers(0, 4 - ch))
    return _NOISE_BANK[oy : oy + h, ox : ox + w, c : c + ch]


def _finish(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Optional sensor noise and blur, then convert to uint8."""
    h, w = img.shape[:2]
    if rng.random() < 0.5:
        sigma = rng.uniform(2.0, 8.0)
        ch = 1 if rng.random() < 0.5 else 3
        img += _noise(rng, h, w, ch) * np.float32(sigma)
    np.clip(img, 0, 255, out=img)
    out = img.astype(np.uint8)
    if rng.random() < 0.25:
        out = cv2.GaussianBlur(out, (3, 3), 0)
    return out


# --------------------------------------------------------------------------------------------
# shapes
# --------------------------------------------------------------------------------------------


def _shape_geometry(cls: int, cx: float, cy: float, r: float, theta: float, rng: np.random.Generator):
    """Return (outline (P,2) or None for circle, vertices (K,2), full area)."""
    if cls == 0:
        return None, np.zeros((0, 2)), math.pi * r * r
    n = (0, 4, 3, 5)[cls]
    ang = theta + _TWO_PI * np.arange(n) / n
    verts = np.stack([cx + r * np.sin(ang), cy - r * np.cos(ang)], axis=1)
    if cls == 3:
        r_in = r * rng.uniform(0.38, 0.5)
        ang_in = ang + math.pi / n
        inner = np.stack([cx + r_in * np.sin(ang_in), cy - r_in * np.cos(ang_in)], axis=1)
        outline = np.empty((2 * n, 2))
        outline[0::2] = verts
        outline[1::2] = inner
    else:
        outline = verts
    x, y = outline[:, 0], outline[:, 1]
    area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    return outline, verts, area


def _rasterise(cls: int, cx: float, cy: float, r: float, theta: float, h: int, w: int, rng):
    """Rasterise one shape.  Returns (roi, alpha (uint8 coverage in roi), full (bool), vertices,
    area) or None when the shape does not touch the image."""
    x0, y0 = max(0, int(math.floor(cx - r)) - 1), max(0, int(math.floor(cy - r)) - 1)
    x1, y1 = min(w, int(math.ceil(cx + r)) + 2), min(h, int(math.ceil(cy + r)) + 2)
    if x1 <= x0 or y1 <= y0:
        return None
    outline, verts, area = _shape_geometry(cls, cx, cy, r, theta, rng)
    alpha = np.zeros((y1 - y0, x1 - x0), np.uint8)
    # OpenCV puts pixel centres on integer coordinates: subtract 0.5 from our edge coordinates
    ox, oy = x0 + 0.5, y0 + 0.5
    if outline is None:
        cv2.circle(
            alpha,
            (int(round((cx - ox) * _ONE)), int(round((cy - oy) * _ONE))),
            int(round(r * _ONE)),
            255,
            -1,
            cv2.LINE_AA,
            _SHIFT,
        )
    else:
        pts = np.round((outline - (ox, oy)) * _ONE).astype(np.int32)
        cv2.fillPoly(alpha, [pts], 255, cv2.LINE_AA, _SHIFT)
    full = alpha >= 128
    if not full.any():
        return None
    return (x0, y0, x1, y1), alpha, full, verts, area


def _paint(rng: np.random.Generator, img: np.ndarray, roi, alpha, full, cx, cy, r, min_dist=100.0) -> None:
    """Blend a contrasting colour (optionally gently shaded) into float32 ``img`` through ``alpha``."""
    x0, y0, x1, y1 = roi
    patch = img[y0:y1, x0:x1]
    col = _random_colour(rng, patch[full].mean(axis=0), min_dist)
    if rng.random() < 0.3:  # gentle linear shading inside the object
        a = rng.uniform(0, _TWO_PI)
        yy, xx = np.mgrid[0 : y1 - y0, 0 : x1 - x0].astype(np.float32)
        t = ((xx + x0 - cx) * math.cos(a) + (yy + y0 - cy) * math.sin(a)) / max(r, 1.0)
        fill = col[None, None, :] + (t * np.float32(rng.uniform(10, 30)))[..., None]
    else:
        fill = col[None, None, :]
    a = (alpha.astype(np.float32) * np.float32(1.0 / 255.0))[..., None]
    patch *= 1.0 - a
    patch += fill * a


def generate_scene(
    rng: np.random.Generator | int,
    size: tuple[int, int] = (320, 320),
    max_objects: int = 6,
) -> ShapesScene:
    """Generate one seeded scene with up to ``max_objects`` labelled shapes.

    ``size`` is ``(height, width)``.  Backgrounds are solid, gradient or noise textures; clutter
    (thin lines, blobs smaller than 3% of the shorter side) is drawn under the objects; objects
    have random class, colour (contrasting with what is under them), size (6%..35% of the shorter
    side, circumscribed diameter, log-uniform), rotation and position (may be cut by the border
    and may overlap).  Placement avoids look-alikes: a position is re-drawn (up to
    ``_PLACEMENT_TRIES`` times, then the object is skipped entirely) when less than
    ``_MIN_IN_IMAGE`` of the shape would be inside the image, or when it would leave an earlier
    object with less than ``_MIN_KEEP_VISIBLE`` of its area visible.  The drop rule of the module
    docstring still defines the ground truth.
    """
    rng = _as_rng(rng)
    h, w = int(size[0]), int(size[1])
    short = min(h, w)
    img = _background(rng, h, w)
    _draw_clutter(rng, img, int(rng.integers(0, 7)), int(rng.integers(0, 7)))

    n = int(rng.integers(1, max_objects + 1)) if max_objects > 0 else 0
    owner = np.full((h, w), -1, np.int16)
    drawn = []  # (cls, roi, verts, area, centre)
    vis_count = []  # visible pixels per drawn object
    lo, hi = math.log(SCENE_SIZE_RANGE[0]), math.log(SCENE_SIZE_RANGE[1])
    for _ in range(n):
        cls = int(rng.integers(len(CLASSES)))
        r = 0.5 * short * math.exp(rng.uniform(lo, hi))
        theta = rng.uniform(0, _TWO_PI)
        placed = None
        for _try in range(_PLACEMENT_TRIES):
            cx = rng.uniform(-0.25 * r, w + 0.25 * r)
            cy = rng.uniform(-0.25 * r, h + 0.25 * r)
            res = _rasterise(cls, cx, cy, r, theta, h, w, rng)
            if res is None:
                continue
            (x0, y0, x1, y1), alpha, full, verts, area = res
            if np.count_nonzero(full) < _MIN_IN_IMAGE * area:
                continue
            covered = np.bincount(owner[y0:y1, x0:x1][full] + 1, minlength=len(drawn) + 1)[1:]
            left = np.asarray(vis_count, np.float64) - covered
            if len(drawn):
                areas = np.array([d[3] for d in drawn])
                if np.any((covered > 0) & (left < _MIN_KEEP_VISIBLE * areas)):
                    continue
            placed = (cx, cy, res, covered)
            break
        if placed is None:
            continue
        cx, cy, ((x0, y0, x1, y1), alpha, full, verts, area), covered = placed
        _paint(rng, img, (x0, y0, x1, y1), alpha, full, cx, cy, r)
        owner[y0:y1, x0:x1][full] = len(drawn)
        for j, c in enumerate(covered):
            vis_count[j] -= int(c)
        vis_count.append(int(np.count_nonzero(full)))
        drawn.append((cls, (x0, y0, x1, y1), verts, area, (cx, cy)))

    boxes, class_ids, masks, kpts = [], [], [], []
    for i, (cls, (x0, y0, x1, y1), verts, area, centre) in enumerate(drawn):
        vis = owner[y0:y1, x0:x1] == i
        vis_area = int(np.count_nonzero(vis))
        if vis_area == 0 or vis_area < MIN_VISIBLE_FRACTION * area:
            continue
        rows = np.flatnonzero(vis.any(axis=1))
        cols = np.flatnonzero(vis.any(axis=0))
        bx1, bx2 = x0 + cols[0], x0 + cols[-1] + 1
        by1, by2 = y0 + rows[0], y0 + rows[-1] + 1
        if bx2 - bx1 < MIN_VISIBLE_BOX or by2 - by1 < MIN_VISIBLE_BOX:
            continue
        m = np.zeros((h, w), bool)
        m[y0:y1, x0:x1] = vis
        kp = np.zeros((NUM_KEYPOINTS, 3), np.float32)
        for j, (vx, vy) in enumerate(canonical_vertex_order(verts, centre)):
            inside = 0.0 <= vx < w and 0.0 <= vy < h
            visible = inside and owner[int(vy), int(vx)] <= i
            kp[j] = (vx, vy, 1.0 if visible else 0.0)
        boxes.append((bx1, by1, bx2, by2))
        class_ids.append(cls)
        masks.append(m)
        kpts.append(kp)

    image = _finish(rng, img)
    k = len(boxes)
    return ShapesScene(
        image=image,
        boxes=np.asarray(boxes, np.float32).reshape(k, 4),
        class_ids=np.asarray(class_ids, np.int64).reshape(k),
        masks=np.stack(masks) if k else np.zeros((0, h, w), bool),
        keypoints=np.stack(kpts).astype(np.float32) if k else np.zeros((0, NUM_KEYPOINTS, 3), np.float32),
    )


def generate_classification(
    rng: np.random.Generator | int,
    size: tuple[int, int] = (128, 128),
) -> tuple[np.ndarray, int]:
    """One prominent shape (30%..80% of the shorter side) on a random background with light
    clutter.  Returns ``(BGR uint8 image, class id)``.  ``size`` is ``(height, width)``."""
    rng = _as_rng(rng)
    h, w = int(size[0]), int(size[1])
    short = min(h, w)
    img = _background(rng, h, w)
    _draw_clutter(rng, img, int(rng.integers(0, 4)), int(rng.integers(0, 4)))
    cls = int(rng.integers(len(CLASSES)))
    r = 0.5 * short * rng.uniform(*CLASSIFICATION_SIZE_RANGE)
    m = 0.9 * r
    cx = rng.uniform(min(m, w / 2), max(w - m, w / 2))
    cy = rng.uniform(min(m, h / 2), max(h - m, h / 2))
    res = _rasterise(cls, cx, cy, r, rng.uniform(0, _TWO_PI), h, w, rng)
    if res is not None:
        roi, alpha, full, _, _ = res
        _paint(rng, img, roi, alpha, full, cx, cy, r)
    return _finish(rng, img), cls
