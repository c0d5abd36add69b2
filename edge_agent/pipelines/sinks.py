"""Roboflow's ``InferencePipeline`` sinks (``inference.core.interfaces.stream.sinks``), for code that
moves over with only its imports changed:

    from edge_agent.pipelines.sinks import render_boxes, UDPSink, multi_sink, VideoFileSink

Each takes ``(predictions, video_frame)``: one dict and one ``VideoFrame``, or lists of them aligned
with the sources (``None`` where a source gave no frame), as ``SinkMode`` says.

- ``render_boxes`` draws the predictions (our drawing, or supervision annotators passed as
  ``annotator``) and hands the image to ``on_frame_rendered``; the default shows it in an OpenCV
  window, and where OpenCV has no GUI (the headless build this package installs) or no display is
  open it says so once in the log and skips the display: the pipeline goes on.
- ``UDPSink`` sends each frame's predictions as one JSON datagram, with Roboflow's
  ``inference_metadata`` (source, frame, decoding and emission times).
- ``VideoFileSink`` writes the drawn frames (tiles for several sources) to a video file.
- ``multi_sink`` runs several sinks, each failure logged; ``active_learning_sink`` hands frames and
  predictions to a middleware with Roboflow's ``register_batch``. (The device's own active learning
  samples pipeline frames by itself when ``[active_learning]`` is enabled: see ``edge_agent.api``.)

The daemon's own outputs: JSON lines and annotated MP4 in ``file_outputs.py``, the MJPEG preview in
``pipeline.py``, MQTT in ``edge_agent.mqtt``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from edge_agent.pipelines.entities import VideoFrame
from edge_agent.visualize import colour_for, draw_label

if TYPE_CHECKING:
    import cv2

log = logging.getLogger(__name__)

ImageWithSourceID = tuple[int | None, np.ndarray]
Rendered = ImageWithSourceID | list[ImageWithSourceID]


class FPSMonitor:
    """Frames per second over the last ``sample_size`` ticks (supervision's ``FPSMonitor`` works too)."""

    def __init__(self, sample_size: int = 30) -> None:
        self.all_timestamps: deque[float] = deque(maxlen=sample_size)

    def tick(self) -> None:
        self.all_timestamps.append(time.monotonic())

    @property
    def fps(self) -> float:
        if len(self.all_timestamps) < 2:
            return 0.0
        taken = self.all_timestamps[-1] - self.all_timestamps[0]
        return (len(self.all_timestamps) - 1) / taken if taken > 0 else 0.0

    def reset(self) -> None:
        self.all_timestamps.clear()


DEFAULT_FPS_MONITOR = FPSMonitor()


def has_display(environ: Mapping[str, str], platform: str) -> bool:
    """Can a window open? On Linux only with an X11 or Wayland display named in the environment."""
    return not platform.startswith("linux") or bool(environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"))


class _Display:
    """An OpenCV window, where OpenCV can open one; else a note in the log, once."""

    def __init__(self) -> None:
        self.usable: bool | None = None

    def show(self, title: str, image: np.ndarray) -> None:
        import cv2  # lazy: cv2

        if self.usable is None:
            gui = [line for line in cv2.getBuildInformation().splitlines() if line.strip().startswith("GUI:")]
            self.usable = not gui or "NONE" not in gui[0].upper()
            if not self.usable:
                log.warning("render_boxes: this OpenCV has no GUI (opencv-python-headless): frames are not "
                            "displayed; pass on_frame_rendered=... to use them, or use VideoFileSink")
            elif not has_display(os.environ, sys.platform):  # Qt would abort the process in imshow
                self.usable = False
                log.warning("render_boxes: no display (DISPLAY and WAYLAND_DISPLAY are unset): frames are not "
                            "displayed; pass on_frame_rendered=... to use them, or use VideoFileSink")
        if not self.usable:
            return
        try:
            cv2.imshow(title, image)
            cv2.waitKey(1)
        except cv2.error as exc:
            self.usable = False
            log.warning("render_boxes: cannot open a window (%s): frames are not displayed", exc)


_DISPLAY = _Display()
_WARNED: set[str] = set()  # what the sinks have warned about (once a process)


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(message)


def display_image(image: Rendered) -> None:
    """``render_boxes``' default ``on_frame_rendered``: an OpenCV window per source, or tiles."""
    if isinstance(image, list):
        _DISPLAY.show("Predictions - tiles", create_tiles([i[1] for i in image]))
    else:
        source_id, picture = image
        _DISPLAY.show(f"Predictions - video: {'N/A' if source_id is None else source_id}", picture)


def letterbox(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` scaled to fit ``size`` (width, height), keeping its aspect ratio, on black."""
    import cv2  # lazy: cv2

    w, h = size
    scale = min(w / image.shape[1], h / image.shape[0])
    nw, nh = max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))
    canvas = np.zeros((h, w, 3), np.uint8)
    x, y = (w - nw) // 2, (h - nh) // 2
    canvas[y:y + nh, x:x + nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    return canvas


def create_tiles(images: Sequence[np.ndarray]) -> np.ndarray:
    """Images of one size in a grid (as square as may be), black where the grid has no image."""
    h, w = images[0].shape[:2]
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    grid = np.zeros((rows * h, cols * w, 3), np.uint8)
    for k, image in enumerate(images):
        r, c = divmod(k, cols)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = image if image.shape[:2] == (h, w) else letterbox(image, (w, h))
    return grid


def draw_predictions(image: np.ndarray, prediction: dict[str, Any]) -> np.ndarray:
    """A copy of ``image`` with a Roboflow response drawn: boxes, polygons, keypoints and labels, or
    a classification's top class (colours and labels as ``edge_agent.visualize.draw`` draws a ``Result``)."""
    import cv2  # lazy: cv2

    canvas: np.ndarray = image.copy()
    preds = prediction.get("predictions")
    if not isinstance(preds, list) or "top" in prediction:  # classification (multi-label, single-label)
        top = prediction.get("top") or ", ".join(prediction.get("predicted_classes", []))
        if top:
            draw_label(canvas, f"{top} {prediction.get('confidence', '')}".strip(), 4, 24, colour_for(0, str(top)))
        return canvas
    for p in preds:
        if "x" not in p:  # a classification list
            continue
        colour = colour_for(int(p.get("class_id", 0)), str(p.get("class", "")))
        x1, y1 = round(p["x"] - p["width"] / 2), round(p["y"] - p["height"] / 2)
        x2, y2 = round(p["x"] + p["width"] / 2), round(p["y"] + p["height"] / 2)
        points = p.get("points") or []
        if len(points) >= 3:
            polygon = np.array([[pt["x"], pt["y"]] for pt in points], np.float32).round().astype(np.int32)
            cv2.polylines(canvas, [polygon], True, colour, 2, cv2.LINE_AA)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, 2)
        for kp in p.get("keypoints") or []:
            if kp.get("confidence", 1.0) >= 0.5:
                cv2.circle(canvas, (round(kp["x"]), round(kp["y"])), 3, colour, -1, cv2.LINE_AA)
        draw_label(canvas, f"{p.get('class', '')} {float(p.get('confidence', 0.0)):.2f}", x1, y1, colour)
    return canvas


def _annotate(image: np.ndarray, prediction: dict[str, Any], annotators: Sequence[Any]) -> np.ndarray:
    """supervision annotators (``annotator=``) over ``sv.Detections.from_inference``. A prediction that
    is not detections (a classification) cannot be: ``image`` is handed on undrawn, as Roboflow's
    ``render_boxes`` does, and the log says so once."""
    import supervision as sv  # lazy: supervision, only for callers that pass its annotators

    try:
        labels = [p["class"] for p in prediction["predictions"]]
        detections = sv.Detections.from_inference(prediction)
        for annotator in annotators:
            if isinstance(annotator, sv.LabelAnnotator):
                image = annotator.annotate(scene=image, detections=detections, labels=labels)
            else:
                image = annotator.annotate(scene=image, detections=detections)
    except (TypeError, KeyError):
        _warn_once("annotator", "render_boxes: supervision annotators take detections (sv.Detections."
                   "from_inference); these predictions are not (a classification?): frames are shown undrawn")
    return image


def render_statistics(image: np.ndarray, frame_timestamp: datetime | None, fps: float | None) -> np.ndarray:
    import cv2  # lazy: cv2

    h = image.shape[0]
    if frame_timestamp is not None:
        latency = round((datetime.now() - frame_timestamp).total_seconds() * 1000, 2)
        cv2.putText(image, f"LATENCY: {latency} ms", (10, h - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 255, 0), 2)
    if fps is not None:
        cv2.putText(image, f"THROUGHPUT: {round(fps, 2)}", (10, h - 50), cv2.FONT_HERSHEY_SIMPLEX, 0.8,
                    (0, 255, 0), 2)
    return image


def _as_lists(predictions: Any, video_frame: Any) -> tuple[list[Any], list[VideoFrame | None], bool]:
    if isinstance(video_frame, list):
        return list(predictions), video_frame, False
    return [predictions], [video_frame], True


def render_boxes(predictions: dict[str, Any] | list[dict[str, Any] | None],
                 video_frame: VideoFrame | list[VideoFrame | None], annotator: Any = None,
                 display_size: tuple[int, int] | None = (1280, 720), fps_monitor: Any = DEFAULT_FPS_MONITOR,
                 display_statistics: bool = False,
                 on_frame_rendered: Callable[[Rendered], None] = display_image) -> None:
    """Draw the predictions on their frames and hand the image (or, for a batch, the list of
    ``(position, image)``) to ``on_frame_rendered``. ``display_size``: letterboxed to (width, height);
    ``annotator``: supervision annotators instead of our drawing."""
    preds, frames, single = _as_lists(predictions, video_frame)
    fps = None
    if fps_monitor is not None:
        for _ in range(sum(f is not None for f in frames)):
            fps_monitor.tick()
        fps = fps_monitor.fps if hasattr(fps_monitor, "fps") else fps_monitor()
    annotators = None if annotator is None else annotator if isinstance(annotator, list) else [annotator]
    images: list[ImageWithSourceID] = []
    for k, (frame, prediction) in enumerate(zip(frames, preds)):
        if frame is None:
            image = np.zeros((256, 256, 3), np.uint8)
        elif not isinstance(prediction, dict):
            image = frame.image.copy()
        else:
            image = (draw_predictions(frame.image, prediction) if annotators is None
                     else _annotate(frame.image.copy(), prediction, annotators))
        if display_size is not None:
            image = letterbox(image, display_size)
        if display_statistics:
            image = render_statistics(image, frame.frame_timestamp if frame is not None else None, fps)
        images.append((k, image))
    if single:
        on_frame_rendered((frames[0].source_id if frames[0] is not None else None, images[0][1]))
    else:
        on_frame_rendered(images)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class UDPSink:
    """Each frame's predictions as one JSON datagram to ``(ip_address, port)``."""

    @classmethod
    def init(cls, ip_address: str, port: int) -> UDPSink:
        udp = socket.socket(family=socket.AF_INET, type=socket.SOCK_DGRAM)
        udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        udp.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        udp.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        return cls(ip_address, port, udp)

    def __init__(self, ip_address: str, port: int, udp_socket: socket.socket) -> None:
        self._ip_address, self._port, self._socket = ip_address, port, udp_socket

    def send_predictions(self, predictions: dict[str, Any] | list[dict[str, Any] | None],
                         video_frame: VideoFrame | list[VideoFrame | None]) -> None:
        """Adds ``inference_metadata`` (``source_id``, ``frame_id``, ``frame_decoding_time``,
        ``emission_time``, ISO times) to each dict, as Roboflow's does, and sends it."""
        preds, frames, _ = _as_lists(predictions, video_frame)
        for frame, prediction in zip(frames, preds):
            if frame is None or prediction is None:
                continue
            prediction["inference_metadata"] = {
                "source_id": frame.source_id, "frame_id": frame.frame_id,
                "frame_decoding_time": frame.frame_timestamp.isoformat(),
                "emission_time": datetime.now().isoformat()}
            self._socket.sendto(json.dumps(prediction, default=_json_default).encode("utf-8"),
                                (self._ip_address, self._port))

    def close(self) -> None:
        self._socket.close()


def multi_sink(predictions: Any, video_frame: Any, sinks: Sequence[Callable[[Any, Any], None]]) -> None:
    """Every sink in turn; a failing one is logged and the next runs."""
    for sink in sinks:
        try:
            sink(predictions, video_frame)
        except Exception as exc:
            log.error("Could not send the prediction to a sink: %s", exc)


class ActiveLearningMiddleware(Protocol):
    def register_batch(self, inference_inputs: list[Any], predictions: list[dict[str, Any]], prediction_type: str,
                       disable_preproc_auto_orient: bool = False) -> None: ...


def active_learning_sink(predictions: Any, video_frame: Any, active_learning_middleware: ActiveLearningMiddleware,
                         model_type: str, disable_preproc_auto_orient: bool = False) -> None:
    """The frames and their predictions to ``active_learning_middleware.register_batch``."""
    preds, frames, _ = _as_lists(predictions, video_frame)
    pairs = [(f, p) for f, p in zip(frames, preds) if f is not None and p is not None]
    active_learning_middleware.register_batch(inference_inputs=[f.image for f, _ in pairs],
                                              predictions=[p for _, p in pairs], prediction_type=model_type,
                                              disable_preproc_auto_orient=disable_preproc_auto_orient)


class VideoFileSink:
    """The drawn frames written to ``video_file_name`` (``.avi``: MJPG, else mp4v), each frame
    letterboxed to ``video_frame_size``; several sources as tiles. Use ``on_prediction`` as the sink;
    ``release()`` (or ``with``) closes the file."""

    @classmethod
    def init(cls, video_file_name: str, annotator: Any = None, display_size: tuple[int, int] | None = (1280, 720),
             fps_monitor: Any = DEFAULT_FPS_MONITOR, display_statistics: bool = False, output_fps: int = 25,
             quiet: bool = False, video_frame_size: tuple[int, int] = (1280, 720)) -> VideoFileSink:
        return cls(video_file_name, annotator, display_size, fps_monitor, display_statistics, output_fps, quiet,
                   video_frame_size)

    def __init__(self, video_file_name: str, annotator: Any, display_size: tuple[int, int] | None,
                 fps_monitor: Any, display_statistics: bool, output_fps: int, quiet: bool,
                 video_frame_size: tuple[int, int]) -> None:
        self._video_file_name = str(video_file_name)
        self._output_fps = output_fps
        self._quiet = quiet
        self._video_frame_size = video_frame_size
        self._frame_idx = 0
        self._writer: cv2.VideoWriter | None = None
        self.on_prediction = partial(render_boxes, annotator=annotator, display_size=display_size,
                                     fps_monitor=fps_monitor, display_statistics=display_statistics,
                                     on_frame_rendered=self._save)

    def _save(self, frame: Rendered) -> None:
        import cv2  # lazy: cv2

        image = create_tiles([i[1] for i in frame]) if isinstance(frame, list) else frame[1]
        if (image.shape[1], image.shape[0]) != self._video_frame_size:
            image = letterbox(image, self._video_frame_size)
        if self._writer is None:
            codec = "MJPG" if self._video_file_name.lower().endswith(".avi") else "mp4v"
            self._writer = cv2.VideoWriter(self._video_file_name, cv2.VideoWriter.fourcc(*codec),
                                           self._output_fps, self._video_frame_size)
        self._writer.write(image)
        if not self._quiet:
            log.debug("VideoFileSink: writing frame %d", self._frame_idx)
        self._frame_idx += 1

    def release(self) -> None:
        if self._writer is not None and self._writer.isOpened():
            self._writer.release()

    def __enter__(self) -> VideoFileSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class InMemoryBufferSink:
    """The last ``queue_size`` (predictions, frames) pairs, taken with ``consume_prediction``."""

    @classmethod
    def init(cls, queue_size: int) -> InMemoryBufferSink:
        return cls(queue_size)

    def __init__(self, queue_size: int) -> None:
        self._buffer: deque[tuple[list[Any], list[VideoFrame | None]]] = deque(maxlen=queue_size)

    def on_prediction(self, predictions: Any, video_frame: Any) -> None:
        preds, frames, _ = _as_lists(predictions, video_frame)
        self._buffer.append((preds, frames))

    def empty(self) -> bool:
        return len(self._buffer) == 0

    def consume_prediction(self) -> tuple[list[Any], list[VideoFrame | None]]:
        return self._buffer.popleft()
