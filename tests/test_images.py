"""Every image input kind, EXIF orientation, limits, and each failure's typed error."""

from __future__ import annotations

import base64
import http.server
import io
import threading
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from edge_agent.errors import ImageLoadError
from edge_agent.images import ImageLimits, load_image
from edge_agent.url_fetch import UrlPolicy

RNG = np.random.default_rng(1)
IMAGE = RNG.integers(0, 255, (30, 40, 3), dtype=np.uint8)
PNG = cv2.imencode(".png", IMAGE)[1].tobytes()


def _exif_jpeg(orientation: int) -> bytes:
    pil = Image.fromarray(np.zeros((20, 60, 3), np.uint8))  # 60 wide, 20 high
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    pil.save(buf, "JPEG", exif=exif)
    return buf.getvalue()


@pytest.mark.parametrize(
    "source",
    [
        IMAGE,
        PNG,
        base64.b64encode(PNG).decode(),
        "data:image/png;base64," + base64.b64encode(PNG).decode(),
        base64.encodebytes(PNG).decode(),  # wrapped at 76 characters with newlines
        base64.urlsafe_b64encode(PNG).decode().rstrip("="),
        Image.fromarray(IMAGE[:, :, ::-1]),
    ],
    ids=["numpy", "bytes", "base64", "data-uri", "base64-newlines", "urlsafe-unpadded", "pil"],
)
def test_lossless_inputs_decode_to_the_same_bgr_pixels(source: object) -> None:
    np.testing.assert_array_equal(load_image(source), IMAGE)


def test_file_path_and_pathlib(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(PNG)
    np.testing.assert_array_equal(load_image(str(path)), IMAGE)
    np.testing.assert_array_equal(load_image(path), IMAGE)


def test_grayscale_arrays_become_three_channels() -> None:
    gray = IMAGE[:, :, 0]
    assert load_image(gray).shape == (30, 40, 3)
    assert load_image(gray[:, :, None]).shape == (30, 40, 3)


def test_exif_orientation_is_honoured_unless_disabled() -> None:
    data = _exif_jpeg(6)  # rotate 90: a 60x20 image is shown 20 wide, 60 high
    assert load_image(data).shape[:2] == (60, 20)
    assert load_image(data, auto_orient=False).shape[:2] == (20, 60)
    pil = Image.open(io.BytesIO(data))
    assert load_image(pil).shape[:2] == (60, 20)


@pytest.mark.parametrize(
    ("source", "cause"),
    [
        (np.zeros((2, 2, 2, 3), np.uint8), "expected 2 or 3 dimensions"),
        (np.zeros((4, 4, 4), np.uint8), "expected 1 or 3 channels"),
        (np.zeros((4, 4, 3), np.float32), "expected dtype uint8"),
        (b"", "Empty image payload."),
        (b"not an image at all", "Data is not image."),
        ("!!!***", "Malformed base64 input image."),
        ("abcde", "Malformed base64 input image."),  # 5 characters can never be base64
        (base64.b64encode(b"hello world").decode(), "Data is not image."),
        (12345, "not recognised image type"),
    ],
)
def test_bad_inputs_raise_image_load_error(source: object, cause: str) -> None:
    with pytest.raises(ImageLoadError, match="Could not load input image. Cause") as info:
        load_image(source)
    assert cause in info.value.cause


def test_raw_bytes_where_base64_was_expected() -> None:
    from edge_agent.images import bytes_from_base64

    with pytest.raises(ImageLoadError, match="raw bytes instead of a base64-encoded string"):
        bytes_from_base64(PNG)


def test_pixel_cap_is_checked_from_the_header() -> None:
    big = cv2.imencode(".png", np.zeros((3000, 2000, 3), np.uint8))[1].tobytes()
    with pytest.raises(ImageLoadError, match="exceeds the maximum of 1000000 pixels"):
        load_image(big, ImageLimits(max_pixels=1_000_000))
    with pytest.raises(ImageLoadError, match="exceeds the maximum"):
        load_image(np.zeros((2000, 1000, 3), np.uint8), ImageLimits(max_pixels=1_000_000))


def _jpegs() -> dict[str, bytes]:
    image = RNG.integers(0, 255, (123, 457, 3), dtype=np.uint8)
    found = {"baseline": cv2.imencode(".jpg", image)[1].tobytes(),
             "progressive": cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes(),
             "grayscale": cv2.imencode(".jpg", image[:, :, 0])[1].tobytes()}
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the header still gives the stored size
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", exif=exif, progressive=True, optimize=True)
    found["exif, optimized"] = buf.getvalue()
    found["fill bytes"] = found["baseline"][:2] + b"\xff\xff" + found["baseline"][2:]
    return found


@pytest.mark.parametrize("kind", ["baseline", "progressive", "grayscale", "exif, optimized", "fill bytes"])
def test_jpeg_size_reads_the_frame_header(kind: str) -> None:
    from edge_agent.images import jpeg_size

    data = _jpegs()[kind]
    assert jpeg_size(data) == (457, 123)
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED).shape[:2] == (123, 457)


