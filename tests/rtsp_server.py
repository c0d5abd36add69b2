"""A real RTSP server for the tests: GStreamer's RTSP server (Debian's python3-gi and
gir1.2-gst-rtsp-server-1.0), run by the system's /usr/bin/python3 because the GObject bindings are
not in the venv. Serves a moving test pattern as H.264 on rtsp://127.0.0.1:<port>/test.

    /usr/bin/python3 tests/rtsp_server.py <port> [fps]
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> None:
    port, fps = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 15
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f"( videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate={fps}/1 "
        "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 ! rtph264pay name=pay0 pt=96 )")
    factory.set_shared(True)
    server.get_mount_points().add_factory("/test", factory)
    if server.attach(None) == 0:
        sys.exit("cannot listen")
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
