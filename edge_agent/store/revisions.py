"""The model store's revision folders and the crash-safe renames that change an id's current version.

Layout, under the store's root (``store.model_store`` has the rest)::

    <project>/<version>/                              the current version
    .revisions/<project>/<version>/<stamp>-<sha12>/   earlier versions (hard links where possible)
    .revisions/<project>/<version>/.tmp-<name>/       a revision being written (removed by ``repair_all``)
    .revisions/<project>/<version>/.replaced          the version being replaced, for the instant of a
                                                      commit (put back or deleted by ``repair``)
    .trash/                                           folders being deleted (``delete``)

A revision's stamp is the UTC time at which it stopped being current (or was kept unactivated),
``YYYYmmddTHHMMSS.ffffffZ`` (``STAMP_FORMAT``), strictly increasing per id even when the clock steps
back (``next_stamp``). ``make_current`` is the rename sequence of ``ModelStore.commit`` and ``repair``
finishes or undoes it after a power cut; ``keep`` files a candidate as a revision without activating it.

Nothing here locks: ``ModelStore`` calls these under its thread lock and ``flock``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from edge_agent import atomic_files
from edge_agent.errors import InvalidInput, InvalidModelId, ModelImportError, ModelLoadFailed, ModelNotFound
from edge_agent.store.manifest import Manifest, parse_model_id

log = logging.getLogger(__name__)

STAMP_FORMAT = "%Y%m%dT%H%M%S.%fZ"
REPLACED = ".replaced"
# How a caller names a revision: a prefix of its folder name (stamp-sha12) or of its sha256, matched
# whole (``fullmatch``), so a control character or trailing newline is refused rather than stripped.
_REVISION_KEY = re.compile(r"[0-9A-Za-z.-]{1,80}")


@dataclass(frozen=True)
class Revision:
    """An earlier (or kept, not activated) version of an id."""

    model_id: str
    stamp: str
    sha256: str
    path: Path
    manifest: Manifest

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def stopped_at(self) -> float:
        """The stamp in Unix seconds (the folder's mtime for a folder not named by a stamp)."""
        try:
            return datetime.strptime(self.stamp, STAMP_FORMAT).replace(tzinfo=timezone.utc).timestamp()
        except ValueError:
            return self.path.stat().st_mtime


# -- names and listing ----------------------------------------------------------------------------


def folder_of(root: Path, model_id: str) -> Path:
    """``<root>/.revisions/<project>/<version>`` (it may not exist)."""
    project, version = parse_model_id(model_id)
    return root / ".revisions" / project / version


def next_stamp(folder: Path) -> str:
    """Now as a stamp, or just after the newest stamp in ``folder`` if the clock is behind it."""
    now = datetime.now(timezone.utc)
    names = [p.name for p in folder.iterdir() if not p.name.startswith(".")] if folder.is_dir() else []
    for name in sorted(names, reverse=True)[:1]:
        try:
            newest = datetime.strptime(name.rpartition("-")[0], STAMP_FORMAT).replace(tzinfo=timezone.utc)
        except ValueError:
            continue
        now = max(now, newest + timedelta(microseconds=1))
    return now.strftime(STAMP_FORMAT)


def listed(root: Path, model_id: str) -> list[Revision]:
    """The kept revisions of ``model_id``, newest first (unreadable ones skipped with a warning)."""
    folder = folder_of(root, model_id)
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.iterdir(), reverse=True):
        if path.name.startswith(".") or not (path / "model.json").is_file():
            continue
        try:
            manifest = Manifest.from_json((path / "model.json").read_text(encoding="utf-8"), str(path))
        except (ModelLoadFailed, OSError) as exc:
            log.warning("model store: skipping unreadable revision %s: %s", path, exc)
            continue
        found.append(Revision(model_id, path.name.rpartition("-")[0], manifest.weights.sha256, path, manifest))
    return found


def revised_ids(root: Path) -> list[str]:
    """The ids that have a folder under ``.revisions`` (anything else there is left alone)."""
    top = root / ".revisions"
    ids = []
    for folder in sorted(top.glob("*/*")) if top.is_dir() else []:
        model_id = f"{folder.parent.name}/{folder.name}"
        try:
            parse_model_id(model_id)
        except InvalidModelId:
            log.warning("model store: %s is not a model's revisions folder; left alone", folder)
            continue
        ids.append(model_id)
    return ids


