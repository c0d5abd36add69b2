"""Build ``edge-agent_<version>+<target>_<arch>.deb``: an offline-installable package for one target.

A target is an operating system release with its one CPython (``--list-targets``). The package
carries the project's wheel and a wheelhouse of its dependencies built for that CPython and the
target's glibc (binary wheels only), pip's own wheel, the systemd unit, the commented configuration
file (a conffile), the launcher ``/usr/bin/edge-agent`` and the docs; for JetPack also pycuda's
source archive and what building it needs (pycuda is compiled on the device, against its CUDA).

Installing never touches the running version: postinst builds a virtual environment under
``/opt/edge-agent/versions/``, checks it there (imports, the demo models infer), then switches the
``/opt/edge-agent/current`` symlink to it atomically and restarts the service (docs/jetson.md).

    python3 packaging/build_deb.py --target jetpack6                  # Jetson, JetPack 6 (arm64, Python 3.10)
    python3 packaging/build_deb.py --target debian12 --arch amd64     # Debian 12 x86-64 (Python 3.11)
    python3 packaging/build_deb.py --target ubuntu24.04 --arch arm64 --wheelhouse DIR   # reuse downloads

Needs the standard library, pip (it downloads the wheels from PyPI and builds the project's wheel;
pip's own copy of ``packaging`` evaluates the target's markers when ``packaging`` is not installed)
and ``dpkg-deb``.
"""

from __future__ import annotations

import argparse
import gzip
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
MAINTAINER = "edge-agent developers <maintainers@edge-agent.example.org>"


@dataclass(frozen=True)
class Target:
    """One operating system release: its CPython, its glibc, the CPUs it runs on."""

    name: str
    system: str
    python: str  # "3.10": the only CPython the package's wheels load on
    glibc: tuple[int, int]  # the newest manylinux tag its wheels may carry
    arches: tuple[str, ...]
    constraints: str | None = None  # pins for versions that exist for this target (file under packaging/)
    jetson: bool = False  # carries pycuda's source, built on the device

    @property
    def next_python(self) -> str:
        major, minor = self.python.split(".")
        return f"{major}.{int(minor) + 1}"


TARGETS = {t.name: t for t in (
    Target("jetpack6", "NVIDIA JetPack 6 (Jetson Linux 36, Ubuntu 22.04)", "3.10", (2, 35), ("arm64",),
           constraints="constraints-jetpack6.txt", jetson=True),
    Target("ubuntu22.04", "Ubuntu 22.04", "3.10", (2, 35), ("amd64", "arm64")),
    Target("debian12", "Debian 12 (bookworm), Raspberry Pi OS bookworm", "3.11", (2, 36), ("amd64", "arm64")),
    Target("ubuntu24.04", "Ubuntu 24.04", "3.12", (2, 39), ("amd64", "arm64")),
)}
MACHINE = {"amd64": "x86_64", "arm64": "aarch64"}
# What building pycuda from its source needs besides numpy, and what it imports at run time; the
# versions are the newest that still support CPython 3.10.
PYCUDA = "pycuda==2025.1.2"
PYCUDA_BUILD = ["setuptools>=70", "wheel", "packaging", "pytools>=2011.2", "platformdirs>=2.2", "siphash24", "mako",
                "typing_extensions>=4.5", "markupsafe>=2"]

CONTROL = """Package: edge-agent
Version: {version}
Architecture: {arch}
Maintainer: {maintainer}
Section: misc
Priority: optional
Depends: {depends}
Recommends: python3-systemd, python3-gi, gir1.2-gstreamer-1.0
Installed-Size: {size_kb}
Description: computer-vision appliance daemon, Roboflow-compatible HTTP API
 edge-agent keeps a local store of ONNX models (detection, segmentation,
 keypoints, classification), runs them with ONNX Runtime (TensorRT on Jetson)
 and serves Roboflow-compatible v1 and v2 HTTP routes on port 9001, under
 systemd.
 .
 Built for {system}, {arch}.
 It carries every Python wheel it needs for CPython {python} and installs
 offline.
"""


def _run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def _version() -> str:
    sys.path.insert(0, str(ROOT))
    import edge_agent

    return edge_agent.__version__


def platforms(target: Target, arch: str) -> list[str]:
    """pip's --platform tags for the target: every manylinux glibc from the target's down to 2.17."""
    machine = MACHINE[arch]
    major, minor = target.glibc
    tags = [f"manylinux_{major}_{m}_{machine}" for m in range(minor, 16, -1)]
    return [*tags, f"manylinux2014_{machine}"]


def _pip_download(target: Target, arch: str, dest: Path, *reqs: str, binary: bool = True) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(dest), "--disable-pip-version-check"]
    if binary:
        cmd += ["--only-binary=:all:", "--python-version", target.python, "--implementation", "cp"]
        for platform in platforms(target, arch):
            cmd += ["--platform", platform]
    else:  # source archives of these requirements alone (their build dependencies stay wheels)
        cmd += ["--no-deps", "--no-binary", ",".join(r.split("=")[0].split(">")[0] for r in reqs)]
    if target.constraints:
        cmd += ["-c", str(HERE / target.constraints)]
    _run([*cmd, *reqs])


