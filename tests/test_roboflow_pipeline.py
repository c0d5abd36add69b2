"""Roboflow's ``InferencePipeline`` code run unchanged but for its imports and model id: the snippets of
docs/using_inference/inference_pipeline.md and of the sinks' docstrings (roboflow/inference), on the
demo detector and video files written by the test (a white circle moving on grey)."""

from __future__ import annotations

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


def test_a_camera_password_stays_out_of_the_log(caplog: pytest.LogCaptureFixture) -> None:
    from edge_agent import InferencePipeline
    from servers import free_port

    caplog.set_level(logging.INFO)
    pipeline = InferencePipeline.init_with_custom_logic(
        video_reference=f"rtsp://admin:secret@127.0.0.1:{free_port()}/stream", on_video_frame=lambda frames: [])
    pipeline.start(use_main_thread=False)
    deadline = datetime.now().timestamp() + 30
    while pipeline.source.reconnects < 1 and datetime.now().timestamp() < deadline:
        threading.Event().wait(0.05)
    pipeline.terminate()
    assert pipeline.source.reconnects >= 1
    assert "rtsp://***@127.0.0.1" in caplog.text
    assert "secret" not in caplog.text
    assert "secret" not in (pipeline.source.last_error or "")


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