def pick(revisions: list[Revision], model_id: str, to: str | None) -> Revision:
    """The newest of ``revisions`` (non-empty, newest first), or the one whose stamp, name or sha256
    starts with ``to``; ``ModelNotFound`` when none does, ``ModelImportError`` when several do."""
    if to is None:
        return revisions[0]
    key = to.strip(" ").lower()
    if not key:
        raise ModelImportError(f"{model_id}: name the revision by its stamp or sha256 (or a prefix of either)")
    if not _REVISION_KEY.fullmatch(key):
        raise InvalidInput(f"{model_id}: invalid revision {to!r}: give its stamp or sha256 (or a prefix "
                           "of either): letters, digits, '.' or '-'")
    matches = [r for r in revisions if r.name.lower().startswith(key) or r.sha256.startswith(key)]
    kept = ", ".join(f"{r.stamp} (sha256 {r.sha256[:12]})" for r in revisions)
    if not matches:
        raise ModelNotFound(f"{model_id}: no kept revision matches {to!r}; kept: {kept}")
    if len(matches) > 1:
        raise ModelImportError(f"{model_id}: {to!r} matches {len(matches)} revisions; give more of the "
                               f"stamp or sha256 (kept: {kept})")
    return matches[0]


def link_files(src: Path, dst: Path) -> None:
    """Hard-link (copy where links are refused) the files of folder ``src`` into folder ``dst``."""
    for path in src.iterdir():
        if path.is_file():
            try:
                os.link(path, dst / path.name)
            except OSError:
                shutil.copy2(path, dst / path.name)


def same_version(a: Path, b: Path) -> bool:
    """Do two version folders hold the same version (byte-equal model.json, which names the sha256)?"""
    try:
        return (a / "model.json").read_bytes() == (b / "model.json").read_bytes()
    except OSError:
        return False


# -- folder moves ---------------------------------------------------------------------------------


def fsync_up(root: Path, folder: Path) -> None:
    """fsync ``folder``'s parents up to ``root``, so that folders made on the way are on disk too."""
    while folder != root and root in folder.parents:
        folder = folder.parent
        atomic_files.fsync_dir(folder)


def delete(root: Path, path: Path) -> None:
    """Remove a folder at once (renamed into ``.trash``, then deleted), dropping empty parents."""
    trash = root / ".trash"
    trash.mkdir(parents=True, exist_ok=True)
    doomed = Path(tempfile.mkdtemp(prefix="removed.", dir=trash))
    os.rename(path, doomed / "x")
    atomic_files.fsync_dir(path.parent)
    shutil.rmtree(doomed, ignore_errors=True)
    parent = path.parent
    while parent != root and parent.name != ".revisions":
        try:
            parent.rmdir()  # the project folder when its last version goes
        except OSError:
            break
        parent = parent.parent


def make_current(root: Path, model_id: str, candidate: Path, keep_revisions: int) -> None:
    """Rename the fsynced folder ``candidate`` (under ``.staging``) to ``<project>/<version>``; the
    version it replaces is kept as the newest revision (unless identical or ``keep_revisions`` is 0).

    What a power cut leaves at each step, and what ``repair`` (``ModelStore.clean()``) makes of it:

    1. candidate written and fsynced under ``.staging``     -> removed: before
    2. current hard-linked into ``.revisions/<id>/.tmp-*``  -> removed: before
    3. that renamed to ``<stamp>-<sha12>``, a twin of current -> twin of current removed: before
    4. current renamed to ``.revisions/<id>/.replaced``     -> no current: renamed back: before
    5. candidate renamed to ``<project>/<version>``         -> ``.replaced`` deleted: after
    6. ``.replaced``, twins of current, and revisions beyond ``keep_revisions`` deleted: after
       (``repair`` repeats this step)
    Each rename is followed by an fsync of the folders it changed, so a later step is never on disk
    without the earlier ones.
    """
    project, version = parse_model_id(model_id)
    target = root / project / version
    revisions = folder_of(root, model_id)
    if target.exists():
        if keep_revisions and not same_version(target, candidate):
            _archive(root, model_id, target)
        revisions.mkdir(parents=True, exist_ok=True)
        os.rename(target, revisions / REPLACED)
        atomic_files.fsync_dir(revisions)
        fsync_up(root, revisions)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.rename(candidate, target)
    atomic_files.fsync_dir(target.parent)
    fsync_up(root, target.parent)
    repair(root, model_id, keep_revisions)


