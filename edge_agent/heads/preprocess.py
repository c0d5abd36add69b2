"""From a loaded BGR image to one slot of the engine's input batch, and back again for coordinates.

Owns the preprocessing steps of a manifest (static crop, contrast, grayscale, then letterbox,
stretch or centre crop, colour order and normalisation), written straight into the batch buffer,
and the ``Transform`` that maps network-input coordinates to original-image pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edge_agent.params import InferenceParams


class CropSpec(Protocol):
    """Percentages (0-100) of the image kept before resizing."""

    @property
    def x_min(self) -> float: ...
    @property
    def y_min(self) -> float: ...
    @property
    def x_max(self) -> float: ...
    @property
    def y_max(self) -> float: ...


class PreprocessSpec(Protocol):
    """The preprocessing steps of a model as ``preprocess_into`` reads them: the fields of
    ``store.manifest.Preprocess``, the schema, which sits a layer above the heads."""

    @property
    def resize(self) -> str: ...
    @property
    def pad_value(self) -> int: ...
    @property
    def color(self) -> str: ...
    @property
    def mean(self) -> tuple[float, float, float]: ...
    @property
    def std(self) -> tuple[float, float, float]: ...
    @property
    def static_crop(self) -> CropSpec | None: ...
    @property
    def contrast(self) -> str | None: ...
    @property
    def grayscale(self) -> bool: ...


@dataclass(frozen=True)
class Transform:
    """original = (input - pad) / scale + crop offset, clipped to the (cropped) image."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    crop_x: int
    crop_y: int
    crop_w: int
    crop_h: int

    def points_to_original(self, xy: np.ndarray) -> np.ndarray:
        """Map an (..., 2) array of input-pixel points; returns float32, clipped."""
        out = np.empty(xy.shape, dtype=np.float32)
        out[..., 0] = np.clip((xy[..., 0] - self.pad_x) / self.scale_x, 0, self.crop_w) + self.crop_x
        out[..., 1] = np.clip((xy[..., 1] - self.pad_y) / self.scale_y, 0, self.crop_h) + self.crop_y
        return out

    def boxes_to_original(self, xyxy: np.ndarray) -> np.ndarray:
        return self.points_to_original(xyxy.reshape(-1, 2, 2)).reshape(-1, 4)


def _static_crop(image: np.ndarray, spec: PreprocessSpec) -> tuple[np.ndarray, int, int]:
    crop = spec.static_crop
    assert crop is not None
    h, w = image.shape[:2]
    x0, x1 = int(crop.x_min / 100 * w), int(crop.x_max / 100 * w)
    y0, y1 = int(crop.y_min / 100 * h), int(crop.y_max / 100 * h)
    cropped = image[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)]
    return cropped, x0, y0


def _contrast(image: np.ndarray, kind: str) -> np.ndarray:
    import cv2  # lazy: cv2

    if kind == "contrast-stretching":
        lo, hi = np.percentile(image, (2, 98))
        if hi <= lo:
            return image
        stretched = (image.astype(np.float32) - lo) * (255.0 / (hi - lo))
        result: np.ndarray = np.clip(stretched, 0, 255).astype(np.uint8)
        return result
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if kind == "histogram-equalization":
        gray = cv2.equalizeHist(gray)
    else:  # adaptive-equalization: CLAHE as Roboflow does it
        gray = cv2.createCLAHE(clipLimit=0.03 * 64, tileGridSize=(8, 8)).apply(gray)
    return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)


def _resized(image: np.ndarray, width: int, height: int) -> np.ndarray:
    import cv2  # lazy: cv2

    if image.shape[1] == width and image.shape[0] == height:
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def preprocess_into(
    image: np.ndarray, spec: PreprocessSpec, out: np.ndarray, params: InferenceParams
) -> Transform:
    """Write ``image`` (H x W x 3 BGR uint8) into ``out`` (3 x H_in x W_in float32); return its transform."""
    crop_x = crop_y = 0
    if spec.static_crop is not None and not params.disable_preproc_static_crop:
        image, crop_x, crop_y = _static_crop(image, spec)
    if spec.contrast is not None and not params.disable_preproc_contrast:
        image = _contrast(image, spec.contrast)
    if spec.grayscale and not params.disable_preproc_grayscale:
        import cv2  # lazy: cv2

        image = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)

    h, w = image.shape[:2]
    in_h, in_w = out.shape[1:]
    channels = slice(None, None, -1) if spec.color == "rgb" else slice(None)
    region = out
    if spec.resize == "stretch":
        pixels = _resized(image, in_w, in_h)
        transform = Transform(in_w / w, in_h / h, 0.0, 0.0, crop_x, crop_y, w, h)
    elif spec.resize == "letterbox":
        s = min(in_w / w, in_h / h)
        new_w, new_h = max(1, round(w * s)), max(1, round(h * s))
        left, top = (in_w - new_w) // 2, (in_h - new_h) // 2
        pixels = _resized(image, new_w, new_h)
        if (new_w, new_h) != (in_w, in_h):  # the borders only: the image's region is written below
            pad = spec.pad_value
            out[:, :top] = pad
            out[:, top + new_h:] = pad
            out[:, top:top + new_h, :left] = pad
            out[:, top:top + new_h, left + new_w:] = pad
        region = out[:, top:top + new_h, left:left + new_w]
        transform = Transform(new_w / w, new_h / h, float(left), float(top), crop_x, crop_y, w, h)
    else:  # center-crop: shorter side to the input size, then the middle (classification)
        s = max(in_w / w, in_h / h)
        new_w, new_h = max(in_w, round(w * s)), max(in_h, round(h * s))
        left, top = (new_w - in_w) // 2, (new_h - in_h) // 2
        pixels = _resized(image, new_w, new_h)[top:top + in_h, left:left + in_w]
        transform = Transform(s, s, -float(left), -float(top), crop_x, crop_y, w, h)

    # HWC uint8 -> CHW float32, channel order flipped for RGB models: OpenCV splits the channels (SIMD),
    # then each plane converts row by row (a copy through the transposed view gathers every third byte:
    # 93 against 48 us for 320x240 on the 2-core VM). Anything but 3 channels (the loaders give none) is
    # copied as before: one channel is broadcast, other counts fail.
    if pixels.ndim == 3 and pixels.shape[2] == 3 == region.shape[0]:
        import cv2  # lazy: cv2

        for plane, channel in zip(cv2.split(pixels)[channels], region):
            channel[...] = plane
    else:
        np.copyto(region, pixels.transpose(2, 0, 1)[channels], casting="unsafe")
    out *= np.float32(1.0 / 255.0)
    if spec.mean != (0.0, 0.0, 0.0) or spec.std != (1.0, 1.0, 1.0):
        out -= np.asarray(spec.mean, dtype=np.float32)[:, None, None]
        out /= np.asarray(spec.std, dtype=np.float32)[:, None, None]
    return transform
