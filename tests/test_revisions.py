"""Store revisions, rollback, crash repair, last use and eviction; the checks before a version serves."""

from __future__ import annotations

import json
import os
import tarfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge_agent.errors import ActivationRefused, ChecksumMismatch, ModelImportError, ModelNotFound
from edge_agent.provisioning.checks import CheckReport, check_candidate, golden_images, require_ok
from edge_agent.serving.loading import load_model, load_stored
from edge_agent.serving.manager import ModelManager
from edge_agent.serving.model import Model
from edge_agent.store.model_store import STAMP_FORMAT, ModelStore, Staged, sha256_of
from edge_agent.store.usage import Usage
from onnx_builders import constant_model, ultralytics_metadata


def det_onnx(path: Path, dx: float = 0.0, score: float = 0.9, names: tuple[str, ...] = ("a", "b"),
             value: float | None = None) -> Path:
    """A 64x64 yolov8 detector with a box of class 0 at x = 32 + dx and one of class 1 (fixed)."""
    out = np.zeros((4 + len(names), 2), np.float32)
    out[:4, 0], out[4, 0] = [32 + dx, 32, 20, 10], score
    out[:4, 1], out[5, 1] = [10, 30, 8, 8], 0.7
    if value is not None:
        out[:] = value
    return constant_model(path, {"output0": out}, metadata=ultralytics_metadata("detect", list(names), (64, 64)))


@pytest.fixture
def versions(tmp_path: Path) -> list[Path]:
    """Four different versions of one detector (the box moves)."""
    return [det_onnx(tmp_path / f"v{i}.onnx", dx=i) for i in range(4)]


def entries(store: ModelStore) -> dict[str, bytes]:
    """Every file of the store (but the usage record) with its bytes."""
    return {str(p.relative_to(store.root)): p.read_bytes() for p in sorted(store.root.rglob("*"))
            if p.is_file() and p.name != ".usage.json"}


def current_sha(store: ModelStore, model_id: str = "det/1") -> str:
    return store.verified_onnx(model_id)[0].weights.sha256


def assert_clean(store: ModelStore) -> None:
    """Nothing in flight is left: no staging, trash, half-made or replaced revision folders."""
    leftovers = [p for p in store.root.rglob("*") if p.name.startswith((".tmp", ".replaced"))
                 or p.parent in (store.root / ".trash", store.root / ".staging")]
    assert leftovers == []


# -- staging and committing ----------------------------------------------------------------------


def test_stage_touches_nothing_until_commit(store: ModelStore, versions: list[Path]) -> None:
    store.install(versions[0], "det/1")
    before = entries(store)
    staged = store.stage(versions[1], "det/1", sha256=sha256_of(versions[1]))
    assert isinstance(staged, Staged)
    assert staged.path.parent == store.root / ".staging"
    assert current_sha(store) == sha256_of(versions[0])
    assert [s.manifest.model_id for s in store.list() if not s.builtin] == ["det/1"]  # not the staged one
    assert {k: v for k, v in entries(store).items() if ".staging" not in k} == before
    manifest = store.commit(staged)
    assert manifest.weights.sha256 == current_sha(store) == sha256_of(versions[1])
    assert (store.root / "det/1/model.onnx").read_bytes() == versions[1].read_bytes()
    [revision] = store.revisions("det/1")
    assert revision.sha256 == sha256_of(versions[0])
    assert revision.model_id == "det/1"
    assert sorted(p.name for p in revision.path.iterdir()) == ["model.json", "model.onnx"]
    assert revision.path.name == f"{revision.stamp}-{revision.sha256[:12]}"
    assert_clean(store)


