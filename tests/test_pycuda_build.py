"""``engines.pycuda_build``: prerequisites found or named with their package, CUDA version detection, the
cache key, builds placed atomically, failure markers that hold until something changes, and the CLI the
postinst runs.

No CUDA here: a stand-in toolkit tree in tmp_path (an nvcc script, headers, libraries) and a stand-in
pycuda source archive whose in-tree build backend writes a wheel holding the ``siteconf.py`` it was given,
built by the real ``pip wheel`` offline. The real build runs where nvcc is found and PYCUDA_SDIST names a
pycuda source archive and PYCUDA_WHEELS a folder of the wheels its build needs for this Python:

    pip download --no-deps --no-binary pycuda pycuda==2025.1.2 -d /tmp/w
    pip download --only-binary :all: setuptools wheel packaging 'numpy<2.3' -d /tmp/w
    PYCUDA_SDIST=/tmp/w/pycuda-2025.1.2.tar.gz PYCUDA_WHEELS=/tmp/w pytest tests/test_pycuda_build.py -k real
"""

from __future__ import annotations

import io
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from engines import pycuda_build as pb

ROOT = Path(__file__).resolve().parent.parent
MULTIARCH = pb._multiarch()
TAG = f"cp{sys.version_info[0]}{sys.version_info[1]}"


