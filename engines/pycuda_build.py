"""Building pycuda on the device, once: the step the Debian package's postinst runs on a Jetson, where
PyPI has no pycuda wheel.

    <venv>/bin/python -m engines.pycuda_build --sdist pycuda-2025.1.2.tar.gz --find-links WHEELS \\
        --cache /var/cache/edge-agent/pycuda --install

Owns: finding the CUDA toolkit and its version; ``prerequisites()``, which names each piece the build
needs that this machine lacks and the package that provides it; the cache of built wheels, one folder
per key (pycuda, CUDA, CPython, numpy major, machine), e.g. ``pycuda-2025.1.2-cuda12.2-cp310-np2-aarch64/``
holding the wheel, ``build.log`` and, after a failure, ``failed.json``; the build (the sdist unpacked,
configured through the ``siteconf.py`` its ``configure.py`` would write, then ``pip wheel`` offline
from the given wheels in pip's isolated build environment: setuptools, wheel and numpy come from there);
and installing the cached wheel with its run-time dependencies. A failed build is not retried while
its prerequisites stay the same, unless ``--force``.

Does not own: whether TensorRT is used (``engines.choose_backend``), the package's wheelhouse
(``packaging/build_deb.py``) or the postinst. Standard library and pip only; never imports edge_agent.

Errors (the ``EngineError`` branch of the project's tree, ``engines.base``):
``PycudaBuildError`` (``.failure``: what failed, what is missing, where the log is)
        └── ``BuildSkipped``: an earlier build failed and nothing it depended on has changed.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

from engines.base import EngineError
from engines.cache import sha256_file, write_json  # chunked sha256; temp + fsync + rename

INSTALL_TIMEOUT_S = 600  # pip installing the built wheel, and importing it once
BUILD_WHEELS = ("setuptools", "wheel", "packaging", "numpy")  # pycuda's build-system.requires, and wheel's own
FAILED, LOG = "failed.json", "build.log"
_TARGETS = {"x86_64": ("x86_64-linux",), "aarch64": ("aarch64-linux", "sbsa-linux")}  # CUDA's targets/ folders


class PycudaBuildError(EngineError):
    """The wheel could not be built; ``failure`` is what ``failed.json`` records."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.summary())
        self.failure = failure


class BuildSkipped(PycudaBuildError):
    """An earlier build failed with the same prerequisites; ``--force`` retries."""


@dataclass(frozen=True)
class Prerequisite:
    """One piece the build needs: where it was found, or where it was looked for and what provides it."""

    name: str
    found: str | None
    provider: str
    looked: str

    @property
    def missing(self) -> bool:
        return self.found is None

    def message(self) -> str:
        return f"{self.name}: not found ({self.looked}); install {self.provider}"


@dataclass(frozen=True)
class Toolkit:
    root: Path | None
    source: str  # how the root was chosen: "CUDA_HOME", "/usr/local/cuda", "nvcc on PATH"
    nvcc: Path | None
    version: str | None  # "12.2"


@dataclass(frozen=True)
class Survey:
    """The toolkit and every prerequisite, found or not."""

    toolkit: Toolkit
    pieces: tuple[Prerequisite, ...]
    lib_dirs: dict[str, str]  # "libcuda.so" / "libcurand.so" -> the folder it is linked from
    include_dirs: tuple[str, ...]

    def missing(self) -> list[Prerequisite]:
        return [p for p in self.pieces if p.missing]


@dataclass(frozen=True)
class Failure:
    """What ``failed.json`` holds."""

    key: str
    fingerprint: str
    time: str
    error: str
    missing: list[str]
    log: str
    sdist: str
    find_links: str

    def lines(self) -> list[str]:
        return [self.error] + [f"missing: {m}" for m in self.missing] + [f"log: {self.log}"]

    def summary(self) -> str:
        return "; ".join(self.lines())


# -------------------------------------------------------------------------------------------- toolkit


def _which(name: str, env: Mapping[str, str]) -> Path | None:
    found = shutil.which(name, path=env.get("PATH", os.defpath))
    return Path(found) if found else None


