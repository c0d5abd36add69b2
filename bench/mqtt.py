"""What the MQTT bridge costs, against bare paho on the same broker in the same run.

A real mosquitto on loopback (Debian's, as in the tests) and a subscriber that counts arrivals.
  throughput  N prediction messages through the bridge (outbox on disk, QoS 1, in order) until the
              subscriber has them all, vs bare paho publishing the same payloads at QoS 1 (no disk);
              for outbox_sync full and normal
  latency     one message at a time: submit -> subscriber, vs bare paho publish -> subscriber
  inference   the demo detector in a loop with every result published (bridge on) vs no bridge,
              images/s (the goal: no measurable drop)

    python bench/mqtt.py [--messages 2000] [--latency-runs 200] [--seconds 10] [--rounds 3]
"""

# ruff: noqa: E402
from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "tests"))  # the tests' broker helpers

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class Counter:
    """A subscriber that notes when each message arrived."""

    def __init__(self, port: int, topic: str) -> None:
        from brokers import Subscriber

        self.sub = Subscriber(port, [topic], client_id=f"bench-{time.monotonic_ns()}", persistent=False)

    def count(self) -> int:
        return len(self.sub.messages)

    def wait(self, n: int, timeout: float = 120) -> float:
        self.sub.wait_for(lambda ms: len(ms) >= n, timeout)
        return self.sub.messages[n - 1].at


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User + system CPU time of a process, or of one of its threads (``/proc``)."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def runtime_for(state: Path, port: int, enabled: bool, sync: str = "full") -> Any:
    from edge_agent.runtime import Runtime
    from edge_agent.settings import EngineSettings, MqttSettings, Settings

    mqtt = MqttSettings(enabled=enabled, host="127.0.0.1", port=port, device_id="bench", telemetry_interval_s=0,
                        outbox_sync=sync, state_topics=True, handoff_size=100_000, outbox_max_messages=1_000_000)
    settings = Settings.defaults(state).model_copy(update={"mqtt": mqtt, "engine": EngineSettings()})
    runtime = Runtime(settings)
    runtime.start()
    if enabled:
        deadline = time.monotonic() + 10
        while not runtime.bridge.snapshot()["connected"]:
            assert time.monotonic() < deadline, runtime.bridge.stats.last_error
            time.sleep(0.01)
    return runtime


