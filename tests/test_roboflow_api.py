"""Pulling models from Roboflow's API (``models.roboflow_api``) and the download layer under it
(``models.download``), against ``FakeRoboflow`` on a loopback port: real sockets, no mocks."""

from __future__ import annotations

import hashlib
import json
import logging
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edge_agent
from edge_agent.errors import (
    ChecksumMismatch,
    CloudUnavailable,
    DownloadFailed,
    EdgeAgentError,
    Forbidden,
    InvalidInput,
    ModelImportError,
    ModelNotFound,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedModel,
)
from edge_agent.provisioning.download import DownloadPolicy, download, fetch_json, mask, redact
from edge_agent.provisioning.roboflow_api import pull_package
from edge_agent.serving.loading import load_stored
from edge_agent.settings import ModelsSettings
from edge_agent.store import importers
from edge_agent.store.model_store import ModelStore
from fake_roboflow import FakeRoboflow, demo_package

DEMO = Path(edge_agent.__file__).parent / "demo" / "store"
SAMPLE = DEMO.parent / "sample.jpg"
PROJECTS = ("shapes", "shapes-seg", "shapes-cls", "shapes-pose")
KEY = "rf-SECRET-key-7q2x9w"  # distinctive, so that a leak anywhere is found by a substring search
FAST = DownloadPolicy(timeout_s=2.0, deadline_s=30.0, retries=2, backoff_s=0.01)
QUICK = DownloadPolicy(timeout_s=0.5, deadline_s=10.0, retries=0, backoff_s=0.01)


@pytest.fixture(scope="module")
def packages() -> dict[str, dict[str, Any]]:
    return {f"{p}/1": demo_package(DEMO / p / "1") for p in PROJECTS}


@pytest.fixture
def cloud(packages: dict[str, dict[str, Any]]) -> Iterator[FakeRoboflow]:
    with FakeRoboflow({k: dict(v) for k, v in packages.items()}, api_key=KEY) as fake:
        yield fake


def pull(cloud: FakeRoboflow, model_id: str, dest: Path, *, key: str = KEY, policy: DownloadPolicy = FAST,
         **kw: Any) -> Path:
    return pull_package(model_id, key, dest, api_url=cloud.api_url, device_id="edge-test", policy=policy, **kw)


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# -- pulling ------------------------------------------------------------------------------------


