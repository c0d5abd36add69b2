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
- Roboflow's ``BufferFillingStrategy`` (``WAIT``, ``DROP_OLDEST``, ``DROP_LATEST``) and
  ``BufferConsumptionStrategy`` (``LAZY``, ``EAGER``) override those defaults per source; OpenCV capture
  properties (``{"frame_width": 1920}``) are set when a capture opens. Each source has a ``source_id``
  (its index in the pipeline), Roboflow's ``describe_source()``, and tells a listener of each change
  of ``state``.
- A reference that cannot work here (a GStreamer element or the bindings missing) is refused when the
  source is made: ``GstSourceError``, an ``InvalidInput`` (HTTP 400), never a retry loop.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from edge_agent.errors import GstSourceError, InvalidInput
from edge_agent.pipelines import gst
from edge_agent.pipelines.entities import (
    STREAM_STATES,
    BufferConsumptionStrategy,
    BufferFillingStrategy,
    SourceMetadata,
    SourceProperties,
    StreamState,
)
from edge_agent.provisioning.download import redact

if TYPE_CHECKING:
    import cv2

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
S = TypeVar("S", BufferFillingStrategy, BufferConsumptionStrategy)
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")


@dataclass(frozen=True)
class Frame:
    image: np.ndarray
    frame_id: int  # 1, 2, ... over the life of the source (reconnects included)
    captured_at: float  # epoch seconds when it was captured (GStreamer, live: from the buffer's PTS) or read
    monotonic: float
    pts: float | None = None  # position in the stream, seconds (GStreamer sources whose buffers carry one)
    source_id: int = 0  # the index of its source in the pipeline's list of video references


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


def _strategy(kind: type[S], value: S | str | None, name: str) -> S | None:
    """Roboflow's buffer strategy ``value`` as the enum ``kind`` (its name as a string too), or None."""
    if value is None or isinstance(value, kind):
        return value
    try:
        return kind(value)
    except ValueError:
        raise InvalidInput(f"{name}: {value!r} is not one of {', '.join(m.value for m in kind)}") from None


def _capture_properties(properties: dict[str, float]) -> dict[int, float]:
    """``{"frame_width": 1920}`` -> ``{cv2.CAP_PROP_FRAME_WIDTH: 1920.0}``; an unknown name is refused."""
    import cv2  # lazy: cv2

    out = {}
    for name, value in properties.items():
        prop = getattr(cv2, f"CAP_PROP_{str(name).upper()}", None)
        if not isinstance(prop, int) or not isinstance(value, (int, float)):
            raise InvalidInput(f"video_source_properties: {name!r}={value!r} is not an OpenCV capture property "
                               "with a number (e.g. {'frame_width': 1920, 'frame_height': 1080, 'fps': 30})")
        out[prop] = float(value)
    return out


class _Buffer:
    """A bounded frame buffer: blocking (nothing dropped), newest-wins or new-frame-dropped when full
    (Roboflow's ``WAIT``, ``DROP_OLDEST``, ``DROP_LATEST``); taken oldest first or, ``eager``, newest
    only (drops counted)."""

    def __init__(self, size: int, newest_wins: bool, drop_latest: bool = False, eager: bool = False) -> None:
        self._frames: deque[Frame | None] = deque()
        self._size = size
        self._newest_wins = newest_wins
        self._drop_latest = drop_latest
        self._eager = eager
        self._cond = threading.Condition()
        self.dropped = 0

    def configure(self, size: int, newest_wins: bool, drop_latest: bool = False, eager: bool = False) -> None:
        """Another mode, before the first frame (a GStreamer pipeline that turned out not to be live)."""
        with self._cond:
            self._size, self._newest_wins, self._drop_latest, self._eager = size, newest_wins, drop_latest, eager

    def put(self, frame: Frame | None, stop: threading.Event) -> None:
        """``None`` marks the end of the source."""
        with self._cond:
            if frame is not None and self._drop_latest and len(self._frames) >= self._size:
                self.dropped += 1
                return
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
            while self._eager and frame is not None and self._frames and self._frames[0] is not None:
                frame = self._frames.popleft()  # the newest frame; the older one is dropped (an end mark stays)
                self.dropped += 1
            self._cond.notify_all()
        if frame is None:
            raise EndOfStream
        return frame


StateListener = Callable[["VideoSource", str, str], None]  # (source, previous state, new state)


