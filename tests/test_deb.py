"""The Debian package: built here (Debian 12 amd64, wheels from PyPI), its file list, lintian, and real
installs, upgrades, refusals and faults with dpkg in a throwaway root: an overlay of this machine's
root file system, in a private mount namespace, whose changes go to a size-limited tmpfs, so nothing
leaks onto the host and a full disk can be made on purpose.

The upgrade story runs a real daemon from the installed version and sends it requests all through
the upgrades: none may fail."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import build_deb
import edge_agent

ROOT = Path(__file__).resolve().parent.parent
VERSION = edge_agent.__version__
TARGET = build_deb.TARGETS["debian12"]  # this machine's release: its root is the throwaway root
DEB_VERSION = f"{VERSION}+{TARGET.name}"

pytestmark = [
    pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb missing"),
    pytest.mark.slow,
]


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, str(ROOT / "packaging/build_deb.py"), "--target", TARGET.name,
                           "--arch", "amd64", "--out", str(out), "--wheelhouse", str(out / "wheelhouse")],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    path = out / f"edge-agent_{DEB_VERSION}_amd64.deb"
    print(f"package size: {path.stat().st_size / 1e6:.1f} MB")
    return path


def _fields(deb: Path) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True, text=True, check=True).stdout


def test_file_list(deb: Path) -> None:
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    names = {line.split()[5].lstrip(".") for line in listing.splitlines()}
    for expected in ("/lib/systemd/system/edge-agent.service", "/etc/edge-agent/config.toml",
                     "/usr/share/doc/edge-agent/copyright", "/usr/share/doc/edge-agent/changelog.gz",
                     "/usr/share/lintian/overrides/edge-agent", "/usr/bin/edge-agent",
                     "/usr/lib/edge-agent/check_install.py",
                     f"/opt/edge-agent/wheels/edge_agent-{VERSION}-py3-none-any.whl"):
        assert expected in names, expected
    wheels = [n for n in names if n.startswith("/opt/edge-agent/wheels/") and n.endswith(".whl")]
    for dep in ("numpy-", "onnxruntime-", "opencv_python_headless-", "flask-", "gunicorn-", "pydantic_core-", "pip-"):
        assert any(Path(w).name.startswith(dep) for w in wheels), dep
    assert not any("opencv_python-" in w for w in wheels), wheels  # the headless OpenCV only
    assert not any(n.startswith("/opt/edge-agent/venv") or n.startswith("/opt/edge-agent/versions") for n in names), [
        n for n in names if n.startswith(("/opt/edge-agent/venv", "/opt/edge-agent/versions"))]
    conffiles = subprocess.run(["dpkg-deb", "-I", str(deb), "conffiles"], capture_output=True, text=True).stdout
    assert conffiles.strip() == "/etc/edge-agent/config.toml"


def test_control_pins_the_targets_python(deb: Path) -> None:
    fields = dict(re.findall(r"^(\w[\w-]*): (.*)$", _fields(deb), re.M))
    assert fields["Version"] == DEB_VERSION
    assert fields["Architecture"] == "amd64"
    depends = [d.strip() for d in fields["Depends"].split(",")]
    assert "python3.11" in depends
    assert "python3 (>= 3.11~)" in depends
    assert "python3 (<< 3.12~)" in depends
    assert not any(d.startswith("python3-venv") for d in depends), depends  # pip runs from its own wheel


@pytest.mark.skipif(shutil.which("lintian") is None, reason="lintian missing (.ci/run installs it)")
def test_lintian_is_clean(deb: Path) -> None:
    proc = subprocess.run(["lintian", str(deb)], capture_output=True, text=True, timeout=300)
    findings = [line for line in (proc.stdout + proc.stderr).splitlines()
                if line[:2] in ("E:", "W:")]
    assert findings == []  # justified exceptions are in packaging/debian/lintian-overrides


def repack(deb: Path, dest: Path, version: str, *, python: str | None = None,
           check_fails: bool = False) -> Path:
    """A copy of ``deb`` as another version (for upgrades), built from the same templates for another
    Python (a package for the wrong system), or whose check of the new version fails."""
    tree = dest / f"tree-{version}"
    shutil.rmtree(tree, ignore_errors=True)
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
    control = tree / "DEBIAN/control"
    control.write_text(control.read_text().replace(f"Version: {DEB_VERSION}", f"Version: {version}"))
    postinst = tree / "DEBIAN/postinst"
    postinst.write_text(postinst.read_text().replace(f'VERSION="{DEB_VERSION}"', f'VERSION="{version}"'))
    if python is not None:
        need = re.search(r"need_mb=(\d+)", (tree / "DEBIAN/preinst").read_text())
        assert need
        (tree / "DEBIAN/preinst").write_text(build_deb._script(
            "preinst", PYTHON=python, VERSION=version, TARGET="other", SYSTEM="another system",
            NEED_MB=need.group(1)))
    if check_fails:  # as if a wheel of the new version did not load on this system
        check = tree / "usr/lib/edge-agent/check_install.py"
        check.write_text(check.read_text().replace('"edge_agent.mqtt.bridge")', '"edge_agent.no_such_module")'))
    out = dest / f"edge-agent_{version}_amd64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "--build", str(tree), str(out)],
                   check=True, capture_output=True)
    shutil.rmtree(tree)
    return out


class ThrowawayRoot:
    """This machine's root as an overlay in a private mount namespace held by a sleeping process;
    commands enter it with nsenter + chroot. Changes land in a tmpfs of ``size``."""

    def __init__(self, base: Path, size: str = "3g") -> None:
        self.base = base
        self.merged = base / "merged"
        self.merged.mkdir(parents=True)
        self.upper = base / "rw/upper"
        setup = (f"set -e; mount -t tmpfs -o size={size} tmpfs {base}/rw; mkdir {base}/rw/upper {base}/rw/work; "
                 f"mount -t overlay overlay -o lowerdir=/,upperdir={base}/rw/upper,workdir={base}/rw/work "
                 f"{self.merged}; mount -t proc proc {self.merged}/proc; mount --rbind /dev {self.merged}/dev; "
                 f"mount -t tmpfs tmpfs {self.merged}/tmp; echo ready; exec sleep 3600")
        (base / "rw").mkdir()
        self.holder = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", setup],
                                       stdout=subprocess.PIPE, text=True)
        assert self.holder.stdout is not None
        assert self.holder.stdout.readline().strip() == "ready"
        self.started: list[subprocess.Popen[str]] = []

    def _cmd(self, script: str) -> list[str]:
        return ["nsenter", "-t", str(self.holder.pid), "-m", "chroot", str(self.merged), "/bin/sh", "-c", script]

    def sh(self, script: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self._cmd(script), capture_output=True, text=True, timeout=timeout)

    def ok(self, script: str, timeout: float = 600) -> str:
        proc = self.sh(script, timeout)
        assert proc.returncode == 0, f"{script}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout

    def spawn(self, script: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(self._cmd(script), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        self.started.append(proc)
        return proc

    def put(self, src: Path, name: str) -> str:
        """Copy a file into the root's /tmp (the tmpfs of the namespace) and return its path there."""
        subprocess.run(["nsenter", "-t", str(self.holder.pid), "-m", "cp", str(src), f"{self.merged}/tmp/{name}"],
                       check=True)
        return f"/tmp/{name}"

    def close(self) -> None:
        for proc in self.started:
            _kill_group(proc)
        for pid in _pids_rooted_at(self.merged):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.holder.kill()
        self.holder.wait()


