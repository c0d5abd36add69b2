"""Video sources: files, image folders, RTSP/HTTP streams, USB cameras and GStreamer pipelines, read in
a thread of their own into a bounded buffer. OpenCV reads files, streams and cameras; GStreamer
references (``gst:``, ``csi:``, ``rtsp+hw://``, ``v4l2:``, a bare launch description) run through
PyGObject (``gst.py``), behind the same small ``Capture`` contract, so everything below holds for both.

- **Files** in ``process_all`` mode hand over every frame (the reader waits for the consumer, nothing
  is dropped); with ``realtime=True`` they are paced at their own frame rate and treated as live.
- **Live sources** (streams, cameras, live GStreamer pipelines, paced files) keep only the newest frame:
  a frame the consumer had no time for is replaced and counted as dropped, so latency never builds up.
  A GStreamer pipeline that is not live (``videotestsrc``, ``filesrc``: GStreamer says so when it
  prerolls) is read like a file: every frame, and its end of stream ends the source.
- **Lost streams** are opened again, forever, with exponential backoff and full jitter. A stream that
  stops delivering without an error (a frozen RTSP session) is declared stalled when no frame came for
  ``stall_factor`` frame intervals *as measured on that stream* (bounded by ``stall_min_s`` and
  ``stall_max_s``); its reader is abandoned (OpenCV cannot interrupt a blocking read; FFmpeg's own
  read timeout ends it later; a GStreamer reader notices within 0.1 s and sets its pipeline to NULL)
  and a fresh one connects.
- A reference that cannot work here (a GStreamer element or the bindings missing) is refused when the
  source is made: ``GstSourceError``, an ``InvalidInput`` (HTTP 400), never a retry loop.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from edge_agent.errors import GstSourceError
from edge_agent.pipelines import gst

if TYPE_CHECKING:
    import cv2

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")


@dataclass(frozen=True)
class Frame:
    image: np.ndarray
    frame_id: int  # 1, 2, ... over the life of the source (reconnects included)
    captured_at: float  # epoch seconds when it was captured (GStreamer, live: from the buffer's PTS) or read
    monotonic: float
    pts: float | None = None  # position in the stream, seconds (GStreamer sources whose buffers carry one)


class EndOfStream(Exception):
    """A file or folder was read to its end (live sources never end).

    Control flow from ``VideoSource.read`` to the pipeline's loop, not an error: it never leaves the
    pipelines package, so it is not in the error tree."""


class Capture(Protocol):
    """What a reader thread reads from: OpenCV's ``VideoCapture`` (``_CvCapture``) or ``gst.GstCapture``."""

    fps: float | None  # declared by the container, camera or caps
    error: str  # why the last ``read`` returned None, where known

    @property
    def finite(self) -> bool:
        """Its end is the end of the source (a file), not a lost connection."""

    def read(self) -> gst.Grab | None: ...

    def release(self) -> None: ...


class _CvCapture:
    def __init__(self, capture: cv2.VideoCapture, finite: bool) -> None:
        import cv2  # lazy: cv2

        self._capture, self.finite, self.error = capture, finite, ""
        fps = capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and 0 < fps < 1000 else None

    def read(self) -> gst.Grab | None:
        ok, image = self._capture.read()
        return gst.Grab(image) if ok and image is not None else None

    def release(self) -> None:
        self._capture.release()


def describe(reference: str | int) -> tuple[str, bool]:
    """(kind, live) of a video reference: ``file``, ``folder``, ``stream``, ``usb`` or ``gstreamer`` (live
    until its pipeline says otherwise)."""
    if isinstance(reference, int) or (isinstance(reference, str) and reference.isdigit()):
        return "usb", True
    text = str(reference)
    if text.startswith("/dev/video"):
        return "usb", True
    if gst.is_reference(text):
        return "gstreamer", True
    if text.lower().startswith(STREAM_SCHEMES):
        return "stream", True
    path = Path(text)
    if path.is_dir():
        return "folder", False
    return "file", False


class _Buffer:
    """A bounded frame buffer: blocking (nothing dropped) or newest-wins (drops counted)."""

    def __init__(self, size: int, newest_wins: bool) -> None:
        self._frames: deque[Frame | None] = deque()
        self._size = size
        self._newest_wins = newest_wins
        self._cond = threading.Condition()
        self.dropped = 0

    def configure(self, size: int, newest_wins: bool) -> None:
        """Another mode, before the first frame (a GStreamer pipeline that turned out not to be live)."""
        with self._cond:
            self._size, self._newest_wins = size, newest_wins

    def put(self, frame: Frame | None, stop: threading.Event) -> None:
        """``None`` marks the end of the source."""
        with self._cond:
            if frame is not None and self._newest_wins:
                while len(self._frames) >= self._size:
                    self._frames.popleft()
                    self.dropped += 1
            else:
                while len(self._frames) >= self._size and not stop.is_set():
                    self._cond.wait(0.1)
            self._frames.append(frame)
            self._cond.notify_all()

    def get(self, timeout: float) -> Frame | None:
        """The next frame; ``EndOfStream`` at the end; None when nothing came within ``timeout``."""
        with self._cond:
            if not self._frames:
                self._cond.wait(timeout)
            if not self._frames:
                return None
            frame = self._frames.popleft()
            self._cond.notify_all()
        if frame is None:
            raise EndOfStream
        return frame


