#!/usr/bin/env python3
"""Train and export the edge-agent demo models (dev-time tool; needs torch).

Trains, on data from ``edge_agent.demo.shapes``:

* one multi-task network (shared trunk; heads for boxes+classes, mask coefficients + prototypes,
  vertex keypoints) that is exported three times, as ``shapes-det.onnx``, ``shapes-seg.onnx`` and
  ``shapes-pose.onnx``, each laid out exactly like an ultralytics YOLOv8/YOLO11 export
  (decoded boxes in input pixels, sigmoid class scores, 2100 anchors on strides 8/16/32);
* one small 128x128 classifier with two heads, exported as ``shapes-cls.onnx`` (softmax over the
  class of a ``generate_classification`` image) and ``shapes-multilabel.onnx`` (sigmoid presence of
  each class in a ``generate_scene`` image).

It then evaluates the exported ONNX files with onnxruntime and a plain numpy decoder on a fresh
seeded test set and writes ``report.json`` next to the models.  See ``docs/demo-models.md``.

    python tools/train_demo_models.py --out edge_agent/demo/models          # full run (~40 min, 2 cores)
    python tools/train_demo_models.py --quick --out /tmp/demo-models         # smoke run (~3 min)
"""

from __future__ import annotations

import argparse
import copy
import datetime
import itertools
import json
import math
import sys
import time
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from edge_agent.demo import shapes  # noqa: E402

IMG = 320  # detection-family input size
CLS_IMG = 128  # classifier input size
STRIDES = (8, 16, 32)
GRIDS = tuple(IMG // s for s in STRIDES)
NUM_ANCHORS = sum(g * g for g in GRIDS)  # 2100
REG_MAX = 16
NC = len(shapes.CLASSES)
NM = 32  # mask coefficients / prototypes
PROTO = IMG // 4  # 80
NK = shapes.NUM_KEYPOINTS
MAXOBJ = 10  # padding of per-scene targets (training scenes use max_objects 6 or 10)
VCOUNT = np.array([shapes.VERTEX_COUNT[c] for c in shapes.CLASSES], np.int64)
NAMES = {i: c for i, c in enumerate(shapes.CLASSES)}

T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)


# ============================================================================================
# preprocessing (exactly what an ultralytics-style runtime does)
# ============================================================================================


def letterbox(img: np.ndarray, size: int = IMG):
    """ultralytics LetterBox(auto=False, center=True): returns (image, gain, (pad_x, pad_y))."""
    h, w = img.shape[:2]
    r = min(size / h, size / w)
    nw, nh = int(round(w * r)), int(round(h * r))
    dw, dh = (size - nw) / 2, (size - nh) / 2
    if (nw, nh) != (w, h):
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(114, 114, 114))
    return img, r, (left, top)


def classify_preprocess(img: np.ndarray, size: int = CLS_IMG) -> np.ndarray:
    """Resize the shorter side to ``size`` (bilinear), then centre crop ``size x size``."""
    h, w = img.shape[:2]
    s = size / min(h, w)
    nw, nh = max(size, int(round(w * s))), max(size, int(round(h * s)))
    if (nw, nh) != (w, h):
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    y0, x0 = (nh - size) // 2, (nw - size) // 2
    return img[y0 : y0 + size, x0 : x0 + size]


def multilabel_preprocess(img: np.ndarray, size: int = CLS_IMG) -> np.ndarray:
    """Plain stretch resize to ``size x size``."""
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)


def to_input(bgr_batch: np.ndarray) -> np.ndarray:
    """(B, H, W, 3) uint8 BGR -> (B, 3, H, W) float32 RGB / 255."""
    return np.ascontiguousarray(bgr_batch[..., ::-1].transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)


# ============================================================================================
# data
# ============================================================================================


def det_sample(job):
    """One training scene, letterboxed to 320, with padded targets in letterbox pixels."""
    seed, i = job
    rng = np.random.default_rng([seed, 1, i])
    h, w = int(rng.integers(200, 641)), int(rng.integers(200, 641))
    # odd samples get up to 10 objects (more supervision per image); even ones use the default 6
    sc = shapes.generate_scene(rng, (h, w), 6 if i % 2 == 0 else 10)
    lb, r, (px, py) = letterbox(sc.image)
    n = len(sc.boxes)
    boxes = np.zeros((MAXOBJ, 4), np.float32)
    cls = np.full(MAXOBJ, -1, np.int8)
    kpt = np.zeros((MAXOBJ, NK, 3), np.float32)
    masks = np.zeros((MAXOBJ, PROTO, PROTO), np.uint8)
    if n:
        boxes[:n] = sc.boxes * r + np.array([px, py, px, py], np.float32)
        cls[:n] = sc.class_ids
        kpt[:n] = sc.keypoints
        kpt[:n, :, :2] = sc.keypoints[..., :2] * r + np.array([px, py], np.float32)
        kpt[:n][np.arange(NK)[None, :] >= VCOUNT[sc.class_ids][:, None]] = 0.0
        masks[:n] = letterbox_masks(sc.masks, r, px, py)
    mh = np.zeros(NC, np.uint8)
    mh[sc.class_ids] = 1
    return lb, boxes, cls, kpt, masks, multilabel_preprocess(sc.image), mh, vertex_heatmap(boxes, cls, kpt)


def vertex_heatmap(boxes, cls, kpt, sigma: float = 0.8):
    """Auxiliary training target: (3, 40, 40) uint8 Gaussian blobs at the visible vertices on the
    stride-8 grid, one channel per vertex type (square corner, triangle corner, star tip)."""
    g = GRIDS[0]
    heat = np.zeros((3, g, g), np.float32)
    c = (np.arange(g, dtype=np.float32) + 0.5) * STRIDES[0]
    for j in np.flatnonzero(cls >= 1):
        for x, y, v in kpt[j, : VCOUNT[cls[j]]]:
            if v < 0.5:
                continue
            d2 = ((c[None, :] - x) ** 2 + (c[:, None] - y) ** 2) / (STRIDES[0] ** 2)
            np.maximum(heat[cls[j] - 1], np.exp(-d2 / (2 * sigma**2)), out=heat[cls[j] - 1])
    return (heat * 255).astype(np.uint8)


def letterbox_masks(masks: np.ndarray, r: float, px: int, py: int) -> np.ndarray:
    """(n, H, W) bool -> (n, 80, 80) uint8 soft masks (0..255) in letterbox/4 coordinates."""
    n, h, w = masks.shape
    nw, nh = int(round(w * r)), int(round(h * r))
    m = masks.transpose(1, 2, 0).astype(np.uint8) * np.uint8(255)
    m = cv2.resize(m, (nw, nh), interpolation=cv2.INTER_LINEAR).reshape(nh, nw, n)
    canvas = np.zeros((IMG, IMG, n), np.uint8)
    canvas[py : py + nh, px : px + nw] = m
    out = cv2.resize(canvas, (PROTO, PROTO), interpolation=cv2.INTER_AREA).reshape(PROTO, PROTO, n)
    return out.transpose(2, 0, 1)


