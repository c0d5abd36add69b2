"""Downloads from Roboflow's API and from the URLs it hands out: JSON answers and large files.

Owns the ``DownloadPolicy`` (timeouts, deadline, retries, size cap), ``fetch_json`` for API calls,
``download`` for files (streamed into a ``.part`` file next to the destination, hashed on the way,
fsynced and renamed into place only when complete) and the masking of API keys (``mask``,
``redact``). It knows neither Roboflow's routes (``roboflow_api``) nor the model store.

Retries, backoff and timeouts are urllib3's (``Retry``, ``Timeout``); a file whose body breaks off
is fetched again from the start under the same ``Retry`` budget.

Keys: every URL that reaches a log line or an error message goes through ``redact`` first, and
urllib3's own loggers (which log request URLs) get a filter that does the same. urllib3's exceptions
quote the URL, key included, so they are translated and never chained (``from None``).

Errors (``edge_agent.errors``)::

    InvalidInput      400  not an http(s) URL
    ChecksumMismatch  400  the file is not the one its sha256 names
    Unauthorized      401  the API refused the key           (fetch_json)
    Forbidden         403  the key may not read that         (fetch_json)
    ModelNotFound     404  the API has no such thing         (fetch_json)
    PayloadTooLarge   413  a file over max_bytes
    DownloadFailed    502  another 4xx, not JSON, a truncated body, the deadline passed
    CloudUnavailable  503  no connection, no answer in time, 5xx or 429 after the retries
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import ssl
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from edge_agent.atomic_files import fsync_dir
from edge_agent.errors import (
    ChecksumMismatch,
    CloudUnavailable,
    DownloadFailed,
    EdgeAgentError,
    Forbidden,
    InvalidInput,
    ModelNotFound,
    PayloadTooLarge,
    Unauthorized,
)
from edge_agent.redaction import mask as mask  # re-exported: the downloads' users import it from here
from edge_agent.redaction import needs_redaction
from edge_agent.redaction import redact as redact  # re-exported, as mask

if TYPE_CHECKING:  # urllib3 itself is imported where first used (it pulls in ssl and http.client)
    import urllib3

    from edge_agent.settings import ModelsSettings

log = logging.getLogger(__name__)

Progress = Callable[[int, int | None], None]

MAX_JSON_BYTES = 8 * 1024 * 1024
MAX_REDIRECTS = 5
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
CHUNK = 256 * 1024
PROGRESS_INTERVAL_S = 0.25
_HEADERS = {"User-Agent": "edge-agent", "Accept-Encoding": "identity"}
_URLLIB3_LOGGERS = ("urllib3.connectionpool", "urllib3.poolmanager", "urllib3.util.retry")
# -- keys ---------------------------------------------------------------------------------------
# ``redact`` and ``mask`` live in the basics layer (``edge_agent.redaction``) so that the settings and the
# console's log ring share them; they are re-exported here, where the downloads have always used them.


class _RedactKeys(logging.Filter):
    """Rewrites a record whose message holds ``api_key=...`` (urllib3 logs request URLs at DEBUG)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True
        if needs_redaction(message):
            record.msg, record.args = redact(message), None
        return True


def _guard_library_logs() -> None:
    for name in _URLLIB3_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactKeys) for f in logger.filters):
            logger.addFilter(_RedactKeys())


def _key_in(url: str) -> str | None:
    values = parse_qs(urlsplit(url).query).get("api_key")
    return values[0] if values else None


# -- policy -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DownloadPolicy:
    """How long, how often and how much: one policy for API calls and file downloads."""

    timeout_s: float = 30.0  # to connect, and for each read
    deadline_s: float = 900.0  # for a whole download, retries included
    retries: int = 3  # of connection errors, read timeouts, broken bodies, 5xx and 429
    max_bytes: int = 1024 * 1024 * 1024  # largest file downloaded
    backoff_s: float = 0.5  # urllib3's backoff_factor: 0, 2x, 4x, ... between retries

    @classmethod
    def from_settings(cls, models: ModelsSettings) -> DownloadPolicy:
        return cls(timeout_s=models.download_timeout_s, deadline_s=models.download_deadline_s,
                   retries=models.download_retries, max_bytes=models.max_download_bytes)