def _kill_group(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _wait_gone(pids: list[int], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                break
            if state == "Z":  # ended; its parent reaps it
                break
            time.sleep(0.1)
    assert time.monotonic() < deadline, f"processes {pids} did not end in {timeout} s"


def _pids_rooted_at(root: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "root") == str(root):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _throwaway_works() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("nsenter") is None:
        return False
    probe = "mount -t tmpfs tmpfs /mnt && mount -t overlay overlay -o lowerdir=/,upperdir=/mnt/u,workdir=/mnt/w /mnt/m"
    return subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs tmpfs /mnt && mkdir /mnt/u /mnt/w /mnt/m && "
                           f"{probe.split('&& ', 1)[1]} && test -x /mnt/m/bin/sh"],
                          capture_output=True).returncode == 0


@pytest.fixture
def root(tmp_path: Path) -> Iterator[ThrowawayRoot]:
    # A skip at run time: the probe mounts in a new namespace, worth doing only for a test that needs the root.
    if not _throwaway_works():
        pytest.skip("needs root, nsenter and overlayfs + tmpfs in a private mount namespace")
    r = ThrowawayRoot(tmp_path / "root")
    try:
        yield r
    finally:
        r.close()


INSTALL = r"""
set -e
cd /
# python3-venv's ensurepip is not needed: hide it as NVIDIA's sample root lacks it
rm -rf /usr/lib/python3.11/ensurepip
dpkg -i /tmp/edge-agent.deb
echo "VERSION: $(edge-agent --version)"
echo "CURRENT: $(readlink /opt/edge-agent/current)"
echo "CHECK: $(env -u EDGE_AGENT_STATE_DIR -u EDGE_AGENT_CONFIG edge-agent config check)"
echo "USER: $(id edge-agent)"
test -L /etc/systemd/system/multi-user.target.wants/edge-agent.service && echo "ENABLED: yes"
if command -v systemd-analyze >/dev/null; then
    systemd-analyze verify edge-agent.service 2>/tmp/verify.txt && test ! -s /tmp/verify.txt \
        && echo "VERIFY: ok" || echo "VERIFY: $(tr '\n' ' ' < /tmp/verify.txt)"
fi
echo "SIZE: $(du -sm /opt/edge-agent/versions | cut -f1) $(du -sm /opt/edge-agent/wheels | cut -f1)"
/opt/edge-agent/current/venv/bin/python -c "import cv2, onnxruntime, numpy; print('IMPORTS: ok')"
env -u EDGE_AGENT_CONFIG EDGE_AGENT_STATE_DIR=/var/lib/edge-agent edge-agent infer > /tmp/infer.json
python3 -c "import json; print('INFER:', len(json.load(open('/tmp/infer.json'))['predictions']))"
/opt/edge-agent/current/venv/bin/python -c "
import socket
from edge_agent.systemd import Notifier
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind('/tmp/notify.sock')
n = Notifier('/tmp/notify.sock')
print('NOTIFY:', n.via, n.notify('READY=1'), s.recv(64).decode())"
# as on a device whose set-up never ran: the launcher says so and exits 78
mv /opt/edge-agent/current /tmp/current
set +e; edge-agent --version 2>/tmp/launcher.txt; echo "UNSET: $? $(cat /tmp/launcher.txt)"; set -e
mv /tmp/current /opt/edge-agent/current
touch /var/lib/edge-agent/kept
dpkg -r edge-agent
test -f /var/lib/edge-agent/kept && test -f /etc/edge-agent/config.toml && test ! -e /opt/edge-agent/versions
echo "REMOVED: state and config kept"
dpkg -P edge-agent
test ! -e /var/lib/edge-agent && test ! -e /etc/edge-agent/config.toml && test ! -e /opt/edge-agent
! id edge-agent >/dev/null 2>&1
echo "PURGED: all gone"
"""