def find_toolkit(env: Mapping[str, str] | None = None, system_root: Path = Path("/")) -> Toolkit:
    """CUDA_HOME, CUDA_ROOT or CUDA_PATH when set; else /usr/local/cuda; else the folder above the nvcc
    on PATH (Debian's nvidia-cuda-toolkit: /usr)."""
    env = os.environ if env is None else env
    root, source = None, "not found"
    for var in ("CUDA_HOME", "CUDA_ROOT", "CUDA_PATH"):
        if env.get(var):
            root, source = Path(env[var]), var
            break
    else:
        default = system_root / "usr/local/cuda"
        on_path = _which("nvcc", env)
        if default.is_dir():
            root, source = default, "/usr/local/cuda"
        elif on_path is not None:
            root, source = on_path.resolve().parent.parent, "nvcc on PATH"
    nvcc = root / "bin/nvcc" if root is not None and (root / "bin/nvcc").is_file() else None
    return Toolkit(root, source, nvcc, cuda_version(root, nvcc, _include_dirs(root)))


def cuda_version(root: Path | None, nvcc: Path | None, include_dirs: Sequence[Path] = ()) -> str | None:
    """Major.minor ("12.2"): from the toolkit's version.json or version.txt, else ``nvcc --version``, else
    cuda.h's CUDA_VERSION."""
    if root is not None:
        try:
            full = json.loads((root / "version.json").read_text())["cuda"]["version"]
            return ".".join(str(full).split(".")[:2])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        m = _search(root / "version.txt", r"CUDA Version (\d+)\.(\d+)")
        if m:
            return f"{m[1]}.{m[2]}"
    if nvcc is not None:
        try:
            out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        m = re.search(r"release (\d+)\.(\d+)", out)
        if m:
            return f"{m[1]}.{m[2]}"
    for folder in include_dirs:
        m = _search(folder / "cuda.h", r"#define\s+CUDA_VERSION\s+(\d+)")
        if m:
            return f"{int(m[1]) // 1000}.{int(m[1]) % 1000 // 10}"
    return None


def _search(path: Path, pattern: str) -> re.Match[str] | None:
    try:
        return re.search(pattern, path.read_text(errors="replace"))
    except OSError:
        return None


def _multiarch() -> str:
    return str(sysconfig.get_config_var("MULTIARCH") or f"{platform.machine()}-linux-gnu")


def _include_dirs(root: Path | None) -> list[Path]:
    if root is None:
        return []
    return [root / "include"] + [root / "targets" / t / "include" for t in _TARGETS.get(platform.machine(), ())]


def _lib_dirs(root: Path | None) -> list[Path]:
    if root is None:
        return []
    return [root / "lib64", root / "lib", root / "lib" / _multiarch()] + [
        root / "targets" / t / "lib" for t in _TARGETS.get(platform.machine(), ())]


def _driver_dirs(system_root: Path) -> list[Path]:
    """Where the NVIDIA driver's libcuda.so lives: Debian/Ubuntu, and Jetson Linux (nvidia/, older tegra/)."""
    lib = system_root / "usr/lib" / _multiarch()
    return [lib, lib / "nvidia", lib / "tegra", lib / "nvidia/current", system_root / "usr/lib64"]


# -------------------------------------------------------------------------------------- prerequisites


def _first(name: str, folders: Sequence[Path]) -> Path | None:
    return next((f / name for f in folders if (f / name).exists()), None)


def _looked(folders: Sequence[Path]) -> str:
    return "looked in " + ", ".join(str(f) for f in folders) if folders else "no CUDA toolkit to look in"


