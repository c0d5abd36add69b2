"""``ModelStore``: the models on disk, one folder per ``project/version``, with earlier revisions.

Layout (a person can read and repair it)::

    <root>/<project>/<version>/model.onnx    the network, byte for byte as imported
    <root>/<project>/<version>/model.json    the Manifest, with the ONNX file's sha256
    <root>/.revisions/<project>/<version>/<stamp>-<sha12>/   earlier versions (the same two files,
                                             hard links where possible), at most keep_revisions
    <root>/.revisions/<project>/<version>/.replaced          the version being replaced, for the
                                             instant of a commit (put back or deleted by clean())
    <root>/.staging/                         candidates being imported or checked (removed on start)
    <root>/.trash/                           folders being deleted
    <root>/.usage.json                       {model id: last use, Unix seconds} (``store.usage``)

A second, read-only root holds the demo models shipped in the package; their ids cannot be taken by
an install. A new version is first staged (``stage`` / ``stage_revision``: imported under
``.staging``, nothing current touched), may be loaded and checked there (``serving.loading``,
``provisioning.checks``), and then ``commit``-ted or ``discard``-ed. ``install`` and ``rollback`` are
stage + commit without checks. Every change is written and fsynced aside and then renamed into place;
``clean()`` at start finishes or undoes whatever a power cut interrupted. The revision folders (their
stamps and listing) and commit's rename sequence with its repair live in ``store.revisions``; this
module owns importing, staging, the public API and the locks: changes hold a thread lock and an
``flock`` on the root folder, so the CLI and the daemon take turns.

The last use of each model and eviction under a disk budget live in ``store.usage``; ``touch``,
``last_used``, ``disk_usage`` and ``evict`` here delegate to it (``evict`` under the store's lock).
``update`` re-checks a changed class count, task or output entry against the ONNX file's outputs.
"""

from __future__ import annotations

import builtins
import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

from edge_agent import atomic_files
from edge_agent.errors import ChecksumMismatch, ModelAlreadyInstalled, ModelImportError, ModelLoadFailed, ModelNotFound
from edge_agent.store import importers, revisions, usage
from edge_agent.store.manifest import Manifest, parse_model_id
from edge_agent.store.revisions import STAMP_FORMAT as STAMP_FORMAT
from edge_agent.store.revisions import Revision as Revision
from engines.cache import sha256_file

log = logging.getLogger(__name__)

BUILTIN_ROOT = Path(__file__).resolve().parent.parent / "demo" / "store"


@dataclass(frozen=True)
class StoredModel:
    manifest: Manifest
    path: Path
    builtin: bool


@dataclass(frozen=True)
class Staged:
    """A candidate under ``.staging``, not serving: load and check it (``serving.loading.load_model``
    on its ``manifest`` and ``onnx``, verified when staged), then ``commit`` or ``discard`` it."""

    model_id: str
    manifest: Manifest
    path: Path

    @property
    def onnx(self) -> Path:
        return self.path / self.manifest.weights.file


