"""Fetching an image over HTTP(S) under a policy: scheme, host lists, address ranges, redirects,
a total timeout and a size cap (docs/http-api.md §9.2).

The connection goes to the address that was checked (no second DNS lookup an attacker could
rebind), proxies from the environment are never used, and every redirect hop is checked again.
The allow- and block-lists compare addresses, not spellings: each entry is a host name (resolved),
an IP address or a network, and the URL's host is refused when any address it resolves to is blocked,
so ``[::ffff:127.0.0.1]``, ``2130706433``, ``127.1`` and an alias of a blocked name are all caught.
The total timeout holds whatever the server's pace: every socket operation (connect, TLS handshake,
send, each read of the status line, headers and body) waits at most the time left, and so does each
DNS lookup (of the URL's host and of list entries that are names): ``getaddrinfo`` cannot be
interrupted, so it runs on a thread of its own and the fetch stops waiting for it when the time is up.
Such a thread stays busy until the system resolver gives up; at most ``MAX_IN_FLIGHT`` lookups run at
once, and past that a fetch is refused at once (503) rather than queued behind a resolver that hangs.
At most ``MAX_IN_FLIGHT`` fetches run at once in the process, so slow URLs cannot occupy every request
thread. Only the standard library is used.
"""

from __future__ import annotations

import functools
import http.client
import ipaddress
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import urljoin, urlsplit

from edge_agent.errors import ImageLoadError, Overloaded

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

NOT_ALLOWED = "URL points to a network destination that is not allowed."
MAX_IN_FLIGHT = 4  # URL fetches at once in a process: below the 8 request threads of a worker
SLOT_WAIT_S = 0.25  # how long a fetch waits for a free slot before it is refused (503, retry later)
_LIST_TTL_S = 30.0  # how long the resolved addresses of a list entry are reused

_slots = threading.BoundedSemaphore(MAX_IN_FLIGHT)
_lookups = threading.BoundedSemaphore(MAX_IN_FLIGHT)  # resolver threads at once

_Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class UrlPolicy:
    """What a URL image may point at. The defaults are the strict ones used for network callers.

    ``allowed_hosts`` and ``blocked_hosts`` hold host names, IP addresses or networks (``10.0.0.0/8``);
    they are compared with the addresses the URL's host resolves to (see the module's docstring).
    """

    allow_urls: bool = True
    allow_http: bool = False
    allow_ip_hosts: bool = False  # IP literals and single-label names such as "localhost"
    allow_non_global: bool = False  # loopback, private, link-local, CGNAT, ULA, reserved
    allowed_hosts: tuple[str, ...] = ()
    blocked_hosts: tuple[str, ...] = ()
    max_redirects: int = 5
    timeout_s: float = 10.0
    max_bytes: int = 20 * 1024 * 1024

    @classmethod
    def trusted(cls) -> UrlPolicy:
        """For a local user (Python API, CLI): any scheme, host and address, same time and size caps."""
        return cls(allow_http=True, allow_ip_hosts=True, allow_non_global=True)


def _address(text: str) -> _Address:
    """``text`` as an address, IPv4-mapped IPv6 unwrapped and a zone dropped; ValueError if it is none."""
    ip = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _is_global(ip: _Address) -> bool:
    return bool(ip.is_global) and not ip.is_multicast


