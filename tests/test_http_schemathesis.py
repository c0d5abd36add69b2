"""Property-based tests of the live HTTP API (``edge-agent serve``) with schemathesis.

Every operation of the OpenAPI document is fuzzed twice against the running daemon (the session
fixture ``http_server``):

* ``test_no_server_error``: no request, valid or not, is answered with a 5xx, and a response is JSON
  where it says so (and where the document says so). Each generated v2 body is sent a second time
  with the route's demo model and the sample image, and each legacy POST a second time with the
  sample image as its base64 body, so the fuzzed parameters also go through real inference.
* ``test_conforms_to_openapi``: all of schemathesis' default checks (status codes, content types,
  response schemas, positive/negative data, ...). The defects this suite found (a null
  ``securitySchemes``, the documented 422 shape, 405 without ``Allow``, undocumented statuses) are fixed
  and pinned by the tests at the end of this file.

By design: model not found is 404, pydantic validation errors are 422, and the inference routes answer
400 for input the schema cannot express (an image that does not decode, an unreachable URL, a model id
that is not ``<project>/<version>``).

Reproducible: a fixed seed, ``derandomize`` and no example database; a bounded number of examples.

The schema is built in-process at import time (the same ``create_app`` the daemon runs, checked against
the live ``/openapi.json`` by ``test_live_document_is_the_one_tested``) because schemathesis needs it at
collection time: ``schemathesis.pytest.from_fixture`` (schemathesis 4.32.5) fails under pytest 9.2
(``AttributeError: 'Function' object has no attribute '_nodeid'``).
"""

from __future__ import annotations

import base64
import copy
import json
import tempfile
import zlib
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import requests
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import content_type_conformance

import edge_agent

TIMEOUT = 30  # seconds per request; a cold model load is well under that
SAMPLE_B64 = base64.b64encode((Path(edge_agent.__file__).parent / "demo" / "sample.jpg").read_bytes()).decode()
DEMO_FOR_ROUTE = {
    "/infer/object_detection": "shapes/1",
    "/infer/instance_segmentation": "shapes-seg/1",
    "/infer/classification": "shapes-cls/1",
    "/infer/keypoints_detection": "shapes-pose/1",
}
DEMO_MODELS = tuple(DEMO_FOR_ROUTE.values())


def _served_document() -> dict[str, Any]:
    """The OpenAPI document exactly as the daemon builds it (default settings)."""
    from edge_agent.http.app import create_app
    from edge_agent.runtime import Runtime
    from edge_agent.settings import Settings

    with tempfile.TemporaryDirectory() as state:
        return copy.deepcopy(create_app(Runtime(Settings.defaults(Path(state))).http_services()).api_doc)


SERVED = _served_document()

def _config(**checks: Any) -> SchemathesisConfig:
    return SchemathesisConfig.from_dict({
        "seed": 20240611,
        # `max-examples` bounds the fuzzing phase; the examples and coverage phases are finite and deterministic.
        "generation": {"max-examples": 20, "deterministic": True, "database": "none"},
        "checks": checks,
    })


# ------------------------------------------------------------------------------------ no 5xx, JSON is JSON


def json_when_json(ctx: Any, response: Any, case: Any) -> None:
    """A response whose Content-Type is JSON has a body that parses as JSON."""
    content_type = (response.headers.get("content-type") or [""])[0].lower()
    if content_type.startswith("application/json") or "+json" in content_type.split(";")[0]:
        try:
            json.loads(response.content)
        except ValueError as exc:
            raise AssertionError(f"{response.status_code} response says {content_type} but is not JSON ({exc}): "
                                 f"{response.content[:200]!r}") from None


server_errors = schemathesis.openapi.from_dict(copy.deepcopy(SERVED), config=_config())
CHECKS_5XX = [not_a_server_error, content_type_conformance, json_when_json]


def _derive(case: Any) -> Any:
    """A copy of ``case`` to change and send: ``Case.derive`` (schemathesis >= 4.31, which needs Python >= 3.11),
    else the copy it makes, by hand (4.30.1 is the newest schemathesis for Python 3.10, JetPack 6's)."""
    if hasattr(case, "derive"):
        return case.derive()
    return type(case)(operation=case.operation, method=case.method, path=case.path,
                      path_parameters=case.path_parameters.copy(), headers=case.headers.copy(),
                      cookies=case.cookies.copy(), query=case.query.copy(),
                      body=case.body.copy() if isinstance(case.body, (list, dict)) else case.body,
                      media_type=case.media_type, multipart_content_types=case.multipart_content_types,
                      meta=case.meta)


