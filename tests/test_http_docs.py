"""The interactive API docs the device serves itself: Swagger UI at /docs and ReDoc at /redoc.

Headless Chromium renders both pages from the running daemon with every host name but the device's
unresolvable, so a page that needs anything from the internet shows it. The device is reached by a
name (``edge-agent.test``, mapped to 127.0.0.1 inside Chromium) rather than by 127.0.0.1, as a browser
on the LAN would: Swagger UI behaves differently for localhost.

Screenshots of the rendered pages are written to the test's tmp folder, to ``<repo>/.test-artefacts/``
(not to be committed) and, when ``EDGE_AGENT_TEST_ARTEFACTS`` names a folder, there too (read at import:
the autouse ``clean_environ`` fixture removes EDGE_AGENT_* variables during tests).

The tests that need Chromium are skipped where it is not installed (CI installs it); the HTML and asset
checks use plain requests.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
import requests

from helpers import CHROMIUM, needs_chromium

REPO = Path(__file__).resolve().parent.parent
ARTEFACTS_ENV = os.environ.get("EDGE_AGENT_TEST_ARTEFACTS")
DEVICE_HOST = "edge-agent.test"
CHROMIUM_TIMEOUT = 60  # seconds of wall time per page; rendering takes 2-3 s
PAGES = ("/docs", "/redoc")


# ------------------------------------------------------------------------------------------- rendering


@dataclass
class Rendered:
    url: str
    origin: str  # as the browser saw it
    dom: str
    screenshot: Path
    requests: list[str]  # URLs the page itself asked for (the browser's own background traffic left out)


def _page_requests(net_log: Path, origin: str) -> list[str]:
    """URLs of the requests a page made: those whose initiator is the page's origin, plus the page itself."""
    log = json.loads(net_log.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in log["events"]:
        params = event.get("params") or {}
        if event.get("type") == start_job and "url" in params:
            if params.get("initiator") == origin or params["url"].startswith(origin + "/"):
                urls.append(params["url"])
    return urls


def _render(url: str, out: Path) -> Rendered:
    """Load ``url`` in headless Chromium with the network closed; its DOM, a screenshot, its requests."""
    assert CHROMIUM is not None
    out.mkdir(parents=True, exist_ok=True)
    name = urlsplit(url).path.strip("/") or "index"
    screenshot, net_log = out / f"{name}.png", out / f"{name}.netlog.json"
    port = urlsplit(url).port
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-default-apps", "--disable-extensions", "--hide-scrollbars", "--window-size=1280,2000",
        f"--user-data-dir={out / f'profile-{name}'}",
        # Only the device resolves (as DEVICE_HOST, or 127.0.0.1 itself); every other name fails.
        f"--host-resolver-rules=MAP {DEVICE_HOST} 127.0.0.1, MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--virtual-time-budget=20000",  # virtual ms for scripts and fetches to settle; real time is ~2 s
        f"--log-net-log={net_log}",
        f"--screenshot={screenshot}",
        "--dump-dom",
        url.replace("127.0.0.1", DEVICE_HOST) if port else url,
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=CHROMIUM_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"Chromium did not finish rendering {url} in {CHROMIUM_TIMEOUT} s: {exc.stderr!r}")
    stderr = done.stderr.decode(errors="replace")
    assert done.returncode == 0, f"Chromium exited with {done.returncode}:\n{stderr[-3000:]}"
    dom = done.stdout.decode(errors="replace")
    assert screenshot.exists(), f"no screenshot written:\n{stderr[-3000:]}"
    origin = f"http://{DEVICE_HOST}:{port}"
    rendered = Rendered(url, origin, dom, screenshot, _page_requests(net_log, origin))
    _keep_artefact(screenshot)
    (out / f"{name}.html").write_text(dom)
    return rendered


def _keep_artefact(path: Path) -> None:
    for folder in filter(None, (str(REPO / ".test-artefacts"), ARTEFACTS_ENV)):
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, Path(folder) / f"http-docs-{path.name}")
        except OSError as exc:  # an artefact copy is a convenience, never a test failure
            print(f"cannot copy {path} to {folder}: {exc}")


@pytest.fixture(scope="module")
def rendered(http_server: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Rendered]:
    """The pages as Chromium rendered them (every test that asks for this is marked needs_chromium)."""
    out = tmp_path_factory.mktemp("http-docs")
    return {page: _render(http_server.url + page, out) for page in PAGES}


@pytest.fixture(scope="module")
def document(http_server: Any) -> dict[str, Any]:
    r = requests.get(http_server.url + "/openapi.json", timeout=30)
    assert r.status_code == 200
    return r.json()  # type: ignore[no-any-return]


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, op) for path, item in document["paths"].items() for method, op in item.items()]


# ----------------------------------------------------------------------------------------------- Swagger UI


