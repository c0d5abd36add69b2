"""Drawing results on the image (boxes, mask outlines, keypoints, labels) with OpenCV's primitives,
and encoding the drawn image as JPEG (HTTP's visualisation, the pipelines' live preview).

Colours: the model's ``COLORS`` by class name, else the docs/http-api.md §4.7 palette by class index.
"""

from __future__ import annotations

import numpy as np

from edge_agent.errors import EdgeAgentError
from edge_agent.results import Classification, Detections, Result

PALETTE = ("#4892EA", "#00EEC3", "#FE4EF0", "#F4004E", "#FA7200", "#EEEE17", "#90FF00", "#78C1D2", "#8C29FF")


def _bgr(hex_colour: str) -> tuple[int, int, int]:
    h = hex_colour.lstrip("#")
    r, g, b = int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)
    return b, g, r


def colour_for(class_id: int, name: str, colours: dict[str, str] | None = None) -> tuple[int, int, int]:
    if colours and name in colours:
        return _bgr(colours[name])
    return _bgr(PALETTE[class_id % len(PALETTE)])


def label_box(x: int, y: int, width: int, height: int, image_width: int, image_height: int) -> tuple[int, int]:
    """The top-left corner of a ``width`` x ``height`` label meant above the point (x, y), moved to lie
    inside the image (below the point when there is no room above, left when it would pass the right edge)."""
    x0 = max(min(x, image_width - width - 1), 0)
    y0 = max(min(y - height, image_height - height - 1), 0)
    return x0, y0


def draw_label(canvas: np.ndarray, text: str, x: int, y: int, colour: tuple[int, int, int]) -> None:
    """``text`` on a box of ``colour`` above the point (x, y) of ``canvas`` (in place), kept inside the
    image; black or white text, whichever reads better on that colour."""
    import cv2  # lazy: cv2

    font, scale, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1
    (tw, th), base = cv2.getTextSize(text, font, scale, thick)
    x, y0 = label_box(x, y, tw + 4, th + base + 2, canvas.shape[1], canvas.shape[0])
    cv2.rectangle(canvas, (x, y0), (x + tw + 4, y0 + th + base + 2), colour, -1)
    luminance = 0.299 * colour[2] + 0.587 * colour[1] + 0.114 * colour[0]
    cv2.putText(canvas, text, (x + 2, y0 + th + 1), font, scale, (0, 0, 0) if luminance > 140 else (255, 255, 255),
                thick, cv2.LINE_AA)


def draw(image: np.ndarray, result: Result, labels: bool = True, stroke: int = 2,
         colours: dict[str, str] | None = None) -> np.ndarray:
    """A copy of ``image`` (BGR) with ``result`` drawn on it."""
    import cv2  # lazy: cv2

    canvas: np.ndarray = image.copy()
    if isinstance(result, Classification):
        i, score = result.top
        colour = colour_for(i, result.class_names[i], colours)
        cv2.rectangle(canvas, (0, 0), (canvas.shape[1] - 1, canvas.shape[0] - 1), colour, max(stroke, 2))
        draw_label(canvas, f"{result.class_names[i]} {score:.2f}", 4, 24, colour)
        return canvas
    assert isinstance(result, Detections)
    for k in range(len(result)):
        cid = int(result.class_id[k])
        name = result.class_names[cid]
        colour = colour_for(cid, name, colours)
        x1, y1, x2, y2 = (int(round(v)) for v in result.xyxy[k])
        if result.polygons is not None and len(result.polygons[k]) >= 3:
            pts = np.round(result.polygons[k]).astype(np.int32)
            overlay = canvas.copy()
            cv2.fillPoly(overlay, [pts], colour)
            cv2.addWeighted(overlay, 0.35, canvas, 0.65, 0, dst=canvas)
            cv2.polylines(canvas, [pts], True, colour, stroke, cv2.LINE_AA)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, stroke)
        if result.keypoints is not None:
            slots = len(result.keypoint_names[k]) if result.keypoint_names else result.keypoints.shape[1]
            for x, y, c in result.keypoints[k][:slots]:
                if c >= max(result.keypoint_threshold, 0.5):
                    cv2.circle(canvas, (int(round(x)), int(round(y))), max(2, stroke + 1), colour, -1, cv2.LINE_AA)
        if labels:
            draw_label(canvas, f"{name} {result.confidence[k]:.2f}", x1, y1, colour)
    return canvas


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """A BGR image as a JPEG file's bytes."""
    import cv2  # lazy: cv2

    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 BGR image
        raise EdgeAgentError(f"OpenCV could not encode a {image.shape} {image.dtype} image as JPEG")
    return bytes(buf)
