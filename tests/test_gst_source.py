"""GStreamer sources through PyGObject (edge_agent/pipelines/gst.py): the reference forms, real
pipelines (videotestsrc, the loopback RTSP camera of tests/rtsp_server.py) run through the daemon's
runtime and the demo detector, reconnects, refusals over HTTP, and a clean stop."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import RtspServer, rtsp_available, wait
from servers import free_port

TAIL = ("videoconvert ! video/x-raw,format={BGR,BGRx,BGRA,I420,NV12} ! appsink name=sink max-buffers=1 drop=true "
        "sync=false")
BALL = ("videotestsrc num-buffers=60 pattern=ball background-color=0xff5a5a5a "
        "! video/x-raw,width=320,height=240,framerate=30/1")


def _gst_available() -> bool:
    try:
        from edge_agent.pipelines.gst import gst_module

        gst_module()
        return True
    except Exception:
        return False


needs_gst = pytest.mark.skipif(not _gst_available(), reason="GStreamer's Python bindings (gi) are not in this "
                                                            "Python: .ci/run links Debian's gi into the venv")


@pytest.mark.skipif(os.environ.get("CI") != "true", reason="outside CI the GStreamer tests may skip")
def test_ci_has_the_gstreamer_bindings() -> None:
    assert _gst_available(), "CI must run the GStreamer source tests: .ci/run links Debian's gi into the venv"


def refused(*words: str) -> AbstractContextManager[Any]:
    from edge_agent.errors import GstSourceError

    return pytest.raises(GstSourceError, match=".*".join(words))


@pytest.mark.parametrize(("reference", "launch", "raises"), [
    ("gst:videotestsrc ! video/x-raw,width=320", f"videotestsrc ! video/x-raw,width=320 ! {TAIL}", None),
    ("gst: v4l2src ! videoconvert ! appsink name=mine", "v4l2src ! videoconvert ! appsink name=mine", None),
    ("videotestsrc ! videoconvert ! appsink", "videotestsrc ! videoconvert ! appsink", None),  # OpenCV's form
    ("csi:0", "nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),width=1920,height=1080,framerate=30/1 "
              f"! nvvidconv ! video/x-raw,format=BGRx ! {TAIL}", None),
    ("csi:1?width=1280&height=720&fps=60&flip=2",
     "nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=60/1 "
     f"! nvvidconv flip-method=2 ! video/x-raw,format=BGRx ! {TAIL}", None),
    ("rtsp+hw://cam.lan:8554/live",
     'rtspsrc location="rtsp://cam.lan:8554/live" latency=200 ! rtph264depay '
     f"! h264parse ! nvv4l2decoder ! nvvidconv ! video/x-raw,format=BGRx ! {TAIL}", None),
    ("rtsp+hw://u:p@cam/Streaming/101?transportmode=unicast&codec=h265&latency=50&transport=tcp",
     'rtspsrc location="rtsp://u:p@cam/Streaming/101?transportmode=unicast" latency=50 protocols=tcp '
     f"! rtph265depay ! h265parse ! nvv4l2decoder ! nvvidconv ! video/x-raw,format=BGRx ! {TAIL}", None),
    ("v4l2:/dev/video2", f'v4l2src device="/dev/video2" ! {TAIL}', None),
    ("v4l2:/dev/video0?width=640&height=480&fps=30",
     f'v4l2src device="/dev/video0" ! video/x-raw,width=640,height=480,framerate=30/1 ! {TAIL}', None),
    ("v4l2:1?format=mjpeg&width=1280", f'v4l2src device="/dev/video1" ! image/jpeg,width=1280 ! jpegdec ! {TAIL}',
     None),
    ("gst:", None, refused("empty GStreamer pipeline")),
    ("gst:videotestsrc\x00 ! appsink", None, refused("control")),
    ("csi:front", None, refused("sensor id", "front")),
    ("csi:0?size=big", None, refused("unknown option 'size'", "width, height, fps, flip")),
    ("csi:0?fps=-3", None, refused("fps='-3'", "positive integer")),
    ("csi:0?flip=9", None, refused("flip='9'", "0..7")),
    ("rtsp+hw://cam/x?codec=vp8", None, refused("codec='vp8'", "h264 or h265")),
    ("rtsp+hw://cam/x?transport=sctp", None, refused("transport='sctp'", "tcp or udp")),
    ('rtsp+hw://cam/x"!fakesink', None, refused("quote")),
    ("v4l2:video0", None, refused("/dev/video0")),
    ("v4l2:/dev/video0?format=h264", None, refused("format='h264'", "raw or mjpeg")),
])
def test_reference_forms_expand_to_launch_descriptions(reference: str, launch: str | None,
                                                       raises: AbstractContextManager[Any] | None) -> None:
    from edge_agent.pipelines.gst import expand
    from edge_agent.pipelines.sources import describe

    with raises or nullcontext():
        assert expand(reference) == launch
    assert describe(reference) == ("gstreamer", True)


@pytest.mark.parametrize(("launch", "names"), [
    ("videotestsrc pattern = ball ! video/x-raw(memory:NVMM), width=(int)320 ! nvvidconv ! appsink",
     ["videotestsrc", "nvvidconv", "appsink"]),
    ('rtspsrc location="rtsp://a/b ! c" ! decodebin name=d d. ! queue ! tee name=t t. ! fakesink',
     ["rtspsrc", "decodebin", "queue", "tee", "fakesink"]),
    ("filesrc location=/v.mp4!qtdemux!h264parse", ["filesrc", "qtdemux", "h264parse"]),
    ("( videotestsrc ! queue ) ! file:///tmp/x.mp4", ["videotestsrc", "queue"]),
])
def test_the_elements_of_a_launch_description(launch: str, names: list[str]) -> None:
    from edge_agent.pipelines.gst import element_names

    assert element_names(launch) == names


@needs_gst
def test_a_finite_pipeline_gives_every_frame_with_predictions_and_timestamps(runtime: Any) -> None:
    """A ball (white, r~19) bouncing on grey: the detector finds a circle where the frame shows it."""
    from edge_agent.pipelines.pipeline import InferencePipeline

    got: list[tuple[Any, Any]] = []
    pipeline = InferencePipeline(runtime.inference, "shapes/1", f"gst:{BALL}", sinks=[lambda f, r: got.append((f, r))])
    pipeline.start()
    pipeline.join(30)
    status = pipeline.status()
    assert status["state"] == "finished", status
    source = status["source"]
    # not live (videotestsrc prerolls): read like a file, every frame, none dropped, the end ends it
    assert source["kind"] == "gstreamer"
    assert source["live"] is False
    assert source["dropped"] == 0
    assert source["declared_fps"] == 30.0
    assert source["resolution"] == [320, 240]
    assert [f.frame_id for f, _ in got] == list(range(1, 61))
    assert [f.pts for f, _ in got] == pytest.approx([i / 30 for i in range(60)], abs=1e-6)  # the buffers' PTS
    errors = []
    for frame, result in got:
        assert frame.image.shape == (240, 320, 3)
        assert frame.image.dtype == np.uint8
        ys, xs = np.nonzero(frame.image.min(axis=2) > 200)  # the ball, as the frame shows it
        circles = [i for i, name in enumerate(result.class_names) if name == "circle"]
        best = max((i for i in range(len(result)) if result.class_id[i] in circles),
                   key=lambda i: result.confidence[i])
        x0, y0, x1, y1 = result.xyxy[best]
        errors.append(float(np.hypot((x0 + x1) / 2 - xs.mean(), (y0 + y1) / 2 - ys.mean())))
    assert np.median(errors) < 3.0, errors
    assert max(errors) < 8.0, errors


@needs_gst
@pytest.mark.parametrize(("launch", "size"), [
    # two appsinks: the one named "sink" is read, else the last one of the description
    ("videotestsrc num-buffers=3 ! tee name=t ! queue ! videoconvert ! videoscale ! "
     "video/x-raw,format=BGR,width=160,height=120 ! appsink name=sink t. ! queue ! appsink name=other", (120, 160)),
    ("videotestsrc num-buffers=3 ! tee name=t ! queue ! videoconvert ! videoscale ! "
     "video/x-raw,format=BGR,width=160,height=120 ! appsink t. ! queue ! videoconvert ! videoscale ! "
     "video/x-raw,width=320,height=240 ! appsink", (240, 320)),
    # OpenCV's bare form; the red of a solid-colour frame lands in the third (R) channel: BGR
    ("videotestsrc num-buffers=3 pattern=solid-color foreground-color=0xffff0000 ! videoconvert ! appsink",
     (240, 320)),
])
def test_which_appsink_is_read_and_the_colour_order(launch: str, size: tuple[int, int]) -> None:
    from edge_agent.pipelines.sources import EndOfStream, VideoSource

    source = VideoSource(launch)
    source.start()
    frames = []
    with pytest.raises(EndOfStream):
        while True:
            frame = source.read(5)
            assert frame is not None, source.status()
            frames.append(frame)
    assert len(frames) == 3
    assert frames[0].image.shape == (*size, 3)
    if "solid-color" in launch:
        assert frames[0].image[0, 0].tolist() == [0, 0, 255]


@needs_gst
@pytest.mark.parametrize("fmt", ["BGR", "BGRx", "BGRA", "I420", "NV12"])
@pytest.mark.parametrize("size", [(240, 320), (250, 330)])  # 330: rows padded to 4 bytes in every plane
def test_each_format_the_appsink_takes_becomes_the_same_bgr_image(fmt: str, size: tuple[int, int]) -> None:
    """GStreamer's own BGR of a test pattern against what the source makes of the other formats."""
    from edge_agent.pipelines.gst import GstCapture

    def first(fmt: str) -> np.ndarray:
        h, w = size
        capture = GstCapture(f"videotestsrc num-buffers=1 pattern=smpte100 ! video/x-raw,width={w},height={h} ! "
                             f"videoconvert ! video/x-raw,format={fmt} ! appsink", realtime=False,
                             open_timeout_s=5, cancelled=lambda: False)
        try:
            capture.open()
            grab = capture.read()
        finally:
            capture.release()
        assert grab is not None
        return grab.image

    reference, image = first("BGR"), first(fmt)
    assert image.shape == (*size, 3)
    assert image.dtype == np.uint8
    difference = np.abs(image.astype(int) - reference.astype(int))
    # the same pixels, but where 4:2:0 chroma meets the edge between two colour bars (about 1 %)
    assert np.percentile(difference, 95) <= 2, np.percentile(difference, [50, 90, 95, 99])