@pytest.mark.parametrize("project", PROJECTS)
def test_pulled_package_imports_as_the_demo_model(tmp_path: Path, cloud: FakeRoboflow, project: str) -> None:
    model_id = f"{project}/1"
    folder = pull(cloud, model_id, tmp_path / "pkg")

    expected = {"model_type.json", "weights.onnx", "environment.json", "class_names.txt"}
    if project == "shapes-pose":
        expected.add("keypoints_metadata.json")
    assert {p.name for p in folder.iterdir()} == expected
    assert all(KEY.encode() not in p.read_bytes() for p in folder.iterdir()), [
        p.name for p in folder.iterdir() if KEY.encode() in p.read_bytes()]
    draft, named = importers.from_roboflow(folder)
    demo = json.loads((DEMO / project / "1" / "model.json").read_text())
    assert named == model_id
    assert draft.fields["task"] == demo["task"]
    assert list(draft.fields["class_names"]) == demo["class_names"]
    assert draft.fields["input"] == demo["input"]
    if project != "shapes-cls":  # Roboflow's format cannot say "centre crop, no normalisation"
        assert draft.fields["preprocess"] == {**demo["preprocess"], "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
        assert {str(k): list(v) for k, v in draft.fields["keypoint_names"].items()} == demo["keypoint_names"]
    assert {**demo["output"], **draft.fields["output"]} == demo["output"]
    assert cloud.requests == {r: 1 for r in ("workspace", "project", "version", "ort", "weights", "environment")}
    ort_path = next(p for p in cloud.paths if p.startswith("/ort/"))
    assert "device=edge-test" in ort_path
    assert "dynamic=true" in ort_path
    assert "nocache=true" in ort_path


def test_pulled_detector_predicts_like_the_demo(tmp_path: Path, cloud: FakeRoboflow) -> None:
    store = ModelStore(tmp_path / "models")
    manifest = store.install(pull(cloud, "shapes/1", tmp_path / "pkg"), "pulled-shapes/1")
    assert manifest.source["kind"] == "roboflow"
    assert manifest.colors  # the API's colours came along

    want = load_stored(store, "shapes/1").infer_numpy(str(SAMPLE))
    got = load_stored(store, "pulled-shapes/1").infer_numpy(str(SAMPLE))
    assert len(want) > 0
    np.testing.assert_array_equal(got.class_id, want.class_id)
    np.testing.assert_allclose(got.xyxy, want.xyxy, atol=1e-3)
    np.testing.assert_allclose(got.confidence, want.confidence, atol=1e-5)


def test_bad_onnx_is_pulled_and_refused_on_import(tmp_path: Path, cloud: FakeRoboflow) -> None:
    cloud.packages["shapes/1"] = {**cloud.packages["shapes/1"], "onnx": b"not an onnx file"}
    folder = pull(cloud, "shapes/1", tmp_path / "pkg")
    with pytest.raises(ModelImportError):
        ModelStore(tmp_path / "models").install(folder, "pulled-shapes/1")


def test_key_with_reserved_characters_is_url_encoded(tmp_path: Path, packages: dict[str, Any]) -> None:
    key = "a&b=c d+/%é?#"
    with FakeRoboflow({"shapes/1": packages["shapes/1"]}, api_key=key) as cloud:
        pull(cloud, "shapes/1", tmp_path / "pkg", key=key)
    assert (tmp_path / "pkg" / "weights.onnx").is_file()


def test_class_names_from_class_map_else_from_the_api(tmp_path: Path, cloud: FakeRoboflow) -> None:
    pkg = cloud.packages["shapes/1"]
    env = {k: v for k, v in pkg["environment"].items() if k != "CLASS_MAP"}
    cloud.packages["shapes/1"] = {**pkg, "environment": env, "classes": ["w", "x", "y", "z"]}
    assert importers.from_roboflow(pull(cloud, "shapes/1", tmp_path / "a"))[0].fields["class_names"] == (
        "w", "x", "y", "z")
    cloud.packages["shapes/1"] = {**pkg, "classes": ["w", "x", "y", "z"]}  # CLASS_MAP wins, as at Roboflow
    assert importers.from_roboflow(pull(cloud, "shapes/1", tmp_path / "b"))[0].fields["class_names"] == (
        "circle", "square", "triangle", "star")


def test_missing_model_type_is_ort(tmp_path: Path, cloud: FakeRoboflow) -> None:
    cloud.packages["shapes/1"] = {**cloud.packages["shapes/1"], "model_type": None}
    folder = pull(cloud, "shapes/1", tmp_path / "pkg")
    assert json.loads((folder / "model_type.json").read_text())["model_type"] == "ort"
    assert importers.from_roboflow(folder)[0].fields["output"]["layout"] == "yolov8"


# -- refusals and broken answers ----------------------------------------------------------------


@pytest.mark.parametrize("model_id, key, fail, error, words", [
    ("shapes/1", "not-the-key", None, Unauthorized, "This API key does not exist (or has been revoked)"),
    ("nope/1", KEY, None, ModelNotFound, "'nope/1'"),
    ("shapes/9", KEY, None, ModelNotFound, "'shapes/9'"),
    ("shapes/1", KEY, "403", Forbidden, "HTTP 403"),
    ("shapes/1", KEY, "418", DownloadFailed, "HTTP 418"),
])
def test_refusals(tmp_path: Path, cloud: FakeRoboflow, model_id: str, key: str, fail: str | None,
                  error: type[EdgeAgentError], words: str) -> None:
    cloud.fail_mode, cloud.fail_on = fail, {"ort"}
    with pytest.raises(error) as caught:
        pull(cloud, model_id, tmp_path / "pkg", key=key)
    assert words in caught.value.message
    assert words in caught.value.public
    assert leftovers(tmp_path) == []
    assert cloud.requests["weights"] == 0


def test_unsupported_project_type(tmp_path: Path, cloud: FakeRoboflow) -> None:
    cloud.packages["shapes/1"] = {**cloud.packages["shapes/1"], "task": "semantic-segmentation"}
    with pytest.raises(UnsupportedModel, match="'semantic-segmentation' project"):
        pull(cloud, "shapes/1", tmp_path / "pkg")


@pytest.mark.parametrize("model_id, change, words", [
    ("shapes/1", {"ort": {"model": None}}, "answered without ort.model"),
    ("shapes/1", {"ort": {"environment": None}}, "answered without ort.environment"),
    ("shapes/1", {"environment": {"PREPROCESSING": "{}"}, "ort": {"classes": "circle"}}, "not a list of names"),
    ("shapes/1", {"environment": {"PREPROCESSING": "{}"}, "classes": None}, "without ort.classes, and environment"),
    ("shapes/1", {"environment": {"PREPROCESSING": "{}", "CLASS_MAP": {"1": "a"}}}, "not numbered 0..0"),
    ("shapes-pose/1", {"keypoints_metadata": None}, "answered without ort.keypoints_metadata"),
    ("shapes/1", {"environment": b"<html>"}, "environment.json from Roboflow is not valid JSON"),
    ("shapes/1", {"environment": {"CLASS_MAP": {"0": "a"}}}, "has no PREPROCESSING"),
])
def test_incomplete_answers(tmp_path: Path, cloud: FakeRoboflow, model_id: str, change: dict[str, Any],
                            words: str) -> None:
    cloud.packages[model_id] = {**cloud.packages[model_id], **change}
    with pytest.raises(DownloadFailed, match=words):
        pull(cloud, model_id, tmp_path / "pkg")
    assert leftovers(tmp_path) == []  # weights.onnx, when already there, was removed again


# -- connections that fail ----------------------------------------------------------------------


def test_truncated_download_is_retried_then_refused(tmp_path: Path, cloud: FakeRoboflow) -> None:
    cloud.fail_mode, cloud.fail_on = "truncate", {"weights"}
    size = len(cloud.packages["shapes/1"]["onnx"])
    with pytest.raises(DownloadFailed, match=rf"truncated: got {size // 2} of {size} bytes"):
        pull(cloud, "shapes/1", tmp_path / "pkg")
    assert cloud.requests["weights"] == FAST.retries + 1  # each retry from the start
    assert leftovers(tmp_path) == []


def test_truncated_download_recovers_on_retry(tmp_path: Path, cloud: FakeRoboflow) -> None:
    cloud.fail_mode, cloud.fail_on, cloud.fail_times = "truncate", {"weights"}, 1
    folder = pull(cloud, "shapes/1", tmp_path / "pkg")
    assert (folder / "weights.onnx").read_bytes() == cloud.packages["shapes/1"]["onnx"]
    assert cloud.requests["weights"] == 2
    assert not list(folder.glob("*.part"))


@pytest.mark.parametrize("route", ["workspace", "ort", "weights"])
def test_hanging_server_times_out(tmp_path: Path, cloud: FakeRoboflow, route: str) -> None:
    cloud.fail_mode, cloud.fail_on = "hang", {route}
    started = time.monotonic()
    with pytest.raises(CloudUnavailable, match="no answer from 127.0.0.1 within 0.5 s"):
        pull(cloud, "shapes/1", tmp_path / "pkg", policy=QUICK)
    assert time.monotonic() - started < 10  # only guards against hanging for ever
    assert leftovers(tmp_path) == []


def test_connection_refused(tmp_path: Path) -> None:
    with pytest.raises(CloudUnavailable, match="could not connect to 127.0.0.1: connection refused") as caught:
        pull_package("shapes/1", KEY, tmp_path / "pkg", api_url=FakeRoboflow.closed_url(), device_id="d",
                     policy=QUICK)
    assert "connection refused" in caught.value.public


def test_dropped_connection(tmp_path: Path, cloud: FakeRoboflow) -> None:
    cloud.fail_mode = "drop"
    # the fake hangs up as the request arrives: the client sees an empty answer or a reset
    with pytest.raises(CloudUnavailable, match="closed the connection without answering|connection to 127.0.0.1 reset"):
        pull(cloud, "shapes/1", tmp_path / "pkg")
    assert cloud.requests["workspace"] == FAST.retries + 1


@pytest.mark.parametrize("status, times", [("500", 2), ("503", 1), ("429", 2), ("502", 1)])
def test_server_errors_are_retried(tmp_path: Path, cloud: FakeRoboflow, status: str, times: int) -> None:
    cloud.fail_mode, cloud.fail_times = status, times
    pull(cloud, "shapes/1", tmp_path / "pkg")
    assert cloud.requests["workspace"] == times + 1
    assert cloud.failures == times


@pytest.mark.parametrize("route", ["workspace", "weights"])
def test_server_errors_after_the_retries(tmp_path: Path, cloud: FakeRoboflow, route: str) -> None:
    cloud.fail_mode, cloud.fail_on = "500", {route}
    with pytest.raises(CloudUnavailable, match="answered HTTP 500"):
        pull(cloud, "shapes/1", tmp_path / "pkg")
    assert cloud.requests[route] == FAST.retries + 1
    assert leftovers(tmp_path) == []


def test_deadline(tmp_path: Path, cloud: FakeRoboflow) -> None:
    cloud.fail_mode, cloud.fail_on = "slow", {"weights"}
    started = time.monotonic()
    with pytest.raises(DownloadFailed, match="did not finish within 0.5 s"):
        download(cloud.file_url("shapes/1"), tmp_path / "w.onnx", DownloadPolicy(timeout_s=2, deadline_s=0.5))
    assert time.monotonic() - started < 10
    assert leftovers(tmp_path) == []


# -- download() ---------------------------------------------------------------------------------


def test_download_hashes_and_reports_progress(tmp_path: Path, cloud: FakeRoboflow) -> None:
    data = cloud.packages["shapes/1"]["onnx"]
    calls: list[tuple[int, int | None]] = []
    sha, size = download(cloud.file_url("shapes/1"), tmp_path / "w.onnx", FAST,
                         sha256=hashlib.sha256(data).hexdigest().upper(), progress=lambda n, t: calls.append((n, t)))
    assert (sha, size) == (hashlib.sha256(data).hexdigest(), len(data))
    assert (tmp_path / "w.onnx").read_bytes() == data
    assert leftovers(tmp_path) == ["w.onnx"]
    assert calls[0] == (0, len(data))
    assert calls[-1] == (len(data), len(data))
    assert len(calls) <= 10
    assert [n for n, _ in calls] == sorted(n for n, _ in calls)


def test_checksum_mismatch_leaves_dest_untouched(tmp_path: Path, cloud: FakeRoboflow) -> None:
    (tmp_path / "w.onnx").write_bytes(b"old")
    with pytest.raises(ChecksumMismatch, match="expected 0000"):
        download(cloud.file_url("shapes/1"), tmp_path / "w.onnx", FAST, sha256="0" * 64)
    assert (tmp_path / "w.onnx").read_bytes() == b"old"
    assert leftovers(tmp_path) == ["w.onnx"]


@pytest.mark.parametrize("mode", [None, "unsized"])  # Content-Length up front; counted while reading
def test_max_bytes(tmp_path: Path, cloud: FakeRoboflow, mode: str | None) -> None:
    cloud.fail_mode = mode
    with pytest.raises(PayloadTooLarge, match="more than the 100000 bytes allowed"):
        download(cloud.file_url("shapes/1"), tmp_path / "w.onnx", DownloadPolicy(max_bytes=100_000))
    assert leftovers(tmp_path) == []


def test_max_bytes_in_a_pull(tmp_path: Path, cloud: FakeRoboflow) -> None:
    with pytest.raises(PayloadTooLarge):
        pull(cloud, "shapes/1", tmp_path / "pkg", policy=DownloadPolicy(max_bytes=100_000))
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/model.onnx", "/etc/passwd", "http://"])
def test_only_http_urls(tmp_path: Path, url: str) -> None:
    with pytest.raises(InvalidInput):
        download(url, tmp_path / "w.onnx", FAST)
    with pytest.raises(InvalidInput):
        fetch_json(url, FAST)
    assert leftovers(tmp_path) == []


def test_fetch_json_refuses_what_is_not_json(cloud: FakeRoboflow) -> None:
    with pytest.raises(DownloadFailed, match="not JSON"):
        fetch_json(cloud.file_url("shapes/1"), FAST)
    assert fetch_json(cloud.file_url("shapes/1", "environment.json"), FAST)["CLASS_MAP"]["0"] == "circle"


# -- keys ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, key, expected", [
    ("https://api.roboflow.com/?api_key=abcdefghyz&nocache=true", None,
     "https://api.roboflow.com/?api_key=ab***yz&nocache=true"),
    ("/ort/p/1?device=x&api_key=abcdefghyz", None, "/ort/p/1?device=x&api_key=ab***yz"),
    ("?API_KEY=short", None, "?API_KEY=***"),
    ("no key here", None, "no key here"),
    ("key abcdefghyz echoed", "abcdefghyz", "key ab***yz echoed"),
    ("url ?api_key=a%26b%3Dc12 and a&b=c12", "a&b=c12", "url ?api_key=*** and ***"),
    ("?api_key=abcdefghyz", "abcdefghyz", "?api_key=ab***yz"),
    ("/w.onnx?X-Goog-Expires=900&X-Goog-Signature=0123456789abcdef", None,
     "/w.onnx?X-Goog-Expires=900&X-Goog-Signature=01***ef"),
])
def test_mask_and_redact(text: str, key: str | None, expected: str) -> None:
    assert mask(text, key) == expected
    if key is None:
        assert redact(text) == expected


