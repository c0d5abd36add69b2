"""What active learning costs a pipeline, in the same run on the same video.

  off        a pipeline (process-all) on a generated 640x480 video, no sampling
  100%       the same with a ``random`` strategy at traffic 1.0 (every frame: dHash, JPEG encoding,
             the spool write in the writer thread, and the folder target's uploader writing the YOLO
             data set concurrently), frames/s; and how much reached the spool
  spool      ``Spool.add`` alone with the JPEGs of those frames: items/s and MB/s, disk bytes per frame

    python bench/active_learning.py [--frames 300] [--rounds 3] [--sync full|normal]
"""

# ruff: noqa: E402
from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sync", default="full", choices=["full", "normal"])
    args = ap.parse_args()

    sys.path.insert(0, _HERE)
    from pipeline import write_video  # bench/pipeline.py

    from edge_agent.active_learning.spool import Item, Spool
    from edge_agent.pipelines.pipeline import InferencePipeline
    from edge_agent.runtime import Runtime
    from edge_agent.settings import ActiveLearningSettings, Settings

    tmp = Path(tempfile.mkdtemp(prefix="bench-al-"))
    video = tmp / "moving.mp4"
    write_video(video, args.frames, 480, 640)

    def runtime(name: str, sampling: bool) -> Any:
        al = ActiveLearningSettings(enabled=True, dedup_distance=0, spool_sync=args.sync,
                                    spool_max_items=1_000_000, queue_size=256,
                                    strategies=({"name": "all", "type": "random", "traffic_percentage": 1.0},))
        settings = Settings.defaults(tmp / name)
        if sampling:
            settings = settings.model_copy(update={"active_learning": al})
        rt = Runtime(settings)
        rt.start()
        return rt

    def fps(rt: Any) -> float:
        p = InferencePipeline(rt.inference, "shapes/1", str(video), pipeline_id="bench")
        t0 = time.perf_counter()
        p.start()
        p.join()
        assert p.state == "finished" and p.frames_inferred == args.frames, p.status()
        return args.frames / (time.perf_counter() - t0)

    warm = runtime("warm", False)
    fps(warm)
    warm.stop()
    rates: dict[str, list[float]] = {"off": [], "on": []}
    spooled = 0
    for i in range(args.rounds):
        for mode in ("off", "on"):
            rt = runtime(f"{mode}-{i}", mode == "on")
            rates[mode].append(fps(rt))
            if mode == "on":
                rt.active_learning.sampler.stop()  # what was sampled is written before counting
                spooled += rt.active_learning.sampler.stats["stored"]
            rt.stop()
    off, on = statistics.mean(rates["off"]), statistics.mean(rates["on"])
    print(f"{args.frames} frames 640x480, demo detector, {os.cpu_count()} CPUs, spool_sync={args.sync}")
    print(f"pipeline, sampling off            {off:7.1f} frames/s (1.00)  rounds {[round(r, 1) for r in rates['off']]}")
    print(f"pipeline, sampling 100% + folder  {on:7.1f} frames/s ({on / off:.3f}x)  rounds "
          f"{[round(r, 1) for r in rates['on']]}; {spooled} of {args.frames * args.rounds} frames stored")

    import cv2

    capture = cv2.VideoCapture(str(video))
    jpegs = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        jpegs.append(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 75])[1].tobytes())
    spool = Spool(tmp / "alone.sqlite3", 10**7, 10**12, args.sync)
    body = {"image": {"width": 640, "height": 480}, "predictions": [
        {"x": 100.0, "y": 100.0, "width": 50.0, "height": 50.0, "confidence": 0.9, "class": "circle", "class_id": 0,
         "detection_id": str(uuid.uuid4())} for _ in range(4)]}
    t0 = time.perf_counter()
    for jpeg in jpegs:
        spool.add(Item(str(uuid.uuid4()), time.time(), "cam", "shapes/1", "all", 640, 480, jpeg, body, ("circle",)),
                  ("folder",), {("all", "daily"): ("2026-01-01", 1)})
    took = time.perf_counter() - t0
    stats = spool.stats()
    disk = sum(f.stat().st_size for f in tmp.glob("alone.sqlite3*"))
    print(f"spool writes alone                {len(jpegs) / took:7.1f} items/s, "
          f"{stats['bytes'] / took / 1e6:.1f} MB/s; JPEG q75 {statistics.mean(map(len, jpegs)) / 1024:.1f} kB, "
          f"disk {disk / len(jpegs) / 1024:.1f} kB per frame (database + WAL)")


if __name__ == "__main__":
    main()