def survey(env: Mapping[str, str] | None = None, system_root: Path = Path("/"), find_links: Path | None = None,
           python_include: Path | None = None) -> Survey:
    """Every piece the build needs, found or not. ``find_links``: also the wheels pip's build environment
    installs. ``system_root`` and ``python_include`` let tests point at a stand-in tree."""
    env = os.environ if env is None else env
    tk = find_toolkit(env, system_root)
    v = tk.version.replace(".", "-") if tk.version else "12-*"
    jetpack = f"cuda-toolkit-{v} / nvidia-jetpack"
    includes, libs = _include_dirs(tk.root), _lib_dirs(tk.root)
    link_dirs = [d / "stubs" for d in libs] + libs + _driver_dirs(system_root)
    root_text = f"{tk.root} (from {tk.source})" if tk.root else "CUDA_HOME, /usr/local/cuda, PATH"
    pieces = [
        Prerequisite("nvcc, the CUDA toolkit", str(tk.nvcc) if tk.nvcc else None,
                     f"nvidia-cuda-toolkit (JetPack: {jetpack})", f"looked in {root_text}"),
        _file("cuda.h", includes, f"nvidia-cuda-dev (JetPack: cuda-driver-dev-{v}, in {jetpack})"),
        _file("curand.h", includes, f"nvidia-cuda-dev (JetPack: libcurand-dev-{v}, in {jetpack})"),
        _file("libcuda.so", link_dirs, f"nvidia-cuda-dev for the toolkit's stubs/libcuda.so (JetPack: "
                                       f"cuda-driver-dev-{v}, in {jetpack})"),
        _file("libcurand.so", libs, f"nvidia-cuda-dev (JetPack: libcurand-dev-{v}, in {jetpack})"),
    ]
    cc = (env.get("CC") or str(sysconfig.get_config_var("CC") or "gcc")).split()[0]
    cxx = [env["CXX"].split()[0]] if env.get("CXX") else ["g++", "c++"]
    pieces.append(_program(f"the C compiler setuptools runs ({cc})", [cc], env, "gcc (build-essential)"))
    pieces.append(_program("a C++ compiler (" + " or ".join(cxx) + ")", cxx, env, "g++ (build-essential)"))
    include = python_include or Path(sysconfig.get_paths()["include"])
    pieces.append(_file("Python.h", [include], f"python{sys.version_info[0]}.{sys.version_info[1]}-dev"))
    pip = importlib.util.find_spec("pip")
    pieces.append(Prerequisite("pip", str(Path(pip.origin).parent) if pip and pip.origin else None,
                               "pip into this environment (the package's venv has it)", f"in {sys.prefix}"))
    if find_links is not None:
        for name in BUILD_WHEELS:
            found = _wheel(find_links, name)
            pieces.append(Prerequisite(f"the {name} wheel (for pip's build environment)", str(found) if found else None,
                                       "a wheelhouse with it: packaging/build_deb.py carries it", f"in {find_links}"))
    found_dirs = {n: str(p.parent) for n in ("libcuda.so", "libcurand.so")
                  if (p := _first(n, link_dirs if n == "libcuda.so" else libs)) is not None}
    return Survey(tk, tuple(pieces), found_dirs, tuple(str(d) for d in includes if d.is_dir()))


def _file(name: str, folders: Sequence[Path], provider: str) -> Prerequisite:
    found = _first(name, folders)
    return Prerequisite(name, str(found) if found else None, provider, _looked(folders))


def _program(what: str, names: Sequence[str], env: Mapping[str, str], provider: str) -> Prerequisite:
    found = next((p for n in names if (p := _which(n, env)) is not None), None)
    return Prerequisite(what, str(found) if found else None, provider, "looked on PATH")


def _wheel(folder: Path, name: str) -> Path | None:
    wheels = sorted(folder.glob("*.whl")) if folder.is_dir() else []
    return next((w for w in wheels if w.name.split("-")[0].lower().replace(".", "_") == name), None)


def prerequisites(env: Mapping[str, str] | None = None, system_root: Path = Path("/"),
                  find_links: Path | None = None) -> list[Prerequisite]:
    """What building pycuda here still needs, each with the package that provides it; [] when nothing."""
    return survey(env, system_root, find_links).missing()


# --------------------------------------------------------------------------------------------- cache


def python_tag() -> str:
    return f"cp{sys.version_info[0]}{sys.version_info[1]}"


def sdist_version(sdist: Path) -> str:
    m = re.fullmatch(r"pycuda-(.+)\.tar\.gz", sdist.name)
    if not m:
        raise ValueError(f"{sdist}: not a pycuda source archive (pycuda-<version>.tar.gz)")
    return m[1]


def cache_key(pycuda: str, cuda: str | None, numpy: str | None = None) -> str:
    """``pycuda-2025.1.2-cuda12.2-cp310-np2-aarch64``: one folder per combination a wheel is built for."""
    if numpy is None:
        try:
            numpy = importlib.metadata.version("numpy")
        except importlib.metadata.PackageNotFoundError:
            numpy = "none"
    return f"pycuda-{pycuda}-cuda{cuda or 'none'}-{python_tag()}-np{numpy.split('.')[0]}-{platform.machine()}"


