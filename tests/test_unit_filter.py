"""The unit's system-call filter lets the daemon's work run: ONNX Runtime loads and runs a model without
an error line, and the TensorRT build child really runs at nice +10 in the idle I/O class.

The filter is the one systemd would install for systemd/edge-agent.service: the ``SystemCallFilter=``
lines of its [Service] section, read as systemd reads them (the first line decides between an allow list
and a deny list; an allow list starts with @default; ``~`` lines take from an allow list), with every
group expanded by ``systemd-analyze syscall-filter`` (systemd's own tables, not a list kept here). It is
loaded with libseccomp (Debian's python3-seccomp, under /usr/bin/python3) with EPERM for everything else,
as SystemCallErrorNumber=EPERM does, and that process then execs this venv's python: the filter and
no_new_privs survive exec. The other seccomp-based settings (RestrictRealtime, RestrictAddressFamilies,
LockPersonality, SystemCallArchitectures) are not reproduced.

Each test also runs against the unit as it was with ``~@privileged @resources``, where the same work
must fail: that row shows the harness really filters.

Skipped where systemd-analyze or python3-seccomp is missing; with CI=true they fail instead (.ci/run
installs systemd and python3-seccomp).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from syscall_filter import effective_filter

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "edge-agent.service"
DEMO_MODEL = ROOT / "edge_agent" / "demo" / "store" / "shapes" / "1" / "model.onnx"
SYSTEM_PYTHON = "/usr/bin/python3"
ORT_ERROR = "[E:onnxruntime:"  # ONNX Runtime's prefix for a logged error, e.g. pthread_setaffinity_np failed
IOPRIO_GET = {"x86_64": 252, "aarch64": 31}  # engines/trt_build.py sets the I/O class on these two
IOPRIO_CLASS_IDLE = 3

# Runs under /usr/bin/python3: argv[1] is a JSON list of the allowed names, argv[2:] what to exec.
LOADER = """
import json, os, sys
import seccomp
allowed = json.loads(sys.argv[1])
f = seccomp.SyscallFilter(seccomp.ERRNO(1))  # EPERM, as SystemCallErrorNumber=EPERM
skipped = []
for name in allowed:
    try:
        f.add_rule(seccomp.ALLOW, name)
    except (RuntimeError, ValueError):  # a name this libseccomp does not know (newer than it)
        skipped.append(name)
if skipped:
    sys.stderr.write("seccomp loader: names libseccomp does not know, skipped: " + " ".join(skipped) + "\\n")
f.load()
os.execv(sys.argv[2], sys.argv[2:])
"""

# The daemon's own engine (engines.select_engine, the default preferences: ONNX Runtime picks its thread
# count and pins its threads) and a bare InferenceSession with ONNX Runtime's defaults, each run once.
ORT_CHILD = """
import json, sys
import numpy as np
import onnxruntime as ort
from engines import EnginePrefs, select_engine
model = sys.argv[1]
engine = select_engine(model, EnginePrefs())
shape = [d or 1 for d in engine.inputs[0].shape]
outputs = engine.run(np.zeros(shape, np.float32))
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
bare = session.run(None, {session.get_inputs()[0].name: np.zeros(shape, np.float32)})
print(json.dumps({"engine": engine.name, "outputs": [list(o.shape) for o in outputs],
                  "bare_outputs": [list(o.shape) for o in bare]}))
"""

# What the build child does first (engines.trt_build.main calls _lower_priority), then what it got.
PRIORITY_CHILD = """
import ctypes, json, os, sys
from engines.trt_build import _lower_priority
before = os.getpriority(os.PRIO_PROCESS, 0)
_lower_priority()
libc = ctypes.CDLL(None, use_errno=True)
ioprio = libc.syscall(int(sys.argv[1]), 1, 0)  # ioprio_get(IOPRIO_WHO_PROCESS, self)
print(json.dumps({"nice_before": before, "nice_after": os.getpriority(os.PRIO_PROCESS, 0),
                  "ioprio": ioprio, "errno": ctypes.get_errno()}))
