"""Last use of each model and eviction under a disk budget, for ``store.ModelStore``.

Owns ``Usage`` (the last use of each id: in memory, and in ``<root>/.usage.json`` as
``{model id: Unix seconds}``, rewritten atomically at most once a minute per id), ``disk_usage``
(the bytes a store root holds) and ``evict`` (what goes, in which order, when the store is over its
budget). It does not own the store's layout, its locking or how a folder is deleted: ``evict`` runs
inside ``ModelStore.evict``, which holds the store's exclusive lock, and deletes through the store.

Eviction rule (``evict``), while the store is over its budget:

1. Revisions, oldest stamp first (a stamp is when the revision stopped being current, or was kept
   without being activated). The newest revision of an id never goes this way: it is the rollback
   target (the version just replaced by an upgrade, or one installed with ``activate=False``). An
   older one goes only once its stamp is more than ``min_idle_s`` old. Protected ids are no
   exception here: their older revisions do not serve.
2. Whole models (current version and revisions), least recently used first, only when unused for
   ``min_idle_s``: a model counts as used at its last use, at its install when never used, and when
   its newest revision was made. Built-in and protected ids never go.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent import atomic_files

if TYPE_CHECKING:
    from edge_agent.store.model_store import ModelStore, Revision

log = logging.getLogger(__name__)

USAGE_WRITE_INTERVAL_S = 60.0  # a use is written to .usage.json at most this often per id


class Usage:
    """The last use of each model id under ``root``; thread-safe, read from disk on first use."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._usage: dict[str, float] | None = None
        self._written: dict[str, float] = {}
        self._warned = False

    def touch(self, model_id: str, *, now: float | None = None, force: bool = False) -> None:
        """Record that ``model_id`` was used. Kept in memory; ``.usage.json`` is rewritten (atomically)
        at most once a minute per id, so a request pays for a write at most that often, and a request
        that does not write never waits for one. A store that cannot be written is logged once."""
        now = time.time() if now is None else now
        with self._lock:
            usage = self._map()
            usage[model_id] = now
            if not force and abs(now - self._written.get(model_id, -1e18)) < USAGE_WRITE_INTERVAL_S:
                return
            self._written.update(usage)  # on its way to disk; a failure is retried a minute later
        with self._write_lock:
            with self._lock:
                text = json.dumps(self._map(), indent=1, sort_keys=True)  # the newest, written last
            try:
                atomic_files.write_text(self.root / ".usage.json", text)
            except OSError as exc:
                if not self._warned:
                    log.warning("model store: cannot record model use in %s: %s", self.root, exc)
                    self._warned = True

    def last_used(self, model_id: str) -> float | None:
        """When ``model_id`` was last used (Unix seconds), as recorded by ``touch``; None if never."""
        with self._lock:
            return self._map().get(model_id)

    def forget(self, model_id: str) -> None:
        """Drop ``model_id`` from memory (a removed model); the file follows at the next write."""
        with self._lock:
            self._map().pop(model_id, None)
            self._written.pop(model_id, None)

    def _map(self) -> dict[str, float]:
        if self._usage is None:
            path = self.root / ".usage.json"
            self._usage = {}
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
                self._usage = {str(k): float(v) for k, v in raw.items()}
            except FileNotFoundError:
                pass
            except (OSError, ValueError, AttributeError, TypeError) as exc:
                log.warning("model store: %s is unreadable, starting a new one: %s", path, exc)
            self._written = dict(self._usage)
        return self._usage


def disk_usage(root: Path) -> int:
    """Bytes of the installed versions and revisions under ``root`` (a file with several hard links
    counted once; in-flight ``.staging`` and ``.trash`` not counted)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if d not in (".staging", ".trash")]
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def evict(store: ModelStore, budget_bytes: int, min_idle_s: float, protected: set[str] | frozenset[str],
          now: float) -> list[str]:
    """Bring ``store`` under ``budget_bytes`` (the module docstring has the rule); the caller holds
    the store's exclusive lock. Returns what was removed (``id@revision`` for a revision, else the id).
    The disk is measured again after each removal: a hard-linked file frees nothing until its last link
    goes."""
    removed: list[str] = []
    used = disk_usage(store.root)
    for revision in _old_revisions(store, now, min_idle_s):
        if used <= budget_bytes:
            break
        store._delete(revision.path)
        used = disk_usage(store.root)
        removed.append(f"{revision.model_id}@{revision.name}")
        log.info("model store: evicted revision %s of %s (over the disk budget)", revision.name,
                 revision.model_id)
    for idle_since, model_id in _idle_models(store, now, min_idle_s, protected):
        if used <= budget_bytes:
            break
        store.remove(model_id)
        used = disk_usage(store.root)
        removed.append(model_id)
        log.warning("model store: evicted %s, unused for %.1f days (over the disk budget)",
                    model_id, (now - idle_since) / 86400)
    if used > budget_bytes:
        log.warning("model store: %.1f MB used, over the budget of %.1f MB, and nothing more may be "
                    "evicted (protected, used or kept within %.1f days, or the newest revision of an id)",
                    used / 2**20, budget_bytes / 2**20, min_idle_s / 86400)
    return removed


def _old_revisions(store: ModelStore, now: float, min_idle_s: float) -> list[Revision]:
    """The revisions that may be evicted, oldest first: all but the newest of each id, kept for
    longer than ``min_idle_s``."""
    found = [r for model_id in store._revised_ids() for r in store.revisions(model_id)[1:]
             if now - r.stopped_at > min_idle_s]
    return sorted(found, key=lambda r: r.stopped_at)


def _idle_models(store: ModelStore, now: float, min_idle_s: float,
                 protected: set[str] | frozenset[str]) -> list[tuple[float, str]]:
    """(last use, id) of the installed models that may be evicted, least recently used first. A
    model never touched counts from when its folder was last changed (its install); a revision made
    since (a version kept without activating it) counts as a use."""
    found = []
    for stored in store.list():
        model_id = stored.manifest.model_id
        if stored.builtin or model_id in protected:
            continue
        used = store.last_used(model_id)
        idle_since = used if used is not None else stored.path.stat().st_mtime
        newest = store.revisions(model_id)[:1]
        if newest:
            idle_since = max(idle_since, newest[0].stopped_at)
        if now - idle_since >= min_idle_s:
            found.append((idle_since, model_id))
    return sorted(found)
