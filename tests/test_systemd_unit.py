"""systemd/edge-agent.service: systemd-analyze verify passes, the offline security exposure stays low,
and the unit says what the daemon relies on (notify, watchdog, restart limits, directories, the launcher,
the exits that must not restart, the system calls its work needs).

tests/test_unit_filter.py runs that work under the unit's system-call filter."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from syscall_filter import denied_names, effective_filter

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "edge-agent.service"
pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd-analyze missing (.ci/run installs Debian's systemd)")


def _root(tmp_path: Path) -> Path:
    """A root with the system's units, a stand-in for the launcher at ExecStart (the package is not
    installed here; the installed unit is verified with its real ExecStart in tests/test_deb.py) and kill
    for ExecReload."""
    root = tmp_path / "root"
    for units in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")):
        if units.is_dir():
            shutil.copytree(units, root / "usr/lib/systemd/system", dirs_exist_ok=True, symlinks=True)
            break
    exe = root / "usr/bin/edge-agent"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    kill = root / "bin/kill"  # ExecReload
    kill.parent.mkdir(parents=True)
    shutil.copy(shutil.which("kill") or "/bin/kill", kill)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system" / UNIT.name)
    return root


def test_unit_verifies(tmp_path: Path) -> None:
    proc = subprocess.run(["systemd-analyze", "verify", f"--root={_root(tmp_path)}", UNIT.name],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr


def test_security_exposure_stays_low(tmp_path: Path) -> None:
    proc = subprocess.run(["systemd-analyze", "security", "--offline=true", f"--root={_root(tmp_path)}",
                           UNIT.name], capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for edge-agent\.service: ([0-9.]+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    print(f"systemd-analyze security exposure: {match.group(1)}")
    assert float(match.group(1)) <= 2.5  # 2.0 when written; GPU and camera access keep devices open


def _settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_unit_declares_what_the_daemon_relies_on() -> None:
    settings = _settings()
    expect = {"Type": "notify", "NotifyAccess": "all", "Restart": "on-failure", "User": "edge-agent",
              "StateDirectory": "edge-agent", "CacheDirectory": "edge-agent", "ConfigurationDirectory": "edge-agent",
              "ProtectSystem": "strict", "ProtectHome": "yes", "NoNewPrivileges": "yes", "PrivateTmp": "no",
              "KillMode": "mixed"}
    for key, value in expect.items():
        assert settings.get(key) == [value], key
    assert int(settings["WatchdogSec"][0]) >= 10
    assert int(settings["StartLimitBurst"][0]) <= 10
    assert settings["ExecStart"] == ["/usr/bin/edge-agent serve"]  # the launcher: current version's venv, or 78
    # 2: the configuration does not validate; 78 (EX_CONFIG): the launcher finds no installed version
    assert {"2", "78"} <= set(settings["RestartPreventExitStatus"][0].split())
    # The GPU and camera groups come from the user's membership (postinst): naming a group that does not
    # exist (render, on many Jetsons) fails every start with 216/GROUP.
    assert "SupplementaryGroups" not in settings
    assert "PrivateDevices" not in settings  # TensorRT needs /dev/nvhost-*, /dev/nvmap; cameras /dev/video*


# nice and ioprio_set: the TensorRT build child (engines/trt_build.py); sched_setaffinity: ONNX Runtime's
# thread pinning; prctl: the build child's parent-death signal.
NEEDED = {"setpriority", "ioprio_set", "sched_setaffinity", "prctl"}


def test_the_denied_system_calls_leave_the_work_alone() -> None:
    text = UNIT.read_text()
    denied = denied_names(text)
    assert denied, "the unit denies no system calls"
    assert not NEEDED & denied
    assert {"setuid", "chroot", "init_module"} <= denied  # @privileged stays denied
    allow_list, allowed = effective_filter(text)
    assert allow_list
    assert NEEDED <= allowed
    assert _settings()["SystemCallErrorNumber"] == ["EPERM"]  # a refused call fails, the process lives
    assert _settings()["RestrictRealtime"] == ["yes"]  # what @resources no longer forbids: realtime


@pytest.mark.parametrize("config", [
    pytest.param("[server]\nprot = 9001\n", id="unknown-key"),
    pytest.param("[server]\nthreads = 0\n", id="out-of-range"),
    pytest.param("[server\n", id="not-toml"),
])
def test_a_bad_configuration_exits_with_a_code_that_prevents_restarts(tmp_path: Path, config: str) -> None:
    """``edge-agent serve`` with a configuration that does not validate exits 2 (edge_agent/cli.py), with
    one line naming the file, before it listens: RestartPreventExitStatus=2 makes that one failed start.
    (A row whose file did validate would serve on loopback until the timeout.)"""
    path = tmp_path / "config.toml"
    path.write_text(config)
    proc = subprocess.run([sys.executable, "-m", "edge_agent", "--config", str(path), "serve", "--host", "127.0.0.1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "2" in _settings()["RestartPreventExitStatus"][0].split()
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(path) in lines[0], proc.stderr
