"""The scheduling priority of active learning's own threads (the writer, the uploaders):
``[active_learning] thread_priority``.

Their work is work nobody waits for, so by default they take the CPU only when inference leaves it:

- ``idle``: Linux's ``SCHED_IDLE`` policy, the thread runs when no other thread wants the core. A
  pipeline that keeps every core busy loses (almost) nothing to sampling; frames the writer has no
  time for are dropped and counted (``dropped_queue_full``), never waited for.
- ``low``: nice +10 (about a tenth of a contended core).
- ``normal``: the process's priority: every sampled frame is written, at inference's expense.

Linux gives each thread its own policy and nice value. Elsewhere, or where the system refuses, the
thread keeps the process's priority. An unprivileged thread cannot raise its priority again, so a
thread lowers its own once, when it starts.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Literal

log = logging.getLogger(__name__)

ThreadPriority = Literal["idle", "low", "normal"]
LOW_NICENESS = 10  # CFS weight 110 against 1024 for nice 0


def lower_this_thread(priority: ThreadPriority) -> None:
    """Give the calling thread ``priority`` (see the module's docstring)."""
    if priority == "normal" or not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        if priority == "idle":
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        else:
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + LOW_NICENESS)
    except OSError as exc:  # a sandbox that forbids it: the thread keeps the process's priority
        log.debug("cannot lower the priority of thread %s: %s", threading.current_thread().name, exc)
