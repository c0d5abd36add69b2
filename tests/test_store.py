"""The model store: imports from each source, atomic installs, and a typed error for each problem."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import tempfile
import zipfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.errors import InvalidModelId, ModelImportError, ModelLoadFailed, ModelNotFound, UnsupportedModel
from edge_agent.serving.loading import load_stored
from edge_agent.store import importers
from edge_agent.store.model_store import ModelStore
from onnx_builders import constant_model, ultralytics_metadata


def _store_entries(store: ModelStore) -> list[str]:
    if not store.root.exists():
        return []
    return sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*")
                  if p.is_file() and ".trash" not in p.parts and p.name != ".usage.json")


def test_ultralytics_import_reads_metadata(store: ModelStore, detector_onnx: Path) -> None:
    manifest = store.install(detector_onnx, "det/1")
    assert manifest.task == "object-detection"
    assert manifest.class_names == ("a", "b")
    assert (manifest.input.width, manifest.input.height, manifest.input.batch) == (64, 64, None)
    assert manifest.preprocess.resize == "letterbox"
    assert manifest.preprocess.pad_value == 114
    assert manifest.source["kind"] == "ultralytics"
    assert _store_entries(store) == ["det/1/model.json", "det/1/model.onnx"]
    on_disk = json.loads((store.root / "det/1/model.json").read_text())
    assert len(on_disk["weights"]["sha256"]) == 64
    assert [s.manifest.model_id for s in store.list() if not s.builtin] == ["det/1"]


def test_duplicate_install_refused_unless_replaced(store: ModelStore, detector_onnx: Path) -> None:
    store.install(detector_onnx, "det/1")
    with pytest.raises(ModelImportError, match="already installed"):
        store.install(detector_onnx, "det/1")
    store.install(detector_onnx, "det/1", replace=True)
    assert _store_entries(store) == ["det/1/model.json", "det/1/model.onnx"]


def test_plain_onnx_needs_task_and_classes(store: ModelStore, tmp_path: Path) -> None:
    out = np.zeros((7, 4), np.float32)
    path = constant_model(tmp_path / "plain.onnx", {"output0": out})
    with pytest.raises(ModelImportError, match="no 'task' in the ONNX metadata"):
        store.install(path, "plain/1")
    with pytest.raises(ModelImportError, match="no 'names'"):
        store.install(path, "plain/1", task="object-detection")
    manifest = store.install(path, "plain/1", task="object-detection", class_names=("x", "y", "z"))
    assert manifest.output.layout == "yolov8"


def _garbage(tmp_path: Path) -> Path:
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"\x08\x07this is not a protobuf" * 20)
    return path


def _truncated(tmp_path: Path, detector_onnx: Path) -> Path:
    path = tmp_path / "truncated.onnx"
    path.write_bytes(detector_onnx.read_bytes()[:200])
    return path


def _wrong_classes(tmp_path: Path) -> Path:
    return constant_model(tmp_path / "wrong.onnx", {"output0": np.zeros((9, 4), np.float32)},
                          metadata=ultralytics_metadata("detect", ["a", "b"], (64, 64)))


def _obb(tmp_path: Path) -> Path:
    return constant_model(tmp_path / "obb.onnx", {"output0": np.zeros((7, 4), np.float32)},
                          metadata=ultralytics_metadata("obb", ["a", "b"], (64, 64)))


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda tmp, det: _garbage(tmp), ModelImportError, r"garbage\.onnx: not a valid ONNX model"),
        (lambda tmp, det: _truncated(tmp, det), ModelImportError, r"truncated\.onnx: not a valid ONNX model"),
        (lambda tmp, det: _wrong_classes(tmp), ModelImportError, r"wrong\.onnx: output0 has shape \[None, 9, 4\]"),
        (lambda tmp, det: _obb(tmp), UnsupportedModel, r"task 'obb' is not supported"),
        (lambda tmp, det: tmp / "nothing.onnx", ModelImportError, "no such file"),
    ],
    ids=["garbage", "truncated", "class-count-mismatch", "unsupported-task", "missing"],
)
def test_bad_models_leave_the_store_as_it_was(store: ModelStore, tmp_path: Path, detector_onnx: Path,
                                              make, error, message) -> None:  # type: ignore[no-untyped-def]
    store.install(detector_onnx, "good/1")
    before = _store_entries(store)
    with pytest.raises(error, match=message):
        store.install(make(tmp_path, detector_onnx), "bad/1")
    assert _store_entries(store) == before
    staging = store.root / ".staging"
    if staging.exists():
        assert not list(staging.iterdir())


@pytest.mark.parametrize("model_id", ["nover", "a/b/c", "../x", "a/..", "a b/1", "/1", ""])
def test_invalid_model_ids(store: ModelStore, model_id: str) -> None:
    with pytest.raises(InvalidModelId, match="expected '<project>/<version>'"):
        store.get(model_id)


def test_unknown_model(store: ModelStore) -> None:
    with pytest.raises(ModelNotFound, match="'nope/1' is not in the model store"):
        load_stored(store, "nope/1")


def test_corrupt_weights_are_detected_at_load(store: ModelStore, detector_onnx: Path) -> None:
    store.install(detector_onnx, "det/1")
    onnx = store.root / "det/1/model.onnx"
    data = bytearray(onnx.read_bytes())
    data[-5] ^= 0xFF
    onnx.write_bytes(bytes(data))
    with pytest.raises(ModelLoadFailed, match="checksum mismatch"):
        load_stored(store, "det/1")


def test_broken_manifest_names_the_file_and_key(store: ModelStore, detector_onnx: Path) -> None:
    store.install(detector_onnx, "det/1")
    path = store.root / "det/1/model.json"
    doc = json.loads(path.read_text())
    doc["task"] = "telepathy"
    doc["surprise"] = 1
    path.write_text(json.dumps(doc))
    with pytest.raises(ModelLoadFailed, match=r"model\.json: invalid model\.json: task: .*surprise"):
        store.get("det/1")


def test_remove_and_builtin_protection(tmp_path: Path, detector_onnx: Path) -> None:
    builtin = ModelStore(tmp_path / "builtin", builtin_root=None)
    builtin.install(detector_onnx, "demo/1")
    store = ModelStore(tmp_path / "user", builtin_root=tmp_path / "builtin")
    store.install(detector_onnx, "mine/1")
    assert sorted((s.manifest.model_id, s.builtin) for s in store.list()) == [("demo/1", True), ("mine/1", False)]
    with pytest.raises(ModelImportError, match="built-in demo model and cannot be removed"):
        store.remove("demo/1")
    with pytest.raises(ModelImportError, match="built-in demo model id"):
        store.install(detector_onnx, "demo/1")
    store.remove("mine/1")
    assert not (tmp_path / "user" / "mine").exists()
    with pytest.raises(ModelNotFound):
        store.get("mine/1")


def roboflow_folder(root: Path, onnx_source: Path, task: str = "object-detection", model_type: str = "yolov8n",
                    classes: tuple[str, ...] = ("a", "b"), preprocessing: dict | None = None,
                    extra_env: dict | None = None, weights: str = "weights.onnx") -> Path:
    root.mkdir(parents=True)
    (root / weights).write_bytes(onnx_source.read_bytes())
    (root / "model_type.json").write_text(json.dumps(
        {"project_task_type": task, "model_type": model_type, "model_id": "rf-project/7"}))
    steps = preprocessing if preprocessing is not None else {
        "auto-orient": {"enabled": True},
        "resize": {"enabled": True, "width": "64", "height": "64", "format": "Fit (black edges) in"},
    }
    env = {"PREPROCESSING": json.dumps(steps), "COLORS": {"a": "#FF0000"}, **(extra_env or {})}
    (root / "environment.json").write_text(json.dumps(env))
    (root / "class_names.txt").write_text("\n".join(classes) + "\n")
    return root


def test_roboflow_folder_keeps_its_preprocessing(store: ModelStore, tmp_path: Path, detector_onnx: Path) -> None:
    folder = roboflow_folder(tmp_path / "rf", detector_onnx, preprocessing={
        "auto-orient": {"enabled": True},
        "static-crop": {"enabled": True, "x_min": "50", "y_min": "0", "x_max": "100", "y_max": "100"},
        "resize": {"enabled": True, "width": "64", "height": "64", "format": "Fit (black edges) in"},
    })
    manifest = store.install(folder)  # the folder names its own id
    assert manifest.model_id == "rf-project/7"
    pre = manifest.preprocess
    assert (pre.resize, pre.pad_value, pre.auto_orient) == ("letterbox", 0, True)
    assert pre.static_crop is not None
    assert pre.static_crop.x_min == 50
    assert manifest.colors == {"a": "#FF0000"}
    assert manifest.source["kind"] == "roboflow"
    model = load_stored(store, "rf-project/7")
    # 512x128 image, right half kept: a 256x128 crop letterboxed to 64 (scale 0.25, 16 px pad),
    # then shifted by the 256 px crop offset.
    r = model.infer_numpy(np.zeros((128, 512, 3), np.uint8))
    np.testing.assert_allclose(r.xyxy[0], [88 + 256, 44, 168 + 256, 84], atol=1e-4)
    r = model.infer_numpy(np.zeros((128, 512, 3), np.uint8), disable_preproc_static_crop=True)
    assert r.xyxy[0][0] < 256


def test_roboflow_keypoints_and_stretch(store: ModelStore, tmp_path: Path) -> None:
    out = np.zeros((4 + 1 + 9, 1), np.float32)
    out[:5, 0] = [32, 32, 40, 40, 0.9]
    out[5:, 0] = [10, 10, 0.9, 20, 20, 0.9, 30, 30, 0.9]
    onnx = constant_model(tmp_path / "pose.onnx", {"output0": out})
    folder = roboflow_folder(tmp_path / "rfpose", onnx, task="keypoint-detection", classes=("person",),
                             preprocessing={"resize": {"width": 64, "height": 64, "format": "Stretch to"}})
    (folder / "keypoints_metadata.json").write_text(json.dumps([
        {"object_class_id": 0, "object_class": "person", "keypoints": {"0": "head", "1": "hand"},
         "edges": [{"from": 0, "to": 1}]}]))
    # 3 keypoint slots in the network, 2 named: importing sees K = 2 named but the layout needs 3.
    with pytest.raises(ModelImportError, match="fits no known layout"):
        store.install(folder, "pose/1")
    meta = json.loads((folder / "keypoints_metadata.json").read_text())
    meta[0]["keypoints"]["2"] = "foot"
    (folder / "keypoints_metadata.json").write_text(json.dumps(meta))
    manifest = store.install(folder, "pose/1")
    assert manifest.preprocess.resize == "stretch"
    assert manifest.preprocess.auto_orient is False
    assert manifest.keypoint_names == {0: ("head", "hand", "foot")}
    assert manifest.skeleton == {0: ((0, 1),)}
    r = load_stored(store, "pose/1").infer_numpy(np.zeros((128, 256, 3), np.uint8))
    np.testing.assert_allclose(r.keypoints[0, :, :2], [[40, 20], [80, 40], [120, 60]], atol=1e-4)


def test_roboflow_folder_problems(store: ModelStore, tmp_path: Path, detector_onnx: Path) -> None:
    folder = roboflow_folder(tmp_path / "rf", detector_onnx)
    (folder / "environment.json").write_text(json.dumps({"CLASS_MAP": {"0": "a"}}))
    with pytest.raises(ModelImportError, match="PREPROCESSING is missing"):
        store.install(folder)
    (folder / "model_type.json").write_text(json.dumps({"project_task_type": "semantic-segmentation"}))
    with pytest.raises(UnsupportedModel, match="semantic-segmentation"):
        store.install(folder)
    (folder / "model_type.json").unlink()
    (folder / "weights.onnx").unlink()
    with pytest.raises(ModelImportError, match="expected a Roboflow model folder"):
        store.install(folder, "x/1")


def test_archives(store: ModelStore, tmp_path: Path, detector_onnx: Path) -> None:
    folder = roboflow_folder(tmp_path / "pkg" / "rf", detector_onnx)
    with zipfile.ZipFile(tmp_path / "m.zip", "w") as z:
        for f in folder.iterdir():
            z.write(f, f"rf/{f.name}")
    assert store.install(tmp_path / "m.zip", "zipped/1").model_id == "zipped/1"
    with tarfile.open(tmp_path / "m.tar.gz", "w:gz") as t:
        t.add(detector_onnx, "model.onnx")
    assert store.install(tmp_path / "m.tar.gz", "tarred/1").task == "object-detection"
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as z:
        z.writestr("../../escaped.onnx", b"x")
    with pytest.raises(ModelImportError, match="outside the archive"):
        store.install(tmp_path / "evil.zip", "evil/1")
    (tmp_path / "junk.bin").write_bytes(b"junk")
    with pytest.raises(ModelImportError, match="not a readable .zip or .tar archive"):
        store.install(tmp_path / "junk.bin", "junk/1")


def test_update_descriptive_fields(store: ModelStore, detector_onnx: Path) -> None:
    store.install(detector_onnx, "det/1")
    updated = store.update("det/1", colors={"a": "#00FF00"}, class_names=("cat", "dog"))
    assert store.get("det/1").manifest == updated
    assert updated.class_names == ("cat", "dog")
    with pytest.raises(ModelImportError, match="weights and model_id cannot be updated"):
        store.update("det/1", weights={"file": "x", "sha256": "0" * 64, "bytes": 1})
    with pytest.raises(ModelImportError, match="invalid update"):
        store.update("det/1", task="telepathy")


def _end2end_onnx(tmp_path: Path) -> Path:
    """An end-to-end detector (output [B, K, 6]): its output shape does not depend on the class count."""
    return constant_model(tmp_path / "e2e.onnx", {"output0": np.zeros((5, 6), np.float32)},
                          metadata=ultralytics_metadata("detect", ["a", "b"], (64, 64), end2end="True"))


@pytest.mark.parametrize(("model", "changes", "expected"), [
    ("yolov8", {"class_names": ("cat", "dog")}, nullcontext()),
    ("yolov8", {"class_names": ("a", "b", "c")},
     pytest.raises(ModelImportError, match=r"no longer match .* fits no known layout for 3 classes")),
    ("yolov8", {"class_names": ("a",)}, pytest.raises(ModelImportError, match="no known layout for 1 classes")),
    ("yolov8", {"output": {"layout": "yolov5"}},
     pytest.raises(ModelImportError, match="has the yolov8 layout, the manifest says yolov5")),
    ("yolov8", {"task": "keypoint-detection", "output": {"layout": "yolov8", "keypoints": 17}},
     pytest.raises(ModelImportError, match="51 extra values per box")),
    ("yolov8", {"task": "classification", "output": {"layout": "probabilities"}},
     pytest.raises(ModelImportError, match=r"a classifier of 2 classes should output \[B, 2\]")),
    ("end2end", {"class_names": ("a", "b", "c")}, nullcontext()),
])
def test_update_checks_the_output_layout_against_the_onnx(store: ModelStore, detector_onnx: Path, tmp_path: Path,
                                                          model: str, changes: dict[str, Any], expected: Any) -> None:
    store.install(detector_onnx if model == "yolov8" else _end2end_onnx(tmp_path), "det/1")
    before = (store.root / "det/1/model.json").read_bytes()
    with expected:
        store.update("det/1", **changes)
    if isinstance(expected, nullcontext):
        assert store.get("det/1").manifest.class_names == changes["class_names"]
    else:
        assert (store.root / "det/1/model.json").read_bytes() == before  # refused: nothing written


def test_list_and_disk_state_ignore_work_in_flight(store: ModelStore, detector_onnx: Path) -> None:
    store.install(detector_onnx, "det/1")
    staged = store.stage(detector_onnx, "det/2")  # a candidate being checked: not installed yet
    assert [s.manifest.model_id for s in store.list() if not s.builtin] == ["det/1"]
    with pytest.raises(ModelNotFound):
        store.get("det/2")
    store.clean()  # at start: whatever was in flight is gone, the installed model stays
    assert not staged.path.exists()
    assert store.verified_onnx("det/1")[0].model_id == "det/1"


def test_install_with_replace_keeps_the_old_version_for_rollback(store: ModelStore, detector_onnx: Path,
                                                                   tmp_path: Path) -> None:
    store.install(detector_onnx, "det/1")
    other = constant_model(tmp_path / "other.onnx", {"output0": np.zeros((6, 5), np.float32)},
                           metadata=ultralytics_metadata("detect", ["a", "b"], (64, 64)))
    store.install(other, "det/1", replace=True)
    assert [r.sha256 for r in store.revisions("det/1")] == [hashlib.sha256(detector_onnx.read_bytes()).hexdigest()]
    store.remove("det/1")
    assert store.revisions("det/1") == []
    assert not (store.root / ".revisions" / "det").exists()


# -- damaged and hostile archives -----------------------------------------------------------------


@pytest.fixture
def system_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The system temporary folder, for this test an empty one of its own."""
    folder = tmp_path / "system-tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _tar_gz(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


