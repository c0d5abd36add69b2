"""The MQTT outbox on a real SQLite file: order, acknowledgement, bounds, restarts and kill -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_agent.mqtt.outbox import Message, Outbox


def _msg(i: int, droppable: bool = True, size: int = 10) -> Message:
    return Message(f"t/{i}", str(i).encode().ljust(size, b"."), qos=1, droppable=droppable)


def test_order_ack_and_reopen(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3", 100, 1 << 20)
    box.put([_msg(i) for i in range(5)])
    rows = box.after(0, 3)
    assert [r.message.topic for r in rows] == ["t/0", "t/1", "t/2"]
    assert [r.message.topic for r in box.after(rows[-1].seq, 10)] == ["t/3", "t/4"]
    box.ack([rows[0].seq, rows[2].seq, 999])  # an unknown seq (dropped meanwhile) is no error
    assert box.depth == 3
    assert box.bytes == sum(_msg(i).size for i in (1, 3, 4))
    box.close()
    again = Outbox(tmp_path / "o.sqlite3", 100, 1 << 20)  # a restart finds what was not acknowledged
    assert [r.message.topic for r in again.after(0, 10)] == ["t/1", "t/3", "t/4"]
    assert again.depth == 3
    assert again.bytes == sum(_msg(i).size for i in (1, 3, 4))
    assert again.after(0, 1)[0].message == _msg(1)


def test_bounds_drop_the_oldest_predictions_first_and_count_them(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3", max_messages=5, max_bytes=1 << 20)
    box.put([_msg(0, droppable=False), _msg(1), _msg(2, droppable=False), _msg(3)])
    assert box.put([_msg(4), _msg(5), _msg(6)]) == 2  # 7 > 5: the two oldest predictions (1, 3) go
    assert [r.message.topic for r in box.after(0, 10)] == ["t/0", "t/2", "t/4", "t/5", "t/6"]
    # only kept messages that cannot be dropped first are left: then the oldest of them go
    box.put([_msg(i, droppable=False) for i in range(7, 12)])
    assert [r.message.topic for r in box.after(0, 10)] == [f"t/{i}" for i in range(7, 12)]
    assert box.dropped == 2 + 3 + 2
    assert box.depth == 5
    box.close()
    assert Outbox(tmp_path / "o.sqlite3", 5, 1 << 20).dropped == 7  # the count is kept on disk


def test_byte_bound(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3", max_messages=1000, max_bytes=100_000)
    for i in range(30):
        box.put([_msg(i, size=10_000)])
        assert box.bytes <= 100_000
    kept = [r.message.topic for r in box.after(0, 100)]
    assert kept == [f"t/{i}" for i in range(21, 30)]  # 9 x (10,000 + topic) fit
    assert box.bytes == sum(_msg(i, size=10_000).size for i in range(21, 30))


WRITER = """
import sys
from pathlib import Path
from edge_agent.mqtt.outbox import Message, Outbox
box = Outbox(Path(sys.argv[1]), 10**9, 10**12)
i = 0
print("ready", flush=True)
while True:
    box.put([Message("t", f"{i}:{j}".encode()) for j in range(50)])
    i += 1
"""


@pytest.mark.parametrize("sync", ["full", "normal"])
def test_kill_9_mid_write_leaves_whole_batches(tmp_path: Path, sync: str) -> None:
    """Batches are transactions: after kill -9 at any moment each batch is there whole or not at all."""
    path = tmp_path / "o.sqlite3"
    code = WRITER.replace("10**12)", f"10**12, sync={sync!r})")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"ready"
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone() == ("ok",)
    box = Outbox(path, 10**9, 10**12)
    payloads = [r.message.payload.decode() for r in box.after(0, 10**7)]
    assert payloads, "the writer wrote nothing in 0.5 s"
    batches: dict[str, list[int]] = {}
    for p in payloads:
        batch, j = p.split(":")
        batches.setdefault(batch, []).append(int(j))
    for batch, js in batches.items():
        assert js == list(range(50)), batch
    assert [int(b) for b in batches] == list(range(len(batches)))  # in order, none missing in between
    assert box.depth == len(payloads)
