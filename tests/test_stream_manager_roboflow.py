"""Roboflow's stream-manager shapes (issue 19 item 3): ``/inference_pipelines/initialise`` with a workflow
of one Roboflow model block, ``/consume``, and inference-sdk's pipeline calls against a real daemon, on
video files written by the test (a white circle moving on grey) and the demo models."""

from __future__ import annotations

import base64
import copy
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import VIDEO_SIZE, circle_video, wait

FRAMES = 20


def workflow(block_type: str = "roboflow_core/roboflow_object_detection_model@v1", model_id: Any = "shapes/1",
             outputs: list[dict[str, Any]] | None = None, **fields: Any) -> dict[str, Any]:
    """A workflow specification of one model block named ``model``."""
    return {
        "version": "1.0",
        "inputs": [{"type": "InferenceImage", "name": "image"},
                   {"type": "WorkflowParameter", "name": "confidence", "default_value": 0.25},
                   {"type": "WorkflowParameter", "name": "classes"}],
        "steps": [{"type": block_type, "name": "model", "images": "$inputs.image", "model_id": model_id, **fields}],
        "outputs": outputs if outputs is not None else
        [{"type": "JsonField", "name": "predictions", "selector": "$steps.model.predictions"}],
    }


def payload(spec: dict[str, Any] | None, video: Any = "clip.mp4", **processing: Any) -> dict[str, Any]:
    """The body inference-sdk 1.8.3's ``start_inference_pipeline_with_workflow`` sends (its defaults)."""
    return {
        "api_key": None,
        "video_configuration": {"type": "VideoConfiguration", "video_reference": video, "max_fps": None,
                                "source_buffer_filling_strategy": "DROP_OLDEST",
                                "source_buffer_consumption_strategy": "EAGER", "video_source_properties": None,
                                "batch_collection_timeout": None},
        "processing_configuration": {"type": "WorkflowConfiguration", "workflow_specification": spec,
                                     "workspace_name": None, "workflow_id": None, "image_input_name": "image",
                                     "workflows_parameters": None, "workflows_thread_pool_workers": 4,
                                     "cancel_thread_pool_tasks_on_exit": True,
                                     "video_metadata_input_name": "video_metadata", **processing},
        "sink_configuration": {"type": "MemorySinkConfiguration", "results_buffer_size": 64},
    }


def translated(body: dict[str, Any]) -> Any:
    from edge_agent.pipelines.stream_manager import RoboflowInitialise, translate

    return translate(RoboflowInitialise.model_validate(body))


# ------------------------------------------------------------------ the translation


@pytest.mark.parametrize(("block_type", "fields", "expected"), [
    ("roboflow_core/roboflow_object_detection_model@v1",
     {"confidence": 0.6, "iou_threshold": 0.5, "class_filter": ["circle"], "max_detections": 7,
      "class_agnostic_nms": True, "max_candidates": 900, "disable_active_learning": True},
     {"confidence": 0.6, "iou_threshold": 0.5, "class_filter": ["circle"], "max_detections": 7,
      "class_agnostic_nms": True, "max_candidates": 900, "active_learning": False}),
    ("RoboflowObjectDetectionModel", {"confidence": 0.7}, {"confidence": 0.7, "active_learning": False}),
    ("roboflow_core/roboflow_object_detection_model@v2", {"disable_active_learning": False},
     {"active_learning": True}),
    ("ObjectDetectionModel", {}, {"confidence": 0.4, "max_detections": 300}),
    ("roboflow_core/roboflow_object_detection_model@v3", {"confidence_mode": "custom", "custom_confidence": 0.55},
     {"confidence": 0.55}),
    ("roboflow_core/roboflow_object_detection_model@v3", {"confidence_mode": "best"}, {"confidence": 0.4}),
    ("roboflow_core/roboflow_instance_segmentation_model@v2",
     {"confidence": 0.3, "mask_decode_mode": "tradeoff", "tradeoff_factor": 0.5},
     {"confidence": 0.3, "mask_decode_mode": "tradeoff", "tradeoff_factor": 0.5}),
    ("InstanceSegmentationModel", {"iou_threshold": 0.6}, {"iou_threshold": 0.6}),
    ("roboflow_core/roboflow_keypoint_detection_model@v1", {"keypoint_confidence": 0.2, "confidence": 0.5},
     {"keypoint_confidence": 0.2, "confidence": 0.5}),
    ("KeypointsDetectionModel", {}, {"keypoint_confidence": 0.0}),
    ("roboflow_core/roboflow_classification_model@v2", {"confidence": 0.1}, {"confidence": 0.1}),
    ("RoboflowClassificationModel", {}, {"confidence": 0.4}),
    ("roboflow_core/roboflow_classification_model@v3", {"confidence_mode": "custom", "custom_confidence": 0.9},
     {"confidence": 0.9}),
])
def test_one_model_block_becomes_the_model_and_its_parameters(block_type: str, fields: dict[str, Any],
                                                             expected: dict[str, Any]) -> None:
    spec, outputs = translated(payload(workflow(block_type, "shapes/1", **fields)))
    assert spec.model_id == "shapes/1"
    assert spec.video_reference == "clip.mp4"
    got = spec.model_dump()
    assert {k: got[k] for k in expected} == expected
    assert [(o.name, o.kind) for o in outputs] == [("predictions", "predictions")]