@needs_gst
def test_realtime_paces_a_pipeline_that_is_not_live_on_the_gstreamer_clock() -> None:
    from edge_agent.pipelines.sources import EndOfStream, VideoSource

    source = VideoSource("gst:videotestsrc num-buffers=15 ! video/x-raw,width=64,height=48,framerate=30/1",
                         realtime=True)
    t0 = time.monotonic()
    source.start()
    frames = 0
    with pytest.raises(EndOfStream):
        while True:
            frames += source.read(5) is not None
    took = time.monotonic() - t0
    # 15 frames at 30 fps take at least 0.47 s on the clock, however fast the machine; newest wins
    assert took > 0.4, took
    assert 1 <= frames <= 15, frames
    assert source.live, source.status()
    assert source.state == "finished", source.status()
    assert source.status()["source_fps"] < 40, source.status()  # never faster than the stream's rate


@pytest.mark.skipif(not rtsp_available() or not _gst_available(), reason="GStreamer (RTSP server, gi) missing")
def test_a_live_rtsp_pipeline_reconnects_when_the_camera_comes_back(runtime: Any) -> None:
    from edge_agent.pipeline_spec import PipelineSpec

    port = free_port()
    server = RtspServer(port)
    try:
        reference = f"gst:rtspsrc location=rtsp://127.0.0.1:{port}/test latency=100 ! decodebin"
        pipeline = runtime.pipelines.start(PipelineSpec(model_id="shapes/1", pipeline_id="gst-cam",
                                                      video_reference=reference))
        wait(lambda: pipeline.frames_inferred >= 20, timeout=30)
        status = pipeline.status()
        source = status["source"]
        assert source["kind"] == "gstreamer"
        assert source["live"]
        assert source["resolution"] == [320, 240]
        assert source["declared_fps"] == 15.0
        assert 8 < source["source_fps"] < 25
        assert 0 < status["latency_s"] < 1.0  # from the capture (the buffer's PTS on the clock) to the result
        server.kill()
        wait(lambda: pipeline.source.state in ("reconnecting", "connecting"), timeout=20)
        wait(lambda: pipeline.source.reconnects >= 2, timeout=20)  # refused while it is away: backoff, retries
        assert "rtspsrc" in pipeline.status()["source"]["last_error"]  # GStreamer's words, its element named
        stalled_at = pipeline.frames_inferred
        server = RtspServer(port)
        wait(lambda: pipeline.frames_inferred >= stalled_at + 10, timeout=30)
        status = pipeline.status()
        assert status["state"] == "running"
        assert status["source"]["state"] == "streaming"
        t0 = time.monotonic()
        runtime.pipelines.terminate("gst-cam")
        assert time.monotonic() - t0 < 2.0
        assert pipeline.state == "terminated"
    finally:
        server.kill()


