"""The outbox: QoS 1 messages on disk, in order, until the broker acknowledged them.

One SQLite database in WAL mode (``<state>/mqtt/outbox.sqlite3``). The bridge writes each batch of
new messages, and deletes each batch of acknowledged ones, in one transaction, so a crash or a power
cut leaves either the whole batch or none of it. ``sync="full"`` fsyncs every commit (nothing written
is lost to a power cut); ``"normal"`` leaves that to the WAL checkpoint (a crash loses nothing, a power
cut may lose the last commits).

Bounded by count and bytes. When a write would go over, the oldest *droppable* messages (per-frame
predictions) go first, then, only if those are not enough, the oldest of the rest; what was dropped is
counted in the database (``dropped``), in the same transaction as the drop.

Used from one thread (the bridge's); SQLite objects are not shared between threads.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    topic     TEXT    NOT NULL,
    payload   BLOB    NOT NULL,
    qos       INTEGER NOT NULL,
    retain    INTEGER NOT NULL,
    droppable INTEGER NOT NULL,
    size      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_droppable ON messages (droppable, seq);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class Message:
    """One message to publish. ``droppable``: may be dropped first when the outbox is full."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    droppable: bool = False

    @property
    def size(self) -> int:
        return len(self.payload) + len(self.topic)


@dataclass(frozen=True)
class Stored:
    seq: int
    message: Message


class Outbox:
    def __init__(self, path: Path, max_messages: int, max_bytes: int, sync: str = "full") -> None:
        self.path = path
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT) below.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=True)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
        self._db.executescript(SCHEMA)
        count, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages").fetchone()
        self.depth: int = count
        self.bytes: int = size
        self.last_seq = 0  # of the last message put

    # ------------------------------------------------------------------ writing

    def put(self, messages: Sequence[Message], acked: Sequence[int] = ()) -> int:
        """Delete the ``acked`` sequence numbers and store ``messages`` in order, in one transaction,
        dropping old messages past the bounds. Returns how many were dropped."""
        if not messages and not acked:
            return 0
        rows = [(m.topic, m.payload, m.qos, int(m.retain), int(m.droppable), m.size) for m in messages]
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            gone, freed = self._delete(list(acked))
            db.executemany("INSERT INTO messages (topic, payload, qos, retain, droppable, size) "
                           "VALUES (?, ?, ?, ?, ?, ?)", rows)
            if rows:  # one writer, one transaction: the batch's sequence numbers are consecutive
                self.last_seq = db.execute("SELECT last_insert_rowid()").fetchone()[0]
            depth = self.depth - gone + len(rows)
            size = self.bytes - freed + sum(r[5] for r in rows)
            dropped = 0
            if depth > self.max_messages or size > self.max_bytes:
                for droppable in (1, 0):
                    n, less = self._drop_oldest(droppable, depth - self.max_messages, size - self.max_bytes)
                    dropped, depth, size = dropped + n, depth - n, size - less
                    if depth <= self.max_messages and size <= self.max_bytes:
                        break
                db.execute("INSERT INTO counters VALUES ('dropped', ?) "
                           "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", (dropped,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.depth, self.bytes = depth, size
        return dropped

    def ack(self, seqs: Sequence[int]) -> None:
        """Delete acknowledged messages (one transaction)."""
        self.put((), seqs)

    def _delete(self, keys: list[int]) -> tuple[int, int]:
        """Delete rows by sequence number; a message dropped while in flight is simply not there."""
        gone = freed = 0
        for i in range(0, len(keys), 500):  # under SQLite's limit of bound variables
            chunk = keys[i:i + 500]
            marks = ",".join("?" * len(chunk))
            n, size = self._db.execute(
                f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages WHERE seq IN ({marks})", chunk).fetchone()
            self._db.execute(f"DELETE FROM messages WHERE seq IN ({marks})", chunk)
            gone, freed = gone + n, freed + size
        return gone, freed

    def _drop_oldest(self, droppable: int, excess_count: int, excess_bytes: int) -> tuple[int, int]:
        """Delete the fewest oldest rows of one kind that bring both bounds back within limits."""
        n = freed = 0
        last = None
        cursor = self._db.execute("SELECT seq, size FROM messages WHERE droppable = ? ORDER BY seq", (droppable,))
        for seq, size in cursor:
            if n >= excess_count and freed >= excess_bytes:
                break
            n, freed, last = n + 1, freed + size, seq
        cursor.close()
        if last is not None:
            self._db.execute("DELETE FROM messages WHERE droppable = ? AND seq <= ?", (droppable, last))
        return n, freed

    # ------------------------------------------------------------------ reading

    def after(self, seq: int, limit: int) -> list[Stored]:
        """Up to ``limit`` messages with a sequence number above ``seq``, oldest first."""
        rows = self._db.execute("SELECT seq, topic, payload, qos, retain, droppable FROM messages "
                                "WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)).fetchall()
        return [Stored(r[0], Message(r[1], bytes(r[2]), r[3], bool(r[4]), bool(r[5]))) for r in rows]

    @property
    def dropped(self) -> int:
        """Messages dropped to keep within the bounds, over the life of this outbox file."""
        row = self._db.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self._db.close()