@needs_chromium
def test_swagger_ui_renders_every_operation(rendered: dict[str, Rendered], document: dict[str, Any]) -> None:
    dom = rendered["/docs"].dom
    assert re.search(r'class="title">\s*edge-agent', dom), "Swagger UI shows no 'edge-agent' title"
    assert "errors-wrapper" not in dom, "Swagger UI reports errors in the document"
    shown = set()
    for block in dom.split('class="opblock opblock-')[1:]:
        method = block.split()[0].split('"')[0].upper()
        path = re.search(r'data-path="([^"]+)"', block)
        assert path, f"an operation block without a path: {block[:300]}"
        shown.add((method, html.unescape(path.group(1))))
    expected = {(method, path) for method, path, _ in _operations(document)}
    assert ("POST", "/infer/object_detection") in shown
    assert shown == expected
    for tag in document["tags"]:
        assert f'data-tag="{html.escape(tag["name"])}"' in dom


# ---------------------------------------------------------------------------------------------------- ReDoc


@needs_chromium
def test_redoc_renders_every_operation(rendered: dict[str, Rendered], document: dict[str, Any]) -> None:
    dom = rendered["/redoc"].dom
    text = html.unescape(dom)
    assert re.search(r"<h1[^>]*>\s*edge-agent", dom), "ReDoc shows no 'edge-agent' title"
    assert document["info"]["description"] in text
    assert "Something went wrong" not in text
    for method, path, op in _operations(document):
        assert f'id="operation/{op["operationId"]}"' in dom, f"{method} {path} is not in ReDoc"
        assert op["summary"] in text, f"ReDoc does not show the summary of {method} {path}"


# -------------------------------------------------------------------------------------------- both pages


@needs_chromium
@pytest.mark.parametrize("page", PAGES)
def test_screenshot_is_a_real_picture(rendered: dict[str, Rendered], page: str) -> None:
    data = rendered[page].screenshot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # IHDR
    assert (width, height) == (1280, 2000)
    assert len(data) > 10_000, f"{len(data)} bytes: an empty page?"


@needs_chromium
@pytest.mark.parametrize("page", [
    "/docs",
    "/redoc",
])
def test_page_requests_nothing_off_the_device(rendered: dict[str, Rendered], page: str) -> None:
    asked = rendered[page].requests
    assert any(u.endswith("/openapi.json") for u in asked), f"the page never fetched the document: {asked}"
    assert any(u.endswith(".js") for u in asked), f"no script loaded: {asked}"
    origin = rendered[page].origin
    assert [u for u in asked if not u.startswith(origin + "/")] == []


# ------------------------------------------------------------------------------- the HTML and its assets


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str]] = []  # (tag, url)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        url = a.get("src") if tag in ("script", "img", "iframe") else a.get("href") if tag == "link" else None
        if url and url.strip():
            self.urls.append((tag, url.strip()))


def _assets(page_html: str) -> list[tuple[str, str]]:
    parser = _Assets()
    parser.feed(page_html)
    return parser.urls


@pytest.mark.parametrize("page", ["/docs", "/redoc", "/swagger", "/"])
def test_html_uses_only_assets_from_the_device(http_server: Any, page: str) -> None:
    url = http_server.url + page
    r = requests.get(url, timeout=30)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/html")
    assets = _assets(r.text)
    if page in ("/docs", "/redoc", "/swagger"):
        assert any(tag == "script" for tag, _ in assets), f"{page} loads no script: {assets}"
    for tag, ref in assets:
        if ref.startswith("data:"):
            continue
        assert not re.match(r"^([a-z][a-z0-9+.-]*:)?//", ref, re.I), f"{page}: <{tag}> {ref} is not on the device"
        absolute = urljoin(url, ref)
        asset = requests.get(absolute, timeout=30)
        assert asset.status_code == 200, f"{page}: <{tag}> {ref} -> {absolute} answered {asset.status_code}"
        assert len(asset.content) > 0
        kind = asset.headers.get("Content-Type", "")
        if tag == "script":
            assert "javascript" in kind, f"{absolute}: {kind}"
        if tag == "link" and ref.endswith(".css"):
            assert kind.startswith("text/css"), f"{absolute}: {kind}"
    # No inline script reaches out either.
    for script in re.findall(r"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", r.text, re.S | re.I):
        assert not re.search(r"https?://", script), f"{page}: an inline script names an absolute URL"


def test_landing_page_is_the_console_and_the_docs_stay(http_server: Any) -> None:
    r = requests.get(http_server.url + "/", timeout=30)
    assert r.status_code == 200
    assert 'src="console.js"' in r.text and 'href="docs"' in r.text  # the console, linking the API docs
    for ui in ("docs", "redoc"):
        page = requests.get(f"{http_server.url}/{ui}", timeout=30)
        assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
