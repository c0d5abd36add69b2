"""Reading what a model file or folder says about itself, and turning it into a ``Manifest``.

Sources:
  * an ONNX file exported by ultralytics (YOLOv5u/v8/11: detect, segment, pose, classify): task,
    names, imgsz and kpt_shape come from its ``metadata_props``;
  * a Roboflow model folder (docs/http-api.md §10): model_type.json, environment.json, class_names.txt,
    weights.onnx | yolov5s_weights.onnx | best.onnx, keypoints_metadata.json;
  * a .zip or .tar(.gz) archive holding either of the above.
Every problem is a ``ModelImportError`` naming the file and what is wrong. Nothing here writes to the
store: ``store.ModelStore.install`` does that with the (manifest, onnx path) pair returned here.
"""

from __future__ import annotations

import ast
import errno
import json
import lzma
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, NoReturn

import engines
from edge_agent.errors import ModelImportError, UnsupportedModel
from edge_agent.store.manifest import Layout, Manifest, Preprocess, StaticCrop

if TYPE_CHECKING:
    from engines.ort import ModelInfo

ULTRALYTICS_TASKS = {
    "detect": "object-detection",
    "segment": "instance-segmentation",
    "pose": "keypoint-detection",
    "classify": "classification",
}
ROBOFLOW_WEIGHTS = ("weights.onnx", "yolov5s_weights.onnx", "best.onnx")
ROBOFLOW_TASKS = ("object-detection", "instance-segmentation", "keypoint-detection", "classification")


@dataclass
class Draft:
    """A manifest without its weights entry, plus the ONNX file it describes."""

    onnx: Path
    fields: dict[str, Any]


def _import_error(where: Path, text: str) -> ModelImportError:
    """``where: text`` for the log; the network caller sees the file's base name, not where it lies."""
    return ModelImportError(f"{where}: {text}", public=f"{where.name}: {text}")


def _literal(md: dict[str, str], key: str, where: Path) -> Any:
    try:
        return ast.literal_eval(md[key])
    except (ValueError, SyntaxError) as exc:
        raise _import_error(where, f"metadata {key!r} is not readable: {md[key]!r}") from exc


def _inspect(path: Path) -> ModelInfo:
    try:
        return engines.inspect_model(path)
    except engines.EngineError as exc:
        raise ModelImportError(str(exc), public=exc.public) from exc


def declared_output_shapes(onnx: Path) -> list[tuple[int | None, ...]]:
    """The output shapes ``onnx`` declares (None for a symbolic axis), for ``shape_problem``."""
    try:
        return [tuple(o.shape) for o in engines.inspect_model(onnx).outputs]
    except engines.EngineError as exc:
        raise ModelImportError(f"{onnx}: cannot read its output shapes: {exc}",
                               public=f"{onnx.name}: cannot read its output shapes: {exc.public}") from exc


def _names(raw: Any, where: Path) -> tuple[str, ...]:
    if isinstance(raw, dict):
        try:
            return tuple(str(raw[i]) for i in range(len(raw)))
        except KeyError:
            raise _import_error(where, f"class names are not numbered 0..{len(raw) - 1}") from None
    if isinstance(raw, (list, tuple)):
        return tuple(str(n) for n in raw)
    raise _import_error(where, f"class names must be a list or a dict, got {type(raw).__name__}")


def _input_size(info: Any, fallback: tuple[int, int] | None, where: Path) -> tuple[int, int, int | None]:
    shape = info.inputs[0].shape
    if len(shape) != 4 or shape[1] not in (3, None):
        raise _import_error(where, f"expected an image input [batch, 3, height, width], got {list(shape)}")
    h, w = shape[2], shape[3]
    if h is None or w is None:
        if fallback is None:
            raise _import_error(where, "the input size is symbolic and the model does not state it")
        h, w = fallback
    return int(h), int(w), shape[0]


