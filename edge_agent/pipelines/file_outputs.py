"""A pipeline's outputs on disk (``outputs: ["jsonl", "video"]`` of a ``PipelineSpec``), as the daemon's
sinks (a ``Frame`` and its ``Result``, called on the pipeline's thread): JSON lines and annotated MP4.
``PipelineManager`` places them under ``<state>/pipelines/<id>/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent.events import timestamp
from edge_agent.pipelines.sources import Frame
from edge_agent.results import Result
from edge_agent.roboflow_json import to_roboflow
from edge_agent.visualize import draw

if TYPE_CHECKING:
    import cv2


class JsonLinesSink:
    """One line of Roboflow JSON (plus pipeline, source, frame and times) per frame, appended to ``path``:
    ``source_id`` is the pipeline's id (as on MQTT), ``video_source`` the index of the frame's source."""

    def __init__(self, path: Path, pipeline_id: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="utf-8")
        self.pipeline_id = pipeline_id

    def __call__(self, frame: Frame, result: Result) -> None:
        body = {**to_roboflow(result), "source_id": self.pipeline_id, "video_source": frame.source_id,
                "frame_id": frame.frame_id, "captured_at": timestamp(frame.captured_at)}
        self._file.write(json.dumps(body, separators=(",", ":")) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class AnnotatedVideoFile:
    """The frames with their results drawn, written to an MP4 file (OpenCV's FFmpeg, mp4v): ``path`` for
    one source; with ``sources`` > 1, one file per source, ``<stem>-<n><suffix>`` for source n.
    (Roboflow's ``sinks.VideoFileSink`` is the other one: its sink for ``on_prediction``.)"""

    def __init__(self, path: Path, fps: float, colours: dict[str, str] | None = None, sources: int = 1) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.fps, self.colours, self.sources = path, fps, colours, sources
        self._writers: dict[int, cv2.VideoWriter] = {}

    def path_of(self, source_id: int) -> Path:
        if self.sources == 1:
            return self.path
        return self.path.with_name(f"{self.path.stem}-{source_id}{self.path.suffix}")

    def __call__(self, frame: Frame, result: Result) -> None:
        import cv2  # lazy: cv2

        image = draw(frame.image, result, colours=self.colours)
        writer = self._writers.get(frame.source_id)
        if writer is None:
            h, w = image.shape[:2]
            writer = cv2.VideoWriter(str(self.path_of(frame.source_id)), cv2.VideoWriter.fourcc(*"mp4v"), self.fps,
                                     (w, h))
            self._writers[frame.source_id] = writer
        writer.write(image)

    def close(self) -> None:
        for writer in self._writers.values():
            writer.release()