def fingerprint(s: Survey, sdist: Path, find_links: Path) -> str:
    """Changes when anything the build depended on does: the pieces found, the sdist, the build wheels."""
    state = {"pieces": [(p.name, p.found) for p in s.pieces], "toolkit": str(s.toolkit.root), "cuda": s.toolkit.version,
             "sdist": sha256_file(sdist), "python": sys.version,
             "wheels": sorted(w.name for n in BUILD_WHEELS if (w := _wheel(find_links, n)) is not None)}
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()


def cached_wheel(folder: Path) -> Path | None:
    return next(iter(sorted(folder.glob("pycuda-*.whl"))), None) if folder.is_dir() else None


def read_failure(folder: Path) -> Failure | None:
    try:
        return Failure(**json.loads((folder / FAILED).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def latest_failure(cache: Path) -> Failure | None:
    """The newest failure recorded for this CPython and machine, if any (selftest)."""
    mine = [d for d in cache.glob(f"pycuda-*-{python_tag()}-*-{platform.machine()}") if (d / FAILED).is_file()]
    newest = max(mine, key=lambda d: (d / FAILED).stat().st_mtime, default=None)
    return read_failure(newest) if newest is not None else None


@contextmanager
def _locked(cache: Path) -> Iterator[None]:
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# --------------------------------------------------------------------------------------------- build


def build(sdist: Path, find_links: Path, cache: Path, force: bool = False, env: Mapping[str, str] | None = None,
          system_root: Path = Path("/"), timeout: float = 3600.0, say: Callable[[str], None] = lambda s: None) -> Path:
    """The cached wheel for this machine, built now if there is none. Raises ``BuildSkipped`` when an
    earlier build failed with the same prerequisites (unless ``force``), ``PycudaBuildError`` when this
    one fails; either way ``failed.json`` in the key's folder says why."""
    env = dict(os.environ if env is None else env)
    sdist, find_links, cache = sdist.absolute(), find_links.absolute(), cache.absolute()  # pip runs elsewhere
    s = survey(env, system_root, find_links)
    folder = cache / cache_key(sdist_version(sdist), s.toolkit.version)
    with _locked(cache):
        for stale in cache.glob(".build-*"):  # left by a build that was killed
            shutil.rmtree(stale, ignore_errors=True)
        wheel = cached_wheel(folder)
        if wheel is not None and not force:
            return wheel
        fp = fingerprint(s, sdist, find_links)
        earlier = read_failure(folder)
        if earlier is not None and earlier.fingerprint == fp and not force:
            raise BuildSkipped(earlier)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            wheel = _attempt(sdist, find_links, s, folder, env, timeout, say)
        except (OSError, ValueError, tarfile.TarError, zipfile.BadZipFile, subprocess.SubprocessError) as exc:
            f = Failure(folder.name, fp, time.strftime("%Y-%m-%dT%H:%M:%S%z"), str(exc),
                        [p.message() for p in s.missing()], str(folder / LOG), str(sdist), str(find_links))
            write_json(folder / FAILED, asdict(f))
            raise PycudaBuildError(f) from exc
        (folder / FAILED).unlink(missing_ok=True)
        for other in cache.glob("pycuda-*"):  # wheels for an earlier CUDA, Python or pycuda: never used again
            if other.is_dir() and other != folder:
                shutil.rmtree(other, ignore_errors=True)
        return wheel


def _attempt(sdist: Path, find_links: Path, s: Survey, folder: Path, env: dict[str, str], timeout: float,
             say: Callable[[str], None]) -> Path:
    """One build with its log in ``folder``; the wheel is moved there whole once it is complete."""
    log = folder / LOG
    with open(log, "w") as out:
        out.write(f"pycuda build {folder.name}, {time.ctime()}\nsdist: {sdist}\nfind-links: {find_links}\n"
                  f"CUDA toolkit: {s.toolkit.root} (from {s.toolkit.source}), version {s.toolkit.version}\n")
        out.writelines(f"  {p.name}: {p.found or 'MISSING: ' + p.message()}\n" for p in s.pieces)
        if s.missing():
            raise ValueError(f"not built: {len(s.missing())} of its prerequisites are missing")
        say(f"building pycuda {sdist_version(sdist)} for CUDA {s.toolkit.version} ({folder.name}); log: {log}")
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=folder.parent))  # the cache's file system
        try:
            built = _build_wheel(sdist, find_links, s, work, out, env, timeout)
            for old in folder.glob("pycuda-*.whl"):  # --force over an older wheel of the same key
                old.unlink()
            os.replace(built, folder / built.name)  # a rename: the wheel appears whole or not at all
            return folder / built.name
        except (OSError, ValueError, tarfile.TarError, zipfile.BadZipFile, subprocess.SubprocessError) as exc:
            out.write(f"\nFAILED: {exc}\n")
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)