def _truncated_tar_gz(tmp: Path, det: Path) -> Path:
    whole = _tar_gz(tmp / "whole.tar.gz", {"model.onnx": det.read_bytes() + np.random.default_rng(0).bytes(4096)})
    path = tmp / "truncated.tar.gz"
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    return path


def _bad_crc_zip(tmp: Path, det: Path) -> Path:
    path = tmp / "bad-crc.zip"
    onnx = det.read_bytes()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("model.onnx", onnx)
    data = bytearray(path.read_bytes())
    data[data.find(onnx) + len(onnx) // 2] ^= 0xFF  # stored as is: flip a byte of the member
    path.write_bytes(bytes(data))
    return path


def _not_a_zip(tmp: Path, det: Path) -> Path:
    path = tmp / "model.zip"
    path.write_bytes(b"this is no zip file, whatever its name says\n" * 20)
    return path


def _tar_with(tmp: Path, name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> Path:
    path = tmp / "hostile.tar"
    with tarfile.open(path, "w") as t:
        t.addfile(tarfile.TarInfo("ok.txt"), io.BytesIO(b""))
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, link
        t.addfile(info, io.BytesIO(b""))
    return path


def _bomb(tmp: Path, det: Path) -> Path:
    path = tmp / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("model.onnx", bytes(80 * 2**20))  # 80 MiB of zeros in about 80 kB
    return path


@pytest.mark.parametrize(("make", "message"), [
    (_truncated_tar_gz, "not a readable .zip or .tar archive"),
    (_bad_crc_zip, r"not a readable .zip or .tar archive: Bad CRC-32 for file 'model.onnx'"),
    (_not_a_zip, "not a readable .zip or .tar archive"),
    (lambda tmp, det: _tar_gz(tmp / "up.tar.gz", {"../escaped.onnx": det.read_bytes()}),
     r"member '../escaped.onnx' would be written outside the archive"),
    (lambda tmp, det: _tar_gz(tmp / "abs.tar.gz", {"/etc/model.onnx": det.read_bytes()}),
     "would be written outside the archive"),
    (lambda tmp, det: _tar_with(tmp, "model.onnx", tarfile.SYMTYPE, "/etc/passwd"), "is a link or a device"),
    (lambda tmp, det: _tar_with(tmp, "model.onnx", tarfile.LNKTYPE, "ok.txt"), "is a link or a device"),
    (lambda tmp, det: _tar_with(tmp, "null", tarfile.CHRTYPE), "is a link or a device"),
    (_bomb, r"unpacks to more than \d+ bytes .*zip bomb"),
], ids=["truncated-tar-gz", "bad-crc-zip", "not-a-zip", "dotdot-member", "absolute-member", "symlink",
        "hard-link", "device", "over-the-cap"])
def test_bad_archives_leave_nothing_behind(store: ModelStore, tmp_path: Path, detector_onnx: Path, system_tmp: Path,
                                           make, message: str) -> None:  # type: ignore[no-untyped-def]
    store.install(detector_onnx, "good/1")
    before = _store_entries(store)
    archive = make(tmp_path, detector_onnx)
    with pytest.raises(ModelImportError, match=message) as caught:
        store.install(archive, "bad/1")
    assert str(tmp_path) not in caught.value.public  # no local path for a network caller
    assert _store_entries(store) == before
    assert list((store.root / ".staging").iterdir()) == []
    assert list(system_tmp.iterdir()) == []
    store.clean()
    assert not (store.root / ".staging").exists()
    assert store.verified_onnx("good/1")[0].model_id == "good/1"


def test_unpack_caps_members_and_bytes(tmp_path: Path, detector_onnx: Path) -> None:
    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as z:
        for i in range(5):
            z.writestr(f"f{i}.txt", b"x" * 100)
    with pytest.raises(ModelImportError, match="holds more than 3 members"):
        with importers.unpacked(many, tmp_path / "into", max_members=3):
            pass
    with pytest.raises(ModelImportError, match="unpacks to more than 499 bytes"):
        with importers.unpacked(many, tmp_path / "into", max_bytes=499):
            pass
    tarred = _tar_gz(tmp_path / "m.tar.gz", {f"f{i}.txt": b"x" * 100 for i in range(5)})
    with pytest.raises(ModelImportError, match="unpacks to more than 499 bytes"):
        with importers.unpacked(tarred, tmp_path / "into", max_bytes=499):
            pass
    with importers.unpacked(tarred, tmp_path / "into", max_bytes=500) as folder:
        assert folder.parent == tmp_path / "into"
        assert len(list(folder.iterdir())) == 5
    assert list((tmp_path / "into").iterdir()) == []


def test_sniff_suffix(tmp_path: Path, detector_onnx: Path) -> None:
    with zipfile.ZipFile(tmp_path / "a", "w") as z:
        z.writestr("x", b"x")
    with tarfile.open(tmp_path / "b", "w") as t:
        t.add(detector_onnx, "model.onnx")
    _tar_gz(tmp_path / "c", {"x": b"x"})
    assert [importers.sniff_suffix(tmp_path / n) for n in "abc"] == [".zip", ".tar", ".tar.gz"]
    assert importers.sniff_suffix(detector_onnx) is None  # not an archive (which does not make it ONNX)
    assert importers.sniff_suffix(tmp_path / "missing") is None


def test_archive_named_onnx_is_read_as_an_archive(store: ModelStore, tmp_path: Path, detector_onnx: Path,
                                                  system_tmp: Path) -> None:
    folder = roboflow_folder(tmp_path / "pkg" / "rf", detector_onnx)
    with zipfile.ZipFile(tmp_path / "package.onnx", "w") as z:  # how a download of unknown kind is named
        for f in folder.iterdir():
            z.write(f, f"rf/{f.name}")
    assert store.install(tmp_path / "package.onnx", "zipped/1").source["kind"] == "roboflow"
    _tar_gz(tmp_path / "upload.onnx", {"model.onnx": detector_onnx.read_bytes()})
    assert store.install(tmp_path / "upload.onnx", "tarred/1").source["kind"] == "ultralytics"
    with zipfile.ZipFile(tmp_path / "nested.zip", "w") as z:  # an archive inside one is not unpacked
        z.write(tmp_path / "package.onnx", "model.onnx")
    with pytest.raises(ModelImportError, match="not a valid ONNX model"):
        store.install(tmp_path / "nested.zip", "nested/1")
    assert list((store.root / ".staging").iterdir()) == []
    assert list(system_tmp.iterdir()) == []