def detect_layout(shape: tuple[int | None, ...], nc: int, extra: int, where: Path, hint: str | None = None) -> Layout:
    """Which detection layout a [B, a, b] output0 has, checked against the class count."""
    if len(shape) != 3:
        raise _import_error(where, f"output0 should have 3 dimensions, has shape {list(shape)}")
    _, a, b = shape
    fits = {
        "yolov8": a == 4 + nc + extra,
        "yolov5": b == 5 + nc + extra,
        "end2end": b == 6 + extra and (a is None or a <= 1000),
    }
    layouts: tuple[Layout, ...] = ("yolov8", "yolov5", "end2end")
    for layout in sorted(layouts, key=lambda name: name != hint):  # the hinted layout first
        if fits[layout]:
            return layout
    raise _import_error(
        where, f"output0 has shape {list(shape)}, which fits no known layout for {nc} classes and "
        f"{extra} extra values per box (yolov8 expects [B, {4 + nc + extra}, N], yolov5 [B, N, "
        f"{5 + nc + extra}], end2end [B, K, {6 + extra}]): do the class names match the model?")


def _task_extras(task: str, info: Any, kpt: tuple[int, int] | None, where: Path) -> dict[str, int]:
    if task == "instance-segmentation":
        if len(info.outputs) < 2 or len(info.outputs[1].shape) != 4:
            raise _import_error(where, "a segmentation model needs a prototype output [B, 32, H, W]")
        nm = info.outputs[1].shape[1]
        if not nm:
            raise _import_error(where, "prototype output has no fixed channel count")
        return {"mask_channels": int(nm)}
    if task == "keypoint-detection":
        if kpt is None:
            raise _import_error(where, "a keypoint model needs kpt_shape metadata, e.g. [17, 3]")
        return {"keypoints": int(kpt[0]), "keypoint_dims": int(kpt[1])}
    return {}


def _output_fields(task: str, info: Any, names: tuple[str, ...], kpt: tuple[int, int] | None,
                   where: Path, hint: str | None, multilabel: bool = False) -> dict[str, Any]:
    if task == "classification":
        shape = info.outputs[0].shape
        if len(shape) != 2 or shape[1] != len(names):
            raise _import_error(
                where, f"a classifier of {len(names)} classes should output [B, {len(names)}], got {list(shape)}")
        return {"layout": "probabilities"}
    extra = _task_extras(task, info, kpt, where)
    n_extra = extra.get("mask_channels", 0) + extra.get("keypoints", 0) * extra.get("keypoint_dims", 0)
    layout = detect_layout(info.outputs[0].shape, len(names), n_extra, where, hint)
    return {"layout": layout, **extra}


def from_ultralytics(path: Path, task: str | None = None, class_names: tuple[str, ...] | None = None) -> Draft:
    """An ultralytics ONNX export; ``task`` and ``class_names`` fill in for missing metadata."""
    info = _inspect(path)
    md = info.metadata
    if task is None:
        if "task" not in md:
            raise _import_error(
                path, "no 'task' in the ONNX metadata (not an ultralytics export?); give the task explicitly")
        if md["task"] not in ULTRALYTICS_TASKS:
            why = f"ultralytics task {md['task']!r} is not supported (supported: {', '.join(ULTRALYTICS_TASKS)})"
            raise UnsupportedModel(f"{path}: {why}", public=f"{path.name}: {why}")
        task = ULTRALYTICS_TASKS[md["task"]]
    if class_names is None:
        if "names" not in md:
            raise _import_error(path, "no 'names' in the ONNX metadata; give the class names explicitly")
        class_names = _names(_literal(md, "names", path), path)
    imgsz = _literal(md, "imgsz", path) if "imgsz" in md else None
    fallback = (int(imgsz[0]), int(imgsz[1])) if isinstance(imgsz, (list, tuple)) and len(imgsz) == 2 else None
    h, w, batch = _input_size(info, fallback, path)
    kpt = tuple(_literal(md, "kpt_shape", path)) if "kpt_shape" in md else None
    hint = "end2end" if md.get("end2end") == "True" else None
    output = _output_fields(task, info, class_names, kpt, path, hint)
    kpt_names: dict[int, tuple[str, ...]] = {}
    if "kpt_names" in md:
        raw = _literal(md, "kpt_names", path)
        kpt_names = {int(c): tuple(str(n) for n in v) for c, v in raw.items()}
    resize: Literal["center-crop", "letterbox"] = "center-crop" if task == "classification" else "letterbox"
    return Draft(path, {
        "task": task,
        "class_names": class_names,
        "input": {"width": w, "height": h, "batch": batch},
        "preprocess": Preprocess(resize=resize).model_dump(),
        "output": output,
        "keypoint_names": kpt_names,
        "source": {"kind": "ultralytics", "file": path.name,
                   **{k: md[k] for k in ("version", "author", "date", "description") if k in md}},
    })


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _import_error(path, "missing (required in a Roboflow model folder)") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise _import_error(path, f"not valid JSON: {exc}") from exc