def test_inputs_references_take_workflows_parameters_then_default_values() -> None:
    spec_only = workflow(confidence="$inputs.confidence", class_filter="$inputs.classes",
                         model_id="$inputs.model")
    spec_only["inputs"].append({"type": "WorkflowParameter", "name": "model"})
    spec, _ = translated(payload(spec_only, workflows_parameters={"classes": ["star"], "model": "shapes/1"}))
    assert (spec.model_id, spec.confidence, spec.class_filter) == ("shapes/1", 0.25, ["star"])  # default_value
    spec, _ = translated(payload(spec_only, workflows_parameters={"classes": None, "model": "shapes/1",
                                                                  "confidence": 0.8}))
    assert (spec.confidence, spec.class_filter) == (0.8, None)


def test_video_configuration_and_sink_map_to_the_pipeline() -> None:
    body = payload(workflow(), video=["cam.mp4"])
    body["video_configuration"].update(max_fps=5, source_buffer_filling_strategy="WAIT",
                                       source_buffer_consumption_strategy="LAZY",
                                       video_source_properties={"frame_width": 640}, batch_collection_timeout=0.5)
    body["sink_configuration"]["results_buffer_size"] = 9
    body["api_key"] = "secret-key"
    spec, _ = translated(body)
    assert (spec.video_reference, spec.max_fps, spec.results_buffer_size) == ("cam.mp4", 5.0, 9)
    assert (spec.source_buffer_filling_strategy, spec.source_buffer_consumption_strategy) == ("WAIT", "LAZY")
    assert (spec.video_source_properties, spec.batch_collection_timeout) == ({"frame_width": 640.0}, 0.5)
    assert spec.api_key.get_secret_value() == "secret-key"
    spec, _ = translated(payload(workflow(), video=[0, "rtsp://cam/2"]))  # the SDK's default strategies
    assert (spec.video_reference, spec.results_buffer_size) == ([0, "rtsp://cam/2"], 64)
    assert (spec.source_buffer_filling_strategy, spec.source_buffer_consumption_strategy) == ("DROP_OLDEST", "EAGER")
    body = payload(workflow(), video=["a.mp4", "b.mp4"])
    body["video_configuration"]["batch_collection_timeout"] = 0  # take the frames already there, wait for no one
    spec, _ = translated(body)
    assert spec.batch_collection_timeout == 0.0


def test_unknown_keys_of_roboflow_bodies_are_ignored_as_roboflow_does(caplog: pytest.LogCaptureFixture) -> None:
    from edge_agent.pipelines.stream_manager import ConsumeRequest

    caplog.set_level(logging.DEBUG, logger="edge_agent.pipelines.stream_manager")
    body = payload(workflow())
    body["newer_sdk_option"] = 1
    body["video_configuration"]["decoder"] = "hw"
    body["processing_configuration"]["workflows_cache"] = True
    body["sink_configuration"]["flush"] = False
    spec, _ = translated(body)
    assert spec.model_id == "shapes/1"
    assert ConsumeRequest.model_validate({"excluded_fields": ["x"], "timeout": 3}).excluded_fields == ["x"]
    for name in ("newer_sdk_option", "decoder", "workflows_cache", "flush", "timeout"):
        assert name in caplog.text