def _name(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def _is_ip_spelling(host: str) -> bool:
    """An IP literal in any spelling the resolver accepts (``127.1``, ``0x7f.0.0.1``, ``2130706433``)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    try:
        socket.inet_aton(host)
        return True
    except OSError:
        return False


_list_cache: dict[str, tuple[float, tuple[_Network, ...]]] = {}
_list_lock = threading.Lock()


def _lookup(host: str, port: int | None, deadline: float) -> list[tuple[int, str]]:
    """``getaddrinfo`` waited for until ``deadline`` (``_Expired`` after it): (family, address) pairs.
    A daemon thread: one that hangs neither holds up the process's exit nor a later lookup's place."""
    timeout = _left(deadline)
    if not _lookups.acquire(blocking=False):
        raise Overloaded(f"{MAX_IN_FLIGHT} DNS lookups of image URLs are not answering - retry request.")
    done = threading.Event()
    outcome: list[Any] = []

    def resolve() -> None:
        try:
            outcome.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting fetch
            outcome.append(exc)
        finally:
            _lookups.release()
            done.set()

    threading.Thread(target=resolve, name="url-dns", daemon=True).start()
    if not done.wait(timeout):
        raise _Expired("DNS lookup")
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return [(int(info[0]), str(info[4][0])) for info in outcome[0]]


def _entry_networks(entry: str, deadline: float) -> tuple[_Network, ...]:
    """The networks a list entry stands for: itself if a literal or network, else its resolved addresses."""
    name = _name(entry)
    if not name:
        return ()
    try:
        return (ipaddress.ip_network(str(_address(name))),)
    except ValueError:
        pass
    try:
        return (ipaddress.ip_network(name, strict=False),)
    except ValueError:
        pass
    now = time.monotonic()
    with _list_lock:
        cached = _list_cache.get(name)
    if cached is not None and cached[0] > now:
        return cached[1]
    try:
        nets = tuple({ipaddress.ip_network(str(_address(addr))) for _, addr in _lookup(name, None, deadline)})
    except _Expired:
        raise
    except (OSError, UnicodeError, ValueError):
        return ()  # it matches only by name now, and is looked up again next time (never cached empty)
    with _list_lock:
        _list_cache[name] = (now + _LIST_TTL_S, nets)
    return nets


def _named(host: str, entries: tuple[str, ...]) -> bool:
    """Whether an entry names ``host`` itself (case and a trailing dot aside)."""
    return _name(host) in {_name(e) for e in entries}


def _networks(entries: tuple[str, ...], deadline: float) -> list[_Network]:
    return [net for entry in entries for net in _entry_networks(entry, deadline)]


def _check_host(host: str, policy: UrlPolicy) -> None:
    if not policy.allow_ip_hosts and (_is_ip_spelling(host) or "." not in host.strip(".")):
        raise ImageLoadError(
            "Providing images via URL without FQDN is not supported in this configuration of `inference`.")
    if policy.blocked_hosts and _named(host, policy.blocked_hosts):
        raise ImageLoadError("It is not allowed to reach image URL - prohibited by blacklisted destinations.")


def _resolve(host: str, port: int, policy: UrlPolicy, deadline: float) -> tuple[int, str]:
    try:
        infos = _lookup(host, port, deadline)
        addrs = [_address(addr) for _, addr in infos]
    except _Expired:
        raise
    except (OSError, UnicodeError, ValueError) as exc:
        raise ImageLoadError("Provided image URL is invalid") from exc
    if not addrs:
        raise ImageLoadError("Provided image URL is invalid")
    if policy.allowed_hosts and not _named(host, policy.allowed_hosts):
        allowed = _networks(policy.allowed_hosts, deadline)
        if not all(any(ip in net for net in allowed) for ip in addrs):
            raise ImageLoadError("It is not allowed to reach image URL - prohibited by whitelisted destinations.")
    if policy.blocked_hosts and any(ip in net for net in _networks(policy.blocked_hosts, deadline) for ip in addrs):
        raise ImageLoadError("It is not allowed to reach image URL - prohibited by blacklisted destinations.")
    if not policy.allow_non_global and not all(_is_global(a) for a in addrs):
        raise ImageLoadError(NOT_ALLOWED)
    return infos[0]


class _Expired(TimeoutError):
    """The fetch's total deadline passed during a socket operation."""


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _Expired("deadline passed")
    return left


class _DeadlineSocket(socket.socket):
    """A TCP socket whose every read and write waits at most until ``deadline``."""

    deadline = 0.0

    def recv_into(self, buffer: WriteableBuffer, nbytes: int = 0, flags: int = 0) -> int:
        self.settimeout(_left(self.deadline))
        return super().recv_into(buffer, nbytes, flags)

    def sendall(self, data: ReadableBuffer, flags: int = 0) -> None:
        self.settimeout(_left(self.deadline))  # one C call with a total deadline of the timeout
        super().sendall(data, flags)


class _DeadlineSSLSocket(ssl.SSLSocket):
    """The TLS socket of a fetch: each read and write waits at most until ``deadline``."""

    deadline = 0.0

    def recv_into(self, buffer: WriteableBuffer, nbytes: int | None = None, flags: int = 0) -> int:
        self.settimeout(_left(self.deadline))
        return super().recv_into(buffer, nbytes, flags)

    def send(self, data: ReadableBuffer, flags: int = 0) -> int:
        self.settimeout(_left(self.deadline))
        return super().send(data, flags)


def _open(family: int, address: str, port: int, deadline: float) -> _DeadlineSocket:
    sock = _DeadlineSocket(family, socket.SOCK_STREAM)
    sock.deadline = deadline
    try:
        sock.settimeout(_left(deadline))
        sock.connect((address, port))
    except BaseException:
        sock.close()
        raise
    return sock


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The system's trust store, loaded once per process on the first HTTPS fetch (contexts are
    thread-safe); its sockets keep the fetch's deadline."""
    context = ssl.create_default_context()
    context.sslsocket_class = _DeadlineSSLSocket
    return context


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to a fixed address, with SNI and certificate checks for the URL's host name."""

    def __init__(self, host: str, port: int, family: int, address: str, deadline: float) -> None:
        super().__init__(host, port, timeout=_left(deadline), context=_tls_context())
        self._family, self._address, self._deadline = family, address, deadline

    def connect(self) -> None:
        sock = _open(self._family, self._address, self.port, self._deadline)
        sock.settimeout(_left(self._deadline))  # the handshake: one C call with a total deadline
        tls = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]
        if isinstance(tls, _DeadlineSSLSocket):
            tls.deadline = self._deadline
        self.sock = tls


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, family: int, address: str, deadline: float) -> None:
        super().__init__(host, port, timeout=_left(deadline))
        self._family, self._address, self._deadline = family, address, deadline

    def connect(self) -> None:
        self.sock = _open(self._family, self._address, self.port, self._deadline)