def cls_sample(job):
    seed, i = job
    rng = np.random.default_rng([seed, 2, i])
    if rng.random() < 0.5:
        size = (CLS_IMG, CLS_IMG)
    else:
        size = (int(rng.integers(96, 321)), int(rng.integers(96, 321)))
    img, c = shapes.generate_classification(rng, size)
    return classify_preprocess(img), c


def _worker_init():
    cv2.setNumThreads(1)


def generate(fn, jobs, workers: int, what: str):
    t = time.time()
    if workers > 1:
        with get_context("fork").Pool(workers, initializer=_worker_init) as pool:
            out = pool.map(fn, jobs, chunksize=64)
    else:
        out = [fn(j) for j in jobs]
    log(f"generated {len(jobs)} {what} in {time.time() - t:.1f}s")
    return out


def build_det_data(n: int, seed: int, workers: int):
    out = generate(det_sample, [(seed, i) for i in range(n)], workers, "training scenes")
    cols = list(zip(*out))
    return dict(
        img=np.stack(cols[0]),
        boxes=np.stack(cols[1]),
        cls=np.stack(cols[2]).astype(np.int64),
        kpt=np.stack(cols[3]),
        masks=np.stack(cols[4]),
        ml_img=np.stack(cols[5]),
        ml=np.stack(cols[6]).astype(np.float32),
        heat=np.stack(cols[7]),
    )


def build_cls_data(n: int, seed: int, workers: int):
    out = generate(cls_sample, [(seed, i) for i in range(n)], workers, "classification images")
    return np.stack([o[0] for o in out]), np.array([o[1] for o in out], np.int64)


def test_scenes(n: int, seed: int):
    """The evaluation set: rng = default_rng(seed); per scene h, w = rng.integers(240, 641) (twice),
    then generate_scene(rng, (h, w))."""
    rng = np.random.default_rng(seed)
    scenes = []
    for _ in range(n):
        h, w = int(rng.integers(240, 641)), int(rng.integers(240, 641))
        scenes.append(shapes.generate_scene(rng, (h, w)))
    return scenes


# ============================================================================================
# models (torch)
# ============================================================================================

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402


class Conv(nn.Module):
    """Conv + BatchNorm (folded at export) + SiLU; ``g`` groups (``g == c1 == c2``: depthwise)."""

    def __init__(self, c1, c2, k=3, s=1, g=1):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x))) if self.bn is not None else self.act(self.conv(x))

    def fuse(self):
        """Fold BatchNorm into the convolution (for export)."""
        if self.bn is None:
            return
        c, bn = self.conv, self.bn
        std = (bn.running_var + bn.eps).sqrt()
        w = c.weight * (bn.weight / std).reshape(-1, 1, 1, 1)
        b = bn.bias - bn.running_mean * bn.weight / std
        fused = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, groups=c.groups, bias=True)
        fused.weight.data.copy_(w.detach())
        fused.bias.data.copy_(b.detach())
        self.conv, self.bn = fused, None