def _lines(out: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in out.splitlines() if ": " in line and line[:1].isupper())


def test_install_remove_purge_without_python3_venv(deb: Path, root: ThrowawayRoot) -> None:
    root.put(deb, "edge-agent.deb")
    lines = _lines(root.ok(INSTALL))
    assert lines["VERSION"] == f"edge-agent {VERSION}"
    assert re.fullmatch(rf"versions/{re.escape(DEB_VERSION)}\.\d{{14}}", lines["CURRENT"]), lines["CURRENT"]
    assert lines["CHECK"] == "configuration ok: /etc/edge-agent/config.toml"
    assert "edge-agent" in lines["USER"]
    assert lines["ENABLED"] == "yes"
    assert lines["IMPORTS"] == "ok"
    if shutil.which("systemd-analyze"):  # the installed unit, with its real ExecStart, verifies
        assert lines["VERIFY"] == "ok"
    assert int(lines["INFER"]) >= 3  # the bundled demo detector on the bundled sample image
    versions_mb, wheels_mb = (int(v) for v in lines["SIZE"].split())
    print(f"installed: version {versions_mb} MB, wheels {wheels_mb} MB")
    assert "REMOVED" in lines
    assert lines["UNSET"].startswith("78 edge-agent is not set up on this system")  # the launcher, removed
    assert "PURGED" in lines
    # with Debian's python3-systemd on the machine (.ci/run installs it), the venv uses it
    have_module = subprocess.run(["/usr/bin/python3", "-c", "import systemd.daemon"]).returncode == 0
    assert lines["NOTIFY"] == f"{'systemd-python' if have_module else 'socket'} True READY=1"


