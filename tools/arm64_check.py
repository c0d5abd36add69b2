#!/usr/bin/env python3
"""Install, serve, upgrade and purge the edge-agent Debian package in an arm64 root under qemu-user
emulation, with no network: the check CI runs on every change (tests/test_arm64.py).

    sudo tools/arm64_check.py ROOT OLD.deb NEW.deb [--json REPORT.json]

ROOT is a tarball from tools/arm64_root.sh (unpacked into a scratch folder) or a directory (the read-only
lower layer of an overlay); neither is changed. NEW.deb must carry a higher version than OLD.deb. Steps,
each timed, stopping at the first failure:

1. ``dpkg -i OLD.deb``; the version, the ``current`` link and the service user are checked;
2. ``edge-agent selftest --json`` as the service user, with the unit's environment (every check passes
   or is skipped with a reason);
3. ``edge-agent serve`` on 127.0.0.1 with the four demo models preloaded, as the unit runs it (there is
   no systemd in the root), and one request per task: v2 ``/infer/<task>`` with a base64 image for
   object detection, instance segmentation, keypoints and classification, and v1 ``POST /shapes/1``
   with a multipart file;
4. ``dpkg -i NEW.deb`` while the old version serves (it must keep serving), then a restart on the new
   version and one request;
5. ``dpkg -P edge-agent``: the program, its state, cache and configuration and the user are gone.

Everything runs in private mount, network (loopback only: the install has to be offline) and PID
namespaces (``unshare``), so the mounts vanish and every process started is killed when the check
ends, however it ends. Prints a line per step and a summary; exits 1 naming the failed step and why.
Needs root, ``unshare`` (util-linux) and the qemu-aarch64 binfmt handler. Standard library only.

Not covered here: the package build (packaging/build_deb.py), systemd's handling of the unit
(tests/test_deb.py and tests/test_systemd_unit.py, on the host's architecture).
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BINFMT = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
UNIT = "lib/systemd/system/edge-agent.service"
# v2 route, model, what a sensible answer on the sample image has. The demo classifier is unsure on a
# picture of six shapes (about 0.4 for its top class): it is asked with confidence 0, as selftest does.
TASKS = (("object_detection", "shapes/1", None), ("instance_segmentation", "shapes-seg/1", "points"),
         ("keypoints_detection", "shapes-pose/1", "keypoints"), ("classification", "shapes-cls/1", "top"))
GONE_AFTER_PURGE = ("/opt/edge-agent", "/var/lib/edge-agent", "/var/cache/edge-agent", "/etc/edge-agent",
                    "/usr/bin/edge-agent", "/" + UNIT)


class CheckFailed(Exception):
    """A step's expectation did not hold; the message says which and what was seen."""


@dataclass
class Step:
    name: str
    seconds: float
    ok: bool
    detail: str


@dataclass
class Report:
    steps: list[Step] = field(default_factory=list)
    ok: bool = True
    failure: str = ""
    total_s: float = 0.0


# ----------------------------------------------------------------------------------------- outside


def preflight(root: Path, old: Path, new: Path) -> None:
    """What must hold before anything starts (outside the namespaces: their /proc has no binfmt_misc)."""
    if os.geteuid() != 0:
        raise CheckFailed("needs root (chroot, mounts, namespaces)")
    if not BINFMT.is_file() or "enabled" not in BINFMT.read_text().split("\n", 1)[0]:
        raise CheckFailed(f"no qemu-aarch64 binfmt handler ({BINFMT}): apt-get install qemu-user-static "
                          "binfmt-support, then update-binfmts --enable qemu-aarch64")
    for tool in ("unshare", "chroot", "dpkg-deb", "tar", "mount"):
        if shutil.which(tool) is None:
            raise CheckFailed(f"{tool} is not installed")
    if not root.exists():
        raise CheckFailed(f"no root at {root}: make one with tools/arm64_root.sh")
    package_versions(old, new)


def package_versions(old: Path, new: Path) -> tuple[str, str]:
    """The two packages' versions; the second must be the higher."""
    versions = []
    for deb in (old, new):
        fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Version", "Architecture"], capture_output=True,
                                text=True)
        if fields.returncode != 0:
            raise CheckFailed(f"{deb}: not a Debian package: {fields.stderr.strip()}")
        info = dict(line.split(": ", 1) for line in fields.stdout.splitlines())
        if info.get("Architecture") != "arm64":
            raise CheckFailed(f"{deb}: Architecture {info.get('Architecture')}, expected arm64")
        versions.append(info["Version"])
    if subprocess.run(["dpkg", "--compare-versions", versions[1], "gt", versions[0]]).returncode != 0:
        raise CheckFailed(f"the upgrade's version {versions[1]} ({new.name}) is not higher than {versions[0]}")
    return versions[0], versions[1]