def test_keep_revisions_prunes_the_oldest(tmp_path: Path, versions: list[Path]) -> None:
    store = ModelStore(tmp_path / "models", keep_revisions=2)
    for path in versions:
        store.commit(store.stage(path, "det/1"))
    assert current_sha(store) == sha256_of(versions[3])
    assert [r.sha256 for r in store.revisions("det/1")] == [sha256_of(versions[2]), sha256_of(versions[1])]
    stamps = [r.stamp for r in store.revisions("det/1")]
    assert stamps == sorted(stamps, reverse=True)
    ModelStore(tmp_path / "models", keep_revisions=1).clean()  # a lower setting applies at start
    assert len(ModelStore(tmp_path / "models").revisions("det/1")) == 1


def test_rollback_restores_bytes_and_toggles(store: ModelStore, versions: list[Path]) -> None:
    store.install(versions[0], "det/1")
    store.install(versions[1], "det/1", replace=True)
    assert store.rollback("det/1").weights.sha256 == sha256_of(versions[0])
    assert (store.root / "det/1/model.onnx").read_bytes() == versions[0].read_bytes()
    assert [r.sha256 for r in store.revisions("det/1")] == [sha256_of(versions[1])]
    assert store.rollback("det/1").weights.sha256 == sha256_of(versions[1])  # the rollback rolled back
    assert [r.sha256 for r in store.revisions("det/1")] == [sha256_of(versions[0])]
    assert current_sha(store) == sha256_of(versions[1])
    assert_clean(store)


def test_rollback_to_a_named_revision(store: ModelStore, versions: list[Path]) -> None:
    for path in versions[:3]:
        store.install(path, "det/1", replace=True)
    oldest = store.revisions("det/1")[-1]
    assert store.rollback("det/1", to=oldest.sha256[:10]).weights.sha256 == sha256_of(versions[0])
    newest = store.revisions("det/1")[0]
    assert newest.sha256 == sha256_of(versions[2])
    assert store.rollback("det/1", to=newest.stamp).weights.sha256 == sha256_of(versions[2])


@pytest.mark.parametrize(("model_id", "to", "error", "message"), [
    ("det/1", None, ModelNotFound, "no earlier version is kept"),
    ("nope/1", None, ModelNotFound, "'nope/1' is not in the model store"),
    ("shapes/1", None, ModelImportError, "built-in demo model id"),
    ("det/2", "ffff", ModelNotFound, "no kept revision matches 'ffff'"),
    ("det/2", " ", ModelImportError, "name the revision by its stamp or sha256"),
])
def test_nothing_to_roll_back_to(store: ModelStore, versions: list[Path], model_id: str, to: str | None,
                                 error: type[Exception], message: str) -> None:
    store.install(versions[0], "det/1")
    store.install(versions[0], "det/2")
    store.install(versions[1], "det/2", replace=True)
    before = entries(store)
    with pytest.raises(error, match=message):
        store.rollback(model_id, to)
    assert entries(store) == before
    assert_clean(store)


def test_staged_revision_is_hard_linked_and_checkable(store: ModelStore, versions: list[Path]) -> None:
    store.install(versions[0], "det/1")
    store.install(versions[1], "det/1", replace=True)
    staged = store.stage_revision("det/1")
    revision = store.revisions("det/1")[0]
    assert (staged.path / "model.onnx").stat().st_ino == (revision.path / "model.onnx").stat().st_ino
    candidate = load_model(staged.manifest, staged.onnx)
    assert candidate.manifest.weights.sha256 == sha256_of(versions[0])
    assert check_candidate(candidate, serving=load_stored(store, "det/1"), images=[]).ok
    store.discard(staged)
    assert current_sha(store) == sha256_of(versions[1])
    assert len(store.revisions("det/1")) == 1
    assert_clean(store)


