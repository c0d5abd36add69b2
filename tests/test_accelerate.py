"""The switch-over state machine in a real Runtime: ONNX Runtime serves at once, a build runs in a child
process, its engine is checked against ONNX Runtime, and requests move over without one failing; the
cache serves the next start; damaged, disagreeing and failing builds keep ONNX Runtime serving.

TensorRT itself is the stand-in of tests/trt_stand_in.py (no GPU here); everything else is production
code. The same flows against real TensorRT are tests/test_trt_gpu.py (marked gpu)."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import jsonschema
import numpy as np
import pytest

from edge_agent.params import InferenceParams
from edge_agent.runtime import Runtime
from edge_agent.serving.accelerate import Accelerator
from edge_agent.settings import Settings, load_settings
from engines.cache import EngineCache
from trt_stand_in import StandInBackend

TESTS = Path(__file__).resolve().parent
SAMPLE = cv2.imread(str(TESTS.parent / "edge_agent" / "demo" / "sample.jpg"))

pytestmark = pytest.mark.usefixtures("stand_in_path")  # the build child imports trt_stand_in


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    return load_settings(None, {"EDGE_AGENT_CONFIG": "", "EDGE_AGENT_STATE_DIR": str(tmp_path / "state")},
                         overrides={"paths.cache_dir": str(tmp_path / "cache"), **overrides})


def _wait_state(runtime: Runtime, model_id: str, states: set[str], timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = runtime.engine_status(model_id)
        if status["state"] in states:
            return status
        time.sleep(0.05)
    raise AssertionError(f"{model_id} never reached {states}: {runtime.engine_status(model_id)}")


class Load:
    """Threads inferring on a model through the runtime, counting results per engine and any failure."""

    def __init__(self, runtime: Runtime, model_id: str, threads: int = 3) -> None:
        self.runtime, self.model_id = runtime, model_id
        self.engines: dict[str, int] = {}
        self.errors: list[BaseException] = []
        self.counts: list[int] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                loaded, _ = self.runtime.inference.model(self.model_id)
                result = self.runtime.inference.infer(loaded, [SAMPLE], InferenceParams())[0]
                with self._lock:
                    name = loaded.model.engine.name
                    self.engines[name] = self.engines.get(name, 0) + 1
                    self.counts.append(len(result))
            except BaseException as exc:  # noqa: BLE001 - every failure is the test's business
                self.errors.append(exc)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)


@pytest.fixture
def runtimes() -> Iterator[list[Runtime]]:
    made: list[Runtime] = []
    yield made
    for rt in made:
        rt.stop()


def _accelerator(runtime: Runtime) -> Accelerator:
    assert runtime.accelerator is not None, "the runtime was given the TensorRT stand-in"
    return runtime.accelerator


def _runtime(runtimes: list[Runtime], settings: Settings, backend: StandInBackend) -> Runtime:
    rt = Runtime(settings, engine_backend=backend)
    runtimes.append(rt)
    rt.start()
    return rt


def test_served_at_once_built_in_the_background_then_switched_without_a_failed_request(
        tmp_path: Path, runtimes: list[Runtime], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAND_IN_MODE", "slow")
    backend = StandInBackend()
    rt = _runtime(runtimes, _settings(tmp_path), backend)
    loaded, cold = rt.inference.model("shapes/1")
    assert cold
    assert loaded.model.engine.name.startswith("onnxruntime")  # served at once
    seen: list[dict[str, Any]] = []
    with Load(rt, "shapes/1") as load:
        building = _wait_state(rt, "shapes/1", {"building"})
        assert building["backend"] == "onnxruntime"
        assert building["key"]
        while rt.engine_status("shapes/1")["state"] in ("queued", "building", "verifying"):
            seen.append(rt.engine_status("shapes/1"))
            assert rt.building() is None or "shapes/1" in (rt.building() or "")
            time.sleep(0.1)
        final = rt.engine_status("shapes/1")
        time.sleep(0.5)  # requests after the switch
    assert final["state"] == "tensorrt", final
    assert final["backend"] == "tensorrt", final
    assert not load.errors, load.errors[:3]
    assert load.engines.get("tensorrt-stand-in", 0) > 0
    assert any(k.startswith("onnxruntime") for k in load.engines), load.engines
    assert set(load.counts) == {6}  # the same answer on both engines
    fractions = [s["progress"] for s in seen if s["state"] == "building" and s["progress"]]
    assert fractions
    assert max(fractions) > min(fractions)  # progress moved
    assert any(s["state"] == "verifying" for s in seen) or final["reason"].startswith("built and checked"), (
        [s["state"] for s in seen], final["reason"])
    assert rt.manager.peek("shapes/1").model.engine.name == "tensorrt-stand-in"  # type: ignore[union-attr]
    assert rt.manager.peek("shapes/1").batcher is not None  # type: ignore[union-attr]  # GPU engine: batched
    entry = EngineCache(tmp_path / "cache").lookup(_accelerator(rt).key(loaded.model.manifest)).entry
    assert entry is not None
    assert entry.sidecar["verified"]["images"] == 8
    assert entry.sidecar["model_id"] == "shapes/1"


def test_the_next_start_serves_from_the_cache_without_building(tmp_path: Path, runtimes: list[Runtime]) -> None:
    settings = _settings(tmp_path)
    first = _runtime(runtimes, settings, StandInBackend())
    first.inference.model("shapes-cls/1")
    _wait_state(first, "shapes-cls/1", {"tensorrt"})
    first.stop()

    backend = StandInBackend()
    second = _runtime(runtimes, settings, backend)
    loaded, _ = second.inference.model("shapes-cls/1")
    assert loaded.model.engine.name == "tensorrt-stand-in"  # no ONNX Runtime phase at all
    assert _accelerator(second).builds == 0
    status = second.engine_status("shapes-cls/1")
    assert status["state"] == "tensorrt"
    assert "engine cache" in status["reason"]
    result = second.inference.infer(loaded, [SAMPLE], InferenceParams())[0]
    assert result.top[0] in range(4)  # type: ignore[union-attr]


def test_a_truncated_plan_is_rebuilt_never_loaded(tmp_path: Path, runtimes: list[Runtime],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    settings = _settings(tmp_path)
    first = _runtime(runtimes, settings, StandInBackend())
    first.inference.model("shapes-cls/1")
    key = _wait_state(first, "shapes-cls/1", {"tensorrt"})["key"]
    first.stop()
    plan = tmp_path / "cache" / "engines" / f"{key}.plan"
    plan.write_bytes(plan.read_bytes()[: plan.stat().st_size // 2])

    backend = StandInBackend()
    second = _runtime(runtimes, settings, backend)
    loaded, _ = second.inference.model("shapes-cls/1")
    assert loaded.model.engine.name.startswith("onnxruntime")
    status = second.engine_status("shapes-cls/1")
    if status["state"] in ("queued", "building"):  # the rebuild may already be done on a fast machine
        assert "truncated" in (status["reason"] or ""), status
    assert "truncated" in caplog.text
    _wait_state(second, "shapes-cls/1", {"tensorrt"})
    assert _accelerator(second).builds == 1
    assert plan.stat().st_size == (TESTS.parent / "edge_agent/demo/store/shapes-cls/1/model.onnx").stat().st_size


def test_an_engine_that_disagrees_with_onnx_runtime_never_serves(tmp_path: Path, runtimes: list[Runtime]) -> None:
    settings = _settings(tmp_path)
    backend = StandInBackend(scale=1.3)  # every output 30% off: boxes move, scores change
    rt = _runtime(runtimes, settings, backend)
    with Load(rt, "shapes/1") as load:
        status = _wait_state(rt, "shapes/1", {"failed", "tensorrt"})
        time.sleep(0.3)
    assert status["state"] == "failed", status
    assert "disagrees with ONNX Runtime" in status["reason"], status
    assert "image 1" in status["reason"]
    assert status["backend"] == "onnxruntime"
    assert not load.errors
    assert set(load.engines) == {rt.manager.peek("shapes/1").model.engine.name}  # type: ignore[union-attr]
    assert backend.loaded
    assert all(e.closed for e in backend.loaded), [e for e in backend.loaded if not e.closed]  # bad engine released
    cache = EngineCache(tmp_path / "cache")
    assert not list(cache.root.glob("*.plan"))
    assert not list((cache.root / ".tmp").glob("*"))
    rt.stop()

    again = _runtime(runtimes, settings, StandInBackend(scale=1.3))
    again.inference.model("shapes/1")
    status = again.engine_status("shapes/1")
    assert status["state"] == "failed"
    assert "an earlier build failed" in status["reason"]
    assert _accelerator(again).builds == 0  # not retried on every start
    manifest, onnx = again.manager.onnx_path("shapes/1")
    forced = _accelerator(again).build("shapes/1", manifest, onnx,  # compile --force
                                     again.manager.switch_over("shapes/1"))
    assert forced.state == "failed"
    assert _accelerator(again).builds == 1


@pytest.mark.parametrize("mode, reason", [("fail", "ONNX parser refused"), ("crash", "killed by signal 9")])
def test_a_failed_build_leaves_onnx_runtime_serving_and_says_why(
        tmp_path: Path, runtimes: list[Runtime], monkeypatch: pytest.MonkeyPatch, mode: str, reason: str) -> None:
    monkeypatch.setenv("STAND_IN_MODE", mode)
    rt = _runtime(runtimes, _settings(tmp_path), StandInBackend())
    loaded, _ = rt.inference.model("shapes-seg/1")
    status = _wait_state(rt, "shapes-seg/1", {"failed"})
    assert reason in status["reason"]
    assert status["backend"] == "onnxruntime"
    assert len(rt.inference.infer(rt.inference.model("shapes-seg/1")[0], [SAMPLE], InferenceParams())[0]) == 6
    assert rt.engines()["shapes-seg/1"]["state"] == "failed"


def test_stop_kills_a_running_build_and_caches_nothing(tmp_path: Path, runtimes: list[Runtime],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAND_IN_MODE", "endless")  # a build of 5 minutes: stop must not wait for it
    rt = _runtime(runtimes, _settings(tmp_path), StandInBackend())
    rt.inference.model("shapes/1")
    _wait_state(rt, "shapes/1", {"building"})
    t0 = time.monotonic()
    rt.stop()
    assert time.monotonic() - t0 < 60  # killed, not waited for (a bound loose enough for a loaded machine)
    cache = EngineCache(tmp_path / "cache")
    assert not list(cache.root.glob("*.plan"))
    assert not list(cache.root.glob("*.failed"))


def test_no_background_build_when_disabled(tmp_path: Path, runtimes: list[Runtime]) -> None:
    rt = _runtime(runtimes, _settings(tmp_path, **{"engine.build_engines": False}), StandInBackend())
    rt.inference.model("shapes/1")
    time.sleep(0.3)
    assert _accelerator(rt).builds == 0
    assert rt.engine_status("shapes/1")["state"] == "onnxruntime"


def test_http_shows_the_choice_the_build_and_the_engine(tmp_path: Path, runtimes: list[Runtime],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """/info, /readiness and /model/registry over a real HTTP listener (werkzeug, in-process)."""
    from werkzeug.serving import make_server

    from edge_agent.http.app import create_app
    from servers import free_port

    monkeypatch.setenv("STAND_IN_MODE", "slow")
    rt = _runtime(runtimes, _settings(tmp_path), StandInBackend())
    port = free_port()
    httpd = make_server("127.0.0.1", port, create_app(rt.http_services()), threaded=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    def get(path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    try:
        info = get("/info")
        assert info["engine"]["backend"] == "onnxruntime"
        assert "TensorRT not used" in info["engine"]["reason"]
        get("/model/add", {"model_id": "shapes/1"})
        _wait_state(rt, "shapes/1", {"building"})
        ready = get("/readiness")
        assert ready["status"] == "ready"
        assert "building the TensorRT engine of shapes/1" in ready["engines"]
        model = get("/model/registry")["models"][0]
        assert model["engine"]["state"] in ("building", "verifying")
        assert model["engine"]["backend"] == "onnxruntime"
        from edge_agent.systemd import Monitor, Notifier

        monitor = Monitor(rt, rt.settings.server, Notifier(None), 0)
        assert "building the TensorRT engine of shapes/1" in monitor.status()  # STATUS=
        telemetry = rt.telemetry()["engines"]["shapes/1"]  # MQTT telemetry, checked against its schema
        schema = json.loads((TESTS.parent / "edge_agent/mqtt/schemas/telemetry.schema.json").read_text())
        jsonschema.validate(telemetry, {**schema["$defs"]["engine"], "$defs": schema["$defs"]})
        assert telemetry["state"] in ("building", "verifying")
        assert telemetry["backend"] == "onnxruntime"
        _wait_state(rt, "shapes/1", {"tensorrt"})
        model = get("/model/registry")["models"][0]
        assert model["engine"]["state"] == "tensorrt"
        assert model["engine"]["backend"] == "tensorrt"
        assert "engines" not in get("/readiness")
    finally:
        httpd.shutdown()


def test_int8_without_calibration_images_fails_with_the_reason(tmp_path: Path, runtimes: list[Runtime]) -> None:
    rt = _runtime(runtimes, _settings(tmp_path, **{"engine.precision": "int8"}), StandInBackend())
    rt.inference.model("shapes/1")
    status = _wait_state(rt, "shapes/1", {"failed"})
    assert "INT8 needs calibration images" in status["reason"]


def test_int8_calibration_frames_are_prepared_from_the_folder(tmp_path: Path, runtimes: list[Runtime]) -> None:
    folder = tmp_path / "calibration"
    folder.mkdir()
    for i in range(10):
        cv2.imwrite(str(folder / f"{i:02d}.jpg"), np.roll(SAMPLE, i * 10, axis=1))
    (folder / "notes.txt").write_text("not an image")
    rt = _runtime(runtimes, _settings(tmp_path, **{"engine.precision": "int8", "engine.calibration_images": str(folder),
                                                   "engine.calibration_frames": 8}), StandInBackend())
    rt.inference.model("shapes/1")
    status = _wait_state(rt, "shapes/1", {"failed", "tensorrt"})
    assert status["state"] == "tensorrt", status  # the stand-in builder read the frames the queue wrote
    array = _accelerator(rt).calibration_tensors("shapes/1", rt.manager.switch_over("shapes/1"), 8)
    assert array is not None
    assert array.shape == (8, 3, 320, 320)
    assert array.dtype == np.float32
    assert 0.0 <= array.min()
    assert array.max() <= 1.0
