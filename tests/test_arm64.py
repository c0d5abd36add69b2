"""The arm64 Debian package (Debian 12 target) on an arm64 Debian 12 root under qemu-user emulation:
installed offline, selftest, one HTTP request per task, upgraded to a higher version, purged
(tools/arm64_check.py, in private namespaces; the root comes from tools/arm64_root.sh, cached).

Budget: making the root (from scratch) and the check together stay under BUDGET_S; the package builds
(wheels from PyPI) are not counted. Skipped where the machine cannot run it (not root, no qemu-aarch64
binfmt handler, no mmdebstrap or debootstrap), except under CI=true, where that is a failure."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import edge_agent

ROOT = Path(__file__).resolve().parent.parent
VERSION = edge_agent.__version__
NEW_VERSION = f"{VERSION}.1"  # sorts above VERSION for dpkg
TARGET = "debian12"
BINFMT = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
BUDGET_S = 600  # root from scratch + install, selftest, requests, upgrade, purge: 10 minutes of CI at most
CACHE = Path(os.environ.get("ARM64_ROOT_CACHE", "/var/cache/edge-agent-ci"))

pytestmark = [pytest.mark.slow, pytest.mark.arm64]


def build_packages(out: Path) -> tuple[Path, Path]:
    """The package, twice: as the project's version and as a higher one for the upgrade. The only place
    that knows packaging/build_deb.py's options."""
    debs = []
    for version in (VERSION, NEW_VERSION):
        proc = subprocess.run([sys.executable, str(ROOT / "packaging/build_deb.py"), "--target", TARGET, "--arch",
                               "arm64", "--version", version, "--out", str(out), "--wheelhouse",
                               str(out / "wheelhouse")], capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        debs.append(out / f"edge-agent_{version}+{TARGET}_arm64.deb")
    return debs[0], debs[1]


def _missing() -> list[str]:
    """What this machine lacks to run the check, and how to get it."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (chroot, mounts and namespaces)")
    if not BINFMT.is_file() or not BINFMT.read_text().startswith("enabled"):
        missing.append(f"the qemu-aarch64 binfmt handler ({BINFMT}): apt-get install qemu-user-static "
                       "binfmt-support; update-binfmts --enable qemu-aarch64")
    if shutil.which("mmdebstrap") is None and shutil.which("debootstrap") is None:
        missing.append("mmdebstrap (apt-get install mmdebstrap arch-test) or debootstrap")
    missing += [tool for tool in ("dpkg-deb", "unshare", "chroot") if shutil.which(tool) is None]
    return missing


@pytest.fixture(scope="module")
def runnable() -> None:
    """Skip where a tool is missing, at run time because under CI (CI=true) the same check must fail."""
    missing = _missing()
    if missing and os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and this machine lacks {'; '.join(missing)}: the arm64 check must run in CI")
    if missing:
        pytest.skip(f"needs {'; '.join(missing)}")


@pytest.fixture(scope="module")
def debs(runnable: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_packages(tmp_path_factory.mktemp("dist-arm64"))


@pytest.fixture(scope="module")
def root_tarball(runnable: None) -> tuple[Path, float]:
    """The cached root (tools/arm64_root.sh builds it when the cache lacks it); and how long that took."""
    t0 = time.monotonic()
    proc = subprocess.run(["sh", str(ROOT / "tools/arm64_root.sh"), str(CACHE)], capture_output=True, text=True,
                          timeout=BUDGET_S)
    seconds = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-4000:]
    print(f"arm64 root: {proc.stderr.strip().splitlines()[-1]} ({seconds:.0f} s)")
    return Path(proc.stdout.strip().splitlines()[-1]), seconds


@pytest.fixture(scope="module")
def report(root_tarball: tuple[Path, float], debs: tuple[Path, Path],
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tarball, root_seconds = root_tarball
    out = tmp_path_factory.mktemp("arm64-check") / "report.json"
    left = max(BUDGET_S - root_seconds, 60)
    proc = subprocess.run([sys.executable, str(ROOT / "tools/arm64_check.py"), str(tarball), *map(str, debs),
                           "--json", str(out), "--timeout", str(int(left))],
                          capture_output=True, text=True, timeout=left + 60)
    print(proc.stdout)  # a line per step with its details, then the timings
    assert out.is_file(), proc.stdout[-4000:] + proc.stderr[-4000:]
    result: dict[str, Any] = json.loads(out.read_text())
    result["root_s"], result["returncode"] = root_seconds, proc.returncode
    result["output"] = proc.stdout[-6000:] + proc.stderr[-2000:]
    return result


def _step(report: dict[str, Any], name: str) -> dict[str, Any]:
    steps = {s["name"]: s for s in report["steps"]}
    assert name in steps, f"step {name!r} did not run: {report['failure']}\n{report['output']}"
    step: dict[str, Any] = steps[name]
    assert step["ok"], f"{name}: {step['detail']}"
    return step


def test_the_check_passes_within_budget(report: dict[str, Any]) -> None:
    assert report["ok"], f"{report['failure']}\n{report['output']}"
    assert report["returncode"] == 0, f"{report['failure']}\n{report['output']}"
    assert [s["name"] for s in report["steps"]] == [
        "root", f"install {VERSION}+{TARGET}", "selftest", "serve", "requests", f"upgrade to {NEW_VERSION}+{TARGET}",
        "restart on the upgrade", "stop", "purge"]
    assert report["root_s"] + report["total_s"] < BUDGET_S


def test_installs_offline_and_selftest_passes(report: dict[str, Any]) -> None:
    assert "network: loopback only" in _step(report, "root")["detail"]
    assert f"current -> versions/{VERSION}+{TARGET}." in _step(report, f"install {VERSION}+{TARGET}")["detail"]
    detail = _step(report, "selftest")["detail"]
    for model_id in ("shapes/1", "shapes-seg/1", "shapes-pose/1", "shapes-cls/1"):
        assert f"PASS onnxruntime {model_id}:" in detail


def test_every_task_answers_over_http(report: dict[str, Any]) -> None:
    lines = _step(report, "requests")["detail"].splitlines()
    expected = ("POST /infer/object_detection shapes/1: 6 predictions",
                "POST /infer/instance_segmentation shapes-seg/1: 6 predictions, 6 with points",
                "POST /infer/keypoints_detection shapes-pose/1: 6 predictions",
                "POST /infer/classification shapes-cls/1: top ",
                "POST /shapes/1 (v1, multipart): 6 predictions")
    for line, start in zip(lines, expected, strict=True):
        assert line.startswith(start), line


def test_upgrade_keeps_serving_then_purge_removes_everything(report: dict[str, Any]) -> None:
    upgrade = _step(report, f"upgrade to {NEW_VERSION}+{TARGET}")["detail"]
    switched, kept = upgrade.split("\n")[0].split("; versions: ")
    assert f"current -> versions/{NEW_VERSION}+{TARGET}." in switched
    assert kept.startswith(f"{VERSION}+{TARGET}.")  # the previous version stays for a rollback
    assert "6 predictions" in upgrade  # the old version answered after the upgrade
    assert "6 predictions" in _step(report, "restart on the upgrade")["detail"]
    assert _step(report, "stop")["detail"] == "no process left"
    assert "the user and group" in _step(report, "purge")["detail"]