@needs_gst
@pytest.mark.parametrize(("reference", "words"), [
    ("gst:videotestsrc ! frobnicate", ["GStreamer element 'frobnicate' not found"]),
    ("csi:0", ["GStreamer element 'nvarguscamerasrc' not found", "nvidia-l4t-gstreamer"]),
    ("gst:videotestsrc frobs=3", ["GStreamer cannot build the pipeline", 'no property "frobs"']),
])
def test_what_cannot_run_here_is_a_400_naming_it(http_server: Any, reference: str, words: list[str]) -> None:
    import requests

    r = requests.post(f"{http_server.url}/inference_pipelines/initialise", timeout=30,
                      json={"model_id": "shapes/1", "video_reference": reference, "pipeline_id": "refused"})
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["error"] == "video_source_unavailable"
    assert all(word in body["message"] for word in words), body
    listed = requests.get(f"{http_server.url}/inference_pipelines/list", timeout=10).json()["pipelines"]
    assert "refused" not in listed


def test_without_the_bindings_a_gstreamer_reference_says_what_to_install() -> None:
    """In a process of its own: importing the sources and telling a reference's kind load no GStreamer;
    where ``import gi`` fails (``sys.modules['gi'] = None``), the source says what to install."""
    code = ("import sys\n"
            "from edge_agent.pipelines.sources import VideoSource, describe\n"
            "assert describe('csi:0') == ('gstreamer', True) and 'gi' not in sys.modules\n"
            "sys.modules['gi'] = None\n"
            "try:\n    VideoSource('csi:0')\nexcept Exception as exc:\n"
            "    print(type(exc).__name__, exc.status, exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.startswith("GstSourceError 400 GStreamer's Python bindings cannot be imported"), out
    assert "python3-gi" in out.stdout
    assert "gir1.2-gstreamer-1.0" in out.stdout


def _os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


@needs_gst
def test_stop_delivers_no_frame_after_it_and_sets_the_pipeline_to_null(runtime: Any) -> None:
    from edge_agent.pipeline_spec import PipelineSpec
    from edge_agent.pipelines.gst import GstCapture, gst_module
    from edge_agent.pipelines.sources import VideoSource

    Gst = gst_module()
    live = "gst:videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=30/1"
    capture = GstCapture(live[4:] + " ! " + "videoconvert ! video/x-raw,format=BGR ! appsink", realtime=False,
                         open_timeout_s=5, cancelled=lambda: False)
    capture.open()
    assert capture.live
    assert capture.read() is not None
    capture.release()
    assert capture.pipeline.get_state(0)[1] == Gst.State.NULL

    def readers() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.startswith("source-")]

    counts = []
    for _ in range(4):  # start and stop again and again: GStreamer's streaming threads are reused, not leaked
        source = VideoSource(live)
        source.start()
        wait(lambda: source.frames_read >= 3, timeout=10)  # noqa: B023 - waited on before the next round
        source.stop()
        read_at_stop = source.frames_read
        assert all(source.read(0.05) is None for _ in range(10)), "a frame was handed out after stop"
        wait(lambda: not readers(), timeout=3)
        assert source.frames_read <= read_at_stop + 1  # at most the one being read when stop() came
        counts.append(_os_threads())
    assert counts[-1] <= counts[0], counts

    got: list[int] = []
    pipeline = runtime.pipelines.start(PipelineSpec(model_id="shapes/1", video_reference=live, pipeline_id="stopped"))
    pipeline.sinks.append(lambda frame, result: got.append(frame.frame_id))
    wait(lambda: len(got) >= 5, timeout=20)
    runtime.pipelines.terminate("stopped")
    seen = len(got)
    time.sleep(0.5)
    assert len(got) == seen
    assert pipeline.state == "terminated"
    wait(lambda: not readers(), timeout=3)


