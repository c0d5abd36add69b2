"""Video pipelines on real video files written by the test (moving shapes with known positions), run by
the daemon's own runtime and the demo detector."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import CHROMIUM, RtspServer, circle_video, needs_chromium, rtsp_available, wait
from helpers import VIDEO_SIZE as SIZE
from servers import free_port

FRAMES = 40


def test_every_frame_of_a_file_is_inferred_and_follows_the_ground_truth(tmp_path: Path, runtime: Any) -> None:
    from edge_agent.pipelines.pipeline import InferencePipeline

    centres = circle_video(tmp_path / "moving.mp4", frames=FRAMES)
    got: list[tuple[dict[str, Any], Any]] = []  # Roboflow's sink arguments: (predictions, VideoFrame)
    pipeline = InferencePipeline(runtime.inference, "shapes/1", str(tmp_path / "moving.mp4"),
                                 on_prediction=lambda body, frame: got.append((body, frame)))
    pipeline.start()
    pipeline.join(60)
    assert pipeline.state == "finished", pipeline.status()
    assert [frame.frame_id for _, frame in got] == list(range(1, FRAMES + 1))  # none dropped, in order
    assert all(frame.image.shape[:2] == SIZE for _, frame in got), [frame.image.shape for _, frame in got]
    errors = []
    for (body, frame), (cx, cy) in zip(got, centres):
        circles = [p for p in body["predictions"] if p["class"] == "circle"]
        assert circles, f"frame {frame.frame_id}: no circle in {body['predictions']}"
        best = max(circles, key=lambda p: p["confidence"])
        errors.append(float(np.hypot(best["x"] - cx, best["y"] - cy)))
    assert np.median(errors) < 3.0, errors
    assert max(errors) < 8.0, errors
    status = pipeline.status()
    assert status["frames_inferred"] == FRAMES
    assert status["source"]["dropped"] == 0
    assert status["source"]["declared_fps"] == pytest.approx(10.0)


def test_outputs_and_image_folders(tmp_path: Path, runtime: Any) -> None:
    import cv2

    from edge_agent.pipeline_spec import PipelineSpec

    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(5):
        image = np.full((*SIZE, 3), 90, np.uint8)
        cv2.rectangle(image, (60 + 20 * i, 80), (120 + 20 * i, 140), (240, 240, 240), -1)
        cv2.imwrite(str(folder / f"{i:03d}.png"), image)
    (folder / "notes.txt").write_text("not an image")
    pipeline = runtime.pipelines.start(PipelineSpec(model_id="shapes/1", video_reference=str(folder),
                                                  pipeline_id="folder1", outputs=["jsonl", "video"]))
    pipeline.join(60)
    assert pipeline.state == "finished"
    out = runtime.settings.state_dir / "pipelines" / "folder1"
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [line["frame_id"] for line in lines] == [1, 2, 3, 4, 5]
    for line in lines:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["captured_at"]), line["captured_at"]
        assert any(p["class"] == "square" for p in line["predictions"]), line
    video = cv2.VideoCapture(str(out / "annotated.mp4"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    video.release()
    assert {line["video_source"] for line in lines} == {0}


def test_the_outputs_of_several_sources_say_whose(tmp_path: Path, runtime: Any) -> None:
    import cv2

    from edge_agent.pipeline_spec import PipelineSpec

    circle_video(tmp_path / "a.mp4", frames=6)
    circle_video(tmp_path / "b.mp4", frames=4)
    pipeline = runtime.pipelines.start(PipelineSpec(model_id="shapes/1", pipeline_id="two",
                                                    video_reference=[str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")],
                                                    outputs=["jsonl", "video"]))
    pipeline.join(60)
    assert pipeline.state == "finished", pipeline.status()
    out = runtime.settings.state_dir / "pipelines" / "two"
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted((line["video_source"], line["frame_id"]) for line in lines) == \
        [(0, f) for f in range(1, 7)] + [(1, f) for f in range(1, 5)]
    assert {line["source_id"] for line in lines} == {"two"}
    assert not (out / "annotated.mp4").exists()  # one file per source
    for name, frames in (("annotated-0.mp4", 6), ("annotated-1.mp4", 4)):
        video = cv2.VideoCapture(str(out / name))
        assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == frames, name
        video.release()


def test_terminate_returns_at_once_on_a_dead_stream_and_it_keeps_reconnecting(runtime: Any) -> None:
    from edge_agent.pipeline_spec import PipelineSpec

    dead = f"rtsp://127.0.0.1:{free_port()}/nothing"  # nobody listens there
    pipeline = runtime.pipelines.start(PipelineSpec(model_id="shapes/1", video_reference=dead, pipeline_id="dead"))
    wait(lambda: pipeline.source.reconnects >= 2)  # retried with backoff, not given up
    status = pipeline.status()
    assert status["state"] == "running"
    assert status["source"]["state"] in ("reconnecting", "connecting")
    assert status["source"]["last_error"]
    t0 = time.monotonic()
    runtime.pipelines.terminate("dead")
    assert time.monotonic() - t0 < 2.0
    assert pipeline.state == "terminated"
    assert [p.pipeline_id for p in runtime.pipelines.list()] == []


def test_a_missing_model_or_file_fails_the_pipeline_with_the_reason(tmp_path: Path, runtime: Any) -> None:
    from edge_agent.pipeline_spec import PipelineSpec

    video = tmp_path / "v.mp4"
    circle_video(video, frames=3)
    bad_model = runtime.pipelines.start(PipelineSpec(model_id="nope/1", video_reference=str(video)))
    bad_file = runtime.pipelines.start(PipelineSpec(model_id="shapes/1", video_reference=str(tmp_path / "no.mp4")))
    paced_bad_file = runtime.pipelines.start(PipelineSpec(model_id="shapes/1", realtime=True,
                                                        video_reference=str(tmp_path / "no.mp4")))
    bad_model.join(30)
    bad_file.join(30)
    paced_bad_file.join(30)
    assert paced_bad_file.state == "failed"  # paced like a live source, but a missing file stays missing
    assert bad_model.state == "failed"
    assert "nope/1" in bad_model.status()["error"]
    assert bad_file.state == "failed"
    assert "no such video file" in bad_file.status()["error"]


def test_pause_resume_and_max_fps(tmp_path: Path, runtime: Any) -> None:
    from edge_agent.pipeline_spec import PipelineSpec

    video = tmp_path / "v.mp4"
    circle_video(video, frames=60, fps=30.0)
    # paced at 30 fps, inferred at most 5 times a second: about 2 s of video gives ~10 results
    pipeline = runtime.pipelines.start(PipelineSpec(model_id="shapes/1", video_reference=str(video), realtime=True,
                                                  max_fps=5, pipeline_id="paced"))
    pipeline.join(30)
    status = pipeline.status()
    assert status["state"] == "finished"
    assert 6 <= status["frames_inferred"] <= 14, status
    assert status["frames_skipped"] > 30, status
    video2 = tmp_path / "v2.mp4"
    circle_video(video2, frames=200, fps=30.0)
    pipeline = runtime.pipelines.start(PipelineSpec(model_id="shapes/1", video_reference=str(video2), realtime=True,
                                                  pipeline_id="pausable"))
    wait(lambda: pipeline.frames_inferred > 3)
    runtime.pipelines.pause("pausable")
    time.sleep(0.3)
    frozen = pipeline.frames_inferred
    time.sleep(0.7)
    assert pipeline.frames_inferred <= frozen + 1
    assert pipeline.state == "paused"
    runtime.pipelines.resume("pausable")
    wait(lambda: pipeline.frames_inferred > frozen + 3)
    runtime.pipelines.terminate("pausable")


def start_over_http(base: str, video: Path, pipeline_id: str) -> Any:
    """``POST /inference_pipelines/initialise`` of a realtime-paced file; the response."""
    import requests

    r = requests.post(f"{base}/inference_pipelines/initialise", timeout=10,
                      json={"model_id": "shapes/1", "video_reference": str(video), "realtime": True,
                            "pipeline_id": pipeline_id})
    assert r.status_code == 200, r.text
    return r


def test_stream_management_over_http_with_the_live_preview(tmp_path: Path, http_server: Any) -> None:
    import requests

    video = tmp_path / "long.mp4"
    circle_video(video, frames=300, fps=30.0)
    base = http_server.url
    r = start_over_http(base, video, "http-cam")
    assert r.json()["status"] == "success"
    assert r.json()["context"]["pipeline_id"] == "http-cam"
    assert "http-cam" in requests.get(f"{base}/inference_pipelines/list", timeout=10).json()["pipelines"]

    def report() -> dict[str, Any]:
        return requests.get(f"{base}/inference_pipelines/http-cam/status", timeout=10).json()["report"]

    wait(lambda: report()["frames_inferred"] >= 3)
    rep = report()
    assert rep["state"] == "running"
    assert rep["source"]["kind"] == "file"
    assert rep["source"]["live"] is True
    with requests.get(f"{base}/pipelines/http-cam/preview.mjpg", stream=True, timeout=10) as preview:
        assert preview.status_code == 200
        assert preview.headers["Content-Type"].startswith("multipart/x-mixed-replace; boundary=frame")
        data = b""
        for chunk in preview.iter_content(4096):
            data += chunk
            if data.count(b"--frame") >= 2:
                break
    part = data.split(b"--frame")[1]
    header, _, body = part.partition(b"\r\n\r\n")
    assert b"Content-Type: image/jpeg" in header
    assert body.startswith(b"\xff\xd8")
    import cv2

    jpeg = np.frombuffer(body[: int(header.split(b"Content-Length: ")[1].split(b"\r\n")[0])], np.uint8)
    assert cv2.imdecode(jpeg, cv2.IMREAD_COLOR).shape[:2] == SIZE
    assert requests.post(f"{base}/inference_pipelines/http-cam/pause", timeout=10).status_code == 200
    assert report()["state"] == "paused"
    assert requests.post(f"{base}/inference_pipelines/http-cam/resume", timeout=10).status_code == 200
    assert requests.post(f"{base}/inference_pipelines/http-cam/terminate", timeout=10).status_code == 200
    missing = requests.get(f"{base}/inference_pipelines/http-cam/status", timeout=10)
    assert missing.status_code == 404
    assert missing.json()["error"] == "pipeline_not_found"
    bad = requests.post(f"{base}/inference_pipelines/initialise", json={"model_id": "shapes/1"}, timeout=10)
    assert bad.status_code == 422
    assert "video_reference" in bad.text
    bad_id = requests.post(f"{base}/inference_pipelines/initialise", timeout=10,
                           json={"model_id": "shapes/1", "video_reference": 0, "pipeline_id": "../x"})
    assert bad_id.status_code == 422


@pytest.mark.skipif(not rtsp_available(), reason="GStreamer's RTSP server is not installed (.ci/run installs it)")
def test_an_rtsp_camera_that_dies_and_comes_back_is_reconnected(runtime: Any) -> None:
    from edge_agent.pipeline_spec import PipelineSpec

    port = free_port()
    server = RtspServer(port)
    try:
        pipeline = runtime.pipelines.start(PipelineSpec(model_id="shapes/1", pipeline_id="rtsp-cam",
                                                      video_reference=f"rtsp://127.0.0.1:{port}/test"))
        wait(lambda: pipeline.frames_inferred >= 40, timeout=60)
        source = pipeline.status()["source"]
        assert source["kind"] == "stream"
        assert source["live"]
        assert source["resolution"] == [320, 240]
        assert 8 < source["source_fps"] < 25  # served at 15 fps, measured on the stream
        assert source["stall_timeout_s"] == 2.0  # ten frame intervals, at least 2 s
        server.kill()
        wait(lambda: pipeline.source.state in ("reconnecting", "connecting"), timeout=40)
        stalled_at = pipeline.frames_inferred
        server = RtspServer(port)  # the camera is back, same address
        wait(lambda: pipeline.frames_inferred >= stalled_at + 10, timeout=90)
        status = pipeline.status()
        assert status["state"] == "running"
        assert status["source"]["state"] == "streaming"
        assert status["source"]["reconnects"] >= 1
        t0 = time.monotonic()
        runtime.pipelines.terminate("rtsp-cam")
        assert time.monotonic() - t0 < 2.0
    finally:
        server.kill()


def test_the_python_api(tmp_path: Path) -> None:
    import edge_agent

    video = tmp_path / "v.mp4"
    circle_video(video, frames=5)
    got: list[int] = []
    pipeline = edge_agent.InferencePipeline.init("shapes/1", str(video), confidence=0.5,
                                                 on_prediction=lambda body, frame: got.append(frame.frame_id))
    pipeline.start()
    pipeline.join(60)
    assert got == [1, 2, 3, 4, 5]
    assert pipeline.state == "finished"
    assert pipeline.params.confidence == 0.5


def test_pipelines_declared_in_the_configuration_start_with_the_runtime(tmp_path: Path) -> None:
    from edge_agent.runtime import Runtime
    from edge_agent.settings import load_settings

    video = tmp_path / "v.mp4"
    circle_video(video, frames=6)
    config = tmp_path / "config.toml"
    config.write_text(f'[paths]\nstate_dir = "{tmp_path / "state"}"\n\n'
                      '[[pipelines.streams]]\npipeline_id = "declared"\n'
                      f'model_id = "shapes/1"\nvideo_reference = "{video}"\noutputs = ["jsonl"]\n\n'
                      '[[pipelines.streams]]\npipeline_id = "broken"\nmodel_id = "nope/1"\nvideo_reference = 0\n')
    runtime = Runtime(load_settings(config, {}))
    runtime.start()
    try:
        declared = runtime.pipelines.get("declared")
        declared.join(60)
        assert declared.state == "finished"
        assert declared.frames_inferred == 6
        broken = runtime.pipelines.get("broken")
        broken.join(30)
        assert broken.state == "failed"  # and the other one ran regardless
        lines = (tmp_path / "state/pipelines/declared/predictions.jsonl").read_text().splitlines()
        assert len(lines) == 6
    finally:
        runtime.stop()


@needs_chromium
def test_the_preview_shows_in_a_browser(tmp_path: Path, http_server: Any) -> None:
    """Headless Chromium (network closed) opens the MJPEG preview: the frame with its boxes drawn."""
    import subprocess

    import cv2
    import requests

    assert CHROMIUM is not None
    video = tmp_path / "long.mp4"
    circle_video(video, frames=600, fps=30.0)
    base = http_server.url
    start_over_http(base, video, "browser-cam")
    try:
        wait(lambda: requests.get(f"{base}/inference_pipelines/browser-cam/status",
                                  timeout=10).json()["report"]["frames_inferred"] >= 3)
        shot = tmp_path / "preview.png"
        subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={tmp_path / 'profile'}", "--window-size=400,300",
                        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--virtual-time-budget=3000",
                        f"--screenshot={shot}", f"{base}/pipelines/browser-cam/preview.mjpg"],
                       capture_output=True, timeout=60, check=True)
        image = cv2.imread(str(shot))
        assert image is not None
        hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
        # the video is only greys and white: saturated pixels are the drawn box and label
        assert int(((hsv[..., 1] > 100) & (hsv[..., 2] > 80)).sum()) > 200
        assert int((image.min(axis=2) > 220).sum()) > 500  # the white circle itself
    finally:
        requests.post(f"{base}/inference_pipelines/browser-cam/terminate", timeout=10)


def test_the_watchdog_question_names_a_dead_pipeline_or_bridge_thread(tmp_path: Path, runtime: Any) -> None:
    import threading

    from edge_agent.pipeline_spec import PipelineSpec

    assert runtime.healthy() is None
    video = tmp_path / "v.mp4"
    circle_video(video, frames=3)
    pipeline = runtime.pipelines.start(PipelineSpec(model_id="shapes/1", video_reference=str(video), pipeline_id="w"))
    pipeline.join(30)
    assert pipeline.state == "finished"
    assert runtime.healthy() is None  # finished is not stuck
    dead = threading.Thread(target=lambda: None)
    dead.start()
    dead.join()
    pipeline._thread, pipeline.state = dead, "running"  # what a bug that killed the thread would leave
    assert runtime.healthy() == "the thread of pipeline(s) w has stopped"

    # an inference that hangs: the loop has not come round for longer than the limit, the source streams
    from edge_agent.runtime import PIPELINE_HANG_S

    pipeline._thread = None
    pipeline.source.state = "streaming"
    pipeline._last_progress = time.monotonic() - PIPELINE_HANG_S - 1
    assert runtime.healthy() == f"pipeline(s) w took no frame for {PIPELINE_HANG_S:.0f} s while the source delivers"
    pipeline.source.state = "reconnecting"  # a camera that is away is not a hang
    assert runtime.healthy() is None


def test_memory_stays_flat_on_a_live_stream(tmp_path: Path, runtime: Any) -> None:
    """A short soak (the 10-minute one is bench/pipeline.py --soak-minutes 10): 20 s of a 30 fps stream."""
    from edge_agent.pipeline_spec import PipelineSpec

    def rss_mb() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    video = tmp_path / "long.mp4"
    circle_video(video, frames=750, fps=30.0)
    pipeline = runtime.pipelines.start(PipelineSpec(model_id="shapes/1", video_reference=str(video), realtime=True,
                                                  pipeline_id="soak"))
    wait(lambda: pipeline.frames_inferred >= 100)  # warmed up: model, buffers, arenas
    samples = []
    while not pipeline.done and len(samples) < 20:
        samples.append(rss_mb())
        time.sleep(1.0)
    frames = pipeline.frames_inferred
    runtime.pipelines.terminate("soak")
    assert len(samples) >= 15
    assert frames > 400
    assert samples[-1] - min(samples) < 15, samples  # MB; noise is a few MB


def test_sigterm_ends_an_open_preview_at_once(tmp_path: Path) -> None:
    """An open MJPEG preview must not hold the daemon's stop until gunicorn's graceful timeout (20 s)."""
    import os
    import signal
    import threading

    import requests

    from servers import running_server

    video = tmp_path / "long.mp4"
    circle_video(video, frames=900, fps=30.0)
    with running_server(tmp_path / "state") as server:
        start_over_http(server.url, video, "cam")
        got = threading.Event()

        def watch() -> None:
            try:
                with requests.get(f"{server.url}/pipelines/cam/preview.mjpg", stream=True, timeout=60) as preview:
                    for _ in preview.iter_content(4096):
                        got.set()
            except requests.RequestException:
                pass

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        assert got.wait(30)
        t0 = time.monotonic()
        os.killpg(server.process.pid, signal.SIGTERM)
        assert server.process.wait(30) == 0
        assert time.monotonic() - t0 < 12, "the preview held the stop until the graceful timeout"
        watcher.join(10)
        assert not watcher.is_alive()
