"""The Debian package: built here (amd64, this machine's Python; wheels from PyPI), its file list,
lintian, and a real install / remove / purge with dpkg in a throwaway root: an overlay of this
machine's root file system in a private mount namespace, so nothing leaks onto the host."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import edge_agent

ROOT = Path(__file__).resolve().parent.parent
VERSION = edge_agent.__version__
PY = f"{sys.version_info.major}.{sys.version_info.minor}"

pytestmark = [
    pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb missing"),
    pytest.mark.slow,
]


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    target = subprocess.run(["/usr/bin/python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                            capture_output=True, text=True).stdout.strip() or PY
    proc = subprocess.run([sys.executable, str(ROOT / "packaging/build_deb.py"), "--arch", "amd64", "--python",
                           target, "--out", str(out), "--wheelhouse", str(out / "wheelhouse")],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    path = out / f"edge-agent_{VERSION}_amd64.deb"
    print(f"package size: {path.stat().st_size / 1e6:.1f} MB")
    return path


def test_file_list(deb: Path) -> None:
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    names = {line.split()[5].lstrip(".") for line in listing.splitlines()}
    for expected in ("/lib/systemd/system/edge-agent.service", "/etc/edge-agent/config.toml",
                     "/usr/share/doc/edge-agent/copyright", "/usr/share/doc/edge-agent/changelog.gz",
                     "/usr/share/lintian/overrides/edge-agent", "/usr/bin/edge-agent",
                     f"/opt/edge-agent/wheels/edge_agent-{VERSION}-py3-none-any.whl"):
        assert expected in names, expected
    wheels = [n for n in names if n.startswith("/opt/edge-agent/wheels/") and n.endswith(".whl")]
    for dep in ("numpy-", "onnxruntime-", "opencv_python_headless-", "flask-", "gunicorn-", "pydantic_core-"):
        assert any(Path(w).name.startswith(dep) for w in wheels), dep
    assert not any("opencv_python-" in w for w in wheels)  # the headless OpenCV only
    info = subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True, text=True, check=True).stdout
    assert "Architecture: amd64" in info and "python3-venv" in info
    conffiles = subprocess.run(["dpkg-deb", "-I", str(deb), "conffiles"], capture_output=True, text=True).stdout
    assert conffiles.strip() == "/etc/edge-agent/config.toml"


@pytest.mark.skipif(shutil.which("lintian") is None, reason="lintian missing (.ci/run installs it)")
def test_lintian_is_clean(deb: Path) -> None:
    proc = subprocess.run(["lintian", str(deb)], capture_output=True, text=True, timeout=300)
    findings = [line for line in (proc.stdout + proc.stderr).splitlines()
                if line[:2] in ("E:", "W:")]
    assert findings == []  # justified exceptions are in packaging/debian/lintian-overrides


SCRIPT = r"""
set -e
cd /
dpkg -i /tmp/edge-agent.deb
echo "VERSION: $(edge-agent --version)"
echo "CHECK: $(env -u EDGE_AGENT_STATE_DIR -u EDGE_AGENT_CONFIG edge-agent config check)"
echo "USER: $(id edge-agent)"
test -L /etc/systemd/system/multi-user.target.wants/edge-agent.service && echo "ENABLED: yes"
if command -v systemd-analyze >/dev/null; then
    systemd-analyze verify edge-agent.service 2>/tmp/verify.txt && test ! -s /tmp/verify.txt \
        && echo "VERIFY: ok" || echo "VERIFY: $(tr '\n' ' ' < /tmp/verify.txt)"
