"""Turning every accepted kind of image input into an H x W x 3 uint8 BGR array.

Accepted: numpy arrays (H x W, H x W x 1, H x W x 3, uint8, BGR), encoded bytes (anything OpenCV
decodes), base64 text (optionally a ``data:`` URI), file paths, PIL images and http(s) URLs.
Limits: a cap on pixels (checked from the header before decoding where the format allows) and, for
URLs, the policy of ``url_fetch``. Every failure is an ``ImageLoadError`` whose cause is a public,
docs/http-api.md §5 style sentence.
"""

from __future__ import annotations

import binascii
import io
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pybase64

from edge_agent.errors import ImageLoadError
from edge_agent.url_fetch import UrlPolicy, fetch

DEFAULT_MAX_PIXELS = 50_000_000
_DATA_URI = re.compile(r"^data:image/[A-Za-z0-9.+-]+;base64,")


@dataclass(frozen=True)
class ImageLimits:
    max_pixels: int = DEFAULT_MAX_PIXELS
    allow_files: bool = True  # reading paths on this machine (never for network callers)
    url_policy: UrlPolicy = UrlPolicy.trusted()


def _check_pixels(width: int, height: int, limits: ImageLimits) -> None:
    if width * height > limits.max_pixels:
        raise ImageLoadError(f"Image exceeds the maximum of {limits.max_pixels} pixels.")


