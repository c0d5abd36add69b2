"""The server's front against hostile and unusual HTTP clients (docs/http.md, issue 18): clients that
trickle headers or bodies, idle keep-alive connections, more connections than allowed, many MJPEG
preview watchers, and the protocol details a front must get right (Expect: 100-continue, chunked
bodies, HTTP/1.0, pipelining, 413 before the body is read).

Everything runs against the real daemon with small limits set through [server]; the hostile clients
are raw sockets on 127.0.0.1.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from helpers import circle_video, wait
from servers import Server, running_server

ROOT = Path(__file__).resolve().parent.parent
ROUTE = "/infer/object_detection"
PRELOAD = ("--preload", "shapes/1")  # the first normal request must not wait for a model load
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def v2_body() -> bytes:
    """A v2 request: the bundled sample JPEG as base64 JSON."""
    jpeg = (ROOT / "edge_agent" / "demo" / "sample.jpg").read_bytes()
    return json.dumps({"model_id": "shapes/1",
                       "image": {"type": "base64", "value": base64.b64encode(jpeg).decode()}}).encode()


@pytest.fixture(scope="module")
def long_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 s at 30 fps, paced by the pipeline (``realtime``): it outlives any test here."""
    path = tmp_path_factory.mktemp("video") / "long.mp4"
    circle_video(path, frames=600, fps=30.0)
    return path


class Raw:
    """A client socket and the bytes read from it so far, with just enough HTTP/1.1 to read answers."""

    def __init__(self, sock: socket.socket, timeout: float = 10.0) -> None:
        self.sock = sock
        self.sock.settimeout(timeout)  # every wait on the server is bounded
        self.buf = b""

    @classmethod
    def connect(cls, port: int, timeout: float = 10.0) -> Raw:
        return cls(socket.create_connection(("127.0.0.1", port), timeout=timeout), timeout)

    def _more(self) -> bytes:
        data = self.sock.recv(65536)
        self.buf += data
        return data

    def response(self) -> tuple[int, dict[str, str], bytes]:
        """The next answer on the connection: status, headers (lower-case names), body."""
        while b"\r\n\r\n" not in self.buf:
            if not self._more():
                raise ConnectionError(f"closed before an answer; read {self.buf[:200]!r}")
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        status = int(status_line.split()[1])
        if status < 200 or status in (204, 304):
            return status, headers, b""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            return status, headers, self._chunked()
        if "content-length" in headers:
            n = int(headers["content-length"])
            while len(self.buf) < n:
                if not self._more():
                    raise ConnectionError("closed inside a body")
            body, self.buf = self.buf[:n], self.buf[n:]
            return status, headers, body
        while self._more():  # no length: the body ends with the connection
            pass
        body, self.buf = self.buf, b""
        return status, headers, body

    def _chunked(self) -> bytes:
        body = b""
        while True:
            while b"\r\n" not in self.buf:
                if not self._more():
                    raise ConnectionError("closed inside a chunked body")
            size_line, _, self.buf = self.buf.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(self.buf) < size + 2:
                if not self._more():
                    raise ConnectionError("closed inside a chunk")
            body, self.buf = body + self.buf[:size], self.buf[size + 2:]
            if size == 0:  # no trailers from this server: the last chunk's CRLF ends the body
                return body

    def closed(self) -> bool:
        """Whether the server closed the connection with nothing more to say (waits up to the timeout)."""
        return not self.buf and not self._more()

    def close(self) -> None:
        self.sock.close()