class C2f(nn.Module):
    """YOLOv8-style CSP block with ``n`` residual 3x3-3x3 bottlenecks."""

    def __init__(self, c1, c2, n=1):
        super().__init__()
        self.c = c = c2 // 2
        self.cv1 = Conv(c1, 2 * c, 1)
        self.m = nn.ModuleList(nn.Sequential(Conv(c, c, 3), Conv(c, c, 3)) for _ in range(n))
        self.cv2 = Conv((2 + n) * c, c2, 1)

    def forward(self, x):
        y = list(self.cv1(x).split((self.c, self.c), 1))
        for m in self.m:
            y.append(y[-1] + m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class Trunk(nn.Module):
    """Backbone (strides 2..32) + PAN neck -> features at strides 8, 16, 32."""

    def __init__(self, w=(16, 32, 48, 64, 96), c2f80=True):
        super().__init__()
        a, b, c, d, e = w
        self.b1 = nn.Sequential(Conv(3, a, 3, 2), Conv(a, b, 3, 2), *([C2f(b, b)] if c2f80 else []))
        self.b2 = nn.Sequential(Conv(b, c, 3, 2), C2f(c, c))
        self.b3 = nn.Sequential(Conv(c, d, 3, 2), C2f(d, d))
        self.b4 = nn.Sequential(Conv(d, e, 3, 2), C2f(e, e))
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.n4 = C2f(e + d, d)
        self.n3 = C2f(d + c, c)
        self.d3 = Conv(c, c, 3, 2)
        self.o4 = C2f(c + d, d)
        self.d4 = Conv(d, d, 3, 2)
        self.o5 = C2f(d + e, e)
        self.channels = (c, d, e)

    def forward(self, x):
        p3 = self.b2(self.b1(x))
        p4 = self.b3(p3)
        p5 = self.b4(p4)
        n4 = self.n4(torch.cat([self.up(p5), p4], 1))
        n3 = self.n3(torch.cat([self.up(n4), p3], 1))
        o4 = self.o4(torch.cat([self.d3(n3), n4], 1))
        o5 = self.o5(torch.cat([self.d4(o4), p5], 1))
        return [n3, o4, o5]


GEO = 4 * REG_MAX + 3 * NK  # box distribution (64) + keypoints (15)
APP = NC + NM  # class logits (4) + mask coefficients (32)


class MultiTaskNet(nn.Module):
    """Shared trunk; per level a "geometry" branch (DFL box distribution + keypoints) and an
    "appearance" branch (class logits + mask coefficients); a prototype branch on stride 8."""

    def __init__(self, widths=(16, 32, 48, 64, 80), hc=32, dw=False, c2f80=False, pc=(32, 16)):
        super().__init__()
        self.trunk = Trunk(widths, c2f80)

        def branch(ch, out):
            if dw:  # depthwise-separable (YOLO11-style) branch
                return nn.Sequential(Conv(ch, ch, 3, g=ch), Conv(ch, hc, 1), Conv(hc, hc, 3, g=hc), Conv(hc, hc, 1),
                                     nn.Conv2d(hc, out, 1))
            return nn.Sequential(Conv(ch, hc), Conv(hc, hc), nn.Conv2d(hc, out, 1))

        self.geo = nn.ModuleList(branch(ch, GEO) for ch in self.trunk.channels)
        self.app = nn.ModuleList(branch(ch, APP) for ch in self.trunk.channels)
        c3 = self.trunk.channels[0]
        self.aux = nn.Sequential(Conv(c3, 32), nn.Conv2d(32, 3, 1))  # vertex heatmaps, training only
        self.aux[-1].bias.data[:] = -4.0
        self.proto = nn.Sequential(Conv(c3, pc[0]), nn.Upsample(scale_factor=2.0, mode="nearest"), Conv(pc[0], pc[1]),
                                   nn.Conv2d(pc[1], NM, 1))
        for g, a, s in zip(self.geo, self.app, STRIDES):
            g[-1].bias.data[: 4 * REG_MAX] = 1.0
            g[-1].bias.data[4 * REG_MAX :] = 0.0
            a[-1].bias.data[:NC] = math.log(5 / NC / (IMG / s) ** 2)  # ultralytics prior
            a[-1].bias.data[NC:] = 0.0

    def forward(self, x):
        feats = self.trunk(x)
        geo = torch.cat([g(f).flatten(2) for g, f in zip(self.geo, feats)], 2)  # (B, 79, A)
        app = torch.cat([a(f).flatten(2) for a, f in zip(self.app, feats)], 2)  # (B, 36, A)
        return geo, app, self.proto(feats[0]), self.aux(feats[0])


class ClsNet(nn.Module):
    """128x128 classifier built on a copy of the trained multi-task trunk (shape features are slow to
    learn from scratch on this data, see docs): a softmax head on the pooled stride-32 features
    (single shape) and a multi-label head = max over all anchors of the detector's class logits."""

    def __init__(self, det: MultiTaskNet, feat=160):
        super().__init__()
        self.trunk = copy.deepcopy(det.trunk)
        self.app = copy.deepcopy(det.app)
        c5 = self.trunk.channels[2]
        self.head = Conv(c5, feat, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.cls = nn.Conv2d(feat, NC, 1)  # 1x1 conv == linear layer on the pooled vector

    def forward(self, x):
        feats = self.trunk(x)
        lc = self.cls(self.pool(self.head(feats[2]))).flatten(1)
        ml = torch.cat([a(f)[:, :NC].flatten(2) for a, f in zip(self.app, feats)], 2).amax(2)
        return lc, ml


def make_anchors():
    pts, st = [], []
    for s, g in zip(STRIDES, GRIDS):
        r = torch.arange(g, dtype=torch.float32)
        sy, sx = torch.meshgrid(r, r, indexing="ij")
        pts.append(torch.stack([sx.flatten(), sy.flatten()], 1) + 0.5)  # grid units
        st.append(torch.full((g * g, 1), float(s)))
    return torch.cat(pts), torch.cat(st)  # (A, 2) grid units, (A, 1)


ANCHORS, ANCHOR_STRIDES = make_anchors()
ANCHOR_PX = ANCHORS * ANCHOR_STRIDES  # anchor points in input pixels


def decode_dist(dist):
    """(B, A, 64) logits -> (B, A, 4) ltrb distances in stride units (DFL expectation)."""
    b, a, _ = dist.shape
    proj = torch.arange(REG_MAX, dtype=dist.dtype)
    return dist.view(b, a, 4, REG_MAX).softmax(3).matmul(proj)


def decode_kpts(kraw, ai):
    """(n, 15) raw at anchors ``ai`` -> (n, 5, 3) keypoints: x, y input pixels, visibility logit."""
    k = kraw.view(-1, NK, 3)
    xy = (k[..., :2] * 2.0 + (ANCHORS[ai][:, None, :] - 0.5)) * ANCHOR_STRIDES[ai][:, None, :]
    return torch.cat([xy, k[..., 2:]], -1)


# ============================================================================================
# losses (TAL assigner as in ultralytics v8, CIoU + DFL box loss, BCE classes, mask BCE,
# scale-normalised L1 keypoints with a cyclic-shift tolerant assignment, BCE visibility)
# ============================================================================================


def box_iou_pair(a, b, eps=1e-7):
    """IoU of broadcastable xyxy boxes."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    return inter / (area_a + area_b - inter + eps)


def ciou(a, b, eps=1e-7):
    (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = a.unbind(-1), b.unbind(-1)
    w1, h1 = ax2 - ax1, (ay2 - ay1).clamp(min=eps)
    w2, h2 = bx2 - bx1, (by2 - by1).clamp(min=eps)
    inter = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(0) * (
        torch.minimum(ay2, by2) - torch.maximum(ay1, by1)
    ).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = torch.maximum(ax2, bx2) - torch.minimum(ax1, bx1)
    ch = torch.maximum(ay2, by2) - torch.minimum(ay1, by1)
    c2 = cw**2 + ch**2 + eps
    rho2 = ((bx1 + bx2 - ax1 - ax2) ** 2 + (by1 + by2 - ay1 - ay2) ** 2) / 4
    v = (4 / math.pi**2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)).pow(2)
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


@torch.no_grad()
def tal_assign(pd_scores, pd_boxes, gt_labels, gt_boxes, mask_gt, topk=10, alpha=0.5, beta=6.0, eps=1e-9):
    """Task-aligned assignment.  pd_scores (B,A,C) sigmoid, pd_boxes (B,A,4) xyxy px,
    gt_labels (B,M), gt_boxes (B,M,4), mask_gt (B,M) bool.
    Returns target gt index (B,A), target scores (B,A,C), foreground mask (B,A)."""
    b, a, c = pd_scores.shape
    m = gt_boxes.shape[1]
    anc = ANCHOR_PX
    lt = anc[None, None] - gt_boxes[:, :, None, :2]
    rb = gt_boxes[:, :, None, 2:] - anc[None, None]
    in_gt = torch.cat([lt, rb], -1).amin(-1) > eps  # (B,M,A)
    # tiny boxes: always allow the stride-8 cell that contains the box centre
    ctr = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2
    g0 = GRIDS[0]
    cell = (ctr[..., 1] / STRIDES[0]).long().clamp(0, g0 - 1) * g0 + (ctr[..., 0] / STRIDES[0]).long().clamp(0, g0 - 1)
    in_gt.scatter_(2, cell[..., None], True)
    cand = in_gt & mask_gt[..., None]
    iou = box_iou_pair(gt_boxes[:, :, None, :], pd_boxes[:, None, :, :]).clamp(min=0) * cand
    scores = pd_scores.gather(2, gt_labels.clamp(min=0)[:, None, :].expand(b, a, m)).permute(0, 2, 1)
    align = scores.pow(alpha) * iou.pow(beta) * cand
    k = min(topk, a)
    idx = align.topk(k, dim=-1).indices
    is_topk = torch.zeros_like(cand).scatter_(-1, idx, True)
    pos = is_topk & cand
    fg = pos.sum(1)
    if fg.max() > 1:
        multi = (fg > 1)[:, None, :].expand(b, m, a)
        best = F.one_hot(iou.argmax(1), m).permute(0, 2, 1).bool()
        pos = torch.where(multi, best, pos)
    fg_mask = pos.any(1)
    tgt = pos.float().argmax(1)  # (B, A)
    align = align * pos
    norm = (align * (iou * pos).amax(-1, keepdim=True) / (align.amax(-1, keepdim=True) + eps)).amax(1)  # (B, A)
    tgt_labels = gt_labels.gather(1, tgt).clamp(min=0)
    tgt_scores = F.one_hot(tgt_labels, c).float() * (norm * fg_mask)[..., None]
    return tgt, tgt_scores, fg_mask


def shift_tables():
    """For every class: (5 shifts, 5 slots) source-slot index and validity of each cyclic shift."""
    src = np.zeros((NC, NK, NK), np.int64)
    valid = np.zeros((NC, NK), bool)
    for c in range(NC):
        k = int(VCOUNT[c])
        for s in range(NK):
            src[c, s] = [(j + s) % k if j < k else j for j in range(NK)] if k else list(range(NK))
            valid[c, s] = s < k
    return torch.from_numpy(src), torch.from_numpy(valid)


SHIFT_SRC, SHIFT_VALID = shift_tables()


class Loss:
    def __init__(self, box=7.5, cls=1.0, dfl=1.5, seg=7.5, kpt=6.0, kvis=1.0, aux=1.0, shift_penalty=0.1):
        self.g = dict(box=box, cls=cls, dfl=dfl, seg=seg, kpt=kpt, kvis=kvis, aux=aux)
        self.shift_penalty = shift_penalty

    def __call__(self, geo, app, proto, aux, tg):
        b = geo.shape[0]
        geo, app = geo.permute(0, 2, 1), app.permute(0, 2, 1)  # (B, A, C)
        dist, kraw = geo[..., : 4 * REG_MAX], geo[..., 4 * REG_MAX :]
        cls_logit, coef = app[..., :NC], app[..., NC:]
        ltrb = decode_dist(dist) * ANCHOR_STRIDES[None]
        pd_boxes = torch.cat([ANCHOR_PX[None] - ltrb[..., :2], ANCHOR_PX[None] + ltrb[..., 2:]], -1)

        gt_labels, gt_boxes = tg["cls"], tg["boxes"]
        mask_gt = gt_labels >= 0
        tgt, tgt_scores, fg = tal_assign(cls_logit.detach().sigmoid(), pd_boxes.detach(), gt_labels, gt_boxes, mask_gt)
        ts_sum = max(tgt_scores.sum().item(), 1.0)
        l_cls = F.binary_cross_entropy_with_logits(cls_logit, tgt_scores, reduction="sum") / ts_sum
        z = geo.sum() * 0.0
        l_box = l_dfl = l_seg = l_kpt = l_vis = z
        n_fg = int(fg.sum())
        if n_fg:
            bi, ai = fg.nonzero(as_tuple=True)
            gi = tgt[bi, ai]
            w = tgt_scores[bi, ai].sum(-1)
            tbox = gt_boxes[bi, gi]
            l_box = ((1.0 - ciou(pd_boxes[bi, ai], tbox)) * w).sum() / ts_sum
            # DFL
            st = ANCHOR_STRIDES[ai]
            anc = ANCHORS[ai]
            t_ltrb = torch.cat([anc - tbox[:, :2] / st, tbox[:, 2:] / st - anc], -1).clamp(0, REG_MAX - 1 - 0.01)
            tl = t_ltrb.long()
            wl = tl + 1 - t_ltrb
            pdist = dist[bi, ai].view(-1, 4, REG_MAX)
            ce_l = F.cross_entropy(pdist.reshape(-1, REG_MAX), tl.view(-1), reduction="none").view(-1, 4)
            ce_r = F.cross_entropy(pdist.reshape(-1, REG_MAX), (tl + 1).view(-1), reduction="none").view(-1, 4)
            l_dfl = (((ce_l * wl + ce_r * (1 - wl)).mean(-1)) * w).sum() / ts_sum
            # masks: BCE inside the target box on the 80x80 prototype grid, normalised by box area
            gm = tg["masks"][bi, gi]  # (n, 80, 80) float 0..1
            pflat = proto.flatten(2)  # (B, 32, 6400)
            cf = coef[bi, ai]
            pm = torch.cat([cf[bi == j] @ pflat[j] for j in range(b)]).view(-1, PROTO, PROTO)  # bi is sorted
            bce = F.binary_cross_entropy_with_logits(pm, gm, reduction="none")
            r = torch.arange(PROTO, dtype=torch.float32) + 0.5
            tb = tbox / 4.0
            crop = ((r[None, None, :] >= tb[:, 0, None, None]) & (r[None, None, :] < tb[:, 2, None, None])
                    & (r[None, :, None] >= tb[:, 1, None, None]) & (r[None, :, None] < tb[:, 3, None, None]))
            area = ((tb[:, 2] - tb[:, 0]) * (tb[:, 3] - tb[:, 1])).clamp(min=1.0)
            l_seg = ((bce * crop).sum((1, 2)) / area).mean()
            # keypoints: min over the valid cyclic shifts of the vertex order (+ penalty for shift != 0)
            pk = decode_kpts(kraw[bi, ai], ai)  # (n, 5, 3)
            gk = tg["kpt"][bi, gi]  # (n, 5, 3)
            gc = gt_labels[bi, gi]
            src = SHIFT_SRC[gc]  # (n, 5 shifts, 5 slots)
            gks = gk[torch.arange(len(gc))[:, None, None], src]  # (n, 5, 5, 3)
            slot_ok = (torch.arange(NK)[None, :] < torch.from_numpy(VCOUNT)[gc][:, None]).float()  # (n, 5)
            scale = (tbox[:, 2:] - tbox[:, :2]).prod(-1).clamp(min=1.0).sqrt() + 1.0
            err = (pk[:, None, :, :2] - gks[..., :2]).abs().sum(-1) / scale[:, None, None]  # (n, S, 5)
            kw = slot_ok[:, None, :] * (0.25 + 0.75 * gks[..., 2])  # invisible vertices count less
            per_shift = (err * kw).sum(-1) / slot_ok.sum(-1, keepdim=True).clamp(min=1.0)
            per_shift = per_shift + self.shift_penalty * (torch.arange(NK) > 0).float()[None]
            per_shift = torch.where(SHIFT_VALID[gc], per_shift, torch.full_like(per_shift, 1e9))
            best = per_shift.argmin(1)
            has_k = slot_ok.sum(-1) > 0
            nk = int(has_k.sum())
            if nk:
                l_kpt = (per_shift[torch.arange(len(gc)), best] * w)[has_k].sum() / ts_sum
            vis_t = gks[torch.arange(len(gc)), best][..., 2] * slot_ok  # (n, 5)
            l_vis = F.binary_cross_entropy_with_logits(pk[..., 2], vis_t, reduction="none").mean(-1).mean()
        # CenterNet-style penalty-reduced focal loss on the vertex heatmaps
        ht = tg["heat"]
        pa = aux.sigmoid().clamp(1e-4, 1 - 1e-4)
        pos = ht > 0.95
        l_pos = -(torch.log(pa) * (1 - pa) ** 2)[pos].sum()
        l_neg = -(torch.log(1 - pa) * pa**2 * (1 - ht) ** 4)[~pos].sum()
        l_aux = (l_pos + l_neg) / max(1, int(pos.sum()))
        parts = dict(box=l_box, cls=l_cls, dfl=l_dfl, seg=l_seg, kpt=l_kpt, kvis=l_vis, aux=l_aux)
        total = sum(self.g[k] * v for k, v in parts.items())
        return total, {k: float(v.detach()) for k, v in parts.items()}


class EMA:
    def __init__(self, model, decay=0.999, tau=300):
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, 0

    @torch.no_grad()
    def update(self, model):
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        msd = model.state_dict()
        for k, v in self.model.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)


def lr_at(it, total, base, warm):
    if it < warm:
        return base * (0.05 + 0.95 * it / warm)
    p = (it - warm) / max(1, total - warm)
    return base * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * p)))


def train_det(data, args):
    torch.manual_seed(args.seed)
    net = MultiTaskNet().to(memory_format=torch.channels_last)
    log(f"multi-task net: {sum(p.numel() for p in net.parameters()) / 1e6:.3f} M params")
    ema = EMA(net)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.wd, betas=(0.9, 0.99))
    loss_fn = Loss()
    n = len(data["img"])
    bs = args.batch
    per_epoch = n // bs
    total = per_epoch * args.epochs
    warm = min(300, total // 10)
    rng = np.random.default_rng([args.seed, 10])
    it, t0, seen = 0, time.time(), 0
    run = {}
    for ep in range(args.epochs):
        perm = rng.permutation(n)
        net.train()
        for k in range(per_epoch):
            idx = np.sort(perm[k * bs : (k + 1) * bs])
            x = torch.from_numpy(to_input(data["img"][idx])).contiguous(memory_format=torch.channels_last)
            tg = dict(
                boxes=torch.from_numpy(data["boxes"][idx]),
                cls=torch.from_numpy(data["cls"][idx]),
                kpt=torch.from_numpy(data["kpt"][idx]),
                masks=torch.from_numpy(data["masks"][idx]).float().div_(255.0),
                heat=torch.from_numpy(data["heat"][idx]).float().div_(255.0),
            )
            for g in opt.param_groups:
                g["lr"] = lr_at(it, total, args.lr, warm)
            geo, app, proto, aux = net(x)
            loss, parts = loss_fn(geo, app, proto, aux, tg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 10.0)
            opt.step()
            ema.update(net)
            for kk, v in parts.items():
                run[kk] = 0.98 * run.get(kk, v) + 0.02 * v
            it += 1
            seen += bs
            if it % args.log_every == 0 or it == total:
                el = time.time() - t0
                eta = el / it * (total - it)
                log(f"det ep {ep + 1}/{args.epochs} it {it}/{total} lr {opt.param_groups[0]['lr']:.2e} "
                    + " ".join(f"{kk} {v:.3f}" for kk, v in run.items())
                    + f" | {seen / el:.1f} img/s eta {eta / 60:.1f} min")
    return ema.model, time.time() - t0


def train_cls(det_net, cls_x, cls_y, ml_x, ml_y, args):
    torch.manual_seed(args.seed + 1)
    net = ClsNet(det_net).to(memory_format=torch.channels_last)
    log(f"classifier net: {sum(p.numel() for p in net.parameters()) / 1e6:.3f} M params")
    ema = EMA(net, decay=0.995, tau=50)
    opt = torch.optim.AdamW(net.parameters(), lr=args.cls_lr, weight_decay=args.wd)
    bs = args.cls_batch
    n_c, n_m = len(cls_x), len(ml_x)
    per_epoch = min(n_c, n_m) // bs
    total = per_epoch * args.cls_epochs
    warm = min(30, total // 10)
    rng = np.random.default_rng([args.seed, 20])
    t0, it = time.time(), 0
    run = {}
    for ep in range(args.cls_epochs):
        pc, pm = rng.permutation(n_c), rng.permutation(n_m)
        net.train()
        for k in range(per_epoch):
            ic = np.sort(pc[(k * bs) % n_c : (k * bs) % n_c + bs])
            im = np.sort(pm[(k * bs) % n_m : (k * bs) % n_m + bs])
            xc, xm = cls_x[ic], ml_x[im]
            flip = rng.random(2) < 0.5  # flips keep both labels valid
            if flip[0]:
                xc = xc[:, :, ::-1]
            if flip[1]:
                xm = xm[:, :, ::-1]
            x = torch.from_numpy(to_input(np.concatenate([xc, xm]))).contiguous(memory_format=torch.channels_last)
            for g in opt.param_groups:
                g["lr"] = lr_at(it, total, args.cls_lr, warm)
            lc, lm = net(x)
            l1 = F.cross_entropy(lc[: len(ic)], torch.from_numpy(cls_y[ic]), label_smoothing=0.05)
            l2 = F.binary_cross_entropy_with_logits(lm[len(ic) :], torch.from_numpy(ml_y[im]))
            loss = l1 + 2.0 * l2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema.update(net)
            run["ce"] = 0.98 * run.get("ce", l1.item()) + 0.02 * l1.item()
            run["bce"] = 0.98 * run.get("bce", l2.item()) + 0.02 * l2.item()
            it += 1
            if it % args.log_every == 0 or it == total:
                el = time.time() - t0
                log(f"cls ep {ep + 1}/{args.cls_epochs} it {it}/{total} ce {run['ce']:.3f} bce {run['bce']:.3f} "
                    f"| {it * 2 * bs / el:.0f} img/s eta {el / it * (total - it) / 60:.1f} min")
    return ema.model, time.time() - t0


# ============================================================================================
# export
# ============================================================================================


def fuse_model(model):
    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if isinstance(m, Conv):
            m.fuse()
    return model.to(memory_format=torch.contiguous_format)


def sub_conv(conv: nn.Conv2d, rows) -> nn.Conv2d:
    """A 1x1 conv producing only output channels ``rows`` of ``conv``."""
    rows = list(rows)
    c = nn.Conv2d(conv.in_channels, len(rows), 1)
    c.weight.data.copy_(conv.weight.data[rows])
    c.bias.data.copy_(conv.bias.data[rows])
    return c


class YoloExport(nn.Module):
    """Decoded ultralytics-style output for task detect / segment / pose."""

    def __init__(self, net: MultiTaskNet, task: str):
        super().__init__()
        self.task = task
        self.trunk = net.trunk
        geo_rows = list(range(4 * REG_MAX)) + (list(range(4 * REG_MAX, GEO)) if task == "pose" else [])
        app_rows = list(range(NC)) + (list(range(NC, APP)) if task == "segment" else [])
        self.geo = nn.ModuleList(nn.Sequential(*g[:-1], sub_conv(g[-1], geo_rows)) for g in net.geo)
        self.app = nn.ModuleList(nn.Sequential(*a[:-1], sub_conv(a[-1], app_rows)) for a in net.app)
        self.proto = net.proto if task == "segment" else None
        self.dfl = nn.Conv2d(REG_MAX, 1, 1, bias=False).requires_grad_(False)
        self.dfl.weight.data[:] = torch.arange(REG_MAX, dtype=torch.float32).view(1, REG_MAX, 1, 1)
        self.register_buffer("anchors", ANCHORS.T.contiguous()[None])  # (1, 2, A) grid units
        self.register_buffer("strides", ANCHOR_STRIDES.T.contiguous()[None])  # (1, 1, A)

    def forward(self, images):
        feats = self.trunk(images)
        geo = torch.cat([g(f).view(-1, g[-1].out_channels, n * n) for g, f, n in zip(self.geo, feats, GRIDS)], 2)
        app = torch.cat([a(f).view(-1, a[-1].out_channels, n * n) for a, f, n in zip(self.app, feats, GRIDS)], 2)
        a = NUM_ANCHORS
        box = geo[:, : 4 * REG_MAX]
        d = self.dfl(box.view(-1, 4, REG_MAX, a).transpose(2, 1).softmax(1)).view(-1, 4, a)
        x1y1 = self.anchors - d[:, :2]
        x2y2 = self.anchors + d[:, 2:]
        xywh = torch.cat([(x1y1 + x2y2) / 2, x2y2 - x1y1], 1) * self.strides
        parts = [xywh, app[:, :NC].sigmoid()]
        if self.task == "segment":
            parts.append(app[:, NC:])
        if self.task == "pose":
            k = geo[:, 4 * REG_MAX :].view(-1, NK, 3, a)
            xy = (k[:, :, :2] * 2.0 + (self.anchors[:, None] - 0.5)) * self.strides[:, None]
            parts.append(torch.cat([xy, k[:, :, 2:3].sigmoid()], 2).view(-1, 3 * NK, a))
        out = torch.cat(parts, 1)
        if self.task == "segment":
            return out, self.proto(feats[0])
        return out


class ClsExport(nn.Module):
    def __init__(self, net: ClsNet, kind: str):
        super().__init__()
        self.kind = kind
        self.trunk = net.trunk
        if kind == "cls":
            self.head, self.pool, self.cls = net.head, net.pool, net.cls
        else:
            self.app = nn.ModuleList(nn.Sequential(*a[:-1], sub_conv(a[-1], range(NC))) for a in net.app)
            self.gmax = nn.AdaptiveMaxPool2d(1)
            self.grids = [CLS_IMG // s for s in STRIDES]

    def forward(self, images):
        feats = self.trunk(images)
        if self.kind == "cls":
            return self.cls(self.pool(self.head(feats[2]))).view(-1, NC).softmax(1)
        n = sum(g * g for g in self.grids)
        z = torch.cat([a(f).view(-1, NC, g * g) for a, f, g in zip(self.app, feats, self.grids)], 2)
        return self.gmax(z.view(-1, NC, n, 1)).view(-1, NC).sigmoid()


ALLOWED_OPS = {
    "Conv", "Sigmoid", "Mul", "Add", "Sub", "Div", "Concat", "Reshape", "Transpose", "Softmax", "Resize",
    "Slice", "Constant", "GlobalAveragePool", "GlobalMaxPool", "Split",
}


def export_onnx(module, path: Path, imgsz: int, outputs, metadata: dict):
    import onnx

    module = module.eval()
    x = torch.zeros(1, 3, imgsz, imgsz)
    dyn = {"images": {0: "batch"}, **{o: {0: "batch"} for o in outputs}}
    torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=17, input_names=["images"],
                      output_names=list(outputs), dynamic_axes=dyn, do_constant_folding=True)
    m = onnx.load(str(path))
    del m.metadata_props[:]
    for k, v in metadata.items():
        p = m.metadata_props.add()
        p.key, p.value = k, str(v)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    ops = sorted({n.op_type for n in m.graph.node})
    bad = sorted(set(ops) - ALLOWED_OPS)
    if bad:
        raise RuntimeError(f"{path.name}: unexpected ops {bad}")
    return ops


def ultra_metadata(task: str, imgsz: int, date: str, extra=None):
    md = {
        "description": f"edge-agent demo shapes {task} model (synthetic circles/squares/triangles/stars)",
        "author": "edge-agent demo",
        "date": date,
        "version": "edge-agent-demo 1",
        "license": "Apache-2.0",
        "docs": "docs/demo-models.md",
        "stride": 32,
        "task": task,
        "batch": 1,
        "imgsz": [imgsz, imgsz],
        "names": NAMES,
        "channels": 3,
        "args": {"batch": 1, "dynamic": True, "half": False, "int8": False, "nms": False},
        "end2end": False,
    }
    if task == "pose":
        md["kpt_shape"] = [NK, 3]
        md["kpt_names"] = {i: list(shapes.KEYPOINT_NAMES) for i in range(NC)}
    md.update(extra or {})
    return md


def verify_onnx(path: Path, module, imgsz: int, rng):
    """Run batch 1 and batch 3 through onnxruntime and torch; return max abs diff per output."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diffs = []
    for b in (1, 3):
        x = rng.random((b, 3, imgsz, imgsz), dtype=np.float32)
        ort_out = sess.run(None, {"images": x})
        with torch.no_grad():
            t_out = module(torch.from_numpy(x))
        t_out = t_out if isinstance(t_out, (tuple, list)) else (t_out,)
        for o, t in zip(ort_out, t_out):
            assert o.shape == tuple(t.shape), (o.shape, t.shape)
            scale = max(1.0, float(np.abs(t.numpy()).max()))
            diffs.append(float(np.abs(o - t.numpy()).max()) / scale)
    shapes_ = {o.name: [d if isinstance(d, int) else d for d in o.shape] for o in sess.get_outputs()}
    return max(diffs), shapes_, {i.name: i.shape for i in sess.get_inputs()}


# ============================================================================================
# numpy evaluation (what a runtime would do)
# ============================================================================================


def nms(boxes, scores, thr):
    order = scores.argsort()[::-1]
    keep = []
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    while len(order):
        i = order[0]
        keep.append(i)
        if len(order) == 1:
            break
        rest = order[1:]
        xx1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
        iou = inter / (areas[i] + areas[rest] - inter + 1e-9)
        order = rest[iou <= thr]
    return np.array(keep, np.int64)


def decode_yolo(out0: np.ndarray, conf: float = 0.25, iou: float = 0.5, max_det: int = 300):
    """out0 (4 + nc + extra, A) -> boxes xyxy (letterbox px), scores, class ids, extra rows (n, extra)."""
    p = out0.T
    scores = p[:, 4 : 4 + NC]
    cls = scores.argmax(1)
    sc = scores[np.arange(len(p)), cls]
    keep = sc >= conf
    p, cls, sc = p[keep], cls[keep], sc[keep]
    xyxy = np.concatenate([p[:, :2] - p[:, 2:4] / 2, p[:, :2] + p[:, 2:4] / 2], 1)
    sel = []
    for c in np.unique(cls):
        ii = np.flatnonzero(cls == c)
        sel.extend(ii[nms(xyxy[ii], sc[ii], iou)])
    sel = np.array(sorted(sel, key=lambda i: -sc[i])[:max_det], np.int64)
    return xyxy[sel], sc[sel], cls[sel], p[sel, 4 + NC :]


def iou_matrix(a, b):
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    aa = (a[:, 2:] - a[:, :2]).prod(-1)
    ab = (b[:, 2:] - b[:, :2]).prod(-1)
    return inter / (aa[:, None] + ab[None, :] - inter + 1e-9)


def voc_ap(rec, prec):
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def match(det_boxes, det_scores, det_cls, gt_boxes, gt_cls, thr=0.5):
    """Greedy VOC matching by descending score.  Returns (tp flags, matched gt index or -1)."""
    order = np.argsort(-det_scores, kind="stable")
    used = np.zeros(len(gt_boxes), bool)
    tp = np.zeros(len(det_boxes), bool)
    gi = np.full(len(det_boxes), -1, np.int64)
    ious = iou_matrix(det_boxes, gt_boxes)
    for d in order:
        cand = np.flatnonzero((gt_cls == det_cls[d]) & ~used)
        if len(cand) == 0:
            continue
        j = cand[np.argmax(ious[d, cand])]
        if ious[d, j] >= thr:
            used[j], tp[d], gi[d] = True, True, j
    return tp, gi


def run_session(sess, batch: np.ndarray, chunk: int = 8):
    outs = None
    for i in range(0, len(batch), chunk):
        o = sess.run(None, {"images": batch[i : i + chunk]})
        outs = [x for x in o] if outs is None else [np.concatenate([a, b]) for a, b in zip(outs, o)]
    return outs


def evaluate_yolo(model_dir: Path, scenes, conf=0.25, iou=0.5):
    import onnxruntime as ort

    lbs = [letterbox(s.image) for s in scenes]
    x = to_input(np.stack([lb[0] for lb in lbs]))
    res = {}
    for task, fname in (("detect", "shapes-det.onnx"), ("segment", "shapes-seg.onnx"), ("pose", "shapes-pose.onnx")):
        sess = ort.InferenceSession(str(model_dir / fname), providers=["CPUExecutionProvider"])
        t = time.time()
        outs = run_session(sess, x)
        infer_ms = (time.time() - t) / len(scenes) * 1000
        recs = {c: [] for c in range(NC)}
        n_gt = np.zeros(NC, np.int64)
        mask_ious, kp_err_canon, kp_err_set, vis_ok, vis_n = [], [], [], 0, 0
        for si, (sc, (_, r, (px, py))) in enumerate(zip(scenes, lbs)):
            h, w = sc.image.shape[:2]
            boxes, scores, cls, extra = decode_yolo(outs[0][si], conf, iou)
            ob = boxes.copy()
            ob[:, [0, 2]] = ((ob[:, [0, 2]] - px) / r).clip(0, w)
            ob[:, [1, 3]] = ((ob[:, [1, 3]] - py) / r).clip(0, h)
            tp, gi = match(ob, scores, cls, sc.boxes, sc.class_ids)
            for c in range(NC):
                n_gt[c] += int((sc.class_ids == c).sum())
                for d in np.flatnonzero(cls == c):
                    recs[c].append((scores[d], tp[d]))
            for d in np.flatnonzero(tp):
                g = gi[d]
                if task == "segment":
                    pm = 1 / (1 + np.exp(-(extra[d] @ outs[1][si].reshape(NM, -1)))).reshape(PROTO, PROTO)
                    pm = cv2.resize(pm.astype(np.float32), (IMG, IMG), interpolation=cv2.INTER_LINEAR)
                    x1, y1, x2, y2 = boxes[d]
                    yy, xx = np.mgrid[0:IMG, 0:IMG] + 0.5
                    pm = pm * ((xx >= x1) & (xx < x2) & (yy >= y1) & (yy < y2))
                    nw, nh = int(round(w * r)), int(round(h * r))
                    pm = cv2.resize(pm[py : py + nh, px : px + nw], (w, h), interpolation=cv2.INTER_LINEAR) > 0.5
                    gm = sc.masks[g]
                    mask_ious.append(float((pm & gm).sum() / max(1, (pm | gm).sum())))
                if task == "pose":
                    k = int(VCOUNT[sc.class_ids[g]])
                    if k == 0:
                        continue
                    pk = extra[d].reshape(NK, 3)[:k].copy()
                    pk[:, 0] = (pk[:, 0] - px) / r
                    pk[:, 1] = (pk[:, 1] - py) / r
                    gk = sc.keypoints[g, :k]
                    vis = gk[:, 2] > 0.5
                    vis_ok += int(((pk[:, 2] > 0.5) == vis).sum())
                    vis_n += k
                    if not vis.any():
                        continue
                    dist = np.linalg.norm(pk[None, :, :2] - gk[:, None, :2], axis=-1)  # (gt, pred)
                    kp_err_canon.extend(np.diag(dist)[vis].tolist())
                    best = min(itertools.permutations(range(k)), key=lambda p: dist[np.arange(k), list(p)][vis].sum())
                    kp_err_set.extend(dist[np.arange(k), list(best)][vis].tolist())
        aps = []
        for c in range(NC):
            rr = sorted(recs[c], key=lambda t: -t[0])
            tps = np.array([t[1] for t in rr], np.float64)
            ctp = np.cumsum(tps)
            cfp = np.cumsum(1 - tps)
            rec = ctp / max(1, n_gt[c])
            prec = ctp / np.maximum(ctp + cfp, 1e-9)
            aps.append(voc_ap(rec, prec) if len(rr) else 0.0)
        out = dict(
            mAP50=float(np.mean(aps)),
            AP50={shapes.CLASSES[c]: round(aps[c], 4) for c in range(NC)},
            n_gt=int(n_gt.sum()),
            onnxruntime_ms_per_image=round(infer_ms, 2),
        )
        if task == "segment":
            out["mask_iou_matched_mean"] = float(np.mean(mask_ious)) if mask_ious else 0.0
            out["mask_iou_matched_median"] = float(np.median(mask_ious)) if mask_ious else 0.0
            out["n_matched"] = len(mask_ious)
        if task == "pose":
            out["kpt_err_px_mean_set_matched"] = float(np.mean(kp_err_set)) if kp_err_set else 0.0
            out["kpt_err_px_median_set_matched"] = float(np.median(kp_err_set)) if kp_err_set else 0.0
            out["kpt_err_px_mean_canonical_order"] = float(np.mean(kp_err_canon)) if kp_err_canon else 0.0
            out["kpt_within_5px_set_matched"] = float(np.mean(np.array(kp_err_set) <= 5.0)) if kp_err_set else 0.0
            out["kpt_visibility_accuracy"] = vis_ok / max(1, vis_n)
            out["n_visible_kpts"] = len(kp_err_set)
        res[task] = out
        log(f"eval {task}: " + json.dumps(out))
    return res


def evaluate_cls(model_dir: Path, n: int, seed: int, scenes):
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    imgs, ys = [], []
    for _ in range(n):
        im, c = shapes.generate_classification(rng)
        imgs.append(classify_preprocess(im))
        ys.append(c)
    sess = ort.InferenceSession(str(model_dir / "shapes-cls.onnx"), providers=["CPUExecutionProvider"])
    p = run_session(sess, to_input(np.stack(imgs)), 64)[0]
    acc = float((p.argmax(1) == np.array(ys)).mean())
    res = {"classify": dict(top1=acc, n=n, prob_sum_max_err=float(np.abs(p.sum(1) - 1).max()))}
    sess = ort.InferenceSession(str(model_dir / "shapes-multilabel.onnx"), providers=["CPUExecutionProvider"])
    p = run_session(sess, to_input(np.stack([multilabel_preprocess(s.image) for s in scenes])), 64)[0]
    y = np.zeros((len(scenes), NC), bool)
    for i, s in enumerate(scenes):
        y[i, s.class_ids] = True
    pred = p > 0.5
    f1 = {}
    for c in range(NC):
        tp = (pred[:, c] & y[:, c]).sum()
        fp = (pred[:, c] & ~y[:, c]).sum()
        fn = (~pred[:, c] & y[:, c]).sum()
        f1[shapes.CLASSES[c]] = round(float(2 * tp / max(1, 2 * tp + fp + fn)), 4)
    res["multilabel"] = dict(
        f1=f1, macro_f1=float(np.mean(list(f1.values()))), exact_match=float((pred == y).all(1).mean()), n=len(scenes)
    )
    log("eval cls: " + json.dumps(res))
    return res


# ============================================================================================
# main
# ============================================================================================


def export_all(det_net, cls_net, out: Path, rng):
    date = datetime.datetime.now().replace(microsecond=0).isoformat()
    info = {}
    det_f = fuse_model(det_net)
    for task, fname in (("detect", "shapes-det.onnx"), ("segment", "shapes-seg.onnx"), ("pose", "shapes-pose.onnx")):
        mod = YoloExport(det_f, task).eval()
        outs = ["output0", "output1"] if task == "segment" else ["output0"]
        ops = export_onnx(mod, out / fname, IMG, outs, ultra_metadata(task, IMG, date))
        diff, oshapes, ishapes = verify_onnx(out / fname, mod, IMG, rng)
        info[fname] = dict(ops=ops, max_rel_diff_vs_torch=diff, outputs=oshapes, inputs=ishapes,
                           size_bytes=(out / fname).stat().st_size)
        log(f"exported {fname}: {info[fname]}")
    cls_f = fuse_model(cls_net)
    for head, fname in (("cls", "shapes-cls.onnx"), ("ml", "shapes-multilabel.onnx")):
        mod = ClsExport(cls_f, head).eval()
        if head == "cls":
            md = ultra_metadata("classify", CLS_IMG, date)
        else:
            md = {
                "description": "edge-agent demo shapes multi-label classifier: sigmoid presence score per class; "
                "input RGB/255, plain stretch resize to 128x128",
                "author": "edge-agent demo",
                "date": date,
                "version": "edge-agent-demo 1",
                "license": "Apache-2.0",
                "docs": "docs/demo-models.md",
                "imgsz": [CLS_IMG, CLS_IMG],
                "names": NAMES,
                "channels": 3,
            }
        ops = export_onnx(mod, out / fname, CLS_IMG, ["output0"], md)
        diff, oshapes, ishapes = verify_onnx(out / fname, mod, CLS_IMG, rng)
        info[fname] = dict(ops=ops, max_rel_diff_vs_torch=diff, outputs=oshapes, inputs=ishapes,
                           size_bytes=(out / fname).stat().st_size)
        log(f"exported {fname}: {info[fname]}")
    return info


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "edge_agent" / "demo" / "models")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--det-images", type=int, default=11000, help="pre-generated training scenes")
    ap.add_argument("--epochs", type=int, default=3, help="passes over the training scenes (multi-task net)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--wd", type=float, default=5e-4)
    ap.add_argument("--cls-images", type=int, default=5500, help="pre-generated classification images")
    ap.add_argument("--cls-epochs", type=int, default=4)
    ap.add_argument("--cls-batch", type=int, default=64)
    ap.add_argument("--cls-lr", type=float, default=1e-3)
    ap.add_argument("--workers", type=int, default=2, help="processes for data generation")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--test-seed", type=int, default=2026)
    ap.add_argument("--test-scenes", type=int, default=200)
    ap.add_argument("--cls-test", type=int, default=1000)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (few minutes)")
    ap.add_argument("--eval-only", action="store_true", help="only evaluate the ONNX files in --out")
    args = ap.parse_args(argv)
    if args.quick:
        args.det_images, args.epochs, args.cls_images, args.cls_epochs = 640, 1, 1024, 1
        args.test_scenes, args.cls_test, args.log_every = min(args.test_scenes, 40), min(args.cls_test, 200), 10

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    log(f"args: {vars(args)}")
    report = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    timing = {}

    if not args.eval_only:
        t = time.time()
        data = build_det_data(args.det_images, args.seed, args.workers)
        cls_x, cls_y = build_cls_data(args.cls_images, args.seed, args.workers)
        timing["data_generation_s"] = round(time.time() - t, 1)
        det_net, timing["train_multitask_s"] = train_det(data, args)
        ml_x, ml_y = data["ml_img"][::2], data["ml"][::2]  # scenes made with the default max_objects=6
        del data
        cls_net, timing["train_classifier_s"] = train_cls(det_net, cls_x, cls_y, ml_x, ml_y, args)
        t = time.time()
        report["export"] = export_all(det_net, cls_net, args.out, np.random.default_rng(args.seed))
        timing["export_s"] = round(time.time() - t, 1)
        ckpt = Path("/tmp") / "edge-agent-demo-models.pt"  # weights, for experiments; not part of the repo
        torch.save({"det": det_net.state_dict(), "cls": cls_net.state_dict()}, ckpt)

    t = time.time()
    scenes = test_scenes(args.test_scenes, args.test_seed)
    metrics = evaluate_yolo(args.out, scenes)
    metrics.update(evaluate_cls(args.out, args.cls_test, args.test_seed, scenes))
    timing["eval_s"] = round(time.time() - t, 1)
    timing["total_s"] = round(time.time() - T0, 1)
    report["metrics"] = metrics
    report["timing"] = timing
    report["test_set"] = (
        f"rng = numpy.random.default_rng({args.test_seed}); {args.test_scenes} x [h, w = rng.integers(240, 641) "
        f"twice; generate_scene(rng, (h, w))]; conf 0.25, per-class NMS IoU 0.5, VOC AP@0.5 at original scale; "
        f"classify: {args.cls_test} x generate_classification(default_rng({args.test_seed})); multilabel: the same "
        "scenes, threshold 0.5"
    )
    report["torch"] = torch.__version__
    rp = args.out / "report.json"
    if args.eval_only and rp.exists():
        old = json.loads(rp.read_text())
        old.update({k: v for k, v in report.items() if k in ("metrics", "test_set")})
        report = old
    rp.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    log(f"wrote {rp}; timing {timing}")


if __name__ == "__main__":
    main()
