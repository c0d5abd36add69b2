"""GStreamer video sources through PyGObject (``gi.repository.Gst``): the reference forms, their
expansion into launch descriptions, the checks made before a pipeline is accepted, and ``GstCapture``,
one running pipeline whose ``appsink`` hands BGR frames to ``sources.VideoSource``.

It owns no thread and no policy: reconnects, stalls, buffering, end of stream and metrics are the
``VideoSource``'s, the same as for OpenCV's captures. ``gi`` is imported, and GStreamer initialised, the
first time a GStreamer reference is checked or opened, never at import.

Reference forms (docs/http.md#video-references):

    gst:<launch description>          a pipeline; without an appsink, ``APPSINK_TAIL`` is appended
    <launch description with " ! ">   the same (what OpenCV's GStreamer back-end took)
    csi:<sensor-id>[?width=&height=&fps=&flip=]                a Jetson CSI camera (nvarguscamerasrc)
    rtsp+hw://host/path[?codec=h264|h265&latency=ms&transport=tcp|udp]   RTSP, Jetson hardware decoder
    v4l2:/dev/videoN[?width=&height=&fps=&format=raw|mjpeg]    a V4L2 camera through GStreamer

Errors: ``errors.GstSourceError`` (400, ``video_source_unavailable``) for what will not get better by trying
again (no bindings, a missing element, a launch description GStreamer refuses, frames in a format the
source does not convert, a pipeline that is not live failing); ``GstOpenError`` for a pipeline that
did not start or deliver its first frame (a live source connects again with backoff).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_agent.errors import GstSourceError

log = logging.getLogger(__name__)

# What the appsink takes: BGR as it is, or what OpenCV turns into BGR several times faster than
# videoconvert does (a decoder's I420/NV12, nvvidconv's BGRx); videoconvert passes those through.
SINK_FORMATS = "video/x-raw,format={BGR,BGRx,BGRA,I420,NV12}"
APPSINK_TAIL = f"videoconvert ! {SINK_FORMATS} ! appsink name=sink max-buffers=1 drop=true sync=false"
PREFIXES = ("gst:", "csi:", "rtsp+hw://", "v4l2:")
POLL_NS = 100_000_000  # how long one pull waits before looking at the bus and at cancellation again

# Where a missing element comes from, for the error message (Debian / JetPack package names).
PROVIDERS = {
    **dict.fromkeys(("nvarguscamerasrc", "nvvidconv", "nvv4l2decoder", "nvv4l2h264enc", "nvv4l2h265enc",
                     "nvvideoconvert", "nvjpegdec"), "JetPack's nvidia-l4t-gstreamer"),
    **dict.fromkeys(("avdec_h264", "avdec_h265"), "gstreamer1.0-libav"),
    **dict.fromkeys(("h264parse", "h265parse"), "gstreamer1.0-plugins-bad"),
    **dict.fromkeys(("rtspsrc", "rtph264depay", "rtph265depay", "v4l2src", "jpegdec", "udpsrc", "souphttpsrc"),
                    "gstreamer1.0-plugins-good"),
    **dict.fromkeys(("x264enc",), "gstreamer1.0-plugins-ugly"),
    **dict.fromkeys(("appsink", "videoconvert", "videoscale", "videorate", "videotestsrc", "decodebin",
                     "uridecodebin", "playbin"), "gstreamer1.0-plugins-base"),
}

CSI_OPTIONS = {"width": 1920, "height": 1080, "fps": 30, "flip": None}
RTSP_OPTIONS = ("codec", "latency", "transport")
V4L2_OPTIONS = ("width", "height", "fps", "format")


class GstOpenError(Exception):
    """The pipeline did not start or deliver a first frame (a camera away, a server down).

    Control flow between ``GstCapture`` and ``sources.VideoSource``, which connects again or turns it
    into a ``GstSourceError``; it never leaves the pipelines package, so it is not in the error tree."""


# ---------------------------------------------------------------------------------- references (pure)


def is_reference(text: str) -> bool:
    """Is ``text`` a GStreamer reference (one of ``PREFIXES`` or a bare launch description)?"""
    return text.lower().startswith(PREFIXES) or " ! " in text


def expand(reference: str) -> str:
    """The launch description of a GStreamer reference, ending in the appsink the source reads."""
    text = reference.strip()
    if not all(c.isprintable() or c in "\t\r\n" for c in text):  # NUL, other controls, lone surrogates
        raise GstSourceError("the GStreamer reference holds a control or unencodable character")
    lower = text.lower()
    if lower.startswith("gst:"):
        launch = text[4:].strip()
    elif lower.startswith("csi:"):
        launch = _csi(text[4:])
    elif lower.startswith("rtsp+hw://"):
        launch = _rtsp_hw(text[len("rtsp+hw://"):])
    elif lower.startswith("v4l2:"):
        launch = _v4l2(text[5:])
    else:
        launch = text
    if not launch:
        raise GstSourceError(f"empty GStreamer pipeline in video reference {reference!r}: "
                             "give one after 'gst:', e.g. 'gst:v4l2src ! videoconvert'")
    if "appsink" not in element_names(launch):
        launch = f"{launch} ! {APPSINK_TAIL}"
    return launch


def _options(query: str, form: str, accepted: tuple[str, ...]) -> dict[str, str]:
    options: dict[str, str] = {}
    for part in filter(None, query.split("&")):
        key, _, value = part.partition("=")
        if key not in accepted:
            raise GstSourceError(f"unknown option {key!r} in a {form} reference: accepted are "
                                 f"{', '.join(accepted)}")
        options[key] = value
    return options


def _positive(options: dict[str, Any], key: str, form: str) -> int:
    value = str(options[key])
    if not value.isdigit() or int(value) <= 0:
        raise GstSourceError(f"option {key}={value!r} of a {form} reference: expected a positive integer")
    return int(value)


def _quoted(value: str, what: str) -> str:
    if any(c in value for c in '"\\') or not value.isprintable():
        raise GstSourceError(f"{what} holds a quote, a backslash or a control character")
    return f'"{value}"'


def _csi(rest: str) -> str:
    sensor, _, query = rest.partition("?")
    if not sensor.strip().isdigit():
        raise GstSourceError(f"csi reference: expected a sensor id such as 'csi:0', got {sensor!r}")
    options: dict[str, Any] = {**CSI_OPTIONS, **_options(query, "csi:", tuple(CSI_OPTIONS))}
    w, h, fps = (_positive(options, key, "csi:") for key in ("width", "height", "fps"))
    flip = ""
    if options["flip"] is not None:
        if options["flip"] not in tuple("01234567"):
            raise GstSourceError(f"option flip={options['flip']!r} of a csi: reference: expected 0..7 "
                                 "(nvvidconv's flip-method)")
        flip = f" flip-method={options['flip']}"
    return (f"nvarguscamerasrc sensor-id={int(sensor)} ! video/x-raw(memory:NVMM),width={w},height={h},"
            f"framerate={fps}/1 ! nvvidconv{flip} ! video/x-raw,format=BGRx")


def _rtsp_hw(rest: str) -> str:
    address, _, query = rest.partition("?")
    kept: list[str] = []
    ours: list[str] = []
    for part in filter(None, query.split("&")):  # the camera's own query stays as it was written
        (ours if part.partition("=")[0] in RTSP_OPTIONS else kept).append(part)
    options = _options("&".join(ours), "rtsp+hw://", RTSP_OPTIONS)
    if not address or address.startswith("/"):
        raise GstSourceError("rtsp+hw reference: expected rtsp+hw://host[:port]/path")
    url = "rtsp://" + address + ("?" + "&".join(kept) if kept else "")
    codec = options.get("codec", "h264").lower()
    if codec not in ("h264", "h265"):
        raise GstSourceError(f"option codec={codec!r} of an rtsp+hw:// reference: expected h264 or h265")
    latency = _positive({"latency": options.get("latency", "200")}, "latency", "rtsp+hw://")
    transport = options.get("transport", "")
    if transport not in ("", "tcp", "udp"):
        raise GstSourceError(f"option transport={transport!r} of an rtsp+hw:// reference: expected tcp or udp")
    protocols = f" protocols={transport}" if transport else ""
    return (f"rtspsrc location={_quoted(url, 'the RTSP address')} latency={latency}{protocols} "
            f"! rtp{codec}depay ! {codec}parse ! nvv4l2decoder ! nvvidconv ! video/x-raw,format=BGRx")


def _v4l2(rest: str) -> str:
    device, _, query = rest.partition("?")
    if device.isdigit():
        device = f"/dev/video{device}"
    if not device.startswith("/dev/"):
        raise GstSourceError(f"v4l2 reference: expected a device such as 'v4l2:/dev/video0', got {device!r}")
    options = _options(query, "v4l2:", V4L2_OPTIONS)
    fmt = options.pop("format", "raw").lower()
    if fmt not in ("raw", "mjpeg"):
        raise GstSourceError(f"option format={fmt!r} of a v4l2: reference: expected raw or mjpeg")
    fields = [f"{k}={_positive(options, k, 'v4l2:')}" for k in ("width", "height") if k in options]
    if "fps" in options:
        fields.append(f"framerate={_positive(options, 'fps', 'v4l2:')}/1")
    launch = f"v4l2src device={_quoted(device, 'the device path')}"
    if fmt == "mjpeg":
        return f"{launch} ! {','.join(['image/jpeg', *fields])} ! jpegdec"
    return f"{launch} ! {','.join(['video/x-raw', *fields])}" if fields else launch


_ELEMENT = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_PROPERTY = re.compile(r"[A-Za-z_][\w:-]*=")


def _tokens(launch: str) -> list[str]:
    """Words of a launch description: ``!`` alone, whitespace and ``=`` as gst-launch reads them."""
    out, word, quote = [], "", False
    text = re.sub(r'\s*=\s*', "=", launch)  # gst-launch allows "pattern = ball"
    for char in text:
        if char == '"':
            quote = not quote
            word += char
        elif not quote and (char.isspace() or char == "!"):
            if word:
                out.append(word)
            if char == "!":
                out.append("!")
            word = ""
        else:
            word += char
    if word:
        out.append(word)
    return out


def element_names(launch: str) -> list[str]:
    """The element factory names a launch description uses, in order (caps, properties, pad
    references such as ``t.`` and URIs are not elements)."""
    names = []
    for token in _tokens(launch):
        if token in ("!", "(", ")") or _PROPERTY.match(token) or "/" in token.split(",")[0] or "." in token:
            continue
        if _ELEMENT.fullmatch(token):
            names.append(token)
    return names


# ---------------------------------------------------------------------------------- GStreamer itself


def _keep_the_c_unwinder() -> None:
    """Put libgcc's unwinder in the process's global symbol scope before GStreamer is loaded.

    libgstreamer needs libunwind, which exports the same ``_Unwind_*`` symbols as libgcc_s; loaded
    first into the global scope (GModule opens libraries RTLD_GLOBAL), it then answers C++ exceptions
    thrown by libraries that bind those symbols later (ONNX Runtime, protobuf), and such a throw aborts
    or crashes the process (seen: ONNX Runtime refusing a damaged model after Gst.init, with onnx
    loaded). With libgcc_s global first, the lookup finds it first."""
    import ctypes  # lazy: ctypes

    try:
        ctypes.CDLL("libgcc_s.so.1", mode=os.RTLD_GLOBAL)
    except OSError:  # not a glibc system with libgcc_s: nothing to keep
        pass


@functools.cache  # once per process; a failure is not kept, so installing the bindings later works
def gst_module() -> Any:
    """``gi.repository.Gst``, initialised; ``GstSourceError`` saying what to install where it is not."""
    _keep_the_c_unwinder()
    try:
        import gi  # lazy: gi

        gi.require_version("Gst", "1.0")
        from gi.repository import Gst  # lazy: gi
    except (ImportError, ValueError) as exc:
        raise GstSourceError(
            f"GStreamer's Python bindings cannot be imported ({exc}): install python3-gi and "
            "gir1.2-gstreamer-1.0, and make Debian's gi visible to this Python (docs/http.md#video-references)"
        ) from exc
    if not Gst.is_initialized():
        Gst.init(None)  # gst_init is idempotent and locks itself
    return Gst


def missing_elements(launch: str) -> list[str]:
    """The elements of ``launch`` this GStreamer installation lacks."""
    Gst = gst_module()
    return [name for name in dict.fromkeys(element_names(launch)) if Gst.ElementFactory.find(name) is None]


def check(launch: str) -> None:
    """Raise ``GstSourceError`` unless ``launch`` can run here: bindings, every element, the syntax and
    properties (parsed, never started: no device is opened, no address contacted), an appsink."""
    missing = missing_elements(launch)
    if missing:
        raise GstSourceError("; ".join(
            f"GStreamer element {name!r} not found: "
            + (f"it comes with {PROVIDERS[name]}" if name in PROVIDERS else "install the plugin that has it")
            for name in missing) + " (gst-inspect-1.0 lists the installed elements)")
    Gst = gst_module()
    pipeline = _parse(Gst, launch)
    try:
        _appsink(Gst, pipeline)
    finally:
        pipeline.set_state(Gst.State.NULL)


def _parse(Gst: Any, launch: str) -> Any:
    from gi.repository import GLib  # lazy: gi

    try:
        element = Gst.parse_launch_full(launch, None, Gst.ParseFlags.FATAL_ERRORS)
    except GLib.Error as exc:
        raise GstSourceError(f"GStreamer cannot build the pipeline: {exc.message}") from exc
    if isinstance(element, Gst.Pipeline):
        return element
    pipeline = Gst.Pipeline.new(None)  # a single element or a bin: give it a clock and a bus
    pipeline.add(element)
    return pipeline


def _items(iterator: Any, Gst: Any) -> list[Any]:
    out: list[Any] = []
    while True:
        result, value = iterator.next()
        if result == Gst.IteratorResult.OK:
            out.append(value)
        elif result == Gst.IteratorResult.RESYNC:
            iterator.resync()
            out.clear()
        else:
            return out


def _appsink(Gst: Any, pipeline: Any) -> Any:
    """The appsink named ``sink``, else the last one of the description."""
    named = pipeline.get_by_name("sink")
    if named is not None and named.get_factory().get_name() == "appsink":
        return named
    # a bin lists its children newest first, and parse_launch adds them in the description's order
    sinks = [e for e in _items(pipeline.iterate_recurse(), Gst)
             if e.get_factory() is not None and e.get_factory().get_name() == "appsink"]
    if not sinks:
        raise GstSourceError("the GStreamer pipeline has no appsink to read frames from")
    return sinks[0]


@dataclass(frozen=True)
class Grab:
    """One frame out of a capture: the BGR image, how old it was when pulled (seconds, from the buffer's
    PTS on the pipeline clock; live pipelines only) and its position in the stream (seconds)."""

    image: np.ndarray
    age_s: float = 0.0
    pts_s: float | None = None


class GstCapture:
    """One pipeline, from ``open`` to ``release``, used by one thread. ``live`` is GStreamer's own
    answer (a live source does not preroll); a pipeline that is not live is finite (end of stream is
    its end) and read without dropping anything."""

    def __init__(self, launch: str, *, realtime: bool, open_timeout_s: float,
                 cancelled: Callable[[], bool]) -> None:
        self._gst = Gst = gst_module()
        self.pipeline = _parse(Gst, launch)
        self._sink = _appsink(Gst, self.pipeline)
        self._bus = self.pipeline.get_bus()
        self._cancelled = cancelled
        self.realtime, self.open_timeout_s = realtime, open_timeout_s
        self.live = False
        self.started = False  # PAUSED reached without error: ``live`` is GStreamer's answer
        self.fps: float | None = None
        self.error = ""  # what ended it, in GStreamer's words
        self.ended = False  # end of stream
        self._first: Grab | None = None

    @property
    def finite(self) -> bool:
        """Not live: its end of stream (or an error) ends the source; one that failed before saying is
        taken for live (a camera unplugged), and retried."""
        return self.started and not self.live

    def open(self) -> None:
        """Start it and wait for the first frame; ``GstOpenError`` if it does not come."""
        Gst = self._gst
        if self._sink.get_property("caps") is None:
            self._sink.set_property("caps", Gst.Caps.from_string(SINK_FORMATS))
        self._sink.set_property("emit-signals", False)
        change = self.pipeline.set_state(Gst.State.PAUSED)
        if change == Gst.StateChangeReturn.FAILURE:
            raise GstOpenError(self._drain() or "the pipeline did not start")
        self.live = change == Gst.StateChangeReturn.NO_PREROLL
        self.started = True
        # live: newest frame only; finite: wait for the reader (nothing dropped), paced by the clock if asked
        self._sink.set_property("max-buffers", 1 if self.live else 2)
        self._sink.set_property("drop", self.live)
        self._sink.set_property("sync", self.realtime and not self.live)
        if self.pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
            raise GstOpenError(self._drain() or "the pipeline did not start playing")
        deadline = time.monotonic() + self.open_timeout_s
        while self._first is None:
            self._first = self._pull()
            if self._first is None and (self.error or self.ended or self._cancelled()):
                raise GstOpenError(self.error or ("ended before its first frame" if self.ended else "stopped"))
            if self._first is None and time.monotonic() > deadline:
                raise GstOpenError(f"no frame within {self.open_timeout_s:g} s")

    def read(self) -> Grab | None:
        """The next frame; None at the end of the stream, on an error (``error``) or when cancelled."""
        first, self._first = self._first, None
        if first is not None:
            return first
        while not self._cancelled():
            grab = self._pull()
            if grab is not None:
                return grab
            if self.error or self.ended:
                return None
        return None

    def release(self) -> None:
        """To NULL: streaming threads stopped, devices and sockets closed."""
        self.pipeline.set_state(self._gst.State.NULL)
        self._drain()

    # ------------------------------------------------------------------

    def _pull(self) -> Grab | None:
        sample = self._sink.emit("try-pull-sample", POLL_NS)
        self._drain()
        if sample is None:
            if self._sink.get_property("eos") and not self.error:
                self.ended = True
            return None
        return self._grab(sample)

    def _drain(self) -> str:
        """Take every message off the bus (nothing else does: no main loop), keeping the first error."""
        Gst = self._gst
        while True:
            message = self._bus.pop()
            if message is None:
                return self.error
            if message.type == Gst.MessageType.ERROR:
                err, debug = message.parse_error()
                log.debug("GStreamer error from %s: %s (%s)", message.src.get_name(), err.message, debug)
                reason = re.search(r"reason ([\w-]+)", debug or "")  # "not-negotiated" says more than the message
                self.error = self.error or (f"{message.src.get_name()}: {err.message}"
                                            + (f" ({reason.group(1)})" if reason else ""))
            elif message.type == Gst.MessageType.EOS:
                self.ended = True
            elif message.type == Gst.MessageType.LATENCY:
                self.pipeline.recalculate_latency()
            elif message.type == Gst.MessageType.WARNING:
                err, _ = message.parse_warning()
                log.debug("GStreamer warning from %s: %s", message.src.get_name(), err.message)

    def _grab(self, sample: Any) -> Grab:
        Gst = self._gst
        caps = sample.get_caps().get_structure(0)
        _, width = caps.get_int("width")
        _, height = caps.get_int("height")
        ok, num, den = caps.get_fraction("framerate")
        if self.fps is None and ok and num > 0 and den > 0:
            self.fps = num / den
        buffer = sample.get_buffer()
        data = buffer.extract_dup(0, buffer.get_size())  # the one copy: GStreamer's memory -> Python bytes
        image = to_bgr(caps.get_value("format"), width, height, data)
        pts = buffer.pts
        if pts == Gst.CLOCK_TIME_NONE:
            return Grab(image)
        segment = sample.get_segment()
        stream = segment.to_stream_time(Gst.Format.TIME, pts)
        pts_s = stream / 1e9 if stream != Gst.CLOCK_TIME_NONE else None
        return Grab(image, self._age(segment.to_running_time(Gst.Format.TIME, pts)), pts_s)

    def _age(self, running: int) -> float:
        """Seconds since the frame's capture: running time is clock time minus the base time."""
        clock = self.pipeline.get_clock()
        if not self.live or clock is None or running == self._gst.CLOCK_TIME_NONE:
            return 0.0
        age = (clock.get_time() - self.pipeline.get_base_time() - running) / 1e9
        return age if 0.0 < age < 60.0 else 0.0


