"""URL fetches against hostile servers: the total deadline holds whatever the server's pace, in-flight
fetches are bounded, and block/allow lists compare resolved addresses in every spelling
(docs/http-api.md §9.2). Every server here is a loopback socket of the test's own."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from edge_agent import url_fetch
from edge_agent.errors import EdgeAgentError, ImageLoadError, Overloaded
from edge_agent.url_fetch import UrlPolicy, fetch

DEADLINE_S = 2.0
DRIP_S = 0.5
BODY = b"\x89PNG-not-really-but-bytes"


@dataclass
class _Server:
    """A loopback HTTP server with one behaviour per path: ``/drip-headers`` sends its whole answer a byte
    every ``DRIP_S``, ``/drip-body`` sends headers then the body a byte at a time, ``/silent`` never
    answers, ``/redirect-to?<url>`` redirects, anything else answers ``BODY``."""

    host: str = "127.0.0.1"
    stop: threading.Event = field(default_factory=threading.Event)
    accepted: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    sock: socket.socket | None = None
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> int:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((self.host, 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        thread = threading.Thread(target=self._accept, name="hostile-accept", daemon=True)
        thread.start()
        self.threads.append(thread)
        return int(self.sock.getsockname()[1])

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(5)
        if self.sock is not None:
            self.sock.close()

    def _accept(self) -> None:
        assert self.sock is not None
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with self.lock:
                self.accepted += 1
            thread = threading.Thread(target=self._serve, args=(conn,), name="hostile-conn", daemon=True)
            thread.start()
            self.threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(0.1)
            request = b""
            while b"\r\n\r\n" not in request and not self.stop.is_set():
                try:
                    data = conn.recv(4096)
                except TimeoutError:
                    continue
                if not data:
                    return
                request += data
            path = request.split(b" ", 2)[1].decode() if request.count(b" ") >= 2 else "/"
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(BODY)}\r\nConnection: close\r\n\r\n".encode()
            try:
                if path == "/silent":
                    self.stop.wait()
                elif path == "/drip-headers":
                    self._drip(conn, head + BODY)
                elif path == "/drip-body":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                    self._drip(conn, BODY * 100)
                elif path.startswith("/redirect-to?"):
                    target = path.split("?", 1)[1]
                    conn.sendall(f"HTTP/1.1 302 Found\r\nLocation: {target}\r\n"
                                 "Content-Length: 0\r\nConnection: close\r\n\r\n".encode())
                else:
                    conn.sendall(head + BODY)
            except OSError:
                pass  # the client gave up: what these tests want

    def _drip(self, conn: socket.socket, data: bytes) -> None:
        for i in range(len(data)):
            if self.stop.wait(DRIP_S):
                return
            conn.sendall(data[i:i + 1])


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[_Server, int]]:
    srv = _Server()
    port = srv.start()
    yield srv, port
    srv.close()


@pytest.fixture(scope="module")
def other_loopback() -> Iterator[int]:
    """A server on 127.0.0.2: loopback, but not an address in the block list."""
    srv = _Server(host="127.0.0.2")
    try:
        port = srv.start()
    except OSError:
        pytest.skip("127.0.0.2 cannot be bound here")
    yield port
    srv.close()


LOOSE = UrlPolicy(allow_http=True, allow_ip_hosts=True, allow_non_global=True, timeout_s=DEADLINE_S)
BLOCKING = UrlPolicy(allow_http=True, allow_ip_hosts=True, allow_non_global=True, timeout_s=DEADLINE_S,
                     blocked_hosts=("127.0.0.1", "localhost"))


def _attempt(url: str, policy: UrlPolicy) -> tuple[float, BaseException | None]:
    start = time.monotonic()
    try:
        fetch(url, policy)
    except BaseException as exc:  # noqa: BLE001 - the tests look at what was raised
        return time.monotonic() - start, exc
    return time.monotonic() - start, None


_slow_results: dict[str, tuple[float, BaseException | None]] = {}


def _slow(server: tuple[_Server, int], path: str) -> tuple[float, BaseException | None]:
    """One fetch of a slow path, shared by the tests that look at different parts of its outcome."""
    if path not in _slow_results:
        _slow_results[path] = _attempt(f"http://127.0.0.1:{server[1]}{path}", LOOSE)
    return _slow_results[path]


SLOW_PATHS = ["/drip-headers", "/drip-body", "/silent"]


@pytest.mark.parametrize("path", SLOW_PATHS)
def test_slow_server_ends_within_deadline_plus_one_second(server: tuple[_Server, int], path: str) -> None:
    assert _slow(server, path)[0] < DEADLINE_S + 1.0


@pytest.mark.parametrize("path", SLOW_PATHS)
def test_slow_server_is_an_image_load_error_naming_the_deadline(server: tuple[_Server, int], path: str) -> None:
    exc = _slow(server, path)[1]
    assert isinstance(exc, ImageLoadError) and "did not answer within 2 s" in str(exc)


@pytest.mark.parametrize("path", SLOW_PATHS)
def test_slow_server_answers_4xx(server: tuple[_Server, int], path: str) -> None:
    exc = _slow(server, path)[1]
    assert isinstance(exc, EdgeAgentError) and 400 <= exc.status < 500


@pytest.mark.parametrize("policy", [LOOSE, UrlPolicy(allow_http=True, allow_ip_hosts=True, allow_non_global=True,
                                                     timeout_s=DEADLINE_S, blocked_hosts=("blocked.example",))],
                         ids=["url-host", "block-list-entry"])
def test_slow_dns_lookup_ends_within_deadline_plus_one_second(server: tuple[_Server, int],
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              policy: UrlPolicy) -> None:
    """A resolver that hangs (the system's, when a DNS server drops queries) cannot hold the fetch: the
    lookup of the URL's host, or of a block-list entry, is waited for only until the deadline."""
    real = socket.getaddrinfo
    release = threading.Event()

    def hanging(host: str, *args: object, **kwargs: object) -> object:
        if host in ("slow-dns.example", "blocked.example"):
            release.wait(DEADLINE_S * 3)
            raise socket.gaierror(socket.EAI_AGAIN, "the resolver gave up")  # never a real DNS query
        return real(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(url_fetch.socket, "getaddrinfo", hanging)
    host = "slow-dns.example" if policy is LOOSE else "localhost"
    try:
        elapsed, exc = _attempt(f"http://{host}:{server[1]}/img", policy)
    finally:
        release.set()
    assert elapsed < DEADLINE_S + 1.0
    assert isinstance(exc, ImageLoadError) and "did not answer within 2 s" in str(exc)


def test_fast_server_still_fetches(server: tuple[_Server, int]) -> None:
    assert fetch(f"http://127.0.0.1:{server[1]}/img", LOOSE) == BODY


def _fill_slots(server: tuple[_Server, int]) -> tuple[list[threading.Thread], float, BaseException | None]:
    """Start ``MAX_IN_FLIGHT`` fetches of a silent URL, wait until all are connected, try one more."""
    srv, port = server
    with srv.lock:
        before = srv.accepted
    threads = [threading.Thread(target=_attempt, args=(f"http://127.0.0.1:{port}/silent", LOOSE), daemon=True)
               for _ in range(url_fetch.MAX_IN_FLIGHT)]
    for thread in threads:
        thread.start()
    until = time.monotonic() + DEADLINE_S
    while time.monotonic() < until:
        with srv.lock:
            if srv.accepted - before >= url_fetch.MAX_IN_FLIGHT:
                break
        time.sleep(0.01)
    elapsed, exc = _attempt(f"http://127.0.0.1:{port}/img", LOOSE)
    return threads, elapsed, exc


@pytest.fixture(scope="module")
def overflow(server: tuple[_Server, int]) -> tuple[float, BaseException | None]:
    threads, elapsed, exc = _fill_slots(server)
    for thread in threads:
        thread.join(DEADLINE_S + 2)
    return elapsed, exc


def test_fetch_past_the_in_flight_bound_is_overloaded(overflow: tuple[float, BaseException | None]) -> None:
    assert isinstance(overflow[1], Overloaded)


def test_fetch_past_the_in_flight_bound_fails_fast(overflow: tuple[float, BaseException | None]) -> None:
    assert overflow[0] < 1.0


def test_slots_are_freed_when_slow_fetches_end(server: tuple[_Server, int],
                                               overflow: tuple[float, BaseException | None]) -> None:
    assert fetch(f"http://127.0.0.1:{server[1]}/img", LOOSE) == BODY


def _alias() -> str:
    """A host name other than ``localhost`` that resolves to 127.0.0.1 here (from /etc/hosts)."""
    for name in (socket.gethostname(), "localhost.localdomain", "runsc", "vm"):
        try:
            addrs = {info[4][0] for info in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)}
        except OSError:
            continue
        if name != "localhost" and addrs == {"127.0.0.1"}:
            return name
    pytest.skip("no alias of 127.0.0.1 on this machine")


BLOCKED_SPELLINGS = ["127.0.0.1", "[::ffff:127.0.0.1]", "2130706433", "127.1", "0x7f.0.0.1", "localhost",
                     "LOCALHOST.", "alias"]


@pytest.mark.parametrize("host", BLOCKED_SPELLINGS)
def test_block_list_refuses_every_spelling(server: tuple[_Server, int], host: str) -> None:
    host = _alias() if host == "alias" else host
    with pytest.raises(ImageLoadError, match="blacklisted destinations"):
        fetch(f"http://{host}:{server[1]}/img", BLOCKING)


def test_block_list_name_entry_refuses_its_address(server: tuple[_Server, int]) -> None:
    policy = UrlPolicy(allow_http=True, allow_ip_hosts=True, allow_non_global=True, blocked_hosts=("localhost",))
    with pytest.raises(ImageLoadError, match="blacklisted destinations"):
        fetch(f"http://127.0.0.1:{server[1]}/img", policy)


def test_block_list_network_entry_refuses_addresses_inside(other_loopback: int) -> None:
    policy = UrlPolicy(allow_http=True, allow_ip_hosts=True, allow_non_global=True, blocked_hosts=("127.0.0.0/8",))
    with pytest.raises(ImageLoadError, match="blacklisted destinations"):
        fetch(f"http://127.0.0.2:{other_loopback}/img", policy)


def test_unlisted_loopback_address_is_allowed(other_loopback: int) -> None:
    assert fetch(f"http://127.0.0.2:{other_loopback}/img", BLOCKING) == BODY


def test_block_list_is_applied_on_each_redirect_hop(server: tuple[_Server, int], other_loopback: int) -> None:
    url = f"http://127.0.0.2:{other_loopback}/redirect-to?http://127.1:{server[1]}/img"
    with pytest.raises(ImageLoadError, match="blacklisted destinations"):
        fetch(url, BLOCKING)


def test_allow_list_name_entry_admits_its_address(server: tuple[_Server, int]) -> None:
    policy = UrlPolicy(allow_http=True, allow_ip_hosts=True, allow_non_global=True, allowed_hosts=("localhost",))
    assert fetch(f"http://127.0.0.1:{server[1]}/img", policy) == BODY


def test_allow_list_refuses_other_addresses(other_loopback: int) -> None:
    policy = UrlPolicy(allow_http=True, allow_ip_hosts=True, allow_non_global=True, allowed_hosts=("localhost",))
    with pytest.raises(ImageLoadError, match="whitelisted destinations"):
        fetch(f"http://127.0.0.2:{other_loopback}/img", policy)


@pytest.mark.parametrize("host", ["127.1", "0x7f.0.0.1", "2130706433", "[::ffff:127.0.0.1]"])
def test_ip_spellings_count_as_ip_hosts(server: tuple[_Server, int], host: str) -> None:
    with pytest.raises(ImageLoadError, match="without FQDN is not supported"):
        fetch(f"http://{host}:{server[1]}/img", UrlPolicy(allow_http=True))
