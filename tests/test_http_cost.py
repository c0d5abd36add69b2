"""The shortcuts that keep the HTTP app's cost per request low answer exactly what the general code
answers: the v1 route's multipart reader against werkzeug's form parser, and base64 decoding (which
copies the text only when it holds whitespace) against the standard library."""

from __future__ import annotations

import base64
import binascii
import io
import json
import random
from typing import Any

import pytest
from flask import Flask, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.test import EnvironBuilder

from edge_agent.errors import ImageLoadError
from edge_agent.http.v1 import _plain_multipart_file
from edge_agent.images import bytes_from_base64

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9"
B = "XyZ12"  # the boundary of the hand-written bodies


def _part(name: str, data: bytes, filename: str | None = "a.jpg", nl: bytes = b"\r\n") -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    return (f"--{B}".encode() + nl + f"Content-Disposition: {disposition}".encode() + nl
            + b"Content-Type: image/jpeg" + nl + nl + data + nl)


def _body(*parts: bytes, end: bytes = f"--{B}--\r\n".encode()) -> bytes:
    return b"".join(parts) + end


def _both(app: Flask, body: bytes, content_type: str = f"multipart/form-data; boundary={B}") -> tuple[object, object]:
    """(the shortcut's answer, werkzeug's ``files.get("file")`` bytes or the exception it raised)."""
    def environ() -> dict[str, object]:
        return EnvironBuilder(method="POST", data=body, content_type=content_type).get_environ()

    with app.request_context(environ()):
        fast = _plain_multipart_file()
    with app.request_context(environ()):
        try:
            part = request.files.get("file")
            slow: object = part.read() if part is not None else None
        except RequestEntityTooLarge as exc:
            slow = exc
    return fast, slow


@pytest.fixture()
def app() -> Flask:
    app = Flask(__name__)
    app.config["MAX_FORM_PARTS"] = 4
    return app


@pytest.mark.parametrize("body", [
    _body(_part("file", JPEG)),
    _body(_part("file", JPEG), end=f"--{B}--".encode()),  # no line break at the end
    _body(_part("other", b"field", None), _part("file", JPEG)),
    _body(_part("file", b"not the image", None), _part("file", JPEG)),  # no filename: a form field
    _body(_part("file", JPEG), _part("file", b"a second file")),
    _body(_part("file", JPEG + f"\r\n--{B}X".encode())),  # the boundary's text inside the data
    _body(_part("file", JPEG, filename="")),
    _body(_part("file", JPEG), end=f"--{B}--\r\nepilogue".encode()),
], ids=["one", "no-final-crlf", "field-first", "field-named-file", "two-files", "boundary-in-data",
        "empty-filename", "epilogue"])
def test_plain_bodies_are_read_without_the_form_parser_and_alike(app: Flask, body: bytes) -> None:
    fast, slow = _both(app, body)
    if body.count(f"--{B}X".encode()):
        assert fast is None  # an ambiguous body is left to werkzeug
    else:
        assert fast is not None
    assert slow is not None and (fast is None or fast == slow)


def test_werkzeug_and_requests_encodings_take_the_shortcut(app: Flask) -> None:
    requests = pytest.importorskip("requests")
    prepared = requests.Request("POST", "http://x/a/1", files={"file": ("a.jpg", JPEG, "image/jpeg")}).prepare()
    fast, slow = _both(app, prepared.body, prepared.headers["Content-Type"])
    assert fast == slow == JPEG
    environ = EnvironBuilder(method="POST", data={"file": (io.BytesIO(JPEG), "a.jpg")}).get_environ()
    with app.request_context(environ):
        assert _plain_multipart_file() == JPEG


_TOO_LARGE = RequestEntityTooLarge


