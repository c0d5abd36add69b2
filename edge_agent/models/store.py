"""``ModelStore``: the models on disk, one folder per ``project/version``.

Layout (a person can read and repair it)::

    <root>/<project>/<version>/model.onnx    the network, byte for byte as imported
    <root>/<project>/<version>/model.json    the Manifest, with the ONNX file's sha256
    <root>/.staging/                         installs being written (removed on start)
    <root>/.trash/                           replaced installs being deleted

A second, read-only root holds the demo models shipped in the package; their ids cannot be taken by
an install. Installs are atomic: everything is written and fsynced in ``.staging`` and then renamed
into place, so a crash or a bad file leaves the store as it was.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent import atomic_files
from edge_agent.errors import ModelImportError, ModelLoadFailed, ModelNotFound
from edge_agent.models import importers
from edge_agent.models.manifest import Manifest, parse_model_id

BUILTIN_ROOT = Path(__file__).resolve().parent.parent / "demo" / "store"


@dataclass(frozen=True)
class StoredModel:
    manifest: Manifest
    path: Path
    builtin: bool


def _copy_hashing(src: Path, dst: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with src.open("rb") as fin, dst.open("wb") as fout:
        while chunk := fin.read(1 << 20):
            digest.update(chunk)
            fout.write(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class ModelStore:
    def __init__(self, root: Path, builtin_root: Path | None = BUILTIN_ROOT) -> None:
        self.root = Path(root)
        self.builtin_root = builtin_root if builtin_root and builtin_root.is_dir() else None

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
            raise ModelLoadFailed(f"{path / 'model.json'}: says model_id {manifest.model_id!r}, stored as {model_id!r}")
        return StoredModel(manifest, path, builtin)

    def list(self) -> list[StoredModel]:
        found: dict[str, StoredModel] = {}
        for root in (r for r in (self.builtin_root, self.root) if r is not None and r.is_dir()):
            for manifest_path in sorted(root.glob("*/*/model.json")):
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
        if not onnx.is_file():
            raise ModelLoadFailed(f"{onnx}: missing")
        if onnx.stat().st_size != stored.manifest.weights.bytes or sha256_of(onnx) != stored.manifest.weights.sha256:
            raise ModelLoadFailed(f"{onnx}: checksum mismatch, the file is corrupt; add the model again")
        return stored.manifest, onnx

    # -- writing --------------------------------------------------------------------------------

    def install(self, source: Path, model_id: str | None = None, *, task: str | None = None,
                class_names: tuple[str, ...] | None = None, replace: bool = False) -> Manifest:
        """Import ``source`` (ultralytics ONNX, Roboflow folder or archive) as ``model_id``."""
        source = Path(source)
        if not source.exists():
            raise ModelImportError(f"{source}: no such file or folder")
        if source.is_file() and source.suffix.lower() != ".onnx":
            with importers.unpacked(source) as folder:
                return self.install(folder, model_id, task=task, class_names=class_names, replace=replace)
        if importers.is_roboflow_folder(source):
            draft, named_id = importers.from_roboflow(source)
            model_id = model_id or named_id
        elif source.is_dir():
            onnx_files = sorted(source.glob("*.onnx"))
            if len(onnx_files) != 1:
                raise ModelImportError(
                    f"{source}: expected a Roboflow model folder (model_type.json) or one .onnx file")
            return self.install(onnx_files[0], model_id, task=task, class_names=class_names, replace=replace)
        else:
            draft = importers.from_ultralytics(source, task, class_names)
        if model_id is None:
            raise ModelImportError(f"{source}: give the model id to install it under, e.g. 'my-project/1'")
        return self._write(draft, model_id, replace)

    def _write(self, draft: importers.Draft, model_id: str, replace: bool) -> Manifest:
        project, version = parse_model_id(model_id)
        if self.builtin_root is not None and (self.builtin_root / project / version).is_dir():
            raise ModelImportError(f"{model_id!r} is a built-in demo model id; install under another id")
        target = self.root / project / version
        if target.exists() and not replace:
            raise ModelImportError(f"{model_id!r} is already installed; remove it first or replace it")
        staging_root = self.root / ".staging"
        staging_root.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(prefix=f"{project}-{version}.", dir=staging_root))
        try:
            sha, size = _copy_hashing(draft.onnx, staged / "model.onnx")
            fields: dict[str, Any] = {**draft.fields, "model_id": model_id,
                                      "weights": {"file": "model.onnx", "sha256": sha, "bytes": size}}
            try:
                manifest = Manifest.model_validate(fields)
            except ValueError as exc:
                raise ModelImportError(f"{draft.onnx}: cannot describe this model: {exc}") from exc
            (staged / "model.json").write_text(manifest.to_json(), encoding="utf-8")
            atomic_files.install_dir(staged, target, self.root / ".trash")
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        return manifest

    def update(self, model_id: str, **changes: Any) -> Manifest:
        """Change descriptive fields of an installed model (keypoint names, colours, class names).

        The weights entry cannot change this way; the new manifest is validated and written atomically.
        """
        stored = self.get(model_id)
        if stored.builtin:
            raise ModelImportError(f"{model_id!r} is a built-in demo model and cannot be changed")
        if {"weights", "model_id"} & changes.keys():
            raise ModelImportError("weights and model_id cannot be updated; install the model again")
        try:
            manifest = Manifest.model_validate({**stored.manifest.model_dump(), **changes})
        except ValueError as exc:
            raise ModelImportError(f"{model_id}: invalid update: {exc}") from exc
        atomic_files.write_text(stored.path / "model.json", manifest.to_json())
        return manifest

    def remove(self, model_id: str) -> None:
        path, builtin = self._locate(model_id)
        if builtin:
            raise ModelImportError(f"{model_id!r} is a built-in demo model and cannot be removed")
        trash = self.root / ".trash"
        trash.mkdir(parents=True, exist_ok=True)
        doomed = Path(tempfile.mkdtemp(prefix="removed.", dir=trash))
        path.rename(doomed / "model")
        atomic_files.fsync_dir(path.parent)
        shutil.rmtree(doomed, ignore_errors=True)
        try:
            path.parent.rmdir()  # drop the project folder when its last version goes
        except OSError:
            pass

    def clean(self) -> None:
        """Remove leftovers of interrupted installs and removals (call at start-up)."""
        for leftover in (self.root / ".staging", self.root / ".trash"):
            shutil.rmtree(leftover, ignore_errors=True)

    def load(self, model_id: str, prefs: Any = None, engine_for: Any = None) -> Any:
        """A ready ``Model`` for ``model_id`` (checksum verified, engine built).

        ``engine_for(model_id, manifest, onnx_path)`` may supply the engine (a cached TensorRT plan);
        when it returns None, the ONNX file is loaded by ``engines.select_engine``.
        """
        import engines
        from edge_agent.models.model import Model

        manifest, onnx = self.verified_onnx(model_id)
        engine = engine_for(model_id, manifest, onnx) if engine_for is not None else None
        if engine is not None:
            return Model(manifest, engine)
        try:
            engine = engines.select_engine(onnx, prefs)
        except engines.EngineError as exc:
            raise ModelLoadFailed(f"model {model_id}: {exc}") from exc
        return Model(manifest, engine)