def request(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
            version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {path} {version}", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def message(status: int, headers: dict[str, str], body: bytes) -> str:
    """The JSON error body's message; asserts that the answer is JSON."""
    assert headers.get("content-type", "").startswith("application/json"), (status, headers, body[:200])
    return str(json.loads(body)["message"])


class Tricklers:
    """``n`` connections that send ``opening`` at once, then one byte of ``rest`` each every 0.5 s, all
    from one thread, each until the server answers or closes it. A client that keeps trickling is what a
    per-read timeout never stops: only a total deadline does."""

    def __init__(self, port: int, n: int, opening: bytes, rest: bytes) -> None:
        self.socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(n)]
        for s in self.socks:
            s.sendall(opening)
        self.rest = rest
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="tricklers", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        active = list(self.socks)
        i = 0
        while active and i < len(self.rest):
            answered = select.select(active, [], [], 0)[0]
            for s in active:
                if s in answered:
                    continue
                try:
                    s.send(self.rest[i:i + 1])
                except OSError:
                    answered.append(s)
            active = [s for s in active if s not in answered]
            i += 1
            if self.stop.wait(0.5):
                return

    def silent(self) -> bool:
        """Whether the server has answered or closed none of them yet."""
        return not select.select(self.socks, [], [], 0)[0]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for s in self.socks:
            s.close()


@contextmanager
def tricklers(port: int, n: int, opening: bytes, rest: bytes) -> Iterator[Tricklers]:
    crowd = Tricklers(port, n, opening, rest)
    try:
        yield crowd
    finally:
        crowd.close()


def assert_answered_408_and_closed(crowd: Tricklers) -> None:
    for s in crowd.socks:
        raw = Raw(s, timeout=15)
        status, headers, body = raw.response()
        assert status == 408, (status, body[:200])
        assert message(status, headers, body)
        assert raw.closed()


# -- slow clients -------------------------------------------------------------------------------------


def test_header_tricklers_hold_no_thread_and_end_at_the_header_deadline(tmp_path: Path, v2_body: bytes) -> None:
    """256 clients sending their headers a byte every 0.5 s (32 times the 8 threads): a normal request is
    answered meanwhile, and each trickler gets 408 once its headers took header_timeout_s."""
    endless_headers = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 1000
    with running_server(tmp_path, {"header_timeout_s": "4"}, args=PRELOAD) as server, \
            tricklers(server.port, 256, b"", endless_headers) as crowd:
        r = requests.post(server.url + ROUTE, data=v2_body, headers=JSON, timeout=15)
        assert r.status_code == 200, r.text
        assert r.json()["predictions"]
        assert crowd.silent(), "the normal request was served only once the tricklers were gone"
        assert_answered_408_and_closed(crowd)


def test_body_tricklers_hold_no_thread_and_end_at_the_body_deadline(tmp_path: Path, v2_body: bytes) -> None:
    """64 clients that sent whole headers (Content-Length 100000) and trickle the body: normal requests
    are answered meanwhile; each trickler gets 408 once its body took body_timeout_s."""
    headers = request("POST", ROUTE, headers={**JSON, "Content-Length": "100000"})
    with running_server(tmp_path, {"body_timeout_s": "4"}, args=PRELOAD) as server, \
            tricklers(server.port, 64, headers, b"a" * 100000) as crowd:
        for _ in range(3):
            r = requests.post(server.url + ROUTE, data=v2_body, headers=JSON, timeout=15)
            assert r.status_code == 200, r.text
        assert crowd.silent(), "the normal requests were served only once the tricklers were gone"
        assert_answered_408_and_closed(crowd)


# -- connections ----------------------------------------------------------------------------------------


def test_idle_keep_alive_connections_close_after_keepalive_s(tmp_path: Path) -> None:
    with running_server(tmp_path, {"keepalive_s": "1"}) as server:
        # gunicorn's gthread worker closed idle connections after its fixed 5 s: wait less than that
        conns = [Raw.connect(server.port, timeout=4) for _ in range(3)]
        for raw in conns:
            raw.sock.sendall(request("GET", "/healthz"))
            assert raw.response()[0] == 200
            raw.sock.sendall(request("GET", "/healthz"))  # a second request well within keepalive_s
            assert raw.response()[0] == 200
        for raw in conns:
            assert raw.closed()  # closed without an answer
            raw.close()


