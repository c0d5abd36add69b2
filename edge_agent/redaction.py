"""Hiding credentials in text fit to show: the one redactor of the project (``redact``, ``mask``).

Basics layer, standard library only, so that the settings (``Settings.public``), the console's log ring
and the downloads (``edge_agent.provisioning.download`` re-exports both functions) share it.
"""

from __future__ import annotations

import re
from urllib.parse import quote, quote_plus

# api_key, the signatures of the signed storage URLs the API hands out for the files, and passwords
API_KEY = re.compile(r"(?i)((?:api_key|signature|sig|x-amz-security-token|token|password|passwd|pwd|secret)=)"
                     r"([^&#\s'\"<>]*)")
_HIDDEN = ("pass", "pwd", "secret", "token")  # values hidden whole (api_key, signatures: 2+2 characters)
# user:password@ of a URL of any scheme, up to the last '@' before the query (a password may hold '@' or '/')
USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s'\"<>?#]*@")


def masked(value: str) -> str:
    """``value`` shown as Roboflow shows keys: its first and last two characters (``ab***yz``)."""
    return f"{value[:2]}***{value[-2:]}" if len(value) >= 8 else "***"


def _masked_value(match: re.Match[str]) -> str:
    key, value = match.group(1), match.group(2)
    if "***" in value:  # masked already
        return key + value
    return key + ("***" if any(word in key.lower() for word in _HIDDEN) else masked(value))


def redact(url: str | int) -> str:
    """``url`` (or any text: a log line, a video reference) fit to show.

    ``api_key=<value>`` is shown as Roboflow does (``api_key=ab***yz``), and so are signed-URL
    credentials (``X-Goog-Signature=``, ``Signature=``, Azure's ``sig=``); ``token=``, ``password=``,
    ``passwd=``, ``pwd=`` and ``secret=`` values become ``***``. The user and password of a URL of any
    scheme (``rtsp://user:p@ss/word@host``) become ``***@``: everything up to the last ``@`` before the
    query, so a password holding ``@`` or ``/`` is hidden whole.
    """
    url = USERINFO.sub(lambda m: m.group(1) + "***@", str(url))
    return API_KEY.sub(_masked_value, url)


def needs_redaction(text: str) -> bool:
    """Whether ``redact`` would change something in ``text`` (a cheap test before rewriting)."""
    return bool(API_KEY.search(text) or USERINFO.search(text))


def mask(text: str, api_key: str | None) -> str:
    """``text`` with ``api_key`` (plain or URL-encoded) masked wherever it appears, then ``redact``-ed."""
    if api_key:
        for form in sorted({api_key, quote(api_key, safe=""), quote_plus(api_key)}, key=len, reverse=True):
            text = text.replace(form, masked(api_key))
    return redact(text)
