"""Decoding one H.264 file, every frame as fast as it goes (process-all, not paced), in the same run:

  opencv     ``cv2.VideoCapture(path, cv2.CAP_FFMPEG)``, read in a loop: the baseline (1.00)
  source/cv  ``VideoSource(path)``: the same decoder behind the source's thread and buffer
  source/gst ``VideoSource("gst:filesrc ! qtdemux ! h264parse ! avdec_h264")``: the GStreamer source
             (PyGObject, appsink, one copy into numpy; the decoder's I420 converted to BGR by OpenCV),
             and the same with ``videoconvert ! video/x-raw,format=BGR`` written out (GStreamer converts)

The file is made by GStreamer (x264enc, a moving test pattern). Rounds alternate, so drift in the
machine's speed hits every side; the figures are the mean over rounds.

    python bench/decode.py [--frames 600] [--size 480x640] [--fps 30] [--rounds 3]
"""

# ruff: noqa: E402
from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def write_h264(path: Path, frames: int, h: int, w: int, fps: int) -> None:
    """A moving SMPTE pattern, H.264 (High profile, 8-bit 4:2:0) in MP4 (x264, one key frame a second)."""
    from edge_agent.pipelines.gst import gst_module

    Gst = gst_module()
    launch = (f"videotestsrc num-buffers={frames} pattern=smpte horizontal-speed=4 ! "
              f"video/x-raw,format=I420,width={w},height={h},framerate={fps}/1 ! "  # 8-bit 4:2:0, as cameras send
              f"x264enc speed-preset=veryfast key-int-max={fps} bitrate=2000 ! video/x-h264,profile=high ! "
              "h264parse ! mp4mux ! "
              f"filesink location={path}")
    pipeline = Gst.parse_launch(launch)
    pipeline.set_state(Gst.State.PLAYING)
    message = pipeline.get_bus().timed_pop_filtered(600 * Gst.SECOND, Gst.MessageType.EOS | Gst.MessageType.ERROR)
    pipeline.set_state(Gst.State.NULL)
    if message is None or message.type == Gst.MessageType.ERROR:
        raise SystemExit(f"cannot write the test video: {message.parse_error()[0].message if message else 'timeout'}")


def opencv(path: Path) -> tuple[int, float]:
    import cv2

    t0 = time.perf_counter()
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    n = 0
    while True:
        ok, image = capture.read()
        if not ok:
            break
        n += 1
    capture.release()
    return n, time.perf_counter() - t0


def source(reference: str) -> tuple[int, float]:
    from edge_agent.pipelines.sources import EndOfStream, VideoSource

    t0 = time.perf_counter()
    src = VideoSource(reference)
    src.start()
    n = 0
    try:
        while True:
            frame = src.read(10.0)
            if frame is None:
                raise SystemExit(f"no frame for 10 s: {src.status()}")
            n += 1
    except EndOfStream:
        pass
    if src.state != "finished":
        raise SystemExit(f"the source did not finish: {src.status()}")
    return n, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--size", default="480x640")
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    h, w = (int(v) for v in args.size.split("x"))

    tmp = Path(tempfile.mkdtemp(prefix="bench-decode-"))
    video = tmp / "h264.mp4"
    write_h264(video, args.frames, h, w, args.fps)
    demux = f"gst:filesrc location={video} ! qtdemux ! h264parse ! avdec_h264"
    sides: dict[str, Callable[[], tuple[int, float]]] = {
        "opencv": lambda: opencv(video),
        "source/cv": lambda: source(str(video)),
        "source/gst": lambda: source(demux),
        "source/gst, BGR by videoconvert": lambda: source(f"{demux} ! videoconvert ! video/x-raw,format=BGR"),
    }
    for side in sides.values():  # warm-up: page cache, GStreamer's registry, OpenCV's libraries
        side()
    results: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.rounds):
        for name, side in sides.items():
            n, took = side()
            if n != args.frames:
                raise SystemExit(f"{name}: {n} frames decoded, {args.frames} written")
            results[name].append(n / took)
    print(f"{args.frames} frames {w}x{h} H.264 ({video.stat().st_size / 1e6:.1f} MB), {os.cpu_count()} CPUs, "
          f"{args.rounds} rounds")
    base = float(np.mean(results["opencv"]))
    for name, rates in results.items():
        fps = float(np.mean(rates))
        print(f"{name:32s} {fps:8.1f} frames/s (+-{float(np.std(rates)):5.1f})  {fps / base:.2f}x")


if __name__ == "__main__":
    main()