def _roboflow_preprocess(steps: dict[str, Any], task: str, model_type: str, where: Path) -> dict[str, Any]:
    def on(key: str) -> dict[str, Any] | None:
        step = steps.get(key)
        return step if isinstance(step, dict) and step.get("enabled", True) not in (False, "false") else None

    resize_fmt = str((on("resize") or {}).get("format", "Stretch to"))
    pad = {"Fit (black edges) in": 0, "Fit (white edges) in": 255, "Fit (grey edges) in": 114}
    fields: dict[str, Any] = {"resize": "stretch", "color": "rgb", "auto_orient": "auto-orient" in steps}
    if resize_fmt in pad or resize_fmt in ("Fit (reflect edges) in", "Fit within", "Fill (with center crop) in"):
        fields["resize"], fields["pad_value"] = "letterbox", pad.get(resize_fmt, 0)
    crop = on("static-crop")
    if crop:
        try:
            fields["static_crop"] = StaticCrop(**{k: float(crop[k]) for k in ("x_min", "y_min", "x_max", "y_max")})
        except (KeyError, ValueError, TypeError) as exc:
            raise _import_error(where, f"static-crop step is invalid: {exc}") from exc
    contrast = on("contrast")
    if contrast:
        kinds = {"Contrast Stretching": "contrast-stretching", "Histogram Equalization": "histogram-equalization",
                 "Adaptive Equalization": "adaptive-equalization"}
        if contrast.get("type") not in kinds:
            raise _import_error(where, f"unknown contrast type {contrast.get('type')!r}")
        fields["contrast"] = kinds[contrast["type"]]
    fields["grayscale"] = on("grayscale") is not None
    if task == "classification":
        if model_type.startswith("resnet"):
            fields["mean"], fields["std"] = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        else:  # ViT and YOLOv8-cls as Roboflow serves them
            fields["mean"], fields["std"] = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    return Preprocess(**fields).model_dump()


def _keypoints_metadata(path: Path, classes: tuple[str, ...]) -> tuple[dict[int, tuple[str, ...]], dict[int, Any]]:
    entries = _read_json(path)
    names: dict[int, tuple[str, ...]] = {}
    edges: dict[int, Any] = {}
    if not isinstance(entries, list):
        raise _import_error(path, "expected a list of per-class entries")
    for entry in entries:
        try:
            cid = int(entry["object_class_id"])
            kp = entry["keypoints"]
            names[cid] = tuple(str(kp[str(i)]) for i in range(len(kp)))
            edges[cid] = tuple((int(e["from"]), int(e["to"])) for e in entry.get("edges", []))
        except (KeyError, TypeError, ValueError) as exc:
            raise _import_error(path, f"malformed entry {entry!r}: {exc}") from exc
    return names, edges


