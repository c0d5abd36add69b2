"""Roboflow's ``InferencePipeline`` code run unchanged but for its imports and model id: the snippets of
docs/using_inference/inference_pipeline.md and of the sinks' docstrings (roboflow/inference), on the
demo detector and video files written by the test (a white circle moving on grey)."""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import threading
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import VIDEO_SIZE, circle_video

FRAMES = 12


@pytest.fixture
def video(tmp_path: Path) -> str:
    circle_video(tmp_path / "some_file.mp4", frames=FRAMES)
    return str(tmp_path / "some_file.mp4")


def _headless_opencv() -> bool:
    import cv2

    gui = [line for line in cv2.getBuildInformation().splitlines() if line.strip().startswith("GUI:")]
    return bool(gui) and "NONE" in gui[0].upper()


def test_the_quickstart_with_render_boxes_runs_headless(video: str, caplog: pytest.LogCaptureFixture) -> None:
    # import the InferencePipeline interface
    from edge_agent import InferencePipeline

    # import a built-in sink called render_boxes (sinks are the logic that happens after inference)
    from edge_agent.pipelines.sinks import render_boxes

    api_key = "YOUR_ROBOFLOW_API_KEY"
    caplog.set_level(logging.INFO)
    # create an inference pipeline object
    pipeline = InferencePipeline.init(
        model_id="shapes/1",  # set the model id
        video_reference=video,  # set the video reference (source of video)
        on_prediction=render_boxes,  # tell the pipeline object what to do with each set of inference
        api_key=api_key,  # provide your roboflow api key for loading models from the roboflow api
    )
    # start the pipeline
    pipeline.start()
    # wait for the pipeline to finish
    pipeline.join()
    assert pipeline.state == "finished", pipeline.status()
    assert pipeline.frames_inferred == FRAMES
    assert pipeline.status()["sink_errors"] == 0
    if _headless_opencv():
        notes = [r for r in caplog.records if "no GUI" in r.getMessage()]
        assert len(notes) == 1, [r.getMessage() for r in caplog.records]  # said once, not per frame
    events = [r.getMessage() for r in caplog.records if r.name == "edge_agent.pipelines.pipeline"]
    assert any("started: model shapes/1" in m for m in events), events
    assert any("connected" in m for m in events), events
    assert any(m.endswith(f"finished: {FRAMES} frames inferred") for m in events), events


