"""The device console at ``/`` (issue 20), driven in headless Chromium over the DevTools protocol.

A real daemon (with an API key) serves the page; Chromium (every host name but 127.0.0.1 unresolvable)
opens every page at desktop and phone width, runs a model on an image from the "try it" form for each
task, starts a pipeline on a generated video and watches preview frames arrive, uploads a second version
of a model through the upload form and rolls it back. Any console error, uncaught exception, failed
request or HTTP error the test did not expect fails the test. Screenshots go to the test's tmp folder,
to ``<repo>/.test-artefacts/`` (not committed) and to ``EDGE_AGENT_TEST_ARTEFACTS`` when set (read at
import: the autouse ``clean_environ`` fixture removes EDGE_AGENT_* variables during tests).

The DevTools client is aiohttp's websocket client (installed with inference-sdk's requirements). The
JSON routes of the console and its key handling are checked with plain requests.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from edge_agent.logring import LogRing, installed
from helpers import CHROMIUM, circle_video, needs_chromium, wait
from servers import Server, running_server

REPO = Path(__file__).resolve().parent.parent
ARTEFACTS_ENV = os.environ.get("EDGE_AGENT_TEST_ARTEFACTS")
DEMO = REPO / "edge_agent" / "demo" / "store"
SAMPLE = REPO / "edge_agent" / "demo" / "sample.jpg"
KEY = "console-key-0123"
AUTH = {"Authorization": f"Bearer {KEY}"}
PAGES = {"overview": "#ov-device dt", "models": "#models-table tbody tr", "pipelines": "#pipelines-table tbody tr",
         "config": "#cfg-settings details"}
WIDTHS = {"desktop": (1280, 900), "phone": (375, 812)}
WAIT_S = 30.0  # a page that has not shown what it should by then is broken, not slow


# ------------------------------------------------------------------------------------ the daemon


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    settings = {"api_key": KEY, "preload_models": "shapes/1"}
    with running_server(tmp_path_factory.mktemp("console-state"), settings) as found:
        yield found


# ---------------------------------------------------------------------------- Chromium and DevTools


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """Headless Chromium with its DevTools port (its own profile, no network but the loopback)."""
    assert CHROMIUM is not None
    profile = tmp_path_factory.mktemp("chromium-profile")
    proc = subprocess.Popen([
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--remote-debugging-port=0",
        f"--user-data-dir={profile}", "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + WAIT_S
        while not (port_file.exists() and port_file.read_text().strip()):
            assert proc.poll() is None, f"Chromium exited with {proc.returncode}"
            assert time.monotonic() < deadline, "Chromium never opened its DevTools port"
            time.sleep(0.05)
        yield int(port_file.read_text().split()[0])
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Tab:
    """One page over the DevTools protocol: commands, JavaScript, and what went wrong on the page."""

    def __init__(self, ws: Any, allowed: tuple[str, ...]) -> None:
        self.ws = ws
        self.allowed = allowed  # regular expressions of problems this test expects (an asked-for 422)
        self.problems: list[str] = []
        self.dialogs: list[str] = []  # the messages of confirm()/alert() dialogs, answered with accept_dialogs
        self.accept_dialogs = True
        self._next = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            data = json.loads(message.data)
            if "id" in data:
                future = self._waiting.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
            else:
                self._event(data["method"], data.get("params", {}))

    def _event(self, method: str, p: dict[str, Any]) -> None:
        found = None
        if method == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            found = f"exception: {d.get('exception', {}).get('description') or d.get('text')}"
        elif method == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
            found = f"console.{p['type']}: {[a.get('value', a.get('description')) for a in p['args']]}"
        elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
            found = f"log: {p['entry']['text']} {p['entry'].get('url', '')}"
        elif method == "Network.loadingFailed" and not p.get("canceled"):
            found = f"request failed: {p.get('errorText')} ({p.get('type')})"
        elif method == "Page.javascriptDialogOpening":
            self.dialogs.append(p["message"])
            asyncio.ensure_future(self.send("Page.handleJavaScriptDialog", accept=self.accept_dialogs))
        elif method == "Network.responseReceived" and p["response"]["status"] >= 400:
            found = f"HTTP {p['response']['status']} {p['response']['url']}"
        if found and not any(re.search(a, found) for a in self.allowed):
            self.problems.append(found)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        self._next += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[self._next] = future
        await self.ws.send_json({"id": self._next, "method": method, "params": params})
        answer = await asyncio.wait_for(future, WAIT_S)
        assert "error" not in answer, f"{method}: {answer['error']}"
        return answer["result"]  # type: ignore[no-any-return]

    async def js(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        assert "exceptionDetails" not in result, f"{expression}: {result['exceptionDetails']}"
        return result["result"].get("value")

    async def until(self, expression: str, what: str) -> Any:
        """The value of ``expression`` once it is truthy; fails the test after WAIT_S."""
        deadline = time.monotonic() + WAIT_S
        while True:
            value = await self.js(f"((v) => v instanceof Node ? true : v)({expression})")  # a node: found
            if value:
                return value
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: not seen in {WAIT_S:.0f} s; problems on the page: {self.problems}")
            await asyncio.sleep(0.1)

    async def open(self, url: str, size: tuple[int, int] = WIDTHS["desktop"]) -> None:
        width, height = size
        await self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                        mobile=width < 600)
        await self.send("Page.navigate", url=url)
        await self.until("document.readyState === 'complete' && typeof show === 'function'", f"{url} loaded")

    async def choose_file(self, selector: str, path: Path) -> None:
        root = await self.send("DOM.getDocument")
        node = await self.send("DOM.querySelector", nodeId=root["root"]["nodeId"], selector=selector)
        await self.send("DOM.setFileInputFiles", nodeId=node["nodeId"], files=[str(path)])

    async def screenshot(self, out: Path, name: str) -> Path:
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path = out / f"console-{name}.png"
        path.write_bytes(base64.b64decode(shot["data"]))
        _keep_artefact(path)
        return path


def _keep_artefact(path: Path) -> None:
    for folder in filter(None, (str(REPO / ".test-artefacts"), ARTEFACTS_ENV)):
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, Path(folder) / path.name)
        except OSError as exc:  # an artefact copy is a convenience, never a test failure
            print(f"cannot copy {path} to {folder}: {exc}")


def drive(port: int, scenario: Callable[[Tab], Awaitable[None]], key: str | None = KEY,
          allowed: tuple[str, ...] = ()) -> list[str]:
    """Run ``scenario`` in a new tab (the API key already in its sessionStorage unless ``key`` is None);
    the problems the page had."""
    import aiohttp  # lazy: only the browser tests need it

    async def main() -> list[str]:
        target = requests.put(f"http://127.0.0.1:{port}/json/new?about:blank", timeout=WAIT_S).json()
        try:
            async with aiohttp.ClientSession() as session, \
                    session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                tab = Tab(ws, allowed)
                for domain in ("Page", "Runtime", "Log", "Network", "DOM"):
                    await tab.send(f"{domain}.enable")
                if key is not None:
                    await tab.send("Page.addScriptToEvaluateOnNewDocument",
                                   source=f"sessionStorage.setItem('edge-agent-api-key', {json.dumps(key)});")
                try:
                    await scenario(tab)
                finally:
                    tab._reader.cancel()
                return tab.problems
        finally:
            requests.get(f"http://127.0.0.1:{port}/json/close/{target['id']}", timeout=WAIT_S)

    return asyncio.run(main())


# ------------------------------------------------------------------------------------------- pages


@needs_chromium
@pytest.mark.parametrize("width", list(WIDTHS))
def test_every_page_opens_without_errors(server: Server, browser: int, width: str, tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    async def scenario(tab: Tab) -> None:
        await tab.open(server.url + "/", WIDTHS[width])
        for page, ready in PAGES.items():
            await tab.js(f"location.hash = '#{page}'")
            await tab.until(f"!document.querySelector('[data-page={page}]').hidden && "
                            f"document.querySelector({json.dumps(ready)})", f"the {page} page")
            seen[page] = await tab.js(
                "({overflow: document.documentElement.scrollWidth - innerWidth, "
                " current: document.querySelector('nav a[aria-current=page]').textContent, "
                " unlabelled: [...document.querySelectorAll('[data-page]:not([hidden]) input, "
                "[data-page]:not([hidden]) select, [data-page]:not([hidden]) textarea')]"
                "   .filter(e => !e.labels || !e.labels.length).map(e => e.id)})")
            await tab.screenshot(tmp_path, f"{page}-{width}")

    problems = drive(browser, scenario)
    assert problems == []
    for page, found in seen.items():
        assert found["overflow"] <= 0, f"{page} is wider than the {width} screen by {found['overflow']} px"
        assert found["current"].lower().startswith(page[:6]), found
        assert found["unlabelled"] == [], f"{page}: fields without a label: {found['unlabelled']}"


@needs_chromium
def test_overview_shows_the_device(server: Server, browser: int) -> None:
    shown: dict[str, str] = {}

    async def scenario(tab: Tab) -> None:
        await tab.open(server.url + "/#overview")
        await tab.until("document.querySelector('#ov-device dd')", "the device card")
        for card in ("ov-device", "ov-system", "ov-mqtt", "ov-al", "ov-log"):
            shown[card] = await tab.js(f"document.getElementById('{card}').textContent")
        shown["warning"] = await tab.js("String(document.getElementById('open-warning').hidden)")

    assert drive(browser, scenario) == []
    assert "onnxruntime" in shown["ov-device"] and "ready" in shown["ov-device"]
    assert "Memory" in shown["ov-system"] and "CPU" in shown["ov-system"]
    assert shown["ov-mqtt"] == "Stateoff" and shown["ov-al"] == "Stateoff"
    assert shown["warning"] == "true", "a device with a key must not be called open"


@needs_chromium
def test_config_page_shows_where_each_value_came_from(server: Server, browser: int) -> None:
    rows: dict[str, list[str]] = {}

    async def scenario(tab: Tab) -> None:
        await tab.open(server.url + "/#config")
        await tab.until("document.querySelector('#cfg-settings details')", "the settings")
        found = await tab.js("JSON.stringify([...document.querySelectorAll('#cfg-settings tr')].map("
                             "(tr) => [...tr.children].map((c) => c.textContent)))")
        for cells in json.loads(found):
            rows.setdefault(cells[0], cells)

    assert drive(browser, scenario) == []
    assert rows["Key"] == ["Key", "Value", "From"]
    assert rows["api_key"] == ["api_key", "***", "environment variable EDGE_AGENT_SERVER__API_KEY"]
    assert rows["threads"][2] == "default"


@needs_chromium
def test_keyboard_reaches_the_navigation_with_a_visible_focus(server: Server, browser: int) -> None:
    focus: dict[str, Any] = {}

    async def scenario(tab: Tab) -> None:
        await tab.open(server.url + "/")
        for _ in range(2):
            await tab.send("Input.dispatchKeyEvent", type="keyDown", key="Tab", code="Tab", windowsVirtualKeyCode=9)
            await tab.send("Input.dispatchKeyEvent", type="keyUp", key="Tab", code="Tab", windowsVirtualKeyCode=9)
        focus.update(await tab.js("({text: document.activeElement.textContent, "
                                  "outline: getComputedStyle(document.activeElement).outlineStyle})"))
        await tab.send("Input.dispatchKeyEvent", type="keyDown", key="Enter", code="Enter", windowsVirtualKeyCode=13)
        await tab.send("Input.dispatchKeyEvent", type="keyUp", key="Enter", code="Enter", windowsVirtualKeyCode=13)
        focus["hash"] = await tab.until("location.hash === '#models' && location.hash", "Enter follows the link")

    assert drive(browser, scenario) == []
    assert focus["text"] == "Models" and focus["outline"] != "none"


@needs_chromium
def test_the_key_is_asked_once_and_kept_for_the_tab(server: Server, browser: int) -> None:
    async def scenario(tab: Tab) -> None:
        await tab.open(server.url + "/")
        await tab.until("!document.getElementById('key-form').hidden", "the key form")
        await tab.js(f"document.getElementById('key-input').value = {json.dumps(KEY)}")
        await tab.js("document.querySelector('#key-form button').click()")
        await tab.until("document.querySelector('#ov-device dd')", "the overview once the key is given")
        await tab.send("Page.reload")
        await tab.until("document.readyState === 'complete' && document.querySelector('#ov-device dd')",
                        "the overview after a reload")
        assert await tab.js("document.getElementById('key-form').hidden")

    # the one call made before the key was known answers 401
    assert drive(browser, scenario, key=None, allowed=(r"401",)) == []


@needs_chromium
def test_an_open_device_says_so(http_server: Server, browser: int) -> None:
    async def scenario(tab: Tab) -> None:
        await tab.open(http_server.url + "/")
        await tab.until("!document.getElementById('open-warning').hidden", "the open-device warning")

    assert drive(browser, scenario, key=None) == []


# ------------------------------------------------------------------------------------------ models


@needs_chromium
@pytest.mark.parametrize("model_id, key", [("shapes/1", "predictions"), ("shapes-seg/1", "predictions"),
                                           ("shapes-pose/1", "predictions"), ("shapes-cls/1", "top")])
def test_try_it_draws_the_result(server: Server, browser: int, model_id: str, key: str, tmp_path: Path) -> None:
    result: dict[str, Any] = {}

    async def scenario(tab: Tab) -> None:
        await tab.open(server.url + "/#models")
        await tab.until(f"[...document.querySelectorAll('#try-model option')].some(o => o.value === '{model_id}')",
                        "the models in the try-it form")
        await tab.js(f"document.getElementById('try-model').value = '{model_id}'; "
                     "const c = document.getElementById('try-conf'); c.value = 30; "
                     "c.dispatchEvent(new Event('input'))")
        await tab.choose_file("#try-file", SAMPLE)
        await tab.js("document.querySelector('#try-form button[type=submit]').click()")
        await tab.until("!document.getElementById('try-image').hidden && "
                        "document.getElementById('try-image').naturalWidth > 0", "the drawn image")
        result["json"] = json.loads(await tab.js("document.getElementById('try-json').textContent"))
        result["shown"] = await tab.js("document.getElementById('try-conf-value').textContent")
        await tab.screenshot(tmp_path, f"try-{model_id.replace('/', '-')}")

    assert drive(browser, scenario) == []
    assert key in result["json"] and result["json"]["image"]["width"] > 0
    assert result["shown"] == "30"


def _variant(path: Path, note: str) -> bytes:
    """The same network with one more metadata entry: other bytes and sha256, the same predictions."""
    import onnx  # lazy: only this test builds models

    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = "edge_agent_test", note
    return bytes(model.SerializeToString())


@needs_chromium
def test_upload_with_progress_then_roll_back(server: Server, browser: int, tmp_path: Path) -> None:
    first = _variant(DEMO / "shapes/1/model.onnx", "first")
    r = requests.put(f"{server.url}/models/console/1", data=first, headers=AUTH, timeout=120)
    assert r.status_code == 200, r.text
    second = tmp_path / "second.onnx"
    second.write_bytes(_variant(DEMO / "shapes/1/model.onnx", "second"))
    seen: dict[str, Any] = {}

    async def scenario(tab: Tab) -> None:
        await tab.open(server.url + "/#models")
        await tab.until("document.querySelector('#models-table tbody tr')", "the model list")
        await tab.js("document.getElementById('up-model').value = 'console/1'")
        await tab.choose_file("#up-file", second)
        await tab.js("document.querySelector('#upload-form button[type=submit]').click()")
        seen["upload"] = await tab.until("/^(Verdict|Refused)/.test(document.getElementById('up-result').textContent)"
                                         " && document.getElementById('up-result').textContent", "the verdict")
        seen["progress"] = await tab.js("document.getElementById('up-progress').value")
        button = "document.querySelector('button[aria-label=\"Roll back console/1\"]')"
        await tab.until(button, "the roll-back button")
        await tab.screenshot(tmp_path, "models-upload")
        await tab.js(f"{button}.click()")
        seen["rollback"] = await tab.until(
            "/serving|refused|failed/.test(document.getElementById('models-result').textContent) && "
            "document.getElementById('models-result').textContent", "the rollback result")

    assert drive(browser, scenario) == []
    assert seen["upload"].startswith("Verdict: passed"), seen["upload"]
    assert seen["progress"] == 100
    assert seen["rollback"].startswith(f"console/1: serving {_sha(first)[:12]}"), seen["rollback"]
    described = requests.get(f"{server.url}/models/console/1", headers=AUTH, timeout=30).json()
    assert described["sha256"] == _sha(first)


@needs_chromium
def test_remove_a_model_after_confirming(server: Server, browser: int, tmp_path: Path) -> None:
    r = requests.put(f"{server.url}/models/doomed/1", data=(DEMO / "shapes/1/model.onnx").read_bytes(),
                     headers=AUTH, timeout=120)
    assert r.status_code == 200, r.text
    button = "document.querySelector('button[aria-label=\"Remove doomed/1\"]')"
    seen: dict[str, Any] = {}

    async def scenario(tab: Tab) -> None:
        await tab.open(server.url + "/#models")
        await tab.until(button, "the remove button")
        seen["builtin"] = await tab.js("!!document.querySelector('button[aria-label=\"Remove shapes/1\"]')")
        tab.accept_dialogs = False  # "Cancel": nothing is removed
        await tab.js(f"setTimeout(() => {button}.click(), 0); true")  # the dialog would hold up the evaluate
        deadline = time.monotonic() + WAIT_S
        while not tab.dialogs:
            assert time.monotonic() < deadline, "no confirm() dialog"
            await asyncio.sleep(0.05)
        seen["kept"] = requests.get(f"{server.url}/models/doomed/1", headers=AUTH, timeout=30).status_code
        tab.accept_dialogs = True
        await tab.js(f"setTimeout(() => {button}.click(), 0); true")
        seen["result"] = await tab.until("/removed|doomed\\/1:/.test(document.getElementById('models-result')"
                                         ".textContent) && document.getElementById('models-result').textContent",
                                         "the removal result")
        seen["row"] = await tab.until(f"!{button} && document.querySelector('#models-table tbody tr') && "
                                      "document.getElementById('models-table').textContent", "the refreshed list")
        seen["dialogs"] = list(tab.dialogs)

    assert drive(browser, scenario) == []
    assert len(seen["dialogs"]) == 2 and "doomed/1" in seen["dialogs"][0], seen["dialogs"]
    assert seen["builtin"] is False  # built-in demo models have no Remove button
    assert seen["kept"] == 200  # dismissed: still there
    assert seen["result"] == "doomed/1 removed from the store", seen["result"]
    assert "doomed/1" not in seen["row"] and "shapes/1" in seen["row"]
    assert requests.get(f"{server.url}/models/doomed/1", headers=AUTH, timeout=30).status_code == 404


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------- pipelines


@needs_chromium
def test_start_a_pipeline_see_its_preview_pause_and_terminate(server: Server, browser: int, tmp_path: Path) -> None:
    video = tmp_path / "circle.mp4"
    circle_video(video, frames=300, fps=10.0)  # 30 s at its own pace: long enough to watch
    seen: dict[str, Any] = {}

    async def scenario(tab: Tab) -> None:
        await tab.open(server.url + "/#pipelines")
        await tab.until("[...document.querySelectorAll('#pl-model_id option')].some(o => o.value === 'shapes/1')",
                        "the models in the pipeline form")
        form = "document.getElementById('pipeline-form')"
        # A value out of range: the 422 shows beside the field it names.
        await tab.js(f"{form}.elements.model_id.value = 'shapes/1'; "
                     f"{form}.elements.video_reference.value = {json.dumps(str(video))}; "
                     f"{form}.elements.confidence.value = '5'; {form}.elements.realtime.checked = true; "
                     f"{form}.elements.pipeline_id.value = 'console-test'")
        await tab.js(f"{form}.querySelector('button[type=submit]').click()")
        seen["error"] = await tab.until("document.querySelector('[data-error-for=confidence]').textContent",
                                        "the error beside the confidence field")
        seen["focused"] = await tab.js("document.activeElement.id")
        await tab.js(f"{form}.elements.confidence.value = '0.4'")
        await tab.js(f"{form}.querySelector('button[type=submit]').click()")
        await tab.until("document.getElementById('preview').naturalWidth > 0", "a preview frame")
        await tab.until("/running/.test(document.getElementById('pipelines-table').textContent)", "running")
        await tab.screenshot(tmp_path, "pipelines-preview")
        await tab.js("document.querySelector('button[aria-label=\"pause console-test\"]').click()")
        await tab.until("/paused/.test(document.getElementById('pipelines-table').textContent)", "paused")
        await tab.js("document.querySelector('button[aria-label=\"resume console-test\"]').click()")
        await tab.until("/running/.test(document.getElementById('pipelines-table').textContent)", "running again")
        await tab.js("document.querySelector('button[aria-label=\"terminate console-test\"]').click()")
        await tab.until("!/console-test/.test(document.getElementById('pipelines-table').textContent)",
                        "the pipeline gone")
        seen["preview_hidden"] = await tab.js("document.getElementById('preview-box').hidden")

    assert drive(browser, scenario, allowed=(r"\b422\b",)) == []
    assert "less than or equal to 1" in seen["error"], seen["error"]
    assert seen["focused"] == "pl-confidence"
    assert seen["preview_hidden"] is True


# ----------------------------------------------------------------------- the console's own routes


@pytest.mark.parametrize("method, path", [("GET", "/console/status"), ("GET", "/console/config"),
                                          ("POST", "/console/config/check")])
def test_console_routes_need_the_key(server: Server, method: str, path: str) -> None:
    body = b"[server]\nport = 9002\n" if method == "POST" else None
    assert requests.request(method, server.url + path, data=body, timeout=30).status_code == 401
    assert requests.request(method, server.url + path, data=body, params={"api_key": "wrong"},
                            timeout=30).status_code == 401
    r = requests.request(method, server.url + path, data=body, headers=AUTH, timeout=30)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize("path, budget", [("/", 20_000), ("/console.js", 60_000), ("/console.css", 10_000)])
def test_the_page_and_its_files_are_open_and_small(server: Server, path: str, budget: int) -> None:
    r = requests.get(server.url + path, timeout=30)
    assert r.status_code == 200
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert len(r.content) < budget, f"{path} weighs {len(r.content)} bytes served (budget {budget})"


def test_the_page_forbids_outside_scripts_and_framing(server: Server) -> None:
    csp = requests.get(server.url + "/", timeout=30).headers["Content-Security-Policy"]
    assert "script-src 'self';" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp


def test_no_other_site_may_call_the_console_routes(server: Server) -> None:
    r = requests.options(server.url + "/console/status", timeout=30, headers={
        "Origin": "http://elsewhere.example", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization"})
    assert "Access-Control-Allow-Origin" not in r.headers


def test_status_shows_the_daemons_recent_errors(server: Server) -> None:
    # A pipeline on a missing file fails in the daemon, which logs it at ERROR: the ring shows it.
    r = requests.post(server.url + "/inference_pipelines/initialise", headers=AUTH, timeout=30,
                      json={"model_id": "shapes/1", "video_reference": "no-such-video.mp4", "pipeline_id": "gone"})
    assert r.status_code == 200, r.text
    try:
        def logged() -> list[dict[str, Any]]:
            status = requests.get(server.url + "/console/status", headers=AUTH, timeout=30).json()
            return [e for e in status["log"]["recent"] if "pipeline gone failed" in e["message"]]

        wait(logged)
        assert logged()[0]["level"] == "ERROR" and logged()[0]["logger"] == "edge_agent.pipelines.pipeline"
    finally:
        requests.post(server.url + "/inference_pipelines/gone/terminate", headers=AUTH, timeout=30)
    status = requests.get(server.url + "/console/status", headers=AUTH, timeout=30).json()
    assert {"version", "uptime_s", "engine_choice", "engines", "system", "mqtt", "active_learning",
            "pipelines", "api_key_set", "building"} <= status.keys()
    assert status["api_key_set"] is True and status["log"]["kept"] is True


@pytest.mark.parametrize("level, kept", [(logging.INFO, False), (logging.WARNING, True), (logging.ERROR, True)])
def test_the_ring_keeps_warnings_and_up_and_only_the_last(level: int, kept: bool) -> None:
    ring = LogRing(size=3)
    logger = logging.getLogger(f"test-console-ring-{level}")
    logger.propagate, logger.level = False, logging.DEBUG
    assert installed(logger) is None
    logger.addHandler(ring)
    try:
        assert installed(logger) is ring
        for i in range(5):
            logger.log(level, "message %d", i)
    finally:
        logger.removeHandler(ring)
    assert [e["message"] for e in ring.recent()] == (["message 2", "message 3", "message 4"] if kept else [])
    assert ring.total == (5 if kept else 0)
    assert installed(logger) is None


def test_the_ring_keeps_messages_without_credentials() -> None:
    ring = LogRing()
    logger = logging.getLogger("test-console-ring-redacted")
    logger.propagate = False
    logger.addHandler(ring)
    try:
        logger.error("camera %s lost", "rtsp://cam:campass77@10.0.0.9/stream")
        logger.warning("GET https://api.example/x?api_key=abcdefgh1234&token=tok-secret-9 failed")
        try:
            raise OSError("cannot open http://user:pw-secret-3@host/a?password=pw-secret-4")
        except OSError:
            logger.exception("upload failed")
    finally:
        logger.removeHandler(ring)
    text = json.dumps(ring.recent())
    for secret in ("campass77", "abcdefgh1234", "tok-secret-9", "pw-secret-3", "pw-secret-4"):
        assert secret not in text, text
    assert "rtsp://***@10.0.0.9/stream" in text and "api_key=ab***34" in text


@pytest.mark.parametrize("text, ok, line, words", [
    ("[server]\nport = 9002\n", True, None, ""),
    ("[server]\nport = 9002\nthreads = 'many'\n", False, 3, "server.threads"),
    ("[mqtt]\nenabled = true\nbogus = 1\n", False, 3, "unknown key 'mqtt.bogus'"),
    ("[server\nport = 1\n", False, 1, "not valid TOML"),
    ("[nosuch]\n", False, 1, "unknown section"),
])
def test_config_check(server: Server, text: str, ok: bool, line: int | None, words: str) -> None:
    r = requests.post(server.url + "/console/config/check", data=text.encode(), headers=AUTH, timeout=30)
    assert r.status_code == 200
    body = r.json()
    assert (body["ok"], body["line"]) == (ok, line), body
    assert words in (body["error"] or "")
    assert "/tmp" not in (body["error"] or ""), "the error names a temporary file"


SECRETS = ("campass77", "apipass99", "uploadpass55", "uploadkey5566", "mqtt-secret-pw-7", "models-secret-key-42",
           "upload-api-key-8", KEY)
SECRET_CONFIG = f"""[server]
api_key = "{KEY}"