def test_connections_past_max_connections_get_503_at_once(tmp_path: Path) -> None:
    # keepalive_s: the 20 held connections must stay open for the whole test
    with running_server(tmp_path, {"max_connections": "20", "keepalive_s": "60"}) as server, ExitStack() as stack:
        held = []
        for _ in range(20):  # each one answered once: accepted and counted before the 21st comes
            raw = Raw.connect(server.port)
            stack.callback(raw.close)
            raw.sock.sendall(request("GET", "/healthz"))
            assert raw.response()[0] == 200
            held.append(raw)
        extra = Raw.connect(server.port)  # sends nothing: the answer comes on connect
        status, headers, body = extra.response()
        assert status == 503
        assert message(status, headers, body)
        assert headers.get("connection", "").lower() == "close"
        assert extra.closed()
        extra.close()
        for raw in held[:5]:
            raw.close()

        def served() -> bool:
            with ExitStack() as attempt:
                raw = Raw.connect(server.port)
                attempt.callback(raw.close)
                raw.sock.sendall(request("GET", "/healthz"))
                return raw.response()[0] == 200

        wait(served, timeout=5)
        for raw in held[5:]:  # the ones still held were never dropped to make room
            raw.sock.sendall(request("GET", "/healthz"))
            assert raw.response()[0] == 200


# -- MJPEG previews ---------------------------------------------------------------------------------------


def start_pipeline(server: Server, video: Path, pipeline_id: str) -> None:
    r = requests.post(f"{server.url}/inference_pipelines/initialise", timeout=10,
                      json={"model_id": "shapes/1", "video_reference": str(video), "realtime": True,
                            "pipeline_id": pipeline_id})
    assert r.status_code == 200, r.text


def report(server: Server, pipeline_id: str) -> dict[str, Any]:
    r = requests.get(f"{server.url}/inference_pipelines/{pipeline_id}/status", timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json()["report"])


def watch(server: Server, pipeline_id: str) -> requests.Response:
    return requests.get(f"{server.url}/pipelines/{pipeline_id}/preview.mjpg", stream=True, timeout=10)


def first_jpeg(preview: requests.Response) -> bytes:
    """The first whole JPEG part of an MJPEG stream."""
    data = b""
    for chunk in preview.iter_content(4096):
        data += chunk
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep and b"Content-Length: " in head:
            n = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            if len(rest) >= n:
                assert b"Content-Type: image/jpeg" in head
                return rest[:n]
    raise AssertionError(f"the stream ended before a whole part: {data[:200]!r}")


def test_32_preview_watchers_hold_no_thread_and_free_their_slots_on_disconnect(
        tmp_path: Path, v2_body: bytes, long_video: Path) -> None:
    with running_server(tmp_path, args=PRELOAD) as server, ExitStack() as stack:
        start_pipeline(server, long_video, "cam")
        watchers = []
        for _ in range(32):  # max_previews' default: four times the threads
            preview = stack.enter_context(watch(server, "cam"))
            assert preview.status_code == 200, preview.text
            watchers.append(preview)
        for preview in watchers:
            jpeg = first_jpeg(preview)
            assert jpeg.startswith(b"\xff\xd8") and jpeg.endswith(b"\xff\xd9")
        r = requests.post(server.url + ROUTE, data=v2_body, headers=JSON, timeout=15)
        assert r.status_code == 200, r.text
        assert report(server, "cam")["preview_watchers"] == 32
        for preview in watchers:
            preview.close()
        wait(lambda: report(server, "cam")["preview_watchers"] == 0, timeout=1.5)


def test_a_watcher_leaving_a_paused_pipeline_frees_its_slot(tmp_path: Path, long_video: Path) -> None:
    """No frame is sent while the pipeline is paused (or its camera is down), so the server has to see the
    disconnect on the socket itself, not on a write that fails."""
    with running_server(tmp_path) as server:
        start_pipeline(server, long_video, "cam")
        with watch(server, "cam") as preview:
            assert first_jpeg(preview).startswith(b"\xff\xd8")
            assert requests.post(f"{server.url}/inference_pipelines/cam/pause", timeout=10).status_code == 200
        wait(lambda: report(server, "cam")["preview_watchers"] == 0, timeout=1.5)


