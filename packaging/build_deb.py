"""Build ``edge-agent_<version>_<arch>.deb``: an offline-installable package.

The package carries the project's wheel and a wheelhouse of its dependencies for the target (binary
wheels only, for the target's CPU and Python), the systemd unit, the commented configuration file (a
conffile) and the docs. Its postinst makes the service user, builds ``/opt/edge-agent/venv`` from the
wheels with no network (seeing the system's TensorRT bindings on a Jetson) and enables the service.

    python packaging/build_deb.py --arch arm64 --python 3.10     # Jetson, JetPack 6 (Ubuntu 22.04)
    python packaging/build_deb.py --arch amd64 --python 3.11     # Debian 12 x86-64
    python packaging/build_deb.py --arch amd64 --python 3.11 --wheelhouse DIR   # reuse downloads

Needs pip (to build the wheel and download the wheelhouse from PyPI) and dpkg-deb.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent

PLATFORMS = {
    "amd64": ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"],
    # Ubuntu 22.04 has glibc 2.35
    "arm64": ["manylinux_2_35_aarch64", "manylinux_2_28_aarch64", "manylinux_2_17_aarch64",
              "manylinux2014_aarch64"],
}
# Versions that exist for the target when this machine's newest do not (DESIGN.md: the newest
# onnxruntime with a cp310 aarch64 wheel is 1.23.2).
CONSTRAINTS = {("arm64", "3.10"): HERE / "constraints-jetpack6.txt"}

CONTROL = """Package: edge-agent
Version: {version}
Architecture: {arch}
Maintainer: edge-agent developers <maintainers@edge-agent.example.org>
Section: misc
Priority: optional
Depends: python3 (>= {python}), python3-venv, adduser, init-system-helpers (>= 1.54)
Recommends: python3-systemd
Installed-Size: {size_kb}
Description: computer-vision appliance daemon, Roboflow-compatible HTTP API
 edge-agent keeps a local store of ONNX models (detection, segmentation,
 keypoints, classification), runs them with ONNX Runtime (TensorRT on Jetson)
 and serves Roboflow-compatible v1 and v2 HTTP routes on port 9001, under
 systemd.
 .
 The package installs offline: it carries every Python wheel it needs for
 Python {python} on {arch}.
"""


def _run(cmd: list[str], **kw: object) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)  # type: ignore[call-overload]


def _version() -> str:
    sys.path.insert(0, str(ROOT))
    import edge_agent

    return edge_agent.__version__


def build_wheelhouse(arch: str, python: str, dest: Path) -> Path:
    """The project's wheel plus binary wheels of all its dependencies for the target."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("edge_agent-*.whl"):
        old.unlink()
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dest), str(ROOT)])
    project = next(dest.glob("edge_agent-*.whl"))
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--dest", str(dest),
           "--python-version", python, "--implementation", "cp", "--disable-pip-version-check"]
    for platform in PLATFORMS[arch]:
        cmd += ["--platform", platform]
    constraints = CONSTRAINTS.get((arch, python))
    if constraints is not None:
        cmd += ["-c", str(constraints)]
    _run([*cmd, str(project)])
    # pip evaluates environment markers with the running interpreter, not --python-version: fetch what
    # the target's markers ask for (tomli on 3.10, ...) until nothing is missing.
    for _ in range(5):
        missing = _marker_requirements(dest, arch, python)
        if not missing:
            break
        _run([*cmd, *missing])
    else:
        raise RuntimeError(f"wheelhouse still misses {missing}")
    return project