[models]
api_key = "models-secret-key-42"
api_url = "https://apiuser:apipass99@api.example.test"
offline = true

[mqtt]
username = "device"
password = "mqtt-secret-pw-7"

[active_learning]
http_base_url = "https://uploader:uploadpass55@upload.example.test/x?api_key=uploadkey5566"
http_api_key = "upload-api-key-8"

[[pipelines.streams]]
model_id = "shapes/1"
video_reference = ["rtsp://cam:campass77@127.0.0.1:1/stream", "rtsp://127.0.0.1:1/other"]
pipeline_id = "cam"
"""


@pytest.fixture(scope="module")
def secret_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A daemon configured from a file holding every kind of secret, with a temporary folder of its own."""
    folder = tmp_path_factory.mktemp("console-secrets")
    (folder / "tmp").mkdir()
    (folder / "edge-agent.toml").write_text(SECRET_CONFIG)
    env = {"EDGE_AGENT_CONFIG": str(folder / "edge-agent.toml"), "TMPDIR": str(folder / "tmp")}
    with running_server(folder / "state", env_extra=env) as found:
        yield found


def test_config_shows_settings_with_secrets_masked(secret_server: Server) -> None:
    body = requests.get(secret_server.url + "/console/config", headers=AUTH, timeout=30).json()
    settings = body["settings"]
    assert settings["server"]["api_key"] == settings["mqtt"]["password"] == settings["models"]["api_key"] == "***"
    assert settings["active_learning"]["http_api_key"] == "***"
    assert settings["pipelines"]["streams"][0]["video_reference"] == [
        "rtsp://***@127.0.0.1:1/stream", "rtsp://127.0.0.1:1/other"]
    assert settings["models"]["api_url"] == "https://***@api.example.test"
    assert settings["active_learning"]["http_base_url"] == "https://***@upload.example.test/x?api_key=up***66"
    text = json.dumps(body)
    assert [s for s in SECRETS if s in text] == []
    status = requests.get(secret_server.url + "/console/status", headers=AUTH, timeout=30).text
    assert [s for s in SECRETS if s in status] == []