def build_wheelhouse(target: Target, arch: str, dest: Path) -> Path:
    """The project's wheel, binary wheels of all its dependencies for the target, pip's wheel, and on
    JetPack pycuda's source archive with the wheels its build needs."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("edge_agent-*.whl"):
        old.unlink()
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dest), str(ROOT)])
    project = next(dest.glob("edge_agent-*.whl"))
    extra = ["pip"] + (PYCUDA_BUILD if target.jetson else [])
    _pip_download(target, arch, dest, str(project), *extra)
    if target.jetson:
        _pip_download(target, arch, dest, PYCUDA, binary=False)
    # pip evaluates environment markers with the running interpreter, not --python-version: fetch what
    # the target's markers ask for (tomli on 3.10, ...) until nothing is missing.
    for _ in range(5):
        missing = _marker_requirements(dest, arch, target.python)
        if not missing:
            break
        _pip_download(target, arch, dest, *missing)
    else:
        raise RuntimeError(f"wheelhouse still misses {missing}")
    problems = check_wheelhouse(dest, target, arch)
    if problems:
        raise RuntimeError("wheelhouse does not fit the target:\n  " + "\n  ".join(problems))
    return project


def _packaging() -> tuple[type, object]:
    """``packaging``'s Requirement and canonicalize_name: the installed module, else pip's own copy."""
    try:
        from packaging.requirements import Requirement
        from packaging.utils import canonicalize_name
    except ImportError:  # a stock Debian python3 without python3-packaging: pip carries one
        from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
        from pip._vendor.packaging.utils import canonicalize_name  # type: ignore[no-redef]
    return Requirement, canonicalize_name


def _marker_requirements(wheelhouse: Path, arch: str, python: str) -> list[str]:
    """Requirements of the wheels in ``wheelhouse`` whose markers hold on the target but that no
    wheel there provides."""
    requirement, canonicalize_name = _packaging()
    target = {"python_version": python, "python_full_version": f"{python}.0", "sys_platform": "linux",
              "platform_system": "Linux", "os_name": "posix", "implementation_name": "cpython",
              "platform_python_implementation": "CPython", "platform_machine": MACHINE[arch], "extra": ""}
    have = {canonicalize_name(w.name.split("-")[0]) for w in wheelhouse.glob("*.whl")}  # type: ignore[operator]
    wanted: set[str] = set()
    for wheel in wheelhouse.glob("*.whl"):
        with zipfile.ZipFile(wheel) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            for line in z.read(meta).decode("utf-8", "replace").splitlines():
                if not line.startswith("Requires-Dist:"):
                    continue
                req = requirement(line.split(":", 1)[1].strip())
                if req.marker is not None and req.marker.evaluate(target) \
                        and canonicalize_name(req.name) not in have:  # type: ignore[operator]
                    wanted.add(str(req).split(";")[0].strip())
    return sorted(wanted)


def check_wheelhouse(wheelhouse: Path, target: Target, arch: str) -> list[str]:
    """Wheels that would not load on the target: another CPython, another CPU, a newer glibc."""
    py = "cp" + target.python.replace(".", "")
    machine = MACHINE[arch]
    problems = []
    for wheel in sorted(wheelhouse.glob("*.whl")):
        parts = wheel.name[:-4].split("-")
        pythons, abi, plats = parts[-3].split("."), parts[-2], parts[-1].split(".")
        if not (py in pythons or abi == "abi3" or "py3" in pythons or "py2.py3" in parts[-3]):
            problems.append(f"{wheel.name}: not for CPython {target.python}")
        if plats != ["any"]:
            if not all(p.endswith(machine) for p in plats):
                problems.append(f"{wheel.name}: not for {machine}")
            need = min((_glibc(p) for p in plats), default=(0, 0))
            if need > target.glibc:
                problems.append(f"{wheel.name}: needs glibc {need[0]}.{need[1]}, "
                                f"{target.name} has {target.glibc[0]}.{target.glibc[1]}")
    return problems


def _glibc(platform: str) -> tuple[int, int]:
    if platform.startswith("manylinux2014") or platform.startswith("manylinux2010") or platform.startswith(
            "manylinux1"):
        return (2, 17)
    if platform.startswith("manylinux_"):
        major, minor = platform.split("_")[1:3]
        return (int(major), int(minor))
    return (99, 0)  # linux_aarch64 etc.: built for one machine, never portable


def _du_kb(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) // 1024 + 1


def _script(name: str, **values: str) -> str:
    text = (HERE / "debian" / name).read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    left = re.findall(r"@[A-Z]+@", text)
    if left:
        raise RuntimeError(f"{name}: placeholders {left} not filled")
    return text


def build(target: Target, arch: str, out: Path, wheelhouse: Path | None = None,
          version: str | None = None) -> Path:
    if arch not in target.arches:
        raise SystemExit(f"target {target.name} is for {', '.join(target.arches)}, not {arch}")
    version = f"{version or _version()}+{target.name}"
    (ROOT / "build").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"deb-{target.name}-{arch}-", dir=ROOT / "build"))  # builds side by side
    try:
        return _build(target, arch, out, wheelhouse, version, work / "root")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build(target: Target, arch: str, out: Path, wheelhouse: Path | None, version: str, stage: Path) -> Path:
    wheels = stage / "opt/edge-agent/wheels"
    if wheelhouse is not None:
        build_wheelhouse(target, arch, wheelhouse)
        shutil.copytree(wheelhouse, wheels, ignore=shutil.ignore_patterns("*.part", "*.tmp"))
    else:
        build_wheelhouse(target, arch, wheels)

    unit_dir = stage / "lib/systemd/system"
    unit_dir.mkdir(parents=True)
    shutil.copy(ROOT / "systemd/edge-agent.service", unit_dir)
    (stage / "etc/edge-agent").mkdir(parents=True)
    shutil.copy(HERE / "config.toml", stage / "etc/edge-agent/config.toml")
    doc = stage / "usr/share/doc/edge-agent"
    doc.mkdir(parents=True)
    for name in ("README.md", "docs/http.md", "docs/http-api.md", "docs/architecture.md", "docs/jetson.md"):
        shutil.copy(ROOT / name, doc / Path(name).name)
    shutil.copy(HERE / "debian/copyright", doc / "copyright")
    changelog = (f"edge-agent ({version}) stable; urgency=medium\n\n  * Release {version}.\n\n"
                 f" -- {MAINTAINER}  Mon, 23 Nov 2026 00:00:00 +0000\n")
    with gzip.GzipFile(doc / "changelog.gz", "wb", mtime=0) as gz:  # native package: changelog.gz
        gz.write(changelog.encode())
    overrides = stage / "usr/share/lintian/overrides"
    overrides.mkdir(parents=True)
    shutil.copy(HERE / "debian/lintian-overrides", overrides / "edge-agent")
    (stage / "usr/bin").mkdir(parents=True)
    shutil.copy(HERE / "debian/edge-agent.sh", stage / "usr/bin/edge-agent")
    lib = stage / "usr/lib/edge-agent"
    lib.mkdir(parents=True)
    shutil.copy(HERE / "debian/check_install.py", lib / "check_install.py")

    debian = stage / "DEBIAN"
    debian.mkdir()
    values = {"PYTHON": target.python, "VERSION": version, "TARGET": target.name, "SYSTEM": target.system,
              "NEED_MB": str(4 * _du_kb(wheels) // 1024)}
    for script in ("preinst", "postinst", "prerm", "postrm"):
        (debian / script).write_text(_script(script, **values))
    (debian / "conffiles").write_text("/etc/edge-agent/config.toml\n")
    depends = (f"python{target.python}, python3 (>= {target.python}~), python3 (<< {target.next_python}~), "
               "libstdc++6, libgcc-s1, adduser, init-system-helpers (>= 1.54)")  # one line: lintian
    (debian / "control").write_text(CONTROL.format(
        depends=depends, version=version, arch=arch, python=target.python, system=target.system,
        maintainer=MAINTAINER, size_kb=_du_kb(stage) * 4))  # with the venv it builds (3x the wheels)
    executable = {debian / s for s in ("preinst", "postinst", "prerm", "postrm")} | {stage / "usr/bin/edge-agent"}
    for path in stage.rglob("*"):
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() or path in executable else 0o644)
    out.mkdir(parents=True, exist_ok=True)
    deb = out / f"edge-agent_{version}_{arch}.deb"
    # wheels are zip files already: fast gzip, not xz
    _run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "--build", str(stage), str(deb)])
    return deb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", choices=sorted(TARGETS), help="the operating system release (see --list-targets)")
    ap.add_argument("--arch", choices=sorted(MACHINE), help="default: the target's first (jetpack6: arm64)")
    ap.add_argument("--out", type=Path, default=ROOT / "dist")
    ap.add_argument("--wheelhouse", type=Path, help="keep downloaded wheels here between builds")
    ap.add_argument("--version", help="the Debian version before +TARGET (default: the project's; the program "
                                      "itself still reports edge_agent.__version__)")
    ap.add_argument("--list-targets", action="store_true", help="print the targets and exit")
    args = ap.parse_args()
    if args.list_targets or not args.target:
        for t in TARGETS.values():
            print(f"{t.name:12} Python {t.python}  glibc {t.glibc[0]}.{t.glibc[1]}  {'/'.join(t.arches):11} {t.system}")
        if not args.list_targets:
            ap.error("--target is required")
        return
    target = TARGETS[args.target]
    print(build(target, args.arch or target.arches[0], args.out, args.wheelhouse, args.version))


if __name__ == "__main__":
    main()
