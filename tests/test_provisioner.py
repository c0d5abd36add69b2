"""The Provisioner in one process, against a loopback fake of Roboflow's API: what a pull shares with
concurrent callers and what it must not (a refused key, a busy slot), how long a caller waits, and a
new version installed over a damaged one."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edge_agent.errors import CloudUnavailable, NotReady, Unauthorized
from edge_agent.provisioning import provisioner as provision
from edge_agent.provisioning.download import redact
from edge_agent.provisioning.provisioner import Provisioner
from edge_agent.serving.loading import load_stored
from edge_agent.serving.manager import ModelManager
from edge_agent.settings import ModelsSettings, Settings
from edge_agent.store.model_store import ModelStore
from fake_roboflow import FakeRoboflow, demo_package

DEMO = Path(__file__).resolve().parents[1] / "edge_agent" / "demo" / "store"
KEY = "rf-key-provisioner-01"


def _provisioner(tmp_path: Path, cloud: FakeRoboflow, **models: Any) -> Provisioner:
    fields = {"api_url": cloud.api_url, "download_timeout_s": 1, "download_retries": 0, **models}
    settings = Settings.defaults(tmp_path / "state").model_copy(update={"models": ModelsSettings(**fields)})
    store = ModelStore(settings.models_dir)
    return Provisioner(settings.models, store, ModelManager(store), "test")


@pytest.fixture(scope="module")
def package() -> dict[str, Any]:
    return demo_package(DEMO / "shapes" / "1")


def test_a_refused_key_is_neither_shared_nor_remembered(tmp_path: Path, package: dict[str, Any]) -> None:
    with FakeRoboflow({"hats/1": package}, api_key=KEY) as cloud:
        p = _provisioner(tmp_path, cloud, pull_retry_s=600)
        with pytest.raises(Unauthorized):
            p.pull("hats/1", "somebody-elses-bad-key")
        assert p.pull("hats/1", KEY) is True  # at once: the 401 said nothing about this key
        assert p.store.has("hats/1")
        assert cloud.requests["weights"] == 1


def test_other_failures_are_remembered_for_pull_retry_s(tmp_path: Path, package: dict[str, Any]) -> None:
    with FakeRoboflow({"hats/1": package}, api_key=KEY, fail_mode="500", fail_on={"ort"}) as cloud:
        p = _provisioner(tmp_path, cloud, pull_retry_s=600)
        with pytest.raises(CloudUnavailable) as first:
            p.pull("hats/1", KEY)
        asked = cloud.requests["ort"]
        with pytest.raises(CloudUnavailable) as second:
            p.pull("hats/1", KEY)
        assert cloud.requests["ort"] == asked  # answered from memory
        assert second.value is not first.value
        assert second.value.public == first.value.public


def test_busy_download_slots_answer_at_once_and_are_not_remembered(tmp_path: Path, package: dict[str, Any]) -> None:
    packages = {"a/1": package, "b/1": package, "c/1": package}
    with FakeRoboflow(packages, api_key=KEY, fail_mode="hang", fail_on={"ort"}, hang_s=1.5) as cloud:
        p = _provisioner(tmp_path, cloud, pull_retry_s=600, download_timeout_s=3)
        errors: list[BaseException] = []

        def pull(model_id: str) -> None:
            try:
                p.pull(model_id, KEY)
            except BaseException as exc:  # the hang ends after hang_s: these may succeed or fail
                errors.append(exc)

        busy = [threading.Thread(target=pull, args=(m,)) for m in ("a/1", "b/1")]
        for t in busy:
            t.start()
        deadline = time.monotonic() + 5
        while cloud.requests["ort"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        t0 = time.monotonic()
        with pytest.raises(CloudUnavailable, match="being downloaded already"):
            p.pull("c/1", KEY)
        assert time.monotonic() - t0 < 1.0  # not queued behind the others
        for t in busy:
            t.join(30)
        cloud.fail_mode = None
        assert p.pull("c/1", KEY) is True  # the busy answer was not remembered for c/1


def test_a_caller_waits_for_a_pull_in_progress_only_so_long(tmp_path: Path, package: dict[str, Any],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(provision, "PULL_WAIT_S", 0.3)
    with FakeRoboflow({"hats/1": package}, api_key=KEY, fail_mode="slow", fail_on={"weights"},
                      slow_bytes=65536, slow_delay_s=0.05) as cloud:
        p = _provisioner(tmp_path, cloud)
        first = threading.Thread(target=p.pull, args=("hats/1", KEY))
        first.start()
        while cloud.requests["weights"] < 1:
            time.sleep(0.01)
        with pytest.raises(NotReady, match="being downloaded"):
            p.pull("hats/1", KEY)
        first.join(60)
        assert p.store.has("hats/1")
        assert cloud.requests["weights"] == 1


def test_a_new_version_repairs_a_damaged_one(tmp_path: Path, package: dict[str, Any]) -> None:
    with FakeRoboflow({}, api_key=KEY) as cloud:
        p = _provisioner(tmp_path, cloud)
        onnx = DEMO / "shapes" / "1" / "model.onnx"
        p.store.install(onnx, "line/1")
        stored = p.store.get("line/1")
        weights = stored.path / stored.manifest.weights.file
        weights.write_bytes(weights.read_bytes()[:1000])  # a damaged card, a bad copy
        result = p.install_file(onnx, "line/1")
        assert result["activated"] is True
        assert load_stored(p.store, "line/1") is not None  # the checksum holds again


def test_redact_hides_credentials_in_urls() -> None:
    text = redact("GET https://user:hunter22@files.example.com/m.zip?sv=2&sig=abcdefghijkl&api_key=0123456789")
    assert "hunter22" not in text
    assert "abcdefghijkl" not in text
    assert "0123456789" not in text
    assert text.startswith("GET https://***@files.example.com/m.zip")