def siteconf(s: Survey) -> str:
    """What pycuda's ``configure.py`` would write: every option set, so that /etc/aksetup-defaults.py and
    ~/.aksetup-defaults.py cannot change the build; boost is the subset shipped in the sdist."""
    curand_dir = s.lib_dirs["libcurand.so"]
    system = {"/usr/lib", "/lib", f"/usr/lib/{_multiarch()}", f"/lib/{_multiarch()}"}
    # libcurand may live outside the loader's path (/usr/local/cuda/lib64 on a Jetson): found at run
    # time through RUNPATH. libcuda is never given one: its stub must not shadow the driver.
    ldflags = [] if curand_dir in system else [f"-Wl,-rpath,{curand_dir}"]
    conf = {"BOOST_INC_DIR": [], "BOOST_LIB_DIR": [], "BOOST_COMPILER": "gcc", "USE_SHIPPED_BOOST": True,
            "BOOST_PYTHON_LIBNAME": [], "BOOST_THREAD_LIBNAME": [], "CUDA_TRACE": False,
            "CUDA_ROOT": str(s.toolkit.root), "CUDA_INC_DIR": list(s.include_dirs), "CUDA_ENABLE_GL": False,
            "CUDA_ENABLE_CURAND": True, "CUDADRV_LIB_DIR": [s.lib_dirs["libcuda.so"]], "CUDADRV_LIBNAME": ["cuda"],
            "CUDART_LIB_DIR": [curand_dir], "CUDART_LIBNAME": ["cudart"], "CURAND_LIB_DIR": [curand_dir],
            "CURAND_LIBNAME": ["curand"], "CXXFLAGS": [], "LDFLAGS": ldflags}
    return "".join(f"{k} = {v!r}\n" for k, v in conf.items())


def _unpack(sdist: Path, dest: Path) -> Path:
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            target = (dest / member.name).resolve()
            if not target.is_relative_to(dest.resolve()) or member.issym() or member.islnk() or member.isdev():
                raise ValueError(f"{sdist}: unsafe member {member.name!r}")
        if hasattr(tarfile, "data_filter"):  # 3.10.12 and later; earlier, the checks above are all there is
            tar.extractall(dest, filter="data")
        else:  # pragma: no cover
            tar.extractall(dest)
    tops = [p for p in dest.iterdir() if (p / "setup.py").is_file() or (p / "pyproject.toml").is_file()]
    if len(tops) != 1:
        raise ValueError(f"{sdist}: expected one project folder, found {[p.name for p in dest.iterdir()]}")
    return tops[0]


def _build_wheel(sdist: Path, find_links: Path, s: Survey, work: Path, out: TextIO, env: dict[str, str],
                 timeout: float) -> Path:
    """The sdist unpacked and configured in ``work``, then ``pip wheel`` offline; the wheel, checked."""
    src = _unpack(sdist, work / "src")
    (src / "siteconf.py").write_text(siteconf(s))
    out.write("\nsiteconf.py:\n" + siteconf(s))
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index", "--find-links", str(find_links),
           "--no-cache-dir", "--disable-pip-version-check", "--wheel-dir", str(work / "out"), str(src)]
    # HOME: no ~/.aksetup-defaults.py. No PIP_* variable or pip configuration file adds an index or links.
    child = {**_without_pip_settings(env), "HOME": str(work)}
    t0 = time.monotonic()
    _run(cmd, out, child, src, timeout)
    out.write(f"\nbuilt in {time.monotonic() - t0:.0f} s\n")
    wheels = list((work / "out").glob("pycuda-*.whl"))
    if len(wheels) != 1:
        raise ValueError(f"pip wheel made {[w.name for w in wheels]}, not one pycuda wheel")
    with zipfile.ZipFile(wheels[0]) as z:
        if not any(re.fullmatch(r"pycuda/_driver\..*so", n) for n in z.namelist()):
            raise ValueError(f"{wheels[0].name} holds no compiled pycuda/_driver module")
    return wheels[0]


