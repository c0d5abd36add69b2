"""Device and runtime statistics for telemetry: CPU, memory, thermal zones, the Jetson GPU from sysfs
when present, per-model engine latency and per-source frame rates since the last report.

Reads ``/proc`` and ``/sys`` only (no subprocess, no extra package); both roots can be moved for
tests. Anything a board does not have is left out rather than guessed.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

# Jetson GPU load (per mille) in sysfs: Orin on JetPack 6 first, then Xavier / Nano / TX2 layouts.
JETSON_GPU_LOAD = (
    "devices/platform/bus@0/17000000.gpu/load",
    "devices/platform/17000000.gpu/load",
    "devices/platform/17000000.ga10b/load",
    "devices/platform/gpu.0/load",
    "devices/gpu.0/load",
    "devices/17000000.gv11b/load",
    "devices/57000000.gpu/load",
)
JETSON_GPU_DEVFREQ = ("17000000.gpu", "17000000.ga10b", "17000000.gv11b", "57000000.gpu", "gpu.0")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


class SystemStats:
    def __init__(self, proc: Path = Path("/proc"), sys: Path = Path("/sys")) -> None:
        self.proc = proc
        self.sys = sys
        self._cpu_last: tuple[int, int] | None = None
        self._gpu_load = next((sys / p for p in JETSON_GPU_LOAD if (sys / p).exists()), None)
        self._gpu_freq = next((sys / "class/devfreq" / d / "cur_freq" for d in JETSON_GPU_DEVFREQ
                               if (sys / "class/devfreq" / d / "cur_freq").exists()), None)
        self.cpu_percent()  # the first reading is the baseline of the next

    def cpu_percent(self) -> float | None:
        """Busy share of all CPUs since the previous call (``/proc/stat``)."""
        line = (_read(self.proc / "stat") or "").split("\n", 1)[0].split()
        if len(line) < 5 or line[0] != "cpu":
            return None
        values = [int(v) for v in line[1:]]
        idle, total = values[3] + (values[4] if len(values) > 4 else 0), sum(values[:8])
        last, self._cpu_last = self._cpu_last, (idle, total)
        if last is None or total <= last[1]:
            return None
        return round(100.0 * (1 - (idle - last[0]) / (total - last[1])), 1)

    def memory(self) -> dict[str, int] | None:
        fields: dict[str, int] = {}
        for line in (_read(self.proc / "meminfo") or "").splitlines():
            name, _, rest = line.partition(":")
            if name in ("MemTotal", "MemAvailable", "SwapTotal", "SwapFree"):
                fields[name] = int(rest.split()[0]) * 1024
        if "MemTotal" not in fields or "MemAvailable" not in fields:
            return None
        out = {"total_bytes": fields["MemTotal"], "available_bytes": fields["MemAvailable"]}
        if fields.get("SwapTotal"):
            out["swap_used_bytes"] = fields["SwapTotal"] - fields.get("SwapFree", 0)
        return out

    def process_rss(self) -> int | None:
        for line in (_read(self.proc / "self/status") or "").splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return None

    def temperatures(self) -> dict[str, float]:
        """Degrees Celsius per thermal zone, named by the zone's type (``cpu-thermal``, ``GPU-therm``)."""
        out: dict[str, float] = {}
        for zone in sorted((self.sys / "class/thermal").glob("thermal_zone*")):
            kind, milli = _read(zone / "type"), _read(zone / "temp")
            if kind and milli and milli.lstrip("-").isdigit():
                name = kind if kind not in out else f"{kind}.{zone.name.removeprefix('thermal_zone')}"
                out[name] = int(milli) / 1000.0
        return out

    def gpu(self) -> dict[str, Any] | None:
        """The Jetson's integrated GPU: load and clock. Its memory is the system's (``memory``)."""
        if self._gpu_load is None:
            return None
        load = _read(self._gpu_load)
        if load is None or not load.isdigit():
            return None
        out: dict[str, Any] = {"load_percent": int(load) / 10.0, "memory_shared_with_system": True}
        freq = _read(self._gpu_freq) if self._gpu_freq is not None else None
        if freq and freq.isdigit():
            out["frequency_hz"] = int(freq)
        return out

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cpu_percent": self.cpu_percent(), "load_average": list(os.getloadavg()),
                               "memory": self.memory(), "process_rss_bytes": self.process_rss(),
                               "temperatures_c": self.temperatures()}
        gpu = self.gpu()
        if gpu is not None:
            out["gpu"] = gpu
        return {k: v for k, v in out.items() if v is not None}


class RuntimeStats:
    """Engine runs per model and frames per source since the last ``take``; cheap to feed (a lock and
    a few additions per batch or frame)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since = time.monotonic()
        self._models: dict[str, list[float]] = {}  # model -> [batches, images, seconds]
        self._sources: dict[str, int] = {}

    def on_batch(self, model_id: str, size: int, seconds: float) -> None:
        with self._lock:
            entry = self._models.setdefault(model_id, [0, 0, 0.0])
            entry[0] += 1
            entry[1] += size
            entry[2] += seconds

    def on_frame(self, source_id: str) -> None:
        with self._lock:
            self._sources[source_id] = self._sources.get(source_id, 0) + 1

    def take(self) -> dict[str, Any]:
        """What happened since the previous call, then start over."""
        now = time.monotonic()
        with self._lock:
            models, sources, since = self._models, self._sources, self._since
            self._models, self._sources, self._since = {}, {}, now
        span = max(now - since, 1e-9)
        return {
            "interval_s": round(span, 3),
            "models": {m: {"batches": int(b), "images": int(n), "engine_ms_mean": round(1000 * s / b, 3)}
                       for m, (b, n, s) in sorted(models.items())},
            "sources": {s: {"frames": n, "fps": round(n / span, 3)} for s, n in sorted(sources.items())},
        }