def keep(root: Path, model_id: str, candidate: Path, sha256: str, keep_revisions: int) -> Revision:
    """Rename the fsynced folder ``candidate`` into a new revision of ``model_id``, not activating it.
    A candidate identical to the current version is removed and refused."""
    if not keep_revisions:
        raise ModelImportError(f"{model_id}: keep_revisions is 0, so a version cannot be kept "
                               "without activating it")
    project, version = parse_model_id(model_id)
    if same_version(root / project / version, candidate):
        shutil.rmtree(candidate, ignore_errors=True)
        raise ModelImportError(f"{model_id}: this is the version already installed; nothing to keep")
    revisions = folder_of(root, model_id)
    revisions.mkdir(parents=True, exist_ok=True)
    name = f"{next_stamp(revisions)}-{sha256[:12]}"
    os.rename(candidate, revisions / name)
    atomic_files.fsync_dir(revisions)
    fsync_up(root, revisions)
    repair(root, model_id, keep_revisions)
    kept = next((r for r in listed(root, model_id) if r.name == name), None)
    if kept is None:
        raise ModelImportError(f"{model_id}: kept as {name} but pruned at once "
                               f"(keep_revisions = {keep_revisions})")
    return kept


def _archive(root: Path, model_id: str, current: Path) -> None:
    """Hard-link the current version into a new revision folder (written aside, then renamed)."""
    try:
        manifest = Manifest.from_json((current / "model.json").read_text(encoding="utf-8"), str(current))
    except (ModelLoadFailed, OSError) as exc:
        log.warning("model store: not keeping the replaced version of %s, it is unreadable: %s", model_id, exc)
        return
    revisions = folder_of(root, model_id)
    revisions.mkdir(parents=True, exist_ok=True)
    name = f"{next_stamp(revisions)}-{manifest.weights.sha256[:12]}"
    tmp = revisions / f".tmp-{name}"
    tmp.mkdir()
    link_files(current, tmp)
    atomic_files.fsync_tree(tmp)
    os.rename(tmp, revisions / name)
    atomic_files.fsync_dir(revisions)
    fsync_up(root, revisions)


# -- repair ---------------------------------------------------------------------------------------


def repair(root: Path, model_id: str, keep_revisions: int) -> None:
    """Finish or undo an interrupted commit of ``model_id`` and tidy its revisions (idempotent)."""
    project, version = parse_model_id(model_id)
    target = root / project / version
    revisions = folder_of(root, model_id)
    replaced = revisions / REPLACED
    if replaced.exists():
        if not target.exists():
            os.rename(replaced, target)
            atomic_files.fsync_dir(target.parent)
            log.warning("model store: %s put back as it was (a change was interrupted)", model_id)
        else:
            delete(root, replaced)
    for revision in listed(root, model_id):
        if same_version(target, revision.path):
            delete(root, revision.path)
    for revision in listed(root, model_id)[keep_revisions:]:
        delete(root, revision.path)
        log.info("model store: dropped revision %s of %s (keep_revisions = %d)",
                 revision.name, model_id, keep_revisions)
    for folder in (revisions, revisions.parent):
        try:
            folder.rmdir()  # only when empty
        except OSError:
            break


def repair_all(root: Path, keep_revisions: int) -> None:
    """``repair`` every id with revisions, after removing revisions left half-written (``.tmp*``)."""
    for model_id in revised_ids(root):
        for tmp in folder_of(root, model_id).glob(".tmp*"):
            shutil.rmtree(tmp, ignore_errors=True)
        repair(root, model_id, keep_revisions)
