"""The HTTP front of the worker: one asyncio event loop reads whole requests, with deadlines, and only
then hands each to the request threads that run the Flask app (docs/architecture.md, "The HTTP front").

gunicorn's threaded worker gives a connection to a thread as soon as a byte arrives, and the thread then
blocks reading the rest: eight clients sending a header byte every two seconds held all eight threads.
Here a connection costs a thread only while the application runs (and for at most ``linger_ms`` after,
below). Reading is the loop's job, bounded by ``[server]`` settings:

- ``header_timeout_s``: the request line and headers, from the request's first byte (or the connection's
  opening); past it 408 and the connection closes. Heads larger than 64 KiB get 431.
- ``body_timeout_s``: the whole body after the headers; past it 408. A declared ``Content-Length`` over
  ``max_body_bytes`` (``[models] max_upload_bytes`` for ``PUT /models/...``) is refused with 413 before
  the body is read. A body stays in memory up to 1 MiB while all bodies in memory stay under 64 MiB;
  beyond that it goes to an unnamed file in the state folder (``http-spool``), so a crowd of uploads
  costs disk, not memory.
- ``keepalive_s``: an idle kept-alive connection is closed.
- ``max_connections``: past it a new connection is answered 503 at once and closed.

A request thread writes its answer itself, as much of it as the socket takes at once, to a duplicate
of the connection's socket that the loop took for it (so that a connection the loop closes meanwhile can
never have its descriptor's number reused under the thread); the loop writes the rest, or the whole
answer when earlier bytes are still queued, then does the request's bookkeeping. Writing from the thread
saves a wake-up of the loop before the client has its answer (0.04 ms a request on the 2-core VM). Then,
on a kept-alive connection, the thread waits up to ``linger_ms`` for the connection's next request to
come whole and runs it too (``_Connection._linger``): a client sending one request after another skips
the loop. A body that is ``Pushable`` (the MJPEG preview) is written by the loop, and not iterated by a
thread: it pushes its parts to the loop as they come, a slow watcher misses frames instead of piling
them up, and a watcher that disconnects is unsubscribed at once. Any other WSGI server can still iterate
such a body (``__iter__``), which is how Flask's test client sees it.

One request per connection is in the application at a time; pipelined requests wait their turn. The
loop also beats gunicorn's heartbeat and notices the stop signal; on stop it closes idle connections,
lets requests in the application finish (up to ``graceful_timeout_s``) and ends push streams.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import io
import json
import logging
import os
import resource
import select
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TypeGuard
from urllib.parse import parse_qsl, unquote_to_bytes

import httptools
from gunicorn.workers.base import Worker

from edge_agent.http.head import BODY_READ_WHOLE, MAX_CONFIG_BYTES, keys_in
from edge_agent.settings import ServerSettings, Settings

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024  # request line and headers together
SPOOL_AT = 1024 * 1024  # a body larger than this goes to a file
MEMORY_BUDGET = 64 * 1024 * 1024  # bodies in memory, all connections together; past it new bytes go to files
PUSH_BACKLOG = 512 * 1024  # bytes a push stream may have unsent before its next parts are dropped
SEND_STALL_S = 30.0  # a response whose unsent bytes do not shrink for this long is abandoned
TICK_S = 0.25  # deadlines, heartbeat and the stop signal are looked at this often
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
READ_SIZE = 256 * 1024  # what a request thread reads at once from a connection it lingers on (asyncio's own)

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class Pushable(Protocol):
    """A response body that pushes its parts (from any thread) instead of being iterated."""

    def subscribe(self, deliver: Callable[[bytes], None]) -> None: ...

    def finished(self) -> bool: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Limits:
    max_connections: int
    header_timeout_s: float
    body_timeout_s: float
    keepalive_s: float
    max_body_bytes: int
    max_upload_bytes: int  # PUT /models/...: model files, streamed to disk by the route
    graceful_timeout_s: float
    spool_dir: Path
    linger_s: float  # a request thread waits this long on its connection for the next request

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        s = settings.server
        return cls(s.max_connections, s.header_timeout_s, s.body_timeout_s, s.keepalive_s, s.max_body_bytes,
                   settings.models.max_upload_bytes, float(s.graceful_timeout_s), settings.state_dir / "http-spool",
                   s.linger_ms / 1000)

    def body_cap(self, request: _Request, api_key: bytes | None) -> int:
        """``max_upload_bytes`` for ``PUT /models/...`` from a caller with the key (the route needs it:
        without, its body is not worth reading), the console's configuration check its own small cap,
        ``max_body_bytes`` for everything else."""
        if request.method == "PUT" and request.path.startswith(b"/models/") and api_key is not None \
                and _carries_key(request, api_key):
            return max(self.max_body_bytes, self.max_upload_bytes)
        if unquote_to_bytes(request.path) == b"/console/config/check":
            return min(self.max_body_bytes, MAX_CONFIG_BYTES)
        return self.max_body_bytes


def _carries_key(request: _Request, key: bytes) -> bool:
    """Whether the request's first key in ``?api_key=`` or ``Authorization: Bearer`` is ``key``, as the
    routes will judge it (``head.keys_in``; they check it again, with the JSON body's key too)."""
    query = dict(parse_qsl(request.query.decode("latin-1"), errors="replace"))
    authorization = next((v.decode("latin-1") for n, v in request.headers if n.lower() == b"authorization"), "")
    given = keys_in(query.get("api_key"), authorization)
    return bool(given) and hmac.compare_digest(given[0].encode("utf-8", "replace"), key)


def _answer(status: str, message: str, date: str) -> bytes:
    """A complete JSON error response that closes the connection (the front's own refusals)."""
    body = json.dumps({"message": message}).encode()
    return (f"HTTP/1.1 {status}\r\nDate: {date}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode("latin-1") + body


class _Request:
    __slots__ = ("url", "path", "query", "headers", "body", "spool", "size", "cap", "keep_alive", "http_version",
                 "method")

    def __init__(self) -> None:
        self.url = b""
        self.path = b"/"
        self.query = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []  # in memory, until it is spooled
        self.spool: BinaryIO | None = None
        self.size = 0
        self.cap = 0
        self.keep_alive = False
        self.http_version = "1.1"
        self.method = "GET"

    def input(self) -> BinaryIO:
        """The body for ``wsgi.input``."""
        if self.spool is not None:
            self.spool.seek(0)
            return self.spool
        return io.BytesIO(b"".join(self.body))


# Where a connection is in reading its current request
_IDLE, _HEAD, _BODY = range(3)


class _Connection(asyncio.Protocol):
    def __init__(self, front: _Front) -> None:
        self.front = front
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.phase = _IDLE
        self.deadline = time.monotonic() + front.limits.header_timeout_s  # a new connection owes a first byte
        self.head_bytes = 0  # the head's fields as parsed (trailers included)
        self.raw_head = 0  # bytes read while in the head: catches a field the parser still buffers
        self.request = _Request()
        self.waiting: collections.deque[_Request] = collections.deque()  # read whole, not yet run (pipelined)
        self.busy = False  # a request is in the application
        self.push: Pushable | None = None
        self.unsent = 0  # the write buffer at the last tick, and since when it has not shrunk
        self.stalled_since = time.monotonic()
        self.closing = False
        self.peer_done = False  # the peer half-closed after its request: answer, then close
        self.refusal: tuple[str, str] | None = None  # owed once the requests before it are answered
        self.continue_owed = False  # the request being read asked for 100 Continue while another ran

    # -- asyncio ------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.front.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.front.connections.discard(self)
        if self.phase != _IDLE:  # a request cut short
            self.front.release(self.request)
        while self.waiting:
            self.front.release(self.waiting.popleft())
        if self.push is not None:
            self.push.close()
            self.push = None

    def data_received(self, data: bytes) -> None:
        if self.closing or self.push is not None:
            return  # an answer that closes is on its way, or a watcher talks: what comes is dropped
        if self.phase == _IDLE:  # the first byte of a request: its head is now owed
            self.phase, self.deadline = _HEAD, time.monotonic() + self.front.limits.header_timeout_s
            self.raw_head = self.head_bytes = 0
        if self.phase == _HEAD:
            self.raw_head += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No protocol upgrades: the request is answered as plain HTTP/1.1, then the connection closes.
            self.peer_done = True
        except httptools.HttpParserError as exc:
            self._refuse("400 Bad Request", f"Malformed HTTP request: {_text(exc)}")
            return
        if self.phase == _HEAD and self.raw_head > MAX_HEAD_BYTES:  # a field the parser still buffers
            self._refuse("431 Request Header Fields Too Large", f"Request head over {MAX_HEAD_BYTES} bytes")

    def eof_received(self) -> bool | None:
        if self.busy or self.waiting:
            self.peer_done = True
            return True  # keep the transport open to write the answer
        return None  # nothing owed: close

    # -- httptools callbacks --------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.request = _Request()
        self.continue_owed = False
        if self.phase == _IDLE:  # a pipelined request, parsed from the same read as the one before it
            self.phase, self.deadline = _HEAD, time.monotonic() + self.front.limits.header_timeout_s

    def on_url(self, url: bytes) -> None:
        self.request.url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        if self.phase == _HEAD:
            self.request.headers.append((name, value))
        # else a chunked body's trailer: counted against the head's limit, never merged into the headers

    def _count_head(self, n: int) -> None:
        self.head_bytes += n
        if self.head_bytes > MAX_HEAD_BYTES:
            self._refuse("431 Request Header Fields Too Large", f"Request head over {MAX_HEAD_BYTES} bytes")
            raise httptools.HttpParserError("refused")

    def on_headers_complete(self) -> None:
        limits = self.front.limits
        request = self.request
        request.method = self.parser.get_method().decode("latin-1")
        request.http_version = self.parser.get_http_version()
        request.keep_alive = self.parser.should_keep_alive()
        try:
            if request.method == "CONNECT" or not request.url.startswith((b"/", b"http://", b"https://")):
                raise ValueError(request.url[:100])
            url = httptools.parse_url(request.url)
            request.path, request.query = url.path or b"/", url.query or b""
        except (ValueError, httptools.HttpParserInvalidURLError):
            self._refuse("400 Bad Request", "Malformed request target")
            raise httptools.HttpParserError("refused") from None
        request.cap = limits.body_cap(request, self.front.api_key)
        self.phase, self.deadline = _BODY, time.monotonic() + limits.body_timeout_s
        length, expect = None, False
        for name, value in request.headers:
            lower = name.lower()
            if lower == b"content-length":
                length = int(value) if value.strip().isdigit() else None
            elif lower == b"expect" and value.lower() == b"100-continue":
                expect = True
        if length is not None and length > request.cap:
            self._refuse("413 Request Entity Too Large", f"Request body too large. Limit: {request.cap} bytes.")
            raise httptools.HttpParserError("refused")  # stops the parser; caught in data_received
        if expect and request.http_version == "1.1" and self.transport is not None:
            if self.busy:  # an earlier request's answer comes first: sent when the connection is read on
                self.continue_owed = True
            else:
                self.transport.write(CONTINUE)

    def on_body(self, body: bytes) -> None:
        request, front = self.request, self.front
        if request.size + len(body) > request.cap:
            self._refuse("413 Request Entity Too Large", f"Request body too large. Limit: {request.cap} bytes.")
            raise httptools.HttpParserError("refused")
        if request.spool is None and (request.size + len(body) > SPOOL_AT
                                      or front.in_memory + len(body) > MEMORY_BUDGET):
            request.spool = front.spool_file()
            request.spool.writelines(request.body)
            front.count(memory=-request.size)
            request.body = []
        request.size += len(body)
        if request.spool is not None:
            request.spool.write(body)
        else:
            request.body.append(body)
            front.count(memory=len(body))

    def on_message_complete(self) -> None:
        self.phase, self.head_bytes = _IDLE, 0
        self.waiting.append(self.request)
        if not self.busy and self.push is None:
            self._next()

    # -- running requests --------------------------------------------------------------------------
    def _next(self) -> None:
        """Hand the next request read whole to the application, or read on."""
        transport = self.transport
        if self.closing or transport is None:
            return
        if self.waiting and self.front.stopping:
            for request in self.waiting:
                self.front.release(request)
            self.waiting.clear()
            self._refuse("503 Service Unavailable", "The server is stopping; try again shortly")
            return
        if self.waiting:
            request = self.waiting.popleft()
            environ = self.front.environ(request, transport)
            request.body = []  # the environ holds the copy now (still counted, until the answer)
            self.busy = True
            self.front.count(running=1, pending=1)
            transport.pause_reading()  # one request in the application at a time
            self.front.pool.submit(self._in_thread, request, environ, self._own_handle(transport))
            return
        self.busy = False
        if self.refusal is not None:
            self._refuse(*self.refusal)
        elif self.peer_done:
            self._close()
        else:  # the next request's time starts now (reading was paused while the application ran)
            limits = self.front.limits
            wait = {_IDLE: limits.keepalive_s, _HEAD: limits.header_timeout_s, _BODY: limits.body_timeout_s}
            self.deadline = time.monotonic() + wait[self.phase]
            if self.continue_owed and self.phase == _BODY:
                transport.write(CONTINUE)
            self.continue_owed = False
            transport.resume_reading()

    @staticmethod
    def _own_handle(transport: asyncio.Transport) -> int:
        """A duplicate of the connection's socket for the request thread to write its answer to, or -1
        (something is still being sent: the answer must queue behind it). The thread owns and closes it,
        so that the loop closing the connection meanwhile can never leave the thread writing to another
        connection that reused the descriptor's number."""
        sock = transport.get_extra_info("socket")
        if sock is None or transport.get_write_buffer_size():
            return -1
        try:
            return os.dup(sock.fileno())
        except OSError:
            return -1

    def _in_thread(self, request: _Request, environ: dict[str, Any], handle: int) -> None:
        """On a request thread: the application, then its answer written to ``handle`` (as much of it as
        the socket takes at once), and the rest handed to the loop with the bookkeeping (one wake-up).
        An answer written whole on a kept-alive connection is followed by the connection's next request
        in this thread when it comes within ``linger_s`` (``_linger``), without going back to the loop.
        The thread owns ``handle`` and closes it, whatever happens."""
        self.front.count(pending=-1)
        try:
            last = self._serve(request, environ, handle)
        finally:
            if handle >= 0:
                os.close(handle)
        try:
            if last is None:  # the loop takes the connection back
                self.front.loop.call_soon_threadsafe(self._next)
            else:
                self.front.loop.call_soon_threadsafe(self._respond, *last)
            return
        except RuntimeError:  # the loop is gone: the worker stopped meanwhile
            pass
        if last is not None:
            _, answer, after, _ = last
            if _pushable(answer[2]):
                answer[2].close()
            _close_body(after)

    def _serve(self, request: _Request, environ: dict[str, Any],
               handle: int) -> tuple[_Request, _Answer, _Close | None, _Framed | None] | None:
        """Run requests of the connection and write their answers to ``handle`` for as long as each is
        written whole and the next comes in time; the last one's answer and what was written of it for
        the loop to finish (``_respond``), or None when the last answer is done with and the connection
        goes back to the loop as it is."""
        front = self.front
        while True:
            after: _Close | None = None
            framed: _Framed | None = None
            try:
                answer, after = _run_app(front.app, environ)
            except Exception:  # the application's own handlers answer its errors: this is a bug, not input
                log.exception("unhandled error in the application")
                answer = _INTERNAL_ERROR
            if handle >= 0 and isinstance(answer[2], bytes):
                framed = _frame(request, answer, front.date, front.stopping)
                try:
                    framed.sent = os.write(handle, framed.data)
                except OSError:  # full (BlockingIOError), or the peer is gone: the loop takes it from here
                    pass
            if framed is None or not framed.keep or framed.sent < len(framed.data) or front.limits.linger_s <= 0:
                return request, answer, after, framed
            _close_body(after)  # the answer is out: this request's bookkeeping, here
            front.release(request)
            front.count(running=-1)
            try:
                following = self._linger(handle)
            except Exception:  # a bug: the loop takes the connection back, as when nothing comes
                log.exception("waiting for a connection's next request failed")
                following = None
            if following is None:
                return None
            request, environ = following

    def _linger(self, handle: int) -> tuple[_Request, dict[str, Any]] | None:
        """On the request thread that just wrote an answer whole, the connection still busy (the loop does
        not read it): the connection's next request when it is already read, or comes whole within
        ``linger_s``, read in as many pieces as it comes in (http.client sends a head and its body apart:
        read once, about one request in four went back to the loop); None to give the connection back to
        the loop (nothing came, or part of a request, within ``linger_s``; a refusal or a 100 Continue
        owed, the end of the stream, an upgrade asked for (answered, then the connection closes), the
        server stopping, or other requests waiting for a thread, looked at after each read).

        A client that sends one request after another (the SDK, a benchmark, a batch job) so has its next
        request read and run by this thread: the loop is not woken to take the connection back, read the
        request and hand it to a thread (0.13-0.23 ms a request on the 2-core VM, three side-by-side
        runs). What comes is parsed as the loop parses it (``data_received``): deadlines and caps hold,
        and a refusal waits for the loop."""
        front = self.front
        poller: select.poll | None = None
        give_up = 0.0
        while not self.waiting:  # a request comes in pieces (http.client sends its head and body apart)
            if (front.pending or front.stopping or self.closing or self.refusal is not None or self.peer_done
                    or self.continue_owed):
                return None
            if poller is None:
                poller = select.poll()
                poller.register(handle, select.POLLIN)
                give_up = time.monotonic() + front.limits.linger_s
            left = give_up - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                return None
            try:
                data = os.read(handle, READ_SIZE)
            except OSError:  # nothing after all, or the peer is gone: the loop finds out
                return None
            if not data:  # the end of the stream stays readable: the loop reads it too
                return None
            self.data_received(data)
        transport = self.transport  # a request is whole; what parsing it set may still send it to the loop
        if self.refusal is not None or self.closing or self.peer_done or front.stopping or transport is None:
            return None
        request = self.waiting.popleft()
        environ = front.environ(request, transport)
        request.body = []  # the environ holds the copy now (still counted, until the answer)
        front.count(running=1)
        return request, environ

    def _respond(self, request: _Request, answer: _Answer, after: _Close | None, framed: _Framed | None = None) -> None:
        """On the loop: write what the request thread did not write of the answer (``framed``: what it
        framed and sent), then close the application's body (``after``: WSGI's ``close``, where the app
        keeps its per-request bookkeeping, the request metrics and the access-log line, out of the time
        the client waits) and go on with the connection."""
        self.front.count(running=-1)
        self.front.release(request)
        status, headers, body = answer
        transport = self.transport
        if self.closing or transport is None:  # the client left while the application ran
            if _pushable(body):
                body.close()
            _close_body(after)
            return
        if _pushable(body):
            head = _head(request, status, headers, self.front.date)
            head.append("Connection: close\r\n\r\n")
            transport.write("".join(head).encode("latin-1"))
            self.push, self.busy = body, False
            transport.resume_reading()  # to see the watcher leave even when no frame comes (a paused pipeline)
            loop = self.front.loop

            def deliver(part: bytes) -> None:  # on the pipeline's thread
                with contextlib.suppress(RuntimeError):  # the loop is gone: the worker stopped
                    loop.call_soon_threadsafe(self._push_part, part)

            body.subscribe(deliver)
            return
        if framed is None:  # the thread had no handle: something was still being sent before this answer
            framed = _frame(request, answer, self.front.date, self.front.stopping)
        if framed.sent < len(framed.data):
            transport.write(framed.data[framed.sent:])
        _close_body(after)
        if framed.keep:
            self._next()
        else:
            self.busy = False
            self._close()

    def _push_part(self, part: bytes) -> None:
        transport = self.transport
        if transport is None or self.closing or self.push is None:
            return
        if transport.get_write_buffer_size() > PUSH_BACKLOG:
            return  # a slow watcher: this part is dropped, a newer one follows
        transport.write(part)

    # -- ending --------------------------------------------------------------------------------------
    def _refuse(self, status: str, message: str) -> None:
        """Answer an error of the front's own and close (the rest of the request is not read)."""
        if self.closing or self.transport is None:
            return
        if self.busy:  # a pipelined request went wrong while an earlier one runs: answered in order
            self.refusal = self.refusal or (status, message)
            return
        self.transport.write(_answer(status, message, self.front.date))
        self._close()

    def _close(self) -> None:
        """Close once written. The write side closes first and what the peer still sends is read and
        dropped for up to 2 s, so that the peer gets the answer rather than a reset."""
        transport = self.transport
        if self.closing or transport is None:
            return
        self.closing = True
        if self.push is not None:
            self.push.close()
            self.push = None
        if transport.can_write_eof():
            transport.write_eof()
        transport.resume_reading()
        self.front.loop.call_later(2.0, transport.close)

    def tick(self, now: float) -> None:
        """Deadlines: the head, the body, idle keep-alive, a response that does not drain."""
        transport = self.transport
        if transport is None:
            return
        if self.closing:
            pass
        elif self.push is not None:
            if self.push.finished():
                self._close()
        elif not self.busy and now > self.deadline:
            if self.phase == _IDLE:
                transport.close()  # an idle connection: nothing is owed
            else:
                limits = self.front.limits
                what, limit = (("headers", limits.header_timeout_s) if self.phase == _HEAD
                               else ("body", limits.body_timeout_s))
                self._refuse("408 Request Timeout", f"Request {what} not received within {limit:g} s")
        unsent = transport.get_write_buffer_size()
        if unsent == 0 or unsent < self.unsent:
            self.stalled_since = now
        elif now - self.stalled_since > SEND_STALL_S:
            transport.abort()  # a peer that stopped reading
        self.unsent = unsent


def _text(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__


_Answer = tuple[str, list[tuple[str, str]], "bytes | Pushable"]
_Close = Callable[[], object]  # a WSGI body's close()
_INTERNAL_ERROR: _Answer = ("500 Internal Server Error", [("Content-Type", "application/json")],
                            b'{"message": "Internal error"}')


@dataclass
class _Framed:
    """An answer as it goes on the wire, and how much of it the request thread wrote."""

    data: bytes  # head and body
    keep: bool  # the connection stays open after it
    sent: int = 0


def _head(request: _Request, status: str, headers: list[tuple[str, str]], date: str) -> list[str]:
    """The status line, the date and the application's headers, as lines."""
    return [f"HTTP/{request.http_version} {status}\r\nDate: {date}\r\n",
            *(f"{name}: {value}\r\n" for name, value in headers)]


def _frame(request: _Request, answer: _Answer, date: str, stopping: bool) -> _Framed:
    """Frame a whole (not pushed) answer (any thread)."""
    status, headers, body = answer
    assert isinstance(body, bytes)
    head = _head(request, status, headers, date)
    has_length = any(name.lower() == "content-length" for name, _ in headers)
    keep = request.keep_alive and not stopping
    if request.method == "HEAD" or status[:1] == "1" or status[:3] in ("204", "304"):
        body = b""  # no content, whatever the application gave: the framing must hold
    elif not has_length:
        head.append(f"Content-Length: {len(body)}\r\n")
    if not keep:
        head.append("Connection: close\r\n")
    elif request.http_version == "1.0":
        head.append("Connection: keep-alive\r\n")
    head.append("\r\n")
    return _Framed("".join(head).encode("latin-1") + body, keep)


def _pushable(body: object) -> TypeGuard[Pushable]:
    """Whether a body pushes its parts (an attribute check: ``isinstance`` with a Protocol costs ~20 us)."""
    return callable(getattr(body, "subscribe", None))


def _close_body(close: _Close | None) -> None:
    if close is not None:
        try:
            close()
        except Exception:  # a bug of the application's: its answer is out already
            log.exception("closing the application's response failed")


def _run_app(app: WsgiApp, environ: dict[str, Any]) -> tuple[_Answer, _Close | None]:
    """On a request thread: the application, and its body read whole unless it pushes its parts. The
    body's ``close`` is returned, not called: the caller calls it once the answer is written."""
    started: list[Any] = []
    written: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        started[:] = [status, headers]
        return written.append

    result = app(environ, start_response)
    if _pushable(result):
        return (started[0], started[1], result), None
    close = getattr(result, "close", None)
    try:
        body = b"".join(result)
    except BaseException:
        _close_body(close)
        raise
    return (started[0], started[1], b"".join(written) + body if written else body), close


class _Refused(asyncio.Protocol):
    """Past ``max_connections``: a 503 at once, then the connection closes. While few are refused, each
    is given a second to read the answer; in a flood they are closed at once, so that refusals cannot
    use up the process's open files."""

    MAX_LINGERING = 64

    def __init__(self, front: _Front) -> None:
        self.front = front
        self.lingering = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        front = self.front
        transport.write(_answer("503 Service Unavailable", "Too many connections; try again shortly", front.date))
        if front.refusing >= self.MAX_LINGERING or not transport.can_write_eof():
            transport.close()
            return
        front.refusing += 1
        self.lingering = True
        transport.write_eof()
        front.loop.call_later(1.0, transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lingering:
            self.front.refusing -= 1

    def data_received(self, data: bytes) -> None:
        pass  # dropped: the answer is already on its way


class _Front:
    """What the connections share: the application, the request threads, limits, the open connections."""

    def __init__(self, app: WsgiApp, limits: Limits, threads: int, loop: asyncio.AbstractEventLoop) -> None:
        self.app = app
        self.limits = limits
        self.loop = loop
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="http")
        self.connections: set[_Connection] = set()
        self._counts = threading.Lock()  # the loop and request threads both count (count(), release())
        self.in_memory = 0  # bytes of request bodies held in memory (the environ's copy included)
        self.running = 0  # requests in the application
        self.pending = 0  # requests handed to the pool that no thread has taken yet
        self.refusing = 0  # connections past the cap still being answered
        self.api_key: bytes | None = None  # [server] api_key: who may send a model-sized body
        self.stopping = False
        self.date = formatdate(usegmt=True)
        self._date_at = int(time.time())
        self.server_name, self.server_port = "localhost", "80"

    def spool_file(self) -> BinaryIO:
        """An unnamed file for a large body: it vanishes when closed, or when the process dies."""
        self.limits.spool_dir.mkdir(parents=True, exist_ok=True)
        return tempfile.TemporaryFile(dir=self.limits.spool_dir)

    def count(self, memory: int = 0, running: int = 0, pending: int = 0) -> None:
        """Add to the counters (any thread)."""
        with self._counts:
            self.in_memory += memory
            self.running += running
            self.pending += pending

    def release(self, request: _Request) -> None:
        """A request is done with (answered, or its connection lost): its body's memory and file go."""
        if request.spool is None:
            self.count(memory=-request.size)
        else:
            request.spool.close()
            request.spool = None
        request.size = 0
        request.body = []

    def protocol(self) -> asyncio.Protocol:
        if len(self.connections) >= self.limits.max_connections:
            return _Refused(self)
        return _Connection(self)

    def environ(self, request: _Request, transport: asyncio.Transport) -> dict[str, Any]:
        """PEP 3333's environ for a request read whole."""
        peer = transport.get_extra_info("peername") or ("", 0)
        env: dict[str, Any] = {
            "REQUEST_METHOD": request.method,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(request.path).decode("latin-1"),
            "QUERY_STRING": request.query.decode("latin-1"),
            "SERVER_NAME": self.server_name,
            "SERVER_PORT": self.server_port,
            "SERVER_PROTOCOL": f"HTTP/{request.http_version}",
            "REMOTE_ADDR": str(peer[0]),
            "REMOTE_PORT": str(peer[1]),
            "CONTENT_LENGTH": str(request.size),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": request.input(),
            "wsgi.input_terminated": True,
            BODY_READ_WHOLE: True,
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for name, value in request.headers:
            if b"_" in name:
                continue  # X_Api_Key vs X-Api-Key would both become HTTP_X_API_KEY: refuse the ambiguity
            key = name.decode("latin-1").upper().replace("-", "_")
            text = value.decode("latin-1")
            if key == "CONTENT_TYPE":
                env["CONTENT_TYPE"] = text
            elif key in ("CONTENT_LENGTH", "TRANSFER_ENCODING"):
                continue  # the body is read whole: its length is what came
            else:
                key = "HTTP_" + key
                env[key] = env[key] + "," + text if key in env else text
        return env

    def tick(self) -> None:
        now = time.monotonic()
        if int(time.time()) != self._date_at:
            self._date_at = int(time.time())
            self.date = formatdate(usegmt=True)
        for conn in list(self.connections):
            conn.tick(now)

    def stop(self) -> None:
        """No new requests: idle connections close, push streams end, requests in the application finish."""
        self.stopping = True
        for conn in list(self.connections):
            if conn.push is not None or (conn.phase == _IDLE and not conn.busy and not conn.waiting):
                conn._close()


def raise_open_files(wanted: int) -> None:
    """Let the process hold ``wanted`` sockets besides its models, cameras and databases (the soft limit
    is often 1024 outside systemd)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + 256
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < need:
            log.warning("open files limited to %d: fewer than %d connections may be served", target, wanted)


class FrontWorker(Worker):  # type: ignore[misc]
    """gunicorn's worker class for edge-agent: the front above, the Flask app in ``threads`` threads.
    Its settings come from the application (``EdgeAgentServer.settings.server``).

    SIGTERM stops gracefully: requests in the application get ``graceful_timeout_s`` less 2 s (gunicorn
    kills the worker at ``graceful_timeout_s``, and the runtime must still stop). SIGINT and SIGQUIT stop
    at once, as gunicorn's other workers do."""

    quick = False  # SIGINT/SIGQUIT: no draining

    def handle_quit(self, sig: int, frame: Any) -> None:
        self.quick = True
        self.alive = False
        with contextlib.suppress(OSError):
            os.write(self.PIPE[1], b"q")  # wake the loop (signals already do, through the wake-up fd)

    def run(self) -> None:
        settings: ServerSettings = self.app.settings.server
        raise_open_files(settings.max_connections)
        asyncio.run(self._serve(settings))

    async def _serve(self, settings: ServerSettings) -> None:
        loop = asyncio.get_running_loop()
        front = _Front(self.wsgi, Limits.of(self.app.settings), settings.threads, loop)
        front.server_port = str(settings.port)
        front.api_key = settings.api_key.get_secret_value().encode() if settings.api_key else None
        woken = asyncio.Event()

        def wake() -> None:  # a signal arrived (gunicorn's wake-up pipe): look at ``alive`` now
            try:
                while os.read(self.PIPE[0], 64):
                    pass
            except BlockingIOError:
                pass
            woken.set()

        loop.add_reader(self.PIPE[0], wake)
        servers = [await loop.create_server(front.protocol, sock=sock.sock, backlog=self.cfg.backlog)
                   for sock in self.sockets]
        try:
            while self.alive and self.ppid == os.getppid():
                self.notify()
                front.tick()
                woken.clear()
                try:
                    await asyncio.wait_for(woken.wait(), TICK_S)
                except asyncio.TimeoutError:
                    pass
        finally:
            for server in servers:
                server.close()
            front.stop()
            until = time.monotonic() + max(1.0, front.limits.graceful_timeout_s - 2.0)
            while front.running and not self.quick and time.monotonic() < until:
                self.notify()
                front.tick()
                await asyncio.sleep(TICK_S)
            for conn in list(front.connections):  # what is written still goes out, for up to a second
                if conn.transport is not None:
                    conn.transport.close()
            flushed = time.monotonic() + (0.0 if self.quick else 1.0)
            while front.connections and time.monotonic() < flushed:
                await asyncio.sleep(0.05)
            for conn in list(front.connections):
                if conn.transport is not None:
                    conn.transport.abort()
            front.pool.shutdown(wait=False, cancel_futures=True)
            loop.remove_reader(self.PIPE[0])