def test_render_boxes_into_a_video_writer_as_its_docstring_does(video: str, tmp_path: Path) -> None:
    import cv2

    from edge_agent import InferencePipeline
    from edge_agent.pipelines.sinks import render_boxes

    output_size = (640, 480)
    out = str(tmp_path / "output.avi")
    video_sink = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*"MJPG"), 25.0, output_size)
    on_prediction = partial(
        render_boxes,
        display_size=output_size,
        on_frame_rendered=lambda frame_data: video_sink.write(frame_data[1])
    )

    pipeline = InferencePipeline.init(
         model_id="shapes/1",
         video_reference=video,
         on_prediction=on_prediction,
    )
    pipeline.start()
    pipeline.join()
    video_sink.release()
    capture = cv2.VideoCapture(out)
    frames = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        frames.append(image)
    assert len(frames) == FRAMES
    assert frames[0].shape[:2] == (480, 640)
    # drawn: the video is only greys and white, the box and its label are saturated colours
    hsv = cv2.cvtColor(frames[FRAMES // 2], cv2.COLOR_BGR2HSV)
    assert int(((hsv[..., 1] > 100) & (hsv[..., 2] > 80)).sum()) > 200


def test_supervision_annotators_on_a_classifier_show_the_frame_undrawn(video: str,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    import supervision as sv

    from edge_agent import InferencePipeline
    from edge_agent.pipelines.sinks import render_boxes

    shown: list[tuple[Any, np.ndarray]] = []
    images: list[np.ndarray] = []

    def on_prediction(predictions: dict[str, Any], video_frame: Any) -> None:
        images.append(video_frame.image.copy())
        render_boxes(predictions, video_frame, annotator=[sv.BoxAnnotator(), sv.LabelAnnotator()], display_size=None,
                     on_frame_rendered=lambda image: shown.append(image))

    pipeline = InferencePipeline.init(model_id="shapes-cls/1", video_reference=video, on_prediction=on_prediction)
    pipeline.start()
    pipeline.join()
    assert pipeline.state == "finished" and pipeline.status()["sink_errors"] == 0, pipeline.status()
    assert len(shown) == FRAMES
    assert all(np.array_equal(image, frame) for (_, image), frame in zip(shown, images))  # the frame as it is
    notes = [r for r in caplog.records if "supervision annotators" in r.getMessage()]
    assert len(notes) <= 1  # once a process (an earlier test may have said it)


def test_no_window_is_opened_without_a_display(monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    import cv2

    from edge_agent.pipelines import sinks

    assert sinks.has_display({"DISPLAY": ":0"}, "linux") and sinks.has_display({"WAYLAND_DISPLAY": "w"}, "linux")
    assert not sinks.has_display({}, "linux") and not sinks.has_display({"DISPLAY": ""}, "linux")
    assert sinks.has_display({}, "darwin") and sinks.has_display({}, "win32")
    opened: list[str] = []
    monkeypatch.setattr(cv2, "getBuildInformation", lambda: "  GUI:                           QT5\n")  # a GUI build
    monkeypatch.setattr(cv2, "imshow", lambda title, image: opened.append(title))  # Qt would abort the process
    monkeypatch.setattr(cv2, "waitKey", lambda delay: -1)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(sinks.sys, "platform", "linux")
    display = sinks._Display()
    for _ in range(3):
        display.show("Predictions", np.zeros((8, 8, 3), np.uint8))
    assert opened == [] and display.usable is False
    assert len([r for r in caplog.records if "no display" in r.getMessage()]) == 1
    monkeypatch.setenv("DISPLAY", ":0")
    sinks._Display().show("Predictions", np.zeros((8, 8, 3), np.uint8))
    assert opened == ["Predictions"]


def test_a_failed_model_reports_its_public_message_only(video: str) -> None:
    from edge_agent.errors import ModelLoadFailed
    from edge_agent.pipelines.entities import StatusUpdate
    from edge_agent.pipelines.pipeline import InferencePipeline

    class Broken:  # an Inference whose model cannot load, for a reason with a local path in it
        def model(self, model_id: str, api_key: str | None) -> Any:
            raise ModelLoadFailed("/var/lib/edge-agent/models/x/1/weights.onnx: truncated",
                                  public="model x/1: its weights are truncated")

    updates: list[StatusUpdate] = []
    pipeline = InferencePipeline(Broken(), "x/1", video, status_update_handlers=[updates.append])  # type: ignore[arg-type]
    pipeline.start()
    pipeline.join(30)
    assert pipeline.state == "failed" and pipeline.error == "model x/1: its weights are truncated"
    (error,) = [u for u in updates if u.event_type == "INFERENCE_ERROR"]
    assert error.payload["error_message"] == "model x/1: its weights are truncated"
    assert error.payload["error_type"] == "ModelLoadFailed"


def test_the_preview_of_several_sources_shows_the_first() -> None:
    from edge_agent.pipelines.pipeline import PreviewSink
    from edge_agent.pipelines.sources import Frame
    from edge_agent.results import Classification

    preview = PreviewSink(max_fps=1000.0)
    watcher = preview.watch(limit=1)
    assert watcher is not None
    result = Classification(np.array([0.9, 0.1], np.float32), ("a", "b"), (16, 16))
    preview(Frame(np.zeros((16, 16, 3), np.uint8), 1, 0.0, 0.0, source_id=1), result)
    assert watcher.next(-1, 0.01) == (-1, None)  # nothing of source 1
    preview(Frame(np.zeros((16, 16, 3), np.uint8), 1, 0.0, 0.0, source_id=0), result)
    seq, jpeg = watcher.next(-1, 1.0)
    assert seq == 1 and jpeg is not None and jpeg[:2] == b"\xff\xd8"
    watcher.close()


def _receiver() -> socket.socket:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(10)
    return receiver


def test_udp_sink_sends_one_json_datagram_per_frame(video: str) -> None:
    from edge_agent import InferencePipeline
    from edge_agent.pipelines.sinks import UDPSink

    receiver = _receiver()
    port = receiver.getsockname()[1]
    udp_sink = UDPSink.init(ip_address="127.0.0.1", port=port)

    pipeline = InferencePipeline.init(
         model_id="shapes/1",
         video_reference=video,
         on_prediction=udp_sink.send_predictions,
    )
    pipeline.start()
    pipeline.join()
    got = [json.loads(receiver.recv(65536)) for _ in range(FRAMES)]
    receiver.close()
    udp_sink.close()
    assert [g["inference_metadata"]["frame_id"] for g in got] == list(range(1, FRAMES + 1))
    for g in got:
        meta = g["inference_metadata"]
        assert meta["source_id"] == 0
        assert datetime.fromisoformat(meta["frame_decoding_time"]) <= datetime.fromisoformat(meta["emission_time"])
        assert g["image"] == {"width": VIDEO_SIZE[1], "height": VIDEO_SIZE[0]}
        assert [p["class"] for p in g["predictions"]] == ["circle"], g["predictions"]


def test_multi_sink_runs_every_sink_even_after_one_fails(video: str) -> None:
    from edge_agent import InferencePipeline
    from edge_agent.pipelines.sinks import UDPSink, multi_sink, render_boxes

    def broken(predictions: dict[str, Any], video_frame: Any) -> None:
        raise RuntimeError("this sink always fails")

    receiver = _receiver()
    udp_sink = UDPSink.init(ip_address="127.0.0.1", port=receiver.getsockname()[1])
    on_prediction = partial(multi_sink, sinks=[broken, udp_sink.send_predictions, render_boxes])

    pipeline = InferencePipeline.init(
        model_id="shapes/1",
        video_reference=video,
        on_prediction=on_prediction,
    )
    pipeline.start()
    pipeline.join()
    frame_ids = [json.loads(receiver.recv(65536))["inference_metadata"]["frame_id"] for _ in range(FRAMES)]
    receiver.close()
    assert frame_ids == list(range(1, FRAMES + 1))
    assert pipeline.state == "finished"


def test_video_file_sink_as_its_docstring_does(video: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cv2

    from edge_agent import InferencePipeline
    from edge_agent.pipelines.sinks import VideoFileSink

    monkeypatch.chdir(tmp_path)
    video_sink = VideoFileSink.init(video_file_name="output.avi")

    pipeline = InferencePipeline.init(
        model_id="shapes/1",
        video_reference=video,
        on_prediction=video_sink.on_prediction,
    )
    pipeline.start()
    pipeline.join()
    video_sink.release()
    capture = cv2.VideoCapture(str(tmp_path / "output.avi"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == FRAMES
    assert (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (1280, 720)
    capture.release()


def test_custom_logic_as_the_docs_show(tmp_path: Path, video: str) -> None:
    import os

    from edge_agent import InferencePipeline
    from edge_agent.pipelines.entities import VideoFrame

    target_dir = tmp_path / "my_predictions"
    target_dir.mkdir()

    class MyModel:
        def infer(self, video_frames: list[VideoFrame]) -> list[Any]:
            # result must be returned as list of elements representing model prediction for single frame
            # with order unchanged.
            return [{"brightest_x": int(np.argmax(v.image.max(axis=(0, 2))))} for v in video_frames]

    def save_prediction(prediction: dict[str, Any], video_frame: VideoFrame) -> None:
        with open(os.path.join(target_dir, f"{video_frame.frame_id}.json"), "w") as f:
            json.dump(prediction, f)

    my_model = MyModel()
    started: list[bool] = []
    ended: list[bool] = []
    pipeline = InferencePipeline.init_with_custom_logic(
        video_reference=video,
        on_video_frame=my_model.infer,
        on_prediction=save_prediction,
        on_pipeline_start=lambda: started.append(True),
        on_pipeline_end=lambda: ended.append(True),
    )
    # start the pipeline
    pipeline.start()
    # wait for the pipeline to finish
    pipeline.join()
    pipeline.join()  # on_pipeline_end runs once
    files = sorted(target_dir.glob("*.json"), key=lambda p: int(p.stem))
    assert [int(p.stem) for p in files] == list(range(1, FRAMES + 1))
    xs = [json.loads(p.read_text())["brightest_x"] for p in files]
    assert xs == sorted(xs) and xs[-1] > xs[0]  # the circle moves left to right
    assert started == [True] and ended == [True]


def test_two_sources_in_each_sink_mode(tmp_path: Path) -> None:
    from edge_agent import InferencePipeline
    from edge_agent.pipelines.entities import SinkMode, VideoFrame

    circle_video(tmp_path / "a.mp4", frames=8)
    circle_video(tmp_path / "b.mp4", frames=5)
    refs = [str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")]

    def run(mode: SinkMode | None, references: Any) -> list[tuple[Any, Any]]:
        calls: list[tuple[Any, Any]] = []
        extra = {} if mode is None else {"sink_mode": mode}
        pipeline = InferencePipeline.init(model_id="shapes/1", video_reference=references,
                                          on_prediction=lambda p, f: calls.append((p, f)), **extra)
        pipeline.start()
        pipeline.join()
        assert pipeline.state == "finished"
        return calls

    adaptive = run(None, refs)  # several sources: lists aligned with the sources, None where one had nothing
    assert all(isinstance(p, list) and isinstance(f, list) and len(f) == 2 for p, f in adaptive)
    a_ids = [f[0].frame_id for _, f in adaptive if f[0] is not None]
    b_ids = [f[1].frame_id for _, f in adaptive if f[1] is not None]
    assert a_ids == list(range(1, 9)) and b_ids == list(range(1, 6))
    for predictions, frames in adaptive:
        for k, (p, f) in enumerate(zip(predictions, frames)):
            assert (p is None) == (f is None)
            if f is not None:
                assert f.source_id == k and f.comes_from_video_file and f.fps == pytest.approx(10.0)
                assert isinstance(f.frame_timestamp, datetime)
                assert p["predictions"][0]["class"] == "circle"
    sequential = run(SinkMode.SEQUENTIAL, refs)
    assert all(isinstance(p, dict) and isinstance(f, VideoFrame) for p, f in sequential)
    assert sorted((f.source_id, f.frame_id) for _, f in sequential) == \
        [(0, i) for i in range(1, 9)] + [(1, i) for i in range(1, 6)]
    batch = run(SinkMode.BATCH, refs[0])  # one source, batch mode: lists of one
    assert [[f.frame_id for f in frames] for _, frames in batch] == [[i] for i in range(1, 9)]
    single = run(None, refs[1])  # one source, adaptive: one dict and one VideoFrame per call
    assert [f.frame_id for _, f in single] == [1, 2, 3, 4, 5]


def test_max_fps_paces_a_file_without_dropping_frames(tmp_path: Path) -> None:
    from edge_agent import InferencePipeline

    circle_video(tmp_path / "v.mp4", frames=60, fps=60.0)
    got: list[datetime] = []
    pipeline = InferencePipeline.init(model_id="shapes/1", video_reference=str(tmp_path / "v.mp4"), max_fps=20,
                                      on_prediction=lambda p, f: got.append(datetime.now()))
    pipeline.start()
    pipeline.join()
    assert len(got) == 60  # every frame (Roboflow's file behaviour), none skipped
    assert pipeline.frames_skipped == 0
    # paced: 59 intervals of 1/20 s at least (a lower bound: sleeping makes it, a slow machine only adds)
    assert (got[-1] - got[0]).total_seconds() >= 59 / 20 * 0.9


def test_watchdog_report_and_status_updates(video: str) -> None:
    from edge_agent import InferencePipeline
    from edge_agent.pipelines.entities import StatusUpdate, StreamState, UpdateSeverity
    from edge_agent.pipelines.watchdog import BasePipelineWatchDog

    watchdog = BasePipelineWatchDog()
    updates: list[StatusUpdate] = []

    def broken_handler(update: StatusUpdate) -> None:
        raise RuntimeError("a handler that fails must not stop the pipeline")

    def failing_sink(predictions: dict[str, Any], video_frame: Any) -> None:
        if video_frame.frame_id == 3:
            raise ValueError("frame 3 is not welcome")

    pipeline = InferencePipeline.init(model_id="shapes/1", video_reference=video, on_prediction=failing_sink,
                                      watchdog=watchdog, status_update_handlers=[broken_handler, updates.append])
    pipeline.start()
    pipeline.join()
    assert pipeline.state == "finished"
    report = watchdog.get_report()
    assert report.inference_throughput > 0
    [latency] = report.latency_reports
    assert latency.source_id == 0
    assert latency.e2e_latency is not None and latency.inference_latency is not None
    assert latency.e2e_latency >= latency.inference_latency > 0
    [meta] = report.sources_metadata
    assert meta.source_reference == video and meta.state is StreamState.ENDED
    assert meta.source_properties is not None and meta.source_properties.is_file
    assert (meta.source_properties.width, meta.source_properties.height) == (VIDEO_SIZE[1], VIDEO_SIZE[0])
    assert all(u.severity is not UpdateSeverity.DEBUG for u in report.video_source_status_updates)
    types = [u.event_type for u in updates]
    assert types[0] == "INFERENCE_THREAD_STARTED" and types[-1] == "INFERENCE_THREAD_FINISHED"
    assert types.count("INFERENCE_COMPLETED") == FRAMES
    states = [u.payload["new_state"] for u in updates if u.event_type == "STREAM_STATE_UPDATE"]
    assert states == [StreamState.INITIALISING, StreamState.RUNNING, StreamState.ENDED]
    [error] = [u for u in updates if u.event_type == "INFERENCE_RESULTS_DISPATCHING_ERROR"]
    assert error.severity is UpdateSeverity.ERROR and error.context == "inference_pipeline"
    assert error.payload == {"error_type": "ValueError", "error_message": "frame 3 is not welcome",
                             "error_context": "inference_results_dispatching"}
    assert isinstance(error.timestamp, datetime)


def test_use_main_thread_and_terminate_from_a_sink(tmp_path: Path) -> None:
    from edge_agent import InferencePipeline

    circle_video(tmp_path / "long.mp4", frames=200)
    threads: list[threading.Thread] = []
    pipeline: Any = None

    def on_prediction(predictions: dict[str, Any], video_frame: Any) -> None:
        threads.append(threading.current_thread())
        if video_frame.frame_id == 5:
            pipeline.terminate()

    pipeline = InferencePipeline.init(model_id="shapes/1", video_reference=str(tmp_path / "long.mp4"),
                                      on_prediction=on_prediction)
    pipeline.start()  # use_main_thread=True: returns once the pipeline has ended
    pipeline.join()
    assert set(threads) == {threading.main_thread()}
    assert len(threads) == 5  # what waited behind frame 5 is dropped at terminate
    assert pipeline.state == "terminated"

    threads.clear()
    background = InferencePipeline.init(model_id="shapes/1", video_reference=str(tmp_path / "long.mp4"),
                                        on_prediction=lambda p, f: threads.append(threading.current_thread()))
    background.start(use_main_thread=False)  # returns at once; the sink runs on a thread of its own
    background.join()
    assert len(threads) == 200
    assert threading.main_thread() not in threads


def test_paused_before_start_it_starts_paused(video: str) -> None:
    from edge_agent import InferencePipeline

    got: list[int] = []
    pipeline = InferencePipeline.init(model_id="shapes/1", video_reference=video,
                                      on_prediction=lambda p, f: got.append(f.frame_id))
    pipeline.pause_stream()
    assert pipeline.state == "paused"
    pipeline.start(use_main_thread=False)
    assert pipeline.state == "paused"
    deadline = datetime.now().timestamp() + 30
    while pipeline.source.frames_read < 4 and datetime.now().timestamp() < deadline:  # its buffer is full
        threading.Event().wait(0.02)
    threading.Event().wait(0.2)
    assert got == [] and pipeline.frames_inferred == 0 and pipeline.state == "paused"
    pipeline.resume_stream()
    pipeline.join()
    assert pipeline.state == "finished"
    assert got == list(range(1, FRAMES + 1))


def test_pause_and_mute_one_source(tmp_path: Path) -> None:
    from edge_agent import InferencePipeline
    from edge_agent.pipelines.entities import SinkMode

    circle_video(tmp_path / "a.mp4", frames=30)
    circle_video(tmp_path / "b.mp4", frames=20)
    refs = [str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")]
    seen: list[tuple[int, int]] = []
    pipeline: Any = None

    def on_prediction(predictions: dict[str, Any], video_frame: Any) -> None:
        seen.append((video_frame.source_id, video_frame.frame_id))
        if seen[-1] == (0, 10):
            pipeline.resume_stream(1)

    pipeline = InferencePipeline.init(model_id="shapes/1", video_reference=refs, sink_mode=SinkMode.SEQUENTIAL,
                                      on_prediction=on_prediction)
    pipeline.pause_stream(1)  # a paused file waits: none of its frames is lost
    pipeline.start()
    pipeline.join()
    assert seen.index((1, 1)) > seen.index((0, 10))  # nothing of source 1 before it was resumed
    assert [f for s, f in seen if s == 1] == list(range(1, 21))
    assert [f for s, f in seen if s == 0] == list(range(1, 31))
    assert pipeline.frames_skipped == 0

    seen.clear()
    muted = InferencePipeline.init(model_id="shapes/1", video_reference=refs, sink_mode=SinkMode.SEQUENTIAL,
                                   on_prediction=lambda p, f: seen.append((f.source_id, f.frame_id)))
    muted.mute_stream(1)  # read on, infer nothing: source 1's frames are dropped
    muted.start()
    muted.join()
    assert muted.state == "finished"
    assert seen == [(0, i) for i in range(1, 31)]
    assert muted.frames_skipped == 20
    assert muted.status()["sources"][1]["frames_read"] == 20


def test_a_muted_source_does_not_hold_the_others(tmp_path: Path) -> None:
    from edge_agent import InferencePipeline

    circle_video(tmp_path / "short.mp4", frames=FRAMES)
    circle_video(tmp_path / "long.mp4", frames=600)
    seen: list[tuple[int, str]] = []  # (source of the frame, state of the muted source then)
    pipeline: Any = None

    def on_video_frame(frames: list[Any]) -> list[Any]:  # on the pipeline's thread, as the frames are taken
        seen.extend((f.source_id, pipeline.sources[1].state) for f in frames)
        return [{} for _ in frames]

    pipeline = InferencePipeline.init_with_custom_logic(
        video_reference=[str(tmp_path / "short.mp4"), str(tmp_path / "long.mp4")], on_video_frame=on_video_frame)
    pipeline.mute_stream(1)  # no batch_collection_timeout: nothing bounds a wait for source 1
    pipeline.start()
    pipeline.join()
    assert pipeline.state == "finished"
    assert [source for source, _ in seen] == [0] * FRAMES
    assert {state for _, state in seen} <= {"connecting", "streaming"}  # source 1 was not read to its end yet
    assert pipeline.frames_skipped == 600


def test_positional_arguments_in_roboflow_newer_order_and_bad_options(video: str) -> None:
    from edge_agent import InferencePipeline
    from edge_agent.errors import InvalidInput

    got: list[int] = []
    pipeline = InferencePipeline.init(video, "shapes/1", lambda p, f: got.append(f.frame_id))
    pipeline.start()
    pipeline.join()
    assert got == list(range(1, FRAMES + 1))
    assert pipeline.model_id == "shapes/1"
    with pytest.raises(InvalidInput, match="frame_wdith"):
        InferencePipeline.init(model_id="shapes/1", video_reference=video, video_source_properties={"frame_wdith": 1})
    with pytest.raises(InvalidInput, match="2 entries for 1 video references"):
        InferencePipeline.init(model_id="shapes/1", video_reference=[video], video_source_properties=[{}, {}])
    with pytest.raises(TypeError, match="on_predictoin"):
        InferencePipeline.init(model_id="shapes/1", video_reference=video, on_predictoin=print)
    # Roboflow-only options that mean nothing here are accepted
    InferencePipeline.init(model_id="shapes/1", video_reference=video, active_learning_target_dataset="x",
                           decoding_buffer_size=8, confidence=0.6, max_fps=5, class_agnostic_nms=True)


def _al_config(tmp_path: Path) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(f"""
[paths]
state_dir = "{tmp_path / 'state'}"
[active_learning]
enabled = true
targets = ["folder"]
dedup_distance = 0
[[active_learning.strategies]]
name = "every-circle"
type = "detections_number_based"
more_than = 0
selected_class_names = ["circle"]
""")
    return config


@pytest.mark.parametrize("enabled", [True, False])
def test_a_python_api_pipeline_samples_when_active_learning_is_configured(
        tmp_path: Path, video: str, monkeypatch: pytest.MonkeyPatch, enabled: bool) -> None:
    from edge_agent import InferencePipeline

    monkeypatch.setenv("EDGE_AGENT_CONFIG", str(_al_config(tmp_path)))
    pipeline = InferencePipeline.init(model_id="shapes/1", video_reference=video, on_prediction=lambda p, f: None,
                                      active_learning_enabled=enabled)
    pipeline.start()
    pipeline.join()  # stops the sampler: what it took is written
    assert pipeline.runtime is not None and pipeline.runtime.active_learning is not None
    stats = pipeline.runtime.active_learning.status()["sampler"]
    assert stats.get("stored", 0) == (FRAMES if enabled else 0), stats


def test_a_failing_model_is_reported(video: str) -> None:
    from edge_agent import InferencePipeline

    updates: list[Any] = []
    pipeline = InferencePipeline.init(model_id="nope/1", video_reference=video, on_prediction=lambda p, f: None,
                                      status_update_handlers=[updates.append])
    pipeline.start()
    pipeline.join()
    assert pipeline.state == "failed" and "nope/1" in pipeline.error
    [error] = [u for u in updates if u.event_type == "INFERENCE_ERROR"]
    assert "nope/1" in error.payload["error_message"]
    assert error.payload["error_context"] == "inference_thread"


def test_buffer_strategies_of_a_file(tmp_path: Path) -> None:
    """A slow consumer (custom logic of 20 ms a frame) on a file: ``LAZY`` (the default for files) takes
    every frame in order; ``EAGER`` takes the newest and drops the rest, as Roboflow's streams do."""
    from edge_agent import InferencePipeline
    from edge_agent.pipelines.entities import BufferConsumptionStrategy, BufferFillingStrategy, VideoFrame

    circle_video(tmp_path / "v.mp4", frames=40)

    def slow(frames: list[VideoFrame]) -> list[Any]:
        threading.Event().wait(0.02)
        return [f.frame_id for f in frames]

    def run(**strategies: Any) -> tuple[list[int], Any]:
        got: list[int] = []
        pipeline = InferencePipeline.init_with_custom_logic(video_reference=str(tmp_path / "v.mp4"),
                                                            on_video_frame=slow,
                                                            on_prediction=lambda p, f: got.append(p), **strategies)
        pipeline.start()
        pipeline.join()
        assert pipeline.state == "finished"
        return got, pipeline.source

    lazy, source = run()
    assert lazy == list(range(1, 41)) and source.dropped == 0
    eager, source = run(source_buffer_consumption_strategy=BufferConsumptionStrategy.EAGER,
                        source_buffer_filling_strategy=BufferFillingStrategy.DROP_OLDEST)
    assert eager == sorted(eager) and eager[-1] == 40  # the newest frames, in order, the last one too
    assert len(eager) < 40 and len(eager) + source.dropped == 40
    meta = source.describe_source()
    assert meta.buffer_consumption_strategy is BufferConsumptionStrategy.EAGER
    assert meta.buffer_filling_strategy is BufferFillingStrategy.DROP_OLDEST
    named, source = run(source_buffer_consumption_strategy="EAGER",  # names (as JSON gives them) and ADAPTIVE_
                        source_buffer_filling_strategy="ADAPTIVE_DROP_OLDEST")
    assert named == sorted(named) and named[-1] == 40
    assert len(named) < 40 and len(named) + source.dropped == 40
    meta = source.describe_source()
    assert meta.buffer_consumption_strategy is BufferConsumptionStrategy.EAGER
    assert meta.buffer_filling_strategy is BufferFillingStrategy.ADAPTIVE_DROP_OLDEST


@pytest.mark.parametrize("filling, consumption, modes", [
    ("DROP_OLDEST", "LAZY", {"newest_wins": True, "drop_latest": False, "eager": False}),
    ("ADAPTIVE_DROP_OLDEST", "EAGER", {"newest_wins": True, "drop_latest": False, "eager": True}),
    ("DROP_LATEST", None, {"newest_wins": False, "drop_latest": True, "eager": False}),
    ("ADAPTIVE_DROP_LATEST", None, {"newest_wins": False, "drop_latest": True, "eager": False}),
    ("WAIT", "EAGER", {"newest_wins": False, "drop_latest": False, "eager": True}),
])
def test_every_buffer_strategy_of_roboflow_given_by_name(tmp_path: Path, filling: str, consumption: str | None,
                                                         modes: dict[str, bool]) -> None:
    from edge_agent.pipelines.entities import BufferFillingStrategy
    from edge_agent.pipelines.sources import VideoSource

    source = VideoSource(str(tmp_path / "v.mp4"), filling=filling, consumption=consumption)
    assert source.filling is BufferFillingStrategy(filling)
    assert source._buffer_modes(False) == modes


def test_an_unknown_buffer_strategy_is_refused_by_name(tmp_path: Path) -> None:
    from edge_agent.errors import InvalidInput
    from edge_agent.pipelines.sources import VideoSource

    with pytest.raises(InvalidInput, match="source_buffer_filling_strategy: 'DROP_NEWEST' is not one of WAIT, "):
        VideoSource(str(tmp_path / "v.mp4"), filling="DROP_NEWEST")


def test_a_camera_password_stays_out_of_the_log_and_the_status(caplog: pytest.LogCaptureFixture) -> None:
    from edge_agent import InferencePipeline
    from edge_agent.pipelines.watchdog import BasePipelineWatchDog
    from servers import free_port

    caplog.set_level(logging.INFO)
    watchdog = BasePipelineWatchDog()
    pipeline = InferencePipeline.init_with_custom_logic(
        video_reference=f"rtsp://admin:secret@127.0.0.1:{free_port()}/stream", on_video_frame=lambda frames: [],
        watchdog=watchdog)
    pipeline.start(use_main_thread=False)
    deadline = datetime.now().timestamp() + 30
    while pipeline.source.reconnects < 1 and datetime.now().timestamp() < deadline:
        threading.Event().wait(0.05)
    pipeline.terminate()
    assert pipeline.source.reconnects >= 1
    assert "rtsp://***@127.0.0.1" in caplog.text
    assert "secret" not in caplog.text
    assert "secret" not in (pipeline.source.last_error or "")
    assert "secret" not in json.dumps(pipeline.status(), default=str)  # what GET .../status answers
    assert "secret" not in repr(pipeline.source.describe_source())  # what the watchdog reports
    report = json.dumps(dataclasses.asdict(watchdog.get_report()), default=str)  # status updates included
    assert "SOURCE_CONNECTION_LOST" in report and "rtsp://***@127.0.0.1" in report
    assert "secret" not in report


@pytest.mark.parametrize("reference, shown", [
    ("rtsp://admin:secret@cam/s", "rtsp://***@cam/s"),
    ("rtsp://u:p@ss@cam:554/s", "rtsp://***@cam:554/s"),  # '@' in the password
    ("rtsp://u:a/b@cam/s", "rtsp://***@cam/s"),  # '/' in the password
    ("rtmp://u:pw@cam/live", "rtmp://***@cam/live"),  # any scheme
    ("srt://cam:9000?passphrase=x&token=abcdefghij", "srt://cam:9000?passphrase=x&token=***"),
    ("https://cam/video.mjpg?password=hunter22&user=me", "https://cam/video.mjpg?password=***&user=me"),
    ("http://cam/s?api_key=abcdefghyz", "http://cam/s?api_key=ab***yz"),  # as Roboflow shows keys
    ("rtsp://cam/s?pwd=x", "rtsp://cam/s?pwd=***"),
    ("rtsp://cam:554/s", "rtsp://cam:554/s"),
    ("/data/clips/a@b.mp4", "/data/clips/a@b.mp4"),  # a file is shown as it is
    (0, "0"),
])
def test_one_redactor_for_sources_and_downloads(reference: str | int, shown: str) -> None:
    from edge_agent.pipelines.sources import VideoSource
    from edge_agent.provisioning.download import redact

    assert redact(reference) == shown
    assert VideoSource(reference).shown == shown


def test_a_lost_camera_does_not_hold_the_other_sources(video: str) -> None:
    from edge_agent import InferencePipeline
    from servers import free_port

    got: list[list[Any]] = []
    pipeline = InferencePipeline.init(model_id="shapes/1", video_reference=[video, f"rtsp://127.0.0.1:{free_port()}/x"],
                                      on_prediction=lambda p, f: got.append(f))  # no batch_collection_timeout
    pipeline.start(use_main_thread=False)
    deadline = datetime.now().timestamp() + 60
    while len(got) < FRAMES and datetime.now().timestamp() < deadline:
        threading.Event().wait(0.05)
    pipeline.terminate()
    assert [frames[0].frame_id for frames in got[:FRAMES]] == list(range(1, FRAMES + 1))
    assert all(frames[1] is None for frames in got)  # aligned with the sources: nothing from the camera