def test_outputs_name_what_each_result_carries() -> None:
    outputs = [{"type": "JsonField", "name": "p", "selector": "$steps.model.predictions"},
               {"type": "JsonField", "name": "all", "selector": "$steps.model.*"},
               {"type": "JsonField", "name": "id", "selector": "$steps.model.inference_id"},
               {"type": "JsonField", "name": "which", "selector": "$steps.model.model_id"},
               {"type": "JsonField", "name": "frame", "selector": "$inputs.image"},
               {"type": "JsonField", "name": "conf", "selector": "$inputs.confidence"}]
    _, got = translated(payload(workflow(outputs=outputs)))
    assert [(o.name, o.kind, o.value) for o in got] == [
        ("p", "predictions", None), ("all", "*", None), ("id", "inference_id", None), ("which", "model_id", None),
        ("frame", "image", None), ("conf", "value", 0.25)]


def _two_blocks() -> dict[str, Any]:
    spec = workflow()
    spec["steps"].append({"type": "roboflow_core/bounding_box_visualization@v1", "name": "boxes",
                          "image": "$inputs.image", "predictions": "$steps.model.predictions"})
    return spec


@pytest.mark.parametrize(("body", "named"), [
    (payload(workflow("roboflow_core/bounding_box_visualization@v1")), "roboflow_core/bounding_box_visualization@v1"),
    (payload(workflow("roboflow_core/roboflow_multi_label_classification_model@v1")),
     "roboflow_core/roboflow_multi_label_classification_model@v1"),
    (payload(_two_blocks()), "'boxes' ('roboflow_core/bounding_box_visualization@v1')"),
    (payload(None, workspace_name="acme", workflow_id="count-people"), "send its workflow_specification"),
    (payload(None), "workflow_specification is required"),
    (payload(workflow(), video=[]), "video_reference: an empty list"),
    (payload(workflow(), video=[str(i) for i in range(17)]), "17 sources; one pipeline reads at most 16"),
    (payload(workflow(confidence="$inputs.classes")), "'$inputs.classes' has no value"),
    (payload(workflow(confidence="$inputs.nothing")), "'$inputs.nothing' names no input"),
    (payload(workflow(confidence="$steps.other.x")), "'$steps.other.x' is not supported"),
    (payload(workflow(sahi=True)), "field(s) sahi not supported"),
    (payload(workflow(confidence=7)), "confidence"),
    (payload(workflow(disable_active_learning="yes")), "disable_active_learning must be true or false"),
    (payload(workflow(model_id="bad model")), "model_id"),
    (payload(workflow(outputs=[{"type": "JsonField", "name": "x", "selector": "$steps.other.predictions"}])),
     "selector '$steps.other.predictions'"),
    (payload(workflow(), image_input_name="frame"), "named 'frame'"),
])
def test_what_the_device_cannot_run_is_refused_by_name(body: dict[str, Any], named: str) -> None:
    from edge_agent.errors import InvalidInput

    with pytest.raises(InvalidInput) as caught:
        translated(body)
    assert caught.value.status == 400
    assert named in str(caught.value)


def test_video_source_properties_are_numbers() -> None:
    from edge_agent.errors import InvalidInput

    body = payload(workflow())
    body["video_configuration"]["video_source_properties"] = {"frame_width": "wide"}
    with pytest.raises(InvalidInput, match=r"^video_source_properties\.frame_width: Input should be a valid number"):
        translated(body)


# ------------------------------------------------------------------ the results buffer