def test_wrong_sha256_is_refused_and_changes_nothing(store: ModelStore, versions: list[Path],
                                                     tmp_path: Path) -> None:
    store.install(versions[0], "det/1")
    before = entries(store)
    with pytest.raises(ChecksumMismatch, match="sha256 is .*, expected 0000"):
        store.stage(versions[1], "det/1", sha256="0" * 64)
    archive = tmp_path / "m.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        t.add(versions[1], "model.onnx")
    with pytest.raises(ChecksumMismatch):  # an archive is checked as the file it is, not its contents
        store.stage(archive, "det/1", sha256=sha256_of(versions[1]))
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(versions[1].read_bytes())
    with pytest.raises(ChecksumMismatch):
        store.stage(folder, "det/1", sha256=sha256_of(versions[2]))
    assert entries(store) == before
    assert_clean(store)
    store.discard(store.stage(archive, "det/1", sha256=sha256_of(archive).upper()))
    store.discard(store.stage(folder, "det/1", sha256=sha256_of(versions[1])))  # a folder: its ONNX file


def test_builtin_ids_cannot_be_staged_or_committed(store: ModelStore, versions: list[Path]) -> None:
    with pytest.raises(ModelImportError, match="built-in demo model id"):
        store.stage(versions[0], "shapes/1")
    assert store.revisions("shapes/1") == []


def test_install_keeps_replace_semantics(store: ModelStore, versions: list[Path]) -> None:
    store.install(versions[0], "det/1")
    with pytest.raises(ModelImportError, match="already installed"):
        store.install(versions[1], "det/1")
    store.install(versions[0], "det/1", replace=True)
    assert store.revisions("det/1") == []  # the same version again is not an earlier one
    store.install(versions[1], "det/1", replace=True)
    assert [r.sha256 for r in store.revisions("det/1")] == [sha256_of(versions[0])]
    store.install(versions[0], "det/1", replace=True)  # back to v0: its old copy is not kept twice
    assert [r.sha256 for r in store.revisions("det/1")] == [sha256_of(versions[1])]
    assert_clean(store)


def test_kept_without_activating_then_activated(store: ModelStore, versions: list[Path]) -> None:
    store.install(versions[0], "det/1")
    kept = store.commit(store.stage(versions[1], "det/1"), current=False)
    assert current_sha(store) == sha256_of(versions[0])
    assert kept.sha256 == sha256_of(versions[1])
    assert store.revisions("det/1")[0] == kept
    with pytest.raises(ModelImportError, match="already installed; nothing to keep"):
        store.commit(store.stage(versions[0], "det/1"), current=False)
    assert store.rollback("det/1", to=kept.stamp).weights.sha256 == sha256_of(versions[1])
    assert [r.sha256 for r in store.revisions("det/1")] == [sha256_of(versions[0])]
    assert_clean(store)


def test_remove_takes_the_revisions_along(store: ModelStore, versions: list[Path]) -> None:
    store.install(versions[0], "det/1")
    store.install(versions[1], "det/1", replace=True)
    store.remove("det/1")
    assert not (store.root / ".revisions" / "det").exists()
    assert not (store.root / "det").exists()
    with pytest.raises(ModelNotFound):
        store.rollback("det/1")


# -- power cuts ----------------------------------------------------------------------------------


class PowerCut(BaseException):
    """Raised instead of the n-th rename: the process stops there, as when the power goes."""


