"""What active learning costs a pipeline, in the same run on the same video.

  off        a pipeline (process-all) on a generated 640x480 video, active learning not enabled
  0% 10% 100%
             the same pipeline with active learning enabled and a ``random`` strategy at that traffic
             (each sampled frame: JPEG encoding and the spool write in the writer thread, and the folder
             target's uploader writing the YOLO data set concurrently); near-duplicate skipping off, so
             that 100 % means every frame; the writer at the default ``thread_priority`` ("low":
             nice +10), the uploader at normal priority; frames the writer has no time for are dropped
             and counted. The time runs until every sampled frame is in the spool and in the folder
             (the work a stream of frames would have to keep up with); "pipeline alone" is the ratio
             until the pipeline's last frame, with the writer and uploader perhaps still behind
  100% idle  the same at ``thread_priority = "idle"`` (SCHED_IDLE: only CPU that inference leaves)
  100% normal
             the same at ``thread_priority = "normal"`` (every frame written, at inference's expense)
  spool      ``Spool.add`` alone with the JPEGs of those frames: items/s and MB/s, disk bytes per frame

Each round runs every mode once, in a rotated order, and each mode's figure is divided by the ``off``
figure of its own round: on a shared machine the load drifts between rounds, so a ratio is taken from
runs close in time, and the median of the rounds is given with their spread. Besides frames/s (wall
time), the CPU seconds the whole process spent per frame (all threads: decoding, inference, sampling,
the writer, the uploader) are given: they do not depend on what else runs on the machine.

    python bench/active_learning.py [--frames 300] [--rounds 5] [--sync full|normal] [--modes off,100%]

``--modes`` runs only the modes named (``off`` is always run, as the reference): more rounds of fewer
modes in the same time, for a steadier median.
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

MODES: dict[str, tuple[float, str] | None] = {"off": None, "0%": (0.0, "low"), "10%": (0.1, "low"),
                                              "100%": (1.0, "low"), "100% idle": (1.0, "idle"),
                                              "100% normal": (1.0, "normal")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sync", default="full", choices=["full", "normal"])
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated, of: " + ", ".join(MODES))
    args = ap.parse_args()
    chosen = ["off", *(m for m in MODES if m != "off" and m in args.modes.split(","))]
    unknown = set(args.modes.split(",")) - set(MODES)
    if unknown:
        ap.error(f"unknown mode(s): {', '.join(sorted(unknown))}")

    sys.path.insert(0, _HERE)
    from pipeline import write_video  # bench/pipeline.py

    from edge_agent.active_learning.spool import Item, Spool
    from edge_agent.pipelines.pipeline import InferencePipeline
    from edge_agent.runtime import Runtime
    from edge_agent.settings import ActiveLearningSettings, Settings

    tmp = Path(tempfile.mkdtemp(prefix="bench-al-"))
    video = tmp / "moving.mp4"
    write_video(video, args.frames, 480, 640)

    def runtime(name: str, mode: tuple[float, str] | None) -> Any:
        settings = Settings.defaults(tmp / name).for_pipelines()  # as a daemon with streams or a script runs them
        if mode is not None:
            traffic, priority = mode
            al = ActiveLearningSettings(enabled=True, dedup_distance=0, spool_sync=args.sync,
                                        spool_max_items=1_000_000, thread_priority=priority,
                                        strategies=({"name": "all", "type": "random", "traffic_percentage": traffic},))
            settings = settings.model_copy(update={"active_learning": al})
        rt = Runtime(settings)
        rt.start()
        return rt

    def run(rt: Any) -> tuple[float, float, float]:
        """frames/s and CPU ms per frame, from the pipeline's start until every sampled frame is in the
        spool and in the folder; and frames/s until the pipeline's end alone."""
        p = InferencePipeline(rt.inference, "shapes/1", str(video), pipeline_id="bench")
        t0, c0 = time.perf_counter(), time.process_time()
        p.start()
        p.join()
        ended = time.perf_counter() - t0
        if rt.active_learning is not None:
            rt.active_learning.sampler.stop()  # what was sampled is written: its CPU counts
            deadline = time.monotonic() + 120
            while rt.active_learning.spool.stats().get("pending_folder", 0) and time.monotonic() < deadline:
                time.sleep(0.005)  # and uploaded to the folder
        took = time.perf_counter() - t0
        cpu = time.process_time() - c0
        assert p.state == "finished" and p.frames_inferred == args.frames, p.status()
        return args.frames / took, cpu / args.frames * 1000, args.frames / ended

    warm = runtime("warm", None)
    run(warm)
    warm.stop()
    names = chosen
    fps: dict[str, list[float]] = {m: [] for m in names}
    fps_pipeline: dict[str, list[float]] = {m: [] for m in names}
    cpu: dict[str, list[float]] = {m: [] for m in names}
    stored: dict[str, int] = dict.fromkeys(names, 0)
    dropped: dict[str, int] = dict.fromkeys(names, 0)
    uploaded: dict[str, int] = dict.fromkeys(names, 0)
    for i in range(args.rounds):
        for mode in names[i % len(names):] + names[:i % len(names)]:
            rt = runtime(f"{mode.replace('%', '').replace(' ', '-')}-{i}", MODES[mode])
            f, c, fp = run(rt)
            fps[mode].append(f)
            fps_pipeline[mode].append(fp)
            cpu[mode].append(c)
            if rt.active_learning is not None:
                stored[mode] += rt.active_learning.sampler.stats["stored"]
                dropped[mode] += rt.active_learning.sampler.stats["dropped_queue_full"]
                uploaded[mode] += rt.active_learning.uploaders[0].stats["uploaded"]
            rt.stop()

    print(f"{args.frames} frames 640x480, demo detector, {os.cpu_count()} CPUs, spool_sync={args.sync}, "
          f"{args.rounds} rounds; ratio = median over rounds of (mode / off of the same round) [min-max]; "
          f"frames/s until every sampled frame is in the spool and the folder ('pipeline alone': until the "
          f"pipeline's last frame)")
    for mode in names:
        ratios = [a / b for a, b in zip(fps[mode], fps["off"])]
        alone = [a / b for a, b in zip(fps_pipeline[mode], fps_pipeline["off"])]
        cpu_ratios = [a / b for a, b in zip(cpu[mode], cpu["off"])]
        extra = "" if MODES[mode] is None else (f"; {stored[mode]} of {args.frames * args.rounds} frames stored, "
                                                f"{dropped[mode]} dropped (writer queue full), {uploaded[mode]} "
                                                f"in the folder")
        print(f"sampling {mode:>11}  {statistics.median(fps[mode]):6.1f} frames/s  "
              f"{statistics.median(ratios):.3f}x [{min(ratios):.3f}-{max(ratios):.3f}]   "
              f"CPU {statistics.median(cpu[mode]):5.1f} ms/frame  {statistics.median(cpu_ratios):.3f}x "
              f"[{min(cpu_ratios):.3f}-{max(cpu_ratios):.3f}]  pipeline alone {statistics.median(alone):.3f}x"
              f"{extra}")
    print(f"frames/s by round: { {m: [round(v, 1) for v in fps[m]] for m in names} }")

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
    print(f"spool writes alone  {len(jpegs) / took:7.1f} items/s, "
          f"{stats['bytes'] / took / 1e6:.1f} MB/s; JPEG q75 {statistics.mean(map(len, jpegs)) / 1024:.1f} kB, "
          f"disk {disk / len(jpegs) / 1024:.1f} kB per frame (database + WAL)")


if __name__ == "__main__":
    main()