def test_key_never_leaks(tmp_path: Path, packages: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[EdgeAgentError] = []
    scenarios: list[tuple[dict[str, Any], str, DownloadPolicy]] = [
        ({"api_key": "another-key"}, "shapes/1", FAST),
        ({}, "nope/1", FAST),
        ({"fail_mode": "500"}, "shapes/1", FAST),
        ({"fail_mode": "hang", "fail_on": {"ort"}}, "shapes/1", QUICK),
        ({"fail_mode": "drop", "fail_on": {"version"}}, "shapes/1", FAST),
        ({"fail_mode": "truncate", "fail_on": {"weights"}}, "shapes/1", FAST),
        ({"fail_mode": "truncate", "fail_on": {"ort"}}, "shapes/1", FAST),
    ]
    for i, (switches, model_id, policy) in enumerate(scenarios):
        with FakeRoboflow(packages, **{"api_key": KEY, **switches}) as cloud:
            with pytest.raises(EdgeAgentError) as caught:
                pull(cloud, model_id, tmp_path / str(i), policy=policy)
            errors.append(caught.value)
    with pytest.raises(CloudUnavailable) as caught:
        pull_package("shapes/1", KEY, tmp_path / "x", api_url=FakeRoboflow.closed_url(), device_id="d", policy=QUICK)
    errors.append(caught.value)

    assert {type(e) for e in errors} >= {Unauthorized, ModelNotFound, CloudUnavailable, DownloadFailed}
    for e in errors:
        told = [str(e), repr(e), e.message, e.public, "".join(traceback.format_exception(type(e), e, e.__traceback__))]
        assert not [t for t in told if KEY in t], e
    assert KEY not in caplog.text
    assert not [r for r in caplog.records if KEY in r.getMessage()]
    urllib3_lines = [r.getMessage() for r in caplog.records if r.name.startswith("urllib3")]
    assert any("api_key=rf***9w" in m for m in urllib3_lines), urllib3_lines  # urllib3's own URL lines, masked
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]


def test_policy_from_settings() -> None:
    policy = DownloadPolicy.from_settings(ModelsSettings(download_timeout_s=5, download_deadline_s=60,
                                                         download_retries=1, max_download_bytes=4096))
    assert (policy.timeout_s, policy.deadline_s, policy.retries, policy.max_bytes) == (5, 60, 1, 4096)
