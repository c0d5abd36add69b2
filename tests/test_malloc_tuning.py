"""``[engine] malloc_tuning``: glibc's allocator tuned at the runtime's start for frame-sized buffers
(edge_agent/runtime.py ``tune_malloc``), and left alone when the setting is off."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

_MALLOC_PROBE = """
import ctypes, json, sys, tempfile
from pathlib import Path
from edge_agent import runtime
from edge_agent.settings import Settings

class Mallinfo(ctypes.Structure):  # glibc's struct mallinfo (int fields: enough for 20 MB)
    _fields_ = [(name, ctypes.c_int) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo.restype = Mallinfo
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
settings = Settings.defaults(Path(tempfile.mkdtemp()))
settings = settings.model_copy(update={"engine": settings.engine.model_copy(
    update={"malloc_tuning": sys.argv[1] == "on"})})
rt = runtime.Runtime(settings)
before = libc.mallinfo().hblkhd
buffer = libc.malloc(20 * 1024 * 1024)  # a 4K frame and more
print(json.dumps({"tuned": runtime.malloc_tuned(), "mapped": libc.mallinfo().hblkhd - before}))
"""


@pytest.mark.parametrize("tuning", ["on", "off"])
def test_malloc_tuning_takes_frame_sized_buffers_from_the_heap(tuning: str) -> None:
    """With ``[engine] malloc_tuning`` (the default) a 20 MB buffer comes from the heap, where freed memory
    is reused; with glibc's defaults it is a mapping of its own (in a fresh process: the setting is the
    process's)."""
    out = subprocess.run([sys.executable, "-c", _MALLOC_PROBE, tuning], capture_output=True, text=True,
                         timeout=120, cwd=ROOT, check=True)
    found = json.loads(out.stdout.strip().splitlines()[-1])
    if tuning == "on":
        assert found == {"tuned": True, "mapped": 0}
    else:
        assert found["tuned"] is False
        assert found["mapped"] >= 20 * 1024 * 1024
