"""The engine cache: one TensorRT plan per key, with a JSON sidecar, written atomically.

Layout, under ``<cache_dir>/engines/``::

    <digest>.plan          a plain TensorRT plan (serialised engine): trtexec --loadEngine, DeepStream
                           and Triton load it as it is
    <digest>.json          the sidecar: the key's fields, the plan's size and sha256, the engine's I/O
                           tensors, the model id, build time and the verification against ONNX Runtime
    timing/<trt>-<gpu>.cache   TensorRT's timing cache (speeds up later builds on the same GPU)
    <digest>.failed        why the last build of this key failed (not retried until forced)
    .tmp/                  plans being written by a build (removed on start)

The key (``EngineKey``) is everything that makes a plan valid for a model on a machine: the ONNX file's
sha256, the TensorRT version, the GPU's name and compute capability, the L4T release on a Jetson, the
precision, the DLA core and the batch profile. Its digest names the files, so a JetPack upgrade (new
TensorRT, new L4T) looks for another file, misses, and rebuilds once; the old files are pruned.

Writes: the build writes the plan into ``.tmp/``; ``store`` fsyncs it, renames it into place, then
writes the sidecar (temp file, fsync, rename, fsync the folder). The sidecar carries the plan's sha256,
so a power cut at any moment leaves either a complete entry or a plan without a valid sidecar, which
``lookup`` treats as absent. ``lookup`` checks the sidecar's key against the one asked for and the
plan's size and sha256; an entry that fails is deleted (and why is returned), never loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FORMAT = 1


@dataclass(frozen=True)
class EngineKey:
    onnx_sha256: str
    tensorrt: str
    gpu: str
    compute_capability: str
    l4t: str | None
    precision: str  # "fp32" | "fp16" | "int8"
    dla_core: int | None
    batch: tuple[int, int, int]  # min, opt, max of the optimisation profile

    def fields(self) -> dict[str, Any]:
        return {**asdict(self), "batch": list(self.batch)}

    @property
    def digest(self) -> str:
        canonical = json.dumps(self.fields(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]


@dataclass
class CacheEntry:
    key: EngineKey
    plan: Path
    sidecar: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Lookup:
    entry: CacheEntry | None
    rejected: str | None = None  # why an entry that was there was thrown away


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in chunks of 1 MiB."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically: a temp file beside it, fsync, rename, fsync the folder."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


class EngineCache:
    def __init__(self, cache_dir: Path) -> None:
        self.root = Path(cache_dir) / "engines"

    def paths(self, key: EngineKey) -> tuple[Path, Path]:
        return self.root / f"{key.digest}.plan", self.root / f"{key.digest}.json"

    def temp_plan(self, key: EngineKey) -> Path:
        """A fresh path for a build to write its plan to (same file system as the cache)."""
        tmp = self.root / ".tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return tmp / f"{key.digest}.{os.getpid()}.{time.monotonic_ns()}.plan"

    def timing_cache(self, tensorrt: str, gpu: str, compute_capability: str) -> Path:
        slug = "".join(c if c.isalnum() or c in ".-" else "_" for c in f"{tensorrt}-{gpu}-{compute_capability}")
        return self.root / "timing" / f"{slug}.cache"

    def lookup(self, key: EngineKey) -> Lookup:
        """The valid entry for ``key``, or None (and why an entry that was there was rejected)."""
        plan, sidecar_path = self.paths(key)
        if not sidecar_path.exists():
            if plan.exists():  # a build that stopped between the two renames
                self.discard(key)
                return Lookup(None, "a plan without its sidecar (an interrupted write)")
            return Lookup(None)
        why = None
        sidecar: dict[str, Any] = {}
        try:
            sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
            if not isinstance(sidecar, dict):
                raise ValueError("not an object")
        except (OSError, ValueError) as exc:
            why = f"unreadable sidecar: {exc}"
        if why is None:
            why = self._check(key, plan, sidecar)
        if why is not None:
            log.warning("engine cache: rejecting %s: %s", plan.name, why)
            self.discard(key)
            return Lookup(None, why)
        return Lookup(CacheEntry(key, plan, sidecar))

    @staticmethod
    def _check(key: EngineKey, plan: Path, sidecar: dict[str, Any]) -> str | None:
        if sidecar.get("format") != FORMAT:
            return f"sidecar format {sidecar.get('format')!r}, expected {FORMAT}"
        if sidecar.get("key") != key.fields():
            differs = sorted(k for k, v in key.fields().items() if (sidecar.get("key") or {}).get(k) != v)
            return "sidecar is for another key (" + ", ".join(differs) + " differ)"
        want = sidecar.get("plan") or {}
        try:
            size = plan.stat().st_size
        except OSError:
            return "the plan file is missing"
        if size != want.get("bytes"):
            return f"the plan has {size} bytes, the sidecar says {want.get('bytes')} (truncated or replaced)"
        if sha256_file(plan) != want.get("sha256"):
            return "the plan's sha256 does not match the sidecar (corrupt)"
        return None

    def store(self, key: EngineKey, built_plan: Path, **meta: Any) -> CacheEntry:
        """Move ``built_plan`` (written by a build, see ``temp_plan``) into the cache under ``key``."""
        plan, sidecar_path = self.paths(key)
        fd = os.open(built_plan, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        sidecar = {"format": FORMAT, "key": key.fields(),
                   "plan": {"file": plan.name, "bytes": built_plan.stat().st_size, "sha256": sha256_file(built_plan)},
                   "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **meta}
        sidecar_path.unlink(missing_ok=True)  # from here until the new sidecar lands, the entry is absent
        os.replace(built_plan, plan)
        _fsync_dir(self.root)
        write_json(sidecar_path, sidecar)
        return CacheEntry(key, plan, sidecar)

    def mark_failed(self, key: EngineKey, reason: str) -> None:
        """Remember that building ``key`` failed, so that it is not retried on every start."""
        self.root.mkdir(parents=True, exist_ok=True)
        write_json(self.root / f"{key.digest}.failed", {"format": FORMAT, "key": key.fields(), "reason": reason,
                                                         "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})

    def failure(self, key: EngineKey) -> str | None:
        """Why the last build of ``key`` failed, if it did."""
        try:
            data = json.loads((self.root / f"{key.digest}.failed").read_text(encoding="utf-8"))
            return str(data["reason"]) if data.get("key") == key.fields() else None
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def clear_failure(self, key: EngineKey) -> None:
        (self.root / f"{key.digest}.failed").unlink(missing_ok=True)

    def discard(self, key: EngineKey) -> None:
        for path in reversed(self.paths(key)):  # sidecar first: a plan alone is never trusted
            path.unlink(missing_ok=True)

    def entries(self) -> list[dict[str, Any]]:
        """Every sidecar in the cache (unchecked), for listing."""
        found = []
        for path in sorted(self.root.glob("*.json")) if self.root.is_dir() else []:
            try:
                found.append(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                continue
        return found

    def prune(self, keep: set[str] | None = None, tensorrt: str | None = None) -> int:
        """Delete leftovers of interrupted builds and, given this machine's TensorRT version, every
        entry built by another version (they can never load again). Returns the files removed."""
        removed = 0
        shutil.rmtree(self.root / ".tmp", ignore_errors=True)
        if tensorrt is None:
            return removed
        for sidecar in self.entries():
            key = sidecar.get("key") or {}
            plan_name = (sidecar.get("plan") or {}).get("file", "")
            digest = plan_name.removesuffix(".plan")
            if key.get("tensorrt") != tensorrt and digest and digest not in (keep or set()):
                for path in (self.root / f"{digest}.json", self.root / f"{digest}.plan"):
                    if path.exists():
                        path.unlink()
                        removed += 1
        return removed