def test_previews_past_max_previews_get_503(tmp_path: Path, long_video: Path) -> None:
    with running_server(tmp_path, {"max_previews": "2"}) as server, ExitStack() as stack:
        start_pipeline(server, long_video, "cam")
        watchers = [stack.enter_context(watch(server, "cam")) for _ in range(2)]
        for preview in watchers:
            assert preview.status_code == 200, preview.text
            assert first_jpeg(preview).startswith(b"\xff\xd8")
        with watch(server, "cam") as third:
            assert third.status_code == 503
            assert third.json()["message"]
        watchers[0].close()

        def admitted() -> bool:
            with watch(server, "cam") as preview:
                return preview.status_code == 200

        wait(admitted, timeout=1.5)


# -- protocol details ----------------------------------------------------------------------------------------


def test_expect_continue_chunked_http10_pipelining_and_413(tmp_path: Path, v2_body: bytes) -> None:
    with running_server(tmp_path, {"max_body_bytes": "65536"}, args=PRELOAD) as server:
        raw = Raw.connect(server.port)
        head = request("POST", ROUTE, headers={**JSON, "Content-Length": str(len(v2_body)),
                                                  "Expect": "100-continue"})
        raw.sock.sendall(head)
        assert raw.response()[0] == 100  # before any body byte is sent
        raw.sock.sendall(v2_body)
        status, _, body = raw.response()
        assert status == 200, body[:200]
        assert json.loads(body)["predictions"]

        # chunked request body, in three chunks, on the same kept-alive connection
        chunks = [v2_body[:100], v2_body[100:5000], v2_body[5000:]]
        raw.sock.sendall(request("POST", ROUTE, headers={**JSON, "Transfer-Encoding": "chunked"})
                         + b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n")
        status, _, body = raw.response()
        assert status == 200, body[:200]
        assert json.loads(body)["predictions"]

        # pipelined: three requests in one write, answered in order
        raw.sock.sendall(request("GET", "/healthz") + request("GET", "/no-such-route") + request("GET", "/healthz"))
        assert [raw.response()[0] for _ in range(3)] == [200, 404, 200]
        raw.close()

        old = Raw.connect(server.port)
        old.sock.sendall(request("GET", "/healthz", version="HTTP/1.0"))
        assert old.response()[0] == 200
        assert old.closed()
        old.close()

        big = Raw.connect(server.port)
        big.sock.sendall(request("POST", ROUTE, headers={**JSON, "Content-Length": str(10 * 1024 * 1024)}))
        status, headers, body = big.response()  # no body byte sent: answered from the headers alone
        assert status == 413
        assert message(status, headers, body)
        big.close()


def test_an_answer_larger_than_the_socket_takes_reaches_a_slow_reader_whole(tmp_path: Path) -> None:
    """What the socket does not take at once (a reader with a small receive window that waits before
    reading) is written as the reader makes room, whole and in order, and the kept-alive connection then
    serves the pipelined and the next requests."""
    import cv2
    import numpy as np

    noise = np.random.default_rng(7).integers(0, 256, (2400, 3200, 3), dtype=np.uint8)  # JPEG cannot shrink it
    b64 = base64.b64encode(cv2.imencode(".jpg", noise, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
    form = {"Content-Type": "application/x-www-form-urlencoded"}  # the base64 body, as the hosted API takes it
    drawn = "/shapes/1?format=image&confidence=0.99"  # the image back as JPEG: several MB, the same each time
    with running_server(tmp_path, args=PRELOAD) as server:
        expected = requests.post(server.url + drawn, data=b64, headers=form, timeout=60)
        assert expected.status_code == 200 and len(expected.content) > 4_000_000
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(30)
        sock.connect(("127.0.0.1", server.port))
        slow = Raw(sock)
        slow.sock.sendall(request("POST", drawn, b64, form) + request("GET", "/healthz"))
        time.sleep(1.0)  # the server has written what the socket took; the rest waits
        status, headers, body = slow.response()
        assert status == 200
        assert int(headers["content-length"]) == len(body) == len(expected.content)
        assert body == expected.content
        assert slow.response()[:1] == (200,)  # the pipelined request, answered after the whole first one
        slow.sock.sendall(request("GET", "/healthz"))
        status, _, body = slow.response()
        assert (status, json.loads(body)) == (200, {"status": "healthy"})
        slow.close()
        assert "Traceback" not in server.output()


# -- a request thread lingering on its connection for the next request ([server] linger_ms) -------------------
LINGER = {"linger_ms": "50", "header_timeout_s": "1", "max_body_bytes": "65536"}  # a wide window to land in


def _answered_then(raw: Raw, more: bytes) -> None:
    """One request answered, then ``more`` sent at once: into the window in which the thread that wrote the
    answer waits on the connection and parses what comes itself."""
    raw.sock.sendall(request("GET", "/healthz"))
    assert raw.response()[0] == 200
    raw.sock.sendall(more)


def test_what_comes_while_a_thread_lingers_is_parsed_and_refused_as_the_loop_would(tmp_path: Path) -> None:
    """Whatever lands in the window: the next requests, one after another, and pipelined; half a head,
    which then owes the rest within header_timeout_s (408); a malformed request (400); an upgrade
    (answered as through the loop, then the connection closes); a head that asks for
    100 Continue (sent, then the body is read); a declared body over max_body_bytes (413 before the
    body). Each refusal closes its connection, and the server goes on."""
    with running_server(tmp_path, LINGER) as server:
        raw = Raw.connect(server.port)
        for _ in range(20):
            raw.sock.sendall(request("GET", "/healthz"))
            status, _, body = raw.response()
            assert (status, json.loads(body)) == (200, {"status": "healthy"})
        _answered_then(raw, request("GET", "/healthz") + request("GET", "/no-such-route"))
        assert [raw.response()[0] for _ in range(2)] == [200, 404]

        t0 = time.monotonic()
        _answered_then(raw, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # half a head
        status, headers, body = raw.response()
        assert status == 408 and "headers" in message(status, headers, body)
        assert 0.9 < time.monotonic() - t0 < 5  # the head's deadline, not the keep-alive's or none
        assert raw.closed()
        raw.close()

        bad = Raw.connect(server.port)
        _answered_then(bad, b"NOT HTTP AT ALL\r\n\r\n")
        status, headers, body = bad.response()
        assert status == 400 and "Malformed HTTP request" in message(status, headers, body)
        assert bad.closed()
        bad.close()

        upgrade = request("GET", "/healthz", headers={"Connection": "Upgrade", "Upgrade": "websocket"})
        answers = []
        for in_window in (False, True):  # an upgrade is answered as plain HTTP, then the connection closes
            asking = Raw.connect(server.port)
            if in_window:
                _answered_then(asking, upgrade)
            else:
                asking.sock.sendall(upgrade)
            answers.append(asking.response()[0])  # whichever path read it: the route's own answer
            assert asking.closed(), in_window
            asking.close()
        assert answers == [200, 200]  # (werkzeug's URL binding made such a request ws:// and answered 400)

        expecting = Raw.connect(server.port)  # curl's Expect: 100-continue, for a body over 1 MB
        body = b'{"model_id": "nope/1", "image": []}'
        _answered_then(expecting, request("POST", ROUTE, headers={**JSON, "Content-Length": str(len(body)),
                                                                  "Expect": "100-continue"}))
        assert expecting.response()[0] == 100  # before any byte of the body is sent
        expecting.sock.sendall(body)
        assert expecting.response()[0] in (400, 404, 422)
        expecting.close()

        big = Raw.connect(server.port)
        _answered_then(big, request("POST", ROUTE, headers={**JSON, "Content-Length": str(10 * 1024 * 1024)}))
        status, headers, body = big.response()
        assert status == 413 and message(status, headers, body)
        big.close()
        assert requests.get(server.url + "/healthz", timeout=10).status_code == 200
        assert "Traceback" not in server.output()


def test_a_request_whose_head_and_body_come_apart_is_read_in_the_window_or_by_the_loop(
        tmp_path: Path, v2_body: bytes) -> None:
    """http.client sends a request's head and its body apart: a lingering thread reads on until the request
    is whole (the body 20 ms after the head, inside the 50 ms window), and a body that comes after the
    window is read by the loop, which the thread gave the connection back to. Either way the answer is the
    model's, and the connection serves the next request."""
    head, body = request("POST", ROUTE, v2_body, JSON).split(b"\r\n\r\n", 1)
    with running_server(tmp_path, LINGER, args=PRELOAD) as server:
        raw = Raw.connect(server.port)
        answers = []
        for pause in (0.02, 0.02, 0.3, 0.02, 0.0):
            _answered_then(raw, head + b"\r\n\r\n")
            time.sleep(pause)
            raw.sock.sendall(body)
            status, headers, data = raw.response()
            answers.append((status, len(json.loads(data)["predictions"]) if status == 200 else data))
        assert len(set(answers)) == 1 and answers[0][0] == 200 and answers[0][1] > 0, answers
        raw.sock.sendall(request("GET", "/healthz"))
        assert raw.response()[0] == 200
        raw.close()
        assert "Traceback" not in server.output()


def test_lingering_threads_leave_no_client_waiting_with_more_clients_than_threads(tmp_path: Path) -> None:
    """Twelve clients sending requests one after another to 4 request threads that each wait up to 50 ms on
    their connection after every answer: a thread starts waiting only when no request waits for a thread,
    so every client is served, all along."""
    with running_server(tmp_path, {**LINGER, "threads": "4"}) as server:
        done: list[int] = []
        errors: list[BaseException] = []

        def client() -> None:
            try:
                raw = Raw.connect(server.port, timeout=20)
                for _ in range(30):
                    raw.sock.sendall(request("GET", "/healthz"))
                    assert raw.response()[0] == 200
                raw.close()
                done.append(1)
            except BaseException as exc:  # reported below
                errors.append(exc)

        pool = [threading.Thread(target=client) for _ in range(12)]
        for t in pool:
            t.start()
        for t in pool:
            t.join(60)
        assert errors == [] and len(done) == 12


def test_a_server_stops_at_once_with_threads_lingering(tmp_path: Path) -> None:
    """SIGTERM while request threads wait on their connections: they let go, and the server stops well
    within its graceful timeout."""
    import signal

    with running_server(tmp_path, {**LINGER, "linger_ms": "50"}) as server:
        raws = [Raw.connect(server.port) for _ in range(4)]
        for raw in raws:
            raw.sock.sendall(request("GET", "/healthz"))
            assert raw.response()[0] == 200
        t0 = time.monotonic()
        os.killpg(server.process.pid, signal.SIGTERM)
        server.process.wait(30)
        assert time.monotonic() - t0 < 10
        for raw in raws:
            raw.close()


class _HeldImage:
    """A loopback HTTP server of one JPEG that answers only once ``release`` is set; ``asked`` is set when a
    request for it arrives (so the request that fetches it is in the application)."""

    def __init__(self, jpeg: bytes) -> None:
        self.jpeg = jpeg
        self.asked, self.release = threading.Event(), threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.listener.accept()
                with conn:
                    conn.recv(65536)
                    self.asked.set()
                    self.release.wait(30)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n"
                                 b"Connection: close\r\n\r\n%s" % (len(self.jpeg), self.jpeg))

    def close(self) -> None:
        self.release.set()
        self.listener.close()


def test_a_client_that_resets_during_its_request_leaves_the_next_connection_unharmed(tmp_path: Path) -> None:
    """The request thread writes its answer itself, to a duplicate of the connection's socket taken before
    the application ran. A client that resets while its request runs: the answer is written to its dead
    socket or dropped, and the connection opened next (whose descriptor may take a freed number) gets its
    own answers only. The server logs no error."""
    held = _HeldImage((ROOT / "edge_agent" / "demo" / "sample.jpg").read_bytes())
    loopback_urls = {"allow_http_urls": "true", "allow_non_global_urls": "true", "allow_urls_without_fqdn": "true"}
    try:
        with running_server(tmp_path, loopback_urls, args=PRELOAD) as server:
            leaving = Raw.connect(server.port)
            leaving.sock.sendall(request("GET", f"/shapes/1?image=http://127.0.0.1:{held.port}/a.jpg"))
            assert held.asked.wait(10)  # the request is in the application, waiting for its image
            leaving.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            leaving.sock.close()  # a reset: the loop closes the server's socket at once
            time.sleep(0.2)
            other = Raw.connect(server.port)
            other.sock.sendall(request("GET", "/healthz"))
            assert other.response()[0] == 200
            held.release.set()  # the left request ends now, and its answer is written
            for _ in range(20):
                time.sleep(0.02)
                other.sock.sendall(request("GET", "/healthz"))
                status, headers, body = other.response()
                assert (status, json.loads(body)) == (200, {"status": "healthy"}), (status, headers, body[:100])
            other.sock.settimeout(0.5)
            with pytest.raises(TimeoutError):
                other._more()  # nothing came but the answers asked for
            other.close()
            assert "Traceback" not in server.output()
    finally:
        held.close()


def test_model_upload_past_max_body_bytes_is_spooled_to_disk_and_installed(tmp_path: Path) -> None:
    """``PUT /models/...`` has its own cap ([models] max_upload_bytes): a model larger than the image
    routes' ``max_body_bytes`` and than what the front keeps in memory goes through an unnamed spool
    file, arrives whole, installs, and leaves nothing behind."""
    onnx = (ROOT / "edge_agent" / "demo" / "store" / "shapes" / "1" / "model.onnx").read_bytes()
    assert len(onnx) > 1024 * 1024  # over the front's in-memory size for one body
    with running_server(tmp_path, {"max_body_bytes": "65536", "api_key": "front-key"}) as server:
        r = requests.put(f"{server.url}/models/acme/1", data=onnx, params={"api_key": "front-key"}, timeout=120,
                         headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 200, r.text
        r = requests.get(f"{server.url}/models/acme/1", params={"api_key": "front-key"}, timeout=10)
        assert r.status_code == 200 and r.json()["bytes"] == len(onnx), r.text
        # the image routes keep their own cap
        r = requests.post(f"{server.url}{ROUTE}", data=b"{" + b" " * 70000 + b"}", timeout=10,
                          params={"api_key": "front-key"}, headers=JSON)
        assert r.status_code == 413
        assert (tmp_path / "http-spool").is_dir()  # the upload went through a spool file
        worker = int(Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children").read_text().split()[0])
        links = []
        for fd in Path(f"/proc/{worker}/fd").iterdir():
            with contextlib.suppress(FileNotFoundError):  # an fd closed meanwhile
                links.append(os.readlink(fd))
        assert [link for link in links if "http-spool" in link] == []  # unnamed files: closed is gone


def test_bad_targets_trailers_big_heads_and_keyless_uploads_are_refused_early(tmp_path: Path) -> None:
    """What the front refuses itself, each with a JSON answer and the connection closed: a request target
    that is not a path (CONNECT, authority form), a head over 64 KiB even when it arrives in one read,
    chunked trailers past the head's limit (trailers are never merged into the headers), and a
    model-sized upload from a caller without the key (its body is not worth reading)."""
    with running_server(tmp_path, {"max_body_bytes": "65536", "api_key": "front-key"}) as server:
        for target in (b"CONNECT example.com:443 HTTP/1.1", b"GET example.com:80 HTTP/1.1"):
            raw = Raw.connect(server.port)
            raw.sock.sendall(target + b"\r\nHost: 127.0.0.1\r\n\r\n")
            status, headers, body = raw.response()
            assert status == 400, (target, body[:200])
            assert message(status, headers, body)
            assert raw.closed()
            raw.close()

        raw = Raw.connect(server.port)
        raw.sock.sendall(request("GET", "/healthz", headers={"X-Pad": "a" * 70_000}))  # one write
        assert raw.response()[0] == 431
        raw.close()

        raw = Raw.connect(server.port)
        trailers = b"".join(b"X-T%d: %s\r\n" % (i, b"b" * 1000) for i in range(80))  # ~80 KB of trailers
        raw.sock.sendall(request("POST", "/healthz", headers={"Transfer-Encoding": "chunked"})
                         + b"2\r\n{}\r\n0\r\n" + trailers + b"\r\n")
        status, headers, body = raw.response()
        assert status == 431, body[:200]
        raw.close()

        big = str(10 * 1024 * 1024)
        for query in ("", "?api_key=wrong"):
            raw = Raw.connect(server.port)
            raw.sock.sendall(request("PUT", "/models/acme/1" + query, headers={"Content-Length": big}))
            status, headers, body = raw.response()  # answered from the head alone
            assert status == 413, body[:200]
            raw.close()
        raw = Raw.connect(server.port)  # with the key, the upload cap applies: the body is awaited
        raw.sock.sendall(request("PUT", "/models/acme/1?api_key=front-key", headers={"Content-Length": big}))
        raw.sock.settimeout(1.0)
        with pytest.raises(TimeoutError):
            raw.response()
        raw.close()


def test_the_console_config_check_has_its_own_small_body_cap(tmp_path: Path) -> None:
    """``POST /console/config/check`` takes at most 256 KiB: a larger declared body is refused from the
    head alone (in any spelling of the path), while other routes still await ``max_body_bytes``."""
    length = str(300 * 1024)
    with running_server(tmp_path, {"api_key": "front-key"}) as server:
        for path in ("/console/config/check", "/console/config/%63heck", "/console/config/check?api_key=front-key"):
            raw = Raw.connect(server.port)
            raw.sock.sendall(request("POST", path, headers={"Content-Length": length}))
            status, headers, body = raw.response()
            assert status == 413, (path, body[:200])
            assert "262144" in message(status, headers, body)
            raw.close()
        raw = Raw.connect(server.port)  # elsewhere the same length is within max_body_bytes: awaited
        raw.sock.sendall(request("POST", "/infer/object_detection", headers={"Content-Length": length}))
        raw.sock.settimeout(1.0)
        with pytest.raises(TimeoutError):
            raw.response()
        raw.close()


def test_the_gunicorn_master_loads_no_flask_and_no_numpy() -> None:
    """gunicorn's master imports the worker class: the front and what it imports stay free of the
    Flask app's modules (about 28 MB of the master's RSS when they leaked in)."""
    import subprocess
    import sys

    code = ("import sys, edge_agent.server, edge_agent.http.front; "
            "print(*(m in sys.modules for m in ('numpy', 'flask', 'cv2', 'onnxruntime')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False", "False", "False"]


# ------------------------------------------------------------------------ the body's close, after the write
class _Body:
    """A WSGI body that notes its close (PEP 3333: the server calls it once the answer is sent)."""

    def __init__(self, parts: list[bytes], fail: bool = False) -> None:
        self.parts, self.fail, self.closed = parts, fail, 0

    def __iter__(self) -> Iterator[bytes]:
        yield from self.parts
        if self.fail:
            raise RuntimeError("the body broke")

    def close(self) -> None:
        self.closed += 1


def test_the_front_leaves_the_bodys_close_to_after_the_write() -> None:
    """``_run_app`` reads the body whole and hands its ``close`` back uncalled (the front calls it after the
    write: the app's metrics and access log then cost the client nothing); a body that fails while read is
    closed at once."""
    from edge_agent.http.front import _close_body, _run_app

    body = _Body([b"ab", b"c"])

    def app(environ: dict[str, Any], start_response: Any) -> _Body:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return body

    (status, headers, data), close = _run_app(app, {})
    assert (status, headers, data, body.closed) == ("200 OK", [("Content-Type", "text/plain")], b"abc", 0)
    _close_body(close)
    assert body.closed == 1

    broken = _Body([b"ab"], fail=True)
    with pytest.raises(RuntimeError, match="the body broke"):
        _run_app(lambda environ, start_response: (start_response("200 OK", []), broken)[1], {})
    assert broken.closed == 1


def test_a_close_that_fails_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    from edge_agent.http.front import _close_body

    def close() -> None:
        raise ValueError("bookkeeping bug")

    _close_body(close)
    assert "closing the application's response failed" in caplog.text
    assert "bookkeeping bug" in caplog.text