def from_roboflow(folder: Path) -> tuple[Draft, str | None]:
    """A Roboflow model cache folder; also returns the model id it names, if any."""
    model_type_doc = _read_json(folder / "model_type.json")
    env = _read_json(folder / "environment.json")
    task = model_type_doc.get("project_task_type")
    model_type = str(model_type_doc.get("model_type", ""))
    if task not in ROBOFLOW_TASKS:
        why = f"task {task!r} is not supported (supported: {', '.join(ROBOFLOW_TASKS)})"
        raise UnsupportedModel(f"{folder / 'model_type.json'}: {why}", public=f"model_type.json: {why}")
    onnx = next((folder / n for n in ROBOFLOW_WEIGHTS if (folder / n).is_file()), None)
    if onnx is None:
        raise _import_error(folder, f"no model weights (expected one of {', '.join(ROBOFLOW_WEIGHTS)})")
    steps = env.get("PREPROCESSING")
    if isinstance(steps, str):
        try:
            steps = json.loads(steps)
        except ValueError as exc:
            raise _import_error(folder / 'environment.json', "PREPROCESSING is not valid JSON") from exc
    if not isinstance(steps, dict):
        raise _import_error(folder / 'environment.json', "PREPROCESSING is missing (package broken)")
    names_file = folder / "class_names.txt"
    if names_file.is_file():
        classes = tuple(line.strip() for line in names_file.read_text(encoding="utf-8").splitlines() if line.strip())
    elif isinstance(env.get("CLASS_MAP"), dict):
        cmap = env["CLASS_MAP"]
        classes = tuple(str(cmap[str(i)]) for i in range(len(cmap)))
    else:
        raise _import_error(folder, "no class names (class_names.txt or CLASS_MAP in environment.json)")
    multilabel = bool(env.get("MULTICLASS", False))
    info = _inspect(onnx)
    resize: dict[str, Any] = steps["resize"] if isinstance(steps.get("resize"), dict) else {}
    fallback = (int(resize.get("height", 640)), int(resize.get("width", 640)))
    h, w, batch = _input_size(info, fallback, onnx)
    kpt_names: dict[int, tuple[str, ...]] = {}
    skeleton: dict[int, Any] = {}
    kpt = None
    if task == "keypoint-detection":
        kpt_names, skeleton = _keypoints_metadata(folder / "keypoints_metadata.json", classes)
        k = max((len(v) for v in kpt_names.values()), default=0)
        kpt = (k, 3)
    hint = "yolov5" if model_type.startswith("yolov5") else (
        "end2end" if model_type.startswith(("yolov10", "yolo26")) else "yolov8")
    output = _output_fields(task, info, classes, kpt, onnx, hint, multilabel)
    colors = {str(k): str(v) for k, v in (env.get("COLORS") or {}).items()}
    return Draft(onnx, {
        "task": task,
        "class_names": classes,
        "input": {"width": w, "height": h, "batch": batch},
        "preprocess": _roboflow_preprocess(steps, task, model_type, folder),
        "output": output,
        "multilabel": multilabel,
        "keypoint_names": kpt_names,
        "skeleton": skeleton,
        "colors": colors,
        "source": {"kind": "roboflow", "model_type": model_type, "file": onnx.name},
    }), model_type_doc.get("model_id")


def is_roboflow_folder(path: Path) -> bool:
    return path.is_dir() and (path / "model_type.json").is_file()


# -- archives ------------------------------------------------------------------------------------

MAX_UNPACKED_BYTES = 4 * 2**30  # never more than this from one archive, whatever its size
MAX_MEMBERS = 10_000  # files and folders in one archive
_UNPACK_HEADROOM = 64 * 2**20  # by default an archive may unpack to 4x its size plus this
# What a damaged or foreign file raises while it is read as an archive (zlib, gzip, bz2, lzma, zipfile
# and tarfile each have their own; gzip.BadGzipFile is an OSError, a truncated stream an EOFError).
_ARCHIVE_ERRORS = (EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError, zlib.error,
                   lzma.LZMAError, OSError, UnicodeDecodeError, NotImplementedError, ValueError)
_DEVICE_FULL = {errno.ENOSPC, errno.EDQUOT}  # the device's problem, not the archive's: not caught


def sniff_suffix(path: Path) -> str | None:
    """The archive kind ``path``'s first bytes show ('.zip', '.tar.gz' or '.tar'), else None (which
    does not make it an ONNX file: it is only not one of these archives)."""
    try:
        with path.open("rb") as f:
            head = f.read(262)
    except OSError:
        return None
    if head.startswith(b"PK\x03\x04"):
        return ".zip"
    if head.startswith(b"\x1f\x8b"):
        return ".tar.gz"
    if head[257:262] == b"ustar":
        return ".tar"
    return None