def run_in_namespaces(argv: list[str], timeout: float) -> int:
    """Run this script again (``--inside``) in new mount, network and PID namespaces; remove its
    scratch folder afterwards. --kill-child: when unshare dies, so does the namespace's first process,
    and with it every process in the namespace."""
    work = Path(tempfile.mkdtemp(prefix="edge-agent-arm64-", dir=os.environ.get("ARM64_CHECK_TMP", "/var/tmp")))
    cmd = ["unshare", "--mount", "--net", "--pid", "--fork", "--mount-proc", "--kill-child",
           "--propagation", "private", sys.executable, str(Path(__file__).resolve()), "--inside", str(work), *argv]
    proc = subprocess.Popen(cmd)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        # SIGTERM to the namespace's first process: it fails the step under way and writes its report;
        # then unshare goes, and with it everything in the namespace.
        try:
            for child in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():
                os.kill(int(child), signal.SIGTERM)
        except OSError:
            pass  # gone already, or a kernel without the children file: unshare's end kills it
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        print(f"arm64 check: FAILED: timed out after {timeout:.0f} s (everything it started is killed)",
              flush=True)
        return 1
    finally:
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        if any(m.startswith(str(work)) for m in mounts):  # never rm -rf through a bind mount of /dev
            print(f"arm64 check: {work} still has mounts; not removed", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------------------------------ inside


class Chroot:
    """The throwaway arm64 root and commands in it, with a clean environment (never the caller's)."""

    def __init__(self, path: Path, log: Path) -> None:
        self.path, self.log = path, log

    def env(self, extra: dict[str, str] | None = None) -> list[str]:
        base = {"PATH": PATH, "LANG": "C.UTF-8", "HOME": "/root", "DEBIAN_FRONTEND": "noninteractive"}
        return ["env", "-i", *(f"{k}={v}" for k, v in (base | (extra or {})).items())]

    def run(self, cmd: list[str], timeout: float, user: str | None = None, env: dict[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self.argv(cmd, user, env), capture_output=True, text=True, timeout=timeout)
        with self.log.open("a") as f:
            f.write(f"$ {shlex.join(cmd)}  (rc {proc.returncode})\n{proc.stdout}{proc.stderr}\n")
        if check and proc.returncode != 0:
            raise CheckFailed(f"`{shlex.join(cmd)}` exited {proc.returncode}: {tail(proc.stdout + proc.stderr)}")
        return proc

    def argv(self, cmd: list[str], user: str | None, env: dict[str, str] | None) -> list[str]:
        spec = [f"--userspec={self.ids(user)}"] if user else []
        return ["chroot", *spec, str(self.path), *self.env(env), *cmd]

    def ids(self, user: str) -> str:
        """uid:gid from the root's own passwd (chroot would look the name up on the host)."""
        for line in (self.path / "etc/passwd").read_text().splitlines():
            name, _, uid, gid, *_ = line.split(":")
            if name == user:
                return f"{uid}:{gid}"
        raise CheckFailed(f"no user {user} in the root's /etc/passwd")

    def exists(self, path: str) -> bool:
        return os.path.lexists(self.path / path.lstrip("/"))


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def loopback_up() -> None:
    """A new network namespace has only ``lo``, down: bring it up (SIOCGIFFLAGS/SIOCSIFFLAGS)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, 0x8913, ifreq))[1]
        fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", flags | 0x1))


def prepare_root(source: Path, work: Path) -> Chroot:
    root = work / "root"
    root.mkdir()
    if source.is_dir():
        for d in ("upper", "ovl"):
            (work / d).mkdir()
        mount("overlay", root, "-t", "overlay", "-o", f"lowerdir={source},upperdir={work}/upper,workdir={work}/ovl")
    else:
        subprocess.run(["tar", "--numeric-owner", "-xf", str(source), "-C", str(root)], check=True)
    mount("proc", root / "proc", "-t", "proc")
    mount("/dev", root / "dev", "--rbind")
    mount("tmpfs", root / "dev/shm", "-t", "tmpfs")  # not the host's /dev/shm
    # No /sys: under qemu-user, /proc/cpuinfo is the host's (x86) while /sys/devices/system/cpu lists
    # CPUs that it does not describe, and onnxruntime's cpuinfo segfaults at import on the mismatch.
    # Without /sys it warns "cpuinfo_initialize failed" and runs (a real arm64 device has both, agreeing).
    return Chroot(root, work / "commands.log")


def mount(what: str, where: Path, *opts: str) -> None:
    subprocess.run(["mount", *opts, what, str(where)], check=True)


def unit_service(root: Chroot) -> tuple[str, dict[str, str]]:
    """The installed unit's User= and Environment= (so the check follows the unit as it changes)."""
    lines = (root.path / UNIT).read_text().splitlines()
    env = dict(kv.split("=", 1) for line in lines if line.startswith("Environment=")
               for kv in shlex.split(line.split("=", 1)[1]))
    env["HOME"] = env.get("EDGE_AGENT_PATHS__STATE_DIR", "/")
    users = [line.split("=", 1)[1] for line in lines if line.startswith("User=")]
    return (users[0] if users else "root"), env


class Server:
    """``edge-agent serve`` as the unit runs it: its user and Environment= lines, on a loopback port."""

    def __init__(self, root: Chroot, port: int, log: Path) -> None:
        user, env = unit_service(root)
        cmd = ["/usr/bin/edge-agent", "serve", "--host", "127.0.0.1", "--port", str(port)]
        for _, model_id, _ in TASKS:
            cmd += ["--preload", model_id]
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(root.argv(cmd, user, env), stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True, umask=0o027)

    def wait_ready(self, timeout: float) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise CheckFailed(f"edge-agent serve exited {self.proc.returncode}: {tail(self.log.read_text())}")
            try:
                status, _ = http(f"{self.url}/readiness", timeout=5)
                if status == 200:
                    return time.monotonic() - t0
            except OSError:
                pass
            time.sleep(0.5)
        raise CheckFailed(f"not ready after {timeout:.0f} s: {tail(self.log.read_text())}")

    def stop(self) -> None:
        """SIGTERM to gunicorn's master (the unit's KillMode=mixed), then the whole group after 30 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # a worker that outlived its master
        except ProcessLookupError:
            pass


def http(url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 120) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")[:500]


def infer_v2(url: str, task: str, model_id: str, image: bytes, expect: str | None) -> str:
    body = json.dumps({"model_id": model_id, "image": {"type": "base64", "value": base64.b64encode(image).decode()},
                       **({"confidence": 0.0} if expect == "top" else {})})
    status, answer = http(f"{url}/infer/{task}", body.encode(), {"Content-Type": "application/json"})
    return judge(f"POST /infer/{task} {model_id}", status, answer, expect)


def infer_v1(url: str, model_id: str, image: bytes) -> str:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"sample.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    status, answer = http(f"{url}/{model_id}", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    return judge(f"POST /{model_id} (v1, multipart)", status, answer, None)


def judge(what: str, status: int, answer: Any, expect: str | None) -> str:
    """A sensible answer on the sample: boxes (with polygons or keypoints), or a top class."""
    if status != 200 or not isinstance(answer, dict):
        raise CheckFailed(f"{what}: HTTP {status}: {answer}")
    preds = answer.get("predictions") or []
    if expect == "top":
        if not answer.get("top") or not preds:
            raise CheckFailed(f"{what}: no top class in {answer}")
        return f"{what}: top {answer['top']} ({answer.get('confidence')})"
    if not preds:
        raise CheckFailed(f"{what}: no predictions on the sample image: {answer}")
    if not expect:
        return f"{what}: {len(preds)} predictions"
    having = sum(bool(p.get(expect)) for p in preds)  # a circle has no corner keypoints
    if not having:
        raise CheckFailed(f"{what}: no prediction has {expect}: {preds[0]}")
    return f"{what}: {len(preds)} predictions, {having} with {expect}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------------------- steps


class Run:
    """The steps in order, each timed and reported as it ends; the first failure stops the rest."""

    def __init__(self, work: Path, image: bytes) -> None:
        self.work, self.image, self.report = work, image, Report()
        self.servers: list[Server] = []
        self.t0 = time.monotonic()

    @contextmanager
    def step(self, name: str) -> Iterator[list[str]]:
        details: list[str] = []
        t0 = time.monotonic()
        try:
            yield details
        except subprocess.TimeoutExpired as exc:
            self.record(name, t0, False, [f"timed out after {exc.timeout:.0f} s: {shlex.join(map(str, exc.cmd))}"])
            raise CheckFailed(f"{name}: timed out") from exc
        except CheckFailed as exc:
            self.record(name, t0, False, [*details, str(exc)])
            raise CheckFailed(f"{name}: {exc}") from exc
        except Exception as exc:  # what the package left is not what was expected (no link, bad JSON, ...)
            self.record(name, t0, False, [*details, f"{type(exc).__name__}: {exc}"])
            raise CheckFailed(f"{name}: {type(exc).__name__}: {exc}") from exc
        self.record(name, t0, True, details)

    def record(self, name: str, t0: float, ok: bool, details: list[str]) -> None:
        step = Step(name, round(time.monotonic() - t0, 1), ok, "\n".join(details))
        self.report.steps.append(step)
        first, *more = step.detail.splitlines() or [""]
        print(f"{step.seconds:7.1f} s  {'PASS' if ok else 'FAIL'}  {name:<24} {first}", flush=True)
        for line in more:
            print(f"{'':<41}{line}", flush=True)

    def serve(self, root: Chroot, details: list[str]) -> Server:
        server = Server(root, free_port(), self.work / f"serve-{len(self.servers)}.log")
        self.servers.append(server)
        details.append(f"ready in {server.wait_ready(300):.1f} s")
        status, info = http(f"{server.url}/info")
        if status != 200:
            raise CheckFailed(f"GET /info: HTTP {status}: {info}")
        details.append(f"/info: edge-agent {info.get('version')}, back-end {info.get('engine', {}).get('backend')}")
        return server

    def stop_servers(self) -> None:
        for server in self.servers:
            server.stop()


def check_installed(root: Chroot, version: str, details: list[str]) -> None:
    query = root.run(["dpkg-query", "-W", "-f=${Status} ${Version}", "edge-agent"], 60).stdout
    if query != f"install ok installed {version}":
        raise CheckFailed(f"dpkg-query says {query!r}, expected 'install ok installed {version}'")
    link = os.readlink(root.path / "opt/edge-agent/current")
    if not link.startswith(f"versions/{version}."):
        raise CheckFailed(f"/opt/edge-agent/current -> {link}, expected versions/{version}.*")
    if not any(line.startswith("edge-agent:") for line in (root.path / "etc/passwd").read_text().splitlines()):
        raise CheckFailed("no edge-agent user")
    cli = root.run(["edge-agent", "--version"], 120).stdout.strip()
    kept = sorted(p.name for p in (root.path / "opt/edge-agent/versions").iterdir())
    details.append(f"{cli}; current -> {link}; versions: {', '.join(kept)}")


def selftest(root: Chroot, details: list[str]) -> None:
    user, env = unit_service(root)
    proc = root.run(["edge-agent", "selftest", "--json"], 600, user=user, env=env, check=False)
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        raise CheckFailed(f"exited {proc.returncode} without a JSON report: {tail(proc.stdout + proc.stderr)}") \
            from None
    for c in report["checks"]:
        details.append(f"{c['verdict']} {c['name']}: {c['detail'].splitlines()[0] if c['detail'] else ''} "
                       f"({c['seconds']} s)")
    failed = [c["name"] for c in report["checks"] if c["verdict"] == "FAIL"]
    ort = [c for c in report["checks"] if c["name"].startswith("onnxruntime ")]
    if not report["ok"] or failed or proc.returncode != 0:
        raise CheckFailed(f"selftest failed (exit {proc.returncode}): {', '.join(failed)}")
    if len(ort) != len(TASKS) or any(c["verdict"] != "PASS" for c in ort):
        raise CheckFailed(f"expected {len(TASKS)} passed ONNX Runtime checks, got {[c['name'] for c in ort]}")


def requests(url: str, image: bytes, details: list[str], tasks: tuple[Any, ...] = TASKS, v1: bool = True) -> None:
    for task, model_id, expect in tasks:
        t0 = time.monotonic()
        details.append(f"{infer_v2(url, task, model_id, image, expect)} ({time.monotonic() - t0:.1f} s)")
    if v1:
        t0 = time.monotonic()
        details.append(f"{infer_v1(url, TASKS[0][1], image)} ({time.monotonic() - t0:.1f} s)")


def check_purged(root: Chroot, details: list[str]) -> None:
    left = [p for p in GONE_AFTER_PURGE if root.exists(p)]
    if left:
        raise CheckFailed(f"left after purge: {', '.join(left)}")
    for db in ("passwd", "group", "shadow", "gshadow"):
        path = root.path / "etc" / db
        if path.exists() and any(line.startswith("edge-agent:") for line in path.read_text().splitlines()):
            raise CheckFailed(f"the edge-agent entry is still in /etc/{db}")
    status = root.run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}", "edge-agent"], 60, check=False).stdout.strip()
    if status not in ("", "un", "pn"):
        raise CheckFailed(f"dpkg still knows edge-agent: {status!r}")
    details.append(f"gone: {', '.join(GONE_AFTER_PURGE)}, the user and group")


def leftover_processes() -> list[str]:
    """Processes in this PID namespace besides this one (PID 1): a server that did not stop."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            found.append(f"{entry.name} {cmdline[:80]}")
    return found


def steps(run: Run, args: argparse.Namespace, old_v: str, new_v: str) -> None:
    with run.step("root") as d:
        root = prepare_root(args.root, run.work)
        loopback_up()
        for name, deb in (("old.deb", args.old), ("new.deb", args.new)):
            shutil.copyfile(deb, root.path / "tmp" / name)
        d.append(f"{'overlay on' if args.root.is_dir() else 'unpacked'} {args.root}; network: loopback only")
    with run.step(f"install {old_v}") as d:
        root.run(["dpkg", "-i", "/tmp/old.deb"], 900)
        check_installed(root, old_v, d)
    with run.step("selftest") as d:
        selftest(root, d)
    with run.step("serve") as d:
        old_server = run.serve(root, d)
    with run.step("requests") as d:
        requests(old_server.url, run.image, d)
    with run.step(f"upgrade to {new_v}") as d:
        root.run(["dpkg", "-i", "/tmp/new.deb"], 900)
        check_installed(root, new_v, d)
        requests(old_server.url, run.image, d, TASKS[:1], v1=False)  # the old version served throughout
    with run.step("restart on the upgrade") as d:
        old_server.stop()
        new_server = run.serve(root, d)
        requests(new_server.url, run.image, d, TASKS[:1], v1=False)
    with run.step("stop") as d:
        new_server.stop()
        left = leftover_processes()
        if left:
            raise CheckFailed(f"still running after the server stopped: {'; '.join(left)}")
        d.append("no process left")
    with run.step("purge") as d:
        root.run(["dpkg", "-P", "edge-agent"], 300)
        check_purged(root, d)


def inside(args: argparse.Namespace) -> int:
    """The steps, as the namespaces' first process (PID 1, which ignores signals it has no handler for:
    SIGTERM from the --timeout fails the step under way and the report is still written)."""

    def stop(signum: int, _frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise CheckFailed(f"stopped by signal {signum} (--timeout)")

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    run = Run(args.inside, args.image.read_bytes())
    try:
        steps(run, args, *package_versions(args.old, args.new))
    except CheckFailed as exc:
        run.report.ok, run.report.failure = False, str(exc)
    finally:
        run.stop_servers()
        run.report.total_s = round(time.monotonic() - run.t0, 1)
        summary(run.report, args.inside)
        if args.json:
            args.json.write_text(json.dumps(asdict(run.report), indent=2) + "\n")
    return 0 if run.report.ok else 1


def summary(report: Report, work: Path) -> None:
    print("\narm64 check (qemu-user emulation), seconds per step:")
    for s in report.steps:
        print(f"  {s.name:<28} {s.seconds:7.1f}  {'ok' if s.ok else 'FAILED'}")
    print(f"  {'total':<28} {report.total_s:7.1f}")
    if report.ok:
        print("arm64 check passed")
    else:
        print(f"arm64 check FAILED: {report.failure}")
        for log in sorted(work.glob("*.log")):
            print(f"--- {log.name} (last lines)\n{tail(log.read_text(errors='replace'), 40)}")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="a root tarball (tools/arm64_root.sh) or directory")
    ap.add_argument("old", type=Path, help="the package to install first")
    ap.add_argument("new", type=Path, help="the package to upgrade to (a higher version)")
    ap.add_argument("--json", type=Path, help="write the report here")
    ap.add_argument("--image", type=Path, default=REPO / "edge_agent/demo/sample.jpg", help="the image to send")
    ap.add_argument("--timeout", type=float, default=1500, help="for everything, in seconds (default 1500)")
    ap.add_argument("--inside", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    for name in ("root", "old", "new", "json", "image"):
        if getattr(args, name) is not None:
            setattr(args, name, getattr(args, name).resolve())
    if args.inside is not None:
        return inside(args)
    try:
        preflight(args.root, args.old, args.new)
    except CheckFailed as exc:
        print(f"arm64 check FAILED: {exc}", file=sys.stderr)
        return 1
    passed = [str(args.root), str(args.old), str(args.new), "--image", str(args.image)]
    if args.json:
        passed += ["--json", str(args.json)]
    return run_in_namespaces(passed, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