def cut_at(monkeypatch: pytest.MonkeyPatch, n: int) -> list[int]:
    calls = [0]
    real = os.rename

    def rename(src: Any, dst: Any) -> None:
        calls[0] += 1
        if calls[0] == n:
            raise PowerCut(f"rename {n}: {src} -> {dst}")
        real(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    return calls


def _commit_new(store: ModelStore, versions: list[Path]) -> None:
    store.commit(store.stage(versions[2], "det/1"))


def _rollback(store: ModelStore, versions: list[Path]) -> None:
    store.rollback("det/1")


@pytest.mark.parametrize(("change", "after_sha", "after_revisions"), [
    (_commit_new, 2, [1, 0]),
    (_rollback, 0, [1]),
], ids=["commit", "rollback"])
def test_a_power_cut_at_any_rename_leaves_before_or_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, versions: list[Path],
        change: Callable[[ModelStore, list[Path]], None], after_sha: int, after_revisions: list[int]) -> None:
    outcomes = []
    for n in range(1, 20):
        root = tmp_path / f"cut{n}"
        store = ModelStore(root, keep_revisions=2)
        store.install(versions[0], "det/1")
        store.install(versions[1], "det/1", replace=True)
        before = (current_sha(store), [r.sha256 for r in store.revisions("det/1")])
        calls = cut_at(monkeypatch, n)
        try:
            change(store, versions)
            finished = True
        except PowerCut:
            finished = False
        monkeypatch.undo()
        restarted = ModelStore(root, keep_revisions=2)  # a new process after the power came back
        restarted.clean()
        state = (current_sha(restarted), [r.sha256 for r in restarted.revisions("det/1")])
        after = (sha256_of(versions[after_sha]), [sha256_of(versions[i]) for i in after_revisions])
        assert state in (before, after), f"cut at rename {n}"
        assert_clean(restarted)
        outcomes.append(state == after)
        if finished:
            assert calls[0] < n
            assert state == after
            break
    else:
        pytest.fail("the change never finished")
    assert outcomes[0] is False
    assert outcomes[-1] is True  # both sides were reached


def test_clean_repairs_hand_made_leftovers(store: ModelStore, versions: list[Path]) -> None:
    store.install(versions[0], "det/1")
    store.install(versions[1], "det/1", replace=True)
    expected = (current_sha(store), [r.sha256 for r in store.revisions("det/1")])
    revisions = store.root / ".revisions/det/1"
    (revisions / ".tmp-20990101T000000.000000Z-abc").mkdir()  # a revision half linked
    (revisions / ".tmp-20990101T000000.000000Z-abc" / "model.onnx").write_bytes(b"half")
    twin = revisions / "20990101T000000.000000Z-twin"  # archived, then the power went
    twin.mkdir()
    for f in ("model.json", "model.onnx"):
        os.link(store.root / "det/1" / f, twin / f)
    (store.root / ".staging/det-1.x").mkdir(parents=True)
    (store.root / ".staging/det-1.x/model.onnx").write_bytes(b"partial")
    store.clean()
    assert (current_sha(store), [r.sha256 for r in store.revisions("det/1")]) == expected
    assert_clean(store)
    # the instant between moving the current version aside and moving the new one in
    os.rename(store.root / "det/1", revisions / ".replaced")
    ModelStore(store.root).clean()
    assert (current_sha(store), [r.sha256 for r in store.revisions("det/1")]) == expected
    assert_clean(store)


# -- last use and the disk budget ----------------------------------------------------------------


def test_usage_survives_a_restart_and_is_written_at_most_once_a_minute(store: ModelStore,
                                                                       versions: list[Path]) -> None:
    store.install(versions[0], "det/1")
    store.touch("det/1", now=1000.0)
    assert ModelStore(store.root).last_used("det/1") == 1000.0
    store.touch("det/1", now=1030.0)  # in memory only
    assert store.last_used("det/1") == 1030.0
    assert ModelStore(store.root).last_used("det/1") == 1000.0
    store.touch("det/1", now=1061.0)
    assert ModelStore(store.root).last_used("det/1") == 1061.0
    assert json.loads((store.root / ".usage.json").read_text()) == {"det/1": 1061.0}
    assert ModelStore(store.root).last_used("other/1") is None