@contextmanager
def unpacked(path: Path, into: Path | None = None, *, max_bytes: int | None = None,
             max_members: int = MAX_MEMBERS) -> Iterator[Path]:
    """Extract a .zip or .tar(.gz, .bz2, .xz) archive into a new folder made inside ``into`` (the
    system temporary folder when None) and yield it, or the one folder the archive holds; the folder
    is removed on exit.

    Refused, as ``ModelImportError`` (and nothing left behind): a file that is no readable archive
    (truncated, bad CRC, not an archive at all), encrypted zip members, members with an absolute path
    or ``..``, links, devices and FIFOs, more than ``max_members`` members, and more than ``max_bytes``
    unpacked (default: 4x the archive's size + 64 MiB, at most ``MAX_UNPACKED_BYTES``; zip bombs).
    """
    if max_bytes is None:
        max_bytes = min(MAX_UNPACKED_BYTES, 4 * path.stat().st_size + _UNPACK_HEADROOM)
    if into is not None:
        into.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="unpack.", dir=into))
    try:
        _extract(path, tmp, _Budget(path, max_bytes, max_members))
        entries = [p for p in tmp.iterdir() if not p.name.startswith(".")]
        yield entries[0] if len(entries) == 1 and entries[0].is_dir() else tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class _Budget:
    """The bytes and members an archive may still unpack to."""

    archive: Path
    max_bytes: int
    max_members: int
    used_bytes: int = 0
    members: int = 0

    def member(self) -> None:
        self.members += 1
        if self.members > self.max_members:
            self.refuse(f"holds more than {self.max_members} members")

    def claim(self, size: int) -> None:
        self.used_bytes += size
        if self.used_bytes > self.max_bytes:
            self.refuse(f"unpacks to more than {self.max_bytes} bytes (the cap for this "
                        f"{self.archive.stat().st_size}-byte archive; a zip bomb?)")

    def copy(self, src: IO[bytes], dst: Path) -> None:
        with dst.open("wb") as out:
            while chunk := src.read(1 << 20):
                self.claim(len(chunk))
                out.write(chunk)

    def refuse(self, why: str) -> NoReturn:
        raise ModelImportError(f"{self.archive}: the archive {why}", public=f"the archive {why}")