@needs_gst
def test_onnx_runtime_errors_still_raise_after_gstreamer_is_loaded(tmp_path: Path) -> None:
    """libgstreamer brings libunwind into the global symbol scope; without libgcc's unwinder kept first,
    a C++ exception thrown by ONNX Runtime (here: refusing a damaged model, with onnx loaded as in the
    test suite) aborts the whole process instead of raising."""
    import subprocess
    import sys

    code = ("import onnx\n"
            "from edge_agent.pipelines.gst import gst_module\n"
            "gst_module()\n"
            "import onnxruntime as ort\n"
            "try:\n    ort.InferenceSession(b'not a model')\n"
            "except Exception as exc:\n    print('raised', type(exc).__name__)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "raised InvalidProtobuf"


@needs_gst
def test_frames_are_writable_like_opencv_frames() -> None:
    """A callback may draw on a frame: every format gives a writable array of its own."""
    from edge_agent.pipelines.gst import to_bgr

    width, height = 6, 4
    for fmt, stride in (("BGR", 20), ("BGRx", 24)):  # rows padded to 4 bytes
        image = to_bgr(fmt, width, height, bytes(stride * height))
        assert image.flags.writeable, fmt
        assert image.shape == (height, width, 3), fmt
        image[0, 0] = 255  # drawing works
