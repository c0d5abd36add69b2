"""INT8 calibration: TensorRT's entropy calibrator fed with pre-processed frames from a ``.npy`` file.

The daemon prepares the frames (a folder of images or the active-learning spool, pre-processed the
way the model expects, see ``edge_agent.serving.accelerate``); the build queue (``engines.trt_queue``)
writes them into one ``(N, 3, H, W)`` float32 file; the build process memory-maps it and hands
TensorRT one batch at a time through a device buffer.
TensorRT's calibration cache is kept beside the engine cache, so a rebuild for another batch profile
does not calibrate again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def load_frames(path: Path) -> np.ndarray:
    frames: np.ndarray = np.load(path, mmap_mode="r")
    if frames.ndim != 4 or frames.shape[1] != 3 or frames.dtype != np.float32:
        raise ValueError(f"{path}: calibration frames must be (N, 3, H, W) float32, got {frames.shape} {frames.dtype}")
    if len(frames) == 0:
        raise ValueError(f"{path}: no calibration frames")
    return frames


def make_calibrator(trt: Any, cuda: Any, frames: np.ndarray, batch: int, cache_path: Path) -> Any:
    """An ``IInt8EntropyCalibrator2`` over ``frames`` (needs a current CUDA context)."""

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.frames = frames
            self.batch = max(1, min(batch, len(frames)))
            self.index = 0
            self.host = cuda.pagelocked_empty((self.batch, *frames.shape[1:]), np.float32)
            self.device = cuda.mem_alloc(self.host.nbytes)

        def get_batch_size(self) -> int:
            return self.batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.index + self.batch > len(self.frames):
                return None
            self.host[:] = self.frames[self.index:self.index + self.batch]
            cuda.memcpy_htod(self.device, self.host)
            self.index += self.batch
            return [int(self.device)]

        def read_calibration_cache(self) -> bytes | None:
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_path.with_suffix(".tmp")
            tmp.write_bytes(bytes(cache))
            tmp.replace(cache_path)

    return EntropyCalibrator()