def _up4(n: int) -> int:
    return (n + 3) & ~3


def to_bgr(fmt: str, width: int, height: int, data: bytes) -> np.ndarray:
    """A frame in GStreamer's default layout (rows padded to 4 bytes; the appsink asks for no video
    meta, so upstream never hands it other strides) as a writable BGR image, as OpenCV's sources give:
    BGR is copied out of ``data`` (bytes, read-only); the others are converted by OpenCV into a new
    array."""
    import cv2  # lazy: cv2

    if fmt in ("BGR", "BGRx", "BGRA"):
        channels = 3 if fmt == "BGR" else 4
        stride = _up4(width * channels)
        _check_size(fmt, data, stride * height)
        image: np.ndarray = np.ndarray((height, width, channels), np.uint8, buffer=data,
                                       strides=(stride, channels, 1))
        return image.copy() if channels == 3 else np.asarray(cv2.cvtColor(image, cv2.COLOR_BGRA2BGR))
    if fmt in ("I420", "NV12"):
        if width % 2 or height % 2:
            raise GstSourceError(f"{fmt} frames of an odd size ({width}x{height}) cannot be converted: end the "
                                 "pipeline with 'videoconvert ! video/x-raw,format=BGR ! appsink'")
        code = cv2.COLOR_YUV2BGR_I420 if fmt == "I420" else cv2.COLOR_YUV2BGR_NV12
        return np.asarray(cv2.cvtColor(_packed_yuv(fmt, width, height, data), code))
    raise GstSourceError(f"the appsink receives {fmt} frames; the source takes {SINK_FORMATS}: end the pipeline "
                         "with 'videoconvert ! video/x-raw,format=BGR ! appsink' or leave the appsink out")


