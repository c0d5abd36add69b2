"""The scheduling priority of active learning's writer thread (encodes sampled frames, writes the
spool): ``[active_learning] thread_priority``. The uploaders wait on the network and keep the normal
priority.

- ``low`` (the default): nice +10, a CFS weight of 110 against 1024, about a tenth of a contended
  core. Inference keeps nearly all the CPU, and the writer still makes progress on a busy device.
- ``normal``: the process's priority: every sampled frame is written, at inference's expense.
- ``idle``: Linux's ``SCHED_IDLE`` policy, the thread runs only when no other thread wants the core.
  Risky: on a device that inference keeps busy it may never run (frames are dropped and counted as
  ``dropped_queue_full``), and it can be descheduled while it holds the GIL or the spool's SQLite
  write transaction, stalling the threads that wait for them (priority inversion).

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