# Image files by their first bytes: what people try to add by mistake (`models add picture.jpg`);
# the v1 route reads the same table (a WebP is told by ``image_kind``: RIFF, then WEBP at byte 8).
IMAGE_SIGNATURES = ((b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"GIF8", "a GIF image"),
                    (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"), (b"BM", "a BMP image"))
# The signatures that no base64 text can start with (bytes past ASCII): JPEG and PNG.
BINARY_IMAGE_SIGNATURES = tuple(magic for magic, _ in IMAGE_SIGNATURES if not magic.isascii())


def image_kind(head: bytes) -> str | None:
    """What image file ``head`` (its first 12 bytes or more) starts, as "a JPEG image"; None for none."""
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "a WebP image"
    return next((what for magic, what in IMAGE_SIGNATURES if head.startswith(magic)), None)


WHAT_ADD_TAKES = "a model is an .onnx file, a Roboflow model folder, or a .zip or .tar(.gz) of one"


def _not_a_model(path: Path) -> str | None:
    """What ``path`` is when its first bytes show an image (people try ``models add picture.jpg``), else None."""
    try:
        with path.open("rb") as f:
            head = f.read(16)
    except OSError:
        return None
    return image_kind(head)


def _extract(path: Path, dest: Path, budget: _Budget) -> None:
    kind = sniff_suffix(path)
    what = _not_a_model(path) if kind is None else None
    if what is not None:
        raise ModelImportError(f"{path}: this is {what}, not a model ({WHAT_ADD_TAKES})",
                               public=f"{path.name} is {what}, not a model ({WHAT_ADD_TAKES})")
    try:
        if kind == ".zip" or (kind is None and zipfile.is_zipfile(path)):
            with zipfile.ZipFile(path) as archive:
                _unzip(archive, dest, budget)
        else:
            with tarfile.open(path) as tar:
                _untar(tar, dest, budget)
    except ModelImportError:
        raise
    except _ARCHIVE_ERRORS as exc:
        if isinstance(exc, OSError) and exc.errno in _DEVICE_FULL:
            raise
        why: str | None = exc.strerror if isinstance(exc, OSError) and exc.filename else str(exc)
        if isinstance(exc, tarfile.ReadError) and kind is None:  # tarfile lists each compression it tried
            why = f"neither a zip nor a tar file (plain, .gz, .bz2 or .xz); {WHAT_ADD_TAKES}"
        why = (why or type(exc).__name__).replace(str(dest), "").replace(str(path), path.name)
        raise ModelImportError(f"{path}: not a readable .zip or .tar archive: {why}",
                               public=f"not a readable .zip or .tar archive: {why}") from exc


def _member_path(dest: Path, name: str, budget: _Budget) -> Path:
    """Where member ``name`` goes under ``dest``; refused when absolute or with a ``..``."""
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":"):
        budget.refuse(f"member {name!r} would be written outside the archive")
    target = dest.joinpath(*(p for p in parts if p not in ("", ".")))
    if not target.resolve().is_relative_to(dest.resolve()):
        budget.refuse(f"member {name!r} would be written outside the archive")
    return target


def _unzip(archive: zipfile.ZipFile, dest: Path, budget: _Budget) -> None:
    infos = archive.infolist()
    for info in infos:
        budget.member()
        _member_path(dest, info.filename, budget)
    if sum(i.file_size for i in infos) > budget.max_bytes:  # as declared: refused before unpacking
        budget.claim(sum(i.file_size for i in infos))
    for info in infos:
        mode = info.external_attr >> 16
        if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            budget.refuse(f"member {info.filename!r} is a link or a device, not a file")
        if info.flag_bits & 0x1:
            budget.refuse(f"member {info.filename!r} is encrypted")
        target = _member_path(dest, info.filename, budget)
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(info) as src:  # reads at most file_size bytes, then checks the CRC
            budget.copy(src, target)


def _untar(tar: tarfile.TarFile, dest: Path, budget: _Budget) -> None:
    for member in tar:  # one member at a time: a bomb is stopped before it is all read
        budget.member()
        target = _member_path(dest, member.name, budget)
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        if not member.isreg():
            budget.refuse(f"member {member.name!r} is a link or a device, not a file")
        if budget.used_bytes + member.size > budget.max_bytes:
            budget.claim(member.size)
        target.parent.mkdir(parents=True, exist_ok=True)
        src = tar.extractfile(member)
        if src is None:  # pragma: no cover - a regular member always has a file object
            budget.refuse(f"member {member.name!r} cannot be read")
        with src:
            budget.copy(src, target)


def shape_problem(manifest: Manifest, shapes: Sequence[Sequence[int | None]], where: Path) -> str | None:
    """Why output shapes (declared by an ONNX file, or those of a run) do not fit ``manifest``, or
    None: the layout rule of ``detect_layout`` with the manifest's class count, mask channels and
    keypoints, the classifier's [B, classes] and segmentation's prototype output."""
    nc, out = len(manifest.class_names), manifest.output
    if not shapes:
        return f"{where}: no outputs"
    first = list(shapes[0])
    if manifest.task == "classification":
        if len(first) != 2 or first[1] != nc:
            return f"{where}: a classifier of {nc} classes should output [B, {nc}], not {first}"
        return None
    extra = out.mask_channels + out.keypoints * out.keypoint_dims
    try:
        layout = detect_layout(tuple(shapes[0]), nc, extra, where, hint=out.layout)
    except ModelImportError as exc:
        return str(exc)
    if layout != out.layout:
        return f"{where}: output0 {first} has the {layout} layout, the manifest says {out.layout}"
    if manifest.task == "instance-segmentation" and (
            len(shapes) < 2 or len(shapes[1]) != 4 or shapes[1][1] != out.mask_channels):
        got = list(shapes[1]) if len(shapes) > 1 else "nothing"
        return f"{where}: the prototype output should be [B, {out.mask_channels}, H, W], not {got}"
    return None