def _retry(policy: DownloadPolicy) -> urllib3.Retry:
    from urllib3 import Retry  # lazy: urllib3

    # One budget per kind of failure (other: TLS and the like); redirects are not failures.
    return Retry(total=None, connect=policy.retries, read=policy.retries, status=policy.retries,
                 other=policy.retries, redirect=MAX_REDIRECTS, backoff_factor=policy.backoff_s,
                 status_forcelist=RETRY_STATUSES, allowed_methods=frozenset({"GET"}),
                 raise_on_status=False, respect_retry_after_header=False)


def _check_url(url: str) -> str:
    """The host of an http(s) URL; anything else is refused."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise InvalidInput(f"not a valid URL: {redact(url)!r}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidInput(f"only http:// and https:// URLs can be downloaded, not {parts.scheme or 'a bare path'}: "
                           f"{redact(url)!r}")
    if not host:
        raise InvalidInput(f"URL without a host: {redact(url)!r}")
    return host


# -- failures in words --------------------------------------------------------------------------


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, its causes and contexts, and exceptions among its args (urllib3 wraps them there)."""
    todo, seen = [exc], set()
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [x for x in (e.__cause__, e.__context__, *e.args) if isinstance(x, BaseException)]


def _reason(exc: BaseException, host: str, timeout_s: float) -> str:
    """What went wrong with a connection, said without the URL."""
    from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ReadTimeoutError  # lazy: urllib3

    for e in _chain(exc):
        if isinstance(e, socket.gaierror):
            return f"could not resolve {host} (DNS: {e.strerror or e})"
        if isinstance(e, ConnectionRefusedError):
            return f"could not connect to {host}: connection refused"
        if isinstance(e, ConnectionResetError):
            return f"connection to {host} reset"
        if isinstance(e, ssl.SSLError):
            return f"TLS with {host} failed: {e.reason or e.__class__.__name__}"
        if isinstance(e, ReadTimeoutError):
            return f"no answer from {host} within {timeout_s:g} s"
        if isinstance(e, ConnectTimeoutError) and not isinstance(e, NewConnectionError):
            return f"could not connect to {host} within {timeout_s:g} s"
    for e in _chain(exc):
        if type(e).__name__ == "RemoteDisconnected":
            return f"{host} closed the connection without answering"
        if isinstance(e, OSError) and e.strerror:
            return f"could not connect to {host}: {e.strerror.lower()}"
    return f"could not talk to {host}: {type(exc).__name__}"


def _cloud_message(resp: urllib3.BaseHTTPResponse) -> str:
    """The ``message`` of an error body such as ``{"error": {"message": ...}}``, if there is one."""
    from urllib3.exceptions import HTTPError  # lazy: urllib3

    try:
        doc = json.loads(resp.read(64 * 1024) or b"null")
    except (ValueError, HTTPError, OSError):  # an unreadable error body only loses the detail
        return ""
    inner = doc.get("error", doc) if isinstance(doc, dict) else None
    message = inner.get("message") if isinstance(inner, dict) else inner
    return message[:300] if isinstance(message, str) else ""


def _refusal(resp: urllib3.BaseHTTPResponse, host: str, shown: str, key: str | None,
             *, api: bool) -> EdgeAgentError:
    status = resp.status
    detail = mask(_cloud_message(resp), key)
    said = f"HTTP {status}" + (f": {detail}" if detail else "")
    if status in RETRY_STATUSES:
        return CloudUnavailable(f"{host} answered {said} (for {shown})", public=f"{host} answered {said}")
    if api and status == 401:
        return Unauthorized(f"{host} refused the API key ({said})")
    if api and status == 403:
        return Forbidden(f"{host} refused access with this API key ({said})")
    if api and status == 404:
        return ModelNotFound(f"{host} has nothing at {urlsplit(shown).path or '/'} ({said})")
    return DownloadFailed(f"{host} answered {said} for {shown}", public=f"{host} answered {said}")


# -- requests -----------------------------------------------------------------------------------


def _pool() -> urllib3.PoolManager:
    import urllib3  # lazy: urllib3

    _guard_library_logs()
    return urllib3.PoolManager()