def _copy_hashing(src: Path, dst: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with src.open("rb") as fin, dst.open("wb") as fout:
        while chunk := fin.read(1 << 20):
            digest.update(chunk)
            fout.write(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


sha256_of = sha256_file  # the sha256 of a file on disk (one implementation, in the engine cache)


class ModelStore:
    def __init__(self, root: Path, builtin_root: Path | None = BUILTIN_ROOT, keep_revisions: int = 2) -> None:
        self.root = Path(root)
        self.builtin_root = builtin_root if builtin_root and builtin_root.is_dir() else None
        self.keep_revisions = max(0, keep_revisions)
        self._lock = threading.RLock()
        self._exclusive_held = False
        self._usage = usage.Usage(self.root)

    # -- reading --------------------------------------------------------------------------------

    def _locate(self, model_id: str) -> tuple[Path, bool]:
        project, version = parse_model_id(model_id)
        if self.builtin_root is not None:
            path = self.builtin_root / project / version
            if (path / "model.json").is_file():
                return path, True
        path = self.root / project / version
        if (path / "model.json").is_file():
            return path, False
        raise ModelNotFound(
            f"Model {model_id!r} is not in the model store ({self.root}). "
            "Add it with 'edge-agent models add', or list the installed ones with 'edge-agent models list'.",
            public=f"Model {model_id!r} is not in this device's model store.")

    def get(self, model_id: str) -> StoredModel:
        path, builtin = self._locate(model_id)
        manifest = Manifest.from_json((path / "model.json").read_text(encoding="utf-8"), str(path / "model.json"))
        if manifest.model_id != model_id:
            raise ModelLoadFailed(f"{path / 'model.json'}: says model_id {manifest.model_id!r}, stored as {model_id!r}",
                                  public=f"model {model_id}: its model.json says model_id {manifest.model_id!r}")
        return StoredModel(manifest, path, builtin)

    def has(self, model_id: str) -> bool:
        """Is ``model_id`` in the store (the user's or the built-in one)? A malformed id raises."""
        try:
            self._locate(model_id)
            return True
        except ModelNotFound:
            return False

    def list(self) -> list[StoredModel]:
        found: dict[str, StoredModel] = {}
        for root in (r for r in (self.builtin_root, self.root) if r is not None and r.is_dir()):
            for manifest_path in sorted(root.glob("*/*/model.json")):
                if manifest_path.parent.parent.name.startswith("."):
                    continue  # .staging, .revisions, .trash
                model_id = f"{manifest_path.parent.parent.name}/{manifest_path.parent.name}"
                if model_id not in found:
                    try:
                        found[model_id] = self.get(model_id)
                    except (ModelLoadFailed, ModelNotFound):
                        continue  # a broken entry is reported by 'show', not by 'list'
        return list(found.values())

    def verified_onnx(self, model_id: str) -> tuple[Manifest, Path]:
        """The manifest and the ONNX path, after checking the file's size and sha256."""
        stored = self.get(model_id)
        onnx = stored.path / stored.manifest.weights.file
        _verify(stored.manifest, onnx)
        return stored.manifest, onnx

    def revisions(self, model_id: str) -> builtins.list[Revision]:
        """The kept earlier versions of ``model_id``, newest first (none for built-in ids)."""
        return revisions.listed(self.root, model_id)

    # -- staging --------------------------------------------------------------------------------

    def stage(self, source: Path, model_id: str | None = None, *, task: str | None = None,
              class_names: tuple[str, ...] | None = None, sha256: str | None = None) -> Staged:
        """Import ``source`` (ultralytics ONNX, Roboflow folder or archive) under ``.staging``.

        Nothing current changes. With ``sha256``, the bytes of ``source`` when it is a file (an ONNX
        file or an archive as uploaded), or of the ONNX file a folder holds, must hash to it, else
        ``ChecksumMismatch``. A Roboflow folder may name its own id. A file is read as an archive when
        its bytes are one (``importers.sniff_suffix``: a zip named ``upload.onnx`` is a zip) or its name
        does not end in .onnx; it is unpacked under ``.staging`` (``importers.unpacked``, size-capped).
        """
        source = Path(source)
        if not source.exists():
            raise ModelImportError(f"{source}: no such file or folder", public=f"{source.name}: no such file or folder")
        if sha256 is not None:
            sha256 = sha256.lower()
            if source.is_file():
                _require_sha(source, sha256_of(source), sha256)
                sha256 = None
        return self._stage(source, model_id, task, class_names, sha256)

    def _stage(self, source: Path, model_id: str | None, task: str | None,
               class_names: tuple[str, ...] | None, onnx_sha: str | None, unpack: bool = True) -> Staged:
        """``unpack``: a file may be an archive (its bytes decide, else a name not ending in .onnx);
        false for what an archive holds, so an archive inside one is never unpacked."""
        if unpack and source.is_file() and (importers.sniff_suffix(source) is not None
                                            or not source.name.lower().endswith(".onnx")):
            with importers.unpacked(source, into=self.root / ".staging") as folder:
                return self._stage(folder, model_id, task, class_names, onnx_sha, unpack=False)
        if importers.is_roboflow_folder(source):
            draft, named_id = importers.from_roboflow(source)
            model_id = model_id or named_id
        elif source.is_dir():
            onnx_files = sorted(source.glob("*.onnx"))
            if len(onnx_files) != 1:
                raise ModelImportError(
                    f"{source}: expected a Roboflow model folder (model_type.json) or one .onnx file",
                    public="expected a Roboflow model folder (model_type.json) or one .onnx file")
            return self._stage(onnx_files[0], model_id, task, class_names, onnx_sha, unpack=False)
        else:
            draft = importers.from_ultralytics(source, task, class_names)
        if model_id is None:
            raise ModelImportError(f"{source}: give the model id to install it under, e.g. 'my-project/1'",
                                   public=f"{source.name}: give the model id to install it under, e.g. 'my-project/1'")
        return self._write_staged(draft, model_id, onnx_sha)

    def _write_staged(self, draft: importers.Draft, model_id: str, onnx_sha: str | None) -> Staged:
        self._refuse_builtin(model_id, "install under another id")
        staged = self._staging_dir(model_id)
        try:
            sha, size = _copy_hashing(draft.onnx, staged / "model.onnx")
            if onnx_sha is not None:
                _require_sha(draft.onnx, sha, onnx_sha)
            fields: dict[str, Any] = {**draft.fields, "model_id": model_id,
                                      "weights": {"file": "model.onnx", "sha256": sha, "bytes": size}}
            try:
                manifest = Manifest.model_validate(fields)
            except ValueError as exc:
                raise ModelImportError(f"{draft.onnx}: cannot describe this model: {exc}",
                                       public=f"{draft.onnx.name}: cannot describe this model: {exc}") from exc
            (staged / "model.json").write_text(manifest.to_json(), encoding="utf-8")
            atomic_files.fsync_tree(staged)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        return Staged(model_id, manifest, staged)

    def stage_revision(self, model_id: str, to: str | None = None) -> Staged:
        """Stage a kept revision (the newest, or the one whose stamp, name or sha256 starts with ``to``)
        so that it can be checked and committed like any new version (this is how a rollback goes)."""
        with self._lock:
            revision = self._pick_revision(model_id, to)
            staged = self._staging_dir(model_id)
            revisions.link_files(revision.path, staged)
        try:
            _verify(revision.manifest, staged / revision.manifest.weights.file)
            atomic_files.fsync_dir(staged)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        return Staged(model_id, revision.manifest, staged)

    def _pick_revision(self, model_id: str, to: str | None) -> Revision:
        self._refuse_builtin(model_id, "it has no revisions")
        found = self.revisions(model_id)
        if not found:
            self._locate(model_id)  # ModelNotFound for an id that is not installed at all
            raise ModelNotFound(f"{model_id}: no earlier version is kept to roll back to "
                                f"(keep_revisions = {self.keep_revisions})")
        return revisions.pick(found, model_id, to)

    def discard(self, staged: Staged) -> None:
        """Forget a staged candidate (nothing happens when it was committed or discarded already)."""
        shutil.rmtree(staged.path, ignore_errors=True)

    # -- committing -----------------------------------------------------------------------------

    @overload
    def commit(self, staged: Staged) -> Manifest: ...

    @overload
    def commit(self, staged: Staged, *, current: Literal[True]) -> Manifest: ...

    @overload
    def commit(self, staged: Staged, *, current: Literal[False]) -> Revision: ...

    def commit(self, staged: Staged, *, current: bool = True) -> Manifest | Revision:
        """Make ``staged`` the current version of its id and return its ``Manifest``; the version it
        replaces is kept as the newest revision (unless identical), at most ``keep_revisions`` kept.
        With ``current=False`` it is only kept as the newest revision, and that ``Revision`` returned.

        Every step is a rename followed by fsyncs (``revisions.make_current`` lists what a power cut
        leaves after each one); whatever it interrupts, ``clean()`` leaves the version before or the
        version after.
        """
        with self._exclusive():
            if not (staged.path / "model.json").is_file():
                raise ModelImportError(f"{staged.model_id}: the staged candidate {staged.path} is gone "
                                       "(committed or discarded already?)",
                                       public=f"{staged.model_id}: the staged candidate is gone "
                                              "(committed or discarded already?)")
            self._refuse_builtin(staged.model_id, "install under another id")
            revisions.repair(self.root, staged.model_id, self.keep_revisions)
            if not current:
                return revisions.keep(self.root, staged.model_id, staged.path, staged.manifest.weights.sha256,
                                      self.keep_revisions)
            revisions.make_current(self.root, staged.model_id, staged.path, self.keep_revisions)
        self.touch(staged.model_id, force=True)  # a version just activated is not idle
        log.info("model store: %s is now sha256 %s", staged.model_id, staged.manifest.weights.sha256[:12])
        return staged.manifest

    def rollback(self, model_id: str, to: str | None = None) -> Manifest:
        """Make the newest revision (or the one ``to`` names) current again, without checks; the version
        it replaces becomes the newest revision, so a rollback can itself be rolled back. The daemon
        instead goes ``stage_revision`` -> load -> ``checks`` -> ``commit`` -> swap."""
        staged = self.stage_revision(model_id, to)
        try:
            manifest = self.commit(staged)
        except BaseException:
            self.discard(staged)
            raise
        return manifest

    def install(self, source: Path, model_id: str | None = None, *, task: str | None = None,
                class_names: tuple[str, ...] | None = None, replace: bool = False) -> Manifest:
        """Import ``source`` (ultralytics ONNX, Roboflow folder or archive) as ``model_id`` and make it
        current at once; with ``replace`` an installed version is kept as a revision."""
        staged = self.stage(source, model_id, task=task, class_names=class_names)
        try:
            project, version = parse_model_id(staged.model_id)
            if (self.root / project / version).exists() and not replace:
                raise ModelAlreadyInstalled(staged.model_id)
            manifest = self.commit(staged)
        except BaseException:
            self.discard(staged)
            raise
        return manifest

    # -- other changes --------------------------------------------------------------------------

    def update(self, model_id: str, **changes: Any) -> Manifest:
        """Change descriptive fields of an installed model (keypoint names, colours, class names).

        The weights entry cannot change this way; the new manifest is validated and written atomically.
        A change of the class count, the task or the output entry must still fit the output shapes the
        ONNX file declares (the importer's rule, ``importers.detect_layout``), else ``ModelImportError``.
        """
        with self._exclusive():
            stored = self.get(model_id)
            if stored.builtin:
                raise ModelImportError(f"{model_id!r} is a built-in demo model and cannot be changed")
            if {"weights", "model_id"} & changes.keys():
                raise ModelImportError("weights and model_id cannot be updated; install the model again")
            try:
                manifest = Manifest.model_validate({**stored.manifest.model_dump(), **changes})
            except ValueError as exc:
                raise ModelImportError(f"{model_id}: invalid update: {exc}") from exc
            if _layout_facts(manifest) != _layout_facts(stored.manifest):
                why = _output_mismatch(manifest, stored.path / manifest.weights.file)
                if why:
                    raise ModelImportError(f"{model_id}: not updated, it would no longer match its ONNX file: {why}")
            # a new file (renamed over the old): the revisions' hard links keep their own model.json
            atomic_files.write_text(stored.path / "model.json", manifest.to_json())
        return manifest

    def remove(self, model_id: str) -> None:
        """Remove a model and its revisions: the revisions go first, so a power cut in between leaves
        the model installed (and removable again), never revisions without a current version."""
        with self._exclusive():
            path, builtin = self._locate(model_id)
            if builtin:
                raise ModelImportError(f"{model_id!r} is a built-in demo model and cannot be removed")
            kept = revisions.folder_of(self.root, model_id)
            if kept.exists():
                self._delete(kept)
            self._delete(path)
        self._usage.forget(model_id)

    def clean(self) -> None:
        """Repair what an interrupted install, commit, rollback or removal left (call at start-up)."""
        with self._exclusive():
            for leftover in (self.root / ".staging", self.root / ".trash"):
                shutil.rmtree(leftover, ignore_errors=True)
            revisions.repair_all(self.root, self.keep_revisions)

    # -- last use and the disk budget (store.usage) --------------------------------------------

    def touch(self, model_id: str, *, now: float | None = None, force: bool = False) -> None:
        """Record that ``model_id`` was used (``Usage.touch``: written at most once a minute per id)."""
        self._usage.touch(model_id, now=now, force=force)

    def last_used(self, model_id: str) -> float | None:
        """When ``model_id`` was last used (Unix seconds), as recorded by ``touch``; None if never."""
        return self._usage.last_used(model_id)

    def disk_usage(self) -> int:
        """Bytes of the installed versions and revisions (hard links counted once; no work in flight)."""
        return usage.disk_usage(self.root)

    def evict(self, budget_bytes: int, min_idle_s: float, protected: set[str] | frozenset[str] = frozenset(),
              *, now: float | None = None) -> builtins.list[str]:
        """Bring the store under ``budget_bytes`` (0: no budget) by the rule of ``usage.evict``: first
        revisions kept longer than ``min_idle_s``, oldest first, never the newest of an id; then whole
        models unused for ``min_idle_s``, least recently used first, never built-in models nor
        ``protected`` ids. Returns what was removed (``id@revision`` for a revision, else the id)."""
        if budget_bytes <= 0:
            return []
        now = time.time() if now is None else now
        with self._exclusive():
            return usage.evict(self, budget_bytes, min_idle_s, protected, now)

    # -- helpers --------------------------------------------------------------------------------

    def _revised_ids(self) -> builtins.list[str]:
        """The ids that have a folder under ``.revisions`` (``revisions.revised_ids``)."""
        return revisions.revised_ids(self.root)

    def _refuse_builtin(self, model_id: str, what: str) -> None:
        project, version = parse_model_id(model_id)
        if self.builtin_root is not None and (self.builtin_root / project / version).is_dir():
            raise ModelImportError(f"{model_id!r} is a built-in demo model id; {what}")

    def _staging_dir(self, model_id: str) -> Path:
        project, version = parse_model_id(model_id)
        staging = self.root / ".staging"
        staging.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{project}-{version}.", dir=staging))

    def _delete(self, path: Path) -> None:
        """Remove a folder at once through ``.trash`` (``revisions.delete``)."""
        revisions.delete(self.root, path)

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """This thread alone changes the store, and no other process using the same root (flock)."""
        with self._lock:
            if self._exclusive_held:
                yield
                return
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)  # flock on the root folder itself
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._exclusive_held = True
                try:
                    yield
                finally:
                    self._exclusive_held = False
            finally:
                os.close(fd)  # releases the flock


def _verify(manifest: Manifest, onnx: Path) -> None:
    if not onnx.is_file():
        raise ModelLoadFailed(f"{onnx}: missing", public=f"model {manifest.model_id}: its {onnx.name} is missing")
    if onnx.stat().st_size != manifest.weights.bytes or sha256_of(onnx) != manifest.weights.sha256:
        raise ModelLoadFailed(f"{onnx}: checksum mismatch, the file is corrupt; add the model again",
                              public=f"model {manifest.model_id}: {onnx.name} fails its checksum, the file is "
                                     "corrupt; add the model again")


def _require_sha(path: Path, actual: str, expected: str) -> None:
    if actual != expected:
        raise ChecksumMismatch(
            f"{path}: sha256 is {actual}, expected {expected}; the file is not the one named "
            "(damaged transfer, or the wrong file)",
            public=f"sha256 is {actual}, expected {expected}; the file is not the one named")


def _layout_facts(manifest: Manifest) -> tuple[Any, ...]:
    """What the output shapes of the ONNX file are checked against."""
    return manifest.task, len(manifest.class_names), manifest.output


def _output_mismatch(manifest: Manifest, onnx: Path) -> str | None:
    """Why the output shapes ``onnx`` declares do not fit ``manifest``, or None (the importer's rule,
    as ``checks.output_problem`` applies it to the shapes of a run)."""
    return importers.shape_problem(manifest, importers.declared_output_shapes(onnx), onnx)