def _without_pip_settings(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without PIP_* variables (PIP_FIND_LINKS, PIP_INDEX_URL...) and with no pip configuration
    file read: the wheels given are the only source."""
    return {k: v for k, v in env.items() if not k.startswith("PIP_")} | {"PIP_CONFIG_FILE": os.devnull,
                                                                          "PIP_NO_INPUT": "1"}


def _run(cmd: list[str], out: TextIO, env: Mapping[str, str], cwd: Path, timeout: float) -> None:
    """Run ``cmd`` with its output in the log; a timeout kills its whole process group (the compilers too)."""
    out.write("\n$ " + " ".join(cmd) + "\n")
    out.flush()
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=dict(env), cwd=cwd, start_new_session=True)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise subprocess.SubprocessError(f"{cmd[2]} {cmd[3]} took longer than {timeout:.0f} s and was killed") from None
    if rc != 0:
        raise subprocess.SubprocessError(f"{' '.join(cmd[2:4])} exited with status {rc}")


# ------------------------------------------------------------------------------------------- install


def install(wheel: Path, find_links: Path, env: Mapping[str, str] | None = None) -> None:
    """Install ``wheel`` and its run-time dependencies from ``find_links`` into this environment, offline,
    then import its compiled module once (a library missing at run time shows here, not in the daemon)."""
    child = _without_pip_settings(os.environ if env is None else env)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--find-links", str(find_links),
           "--no-cache-dir", "--disable-pip-version-check", "--ignore-installed", str(wheel)]
    done = subprocess.run(cmd, env=child, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    if done.returncode != 0:
        raise OSError(f"pip install {wheel.name} failed: {(done.stderr or done.stdout).strip()[-2000:]}")
    check = subprocess.run([sys.executable, "-c", "import pycuda._driver"], env=child, capture_output=True, text=True,
                           timeout=INSTALL_TIMEOUT_S)
    if check.returncode != 0:
        raise OSError(f"{wheel.name} is installed but does not import: {check.stderr.strip().splitlines()[-1:]}")


# ----------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engines.pycuda_build", description="Build pycuda from its source "
                                "archive once for this machine's CUDA and Python (cached), and install it.")
    p.add_argument("--sdist", type=Path, help="pycuda-<version>.tar.gz")
    p.add_argument("--find-links", type=Path, help="folder of the wheels the build and pycuda need (offline)")
    p.add_argument("--cache", type=Path, help="cache folder (the package: /var/cache/edge-agent/pycuda)")
    p.add_argument("--install", action="store_true", help="install the wheel into this environment")
    p.add_argument("--force", action="store_true", help="build again, even after a failure or over a cached wheel")
    p.add_argument("--check", action="store_true", help="only list the prerequisites; exit 1 if any is missing")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds the build may take (default 3600)")
    args = p.parse_args(argv)
    if args.check:
        s = survey(find_links=args.find_links)
        print(f"CUDA toolkit: {s.toolkit.root} (from {s.toolkit.source}), version {s.toolkit.version}")
        for piece in s.pieces:
            print(f"  ok       {piece.name}: {piece.found}" if piece.found else f"  MISSING  {piece.message()}")
        return 1 if s.missing() else 0
    if not (args.sdist and args.find_links and args.cache):
        p.error("--sdist, --find-links and --cache are needed (or --check)")
    t0, said = time.monotonic(), []

    def say(line: str) -> None:
        said.append(line)
        print(f"pycuda: {line}", flush=True)

    try:
        wheel = build(args.sdist, args.find_links, args.cache, force=args.force, timeout=args.timeout, say=say)
        print(f"pycuda: built {wheel} in {time.monotonic() - t0:.0f} s" if said else f"pycuda: cached {wheel}")
        if args.install:
            install(wheel, args.find_links)
            print(f"pycuda: installed into {sys.prefix}")
    except PycudaBuildError as exc:
        f = exc.failure
        head = f"an earlier build ({f.time}) failed and nothing it needs has changed; --force retries" \
            if isinstance(exc, BuildSkipped) else "build failed"
        print("\n  ".join([f"pycuda: {head}", *f.lines()]), file=sys.stderr)
        return 1
    except (OSError, ValueError, zipfile.BadZipFile, subprocess.SubprocessError) as exc:
        print(f"pycuda: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