def _open(pool: urllib3.PoolManager, url: str, policy: DownloadPolicy, retry: urllib3.Retry,
          deadline: float, host: str) -> urllib3.BaseHTTPResponse:
    """Send the GET (urllib3 retries connection errors, timeouts and 5xx/429); the body is not read yet."""
    from urllib3 import Timeout  # lazy: urllib3
    from urllib3.exceptions import HTTPError, MaxRetryError, ResponseError  # lazy: urllib3

    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise DownloadFailed(f"download from {host} did not finish within {policy.deadline_s:g} s")
    timeout_s = min(policy.timeout_s, remaining)
    after = f" (after {policy.retries} retries)" if policy.retries else ""
    try:
        return pool.request("GET", url, headers=_HEADERS, retries=retry, preload_content=False,
                            timeout=Timeout(connect=timeout_s, read=timeout_s))
    except MaxRetryError as exc:
        if isinstance(exc.reason, ResponseError):  # too many redirects
            raise DownloadFailed(f"{host}: {exc.reason}") from None
        raise CloudUnavailable(_reason(exc.reason or exc, host, timeout_s) + after) from None
    except HTTPError as exc:
        raise CloudUnavailable(_reason(exc, host, timeout_s)) from None


def _let_go(resp: urllib3.BaseHTTPResponse) -> None:
    """Close the connection (its body may be half read) and hand it back to the pool."""
    resp.close()
    resp.release_conn()


def fetch_json(url: str, policy: DownloadPolicy) -> Any:
    """GET ``url`` and parse its JSON body (at most ``MAX_JSON_BYTES``); errors as in the module docstring."""
    from urllib3.exceptions import HTTPError, ProtocolError  # lazy: urllib3

    host, shown, key = _check_url(url), redact(url), _key_in(url)
    pool = _pool()
    log.debug("GET %s", shown)
    try:
        resp = _open(pool, url, policy, _retry(policy), time.monotonic() + policy.deadline_s, host)
        try:
            if not 200 <= resp.status < 300:
                raise _refusal(resp, host, shown, key, api=True)
            length = resp.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > MAX_JSON_BYTES:
                raise DownloadFailed(f"{host} answered with {int(length)} bytes, more than an API answer "
                                     f"may have ({MAX_JSON_BYTES})")
            body = resp.read(MAX_JSON_BYTES + 1)
        except ProtocolError:
            raise DownloadFailed(f"{host}'s answer broke off (for {shown})",
                                 public=f"{host}'s answer broke off") from None
        except HTTPError as exc:
            raise CloudUnavailable(_reason(exc, host, policy.timeout_s)) from None
        finally:
            _let_go(resp)
    finally:
        pool.clear()
    if len(body) > MAX_JSON_BYTES:
        raise DownloadFailed(f"{host} answered with more than {MAX_JSON_BYTES} bytes for {shown}",
                             public=f"{host} answered with more than {MAX_JSON_BYTES} bytes")
    try:
        return json.loads(body)
    except ValueError:
        raise DownloadFailed(f"{host} answered with something that is not JSON ({len(body)} bytes) for {shown}",
                             public=f"{host} answered with something that is not JSON") from None


# -- files --------------------------------------------------------------------------------------


class _Broken(Exception):
    """A body that broke off: fetched again from the start while the retries last."""

    def __init__(self, error: EdgeAgentError) -> None:
        super().__init__(error.message)
        self.error = error


def _has_read1() -> bool:
    import urllib3  # lazy: urllib3

    major, minor = (int(p) for p in str(getattr(urllib3, "__version__", "1.0")).split(".")[:2])
    return (major, minor) >= (2, 1)