@contextmanager
def bare(port: int) -> Iterator[tuple[Any, Counter]]:
    """A plain paho client publishing to ``bare/x`` and a subscriber counting what arrives there."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    counter = Counter(port, "bare/#")
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-bare", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(32)
    client.connect("127.0.0.1", port, 30)
    client.loop_start()
    time.sleep(0.2)
    try:
        yield client, counter
    finally:
        client.loop_stop()
        client.disconnect()
        counter.sub.close()


@contextmanager
def bridged(state: Path, port: int, sync: str) -> Iterator[tuple[Any, Counter]]:
    """A runtime with its bridge connected and a subscriber counting its predictions."""
    counter = Counter(port, "edge-agent/bench/predictions/#")
    runtime = runtime_for(state, port, enabled=True, sync=sync)
    try:
        yield runtime, counter
    finally:
        runtime.stop()
        counter.sub.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--latency-runs", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=3, help="bridge off/on alternations for the inference figure")
    args = ap.parse_args()

    from brokers import Mosquitto
    from edge_agent.events import PredictionEvent
    from edge_agent.mqtt import topics
    from edge_agent.params import InferenceParams

    tmp = Path(tempfile.mkdtemp(prefix="bench-mqtt-"))
    # mosquitto keeps at most 1000 QoS 1 messages queued per subscriber by default: a burst of a few
    # thousand to a Python subscriber would be cut there (docs/mqtt.md, broker settings).
    broker = Mosquitto(tmp / "broker", extra="max_queued_messages 0\n").start()
    import cv2

    image = cv2.imread(str(Path(_HERE).parent / "edge_agent/demo/sample.jpg"))
    try:
        probe = runtime_for(tmp / "probe", broker.port, enabled=False)
        loaded, _ = probe.model("shapes/1")
        result = loaded.infer([image], InferenceParams())[0]
        probe.stop()

        def event(i: int) -> PredictionEvent:
            now = time.time()
            return PredictionEvent("cam1", "shapes/1", i, now, now, result)

        payload = topics.dumps(topics.prediction_payload("bench", event(0)))
        print(f"payload: {len(payload)} bytes (the demo detector's result on the sample image)")

        # ---- throughput
        n = args.messages
        with bare(broker.port) as (client, counter):
            t0 = time.monotonic()  # the subscriber stamps arrivals with time.monotonic
            for _ in range(n):
                client.publish("bare/x", payload, qos=1)
            bare_s = counter.wait(n) - t0
        print(f"throughput  bare paho QoS 1        {n / bare_s:8.0f} msg/s (1.00)")
        for sync in ("full", "normal"):
            with bridged(tmp / f"tp-{sync}", broker.port, sync) as (runtime, counter):
                events = [event(i) for i in range(n)]
                t0 = time.monotonic()
                for e in events:
                    runtime.bridge.submit(e)
                took = counter.wait(n) - t0
            print(f"throughput  bridge, outbox {sync:6s}  {n / took:8.0f} msg/s ({bare_s / took:.2f}x)")

        # ---- latency, one message at a time
        def latency(send: Any, counter: Counter) -> float:
            samples = []
            for i in range(args.latency_runs):
                t0 = time.monotonic()
                send(i)
                arrived = counter.wait(i + 1)
                samples.append(arrived - t0)
            return statistics.median(samples) * 1000

        with bare(broker.port) as (client, counter):
            bare_ms = latency(lambda i: client.publish("bare/x", payload, qos=1), counter)
        print(f"latency     bare paho QoS 1        {bare_ms:8.2f} ms median")
        for sync in ("full", "normal"):
            with bridged(tmp / f"lat-{sync}", broker.port, sync) as (runtime, counter):
                ms = latency(lambda i, rt=runtime: rt.bridge.submit(event(i)), counter)
            print(f"latency     bridge, outbox {sync:6s}  {ms:8.2f} ms median (+{ms - bare_ms:.2f} ms)")

        # ---- inference throughput, bridge on vs off (same process, same model, same image)
        def images_per_s(runtime: Any) -> float:
            loaded, _ = runtime.inference.model("shapes/1")
            params = InferenceParams()
            for _ in range(10):
                runtime.inference.infer(loaded, [image], params)
            done, stop = 0, time.perf_counter() + args.seconds
            t0 = time.perf_counter()
            while time.perf_counter() < stop:
                runtime.inference.infer(loaded, [image], params, source="cam1")
                done += 1
            return done / (time.perf_counter() - t0)

        rates: dict[str, list[float]] = {"off": [], "on": []}
        cpu = {"bridge": 0.0, "broker": 0.0, "messages": 0}
        for _ in range(args.rounds):  # alternated, so drift in the machine's speed hits both sides
            for mode in ("off", "on"):
                # no subscriber in this process: its paho thread would compete for the GIL and count
                # against the bridge; the broker still receives every message and acknowledges it
                runtime = runtime_for(tmp / f"inf-{mode}-{len(rates[mode])}", broker.port, enabled=mode == "on")
                if mode == "on":
                    tid = runtime.bridge._thread.native_id
                    before = (cpu_seconds(os.getpid(), tid), cpu_seconds(broker.proc.pid),
                              runtime.bridge.snapshot()["published"])
                rates[mode].append(images_per_s(runtime))
                if mode == "on":
                    snap = runtime.bridge.snapshot()
                    assert snap["dropped"]["handoff_full"] == 0 and snap["published"] > 0, snap
                    sent = snap["published"] - before[2]
                    cpu["bridge"] += cpu_seconds(os.getpid(), tid) - before[0]
                    cpu["broker"] += cpu_seconds(broker.proc.pid) - before[1]
                    cpu["messages"] += sent
                runtime.stop()
        off, on = statistics.mean(rates["off"]), statistics.mean(rates["on"])
        print(f"inference   bridge off             {off:8.1f} img/s (1.00)")
        print(f"inference   bridge on, publishing  {on:8.1f} img/s ({on / off:.3f}x)"
              f"  per round: off {[round(r, 1) for r in rates['off']]} on {[round(r, 1) for r in rates['on']]}")
        n = max(cpu["messages"], 1)
        print(f"cpu         bridge thread {1e6 * cpu['bridge'] / n:.0f} us/message, mosquitto "
              f"{1e6 * cpu['broker'] / n:.0f} us/message (state topics included)")
    finally:
        broker.stop()


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
