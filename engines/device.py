"""What accelerator this machine has, as plain data: Jetson model, L4T release, CUDA GPU, DLA cores.

``probe()`` reads files (``/proc/device-tree/model``, ``/etc/nv_tegra_release``, ``/dev``) and asks
the CUDA driver (``libcuda.so.1`` through ctypes: ``cuInit``, ``cuDeviceGetCount``, the name and the
compute capability of device 0). It imports no Python package beyond the standard library, so the
choice of back-end costs nothing on a box without a GPU.
"""

from __future__ import annotations

import ctypes
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_CC_MAJOR, _CC_MINOR = 75, 76  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR


@dataclass(frozen=True)
class DeviceInfo:
    jetson_model: str | None  # "NVIDIA Jetson Orin Nano Developer Kit", None off Jetson
    l4t_release: str | None  # "36.3.0" (JetPack 6.0), None off Jetson
    gpu_name: str | None  # from the CUDA driver; None when no CUDA GPU answers
    compute_capability: str | None  # "8.7"
    dla_cores: int  # DLA engines seen under /dev (Xavier, Orin AGX/NX); 0 elsewhere
    cuda_reason: str  # "ok", or why no CUDA GPU answers

    @property
    def cuda(self) -> bool:
        return self.gpu_name is not None

    def fast_fp16(self) -> bool:
        """Whether the GPU runs FP16 at least at twice the FP32 rate (TensorRT's own test is preferred
        when building: ``builder.platform_has_fast_fp16``). Pascal 6.1 is the one modern exception."""
        if self.compute_capability is None:
            return False
        major, minor = (int(p) for p in self.compute_capability.split("."))
        return (major, minor) >= (5, 3) and (major, minor) != (6, 1)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "cuda": self.cuda}


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip("\x00\n ")
    except OSError:
        return None


def l4t_release(text: str | None) -> str | None:
    """``# R36 (release), REVISION: 3.0, GCID: ...`` -> ``36.3.0``."""
    if not text:
        return None
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def _cuda_gpu() -> tuple[str | None, str | None, str]:
    """Name and compute capability of CUDA device 0, or why there is none."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        return None, None, f"the CUDA driver (libcuda.so.1) is not installed: {exc}"
    rc = lib.cuInit(0)
    if rc != 0:
        return None, None, f"cuInit failed with CUDA error {rc} (no usable GPU, or no access to its device files)"
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return None, None, "the CUDA driver reports no GPU"
    device = ctypes.c_int(0)
    if lib.cuDeviceGet(ctypes.byref(device), 0) != 0:
        return None, None, "cuDeviceGet(0) failed"
    name = ctypes.create_string_buffer(256)
    lib.cuDeviceGetName(name, 256, device)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    lib.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, device)
    lib.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, device)
    return name.value.decode(errors="replace") or "CUDA GPU", f"{major.value}.{minor.value}", "ok"


def probe(root: Path = Path("/"), cuda: bool = True) -> DeviceInfo:
    """A snapshot of this machine. ``root`` lets tests point at a stand-in file tree; ``cuda=False``
    skips asking the driver."""
    model = _read(root / "proc/device-tree/model")
    release = l4t_release(_read(root / "etc/nv_tegra_release"))
    jetson = model if model and ("jetson" in model.lower() or release) else None
    dla = len(list((root / "dev").glob("nvhost-ctrl-nvdla*"))) if (root / "dev").is_dir() else 0
    name, cc, reason = _cuda_gpu() if cuda else (None, None, "not asked")
    return DeviceInfo(jetson, release, name, cc, dla, reason)