def _stream(resp: urllib3.BaseHTTPResponse, out: IO[bytes], policy: DownloadPolicy, host: str,
            deadline: float, progress: Progress | None) -> tuple[str, int]:
    """Copy the body into ``out`` while hashing; sizes, deadline and truncation checked."""
    from urllib3.exceptions import HTTPError, ProtocolError, ReadTimeoutError  # lazy: urllib3

    length = resp.headers.get("Content-Length")
    total = int(length) if length is not None and length.isdigit() else None
    if resp.headers.get("Content-Encoding", "identity").lower() != "identity":
        total = None  # the length counts encoded bytes; we count decoded ones
    if total is not None and total > policy.max_bytes:
        raise PayloadTooLarge(f"{host} offers {total} bytes, more than the {policy.max_bytes} bytes allowed "
                              "(models.max_download_bytes)")
    # read1 returns what one socket read brings, so the deadline is checked even on a trickle;
    # urllib3 < 2.1 has no read1 and fills each chunk first.
    read = resp.read1 if _has_read1() else resp.read
    digest, size, shown_at = hashlib.sha256(), 0, 0.0
    if progress is not None:
        progress(0, total)
    while True:
        if time.monotonic() > deadline:
            raise DownloadFailed(f"download from {host} did not finish within {policy.deadline_s:g} s")
        try:
            chunk = read(CHUNK)
        except ReadTimeoutError:
            raise _Broken(DownloadFailed(f"{host} stopped sending after {size} bytes "
                                         f"(nothing within {policy.timeout_s:g} s)")) from None
        except (ProtocolError, HTTPError, OSError) as exc:
            got = f"got {size} of {total} bytes" if total is not None else f"got {size} bytes"
            word = "truncated" if isinstance(exc, ProtocolError) else _reason(exc, host, policy.timeout_s)
            raise _Broken(DownloadFailed(f"download from {host} {word}: {got}")) from None
        if not chunk:
            break
        size += len(chunk)
        if size > policy.max_bytes:
            raise PayloadTooLarge(f"{host} sent more than the {policy.max_bytes} bytes allowed "
                                  "(models.max_download_bytes)")
        digest.update(chunk)
        out.write(chunk)
        if progress is not None and time.monotonic() - shown_at >= PROGRESS_INTERVAL_S:
            shown_at = time.monotonic()
            progress(size, total)
    if total is not None and size < total:
        raise _Broken(DownloadFailed(f"download from {host} truncated: got {size} of {total} bytes"))
    if progress is not None:
        progress(size, total)
    return digest.hexdigest(), size


def _fetch_into(url: str, out: IO[bytes], policy: DownloadPolicy, progress: Progress | None) -> tuple[str, int]:
    """The GET and the copy, again from the start while a broken body has retries left."""
    from urllib3.exceptions import MaxRetryError, ProtocolError  # lazy: urllib3

    host, shown, key = _check_url(url), redact(url), _key_in(url)
    deadline = time.monotonic() + policy.deadline_s
    retry = _retry(policy)
    pool = _pool()
    try:
        while True:
            resp = _open(pool, url, policy, retry, deadline, host)
            try:
                if resp.status != 200:
                    raise _refusal(resp, host, shown, key, api=False)
                return _stream(resp, out, policy, host, deadline, progress)
            except _Broken as broken:
                try:  # counts as a read error in the Retry that urllib3 handed back with the response
                    retry = (resp.retries or retry).increment("GET", shown, error=ProtocolError(broken.error.message))
                except MaxRetryError:
                    raise broken.error from None
                log.warning("%s; fetching %s again from the start", broken.error.message, shown)
                retry.sleep()
                out.seek(0)
                out.truncate()
            finally:
                _let_go(resp)
    finally:
        pool.clear()


def download(url: str, dest: Path, policy: DownloadPolicy, *, sha256: str | None = None,
             progress: Progress | None = None) -> tuple[str, int]:
    """Stream ``url`` into ``dest`` (atomically: a ``.part`` file beside it, fsync, rename).

    Returns (sha256 hex, size). On any failure ``dest`` is untouched and the ``.part`` file is gone.
    ``progress(bytes_so_far, total_or_None)`` is called a few times a second at most.
    """
    dest = Path(dest)
    shown = redact(url)
    _check_url(url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    part = Path(tmp)
    started = time.monotonic()
    log.info("downloading %s", shown)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                digest, size = _fetch_into(url, out, policy, progress)
                out.flush()
                os.fsync(out.fileno())
            except OSError as exc:
                raise DownloadFailed(f"could not write {part}: {exc.strerror}",
                                     public=f"could not write the download on this device: {exc.strerror}") from None
        if sha256 is not None and digest != sha256.lower():
            raise ChecksumMismatch(f"{shown}: the download's sha256 is {digest}, expected {sha256.lower()}",
                                   public=f"the downloaded file's sha256 is {digest}, expected {sha256.lower()}")
        os.replace(part, dest)
        fsync_dir(dest.parent)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    log.info("downloaded %s: %d bytes in %.1f s", shown, size, time.monotonic() - started)
    return digest, size