def _marker_requirements(wheelhouse: Path, arch: str, python: str) -> list[str]:
    """Requirements of the wheels in ``wheelhouse`` whose markers hold on the target but that no
    wheel there provides."""
    import zipfile

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    target = {"python_version": python, "python_full_version": f"{python}.0", "sys_platform": "linux",
              "platform_system": "Linux", "os_name": "posix", "implementation_name": "cpython",
              "platform_python_implementation": "CPython",
              "platform_machine": {"amd64": "x86_64", "arm64": "aarch64"}[arch], "extra": ""}
    have = {canonicalize_name(w.name.split("-")[0]) for w in wheelhouse.glob("*.whl")}
    wanted: set[str] = set()
    for wheel in wheelhouse.glob("*.whl"):
        with zipfile.ZipFile(wheel) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            for line in z.read(meta).decode("utf-8", "replace").splitlines():
                if not line.startswith("Requires-Dist:"):
                    continue
                req = Requirement(line.split(":", 1)[1].strip())
                if req.marker is not None and req.marker.evaluate(target) \
                        and canonicalize_name(req.name) not in have:
                    wanted.add(str(req).split(";")[0].strip())
    return sorted(wanted)


def _du_kb(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) // 1024 + 1


def build(arch: str, python: str, out: Path, wheelhouse: Path | None = None) -> Path:
    version = _version()
    work = ROOT / "build" / f"deb-{arch}-py{python}"
    stage = work / "root"
    shutil.rmtree(stage, ignore_errors=True)
    wheels = stage / "opt/edge-agent/wheels"
    if wheelhouse is not None:
        build_wheelhouse(arch, python, wheelhouse)
        shutil.copytree(wheelhouse, wheels)
    else:
        build_wheelhouse(arch, python, wheels)

    unit_dir = stage / "lib/systemd/system"
    unit_dir.mkdir(parents=True)
    shutil.copy(ROOT / "systemd/edge-agent.service", unit_dir)
    (stage / "etc/edge-agent").mkdir(parents=True)
    shutil.copy(HERE / "config.toml", stage / "etc/edge-agent/config.toml")
    doc = stage / "usr/share/doc/edge-agent"
    doc.mkdir(parents=True)
    for name in ("README.md", "docs/http.md", "docs/architecture.md"):
        shutil.copy(ROOT / name, doc / Path(name).name)
    shutil.copy(HERE / "debian/copyright", doc / "copyright")
    changelog = (f"edge-agent ({version}) stable; urgency=medium\n\n  * Release {version}.\n\n"
                 f" -- edge-agent developers <maintainers@edge-agent.example.org>  Mon, 23 Nov 2026 00:00:00 +0000\n")
    with gzip.GzipFile(doc / "changelog.gz", "wb", mtime=0) as gz:  # native package: changelog.gz
        gz.write(changelog.encode())
    overrides = stage / "usr/share/lintian/overrides"
    overrides.mkdir(parents=True)
    shutil.copy(HERE / "debian/lintian-overrides", overrides / "edge-agent")
    (stage / "usr/bin").mkdir(parents=True)
    (stage / "usr/bin/edge-agent").symlink_to("/opt/edge-agent/venv/bin/edge-agent")

    debian = stage / "DEBIAN"
    debian.mkdir()
    for script in ("postinst", "prerm", "postrm"):
        shutil.copy(HERE / "debian" / script, debian / script)
        (debian / script).chmod(0o755)
    (debian / "conffiles").write_text("/etc/edge-agent/config.toml\n")
    (debian / "control").write_text(CONTROL.format(version=version, arch=arch, python=python,
                                                   size_kb=_du_kb(stage)))
    for path in stage.rglob("*"):
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() or path.parent == debian and path.name.endswith(("inst", "rm"))
                       else 0o644)
    out.mkdir(parents=True, exist_ok=True)
    deb = out / f"edge-agent_{version}_{arch}.deb"
    # wheels are zip files already: fast gzip, not xz
    _run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "--build", str(stage), str(deb)])
    return deb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=sorted(PLATFORMS), default="amd64")
    ap.add_argument("--python", default=f"{sys.version_info.major}.{sys.version_info.minor}",
                    help="the target's Python (3.10 on JetPack 6)")
    ap.add_argument("--out", type=Path, default=ROOT / "dist")
    ap.add_argument("--wheelhouse", type=Path, help="keep downloaded wheels here between builds")
    args = ap.parse_args()
    print(build(args.arch, args.python, args.out, args.wheelhouse))


if __name__ == "__main__":
    main()
