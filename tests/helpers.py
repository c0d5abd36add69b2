"""Small helpers shared by test modules: waiting on a condition, a video with a known moving shape,
a real RTSP camera (tests/rtsp_server.py run by the system's Python, which has the GObject bindings),
and skip markers for tools a test needs from the machine (Chromium, openssl)."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

RTSP_SERVER = Path(__file__).resolve().parent / "rtsp_server.py"
SYSTEM_PYTHON = Path("/usr/bin/python3")
VIDEO_SIZE = (240, 320)  # h, w of circle_video's frames

CHROMIUM = next((p for p in (shutil.which("chromium"), "/usr/bin/chromium", shutil.which("chromium-browser"),
                             shutil.which("google-chrome")) if p and os.access(p, os.X_OK)), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (CI installs it: "
                                                              "apt-get install chromium)")
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None,
                                   reason="openssl is needed to make the test certificates (.ci/run installs it)")


def wait(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.02) -> None:
    """Poll ``predicate`` every ``interval`` seconds until it is true; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        what = getattr(predicate, "__qualname__", predicate)
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(interval)


def circle_video(path: Path, frames: int, fps: float = 10.0) -> list[tuple[float, float]]:
    """A white circle (r=28) moving left to right on grey, written to ``path`` (MPEG-4); returns its
    centre in each frame."""
    import cv2  # lazy: cv2

    h, w = VIDEO_SIZE
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (w, h))
    centres = []
    for i in range(frames):
        image = np.full((h, w, 3), 90, np.uint8)
        cx, cy = 50.0 + i * (w - 100) / (frames - 1), 120.0
        cv2.circle(image, (round(cx), round(cy)), 28, (240, 240, 240), -1, cv2.LINE_AA)
        writer.write(image)
        centres.append((cx, cy))
    writer.release()
    assert path.stat().st_size > 0
    return centres


def rtsp_available() -> bool:
    """Whether the system's Python can run GStreamer's RTSP server (Debian's gir1.2-gst-rtsp-server-1.0)."""
    probe = "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer"
    return SYSTEM_PYTHON.exists() and subprocess.run(
        [str(SYSTEM_PYTHON), "-c", probe], capture_output=True).returncode == 0


class RtspServer:
    """tests/rtsp_server.py on 127.0.0.1:``port``, started and ready to serve rtsp://127.0.0.1:<port>/test."""

    def __init__(self, port: int) -> None:
        self.proc = subprocess.Popen([str(SYSTEM_PYTHON), str(RTSP_SERVER), str(port)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == b"ready", (line, self.proc.stderr.read() if self.proc.stderr else b"")

    def kill(self) -> None:
        self.proc.kill()  # a camera that loses power: no RTSP TEARDOWN, packets just stop
        self.proc.wait(10)


@contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """``folder``'s files over HTTP on a loopback port (the image URLs of the tests); yields the base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