@pytest.mark.parametrize(("body", "werkzeug"), [
    (_body(_part("file", JPEG, nl=b"\n"), end=f"--{B}--\n".encode()), JPEG),  # LF line breaks
    (_body(_part("file", JPEG + f"\n--{B}\n".encode())), None),  # a lone LF before the boundary's text
    (b"preamble\r\n" + _body(_part("file", JPEG)), JPEG),
    (_body(_part("file", JPEG, filename='a\\"b.jpg')), JPEG),  # an escaped quote
    (_body(_part("file", JPEG).replace(b"Content-Disposition", b"X-Other")), None),  # no Content-Disposition
    (_body(_part("file", JPEG).replace(b"Content-Type", b" Content-Type")), JPEG),  # a continued header
    (_body(_part("file", JPEG), end=b""), None),  # cut short
    (_body(_part("f1", b"1", None), _part("f2", b"2", None), _part("f3", b"3", None), _part("f4", b"4", None),
           _part("file", JPEG)), _TOO_LARGE),  # more parts than MAX_FORM_PARTS
    # two Content-Disposition headers: werkzeug reads the first, which names no "file"
    (_body(_part("file", JPEG).replace(b"Content-Disposition", b"Content-Disposition: form-data; name=other\r\n"
                                       b"Content-Disposition", 1)), None),
    (_body(_part("file", JPEG), end=f"--{B}--\r\n".encode() + b"e" * 600_000), _TOO_LARGE),  # a long epilogue
    (_body(_part("file", JPEG * 1200)), JPEG * 1200),  # over 1 MiB: werkzeug keeps the part in a file
], ids=["lf", "lone-lf", "preamble", "escaped-quote", "no-disposition", "continued-header", "cut-short",
        "too-many-parts", "two-dispositions", "long-epilogue", "large"])
def test_other_bodies_are_left_to_the_form_parser(app: Flask, body: bytes, werkzeug: object) -> None:
    fast, slow = _both(app, body)
    assert fast is None
    if werkzeug is _TOO_LARGE:
        assert isinstance(slow, RequestEntityTooLarge)
    else:
        assert slow == werkzeug


def test_the_shortcut_needs_the_form_data_type_and_a_boundary(app: Flask) -> None:
    body = _body(_part("file", JPEG))
    assert _both(app, body, "multipart/form-data")[0] is None
    assert _both(app, body, f"multipart/mixed; boundary={B}")[0] is None


_B64 = base64.b64encode(JPEG).decode()


@pytest.mark.parametrize("text", [
    _B64,
    _B64.rstrip("="),  # padding left off
    "\n".join(_B64[i:i + 76] for i in range(0, len(_B64), 76)),  # MIME line breaks
    " " + _B64 + "\r\n",
    _B64 + "==",  # padding too long
    base64.urlsafe_b64encode(JPEG).decode(),
])
def test_base64_forms_decode_to_the_image(text: str) -> None:
    assert bytes_from_base64(text) == JPEG


@pytest.mark.parametrize("text", [_B64[:-3] + "$==", "not base64 at all!", _B64[:5]])
def test_malformed_base64_is_refused(text: str) -> None:
    with pytest.raises(ImageLoadError):
        bytes_from_base64(text)


def _stdlib_base64(text: str) -> bytes | None:
    """The decoder before pybase64 (the standard library's), as the reference: None where it refused."""
    text = text.strip()
    if not text:
        return None
    text = "".join(text.replace("-", "+").replace("_", "/").split())
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def test_base64_decodes_as_the_standard_library_does() -> None:
    """pybase64 (the fast decoder) against the standard library's decoder it replaced, on random texts over
    the alphabet, the URL-safe one, padding, whitespace (line breaks inside the padding too) and a few
    characters outside them: the same bytes wherever the old one decoded; where it refused, a refusal,
    except that padding is now made whole (too much ``=``, or ``=`` on both sides of a line break)."""
    rng = random.Random(7)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/" * 3 + "-_" * 3 + "=====  \n\t*.é"
    for _ in range(20000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 40)))
        try:
            got: bytes | None = bytes_from_base64(text)
        except ImageLoadError:
            got = None
        expected = _stdlib_base64(text)
        if expected is not None:
            assert got == expected, text
        elif got is not None:  # only the padding may differ: the same text with its padding made whole
            assert got == _stdlib_base64("".join(text.split()).rstrip("=")) and got, text
    assert bytes_from_base64("QUJD=\n=") == b"ABC"  # a line break inside the padding


def _request_app() -> Flask:
    from edge_agent.http.app import FrontRequest

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = 100
    app.request_class = FrontRequest
    return app


def _environ(body: bytes, read_whole: bool) -> dict[str, object]:
    from edge_agent.http.head import BODY_READ_WHOLE

    environ = EnvironBuilder(method="POST", data=body, content_type="application/json").get_environ()
    environ["wsgi.input_terminated"] = True
    if read_whole:
        environ[BODY_READ_WHOLE] = True
    return environ


def test_a_body_the_front_read_whole_is_read_as_it_is() -> None:
    """Under the front (which read the body whole within the route's cap) the app reads ``wsgi.input``
    itself, not through werkzeug's ``LimitedStream``: the app-wide cap does not apply over it."""
    app = _request_app()
    body = b'{"a": "' + b"x" * 500 + b'"}'
    environ = _environ(body, read_whole=True)
    with app.request_context(environ):
        assert request.max_content_length is None
        assert request.stream is environ["wsgi.input"]
        assert request.get_json() == {"a": "x" * 500}