def test_usage_file_unreadable_starts_afresh_and_removal_forgets(store: ModelStore, versions: list[Path],
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    store.install(versions[0], "det/1")
    (store.root / ".usage.json").write_text("{not json")
    usage = Usage(store.root)
    assert usage.last_used("det/1") is None
    assert "unreadable, starting a new one" in caplog.text
    usage.touch("det/1", now=2000.0)
    assert json.loads((store.root / ".usage.json").read_text()) == {"det/1": 2000.0}
    reopened = ModelStore(store.root)
    assert reopened.last_used("det/1") == 2000.0
    reopened.remove("det/1")
    assert reopened.last_used("det/1") is None
    reopened.touch("other/1", now=2100.0)  # the next write drops the removed id from the file too
    assert json.loads((store.root / ".usage.json").read_text()) == {"other/1": 2100.0}


def test_manager_records_use(store: ModelStore, versions: list[Path]) -> None:
    store.install(versions[0], "det/1")
    manager = ModelManager(store)
    manager.get("det/1")
    first = ModelStore(store.root).last_used("det/1")
    assert first is not None
    manager.get("det/1")
    assert store.last_used("det/1") >= first  # type: ignore[operator]


def test_disk_usage_counts_hard_links_once(store: ModelStore, versions: list[Path]) -> None:
    store.install(versions[0], "det/1")
    base = store.disk_usage()
    files = [store.root / "det/1/model.onnx", store.root / "det/1/model.json", store.root / ".usage.json"]
    assert base == sum(f.stat().st_size for f in files)
    os.link(store.root / "det/1/model.onnx", store.root / "det/1/extra-link")
    assert store.disk_usage() == base
    store.install(versions[1], "det/1", replace=True)
    assert store.disk_usage() > base  # the revision holds the old bytes


def _restamp(store: ModelStore, model_id: str, days_ago: list[float], now: float) -> None:
    """Date the revisions of ``model_id`` (newest first) ``days_ago`` before ``now``, as if kept then."""
    revisions = store.revisions(model_id)
    assert len(revisions) == len(days_ago)
    assert days_ago == sorted(days_ago)
    for revision, days in zip(revisions, days_ago):
        stamp = datetime.fromtimestamp(now - days * 86400, timezone.utc).strftime(STAMP_FORMAT)
        revision.path.rename(revision.path.with_name(f"{stamp}-{revision.sha256[:12]}"))


def test_eviction_order_and_protection(store: ModelStore, tmp_path: Path) -> None:
    day = 86400.0
    now = time.time()
    plan = {  # id: (last use, revision ages newest first), in days before now
        "old": (60, [70, 80]), "older": (90, [85, 95]), "recent": (5, [6, 10]), "pinned": (99, [40, 100])}
    for name, (used_days_ago, ages) in plan.items():
        for i in range(3):
            store.install(det_onnx(tmp_path / f"{name}{i}.onnx", dx=i), f"{name}/1", replace=True)
        _restamp(store, f"{name}/1", ages, now)
        store.touch(f"{name}/1", now=now - used_days_ago * day, force=True)
    newest = {n: store.revisions(f"{n}/1")[0].name for n in plan}
    oldest = {n: store.revisions(f"{n}/1")[1] for n in plan}
    doomed = [oldest[n].path for n in ("pinned", "older", "old")]
    doomed += [store.root / "older/1", store.root / ".revisions/older/1" / newest["older"]]
    doomed_bytes = sum(f.stat().st_size for d in doomed for f in d.iterdir())
    removed = store.evict(store.disk_usage() - doomed_bytes, 30 * day, {"pinned/1"}, now=now)
    # Revisions first, oldest first, even a protected id's (not serving); never the newest of an id, nor
    # one kept within 30 days (recent/1's); then the least recently used model with all it keeps.
    assert removed == [f"pinned/1@{oldest['pinned'].name}", f"older/1@{oldest['older'].name}",
                       f"old/1@{oldest['old'].name}", "older/1"]
    assert {n: [r.name for r in store.revisions(f"{n}/1")] for n in ("old", "recent", "pinned")} == {
        "old": [newest["old"]], "recent": [newest["recent"], oldest["recent"].name], "pinned": [newest["pinned"]]}
    assert sorted(s.manifest.model_id for s in store.list() if not s.builtin) == ["old/1", "pinned/1", "recent/1"]
    removed = store.evict(1, 30 * day, {"pinned/1"}, now=now)  # as small as can be
    assert removed == ["old/1"]  # recent/1 is in use, pinned/1 protected, the demo models built in
    assert {s.manifest.model_id for s in store.list()} >= {"shapes/1", "pinned/1", "recent/1"}
    assert len(store.revisions("recent/1")) == 2
    assert len(store.revisions("pinned/1")) == 1
    assert store.evict(0, 0, set(), now=now) == []  # no budget


def test_eviction_keeps_rollback_targets(store: ModelStore, versions: list[Path]) -> None:
    day = 86400.0
    store.install(versions[0], "det/1")
    store.touch("det/1", now=time.time() - 90 * day, force=True)  # unused for long...
    kept = store.commit(store.stage(versions[1], "det/1"), current=False)  # ...but a version was just kept
    assert store.evict(1, 30 * day, set()) == []  # neither the model nor its newest revision goes
    assert store.revisions("det/1") == [kept]
    store.install(versions[2], "det/1", replace=True)  # an upgrade: v0 is the rollback target now
    assert [r.sha256 for r in store.revisions("det/1")] == [sha256_of(versions[0]), kept.sha256]
    assert store.evict(1, 30 * day, {"det/1"}) == []  # both revisions are young
    assert store.evict(1, 0, {"det/1"}, now=time.time() + 1) == [f"det/1@{kept.name}"]  # never the newest
    assert [r.sha256 for r in store.revisions("det/1")] == [sha256_of(versions[0])]
    store.rollback("det/1")
    assert current_sha(store) == sha256_of(versions[0])


# -- checks --------------------------------------------------------------------------------------


@pytest.fixture
def scenes(tmp_path: Path) -> Path:
    folder = tmp_path / "golden"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 255, (48, 80, 3), dtype=np.uint8))
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return folder