def _check_size(fmt: str, data: bytes, size: int) -> None:
    if len(data) < size:
        raise GstSourceError(f"a {fmt} buffer of {len(data)} bytes where {size} were expected")


def _packed_yuv(fmt: str, width: int, height: int, data: bytes) -> np.ndarray:
    """The planes as OpenCV wants them, one after the other in a (height * 3/2, width) array: a view
    where GStreamer's rows carry no padding (widths that are multiples of 8), else a copy."""
    luma = (height, width, _up4(width))  # rows, bytes used, stride
    if fmt == "I420":
        planes = [luma, (height // 2, width // 2, _up4(width // 2)), (height // 2, width // 2, _up4(width // 2))]
    else:  # NV12: interleaved U and V at full width
        planes = [luma, (height // 2, width, _up4(width))]
    _check_size(fmt, data, sum(rows * stride for rows, _, stride in planes))
    if all(cols == stride for _, cols, stride in planes):
        return np.frombuffer(data, np.uint8, count=width * height * 3 // 2).reshape(height * 3 // 2, width)
    out, offset = [], 0
    for rows, cols, stride in planes:
        out.append(np.ndarray((rows, cols), np.uint8, buffer=data, offset=offset, strides=(stride, 1)).ravel())
        offset += rows * stride
    return np.concatenate(out).reshape(height * 3 // 2, width)