def test_consume_hands_out_the_buffered_results_oldest_first_within_the_bound(tmp_path: Path, runtime: Any) -> None:
    import cv2

    centres = circle_video(tmp_path / "clip.mp4", frames=FRAMES)
    outputs = [{"type": "JsonField", "name": "predictions", "selector": "$steps.model.predictions"},
               {"type": "JsonField", "name": "all", "selector": "$steps.model.*"},
               {"type": "JsonField", "name": "frame", "selector": "$inputs.image"},
               {"type": "JsonField", "name": "conf", "selector": "$inputs.confidence"}]
    body = payload(workflow(outputs=outputs, confidence="$inputs.confidence"), video=[str(tmp_path / "clip.mp4")])
    body["video_configuration"].update(source_buffer_filling_strategy="WAIT",  # every frame
                                       source_buffer_consumption_strategy="LAZY")
    body["sink_configuration"]["results_buffer_size"] = 5
    spec, outs = translated(body)
    pipeline = runtime.pipelines.start(spec, outs)
    pipeline.join(60)
    assert pipeline.state == "finished", pipeline.status()
    assert pipeline.frames_inferred == FRAMES
    assert len(runtime.pipelines.results[pipeline.pipeline_id]) == 5  # bounded: the last five are kept
    first = runtime.pipelines.consume(pipeline.pipeline_id)
    assert [m["frame_id"] for m in first["frames_metadata"]] == [FRAMES - 4]
    assert first["frames_metadata"][0]["source_id"] == 0
    assert abs(_epoch(first["frames_metadata"][0]["frame_timestamp"]) - time.time()) < 600
    (out,) = first["outputs"]
    assert set(out) == {"predictions", "all", "frame", "conf"}
    assert out["conf"] == 0.25
    assert pipeline.active_learning is False  # the block's disable_active_learning, True by default
    assert out["all"]["model_id"] == "shapes/1"
    assert out["all"]["inference_id"] == out["predictions"]["inference_id"]
    circles = [p for p in out["predictions"]["predictions"] if p["class"] == "circle"]
    cx, cy = centres[FRAMES - 5]
    assert circles and min(np.hypot(p["x"] - cx, p["y"] - cy) for p in circles) < 8.0, out["predictions"]
    assert out["frame"]["type"] == "base64"
    image = cv2.imdecode(np.frombuffer(base64.b64decode(out["frame"]["value"]), np.uint8), cv2.IMREAD_COLOR)
    assert image.shape[:2] == VIDEO_SIZE
    second = runtime.pipelines.consume(pipeline.pipeline_id, excluded_fields=["frame", "all"])
    assert [m["frame_id"] for m in second["frames_metadata"]] == [FRAMES - 3]
    assert set(second["outputs"][0]) == {"predictions", "conf"}
    for _ in range(3):
        runtime.pipelines.consume(pipeline.pipeline_id)
    assert runtime.pipelines.consume(pipeline.pipeline_id) == {"outputs": [], "frames_metadata": []}
    runtime.pipelines.terminate(pipeline.pipeline_id)


def test_our_own_request_shape_is_consumable_and_keeps_no_image(tmp_path: Path, runtime: Any) -> None:
    from edge_agent.pipeline_spec import PipelineSpec

    circle_video(tmp_path / "clip.mp4", frames=6)
    pipeline = runtime.pipelines.start(PipelineSpec(model_id="shapes/1", video_reference=str(tmp_path / "clip.mp4"),
                                                    results_buffer_size=2))
    pipeline.join(60)
    buffer = runtime.pipelines.results[pipeline.pipeline_id]
    assert len(buffer) == 2
    assert all(item.jpeg is None for item in list(buffer._items))
    got = runtime.pipelines.consume(pipeline.pipeline_id)
    assert list(got["outputs"][0]) == ["predictions"]
    assert got["frames_metadata"][0]["frame_id"] == 5
    assert pipeline.active_learning is True  # our own shape samples unless told not to
    runtime.pipelines.terminate(pipeline.pipeline_id)