def from_array(array: np.ndarray, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """Validate a BGR (or grayscale) uint8 array and return it as H x W x 3."""
    if array.ndim not in (2, 3):
        raise ImageLoadError("For image given as np.ndarray expected 2 or 3 dimensions.")
    if array.ndim == 3 and array.shape[2] not in (1, 3):
        raise ImageLoadError("For image given as np.ndarray expected 1 or 3 channels.")
    if array.dtype != np.uint8:
        raise ImageLoadError(f"For image given as np.ndarray expected dtype uint8, got {array.dtype}.")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageLoadError("Image has zero width or height.")
    _check_pixels(array.shape[1], array.shape[0], limits)
    if array.ndim == 2 or array.shape[2] == 1:
        import cv2  # lazy: cv2

        return cv2.cvtColor(array.reshape(array.shape[:2]), cv2.COLOR_GRAY2BGR)
    return array


# JPEG's start-of-frame markers (SOF0-SOF15 less DHT, JPG and DAC), whose segment holds the image's size.
_JPEG_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, walking its marker segments in memory; None when
    ``data`` is not a JPEG whose header is well formed up to that point. A few microseconds where
    ``imagesize`` takes about 55 us (it reads the segments one by one through a file object)."""
    if data[:2] != b"\xff\xd8":
        return None
    i, end = 2, len(data) - 9
    while i <= end:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # a fill byte
            i += 1
        elif marker in _JPEG_SOF:  # FF Cn, length, precision, height, width
            height, width = struct.unpack_from(">HH", data, i + 5)
            return width, height
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers that stand alone
            i += 2
        else:
            i += 2 + struct.unpack_from(">H", data, i + 2)[0]
    return None


def from_bytes(data: bytes, limits: ImageLimits = ImageLimits(), auto_orient: bool = True) -> np.ndarray:
    """Read an encoded image file (JPEG, PNG, BMP, WebP, TIFF, ...)."""
    import cv2  # lazy: cv2

    if not data:
        raise ImageLoadError("Empty image payload.")
    size = jpeg_size(data)
    if size is not None:
        width, height = size
    else:
        try:
            import imagesize  # lazy: imagesize

            width, height = imagesize.get(io.BytesIO(data))
        except Exception:  # unknown header: fall back to checking after the decode
            width = height = -1
    if width > 0 and height > 0:
        _check_pixels(width, height, limits)
    flags = cv2.IMREAD_COLOR if auto_orient else cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if image is None:
        raise ImageLoadError("Data is not image.")
    _check_pixels(image.shape[1], image.shape[0], limits)
    return image


def bytes_from_base64(text: str | bytes) -> bytes:
    """Base64 text (standard or URL-safe alphabet, optional data URI) to bytes."""
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            raise ImageLoadError(
                "Invalid base64 input: the image payload contains raw bytes instead of a base64-encoded "
                "string. Please base64-encode the image before sending.") from None
    text = text.strip()
    if text.startswith("data:"):
        text = _DATA_URI.sub("", text, count=1)
    text = text.rstrip("=")  # the padding is made whole below
    if not text:
        raise ImageLoadError("Empty image payload.")
    # Plain base64 first: the URL-safe alphabet and whitespace (whose handling copies the text) only after it fails.
    decoded = _b64decode(text)
    if decoded is None:
        decoded = _b64decode("".join(text.replace("-", "+").replace("_", "/").split()).rstrip("="))
    if decoded is None:
        raise ImageLoadError("Malformed base64 input image.")
    return decoded


def _b64decode(text: str) -> bytes | None:
    """Unpadded base64 with its padding made whole (pybase64 refuses a quad of "====" that the standard
    library let through); None when it is not base64. pybase64 is SIMD: about 4 us for a 25 KB JPEG where
    the standard library's decoder takes 72 us."""
    try:
        return pybase64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def from_base64(text: str | bytes, limits: ImageLimits = ImageLimits(), auto_orient: bool = True) -> np.ndarray:
    return from_bytes(bytes_from_base64(text), limits, auto_orient)


def from_file(path: str | Path, limits: ImageLimits = ImageLimits(), auto_orient: bool = True) -> np.ndarray:
    if not limits.allow_files:
        raise ImageLoadError("Loading images from local filesystem is disabled.")
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageLoadError(f"Cannot read image file {str(path)!r}: {exc.strerror}.") from exc
    return from_bytes(data, limits, auto_orient)


def from_url(url: str, limits: ImageLimits = ImageLimits(), auto_orient: bool = True) -> np.ndarray:
    data = fetch(url, limits.url_policy)
    try:
        return from_bytes(data, limits, auto_orient)
    except ImageLoadError as exc:
        if exc.cause == "Data is not image.":
            raise ImageLoadError("Data pointed by URL could not be decoded into image.") from exc
        raise


def from_pil(image: Any, limits: ImageLimits = ImageLimits(), auto_orient: bool = True) -> np.ndarray:
    from PIL import ImageOps  # lazy: PIL

    _check_pixels(image.width, image.height, limits)
    if auto_orient:
        image = ImageOps.exif_transpose(image)
    rgb = np.asarray(image.convert("RGB"))
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _is_pil(obj: Any) -> bool:
    return any(c.__module__.startswith("PIL.") and c.__name__ == "Image" for c in type(obj).__mro__)


def _exists(path: Path) -> bool:
    """Whether ``path`` exists; a string no file can be named (too long: ENAMETOOLONG; a NUL byte) does not."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def _from_path_or_base64(text: str, limits: ImageLimits, auto_orient: bool) -> np.ndarray:
    """A short string where files may be read (the Python API, the CLI): an existing file, else
    base64 text. A string that base64 can never be (with a dot, a backslash or a leading ``~``, such as
    "photo.jpg") and that names no file is a missing file; any other string that is neither an
    existing file nor base64 image data names both readings in its error."""
    path = Path(text).expanduser()
    if _exists(path):  # a folder too: its read says what is wrong
        return from_file(path, limits, auto_orient)
    if not text.startswith("data:") and ("." in text or "\\" in text or text.startswith("~")):
        where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
        raise ImageLoadError(f"Image file {text!r} does not exist{where}.")
    try:
        return from_base64(text, limits, auto_orient)
    except ImageLoadError as exc:
        if len(text) > 256:  # long text is meant as base64: its own error says what is wrong
            raise
        raise ImageLoadError(f"{exc.cause} {text!r} is neither an existing image file nor base64 image "
                             "data.") from None


def load_image(source: Any, limits: ImageLimits = ImageLimits(), auto_orient: bool = True) -> np.ndarray:
    """Any accepted input to an H x W x 3 uint8 BGR array.

    A ``str`` is a URL when it starts with ``http://`` or ``https://``, a file path when such a file
    exists, and base64 text otherwise; where files may be read, a missing file is said to be missing
    ("photo.jpg"). ``bytes`` are an encoded image file.
    """
    if isinstance(source, np.ndarray):
        return from_array(source, limits)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return from_bytes(bytes(source), limits, auto_orient)
    if isinstance(source, Path):
        return from_file(source, limits, auto_orient)
    if isinstance(source, str):
        if source.startswith(("http://", "https://")):
            return from_url(source, limits, auto_orient)
        if len(source) < 4096 and limits.allow_files:
            return _from_path_or_base64(source, limits, auto_orient)
        return from_base64(source, limits, auto_orient)
    if _is_pil(source):
        return from_pil(source, limits, auto_orient)
    raise ImageLoadError(
        f"Image declaration contains not recognised image type ({type(source).__name__}); expected a "
        "numpy array, bytes, base64 text, a file path, a URL or a PIL image.")


NPY_MAGIC = b"\x93NUMPY"


def from_npy(data: bytes, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """A ``.npy`` file (uint8, H x W or H x W x {1,3}) parsed with pickling disallowed (docs/http-api.md §9.1)."""
    if not data.startswith(NPY_MAGIC):
        raise ImageLoadError("Could not deserialize pickle payload.")
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception:  # any malformed header or pickled object array
        raise ImageLoadError("Could not deserialize pickle payload.") from None
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8:
        raise ImageLoadError("Could not deserialize pickle payload.")
    return np.ascontiguousarray(from_array(array, limits))


NETWORK_ONLY_TYPES = ("multipart", "pil", "numpy_object", "file")


def from_declaration(kind: str, value: Any, limits: ImageLimits, auto_orient: bool = True,
                     allow_numpy: bool = False) -> np.ndarray:
    """The image object of the HTTP API (docs/http-api.md §2.1): ``{"type": kind, "value": value}``."""
    kind = kind.lower() if isinstance(kind, str) else ""
    if kind == "file":
        raise ImageLoadError("Loading images from local filesystem is disabled.")
    if kind in ("multipart", "pil", "numpy_object"):
        raise ImageLoadError(f"Image type '{kind}' can only be used in-process, not over HTTP.")
    if kind not in ("base64", "url", "numpy"):
        raise ImageLoadError("Image declaration contains not recognised image type.")
    if not isinstance(value, str):
        raise ImageLoadError(f"Image of type '{kind}' needs its value as a string.")
    if kind == "base64":
        return from_base64(value, limits, auto_orient)
    if kind == "url":
        return from_url(value, limits, auto_orient)
    if not allow_numpy:
        raise ImageLoadError("NumPy image type is not supported in this configuration of `inference`.")
    return from_npy(bytes_from_base64(value), limits)