class VideoSource:
    def __init__(self, reference: str | int, *, realtime: bool = False, buffer_size: int = 4,
                 reconnect_min_s: float = 0.5, reconnect_max_s: float = 30.0, stall_factor: float = 10.0,
                 stall_min_s: float = 2.0, stall_max_s: float = 30.0, open_timeout_s: float = 10.0) -> None:
        self.reference = reference
        self.kind, live = describe(reference)
        self.launch = ""  # GStreamer: the launch description the reference expands to
        if self.kind == "gstreamer":
            self.launch = gst.expand(str(reference))
            gst.check(self.launch)  # GstSourceError (400) now, rather than a pipeline that retries forever
        self.live = live or realtime
        self.realtime = realtime
        self.buffer_size = buffer_size
        self.reconnect_min_s, self.reconnect_max_s = reconnect_min_s, reconnect_max_s
        self.stall_factor, self.stall_min_s, self.stall_max_s = stall_factor, stall_min_s, stall_max_s
        self.open_timeout_s = open_timeout_s
        self._buffer = _Buffer(1 if self.live else buffer_size, newest_wins=self.live)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._generation = 0
        self._next_id = 1
        self.state = "starting"
        self.last_error = ""
        self.reconnects = 0
        self.frames_read = 0
        self.source_fps: float | None = None  # measured
        self.declared_fps: float | None = None  # what the container or camera says
        self._last_frame_at: float | None = None
        self._interval: float | None = None  # mean time between the last frames
        self._times: deque[float] = deque(maxlen=32)
        self.resolution: tuple[int, int] | None = None

    # ------------------------------------------------------------------ consumer side

    def start(self) -> None:
        self._spawn()

    def read(self, timeout: float = 0.5) -> Frame | None:
        """The next frame, None if none came in ``timeout`` or the source is stopped; raises
        ``EndOfStream``. Detects stalls."""
        if self._stop.is_set():
            return None
        frame = self._buffer.get(timeout)
        if self._stop.is_set():  # a frame read while stop() ran is not handed out
            return None
        if frame is None and self.live and self.state == "streaming" and self._stalled():
            self._restart(f"stalled: no frame for {time.monotonic() - (self._last_frame_at or 0):.1f} s")
        return frame

    @property
    def dropped(self) -> int:
        return self._buffer.dropped

    def stall_timeout(self) -> float:
        interval = self._interval if self._interval is not None else 1.0
        return min(self.stall_max_s, max(self.stall_min_s, self.stall_factor * interval))

    def _stalled(self) -> bool:
        return self._last_frame_at is not None and time.monotonic() - self._last_frame_at > self.stall_timeout()

    def stop(self) -> None:
        """Returns at once: the reader notices at its next frame or timeout (a blocked read of a dead
        stream ends with FFmpeg's read timeout), and releases its capture itself."""
        self._stop.set()
        self.state = "stopped"

    # ------------------------------------------------------------------ reader threads

    def _spawn(self) -> None:
        with self._lock:
            self._generation += 1
            generation = self._generation
        threading.Thread(target=self._read_loop, args=(generation,), name=f"source-{generation}",
                         daemon=True).start()

    def _restart(self, why: str) -> None:
        log.warning("source %s: %s; connecting again", self.reference, why)
        self.last_error = why
        self.state = "reconnecting"
        self.reconnects += 1
        self._last_frame_at = None
        self._times.clear()
        self._spawn()  # the old reader sees its generation is stale and leaves

    def _current(self, generation: int) -> bool:
        return generation == self._generation and not self._stop.is_set()

    def _read_loop(self, generation: int) -> None:
        attempt = 0
        while self._current(generation):
            permanent = self.kind == "file"  # a file that cannot be opened will not get better (paced or not)
            capture: Capture | None = None
            try:
                if self.kind == "folder":
                    self._read_folder(generation)
                    return
                capture = self._open(generation)
            except GstSourceError as exc:  # an element or the bindings went missing: no retry helps
                permanent = True
                self.last_error = str(exc)
            except Exception as exc:
                self.last_error = f"cannot open: {exc}"
            if capture is None:
                if not self._current(generation):
                    return
                if permanent:
                    self._fail()
                    return
                attempt += 1
                self.state = "reconnecting"
                delay = random.uniform(self.reconnect_min_s,
                                       min(self.reconnect_max_s, self.reconnect_min_s * 2 ** min(attempt, 16)))
                if self._stop.wait(delay):
                    return
                self.reconnects += 1
                continue
            attempt = 0
            try:
                end = self._pump(capture, generation)
            except GstSourceError as exc:  # frames the source cannot use (not BGR)
                self.last_error, end = str(exc), "failed"
            finally:
                capture.release()
            if not self._current(generation):
                return
            if end == "failed":
                self._fail()
                return
            if end == "finished":
                self.state = "finished"
                self._buffer.put(None, self._stop)
                return
            self.last_error = capture.error or "the stream ended or failed"
            self.state = "reconnecting"
            log.warning("source %s: lost (%s); connecting again", self.reference, self.last_error)
            self.reconnects += 1
            if self._stop.wait(random.uniform(0, self.reconnect_min_s)):
                return

    def _fail(self) -> None:
        self.state = "failed"
        log.error("source %s: %s", self.reference, self.last_error)
        self._buffer.put(None, self._stop)

    def _open(self, generation: int) -> Capture | None:
        self.state = "connecting"
        if self.kind == "gstreamer":
            return self._open_gst(generation)
        import cv2  # lazy: cv2

        ref = self.reference
        if self.kind == "usb":
            capture = cv2.VideoCapture(int(ref) if str(ref).isdigit() else str(ref), cv2.CAP_V4L2)
        else:
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.open_timeout_s * 1000),
                      cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.stall_max_s * 1000)]
            if self.kind == "file" and not Path(str(ref)).is_file():
                raise FileNotFoundError(f"no such video file: {ref}")
            capture = cv2.VideoCapture(str(ref), cv2.CAP_FFMPEG, params)
        if not capture.isOpened():
            capture.release()
            self.last_error = f"cannot open {self.kind} source {ref}"
            return None
        opened = _CvCapture(capture, finite=self.kind == "file")
        self.declared_fps = opened.fps
        return opened

    def _open_gst(self, generation: int) -> Capture:
        """Started, its first frame waiting; a pipeline that is not live switches the source to reading
        every frame (unless paced: then GStreamer's clock paces it)."""
        capture = gst.GstCapture(self.launch, realtime=self.realtime, open_timeout_s=self.open_timeout_s,
                                 cancelled=lambda: not self._current(generation))
        try:
            capture.open()
        except gst.GstOpenError as exc:
            capture.release()
            if capture.finite:  # a file-like pipeline that fails will fail again, like a file
                raise GstSourceError(f"the GStreamer pipeline failed: {exc}") from exc
            raise
        except BaseException:
            capture.release()
            raise
        self.declared_fps = capture.fps
        if not capture.live and not self.realtime and self.live and self.frames_read == 0:
            self.live = False
            self._buffer.configure(self.buffer_size, newest_wins=False)
        return capture

    def _emit(self, image: np.ndarray, age_s: float = 0.0, pts: float | None = None) -> None:
        now = time.monotonic()
        times = self._times
        times.append(now)  # the last 32 frames: a burst after connecting does not skew the rate for long
        if len(times) >= 2 and times[-1] > times[0]:
            self._interval = (times[-1] - times[0]) / (len(times) - 1)
            self.source_fps = 1.0 / self._interval
        self._last_frame_at = now
        self.resolution = (image.shape[1], image.shape[0])
        frame = Frame(image, self._next_id, time.time() - age_s, now - age_s, pts)
        self._next_id += 1
        self.frames_read += 1
        self.state = "streaming"
        self._buffer.put(frame, self._stop)

    def _pump(self, capture: Capture, generation: int) -> str:
        """Read until the capture ends: ``finished`` (a finite source's end), ``failed`` (a finite source
        broke) or ``lost`` (a live one: connect again)."""
        paced = self.realtime and self.declared_fps and self.kind != "gstreamer"  # GStreamer paces itself
        pace = 1.0 / self.declared_fps if paced and self.declared_fps else None
        next_at = time.monotonic()
        while self._current(generation):
            grab = capture.read()
            if not self._current(generation):
                return "lost"
            if grab is None:
                if not capture.finite:
                    return "lost"
                self.last_error = capture.error
                return "failed" if capture.error else "finished"
            self._emit(grab.image, grab.age_s, grab.pts_s)
            if pace is not None:
                next_at += pace
                delay = next_at - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return "lost"
        return "lost"

    def _read_folder(self, generation: int) -> None:
        import cv2  # lazy: cv2

        folder = Path(str(self.reference))
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        self.state = "streaming"
        for path in files:
            if not self._current(generation):
                return
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                log.warning("source %s: cannot read %s; skipped", folder, path.name)
                continue
            self._emit(image)
        self.state = "finished"
        self._buffer.put(None, self._stop)

    def status(self) -> dict[str, Any]:
        return {"reference": str(self.reference), "kind": self.kind, "live": self.live, "state": self.state,
                "frames_read": self.frames_read, "dropped": self.dropped, "reconnects": self.reconnects,
                "source_fps": round(self.source_fps, 2) if self.source_fps else None,
                "declared_fps": self.declared_fps, "resolution": list(self.resolution) if self.resolution else None,
                "stall_timeout_s": round(self.stall_timeout(), 2), "last_error": self.last_error or None}