class Load:
    """Requests to the daemon from a thread, over every demo model in turn; counts what failed."""

    MODELS = ("shapes/1", "shapes-seg/1", "shapes-pose/1", "shapes-cls/1")

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.body = base64.b64encode((ROOT / "edge_agent/demo/sample.jpg").read_bytes())
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def one(self, model: str) -> None:
        req = urllib.request.Request(f"{self.url}/{model}", data=self.body,
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                json.load(resp)
            self.ok += 1
        except (urllib.error.URLError, OSError, ValueError) as exc:
            detail = exc.read().decode()[:200] if isinstance(exc, urllib.error.HTTPError) else ""
            self.failures.append(f"{model}: {exc} {detail}")

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            self.one(self.MODELS[i % len(self.MODELS)])
            i += 1
            time.sleep(0.05)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def _serve(root: ThrowawayRoot) -> tuple[subprocess.Popen[str], int]:
    from servers import free_port

    port = free_port()
    env = ("EDGE_AGENT_CONFIG=/etc/edge-agent/config.toml EDGE_AGENT_PATHS__STATE_DIR=/var/lib/edge-agent "
           "EDGE_AGENT_PATHS__CACHE_DIR=/var/cache/edge-agent")
    # Its log goes to a file: a pipe nobody reads fills up (an access-log line per request) and then
    # blocks the daemon's logging, and so its requests.
    proc = root.spawn(f"cd / && {env} exec edge-agent serve --host 127.0.0.1 --port {port} --threads 4 "
                      "--preload shapes/1 > /tmp/daemon.log 2>&1")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readiness", timeout=2) as resp:
                if resp.status == 200:
                    return proc, port
        except (urllib.error.URLError, OSError):
            pass
        assert proc.poll() is None, root.sh("cat /tmp/daemon.log").stdout
        time.sleep(0.5)
    raise AssertionError("the installed daemon did not become ready in 120 s")


def _current(root: ThrowawayRoot) -> str:
    return root.ok("readlink /opt/edge-agent/current").strip()


def _versions(root: ThrowawayRoot) -> list[str]:
    return sorted(root.ok("ls /opt/edge-agent/versions").split())


def _status(root: ThrowawayRoot) -> str:
    return root.ok("dpkg-query -W -f '${Version} ${db:Status-Abbrev}' edge-agent").strip()


def test_upgrades_never_break_serving(deb: Path, root: ThrowawayRoot, tmp_path: Path) -> None:
    """Install, then under a steady stream of requests to the installed daemon: an upgrade; a package
    for another Python; a version that fails its check; dpkg killed halfway; the disk filling up
    during an upgrade. Not one request fails, and the device always ends serving a checked version."""
    steps: dict[str, float] = {}
    t0 = time.monotonic()
    root.put(deb, "v1.deb")
    root.ok("dpkg -i /tmp/v1.deb")
    steps["install"] = time.monotonic() - t0
    first = _current(root)
    daemon, port = _serve(root)
    with Load(port) as load:
        # 1. a real upgrade while serving: the new version is built beside the running one
        t0 = time.monotonic()
        root.put(repack(deb, tmp_path, f"{VERSION}.1+debian12"), "v2.deb")
        root.ok("dpkg -i /tmp/v2.deb")
        steps["upgrade"] = time.monotonic() - t0
        second = _current(root)
        assert second.startswith(f"versions/{VERSION}.1+debian12.")
        assert _versions(root) == sorted([first.split("/")[1], second.split("/")[1]])  # the previous kept
        assert _status(root) == f"{VERSION}.1+debian12 ii"

        # 2. a package for another Python: refused before anything changes
        root.put(repack(deb, tmp_path, f"{VERSION}.2+other", python="3.10"), "wrong.deb")
        proc = root.sh("dpkg -i /tmp/wrong.deb")
        assert proc.returncode != 0
        assert "this package is built for Python 3.10 (another system), but this system has" in proc.stderr
        assert _current(root) == second
        assert _status(root) == f"{VERSION}.1+debian12 ii"

        # 3. a version whose check fails: dpkg reports it, the running version stays current
        root.put(repack(deb, tmp_path, f"{VERSION}.3+debian12", check_fails=True), "broken.deb")
        proc = root.sh("dpkg -i /tmp/broken.deb")
        assert proc.returncode != 0
        assert f"version {VERSION}.3+debian12 failed its check" in proc.stderr
        assert "import edge_agent.no_such_module failed" in proc.stderr
        assert _current(root) == second
        assert len(_versions(root)) == 2  # nothing left of the failed build

        # 4. dpkg killed (-9, the whole tree: a power cut) while building the next version
        root.put(repack(deb, tmp_path, f"{VERSION}.4+debian12"), "v4.deb")
        dpkg = root.spawn("dpkg -i /tmp/v4.deb")
        deadline = time.monotonic() + 120
        while not root.sh("ls /opt/edge-agent/versions/*.partial").stdout.strip():
            assert time.monotonic() < deadline, "no build started"
            assert dpkg.poll() is None, "dpkg exited before a build started"
            time.sleep(0.2)
        time.sleep(3)
        _kill_group(dpkg)
        killed = []
        for pid in _pids_rooted_at(root.merged):  # pip and the postinst too, not the daemon
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"pip" in cmdline or b"postinst" in cmdline or b"dpkg" in cmdline:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            except (OSError, ProcessLookupError):
                continue
        _wait_gone(killed)  # a busy machine can take a moment to end them (dpkg's lock goes with them)
        assert _current(root) == second
        root.ok("dpkg --configure -a")  # what a person or the next boot runs; nothing else
        fourth = _current(root)
        assert fourth.startswith(f"versions/{VERSION}.4+debian12.")
        assert _versions(root) == sorted([second.split("/")[1], fourth.split("/")[1]])
        assert _status(root) == f"{VERSION}.4+debian12 ii"

        # 5. the disk fills up while the next version is being built
        root.put(repack(deb, tmp_path, f"{VERSION}.5+debian12"), "v5.deb")
        filler = root.spawn("while ! ls /opt/edge-agent/versions/*.partial >/dev/null 2>&1; do sleep 0.1; done; "
                            "sleep 1; cat /dev/zero > /opt/edge-agent/filler 2>/dev/null; echo filled")
        proc = root.sh("dpkg -i /tmp/v5.deb")
        filler.wait(timeout=60)
        assert proc.returncode != 0
        assert "the new version was not installed; the running version (if any) is unchanged" in proc.stderr
        assert _current(root) == fourth
        root.ok("rm /opt/edge-agent/filler && dpkg --configure -a")
        assert _current(root).startswith(f"versions/{VERSION}.5+debian12.")

        time.sleep(1)
        load.one("shapes-seg/1")
    assert load.failures == []
    assert load.ok > 50, load.ok
    print(f"requests answered during the upgrades: {load.ok}; steps: "
          + ", ".join(f"{k} {v:.0f} s" for k, v in steps.items()))
    assert daemon.poll() is None  # the first daemon served all along, from its own directory

    root.ok("dpkg -P edge-agent")
    assert root.sh("test -e /opt/edge-agent || test -e /var/lib/edge-agent").returncode != 0


STAND_IN_SYSTEMD = r"""#!/bin/sh
# deb-systemd-invoke in the throwaway root, which has no systemd as PID 1: logs the call and starts the
# version the launcher now runs; the start fails for the version named in /tmp/fail-start.
echo "$*" >> /tmp/invocations
version=$(readlink /opt/edge-agent/current)
edge-agent --version >/dev/null || exit 1
if [ -s /tmp/fail-start ] && echo "$version" | grep -q "$(cat /tmp/fail-start)"; then exit 1; fi
exit 0
"""


def test_a_version_that_does_not_start_is_switched_back(deb: Path, root: ThrowawayRoot, tmp_path: Path) -> None:
    """Where systemd runs, postinst restarts the service after the switch; a version that does not
    come up is switched back to the previous one, which is started again, and dpkg reports it. systemd
    cannot run here: a stand-in deb-systemd-invoke (above) answers the restarts."""
    (tmp_path / "invoke").write_text(STAND_IN_SYSTEMD)
    invoke = root.put(tmp_path / "invoke", "invoke")
    root.ok(f"install -m 0755 {invoke} /usr/bin/deb-systemd-invoke && mkdir -p /run/systemd/system")
    root.put(deb, "v1.deb")
    root.ok("dpkg -i /tmp/v1.deb")
    first = _current(root)
    assert root.ok("cat /tmp/invocations").split("\n")[0] == "restart edge-agent.service"

    root.put(repack(deb, tmp_path, f"{VERSION}.1+debian12"), "v2.deb")
    root.ok(f"echo {VERSION}.1+debian12 > /tmp/fail-start")
    proc = root.sh("dpkg -i /tmp/v2.deb")
    assert proc.returncode != 0
    assert f"version {VERSION}.1+debian12 did not start: back to {first}" in proc.stderr
    assert _current(root) == first
    assert _versions(root) == [first.split("/")[1]]  # the version that did not start is gone
    assert root.ok("cat /tmp/invocations").split() == ["restart", "edge-agent.service"] * 3

    root.ok("rm /tmp/fail-start && dpkg --configure -a")  # the same package, once it can start
    assert _current(root).startswith(f"versions/{VERSION}.1+debian12.")


@pytest.mark.skipif(os.geteuid() != 0, reason="dpkg --root unpacks as root")
def test_jetson_rootfs_staging(deb: Path, tmp_path: Path) -> None:
    """stage_rootfs.sh unpacks into a root file system (only the preinst runs, chroot-less, on the
    host) and enables the first-boot unit that configures the package on the device. A stand-in root
    with an empty dpkg database here; the real L4T rootfs is documented in docs/jetson.md (not run
    without one)."""
    rootfs = tmp_path / "rootfs"
    for d in ("etc/systemd/system", "var/lib/dpkg/info", "var/lib/dpkg/updates", "usr/bin", "lib/systemd/system"):
        (rootfs / d).mkdir(parents=True)
    (rootfs / "etc/os-release").write_text('NAME="Debian GNU/Linux"\nVERSION_ID="12"\n')
    (rootfs / "var/lib/dpkg/status").write_text("")
    (rootfs / "usr/bin/python3").symlink_to("python3.10")
    stage = ["sh", str(ROOT / "packaging/jetson/stage_rootfs.sh"), str(rootfs), str(deb)]
    # a root without the package's Python is refused, and nothing is unpacked
    proc = subprocess.run(stage, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "this package is built for Python 3.11" in proc.stderr
    assert "but this system has python3.10" in proc.stderr
    assert not (rootfs / "opt/edge-agent/wheels").exists()

    (rootfs / "usr/bin/python3.11").write_text("#!/bin/sh\n")  # an arm64 binary on a real root: not run here
    (rootfs / "usr/bin/python3.11").chmod(0o755)
    proc = subprocess.run(stage, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "not a Jetson Linux root" in proc.stderr  # no /etc/nv_tegra_release in the stand-in
    assert (rootfs / "opt/edge-agent/wheels" / f"edge_agent-{VERSION}-py3-none-any.whl").is_file()
    assert (rootfs / "lib/systemd/system/edge-agent.service").is_file()
    assert (rootfs / "etc/edge-agent/config.toml").read_text() == (ROOT / "packaging/config.toml").read_text()
    assert not (rootfs / "opt/edge-agent/versions").exists()  # built on the device, by its own Python
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

    meta = ("Metadata-Version: 2.1\nName: demo\nVersion: 1\nRequires-Dist: numpy\n"
            'Requires-Dist: tomli>=2.0; python_version < "3.11"\n'
            'Requires-Dist: jetson-only; platform_machine == "aarch64"\n'
            'Requires-Dist: win-only; sys_platform == "win32"\n')
    with zipfile.ZipFile(tmp_path / "demo-1-py3-none-any.whl", "w") as z:
        z.writestr("demo-1.dist-info/METADATA", meta)
    with zipfile.ZipFile(tmp_path / "numpy-2.2.6-cp310-cp310-manylinux2014_aarch64.whl", "w") as z:
        z.writestr("numpy-2.2.6.dist-info/METADATA", "Metadata-Version: 2.1\nName: numpy\nVersion: 2.2.6\n")
    assert build_deb._marker_requirements(tmp_path, "arm64", "3.10") == ["jetson-only", "tomli>=2.0"]
    assert build_deb._marker_requirements(tmp_path, "amd64", "3.11") == []


def test_wheelhouse_check_names_wheels_that_would_not_load(tmp_path: Path) -> None:
    jp6 = build_deb.TARGETS["jetpack6"]
    for name in ("numpy-1.26.4-cp310-cp310-manylinux_2_17_aarch64.manylinux2014_aarch64.whl",
                 "opencv_python_headless-4.11.0.86-cp37-abi3-manylinux_2_17_aarch64.manylinux2014_aarch64.whl",
                 "flask-3.1.0-py3-none-any.whl",
                 "numpy-2.3.0-cp311-cp311-manylinux_2_28_aarch64.whl",
                 "onnxruntime-1.24.0-cp310-cp310-manylinux_2_39_aarch64.whl",
                 "pydantic_core-2.33.0-cp310-cp310-manylinux_2_17_x86_64.whl"):
        (tmp_path / name).write_bytes(b"")
    assert build_deb.check_wheelhouse(tmp_path, jp6, "arm64") == [
        "numpy-2.3.0-cp311-cp311-manylinux_2_28_aarch64.whl: not for CPython 3.10",
        "onnxruntime-1.24.0-cp310-cp310-manylinux_2_39_aarch64.whl: needs glibc 2.39, jetpack6 has 2.35",
        "pydantic_core-2.33.0-cp310-cp310-manylinux_2_17_x86_64.whl: not for aarch64",
    ]


def test_every_target_pins_one_python() -> None:
    names = {t.name: (t.python, t.arches) for t in build_deb.TARGETS.values()}
    assert names["jetpack6"] == ("3.10", ("arm64",))
    assert names["debian12"] == ("3.11", ("amd64", "arm64"))
    assert names["ubuntu24.04"][0] == "3.12"
    tags = build_deb.platforms(build_deb.TARGETS["jetpack6"], "arm64")
    assert tags[0] == "manylinux_2_35_aarch64"
    assert "manylinux_2_36_aarch64" not in tags


def test_jetpack6_package_carries_cp310_aarch64_wheels_for_glibc_2_35(tmp_path: Path) -> None:
    """The JetPack 6 package, built for real: every wheel loads on CPython 3.10, aarch64, glibc 2.35
    (the build refuses otherwise; checked again here), pycuda's source is carried to be built on the
    device, and its Depends and preinst name Python 3.10."""
    jp6 = build_deb.TARGETS["jetpack6"]
    proc = subprocess.run([sys.executable, str(ROOT / "packaging/build_deb.py"), "--target", "jetpack6",
                           "--out", str(tmp_path), "--wheelhouse", str(tmp_path / "wheelhouse")],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    deb = tmp_path / f"edge-agent_{VERSION}+jetpack6_arm64.deb"
    print(f"JetPack 6 package: {deb.stat().st_size / 1e6:.1f} MB")
    wheelhouse = tmp_path / "wheelhouse"
    assert build_deb.check_wheelhouse(wheelhouse, jp6, "arm64") == []
    names = [w.name for w in wheelhouse.iterdir()]
    for binary in ("numpy-1.", "onnxruntime-", "opencv_python_headless-", "pydantic_core-"):
        wheel = next(n for n in names if n.startswith(binary))
        assert "aarch64" in wheel, wheel
    assert any(n.startswith("pycuda-") and n.endswith(".tar.gz") for n in names), names
    fields = _fields(deb)
    assert "Architecture: arm64" in fields
    assert "python3.10, python3 (>= 3.10~), python3 (<< 3.11~)" in fields
    preinst = subprocess.run(["dpkg-deb", "-I", str(deb), "preinst"], capture_output=True, text=True).stdout
    assert "PYTHON=/usr/bin/python3.10" in preinst