class VideoSource:
    """``source_id``: its index in the pipeline's references; ``properties``: OpenCV capture properties
    set on open (Roboflow's ``video_source_properties``: ``{"frame_width": 1920, "fps": 30}``);
    ``filling``/``consumption``: Roboflow's buffer strategies, overriding the defaults of the kind;
    ``on_state``: called on each change of ``state``, from whichever thread makes it."""

    def __init__(self, reference: str | int, *, realtime: bool = False, buffer_size: int = 4,
                 reconnect_min_s: float = 0.5, reconnect_max_s: float = 30.0, stall_factor: float = 10.0,
                 stall_min_s: float = 2.0, stall_max_s: float = 30.0, open_timeout_s: float = 10.0,
                 source_id: int = 0, properties: dict[str, float] | None = None,
                 filling: BufferFillingStrategy | str | None = None,
                 consumption: BufferConsumptionStrategy | str | None = None,
                 on_state: StateListener | None = None) -> None:
        self._state = "starting"
        self.on_state = on_state
        self.source_id = source_id
        self.reference = reference
        self.shown = redact(reference)  # for logs and status: credentials in a URL hidden
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
        self.properties = _capture_properties(properties or {}) if properties else {}
        self.filling = _strategy(BufferFillingStrategy, filling, "source_buffer_filling_strategy")
        self.consumption = _strategy(BufferConsumptionStrategy, consumption, "source_buffer_consumption_strategy")
        self._buffer = _Buffer(1 if self.live else buffer_size, **self._buffer_modes(self.live))
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._generation = 0
        self._next_id = 1
        self.last_error = ""
        self.reconnects = 0
        self.frames_read = 0
        self.source_fps: float | None = None  # measured
        self.declared_fps: float | None = None  # what the container or camera says
        self._last_frame_at: float | None = None
        self._interval: float | None = None  # mean time between the last frames
        self._times: deque[float] = deque(maxlen=32)
        self.resolution: tuple[int, int] | None = None

    def _buffer_modes(self, live: bool) -> dict[str, bool]:
        filling = self.filling or (BufferFillingStrategy.DROP_OLDEST if live else BufferFillingStrategy.WAIT)
        consumption = self.consumption or (BufferConsumptionStrategy.EAGER if live else BufferConsumptionStrategy.LAZY)
        fill = BufferFillingStrategy
        return {"newest_wins": filling in (fill.DROP_OLDEST, fill.ADAPTIVE_DROP_OLDEST),  # ADAPTIVE_: the plain form
                "drop_latest": filling in (fill.DROP_LATEST, fill.ADAPTIVE_DROP_LATEST),
                "eager": consumption is BufferConsumptionStrategy.EAGER}

    @property
    def state(self) -> str:
        """starting, connecting, streaming, reconnecting, finished, failed or stopped."""
        return self._state

    @state.setter
    def state(self, value: str) -> None:
        previous, self._state = self._state, value
        if previous != value and self.on_state is not None:
            try:
                self.on_state(self, previous, value)
            except Exception:
                log.exception("source %s: a state listener failed", self.shown)

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
        log.warning("source %s: %s; connecting again", self.shown, why)
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
            log.warning("source %s: lost (%s); connecting again", self.shown, self.last_error)
            self.reconnects += 1
            if self._stop.wait(random.uniform(0, self.reconnect_min_s)):
                return

    def _fail(self) -> None:
        self.state = "failed"
        log.error("source %s: %s", self.shown, self.last_error)
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
            self.last_error = f"cannot open {self.kind} source {self.shown}"
            return None
        for prop, value in self.properties.items():
            if not capture.set(prop, value):
                log.info("source %s: capture property %s=%s not taken", self.shown, prop, value)
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
            self._buffer.configure(self.buffer_size, **self._buffer_modes(False))
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
        frame = Frame(image, self._next_id, time.time() - age_s, now - age_s, pts, self.source_id)
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

    def describe_source(self) -> SourceMetadata:
        """Roboflow's ``SourceMetadata`` of this source (a watchdog's report)."""
        width, height = self.resolution or (0, 0)
        fps = self.declared_fps or self.source_fps or 0.0
        props = SourceProperties(width, height, 0, self.kind in ("file", "folder"), fps,
                                 is_reconnectable=self.kind not in ("file", "folder"))
        filling = self.filling or (BufferFillingStrategy.DROP_OLDEST if self.live else BufferFillingStrategy.WAIT)
        consumption = self.consumption or (BufferConsumptionStrategy.EAGER if self.live
                                           else BufferConsumptionStrategy.LAZY)
        return SourceMetadata(props if self.resolution else None, self.shown, self._buffer._size,
                              STREAM_STATES.get(self.state, StreamState.NOT_STARTED), filling, consumption,
                              self.source_id)

    def status(self) -> dict[str, Any]:
        return {"reference": self.shown, "kind": self.kind, "live": self.live, "state": self.state,
                "frames_read": self.frames_read, "dropped": self.dropped, "reconnects": self.reconnects,
                "source_fps": round(self.source_fps, 2) if self.source_fps else None,
                "declared_fps": self.declared_fps, "resolution": list(self.resolution) if self.resolution else None,
                "stall_timeout_s": round(self.stall_timeout(), 2), "last_error": self.last_error or None}

