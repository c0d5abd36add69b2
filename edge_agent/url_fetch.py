"""Fetching an image over HTTP(S) under a policy: scheme, host lists, address ranges, redirects,
a total timeout and a size cap (docs/http-api.md §9.2).

The connection goes to the address that was checked (no second DNS lookup an attacker could
rebind), proxies from the environment are never used, and every redirect hop is checked again.
Only the standard library is used.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from edge_agent.errors import ImageLoadError

NOT_ALLOWED = "URL points to a network destination that is not allowed."


@dataclass(frozen=True)
class UrlPolicy:
    """What a URL image may point at. The defaults are the strict ones used for network callers."""

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


def _is_global(addr: str) -> bool:
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return bool(ip.is_global) and not ip.is_multicast


def _check_host(host: str, policy: UrlPolicy) -> None:
    is_ip = True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        is_ip = False
    if not policy.allow_ip_hosts and (is_ip or "." not in host.strip(".")):
        raise ImageLoadError(
            "Providing images via URL without FQDN is not supported in this configuration of `inference`.")
    if policy.allowed_hosts and host not in policy.allowed_hosts:
        raise ImageLoadError("It is not allowed to reach image URL - prohibited by whitelisted destinations.")
    if host in policy.blocked_hosts:
        raise ImageLoadError("It is not allowed to reach image URL - prohibited by blacklisted destinations.")


def _resolve(host: str, port: int, policy: UrlPolicy) -> str:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ImageLoadError("Provided image URL is invalid") from exc
    addrs = [str(info[4][0]) for info in infos]
    if not policy.allow_non_global and not all(_is_global(a) for a in addrs):
        raise ImageLoadError(NOT_ALLOWED)
    return addrs[0]


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to a fixed address, with SNI and certificate checks for the URL's host name."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


def _connection(url: str, policy: UrlPolicy, timeout: float) -> tuple[http.client.HTTPConnection, str]:
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
    address = _resolve(host, port, policy)
    cls = _PinnedHTTPS if parts.scheme == "https" else _PinnedHTTP
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return cls(host, port, address, timeout), path


def fetch(url: str, policy: UrlPolicy) -> bytes:
    """Download ``url`` under ``policy``; every failure is an ``ImageLoadError`` with a public cause."""
    if not policy.allow_urls:
        raise ImageLoadError("Providing images via URL is not supported in this configuration of `inference`.")
    deadline = time.monotonic() + policy.timeout_s
    for _hop in range(policy.max_redirects + 1):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ImageLoadError(f"Image URL did not answer within {policy.timeout_s:g} s.")
        conn, path = _connection(url, policy, remaining)
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
            return _read_capped(response, policy, deadline)
        except (OSError, http.client.HTTPException) as exc:
            raise ImageLoadError(f"Could not download image from URL ({type(exc).__name__}).") from exc
        finally:
            conn.close()
    raise ImageLoadError(f"Image URL redirected more than {policy.max_redirects} times.")


def _read_capped(response: http.client.HTTPResponse, policy: UrlPolicy, deadline: float) -> bytes:
    length = response.getheader("Content-Length")
    if length and length.isdigit() and int(length) > policy.max_bytes:
        raise ImageLoadError(f"Image at URL is larger than {policy.max_bytes} bytes.")
    chunks: list[bytes] = []
    size = 0
    while True:
        if time.monotonic() > deadline:
            raise ImageLoadError(f"Image URL did not answer within {policy.timeout_s:g} s.")
        chunk = response.read(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > policy.max_bytes:
            raise ImageLoadError(f"Image at URL is larger than {policy.max_bytes} bytes.")
        chunks.append(chunk)