"""


def _require(ok: bool, reason: str) -> None:
    """Skip where a tool is missing; under CI (CI=true) a missing tool is a failure. A skip at run time
    rather than a skipif marker, because under CI the same check must fail the test instead."""
    if not ok:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI must install it")
        pytest.skip(reason)


def _has_python_seccomp() -> bool:
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return False
    return subprocess.run([SYSTEM_PYTHON, "-c", "import seccomp"], capture_output=True, timeout=30).returncode == 0


@pytest.fixture(scope="module")
def tools() -> None:
    _require(shutil.which("systemd-analyze") is not None, "systemd-analyze missing (Debian's systemd)")
    _require(_has_python_seccomp(), "libseccomp's Python module missing (apt-get install python3-seccomp)")


def _old_unit_text() -> str:
    """This unit with @resources denied again, as it was before: the work must fail under it."""
    text = UNIT.read_text()
    old = text.replace("SystemCallFilter=~@privileged\n", "SystemCallFilter=~@privileged @resources\n")
    assert old != text, "the unit no longer has the line 'SystemCallFilter=~@privileged'; update this test"
    return old


UNITS = [pytest.param("unit", True, id="this-unit"),
         pytest.param("old", False, id="old-unit-denying-@resources")]
ONE_CPU = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one CPU: ONNX Runtime starts no worker thread "
                                                                "to pin, so the old filter shows nothing")
ORT_UNITS = [UNITS[0], pytest.param("old", False, id="old-unit-denying-@resources", marks=ONE_CPU)]


def _unit_text(which: str) -> str:
    return UNIT.read_text() if which == "unit" else _old_unit_text()


def run_filtered(unit_text: str, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -c code args`` (this venv's python, in the repository root) under the unit's filter."""
    allow_list, names = effective_filter(unit_text)
    assert allow_list, "the unit's SystemCallFilter is a deny list; this harness loads allow lists"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([SYSTEM_PYTHON, "-c", LOADER, json.dumps(sorted(names)), sys.executable, "-c", code,
                           *args], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)


def _result(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    print(proc.stderr, file=sys.stderr)  # the loader's skipped names, shown with -s or on failure
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_the_effective_filter_allows_the_work_and_keeps_privileged_out(tools: None) -> None:
    allow_list, names = effective_filter(UNIT.read_text())
    assert allow_list
    assert {"setpriority", "ioprio_set", "sched_setaffinity", "getpriority", "ioprio_get", "prctl"} <= names
    assert not {"setuid", "chroot", "mount", "init_module", "reboot", "settimeofday"} & names
    _, old = effective_filter(_old_unit_text())
    assert "setpriority" not in old
    assert "sched_setaffinity" not in old  # the harness's control row


@pytest.mark.parametrize(("which", "expect_clean"), ORT_UNITS)
def test_onnxruntime_loads_and_runs_without_an_error_line(tools: None, which: str, expect_clean: bool) -> None:
    proc = run_filtered(_unit_text(which), ORT_CHILD, str(DEMO_MODEL))
    result = _result(proc)
    assert result["engine"] == "onnxruntime:CPUExecutionProvider"
    assert result["outputs"]
    assert result["outputs"] == result["bare_outputs"]
    errors = [line for line in proc.stderr.splitlines() if ORT_ERROR in line]
    if expect_clean:
        assert errors == [], "\n".join(errors)
    else:
        assert any("pthread_setaffinity_np failed" in line for line in errors), proc.stderr


@pytest.mark.skipif(platform.machine() not in IOPRIO_GET, reason="engines/trt_build.py sets the I/O class on "
                    "x86_64 and aarch64 only")
@pytest.mark.parametrize(("which", "expect_lowered"), UNITS)
def test_build_child_lowers_its_priority(tools: None, which: str, expect_lowered: bool) -> None:
    result = _result(run_filtered(_unit_text(which), PRIORITY_CHILD, str(IOPRIO_GET[platform.machine()])))
    nice_before, nice_after, ioprio = result["nice_before"], result["nice_after"], result["ioprio"]
    assert isinstance(nice_before, int)
    assert isinstance(ioprio, int)
    assert ioprio >= 0, f"ioprio_get failed under the filter: errno {result['errno']}"
    lowered = nice_after == min(19, nice_before + 10) and ioprio >> 13 == IOPRIO_CLASS_IDLE
    assert lowered == expect_lowered, result
