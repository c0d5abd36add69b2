"""Prometheus metrics of one runtime, in a registry of its own (``prometheus-client``).

Request counts and latencies per route and model, batch sizes and engine time per model, model
load times, and the live queue depth and loaded-model count, read when ``/metrics`` is scraped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32)


class _Live(Collector):
    def __init__(self, depths: Callable[[], dict[str, int]], loaded: Callable[[], int]) -> None:
        self._depths = depths
        self._loaded = loaded

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("edge_agent_queue_depth", "Requests waiting for the engine, per model",
                                  labels=["model"])
        for model, n in sorted(self._depths().items()):
            depth.add_metric([model], n)
        yield depth
        yield GaugeMetricFamily("edge_agent_models_loaded", "Models loaded in memory", value=self._loaded())


class _Mqtt(Collector):
    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self._snapshot()
        yield GaugeMetricFamily("edge_agent_mqtt_connected", "1 while connected to the broker",
                                value=int(s["connected"]))
        yield GaugeMetricFamily("edge_agent_mqtt_outbox_messages", "Messages in the outbox on disk",
                                value=s["outbox_depth"])
        yield GaugeMetricFamily("edge_agent_mqtt_outbox_bytes", "Bytes in the outbox on disk",
                                value=s["outbox_bytes"])
        yield CounterMetricFamily("edge_agent_mqtt_published", "Messages sent to the broker",
                                  value=s["published"])
        yield CounterMetricFamily("edge_agent_mqtt_connects", "Connections made to the broker",
                                  value=s["connects"])
        dropped = CounterMetricFamily("edge_agent_mqtt_dropped", "Messages dropped: outbox full (oldest "
                                      "predictions first) or hand-off to the bridge full", labels=["reason"])
        for reason, n in sorted(s["dropped"].items()):
            dropped.add_metric([reason], n)
        yield dropped


class _Pipelines(Collector):
    def __init__(self, statuses: Callable[[], list[dict[str, Any]]]) -> None:
        self._statuses = statuses

    def collect(self) -> Iterator[Metric]:
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "source_fps": GaugeMetricFamily("edge_agent_pipeline_source_fps", "Frames per second the source "
                                            "delivers (measured)", labels=["pipeline"]),
            "inference_fps": GaugeMetricFamily("edge_agent_pipeline_inference_fps", "Frames inferred per second",
                                               labels=["pipeline"]),
            "latency_s": GaugeMetricFamily("edge_agent_pipeline_latency_seconds", "Capture to result, last frame",
                                           labels=["pipeline"]),
            "frames_inferred": CounterMetricFamily("edge_agent_pipeline_frames_inferred", "Frames inferred",
                                                   labels=["pipeline"]),
            "dropped": CounterMetricFamily("edge_agent_pipeline_frames_dropped", "Frames a live source replaced "
                                           "before they were inferred", labels=["pipeline"]),
            "reconnects": CounterMetricFamily("edge_agent_pipeline_reconnects", "Times the source was opened "
                                              "again", labels=["pipeline"]),
        }
        running = GaugeMetricFamily("edge_agent_pipeline_running", "1 while the pipeline runs (not paused, "
                                    "finished, failed)", labels=["pipeline"])
        for status in self._statuses():
            pid, source = status["pipeline_id"], status["source"]
            values = {"source_fps": source["source_fps"], "inference_fps": status["inference_fps"],
                      "latency_s": status["latency_s"], "frames_inferred": status["frames_inferred"],
                      "dropped": source["dropped"], "reconnects": source["reconnects"]}
            for key, family in families.items():
                if values[key] is not None:
                    family.add_metric([pid], values[key])
            running.add_metric([pid], int(status["state"] == "running"))
        yield from families.values()
        yield running


class _ActiveLearning(Collector):
    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        s = self._status()
        sampler = CounterMetricFamily("edge_agent_active_learning_frames", "Frames the sampler considered, "
                                      "by outcome", labels=["outcome"])
        for outcome in ("considered", "sampled", "skipped_limit", "skipped_duplicate", "skipped_batch_full",
                        "skipped_disabled", "dropped_queue_full", "stored", "write_errors"):
            sampler.add_metric([outcome], s["sampler"][outcome])
        yield sampler
        yield GaugeMetricFamily("edge_agent_active_learning_spool_items", "Samples waiting in the spool",
                                value=s["spool"]["items"])
        yield GaugeMetricFamily("edge_agent_active_learning_spool_bytes", "Bytes in the spool",
                                value=s["spool"]["bytes"])
        yield CounterMetricFamily("edge_agent_active_learning_evicted", "Samples evicted from a full spool",
                                  value=s["spool"]["evicted"])
        uploaded = CounterMetricFamily("edge_agent_active_learning_uploaded", "Samples delivered", labels=["target"])
        failures = CounterMetricFamily("edge_agent_active_learning_upload_failures", "Failed upload attempts",
                                       labels=["target"])
        for target, t in sorted(s["targets"].items()):
            uploaded.add_metric([target], t["uploaded"])
            failures.add_metric([target], t["failures"])
        yield uploaded
        yield failures


class _Provisioning(Collector):
    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily("edge_agent_model_provisioning", "Models pulled from Roboflow's API, new "
                                     "versions activated, and versions refused by their checks", labels=["event"])
        for event, count in self._counts().items():
            family.add_metric([event], count)
        yield family


class Metrics:
    CONTENT_TYPE = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # the *_created series only double the scrape size
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("edge_agent_http_requests", "HTTP requests by route, model and status",
                                ["route", "model", "status"], registry=r)
        self.latency = Histogram("edge_agent_http_request_duration_seconds", "HTTP request latency",
                                 ["route", "model"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("edge_agent_batch_size", "Images per engine run", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.engine_time = Histogram("edge_agent_engine_run_seconds", "Engine run time per batch", ["model"],
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.images = Counter("edge_agent_images_inferred", "Images inferred", ["model"], registry=r)
        self.load_seconds = Gauge("edge_agent_model_load_seconds", "Time the last load of a model took",
                                  ["model"], registry=r)
        self.loads = Counter("edge_agent_model_loads", "Model loads", ["model"], registry=r)
        # (route, model, status) -> its request counter and latency histogram, and model -> its batch-size
        # and engine-time histograms and image counter: labels() checks and locks on every call, a few
        # microseconds five times per HTTP request.
        self._per_request: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._per_model: dict[str, tuple[Histogram, Histogram, Counter]] = {}

    def watch_active_learning(self, status: Callable[[], dict[str, Any]]) -> None:
        self.registry.register(_ActiveLearning(status))

    def watch_pipelines(self, statuses: Callable[[], list[dict[str, Any]]]) -> None:
        self.registry.register(_Pipelines(statuses))

    def watch_mqtt(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.registry.register(_Mqtt(snapshot))

    def watch_provisioning(self, counts: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_Provisioning(counts))

    def watch(self, depths: Callable[[], dict[str, int]], loaded: Callable[[], int]) -> None:
        self.registry.register(_Live(depths, loaded))

    def on_load(self, model_id: str, seconds: float) -> None:
        self.load_seconds.labels(model_id).set(seconds)
        self.loads.labels(model_id).inc()

    def _model(self, model_id: str) -> tuple[Histogram, Histogram, Counter]:
        found = self._per_model.get(model_id)
        if found is None:  # two threads may both get here: labels() gives both the same children
            found = self._per_model[model_id] = (self.batch_size.labels(model_id), self.engine_time.labels(model_id),
                                                 self.images.labels(model_id))
        return found

    def on_batch(self, model_id: str, size: int, seconds: float) -> None:
        batch_size, engine_time, _ = self._model(model_id)
        batch_size.observe(size)
        engine_time.observe(seconds)

    def count_images(self, model_id: str, n: int) -> None:
        self._model(model_id)[2].inc(n)

    def observe_request(self, route: str, model: str, status: int, seconds: float) -> None:
        key = (route, model, status)
        found = self._per_request.get(key)
        if found is None:  # two threads may both get here: labels() gives both the same children
            found = self._per_request[key] = (self.requests.labels(route, model, str(status)),
                                              self.latency.labels(route, model))
        found[0].inc()
        found[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