def _connection(url: str, policy: UrlPolicy, deadline: float) -> tuple[http.client.HTTPConnection, str]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ImageLoadError("Provided image URL is invalid") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname or "\\" in parts.netloc:
        raise ImageLoadError("Provided image URL is invalid")
    if parts.scheme == "http" and not policy.allow_http:
        raise ImageLoadError(
            "Providing images via non https:// URL is not supported in this configuration of `inference`.")
    host = parts.hostname
    _check_host(host, policy)
    port = port or (443 if parts.scheme == "https" else 80)
    family, address = _resolve(host, port, policy, deadline)
    cls = _PinnedHTTPS if parts.scheme == "https" else _PinnedHTTP
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return cls(host, port, family, address, deadline), path


def fetch(url: str, policy: UrlPolicy) -> bytes:
    """Download ``url`` under ``policy``; every failure is an ``ImageLoadError`` with a public cause,
    except ``Overloaded`` (503) when ``MAX_IN_FLIGHT`` fetches are already running."""
    if not policy.allow_urls:
        raise ImageLoadError("Providing images via URL is not supported in this configuration of `inference`.")
    if not _slots.acquire(timeout=SLOT_WAIT_S):
        raise Overloaded(f"{MAX_IN_FLIGHT} image URL downloads are in progress - retry request.")
    try:
        return _fetch(url, policy, time.monotonic() + policy.timeout_s)
    finally:
        _slots.release()


def _fetch(url: str, policy: UrlPolicy, deadline: float) -> bytes:
    late = f"Image URL did not answer within {policy.timeout_s:g} s."
    for _hop in range(policy.max_redirects + 1):
        if deadline <= time.monotonic():
            raise ImageLoadError(late)
        try:
            conn, path = _connection(url, policy, deadline)
        except TimeoutError as exc:
            raise ImageLoadError(late) from exc
        try:
            conn.request("GET", path, headers={"User-Agent": "edge-agent", "Accept": "image/*"})
            response = conn.getresponse()
            if response.status in (301, 302, 303, 307, 308):
                location = response.getheader("Location")
                if not location:
                    raise ImageLoadError("Provided image URL is invalid")
                url = urljoin(url, location)
                continue
            if response.status != 200:
                raise ImageLoadError(f"Image URL answered HTTP {response.status}.")
            return _read_capped(response, policy)
        except TimeoutError as exc:  # a socket timeout is the deadline: each operation waits the time left
            raise ImageLoadError(late) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise ImageLoadError(f"Could not download image from URL ({type(exc).__name__}).") from exc
        finally:
            conn.close()
    raise ImageLoadError(f"Image URL redirected more than {policy.max_redirects} times.")


def _read_capped(response: http.client.HTTPResponse, policy: UrlPolicy) -> bytes:
    length = response.getheader("Content-Length")
    if length and length.isdigit() and int(length) > policy.max_bytes:
        raise ImageLoadError(f"Image at URL is larger than {policy.max_bytes} bytes.")
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = response.read1(65536)  # what has arrived; each socket read is bounded by the deadline
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > policy.max_bytes:
            raise ImageLoadError(f"Image at URL is larger than {policy.max_bytes} bytes.")
        chunks.append(chunk)
