"""A demo video for trying pipelines without a camera: the demo models' shapes drifting across a
textured background, written as MPEG-4 with OpenCV.

    python -m edge_agent.demo.video shapes.mp4 [--seconds 10] [--fps 15] [--size 480x640]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from edge_agent.demo.shapes import generate_scene


def write_demo_video(path: Path, seconds: float = 10.0, fps: float = 15.0, size: tuple[int, int] = (480, 640),
                     seed: int = 3) -> int:
    """Write the video to ``path``; returns the number of frames. The scene scrolls sideways (wrapping
    round), so every frame holds the same shapes at new places."""
    import cv2  # lazy: cv2

    h, w = size
    scene = generate_scene(seed, size=(h, w), max_objects=5).image
    frames = max(1, round(seconds * fps))
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise OSError(f"OpenCV cannot write an MPEG-4 file at {path}")
    try:
        for i in range(frames):
            writer.write(np.roll(scene, shift=(i * 4) % w, axis=1))
    finally:
        writer.release()
    return frames


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m edge_agent.demo.video", description=__doc__.splitlines()[0])
    ap.add_argument("path", type=Path)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--fps", type=float, default=15.0)
    ap.add_argument("--size", default="480x640", help="HEIGHTxWIDTH")
    args = ap.parse_args(argv)
    try:
        h, w = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        ap.error(f"--size must be HEIGHTxWIDTH, got {args.size!r}")
    if args.seconds <= 0 or args.fps <= 0 or h < 64 or w < 64:
        ap.error("--seconds and --fps must be positive, the size at least 64x64")
    frames = write_demo_video(args.path, args.seconds, args.fps, (h, w))
    print(f"{args.path}: {frames} frames, {w}x{h} at {args.fps:g} fps")


if __name__ == "__main__":
    main()