def _exe(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def _touch(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def toolkit(root: Path, version: str = "12.2", without: tuple[str, ...] = ()) -> Path:
    """A CUDA toolkit tree as NVIDIA lays it out (/usr/local/cuda-12.2), less the files in ``without``."""
    major, minor = version.split(".")
    files = {
        "bin/nvcc": f"#!/bin/sh\necho 'Cuda compilation tools, release {version}, V{version}.140'\n",
        "include/cuda.h": f"#define CUDA_VERSION {int(major) * 1000 + int(minor) * 10}\n",
        "include/curand.h": "",
        "lib64/libcurand.so": "",
        "lib64/stubs/libcuda.so": "",
    }
    for name, text in files.items():
        if name not in without:
            (_exe if name == "bin/nvcc" else _touch)(root / name, text)
    return root


def host(tmp_path: Path, without: tuple[str, ...] = ()) -> dict[str, str]:
    """PATH with gcc and g++ stand-ins, CUDA_HOME at a toolkit; what is in ``without`` is left out."""
    bin_dir = tmp_path / "host-bin"
    for name in ("gcc", "g++"):
        if name not in without:
            _exe(bin_dir / name, "#!/bin/sh\nexit 0\n")
    env = {"PATH": str(bin_dir), "CC": "gcc"}
    if "toolkit" not in without:
        env["CUDA_HOME"] = str(toolkit(tmp_path / "cuda-12.2", without=without))
    return env


@pytest.fixture
def python_h(tmp_path: Path) -> Path:
    return _touch(tmp_path / "py-include" / "Python.h").parent


# ------------------------------------------------------------------------------------ prerequisites


@pytest.mark.parametrize(("without", "missing", "provider"), [
    ((), [], None),
    (("include/curand.h",), ["curand.h"], "nvidia-cuda-dev (JetPack: libcurand-dev-12-2, in cuda-toolkit-12-2"),
    (("lib64/stubs/libcuda.so",), ["libcuda.so"], "the toolkit's stubs/libcuda.so (JetPack: cuda-driver-dev-12-2"),
    (("lib64/libcurand.so",), ["libcurand.so"], "libcurand-dev-12-2"),
    (("bin/nvcc",), ["nvcc, the CUDA toolkit"], "nvidia-cuda-toolkit (JetPack: cuda-toolkit-12-2 / nvidia-jetpack)"),
    (("g++",), ["a C++ compiler (g++ or c++)"], "g++ (build-essential)"),
    (("gcc",), ["the C compiler setuptools runs (gcc)"], "gcc (build-essential)"),
    (("toolkit",), ["nvcc, the CUDA toolkit", "cuda.h", "curand.h", "libcuda.so", "libcurand.so"],
     "nvidia-cuda-toolkit (JetPack: cuda-toolkit-12-* / nvidia-jetpack)"),
])
def test_prerequisites_name_each_missing_piece_and_its_package(tmp_path: Path, python_h: Path,
                                                               without: tuple[str, ...], missing: list[str],
                                                               provider: str | None) -> None:
    s = pb.survey(host(tmp_path, without), system_root=tmp_path / "empty-root", python_include=python_h)
    assert [p.name for p in s.missing()] == missing
    if provider:
        assert provider in s.missing()[0].message()
        assert s.missing()[0].message().startswith(f"{missing[0]}: not found (")
    else:
        assert s.toolkit.version == "12.2"
        assert s.lib_dirs["libcuda.so"] == str(tmp_path / "cuda-12.2/lib64/stubs")
        assert pb.prerequisites(host(tmp_path), system_root=tmp_path / "empty-root") == [
            p for p in pb.survey(host(tmp_path), system_root=tmp_path / "empty-root").pieces if p.missing]


def test_python_h_names_the_dev_package_of_this_python(tmp_path: Path) -> None:
    s = pb.survey(host(tmp_path), system_root=tmp_path, python_include=tmp_path / "nowhere")
    assert [p.name for p in s.missing()] == ["Python.h"]
    assert s.missing()[0].provider == f"python{sys.version_info[0]}.{sys.version_info[1]}-dev"


def test_the_drivers_libcuda_serves_when_the_toolkit_has_no_stub(tmp_path: Path, python_h: Path) -> None:
    driver = _touch(tmp_path / "root/usr/lib" / MULTIARCH / "nvidia/libcuda.so")  # JetPack 6's place
    s = pb.survey(host(tmp_path, ("lib64/stubs/libcuda.so",)), system_root=tmp_path / "root", python_include=python_h)
    assert s.missing() == []
    assert s.lib_dirs["libcuda.so"] == str(driver.parent)


def test_the_build_wheels_are_prerequisites_when_find_links_is_given(tmp_path: Path, python_h: Path) -> None:
    wheels = tmp_path / "wheels"
    _touch(wheels / "setuptools-80.0.0-py3-none-any.whl")
    _touch(wheels / "numpy-2.2.6-cp310-cp310-manylinux_2_17_aarch64.whl")
    s = pb.survey(host(tmp_path), system_root=tmp_path, find_links=wheels, python_include=python_h)
    assert [p.name for p in s.missing()] == ["the wheel wheel (for pip's build environment)",
                                             "the packaging wheel (for pip's build environment)"]


@pytest.mark.parametrize(("env_roots", "default", "on_path", "expected"), [
    ({"CUDA_HOME": "a", "CUDA_ROOT": "b"}, True, True, ("a", "CUDA_HOME")),
    ({"CUDA_ROOT": "b", "CUDA_PATH": "c"}, True, True, ("b", "CUDA_ROOT")),
    ({"CUDA_PATH": "c"}, True, True, ("c", "CUDA_PATH")),
    ({}, True, True, ("root/usr/local/cuda", "/usr/local/cuda")),
    ({}, False, True, ("on-path", "nvcc on PATH")),
    ({}, False, False, (None, "not found")),
])
def test_where_the_toolkit_is_taken_from(tmp_path: Path, env_roots: dict[str, str], default: bool, on_path: bool,
                                         expected: tuple[str | None, str]) -> None:
    for name in ("a", "b", "c"):
        toolkit(tmp_path / name)
    if default:
        toolkit(tmp_path / "root/usr/local/cuda")
    if on_path:
        toolkit(tmp_path / "on-path")
    env = {k: str(tmp_path / v) for k, v in env_roots.items()}
    env["PATH"] = str(tmp_path / "on-path/bin") if on_path else str(tmp_path / "empty")
    tk = pb.find_toolkit(env, system_root=tmp_path / "root")
    assert (tk.root.resolve() if tk.root else None, tk.source) == (
        (tmp_path / expected[0]).resolve() if expected[0] else None, expected[1])
    assert (tk.nvcc is not None) == (expected[0] is not None)


@pytest.mark.parametrize(("files", "expected"), [
    ({"version.json": json.dumps({"cuda": {"name": "CUDA SDK", "version": "12.2.140"}})}, "12.2"),
    ({"version.txt": "CUDA Version 10.2.89\n"}, "10.2"),
    ({"bin/nvcc": "#!/bin/sh\necho 'Cuda compilation tools, release 12.6, V12.6.68'\n"}, "12.6"),
    ({"include/cuda.h": "#define CUDA_VERSION 11080\n"}, "11.8"),
    ({"version.json": "{broken", "include/cuda.h": "#define CUDA_VERSION 12020\n"}, "12.2"),
    ({}, None),
])
def test_cuda_version(tmp_path: Path, files: dict[str, str], expected: str | None) -> None:
    for name, text in files.items():
        (_exe if name.startswith("bin/") else _touch)(tmp_path / name, text)
    nvcc = tmp_path / "bin/nvcc" if "bin/nvcc" in files else None
    assert pb.cuda_version(tmp_path, nvcc, [tmp_path / "include"]) == expected


# ----------------------------------------------------------------------------------------------- cache


def test_cache_key_and_sdist_version() -> None:
    assert pb.cache_key("2025.1.2", "12.2", "2.2.6") == f"pycuda-2025.1.2-cuda12.2-{TAG}-np2-{platform.machine()}"
    assert pb.cache_key("2025.1.2", None, "1.26.4") == f"pycuda-2025.1.2-cudanone-{TAG}-np1-{platform.machine()}"
    assert pb.sdist_version(Path("/w/pycuda-2025.1.2.tar.gz")) == "2025.1.2"
    with pytest.raises(ValueError, match="not a pycuda source archive"):
        pb.sdist_version(Path("pycuda-2025.1.2-cp310-cp310-linux_aarch64.whl"))


BACKEND = '''
import base64, hashlib, os, pathlib, zipfile

def _record(name, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    counter = os.environ.get("FAKE_PYCUDA_RUNS")
    if counter:
        with open(counter, "a") as f:  # what the cache folder held while this build ran
            f.write(" ".join(sorted(p.name for p in pathlib.Path(os.environ["FAKE_PYCUDA_KEY"]).glob("*"))) + "\\n")
    if os.environ.get("FAKE_PYCUDA_HANG"):  # a compiler that never ends, in a child of its own
        import subprocess, sys
        subprocess.run([sys.executable, "-c", "import time; time.sleep(600)", os.environ["FAKE_PYCUDA_HANG"]])
    if os.environ.get("FAKE_PYCUDA_FAIL"):
        raise RuntimeError("error: command 'g++' failed (the stand-in's compile error)")
    dist = "pycuda-@VERSION@.dist-info"
    files = {
        "pycuda/__init__.py": b"VERSION_TEXT = '@VERSION@'\\n",
        "pycuda/_driver.py": b"BUILT = True\\n",
        "pycuda/_driver.cpython-999-stand-in.so": b"not a library",
        "pycuda/siteconf.py": pathlib.Path("siteconf.py").read_bytes(),
        f"{dist}/METADATA": b"Metadata-Version: 2.1\\nName: pycuda\\nVersion: @VERSION@\\n",
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\\nGenerator: stand-in\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
    }
    name = "pycuda-@VERSION@-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
        z.writestr(f"{dist}/RECORD", "\\n".join([_record(p, d) for p, d in files.items()] + [f"{dist}/RECORD,,"]))
    return name
'''


def fake_sdist(folder: Path, version: str = "2025.1.2") -> Path:
    """A pycuda-<version>.tar.gz whose in-tree backend builds a pure-Python wheel without any network."""
    folder.mkdir(parents=True, exist_ok=True)
    sdist = folder / f"pycuda-{version}.tar.gz"
    members = {"pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n',
               "backend.py": BACKEND.replace("@VERSION@", version), "setup.py": "# configured by siteconf.py\n"}
    with tarfile.open(sdist, "w:gz") as tar:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(f"pycuda-{version}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return sdist


def wheelhouse(folder: Path) -> Path:
    """Stand-ins for the build wheels: present by name (the stand-in backend needs none of them)."""
    for name in ("setuptools-80.0.0", "wheel-0.45.1", "packaging-25.0", "numpy-2.2.6"):
        _touch(folder / f"{name}-py3-none-any.whl")
    return folder


# A build checks this interpreter's own Python.h, as it must.
needs_python_h = pytest.mark.skipif(not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file(),
                                    reason="this Python has no headers (python3.X-dev)")


@pytest.fixture
def project(tmp_path: Path) -> dict[str, Path]:
    """The stand-in sdist, the wheels, the cache."""
    return {"sdist": fake_sdist(tmp_path / "w"), "wheels": wheelhouse(tmp_path / "w"), "cache": tmp_path / "cache"}


def _env(tmp_path: Path, without: tuple[str, ...] = (), **extra: str) -> dict[str, str]:
    env = {**os.environ, **host(tmp_path, without), **extra}
    env["PATH"] = host(tmp_path, without)["PATH"] + os.pathsep + os.environ["PATH"]
    return env


def _key(numpy: str | None = None) -> str:
    return pb.cache_key("2025.1.2", "12.2", numpy)


@needs_python_h
def test_a_build_is_placed_whole_and_configured_for_the_toolkit(tmp_path: Path, project: dict[str, Path]) -> None:
    cache = project["cache"]
    stale = _touch(cache / ".build-killed" / "out" / "pycuda-2025.1.2-py3-none-any.whl", "half a wheel")
    older = _touch(cache / "pycuda-2024.1-cuda12.0-cp310-np2-aarch64" / "pycuda-2024.1-cp310.whl")
    runs = tmp_path / "runs.txt"
    said: list[str] = []
    env = _env(tmp_path, FAKE_PYCUDA_RUNS=str(runs), FAKE_PYCUDA_KEY=str(cache / _key()))
    wheel = pb.build(project["sdist"], project["wheels"], cache, env=env, system_root=tmp_path / "r", say=said.append)

    assert wheel == cache / _key() / "pycuda-2025.1.2-py3-none-any.whl"
    assert runs.read_text() == "build.log\n"  # while pip ran, the key's folder held no wheel, whole or part
    assert sorted(p.name for p in (cache / _key()).iterdir()) == ["build.log", wheel.name]
    assert not stale.parent.parent.exists()
    assert not older.parent.exists()
    assert not list(cache.glob(".build-*"))
    assert said == [f"building pycuda 2025.1.2 for CUDA 12.2 ({_key()}); log: {cache / _key() / 'build.log'}"]
    with zipfile.ZipFile(wheel) as z:
        conf: dict[str, object] = {}
        exec(z.read("pycuda/siteconf.py").decode(), conf)
    cuda = tmp_path / "cuda-12.2"
    assert conf["CUDA_ROOT"] == str(cuda)
    assert conf["CUDA_INC_DIR"] == [str(cuda / "include")]
    assert conf["CUDADRV_LIB_DIR"] == [str(cuda / "lib64/stubs")]
    assert conf["CURAND_LIB_DIR"] == [str(cuda / "lib64")]
    assert conf["LDFLAGS"] == [f"-Wl,-rpath,{cuda / 'lib64'}"]
    assert conf["USE_SHIPPED_BOOST"] is True
    log = (cache / _key() / "build.log").read_text()
    assert "pip wheel --no-deps --no-index --find-links" in log
    assert "built in" in log

    again = pb.build(project["sdist"], project["wheels"], cache, env=env, system_root=tmp_path / "r")
    assert again == wheel
    assert runs.read_text() == "build.log\n"  # cached: pip did not run again


@needs_python_h
def test_a_missing_prerequisite_is_recorded_and_not_retried_until_it_is_installed(tmp_path: Path,
                                                                                project: dict[str, Path]) -> None:
    runs = tmp_path / "runs.txt"
    env = _env(tmp_path, ("include/curand.h",), FAKE_PYCUDA_RUNS=str(runs), FAKE_PYCUDA_KEY=str(tmp_path))
    args = (project["sdist"], project["wheels"], project["cache"])
    with pytest.raises(pb.PycudaBuildError) as first:
        pb.build(*args, env=env, system_root=tmp_path / "r")
    f = first.value.failure
    assert f.error == "not built: 1 of its prerequisites are missing"
    assert len(f.missing) == 1
    assert f.missing[0].startswith("curand.h: not found")
    assert "libcurand-dev-12-2" in f.missing[0]
    assert f.log == str(project["cache"] / _key() / "build.log")
    assert f.sdist == str(project["sdist"])
    assert pb.read_failure(project["cache"] / _key()) == f
    assert pb.latest_failure(project["cache"]) == f
    assert "MISSING: curand.h" in Path(f.log).read_text()

    with pytest.raises(pb.BuildSkipped) as second:  # at the next upgrade: nothing changed, nothing tried
        pb.build(*args, env=env, system_root=tmp_path / "r")
    assert second.value.failure == f

    _touch(tmp_path / "cuda-12.2/include/curand.h")  # the package installed: the prerequisites changed
    wheel = pb.build(*args, env=env, system_root=tmp_path / "r")
    assert wheel.is_file()
    assert not (wheel.parent / pb.FAILED).exists()
    assert pb.latest_failure(project["cache"]) is None
    assert runs.read_text().count("\n") == 1


@needs_python_h
def test_a_failed_compile_is_recorded_with_its_log_and_force_retries(tmp_path: Path,
                                                                      project: dict[str, Path]) -> None:
    runs = tmp_path / "runs.txt"
    env = _env(tmp_path, FAKE_PYCUDA_RUNS=str(runs), FAKE_PYCUDA_KEY=str(tmp_path), FAKE_PYCUDA_FAIL="1")
    args = (project["sdist"], project["wheels"], project["cache"])
    with pytest.raises(pb.PycudaBuildError, match="pip wheel exited with status 1") as failed:
        pb.build(*args, env=env, system_root=tmp_path / "r")
    assert failed.value.failure.missing == []
    assert "the stand-in's compile error" in (project["cache"] / _key() / "build.log").read_text()
    assert sorted(p.name for p in (project["cache"] / _key()).iterdir()) == ["build.log", "failed.json"]
    assert not list(project["cache"].glob(".build-*"))
    with pytest.raises(pb.BuildSkipped):
        pb.build(*args, env=env, system_root=tmp_path / "r")
    assert runs.read_text().count("\n") == 1
    del env["FAKE_PYCUDA_FAIL"]
    assert pb.build(*args, env=env, system_root=tmp_path / "r", force=True).is_file()
    assert runs.read_text().count("\n") == 2


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:  # ended meanwhile
        return ""


@needs_python_h
def test_a_build_that_hangs_is_killed_with_its_compilers(tmp_path: Path, project: dict[str, Path]) -> None:
    token = f"stand-in-compiler-{tmp_path.name}-{os.getpid()}"
    env = _env(tmp_path, FAKE_PYCUDA_HANG=token)
    with pytest.raises(pb.PycudaBuildError, match=r"pip wheel took longer than 3 s and was killed") as hung:
        pb.build(project["sdist"], project["wheels"], project["cache"], env=env, system_root=tmp_path / "r",
                 timeout=3)
    assert "FAILED: pip wheel took longer" in Path(hung.value.failure.log).read_text()
    deadline = time.monotonic() + 10  # SIGKILL is sent to the group at once; the exits may take a moment
    while [p for p in Path("/proc").glob("[0-9]*") if token in _cmdline(p)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in Path("/proc").glob("[0-9]*") if token in _cmdline(p)]  # the "compiler" went with pip
    assert not list(project["cache"].glob(".build-*"))


def test_latest_failure_is_for_this_python_and_machine_only(tmp_path: Path) -> None:
    other = tmp_path / f"pycuda-2025.1.2-cuda12.2-cp39-np2-{platform.machine()}"
    _touch(other / pb.FAILED, json.dumps({"key": other.name, "fingerprint": "x", "time": "t", "error": "e",
                                          "missing": [], "log": "l", "sdist": "s", "find_links": "w"}))
    assert pb.latest_failure(tmp_path) is None
    assert pb.read_failure(other) is not None


def test_an_unsafe_sdist_is_refused(tmp_path: Path) -> None:
    sdist = tmp_path / "pycuda-1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        info = tarfile.TarInfo("../escape.py")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(ValueError, match="unsafe member '../escape.py'"):
        pb._unpack(sdist, tmp_path / "out")
    assert not (tmp_path / "escape.py").exists()


# ------------------------------------------------------------------------------------------------- CLI


@needs_python_h
def test_the_postinst_command_builds_once_and_installs_into_a_fresh_venv(tmp_path: Path,
                                                                         project: dict[str, Path]) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = _env(tmp_path, PYTHONPATH=str(ROOT))
    cmd = [str(venv / "bin/python"), "-m", "engines.pycuda_build", "--sdist", str(project["sdist"]),
           "--find-links", str(project["wheels"]), "--cache", str(project["cache"]), "--install"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    key = pb.cache_key("2025.1.2", "12.2", "none")
    assert first.returncode == 0, first.stderr
    assert f"pycuda: built {project['cache'] / key}/pycuda-2025.1.2-py3-none-any.whl in " in first.stdout
    assert f"pycuda: installed into {venv}" in first.stdout
    imported = subprocess.run([str(venv / "bin/python"), "-c", "import pycuda, pycuda._driver as d; "
                               "print(pycuda.VERSION_TEXT, d.BUILT)"], capture_output=True, text=True)
    assert imported.stdout == "2025.1.2 True\n"

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0
    assert second.stdout.startswith(f"pycuda: cached {project['cache'] / key}/")


@needs_python_h
def test_the_cli_reports_missing_prerequisites_and_exits_1(tmp_path: Path, project: dict[str, Path]) -> None:
    env = _env(tmp_path, ("lib64/libcurand.so",), PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "engines.pycuda_build", "--sdist", str(project["sdist"]),
           "--find-links", str(project["wheels"]), "--cache", str(project["cache"])]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.startswith("pycuda: build failed\n  not built: 1 of its")
    assert "\n  missing: libcurand.so: not found (looked in " in done.stderr
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1
    assert "nothing it needs has changed; --force retries" in again.stderr

    check = subprocess.run([sys.executable, "-m", "engines.pycuda_build", "--check"], env=env, capture_output=True,
                           text=True, timeout=120)
    assert check.returncode == 1
    assert "  MISSING  libcurand.so: not found" in check.stdout
    assert f"CUDA toolkit: {tmp_path / 'cuda-12.2'} (from CUDA_HOME), version 12.2" in check.stdout


# ------------------------------------------------------------------------------------- the real build

SDIST, WHEELS = os.environ.get("PYCUDA_SDIST"), os.environ.get("PYCUDA_WHEELS")
NVCC = shutil.which("nvcc") or (shutil.which("nvcc", path="/usr/local/cuda/bin"))


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not (NVCC and SDIST and WHEELS), reason="needs nvcc, and PYCUDA_SDIST (pycuda-<version>.tar.gz) "
                    "and PYCUDA_WHEELS (setuptools, wheel, packaging, numpy wheels for this Python)")
def test_the_real_pycuda_builds_against_this_cuda(tmp_path: Path) -> None:
    assert SDIST
    assert WHEELS
    wheel = pb.build(Path(SDIST), Path(WHEELS), tmp_path / "cache", timeout=1800)
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    assert any(n.startswith("pycuda/_driver.") and n.endswith(".so") for n in names), names
    assert wheel.name.startswith(f"pycuda-{pb.sdist_version(Path(SDIST))}-{TAG}-{TAG}-linux_")
    assert "Successfully built pycuda" in (wheel.parent / pb.LOG).read_text()