def test_config_says_where_each_value_came_from(secret_server: Server) -> None:
    body = requests.get(secret_server.url + "/console/config", headers=AUTH, timeout=30).json()
    sources, file = body["sources"], body["config_file"]
    assert sources["server.api_key"] == f"{file} line 2"
    assert sources["mqtt.password"] == f"{file} line 11"
    assert sources["pipelines.streams"] == f"{file} line 17"
    assert sources["engine.intra_op_threads"] == "environment variable EDGE_AGENT_ENGINE__INTRA_OP_THREADS"
    assert sources["server.threads"] == "default"
    assert sources["server.port"] == "command-line flag for server.port"
    assert set(sources) == {f"{section}.{key}" for section, values in body["settings"].items()
                            if isinstance(values, dict) for key in values}


@pytest.mark.parametrize("path", ["/etc/passwd", "/no/such/file.pem"])
def test_config_check_does_not_tell_which_files_exist(secret_server: Server, path: str) -> None:
    text = f'[mqtt]\ntls_ca_file = "{path}"\n'
    r = requests.post(secret_server.url + "/console/config/check", data=text.encode(), headers=AUTH, timeout=30)
    assert r.status_code == 200 and r.json() == {"ok": True, "error": None, "line": None}
    left = list((secret_server.state_dir.parent / "tmp").glob("edge-agent-check.*"))
    assert left == [], "the check left its folder behind"


def test_config_check_refuses_a_large_body(server: Server) -> None:
    r = requests.post(server.url + "/console/config/check", data=b"#" * (256 * 1024 + 1), headers=AUTH, timeout=30)
    assert r.status_code == 413 and "262144" in r.json()["message"]


def test_config_check_refuses_what_is_not_text(server: Server) -> None:
    r = requests.post(server.url + "/console/config/check", data=b"\xff\xfe\x00", headers=AUTH, timeout=30)
    assert r.status_code == 400 and "UTF-8" in r.json()["message"]
