"""Pipelines against the bare model, in the same run, on the same frames.

  bare       the demo detector's ``LoadedModel.infer`` on frames already decoded in memory, one after
             another: the model alone (frames per second)
  pipeline   ``InferencePipeline`` on the video file in process-all mode (decoding in the source's
             thread, overlapped with inference): every frame, frames per second; then 2 and 4
             pipelines at once on the same model (their frames in total per second)

  sinks      one pipeline with Roboflow's sinks as ``on_prediction`` (the Roboflow dict and
             ``VideoFrame`` of every frame, dispatched on a thread of its own): a no-op sink,
             ``render_boxes`` on this headless OpenCV (drawn and letterboxed to 1280x720, not shown),
             ``VideoFileSink`` (an .avi, MJPG), ``UDPSink`` (to a loopback socket a thread drains);
             each against the pipeline without a sink in the same run

Also the RSS of the process before and after, as a first look at growth (the long soak is
``--soak-minutes``: one pipeline on a looping file, RSS every minute).

    python bench/pipeline.py [--frames 300] [--size 480x640] [--soak-minutes 0]
"""

# ruff: noqa: E402
from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_video(path: Path, frames: int, h: int, w: int, fps: float = 30.0) -> list[np.ndarray]:
    """Moving shapes on a textured background (so the decoder has real work)."""
    import cv2

    from edge_agent.demo.shapes import generate_scene

    base = generate_scene(3, size=(h, w)).image
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (w, h))
    out = []
    for i in range(frames):
        image = np.roll(base, shift=(i * 3) % w, axis=1).copy()
        cv2.circle(image, (40 + (i * 5) % (w - 80), h // 2), 30, (250, 250, 250), -1)
        writer.write(image)
        out.append(image)
    writer.release()
    return out


def sinks(runtime: Any, model: str, video: Path, count: int, tmp: Path) -> dict[str, list[float]]:
    """Frames per second of one pipeline per sink, alternated twice."""
    import socket
    import threading

    from edge_agent.pipelines.pipeline import InferencePipeline
    from edge_agent.pipelines.sinks import UDPSink, VideoFileSink, render_boxes

    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(0.5)
    draining = threading.Event()

    def drain() -> None:
        while not draining.is_set():
            try:
                receiver.recv(65536)
            except OSError:
                pass

    threading.Thread(target=drain, daemon=True).start()
    udp = UDPSink.init("127.0.0.1", receiver.getsockname()[1])

    def run(on_prediction: Any) -> float:
        p = InferencePipeline(runtime.inference, model, str(video), on_prediction=on_prediction)
        t0 = time.perf_counter()
        p.start()
        p.join()
        took = time.perf_counter() - t0
        assert p.state == "finished" and p.frames_inferred == count, p.status()
        return count / took

    results: dict[str, list[float]] = {}
    for _ in range(2):
        results.setdefault("no sink", []).append(run(None))
        results.setdefault("no-op", []).append(run(lambda p, f: None))
        results.setdefault("render_boxes", []).append(run(render_boxes))
        writer = VideoFileSink.init(str(tmp / "out.avi"), quiet=True)
        results.setdefault("VideoFileSink", []).append(run(writer.on_prediction))
        writer.release()
        results.setdefault("UDPSink", []).append(run(udp.send_predictions))
    draining.set()
    udp.close()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--size", default="480x640")
    ap.add_argument("--model", default="shapes/1")
    ap.add_argument("--soak-minutes", type=float, default=0.0)
    args = ap.parse_args()
    h, w = (int(v) for v in args.size.split("x"))

    import cv2

    from edge_agent.params import InferenceParams
    from edge_agent.pipelines.pipeline import InferencePipeline
    from edge_agent.runtime import Runtime
    from edge_agent.settings import Settings

    tmp = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    video = tmp / "moving.mp4"
    write_video(video, args.frames, h, w)
    capture = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        frames.append(image)
    capture.release()
    runtime = Runtime(Settings.defaults(tmp / "state").for_pipelines())  # as a daemon with streams runs them
    loaded, _ = runtime.inference.model(args.model)
    params = InferenceParams()
    for image in frames[:10]:
        loaded.infer([image], params)
    rss0 = rss_mb()

    def bare() -> float:
        t0 = time.perf_counter()
        for image in frames:
            loaded.infer([image], params)
        return len(frames) / (time.perf_counter() - t0)

    def pipelines(n: int) -> float:
        ps = [InferencePipeline(runtime.inference, args.model, str(video), pipeline_id=f"p{i}") for i in range(n)]
        t0 = time.perf_counter()
        for p in ps:
            p.start()
        for p in ps:
            p.join()
        took = time.perf_counter() - t0
        assert all(p.state == "finished" and p.frames_inferred == len(frames) for p in ps), [p.status() for p in ps]
        return n * len(frames) / took

    print(f"{len(frames)} frames {w}x{h}, model {args.model}, {os.cpu_count()} CPUs")
    results: dict[str, list[float]] = {"bare": [], "1": [], "2": [], "4": []}
    for _ in range(2):  # alternated, so drift in the machine's speed hits every side
        results["bare"].append(bare())
        for n in (1, 2, 4):
            results[str(n)].append(pipelines(n))
    base = float(np.mean(results["bare"]))
    print(f"bare model (decoded frames in memory) {base:7.1f} frames/s (1.00)")
    for n in (1, 2, 4):
        fps = float(np.mean(results[str(n)]))
        print(f"{n} pipeline(s), process-all, from the file {fps:7.1f} frames/s in total ({fps / base:.2f}x)")
    sink_results = sinks(runtime, args.model, video, len(frames), tmp)
    plain = float(np.mean(sink_results.pop("no sink")))
    print(f"1 pipeline without a sink {plain:7.1f} frames/s (1.00)")
    for name, values in sink_results.items():
        fps = float(np.mean(values))
        print(f"1 pipeline, on_prediction={name:<22} {fps:7.1f} frames/s ({fps / plain:.2f}x)")
    print(f"RSS {rss0:.0f} MB after warm-up, {rss_mb():.0f} MB after {sum(len(v) for v in results.values())} runs")

    if args.soak_minutes > 0:
        print(f"soak: one realtime-paced pipeline on a looping file for {args.soak_minutes} min")
        end = time.monotonic() + args.soak_minutes * 60
        samples = []
        while time.monotonic() < end:
            p = InferencePipeline(runtime.inference, args.model, str(video), realtime=True, pipeline_id="soak")
            p.start()
            while not p.done and time.monotonic() < end:
                time.sleep(5)
                samples.append(rss_mb())
            p.terminate()
        if samples:
            print(f"soak RSS: first {samples[0]:.1f} MB, last {samples[-1]:.1f} MB, max {max(samples):.1f} MB "
                  f"over {len(samples)} samples")
    runtime.stop()


if __name__ == "__main__":
    main()