def test_golden_images(scenes: Path, tmp_path: Path) -> None:
    images = golden_images(scenes)
    assert len(images) == 4
    assert images[0].shape == (48, 80, 3)
    assert images[0].dtype == np.uint8
    assert len(golden_images(scenes, limit=2)) == 2
    assert golden_images(tmp_path / "missing") == []
    assert golden_images(None) == []


def _load(store: ModelStore, path: Path, model_id: str) -> Model:
    staged = store.stage(path, model_id)
    return load_model(staged.manifest, staged.onnx)


def test_identical_candidate_is_accepted(store: ModelStore, scenes: Path, tmp_path: Path) -> None:
    serving = _load(store, det_onnx(tmp_path / "a.onnx"), "det/1")
    candidate = _load(store, det_onnx(tmp_path / "b.onnx"), "det/1")
    report = check_candidate(candidate, serving=serving, images=golden_images(scenes), tolerance=0.0)
    assert report.ok
    assert report.reason is None
    assert report.images_compared == 4
    assert report.disagreeing == 0
    assert report.seconds > 0
    assert report.as_dict()["model_id"] == "det/1"
    require_ok(report)
    first = check_candidate(candidate, serving=None, images=[])
    assert first.ok
    assert first.note == "not compared: nothing serves this id"


def test_disagreeing_candidate_is_refused(store: ModelStore, scenes: Path, tmp_path: Path) -> None:
    serving = _load(store, det_onnx(tmp_path / "a.onnx"), "det/1")
    moved = _load(store, det_onnx(tmp_path / "b.onnx", dx=12), "det/1")
    report = check_candidate(moved, serving=serving, images=golden_images(scenes), tolerance=0.1)
    assert not report.ok
    assert report.disagreeing == 4
    assert report.images_compared == 4
    assert "4 of 4 golden images disagree" in str(report.reason)
    assert "image 1: reference detection a (0.90)" in str(report.first_disagreement)
    with pytest.raises(ActivationRefused, match="not activated: 4 of 4") as info:
        require_ok(report)
    assert info.value.status == 409
    assert check_candidate(moved, serving=serving, images=golden_images(scenes), tolerance=1.0).ok
    slightly = _load(store, det_onnx(tmp_path / "c.onnx", dx=1, score=0.8), "det/1")  # a retrained version
    assert check_candidate(slightly, serving=serving, images=golden_images(scenes), tolerance=0.0).ok
    more = _load(store, det_onnx(tmp_path / "d.onnx", names=("a", "b", "c")), "det/1")
    report = check_candidate(more, serving=serving, images=golden_images(scenes), tolerance=0.0)
    assert report.ok
    assert report.note is not None
    assert "class lists differ" in report.note