def test_the_app_wide_cap_holds_under_other_servers_and_a_routes_own_cap_under_the_front() -> None:
    app = _request_app()
    body = b'{"a": "' + b"x" * 500 + b'"}'
    with app.request_context(_environ(body, read_whole=False)):  # any other WSGI server
        assert request.max_content_length == 100
        with pytest.raises(RequestEntityTooLarge):
            request.get_data()
    with app.request_context(_environ(body, read_whole=True)):  # a route's cap (PUT /models sets one)
        request.max_content_length = 50
        assert request.max_content_length == 50
        with pytest.raises(RequestEntityTooLarge):
            request.get_data()


def _document(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice([0, -1, 7, 2**53 + 1, -(2**70), 10**30])
    if kind == 2:
        return rng.choice([0.1, -0.0, 1e-7, 1.5e300, 5e-324, 3.141592653589793, rng.uniform(-1e6, 1e6)])
    if kind == 3:
        return rng.choice([float("nan"), float("inf"), float("-inf")])
    if kind in (4, 5):
        return "".join(rng.choice('abc "\\/\n\t\u00e9\u4e2d\U0001f600\x01') for _ in range(rng.randrange(12)))
    if kind in (6, 7):
        return {rng.choice(["a", "b", "image", "\u00e9", "x\"y"]): _document(rng, depth + 1)
                for _ in range(rng.randrange(4))}
    return [_document(rng, depth + 1) for _ in range(rng.randrange(4))]


def _outcome(loads: Any, data: bytes) -> tuple[str, str]:
    try:
        return "ok", repr(loads(data))  # repr: NaN != NaN, and -0.0 must stay -0.0
    except (ValueError, RecursionError) as exc:
        return "error", type(exc).__name__


def test_request_bodies_parse_as_the_standard_library_parses_them() -> None:
    """The app's JSON provider (pydantic-core's parser, the standard library where it refuses) against
    ``json.loads``: the same value or the same kind of error, on random documents written compact or
    spaced, ASCII-escaped or not, and on cut and damaged copies of them."""
    from edge_agent.http.app import CompactJSON

    provider = CompactJSON(Flask(__name__))
    rng = random.Random(19)
    extra = [b'"\\ud800"', '"\u00e9"'.encode("utf-16"), b"\xef\xbb\xbf{}", b"[" * 400 + b"]" * 400, b"{} x", b"",
             b"[1,]", b'{"a":1,"a":2}', b"NaN", b"-Infinity", b"01", b"1.", b".5", b"\"\t\"", b"'a'"]
    for data in extra:
        assert _outcome(provider.loads, data) == _outcome(json.loads, data), data
    for _ in range(3000):
        text = json.dumps(_document(rng), ensure_ascii=rng.random() < 0.5,
                          separators=rng.choice([(",", ":"), (", ", ": ")]))
        data = text.encode("utf-8", "surrogatepass")
        for variant in (data, data[:rng.randrange(len(data) + 1)],
                        bytes(b ^ (1 << rng.randrange(8)) if i == rng.randrange(len(data)) else b
                              for i, b in enumerate(data))):
            assert _outcome(provider.loads, variant) == _outcome(json.loads, variant), variant


def test_inference_answers_carry_the_json_values_jsonify_writes() -> None:
    """``common.json_answer`` (pydantic-core's serializer) against Flask's ``jsonify`` with the app's
    provider: the same values once parsed, on random documents (NaN and infinities, big integers,
    escapes, non-ASCII text) and on strings pydantic-core cannot write (a lone surrogate)."""
    from edge_agent.http.app import CompactJSON
    from edge_agent.http.common import json_answer

    app = Flask(__name__)
    app.json = CompactJSON(app)
    rng = random.Random(23)
    documents = [_document(rng) for _ in range(2000)]
    documents += [{"class": "caf\u00e9 \ud800", "x": 1.5}, [1e-7, 1e16, -0.0, 2**64]]
    with app.app_context():
        for document in documents:
            fast, slow = json_answer(document), jsonify(document)
            assert fast.mimetype == slow.mimetype == "application/json"
            assert fast.get_data().endswith(b"\n")
            assert repr(json.loads(fast.get_data())) == repr(json.loads(slow.get_data())), document