def test_several_sources_each_frame_is_consumed_with_its_source_id(tmp_path: Path, runtime: Any) -> None:
    for name in ("a.mp4", "b.mp4"):
        circle_video(tmp_path / name, frames=6)
    body = payload(workflow(), video=[str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")])
    body["video_configuration"].update(source_buffer_filling_strategy="WAIT", source_buffer_consumption_strategy="LAZY",
                                       batch_collection_timeout=0)  # no wait for the slower: no frame lost either
    pipeline = runtime.pipelines.start(*translated(body))
    assert pipeline.batch_collection_timeout == 0.0
    pipeline.join(60)
    assert pipeline.state == "finished", pipeline.status()
    seen: list[tuple[int, int]] = []
    while (got := runtime.pipelines.consume(pipeline.pipeline_id))["outputs"]:
        assert len(got["outputs"]) == len(got["frames_metadata"]) == 1
        assert got["outputs"][0]["predictions"]["predictions"], got
        seen += [(m["source_id"], m["frame_id"]) for m in got["frames_metadata"]]
    assert sorted(seen) == [(s, f) for s in (0, 1) for f in range(1, 7)]
    runtime.pipelines.terminate(pipeline.pipeline_id)


def _epoch(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp()


# ------------------------------------------------------------------ inference-sdk against the daemon


@pytest.mark.filterwarnings("ignore:decorate is experimental")  # inference-sdk marks its pipeline calls so
def test_inference_sdk_runs_a_workflow_pipeline_on_the_daemon(tmp_path: Path, http_server: Any) -> None:
    pytest.importorskip("inference_sdk", reason="inference-sdk is installed by .ci/run (--no-deps)")
    from inference_sdk import InferenceHTTPClient

    video = tmp_path / "long.mp4"
    circle_video(video, frames=400, fps=20.0)
    client = InferenceHTTPClient(http_server.url, api_key="test-key")
    started = client.start_inference_pipeline_with_workflow(  # every frame, 15 a second: it runs for 27 s
        video_reference=[str(video)], workflow_specification=workflow(confidence="$inputs.confidence"),
        workflows_parameters={"confidence": 0.3}, max_fps=15, results_buffer_size=16,
        source_buffer_filling_strategy="WAIT", source_buffer_consumption_strategy="LAZY")
    assert started["status"] == "success"
    pipeline_id = started["context"]["pipeline_id"]
    assert pipeline_id in client.list_inference_pipelines()["pipelines"]

    def report() -> dict[str, Any]:
        return client.get_inference_pipeline_status(pipeline_id)["report"]

    wait(lambda: report()["frames_inferred"] >= 3)
    rep = report()
    assert rep["state"] == "running"
    assert rep["max_fps"] == 15
    assert rep["inference_throughput"] > 0
    assert rep["sources_metadata"][0]["source_properties"]["is_file"] is True
    got: dict[str, Any] = {}

    def consumed() -> bool:
        got.update(client.consume_inference_pipeline_result(pipeline_id))
        return bool(got["outputs"])

    wait(consumed)
    assert got["status"] == "success" and got["context"]["pipeline_id"] == pipeline_id
    meta = got["frames_metadata"][0]
    assert meta["source_id"] == 0 and meta["frame_id"] >= 1
    predictions = got["outputs"][0]["predictions"]
    assert predictions["image"] == {"width": VIDEO_SIZE[1], "height": VIDEO_SIZE[0]}
    assert any(p["class"] == "circle" and p["confidence"] >= 0.3 for p in predictions["predictions"])
    excluded: dict[str, Any] = {}

    def consumed_without_predictions() -> bool:
        excluded.update(client.consume_inference_pipeline_result(pipeline_id, excluded_fields=["predictions"]))
        return bool(excluded["outputs"])

    wait(consumed_without_predictions)
    assert excluded["outputs"] == [{}]
    assert client.pause_inference_pipeline(pipeline_id)["status"] == "success"
    assert report()["state"] == "paused"
    assert client.resume_inference_pipeline(pipeline_id)["status"] == "success"
    assert report()["state"] == "running"
    assert client.terminate_inference_pipeline(pipeline_id)["status"] == "success"
    assert pipeline_id not in client.list_inference_pipelines()["pipelines"]
    log = http_server.output()
    assert f"pipeline {pipeline_id} started" in log and f"pipeline {pipeline_id} terminated" in log


def test_refusals_over_http_are_400_naming_the_problem(http_server: Any) -> None:
    import requests

    base = http_server.url
    r = requests.post(f"{base}/inference_pipelines/initialise", json=payload(_two_blocks()), timeout=10)
    assert r.status_code == 400, r.text
    assert "roboflow_core/bounding_box_visualization@v1" in r.json()["message"]
    r = requests.post(f"{base}/inference_pipelines/initialise", timeout=10,
                      json=payload(None, workspace_name="acme", workflow_id="count"))
    assert r.status_code == 400 and "inline" in r.json()["message"]
    bad = copy.deepcopy(payload(workflow()))
    bad["video_configuration"]["source_buffer_filling_strategy"] = "SOMETIMES"
    r = requests.post(f"{base}/inference_pipelines/initialise", json=bad, timeout=10)
    assert r.status_code == 422 and "source_buffer_filling_strategy" in r.text
    r = requests.get(f"{base}/inference_pipelines/nope/consume", timeout=10)
    assert r.status_code == 404 and r.json()["error"] == "pipeline_not_found"
    r = requests.get(f"{base}/inference_pipelines/nope/consume", json={"excluded_fields": "x"}, timeout=10)
    assert r.status_code == 400 and "excluded_fields" in r.json()["message"]
