"""Preprocessing writes the right pixels and its transform maps input points back exactly."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.heads.preprocess import preprocess_into
from edge_agent.params import InferenceParams
from edge_agent.store.manifest import Preprocess, StaticCrop

PARAMS = InferenceParams()


@pytest.mark.parametrize("hw", [(480, 640), (640, 480), (320, 320), (97, 413), (1000, 30)])
def test_letterbox_places_image_and_maps_back(hw: tuple[int, int]) -> None:
    h, w = hw
    image = np.full((h, w, 3), (10, 20, 30), np.uint8)  # BGR
    out = np.empty((3, 320, 320), np.float32)
    t = preprocess_into(image, Preprocess(), out, PARAMS)
    # The image occupies a centred region, RGB, /255; the rest is grey 114.
    x0, y0 = int(t.pad_x), int(t.pad_y)
    assert out[:, y0 + 1, x0 + 1] == pytest.approx(np.array([30, 20, 10]) / 255, abs=1e-6)
    if y0 > 0:
        assert out[:, 0, 160] == pytest.approx([114 / 255] * 3, abs=1e-6)
    if x0 > 0:
        assert out[:, 160, 0] == pytest.approx([114 / 255] * 3, abs=1e-6)
    # Corners of the network input region map to the image corners.
    corners = np.array([[t.pad_x, t.pad_y], [320 - t.pad_x, 320 - t.pad_y]], np.float32)
    back = t.points_to_original(corners)
    np.testing.assert_allclose(back, [[0, 0], [w, h]], atol=1e-3)


@pytest.mark.parametrize("color", ["rgb", "bgr"])
@pytest.mark.parametrize("hw", [(480, 640), (640, 480), (320, 320), (97, 413), (1000, 30), (1, 1)])
def test_letterbox_writes_every_value_as_a_plain_numpy_reference(hw: tuple[int, int], color: str) -> None:
    """Every value of the input slot is written (the slot starts as NaN): the borders with the pad value,
    the image's region with its pixels, both /255 and in the model's channel order, bit for bit as the
    plain way (a padded canvas, transposed, scaled) writes them."""
    import cv2

    h, w = hw
    image = np.random.default_rng(h * 7 + w).integers(0, 256, (h, w, 3), np.uint8)
    spec = Preprocess(color=color)
    out = np.full((3, 320, 320), np.nan, np.float32)
    t = preprocess_into(image, spec, out, PARAMS)

    scale = min(320 / w, 320 / h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    left, top = (320 - new_w) // 2, (320 - new_h) // 2
    assert (t.pad_x, t.pad_y) == (left, top)
    pixels = image if (new_w, new_h) == (w, h) else cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((320, 320, 3), spec.pad_value, np.float32)
    canvas[top:top + new_h, left:left + new_w] = pixels
    if color == "rgb":
        canvas = canvas[..., ::-1]
    np.testing.assert_array_equal(out, canvas.transpose(2, 0, 1) * np.float32(1.0 / 255.0))


def test_stretch_and_bgr_and_normalisation() -> None:
    image = np.zeros((100, 200, 3), np.uint8)
    image[..., 0] = 255  # blue
    out = np.empty((3, 50, 50), np.float32)
    spec = Preprocess(resize="stretch", color="bgr", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    t = preprocess_into(image, spec, out, PARAMS)
    assert out[0].mean() == pytest.approx(1.0)
    assert out[2].mean() == pytest.approx(-1.0)
    np.testing.assert_allclose(t.points_to_original(np.array([[25.0, 25.0]])), [[100, 50]])


def test_static_crop_offsets_and_can_be_disabled() -> None:
    image = np.zeros((100, 200, 3), np.uint8)
    spec = Preprocess(resize="stretch", static_crop=StaticCrop(x_min=50, y_min=10, x_max=100, y_max=60))
    out = np.empty((3, 50, 100), np.float32)
    t = preprocess_into(image, spec, out, PARAMS)
    assert (t.crop_x, t.crop_y, t.crop_w, t.crop_h) == (100, 10, 100, 50)
    np.testing.assert_allclose(t.points_to_original(np.array([[0.0, 0.0], [100.0, 50.0]])), [[100, 10], [200, 60]])
    t2 = preprocess_into(image, spec, out, InferenceParams(disable_preproc_static_crop=True))
    assert (t2.crop_x, t2.crop_w) == (0, 200)


def test_center_crop_takes_the_middle() -> None:
    image = np.zeros((100, 300, 3), np.uint8)
    image[:, 100:200] = 255
    out = np.empty((3, 64, 64), np.float32)
    preprocess_into(image, Preprocess(resize="center-crop"), out, PARAMS)
    assert out.min() == pytest.approx(1.0)  # only the white middle square is left


@pytest.mark.parametrize("kind", ["contrast-stretching", "histogram-equalization", "adaptive-equalization"])
def test_contrast_and_grayscale_steps_change_pixels(kind: str) -> None:
    rng = np.random.default_rng(0)
    image = (rng.integers(100, 140, (60, 60, 3))).astype(np.uint8)
    plain, enhanced = np.empty((3, 60, 60), np.float32), np.empty((3, 60, 60), np.float32)
    preprocess_into(image, Preprocess(resize="stretch"), plain, PARAMS)
    preprocess_into(image, Preprocess(resize="stretch", contrast=kind, grayscale=True), enhanced, PARAMS)
    assert enhanced.std() > plain.std() * 1.5
    np.testing.assert_allclose(enhanced[0], enhanced[1])  # grayscale: equal channels