@pytest.mark.parametrize("model_id", ["shapes/1", "shapes-seg/1", "shapes-pose/1", "shapes-cls/1"])
def test_every_demo_model_passes_against_itself(store: ModelStore, model_id: str) -> None:
    from edge_agent.serving.accelerate_setup import builtin_images

    report = check_candidate(load_stored(store, model_id), serving=load_stored(store, model_id),
                             images=builtin_images(4), tolerance=0.0)
    assert report.ok, report
    assert report.images_compared == 4, report
    assert report.disagreeing == 0, report


def _with_manifest(model: Model, **changes: Any) -> Model:
    manifest = model.manifest.model_copy(update=changes)
    return Model(manifest, model.engine)


def _seg_with_mask_channels(store: ModelStore, n: int) -> Model:
    seg = load_stored(store, "shapes-seg/1")
    return _with_manifest(seg, output=seg.manifest.output.model_copy(update={"mask_channels": n}))


@pytest.mark.parametrize(("make", "serving", "reason"), [
    (lambda store, tmp: load_stored(store, "shapes-cls/1"), "shapes/1",
     "the task changed: the serving version does object-detection, the new one classification"),
    (lambda store, tmp: _with_manifest(load_stored(store, "shapes/1"), class_names=("a", "b")), "shapes/1",
     "fits no known layout for 2 classes"),
    (lambda store, tmp: _with_manifest(load_stored(store, "shapes-cls/1"), class_names=("x",)), None,
     "a classifier of 1 classes should output [B, 1]"),
    (lambda store, tmp: _seg_with_mask_channels(store, 8), None, "fits no known layout"),
    (lambda store, tmp: _load(store, det_onnx(tmp / "nan.onnx", value=float("nan")), "det/1"), None,
     "its outputs contain NaN"),
], ids=["task", "detect-classes", "classify-classes", "mask-channels", "nan"])
def test_candidate_refused(store: ModelStore, tmp_path: Path, make: Callable[[ModelStore, Path], Model],
                           serving: str | None, reason: str) -> None:
    candidate = make(store, tmp_path)
    reference = load_stored(store, serving) if serving else None
    report: CheckReport = check_candidate(candidate, serving=reference, images=[])
    assert not report.ok
    assert reason in str(report.reason)
    with pytest.raises(ActivationRefused, match="not activated"):
        require_ok(report)


def test_rollback_through_check_and_swap(store: ModelStore, versions: list[Path], scenes: Path) -> None:
    """The daemon's path: stage_revision -> load_model -> check -> commit -> swap; no cold start."""
    store.install(versions[0], "det/1")
    store.install(versions[1], "det/1", replace=True)
    manager = ModelManager(store)
    serving, _ = manager.get("det/1")
    staged = store.stage_revision("det/1")
    candidate = load_model(staged.manifest, staged.onnx)
    require_ok(check_candidate(candidate, serving=serving.model, images=golden_images(scenes), tolerance=0.1))
    store.commit(staged)
    assert manager.swap("det/1", candidate) is not None
    now, cold = manager.get("det/1")
    assert not cold
    assert now.model.manifest.weights.sha256 == current_sha(store) == sha256_of(versions[0])
