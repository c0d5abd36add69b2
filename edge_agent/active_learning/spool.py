"""The active-learning spool: sampled frames (JPEG) with their predictions, in one SQLite database (WAL),
until every upload target acknowledged them. Also the strategies' limit counters, so quotas hold across
restarts.

An item and its pending deliveries (one row per target) are written in one transaction with the limit
counts it used; an item goes when its last delivery is acknowledged. Bounded by count and bytes: the
oldest items are evicted first and counted (``evicted``). Each thread opens its own connection.

Several processes may write one spool (the daemon, and a pipeline of the Python API on the same state
directory): limit counts are added in SQL, and only the process holding ``uploaders.lock`` beside the
spool (``fcntl.flock``) uploads, since ``due`` selects deliveries without claiming them.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT    NOT NULL UNIQUE,
    created     REAL    NOT NULL,
    source_id   TEXT    NOT NULL,
    model_id    TEXT    NOT NULL,
    strategy    TEXT    NOT NULL,
    width       INTEGER NOT NULL,
    height      INTEGER NOT NULL,
    jpeg        BLOB    NOT NULL,
    predictions TEXT    NOT NULL,
    class_names TEXT    NOT NULL,
    tags        TEXT    NOT NULL,
    size        INTEGER NOT NULL,
    batch       TEXT    NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS pending (
    item_id      TEXT    NOT NULL REFERENCES items (id) ON DELETE CASCADE,
    target       TEXT    NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL    NOT NULL DEFAULT 0,
    state        TEXT    NOT NULL DEFAULT '{}',
    PRIMARY KEY (item_id, target)
);
CREATE INDEX IF NOT EXISTS pending_due ON pending (target, next_attempt);
-- The bounds (COUNT(*), SUM(size)) are checked on every write: from this index they read a few pages,
-- from the items' rows they would walk every stored JPEG's overflow pages (size comes after jpeg).
CREATE INDEX IF NOT EXISTS items_size ON items (size);
CREATE TABLE IF NOT EXISTS limits (strategy TEXT, window TEXT, bucket TEXT NOT NULL, count INTEGER NOT NULL,
                                   PRIMARY KEY (strategy, window));
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


# Add to a limit's count in its bucket; another bucket (the next hour, day or batch) starts over.
_ADD_TO_LIMIT = (
    "INSERT INTO limits VALUES (?, ?, ?, ?) ON CONFLICT (strategy, window) DO UPDATE SET "
    "count = CASE WHEN bucket = excluded.bucket THEN count + excluded.count ELSE excluded.count END, "
    "bucket = excluded.bucket")


@dataclass(frozen=True)
class Item:
    id: str
    created: float
    source_id: str
    model_id: str
    strategy: str
    width: int
    height: int
    jpeg: bytes
    predictions: dict[str, Any]  # the Roboflow response object
    class_names: tuple[str, ...]
    tags: tuple[str, ...] = ()
    batch: str = ""  # the labelling batch ([active_learning.batching_strategy]); "": none configured


@dataclass(frozen=True)
class Delivery:
    item: Item
    target: str
    attempts: int
    state: dict[str, Any]  # what a target keeps between attempts (e.g. the remote image id)


class Spool:
    def __init__(self, path: Path, max_items: int, max_bytes: int, sync: str = "full") -> None:
        self.path = path
        self.max_items, self.max_bytes = max_items, max_bytes
        self.sync = sync
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        db = self._db()
        db.executescript(SCHEMA)
        if "batch" not in {row[1] for row in db.execute("PRAGMA table_info(items)")}:  # a spool made before batches
            db.execute("ALTER TABLE items ADD COLUMN batch TEXT NOT NULL DEFAULT ''")

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if self.sync == 'full' else 'NORMAL'}")
            db.execute("PRAGMA foreign_keys=ON")
            self._local.db = db
        return db

    class _write:  # noqa: N801 - a small context manager: BEGIN IMMEDIATE ... COMMIT / ROLLBACK
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def __enter__(self) -> sqlite3.Connection:
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, kind: Any, *rest: Any) -> None:
            self.db.execute("ROLLBACK" if kind else "COMMIT")

    # ------------------------------------------------------------------ limits

    def limit_counts(self) -> dict[tuple[str, str], tuple[str, int]]:
        """(strategy, window) -> (bucket, count), as kept on disk."""
        rows = self._db().execute("SELECT strategy, window, bucket, count FROM limits").fetchall()
        return {(s, w): (b, c) for s, w, b, c in rows}

    # ------------------------------------------------------------------ writing

    def add(self, item: Item, targets: tuple[str, ...], limits: dict[tuple[str, str], tuple[str, int]]) -> int:
        """Store an item with a pending delivery per target and the limit counts it used, in one
        transaction; evict the oldest items past the bounds. Returns how many were evicted.

        ``limits``: (strategy, window) -> (bucket, how many to add). Counts are added in SQL, so two
        processes sampling into one spool (the daemon and a Python-API pipeline) add up; a new bucket
        (the next hour, day or batch) starts from the amount given."""
        return self.add_many([(item, limits)], targets)

    def add_many(self, entries: list[tuple[Item, dict[tuple[str, str], tuple[str, int]]]],
                 targets: tuple[str, ...]) -> int:
        """``add`` for several items in one transaction (one fsync); limit counts applied in order."""
        with self._write(self._db()) as db:
            for item, limits in entries:
                predictions = json.dumps(item.predictions)
                db.execute("INSERT INTO items (id, created, source_id, model_id, strategy, width, height, jpeg, "
                           "predictions, class_names, tags, size, batch) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (item.id, item.created, item.source_id, item.model_id, item.strategy, item.width,
                            item.height, item.jpeg, predictions, json.dumps(item.class_names),
                            json.dumps(item.tags), len(item.jpeg) + len(predictions), item.batch))
                db.executemany("INSERT INTO pending (item_id, target) VALUES (?, ?)",
                               [(item.id, t) for t in targets])
                db.executemany(_ADD_TO_LIMIT, [(s, w, b, c) for (s, w), (b, c) in limits.items()])
            return self._evict(db)

    def add_counts(self, limits: list[dict[tuple[str, str], tuple[str, int]]]) -> None:
        """The limit counts of items that needed no delivery (every target took them directly), in one
        transaction; applied in order, added as ``add`` adds them."""
        with self._write(self._db()) as db:
            for used in limits:
                db.executemany(_ADD_TO_LIMIT, [(s, w, b, c) for (s, w), (b, c) in used.items()])

    def _evict(self, db: sqlite3.Connection) -> int:
        count, size = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM items").fetchone()
        if count <= self.max_items and size <= self.max_bytes:
            return 0
        gone, last = 0, None
        for seq, item_size in db.execute("SELECT seq, size FROM items ORDER BY seq"):
            if count - gone <= self.max_items and size <= self.max_bytes:
                break
            gone, size, last = gone + 1, size - item_size, seq
        db.execute("DELETE FROM items WHERE seq <= ?", (last,))
        db.execute("INSERT INTO counters VALUES ('evicted', ?) ON CONFLICT (name) DO UPDATE SET "
                   "value = value + excluded.value", (gone,))
        return gone

    # ------------------------------------------------------------------ delivering

    def due(self, target: str, limit: int = 16, now: float | None = None) -> list[Delivery]:
        """Pending deliveries to ``target`` whose time has come, oldest item first."""
        # The oldest ``limit`` are chosen from the indexes alone (items.id's index holds seq), then only
        # their rows are read: sorting the joined rows would read every waiting JPEG on each call.
        rows = self._db().execute(
            "SELECT i.id, i.created, i.source_id, i.model_id, i.strategy, i.width, i.height, i.jpeg, "
            "i.predictions, i.class_names, i.tags, d.attempts, d.state, i.batch FROM ("
            "SELECT p.attempts AS attempts, p.state AS state, i.seq AS seq FROM pending p "
            "JOIN items i ON i.id = p.item_id WHERE p.target = ? AND p.next_attempt <= ? ORDER BY i.seq LIMIT ?"
            ") d JOIN items i ON i.seq = d.seq ORDER BY d.seq",
            (target, time.time() if now is None else now, limit)).fetchall()
        return [Delivery(Item(r[0], r[1], r[2], r[3], r[4], r[5], r[6], bytes(r[7]), json.loads(r[8]),
                              tuple(json.loads(r[9])), tuple(json.loads(r[10])), r[13]), target, r[11],
                         json.loads(r[12]))
                for r in rows]

    def delivered(self, item_id: str, target: str) -> None:
        """The target acknowledged the item; the item goes when no target still waits for it."""
        self.delivered_many([item_id], target)

    def delivered_many(self, item_ids: list[str], target: str) -> None:
        """``delivered`` for several items in one transaction (one fsync)."""
        with self._write(self._db()) as db:
            db.executemany("DELETE FROM pending WHERE item_id = ? AND target = ?", [(i, target) for i in item_ids])
            db.executemany("DELETE FROM items WHERE id = ? AND NOT EXISTS (SELECT 1 FROM pending WHERE item_id = ?)",
                           [(i, i) for i in item_ids])

    def failed(self, item_id: str, target: str, retry_at: float, state: dict[str, Any] | None = None) -> None:
        with self._write(self._db()) as db:
            if state is None:
                db.execute("UPDATE pending SET attempts = attempts + 1, next_attempt = ? WHERE item_id = ? AND "
                           "target = ?", (retry_at, item_id, target))
            else:
                db.execute("UPDATE pending SET attempts = attempts + 1, next_attempt = ?, state = ? WHERE "
                           "item_id = ? AND target = ?", (retry_at, json.dumps(state), item_id, target))

    def save_state(self, item_id: str, target: str, state: dict[str, Any]) -> None:
        """Progress of a multi-step upload (image sent, annotation not yet), kept across restarts."""
        with self._write(self._db()) as db:
            db.execute("UPDATE pending SET state = ? WHERE item_id = ? AND target = ?",
                       (json.dumps(state), item_id, target))

    # ------------------------------------------------------------------ figures

    def stats(self) -> dict[str, int]:
        db = self._db()
        count, size = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM items").fetchone()
        pending = dict(db.execute("SELECT target, COUNT(*) FROM pending GROUP BY target").fetchall())
        evicted = db.execute("SELECT value FROM counters WHERE name = 'evicted'").fetchone()
        return {"items": count, "bytes": size, "evicted": int(evicted[0]) if evicted else 0,
                **{f"pending_{t}": n for t, n in pending.items()}}

    def recent_jpegs(self, model_id: str, limit: int) -> list[bytes]:
        """The JPEGs of the newest items sampled for ``model_id`` (TensorRT INT8 calibration, engine checks)."""
        rows = self._db().execute("SELECT jpeg FROM items WHERE model_id = ? ORDER BY seq DESC LIMIT ?",
                                  (model_id, limit)).fetchall()
        return [bytes(r[0]) for r in rows]

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