def _with_real_image(case: Any) -> Any | None:
    """The same request with an image that decodes and a model that exists, or None where it has no image."""
    path, method = case.operation.path, case.operation.method.upper()
    if path in DEMO_FOR_ROUTE and isinstance(case.body, dict):
        real = _derive(case)
        image = {"type": "base64", "value": SAMPLE_B64}
        real.body = {**case.body, "model_id": DEMO_FOR_ROUTE[path],
                     "image": [image, image] if isinstance(case.body.get("image"), list) else image}
        return real
    if path == "/{project}/{version}" and method == "POST":
        real = _derive(case)
        pick = zlib.crc32(json.dumps(case.query, sort_keys=True, default=str).encode()) % len(DEMO_MODELS)
        project, version = DEMO_MODELS[pick].split("/")
        real.path_parameters = {"project": project, "version": version}
        real.headers = {**(case.headers or {}), "Content-Type": "text/plain"}
        real.body = SAMPLE_B64
        real.media_type = "text/plain"
        return real
    return None


@server_errors.parametrize()
def test_no_server_error(case: Any, http_server: Any) -> None:
    response = case.call(base_url=http_server.url, timeout=TIMEOUT)
    case.validate_response(response, checks=CHECKS_5XX)
    real = _with_real_image(case)
    if real is not None:
        response = real.call(base_url=http_server.url, timeout=TIMEOUT)
        real.validate_response(response, checks=CHECKS_5XX)


# ----------------------------------------------------------------------------------- conformance (all checks)

conformance = schemathesis.openapi.from_dict(copy.deepcopy(SERVED), config=_config(
    # 400 is the inference routes' documented answer to input that is schema-valid but cannot be used: an
    # image that does not decode, a URL that cannot be fetched (no network here), a model id that is not
    # <project>/<version>, a legacy request with neither ?image= nor a body (the body is not in the document).
    positive_data_acceptance={"expected-statuses": ["2XX", "3XX", 400, 401, 403, 404, 409, 429]},
    # OPTIONS on a two-segment path (/model/registry, /infer/classification, ...) truthfully lists the methods
    # of the legacy catch-all /{project}/{version} too, which also matches it; schemathesis compares with the
    # concrete path alone.
    allow_header_conformance={"enabled": False},
))


@conformance.parametrize()
def test_conforms_to_openapi(case: Any, http_server: Any) -> None:
    case.call_and_validate(base_url=http_server.url, timeout=TIMEOUT, additional_checks=[json_when_json])


# ----------------------------------------------------------------------------------------- the document


def test_live_document_is_the_one_tested(http_server: Any) -> None:
    live = requests.get(http_server.url + "/openapi.json", timeout=TIMEOUT)
    assert live.status_code == 200
    assert live.json() == SERVED


@pytest.fixture(scope="module", autouse=True)
def _unload_models(http_server: Any) -> Any:
    """The fuzzing loads demo models and clears them at random; leave the shared daemon with none loaded."""
    yield
    requests.post(http_server.url + "/model/clear", timeout=TIMEOUT)


# ---------------------------------------------------------------- defects found by this suite, now fixed


def test_document_has_no_null_security_schemes(http_server: Any) -> None:
    doc = requests.get(http_server.url + "/openapi.json", timeout=TIMEOUT).json()
    assert doc.get("components", {}).get("securitySchemes", {}) is not None


def test_validation_error_matches_the_documented_422(http_server: Any) -> None:
    response = requests.post(http_server.url + "/model/add", json={"model_id": 1}, timeout=TIMEOUT)
    assert response.status_code == 422
    doc = requests.get(http_server.url + "/openapi.json", timeout=TIMEOUT).json()
    documented = doc["paths"]["/model/add"]["post"]["responses"]["422"]["content"]["application/json"]["schema"]
    validator = jsonschema_rs.validator_for({**documented, "components": {"schemas": doc["components"]["schemas"]}})
    assert validator.is_valid(response.json()), response.text


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("PUT", "/info", {"GET", "HEAD", "OPTIONS"}),
    ("DELETE", "/infer/object_detection", {"POST", "OPTIONS"}),
])
def test_405_names_the_allowed_methods(http_server: Any, method: str, path: str, allowed: set[str]) -> None:
    response = requests.request(method, http_server.url + path, timeout=TIMEOUT)
    assert response.status_code == 405
    assert "Allow" in response.headers
    assert allowed <= {m.strip() for m in response.headers["Allow"].split(",")}


@pytest.mark.parametrize(("method", "path", "sent", "status"), [
    ("GET", "/clear_cache", "/clear_cache", 200),
    ("GET", "/metrics", "/metrics", 200),
    ("GET", "/start/{project}/{version}", "/start/no%20such/1", 400),  # invalid model id
])
def test_documented_status(http_server: Any, method: str, path: str, sent: str, status: int) -> None:
    response = requests.request(method, http_server.url + sent, timeout=TIMEOUT)
    assert response.status_code == status
    doc = requests.get(http_server.url + "/openapi.json", timeout=TIMEOUT).json()
    assert str(status) in doc["paths"][path][method.lower()]["responses"]