def test_jpeg_size_gives_up_on_what_is_not_a_whole_jpeg_header() -> None:
    from edge_agent.images import jpeg_size

    data = _jpegs()["baseline"]
    assert jpeg_size(PNG) is None
    assert jpeg_size(b"") is None
    assert jpeg_size(data[:20]) is None  # cut before the frame header
    assert jpeg_size(data[:2] + b"\x00" * 64) is None  # no marker where one must be


def test_pixel_cap_is_checked_from_a_jpeg_header_before_decoding() -> None:
    # A frame header that claims 60000 x 60000 and nothing after it: refused for its size, not for its data.
    header = b"\xff\xd8\xff\xc0\x00\x11\x08" + (60000).to_bytes(2, "big") * 2 + b"\x03" + b"\x00" * 9
    with pytest.raises(ImageLoadError, match="exceeds the maximum of 50000000 pixels"):
        load_image(header + b"\x00" * 100)


def test_files_can_be_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(PNG)
    with pytest.raises(ImageLoadError, match="Loading images from local filesystem is disabled"):
        load_image(path, ImageLimits(allow_files=False))
    with pytest.raises(ImageLoadError, match="Cannot read image file"):
        load_image(tmp_path / "missing.png")


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        routes = {"/img.png": (200, PNG), "/text": (200, b"hello"), "/big": (200, b"\0" * 5000),
                  "/missing": (404, b"")}
        if self.path.startswith("/loop"):
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.end_headers()
            return
        status, body = routes.get(self.path, (404, b""))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def http_base() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, name="test-http", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_url_loading_with_trusted_policy(http_base: str) -> None:
    np.testing.assert_array_equal(load_image(f"{http_base}/img.png"), IMAGE)


@pytest.mark.parametrize(
    ("path", "policy", "message"),
    [
        ("/img.png", UrlPolicy(), "non https:// URL is not supported"),
        ("/img.png", UrlPolicy(allow_http=True), "without FQDN is not supported"),
        ("/img.png", UrlPolicy(allow_http=True, allow_ip_hosts=True), "network destination that is not allowed"),
        ("/img.png", UrlPolicy(allow_urls=False), "via URL is not supported"),
        ("/img.png", UrlPolicy.trusted().__class__(allow_http=True, allow_ip_hosts=True, allow_non_global=True,
                                                   allowed_hosts=("example.com",)), "whitelisted destinations"),
        ("/text", UrlPolicy.trusted(), "Data pointed by URL could not be decoded into image."),
        ("/big", UrlPolicy(allow_http=True, allow_ip_hosts=True, allow_non_global=True, max_bytes=1000),
         "larger than 1000 bytes"),
        ("/loop", UrlPolicy.trusted(), "redirected more than 5 times"),
        ("/missing", UrlPolicy.trusted(), "answered HTTP 404"),
    ],
)
def test_url_policy_failures(http_base: str, path: str, policy: UrlPolicy, message: str) -> None:
    with pytest.raises(ImageLoadError, match=message):
        load_image(http_base + path, ImageLimits(url_policy=policy))


def test_unparsable_url() -> None:
    with pytest.raises(ImageLoadError, match="Provided image URL is invalid"):
        load_image("http://[::1", ImageLimits())
