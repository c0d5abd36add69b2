"""Results to Roboflow's response JSON (docs/http-api.md §4.6): the formatting edge for HTTP and the Python API.

Null fields are left out; coordinates are centre/size in original pixels; every detection gets a
fresh ``detection_id``; keypoints under the threshold and slots the class does not name are omitted.

``results`` imports this module and each result formats itself with it (``to_json``); this module
names the result types for type checking only, so the two form no import cycle.
"""

from __future__ import annotations

import os
import uuid
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # types only: ``results`` imports this module, each result formats itself with it
    from edge_agent.results import Classification, Detections, Result


def uuid4_strings(n: int) -> list[str]:
    """``n`` random version-4 UUIDs as ``str(uuid.uuid4())`` writes them, from one read of the OS's random
    source (six detections: 7 us instead of 20-30 us)."""
    raw = bytearray(os.urandom(16 * n))
    raw[6::16] = bytes(b & 0x0F | 0x40 for b in raw[6::16])  # version 4
    raw[8::16] = bytes(b & 0x3F | 0x80 for b in raw[8::16])  # RFC 4122 variant
    h = raw.hex()
    return [f"{h[k:k + 8]}-{h[k + 8:k + 12]}-{h[k + 12:k + 16]}-{h[k + 16:k + 20]}-{h[k + 20:k + 32]}"
            for k in range(0, 32 * n, 32)]


def _detections(result: Detections) -> list[dict[str, Any]]:
    xyxy = result.xyxy.astype(np.float64)
    # rounded in numpy and turned into Python numbers in one go (the per-value round() was the cost)
    boxes = np.round(np.concatenate([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], axis=1),
                     1).tolist()
    confidences = np.round(result.confidence.astype(np.float64), 4).tolist()
    class_ids = result.class_id.tolist()
    names = result.class_names
    detection_ids = uuid4_strings(len(result))
    predictions = []
    for i in range(len(result)):
        cid = class_ids[i]
        x, y, w, h = boxes[i]
        pred: dict[str, Any] = {
            "x": x,
            "y": y,
            "width": w,
            "height": h,
            "confidence": confidences[i],
            "class": names[cid],
            "class_id": cid,
            "detection_id": detection_ids[i],
        }
        if result.polygons is not None:
            pred["points"] = [{"x": round(float(x), 1), "y": round(float(y), 1)} for x, y in result.polygons[i]]
            pred["mask_format"] = "polygon"
        if result.keypoints is not None:
            slot_names = result.keypoint_names[i] if result.keypoint_names else ()
            pred["keypoints"] = [
                {"x": round(float(x), 1), "y": round(float(y), 1), "confidence": round(float(c), 4),
                 "class_id": k, "class": slot_names[k]}
                for k, (x, y, c) in enumerate(result.keypoints[i][: len(slot_names)])
                if c >= result.keypoint_threshold
            ]
        predictions.append(pred)
    return predictions


def _classification(result: Classification) -> dict[str, Any]:
    names, scores = result.class_names, result.confidence
    if result.multilabel:
        return {
            "predictions": {n: {"confidence": float(scores[i]), "class_id": i} for i, n in enumerate(names)},
            "predicted_classes": [n for i, n in enumerate(names) if scores[i] > result.threshold],
        }
    order = np.argsort(-scores, kind="stable")
    preds = [{"class": names[i], "class_id": int(i), "confidence": round(float(scores[i]), 4)}
             for i in order if scores[i] >= result.threshold]
    return {
        "predictions": preds,
        "top": preds[0]["class"] if preds else "",
        "confidence": preds[0]["confidence"] if preds else 0.0,
    }


def to_roboflow(result: Result, inference_id: str | None = None) -> dict[str, Any]:
    """One image's response object; pass the same ``inference_id`` for every image of a batch."""
    return result.to_json(inference_id)


def _response(result: Result, inference_id: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inference_id": inference_id or str(uuid.uuid4()),
        "time": round(result.time, 6),
        "image": {"width": int(result.image_size[1]), "height": int(result.image_size[0])},
    }
    if result.frame_id is not None:
        body["frame_id"] = result.frame_id
    return body


def detections_response(result: Detections, inference_id: str | None = None) -> dict[str, Any]:
    """``Detections.to_json``: the response object of one image's detections."""
    body = _response(result, inference_id)
    body["predictions"] = _detections(result)
    return body


def classification_response(result: Classification, inference_id: str | None = None) -> dict[str, Any]:
    """``Classification.to_json``: the response object of one image's class scores."""
    body = _response(result, inference_id)
    body.update(_classification(result))
    return body