fi
echo "SIZE: $(du -sm /opt/edge-agent/venv | cut -f1) $(du -sm /opt/edge-agent/wheels | cut -f1)"
/opt/edge-agent/venv/bin/python -c "import cv2, onnxruntime, numpy; print('IMPORTS: ok')"
env -u EDGE_AGENT_CONFIG EDGE_AGENT_STATE_DIR=/var/lib/edge-agent edge-agent infer > /tmp/infer.json
python3 -c "import json; print('INFER:', len(json.load(open('/tmp/infer.json'))['predictions']))"
/opt/edge-agent/venv/bin/python -c "
import socket
from edge_agent.systemd import Notifier
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind('/tmp/notify.sock')
n = Notifier('/tmp/notify.sock')
print('NOTIFY:', n.via, n.notify('READY=1'), s.recv(64).decode())"
touch /var/lib/edge-agent/kept
dpkg -r edge-agent
test -f /var/lib/edge-agent/kept && test -f /etc/edge-agent/config.toml && test ! -e /opt/edge-agent/venv
echo "REMOVED: state and config kept"
dpkg -P edge-agent
test ! -e /var/lib/edge-agent && test ! -e /etc/edge-agent/config.toml && ! id edge-agent >/dev/null 2>&1
echo "PURGED: all gone"
"""


def _overlay_works(tmp: Path) -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    for d in ("u", "w", "m"):
        (tmp / d).mkdir(parents=True)
    probe = f"mount -t overlay overlay -o lowerdir=/,upperdir={tmp}/u,workdir={tmp}/w {tmp}/m && test -x {tmp}/m/bin/sh"
    return subprocess.run(["unshare", "-m", "sh", "-c", probe], capture_output=True).returncode == 0


def test_install_remove_purge_in_a_throwaway_root(deb: Path, tmp_path: Path) -> None:
    if not _overlay_works(tmp_path / "probe"):
        pytest.skip("needs root and overlayfs in a private mount namespace for the throwaway root")
    upper, work, merged = tmp_path / "upper", tmp_path / "work", tmp_path / "merged"
    for d in (upper / "tmp", work, merged):
        d.mkdir(parents=True)
    shutil.copy(deb, upper / "tmp/edge-agent.deb")
    (upper / "tmp/test.sh").write_text(SCRIPT)
    outer = (f"set -e; mount -t overlay overlay -o lowerdir=/,upperdir={upper},workdir={work} {merged}; "
             f"mount -t proc proc {merged}/proc; mount --rbind /dev {merged}/dev; "
             f"chroot {merged} /bin/sh /tmp/test.sh")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", outer], capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    lines = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line and line[:1].isupper())
    assert lines["VERSION"] == f"edge-agent {VERSION}"
    assert lines["CHECK"] == "configuration ok: /etc/edge-agent/config.toml"
    assert "edge-agent" in lines["USER"]
    assert lines["ENABLED"] == "yes" and lines["IMPORTS"] == "ok"
    if shutil.which("systemd-analyze"):  # the installed unit, with its real ExecStart, verifies
        assert lines["VERIFY"] == "ok"
    assert int(lines["INFER"]) >= 3  # the bundled demo detector on the bundled sample image
    venv_mb, wheels_mb = (int(v) for v in lines["SIZE"].split())
    print(f"installed: venv {venv_mb} MB, wheels {wheels_mb} MB")
    assert "PURGED" in lines and "REMOVED" in lines
    # with Debian's python3-systemd on the machine (.ci/run installs it), the venv uses it
    have_module = subprocess.run(["/usr/bin/python3", "-c", "import systemd.daemon"]).returncode == 0
    assert lines["NOTIFY"] == f"{'systemd-python' if have_module else 'socket'} True READY=1"


def test_jetson_rootfs_staging(deb: Path, tmp_path: Path) -> None:
    """stage_rootfs.sh unpacks into a root file system (no maintainer scripts on the host) and enables
    the first-boot unit that configures the package on the device. A stand-in root with an empty dpkg
    database here; the real L4T rootfs is documented in docs/jetson.md (not run without one)."""
    if os.geteuid() != 0:
        pytest.skip("dpkg --root unpacks as root")
    rootfs = tmp_path / "rootfs"
    for d in ("etc/systemd/system", "var/lib/dpkg/info", "var/lib/dpkg/updates", "usr/bin", "lib/systemd/system"):
        (rootfs / d).mkdir(parents=True)
    (rootfs / "etc/os-release").write_text('NAME="Ubuntu"\nVERSION_ID="22.04"\n')
    (rootfs / "var/lib/dpkg/status").write_text("")
    (rootfs / "usr/bin/python3").symlink_to("python3.10")
    proc = subprocess.run(["sh", str(ROOT / "packaging/jetson/stage_rootfs.sh"), str(rootfs), str(deb)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (rootfs / "opt/edge-agent/wheels" / f"edge_agent-{VERSION}-py3-none-any.whl").is_file()
    assert (rootfs / "lib/systemd/system/edge-agent.service").is_file()
    assert (rootfs / "etc/edge-agent/config.toml").read_text() == (ROOT / "packaging/config.toml").read_text()
    assert not (rootfs / "opt/edge-agent/venv").exists()  # built on the device, by its own Python
    assert (rootfs / "opt/edge-agent/.configure-on-first-boot").exists()
    wants = rootfs / "etc/systemd/system/multi-user.target.wants"
    assert os.readlink(wants / "edge-agent-firstboot.service") == "/etc/systemd/system/edge-agent-firstboot.service"
    assert os.readlink(wants / "edge-agent.service") == "/lib/systemd/system/edge-agent.service"
    status = subprocess.run(["dpkg", f"--root={rootfs}", "-s", "edge-agent"], capture_output=True, text=True).stdout
    assert "Status: install ok unpacked" in status
    firstboot = (rootfs / "etc/systemd/system/edge-agent-firstboot.service").read_text()
    assert "ExecStart=/usr/bin/dpkg --force-confdef --force-confold --configure edge-agent" in firstboot
    assert "Before=edge-agent.service" in firstboot


def test_wheelhouse_follows_the_targets_markers(tmp_path: Path) -> None:
    """pip download evaluates markers with the running Python; the build adds what the target needs."""
    import zipfile

    sys.path.insert(0, str(ROOT / "packaging"))
    from build_deb import _marker_requirements

    meta = ("Metadata-Version: 2.1\nName: demo\nVersion: 1\nRequires-Dist: numpy\n"
            'Requires-Dist: tomli>=2.0; python_version < "3.11"\n'
            'Requires-Dist: jetson-only; platform_machine == "aarch64"\n'
            'Requires-Dist: win-only; sys_platform == "win32"\n')
    with zipfile.ZipFile(tmp_path / "demo-1-py3-none-any.whl", "w") as z:
        z.writestr("demo-1.dist-info/METADATA", meta)
    with zipfile.ZipFile(tmp_path / "numpy-2.2.6-cp310-cp310-manylinux2014_aarch64.whl", "w") as z:
        z.writestr("numpy-2.2.6.dist-info/METADATA", "Metadata-Version: 2.1\nName: numpy\nVersion: 2.2.6\n")
    assert _marker_requirements(tmp_path, "arm64", "3.10") == ["jetson-only", "tomli>=2.0"]
    assert _marker_requirements(tmp_path, "amd64", "3.11") == []
