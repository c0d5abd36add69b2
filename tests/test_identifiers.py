"""Identifiers are matched whole (issue 18, item 4): a trailing newline or a control character in a model
id, pipeline id, alias or revision is refused, never stripped or let through to the store.

The HTTP checks run against the real daemon (gunicorn) on a loopback port; errors follow
docs/http-api.md §5 (a JSON body; 400 for an invalid id, 422 for a body that fails validation).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import cv2
import pytest
import requests
from pydantic import ValidationError

from edge_agent.demo.shapes import generate_scene
from edge_agent.errors import InvalidInput, InvalidModelId
from edge_agent.pipeline_spec import PipelineSpec, is_pipeline_id
from edge_agent.settings import _MODEL_ID, ServerSettings
from edge_agent.store.manifest import Manifest, parse_model_id
from edge_agent.store.revisions import Revision, pick
from servers import Server, running_server

KEY = "id-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
BAD_ENDINGS = ["\n", "\r", "\x00", "\t"]


# -- units -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("end", BAD_ENDINGS)
def test_parse_model_id_refuses_a_control_character_at_the_end(end: str) -> None:
    with pytest.raises(InvalidModelId):
        parse_model_id(f"shapes/1{end}")


@pytest.mark.parametrize("end", BAD_ENDINGS)
def test_parse_model_id_refuses_a_control_character_at_the_end_of_the_project(end: str) -> None:
    with pytest.raises(InvalidModelId):
        parse_model_id(f"evil{end}/1")


def test_parse_model_id_names_the_value_with_repr() -> None:
    with pytest.raises(InvalidModelId, match=r"'shapes/1\\n'"):
        parse_model_id("shapes/1\n")


def test_parse_model_id_still_accepts_a_plain_id() -> None:
    assert parse_model_id("shapes-seg_2.x/13") == ("shapes-seg_2.x", "13")


@pytest.mark.parametrize("end", BAD_ENDINGS)
def test_is_pipeline_id_refuses_a_control_character_at_the_end(end: str) -> None:
    assert not is_pipeline_id(f"p{end}")


@pytest.mark.parametrize("end", BAD_ENDINGS)
def test_pipeline_spec_refuses_a_pipeline_id_with_a_control_character(end: str) -> None:
    with pytest.raises(ValidationError):
        PipelineSpec(model_id="shapes/1", video_reference=0, pipeline_id=f"p{end}")


@pytest.mark.parametrize("end", BAD_ENDINGS)
def test_pipeline_spec_refuses_a_model_id_with_a_control_character(end: str) -> None:
    with pytest.raises(ValidationError):
        PipelineSpec(model_id=f"shapes/1{end}", video_reference=0)


def test_pipeline_spec_still_accepts_an_alias_as_model_id() -> None:
    assert PipelineSpec(model_id="yolov8n-640", video_reference=0).model_id == "yolov8n-640"


@pytest.mark.parametrize("end", BAD_ENDINGS)
def test_an_alias_name_with_a_control_character_is_refused(end: str) -> None:
    with pytest.raises(ValidationError):
        ServerSettings(aliases={f"x-640{end}": "coco/3"})


@pytest.mark.parametrize("end", BAD_ENDINGS)
def test_an_alias_target_with_a_control_character_is_refused(end: str) -> None:
    with pytest.raises(ValidationError):
        ServerSettings(aliases={"x-640": f"coco/3{end}"})


def test_an_alias_error_names_the_value_with_repr() -> None:
    with pytest.raises(ValidationError, match=r"'coco/3\\n'"):
        ServerSettings(aliases={"x-640": "coco/3\n"})


def test_a_plain_alias_is_still_accepted() -> None:
    assert ServerSettings(aliases={"x-640": "coco/3"}).aliases == {"x-640": "coco/3"}


@pytest.mark.parametrize("value", ["shapes/1", "a.b-c_d/1", "a/b/c", "/1", "a/", "-a/1", "a/-1", "a" * 129 + "/1"])
def test_the_alias_target_rule_is_parse_model_ids_rule(value: str) -> None:
    try:
        parse_model_id(value)
        valid = True
    except InvalidModelId:
        valid = False
    assert (_MODEL_ID.fullmatch(value) is not None) == valid


def _revision(name: str, sha256: str) -> Revision:
    # pick reads only the name and the sha256
    return Revision("acme/1", name.rpartition("-")[0], sha256, Path("/nowhere") / name, cast(Manifest, None))


KEPT = [_revision("20261205T112800.000001Z-abcdef012345", "abcdef012345" + "0" * 52)]


@pytest.mark.parametrize("end", BAD_ENDINGS)
def test_a_revision_stamp_with_a_control_character_is_refused(end: str) -> None:
    with pytest.raises(InvalidInput):
        pick(KEPT, "acme/1", f"20261205T112800{end}")


def test_a_revision_error_names_the_value_with_repr() -> None:
    with pytest.raises(InvalidInput, match=r"'abcdef\\n'"):
        pick(KEPT, "acme/1", "abcdef\n")


def test_a_plain_revision_prefix_still_picks() -> None:
    assert pick(KEPT, "acme/1", "20261205T1128").sha256 == KEPT[0].sha256


# -- over HTTP ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("ids"), {"api_key": KEY}) as found:
        yield found


@pytest.fixture(scope="module")
def b64() -> str:
    ok, buf = cv2.imencode(".jpg", generate_scene(3, size=(480, 640), max_objects=5).image)
    return base64.b64encode(bytes(buf)).decode()


def _refused(r: requests.Response) -> dict[str, Any]:
    """The JSON body of a 4xx answer (the assertion names the status otherwise)."""
    assert (r.status_code in (400, 404, 422) and r.headers["Content-Type"].startswith("application/json")), \
        (r.status_code, r.text[:300])
    return cast(dict[str, Any], r.json())


def _store_names(server: Server) -> set[str]:
    root = server.state_dir / "models"
    return {p.name for p in root.iterdir()} if root.is_dir() else set()


def test_an_upload_to_a_newline_project_is_refused(server: Server) -> None:
    r = requests.put(f"{server.url}/models/evil%0A/1", data=b"\x08\x07" * 64, headers=AUTH, timeout=30)
    assert _refused(r)["error"] == "invalid_model_id"


def test_an_upload_to_a_newline_project_leaves_no_folder(server: Server) -> None:
    requests.put(f"{server.url}/models/evil%0A/1", data=b"\x08\x07" * 64, headers=AUTH, timeout=30)
    assert not any("\n" in name or name.startswith("evil") for name in _store_names(server))


def test_an_upload_to_a_newline_version_is_refused(server: Server) -> None:
    r = requests.put(f"{server.url}/models/shapes/1%0A", data=b"\x08\x07" * 64, headers=AUTH, timeout=30)
    assert _refused(r)["error"] == "invalid_model_id"


def test_v2_infer_with_a_newline_model_id_is_refused(server: Server, b64: str) -> None:
    body = {"model_id": "shapes/1\n", "image": {"type": "base64", "value": b64}}
    r = requests.post(f"{server.url}/infer/object_detection", json=body, headers=AUTH, timeout=60)
    assert _refused(r)["error"] == "invalid_model_id"


def test_v2_infer_error_names_the_model_id_with_repr(server: Server, b64: str) -> None:
    body = {"model_id": "shapes/1\n", "image": {"type": "base64", "value": b64}}
    r = requests.post(f"{server.url}/infer/object_detection", json=body, headers=AUTH, timeout=60)
    assert "'shapes/1\\n'" in r.json()["message"]


def test_v1_infer_with_a_newline_version_is_refused(server: Server, b64: str) -> None:
    r = requests.post(f"{server.url}/shapes/1%0A", data=b64, headers={**AUTH, "Content-Type": "text/plain"},
                      timeout=60)
    _refused(r)


def test_pipeline_initialise_with_a_newline_pipeline_id_is_refused(server: Server) -> None:
    body = {"model_id": "shapes/1", "video_reference": 0, "pipeline_id": "p\n"}
    r = requests.post(f"{server.url}/inference_pipelines/initialise", json=body, headers=AUTH, timeout=30)
    _refused(r)


def test_pipeline_initialise_with_a_newline_model_id_is_refused(server: Server) -> None:
    body = {"model_id": "shapes/1\n", "video_reference": 0, "pipeline_id": "p"}
    r = requests.post(f"{server.url}/inference_pipelines/initialise", json=body, headers=AUTH, timeout=30)
    _refused(r)


def test_describe_of_a_newline_model_id_is_refused(server: Server) -> None:
    _refused(requests.get(f"{server.url}/models/shapes/1%0A", headers=AUTH, timeout=30))


def test_rollback_of_a_newline_model_id_is_refused(server: Server) -> None:
    _refused(requests.post(f"{server.url}/models/shapes/1%0A/rollback", headers=AUTH, timeout=30))


def test_rollback_to_a_newline_revision_is_refused(server: Server) -> None:
    r = requests.post(f"{server.url}/models/shapes/1/rollback", params={"to": "2026\n"}, headers=AUTH, timeout=30)
    _refused(r)


def test_the_store_holds_no_name_with_a_control_character_after_the_refusals(server: Server) -> None:
    for url in ("/models/evil%0A/1", "/models/shapes%0D/1", "/models/shapes/1%00"):
        requests.put(server.url + url, data=b"\x08\x07" * 64, headers=AUTH, timeout=30)
    assert not any(ch in name for name in _store_names(server) for ch in "\n\r\x00\t")
