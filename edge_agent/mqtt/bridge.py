"""The MQTT bridge: one thread that owns the paho client, the outbox and the broker connection.

Producers never wait for it: ``submit`` puts an event on a bounded in-memory hand-off (a full hand-off
drops and counts) and wakes the thread through a socket pair. The thread runs paho's external-loop API
(``loop_read``/``loop_write``/``loop_misc`` around one ``select``), so every paho callback runs here
and nothing but the hand-off is shared between threads.

Delivery (docs/mqtt.md):

- QoS 1 messages (predictions, unless ``qos = 0``) are written to the outbox on disk first, then handed
  to paho in order, at most ``max_inflight`` unacknowledged at once; each PUBACK deletes its row. On a
  reconnect paho sends again what it was holding before anything newer (its queue is ordered); after a
  restart the outbox is replayed from its oldest row. Consumers de-duplicate by ``message_id``.
- Availability: ``online`` retained on connect, ``offline`` retained as the last will, ``stopped``
  retained on a clean stop (then a DISCONNECT, so the will is not sent).
- State (retained counts, Home Assistant discovery) is republished on every connect; telemetry and
  command replies are sent only while connected (a reply to a command can only be owed while
  connected).
- Reconnects: exponential backoff between ``reconnect_min_s`` and ``reconnect_max_s`` with full
  jitter; ``protocol = "auto"`` tries MQTT 5 and falls back to 3.1.1 when the broker refuses it.

An exclusive ``flock`` on the outbox keeps a second worker of the same daemon (during a reload) from
publishing the same rows until the first has stopped.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import queue
import random
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.events import PredictionEvent
from edge_agent.mqtt import topics as t
from edge_agent.mqtt.outbox import Message, Outbox
from edge_agent.settings import MqttSettings

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
ACK_DELAY_S = 0.25


@dataclass(frozen=True)
class Direct:
    """A message sent only while connected, never stored (telemetry, replies, state)."""

    message: Message
    correlation_data: bytes | None = None


@dataclass(frozen=True)
class Tracked:
    """A QoS 1 message whose PUBACK someone waits for (``on_ack`` runs in the bridge's thread)."""

    message: Message
    on_ack: Callable[[], None]


@dataclass
class BridgeStats:
    connected: bool = False
    protocol: str = ""
    connects: int = 0
    published: int = 0
    dropped_handoff: int = 0
    dropped_outbox: int = 0  # this process; the outbox keeps the lifetime total
    outbox_depth: int = 0
    outbox_bytes: int = 0
    last_error: str = ""


class Bridge:
    """``commands(name, payload_bytes) -> reply dict`` runs command requests (in its own thread, see
    ``edge_agent.mqtt.commands``); ``telemetry() -> dict`` gives the body of a telemetry message;
    ``discovery(source_id, class_names) -> [(topic, payload)]`` the Home Assistant configs."""

    def __init__(self, settings: MqttSettings, state_dir: Path, client_id: str,
                 commands: Callable[[str, bytes, Callable[[dict[str, Any]], None]], None] | None = None,
                 telemetry: Callable[[], dict[str, Any]] | None = None,
                 discovery: Callable[[str, tuple[str, ...]], list[tuple[str, bytes]]] | None = None) -> None:
        self.settings = settings
        self.topics = t.Topics(settings.topic_prefix, settings.device_id)
        self.client_id = settings.client_id or client_id
        self.dir = state_dir / "mqtt"
        self._commands = commands
        self._telemetry = telemetry
        self._discovery = discovery
        self.stats = BridgeStats()
        self._handoff: queue.Queue[PredictionEvent | Direct | Message | Tracked] = queue.Queue(settings.handoff_size)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        # Everything below belongs to the bridge thread.
        self._client: mqtt.Client | None = None
        self._protocol = "5" if settings.protocol in ("auto", "5") else "3.1.1"
        self._phase = "idle"  # idle (waiting to try) -> connecting (CONNACK awaited) -> connected
        self._fallback = False
        self._connect_started = 0.0
        self._attempt = 0
        self._next_attempt = 0.0
        self._outbox: Outbox | None = None
        self._handed = 0  # highest outbox seq handed to paho
        self._inflight: dict[int, int] = {}  # paho mid -> outbox seq
        self._acked: list[int] = []
        self._acked_since = 0.0
        self._ack_callbacks: dict[int, Callable[[], None]] = {}
        self._state: dict[str, Direct] = {}  # source -> its latest retained counts
        self._last_counts: dict[str, dict[str, int]] = {}
        self._discovered: dict[str, list[tuple[str, bytes]]] = {}
        self._next_telemetry = time.monotonic() + settings.telemetry_interval_s
        self._next_drop_warning = 0.0

    # ------------------------------------------------------------------ producers' side (any thread)

    def submit(self, item: PredictionEvent | Message, on_ack: Callable[[], None] | None = None) -> bool:
        """Hand an event or a message to the bridge without waiting. False: the hand-off was full and
        the item was dropped (counted). ``on_ack``: called when the broker acknowledged the (QoS 1)
        message; never, if the outbox had to drop it or the daemon stopped first."""
        if isinstance(item, PredictionEvent) and item.image is not None:
            item = dataclasses.replace(item, image=None)  # the bridge never needs the frame: do not hold it
        try:
            self._handoff.put_nowait(Tracked(item, on_ack) if on_ack is not None and isinstance(item, Message)
                                     else item)
        except queue.Full:
            self.stats.dropped_handoff += 1
            return False
        self._wake()
        return True

    def reply(self, topic: str, payload: dict[str, Any], correlation_data: bytes | None = None) -> None:
        """Send a command reply (from the command thread)."""
        message = Message(topic, t.dumps(payload), qos=1)
        try:
            self._handoff.put_nowait(Direct(message, correlation_data))
        except queue.Full:
            self.stats.dropped_handoff += 1
            return
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already awake (the buffer is full) or closing

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mqtt-bridge", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float | None = None) -> None:
        """Store what is waiting, give the outbox ``stop_flush_s`` to empty, publish ``stopped``, and
        disconnect cleanly (the broker then does not send the last will)."""
        if self._thread is None:
            return
        self._stop.set()
        self._wake()
        self._thread.join(timeout if timeout is not None else self.settings.stop_flush_s + 5)

    # ------------------------------------------------------------------ the bridge thread

    def _run(self) -> None:
        lock = None
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            lock = open(self.dir / "outbox.lock", "w")  # noqa: SIM115 - held for the thread's life
            while True:  # another worker of this daemon (a reload) still owns the outbox: wait
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if self._stop.wait(0.2):
                        return
            s = self.settings
            self._outbox = Outbox(self.dir / "outbox.sqlite3", s.outbox_max_messages, s.outbox_max_bytes,
                                  s.outbox_sync)
            self._update_outbox_stats()
            if self._outbox.depth:
                log.info("MQTT outbox holds %d message(s) from before; they go first", self._outbox.depth)
            self._loop()
            self._shutdown()
        except Exception as exc:  # the watchdog sees the thread gone (alive())
            log.exception("MQTT bridge failed")
            self.stats.last_error = f"bridge failed: {exc}"
        finally:
            if self._outbox is not None:
                self._outbox.close()
            if lock is not None:
                lock.close()
            self._stopped.set()

    @property
    def _connected(self) -> bool:
        return self._phase == "connected"

    def _loop(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            if self._fallback:  # the broker refused MQTT 5: drop that client, make a 3.1.1 one
                self._fallback, old, self._client = False, self._client, None
                self._close(old)
                self._inflight.clear()
                self._handed = 0
            if self._phase == "idle" and now >= self._next_attempt:
                self._connect()
            elif self._phase == "connecting" and now - self._connect_started > CONNECT_TIMEOUT_S:
                self._fail("no CONNACK from the broker in time")
            self._io(self._timeout(now))
            self._drain()
            self._pump()
            self._tick()

    def _timeout(self, now: float) -> float:
        deadlines = [now + 1.0]
        if self._acked:
            deadlines.append(self._acked_since + ACK_DELAY_S)
        if self._phase == "idle":
            deadlines.append(self._next_attempt)
        elif self._phase == "connecting":
            deadlines.append(self._connect_started + CONNECT_TIMEOUT_S)
        if self.settings.telemetry_interval_s and self._connected:
            deadlines.append(self._next_telemetry)
        return max(0.0, min(deadlines) - now)

    def _io(self, timeout: float) -> None:
        client = self._client
        sock = client.socket() if client is not None else None
        rlist: list[Any] = [self._wake_r] + ([sock] if sock is not None else [])
        wlist: list[Any] = [sock] if client is not None and sock is not None and client.want_write() else []
        if sock is not None and hasattr(sock, "pending") and sock.pending():
            timeout = 0.0  # TLS has decrypted bytes waiting that select cannot see
        try:
            readable, writable, _ = select.select(rlist, wlist, [], timeout)
        except (OSError, ValueError):  # the socket was closed under us: paho notices below
            readable, writable = [], []
        if self._wake_r in readable:
            try:
                while self._wake_r.recv(4096):
                    pass
            except (BlockingIOError, OSError):
                pass
        if client is not None and sock is not None:
            if sock in readable or (hasattr(sock, "pending") and sock.pending()):
                client.loop_read()
            if sock in writable and client.socket() is not None:
                client.loop_write()
            if client.socket() is not None:
                client.loop_misc()

    # ------------------------------------------------------------------ connection

    def _new_client(self) -> mqtt.Client:
        import paho.mqtt.client as mqtt  # lazy: paho
        from paho.mqtt.enums import CallbackAPIVersion  # lazy: paho

        s = self.settings
        v5 = self._protocol == "5"
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
                             clean_session=None if v5 else True, reconnect_on_failure=False)
        client.connect_timeout = CONNECT_TIMEOUT_S
        if s.username is not None:
            client.username_pw_set(s.username, s.password.get_secret_value() if s.password else None)
        if s.uses_tls:
            import ssl  # lazy: ssl

            client.tls_set(ca_certs=str(s.tls_ca_file) if s.tls_ca_file else None,
                           certfile=str(s.tls_cert_file) if s.tls_cert_file else None,
                           keyfile=str(s.tls_key_file) if s.tls_key_file else None,
                           cert_reqs=ssl.CERT_REQUIRED)
            client.tls_insecure_set(s.tls_insecure)
        client.will_set(self.topics.status, t.OFFLINE, qos=1, retain=True)
        client.max_inflight_messages_set(s.max_inflight)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def _connect(self) -> None:
        s = self.settings
        if self._client is None:
            self._client = self._new_client()
        self._connect_started = time.monotonic()
        self._phase = "connecting"
        try:
            if self._protocol == "5":
                self._client.connect(s.host, s.port, s.keepalive_s, clean_start=True)
            else:
                self._client.connect(s.host, s.port, s.keepalive_s)
        except (OSError, ValueError) as exc:  # refused, unreachable, TLS handshake, DNS
            self._fail(f"cannot connect to {s.host}:{s.port}: {exc}")

    def _fail(self, why: str) -> None:
        """A connection attempt failed or a connection was lost: back off, with full jitter. The
        socket, if any, is closed by paho (lost) or by the next attempt; paho keeps its unacknowledged
        messages and sends them again first after the next CONNACK."""
        if why != self.stats.last_error:
            log.warning("MQTT: %s", why)
        self.stats.last_error = why
        self._phase = "idle"
        self.stats.connected = False
        s = self.settings
        ceiling = min(s.reconnect_max_s, s.reconnect_min_s * 2 ** min(self._attempt, 16))
        self._attempt += 1
        self._next_attempt = time.monotonic() + random.uniform(s.reconnect_min_s, ceiling)

    @staticmethod
    def _close(client: mqtt.Client | None) -> None:
        if client is not None and client.socket() is not None:
            client.on_disconnect = None
            client.disconnect()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            if self.settings.protocol == "auto" and self._protocol == "5" and reason.value == 132:
                log.info("MQTT: the broker refuses MQTT 5; using 3.1.1")
                self._protocol = "3.1.1"
                self._fallback = True  # a client speaks one protocol: the loop makes a new one
                self._phase, self._next_attempt = "idle", time.monotonic()
                return
            self._fail(f"the broker refused the connection: {reason}")
            return
        self._phase = "connected"
        self._attempt = 0
        s = self.stats
        s.connected, s.connects, s.protocol, s.last_error = True, s.connects + 1, self._protocol, ""
        log.info("MQTT connected to %s:%d (MQTT %s)", self.settings.host, self.settings.port, self._protocol)
        client.publish(self.topics.status, t.ONLINE, qos=1, retain=True)
        client.subscribe(self.topics.commands, qos=1)
        for configs in self._discovered.values():
            for topic, payload in configs:
                client.publish(topic, payload, qos=1, retain=True)
        for direct in self._state.values():
            self._send(direct)
        self._next_telemetry = time.monotonic()  # a first report at once

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if client is self._client and self._phase != "idle":
            self._fail(f"disconnected from the broker: {reason}")

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        seq = self._inflight.pop(mid, None)
        if seq is not None:
            callback = self._ack_callbacks.pop(seq, None)
            if callback is not None:
                callback()
            if not self._acked:
                self._acked_since = time.monotonic()
            self._acked.append(seq)
        self.stats.published += 1

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        name = self.topics.command_name(msg.topic)
        if name is None or self._commands is None:
            return
        props = getattr(msg, "properties", None)
        response_topic = getattr(props, "ResponseTopic", None) or self.topics.response(name)
        correlation = getattr(props, "CorrelationData", None)

        def respond(body: dict[str, Any]) -> None:
            self.reply(response_topic, body, correlation)

        self._commands(name, msg.payload, respond)

    # ------------------------------------------------------------------ messages

    def _drain(self, force: bool = False) -> None:
        """Move everything handed off into the outbox (one transaction) or out to the broker."""
        durable: list[Message] = []
        callbacks: list[tuple[int, Callable[[], None]]] = []  # (index in durable, on_ack)
        while True:
            try:
                item = self._handoff.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, PredictionEvent):
                durable.extend(self._event_messages(item))
            elif isinstance(item, Direct):
                self._send(item)
            elif isinstance(item, Tracked):
                callbacks.append((len(durable), item.on_ack))
                durable.append(item.message)
            elif item.qos >= 1:
                durable.append(item)
            else:
                self._send(Direct(item))
        assert self._outbox is not None
        # Deleting acknowledged rows can wait a little (a crash meanwhile only sends them again, and
        # consumers de-duplicate): they go with the next write, or after ACK_DELAY_S, in one transaction.
        acks_due = bool(self._acked) and (len(self._acked) >= self.settings.max_inflight or force
                                          or time.monotonic() - self._acked_since >= ACK_DELAY_S)
        if durable or acks_due:
            dropped = self._outbox.put(durable, self._acked)
            self._acked = []
            first = self._outbox.last_seq - len(durable) + 1
            for index, callback in callbacks:
                self._ack_callbacks[first + index] = callback
            if len(self._ack_callbacks) > 100_000:  # callbacks of messages the outbox dropped: forget the oldest
                for seq in sorted(self._ack_callbacks)[:50_000]:
                    del self._ack_callbacks[seq]
            if dropped:
                self.stats.dropped_outbox += dropped
                if time.monotonic() >= self._next_drop_warning:  # once a minute, not per message
                    self._next_drop_warning = time.monotonic() + 60
                    log.warning("MQTT outbox full (%d messages, %d bytes): dropping the oldest predictions; "
                                "%d dropped so far", self._outbox.depth, self._outbox.bytes,
                                self.stats.dropped_outbox)
        self._update_outbox_stats()

    def _event_messages(self, event: PredictionEvent) -> list[Message]:
        s, device = self.settings, self.settings.device_id
        payload = t.dumps(t.prediction_payload(device, event))
        out: list[Message] = []
        prediction = Message(self.topics.predictions(event.source_id), payload, qos=s.qos, droppable=True)
        if s.qos >= 1:
            out.append(prediction)
        else:
            self._send(Direct(prediction))
        if s.state_topics:
            per_class = t.counts(event)
            if per_class != self._last_counts.get(event.source_id):
                self._last_counts[event.source_id] = per_class
                state = Direct(Message(self.topics.state(event.source_id),
                                       t.dumps(t.state_payload(device, event, per_class)), qos=1, retain=True))
                self._state[event.source_id] = state
                self._send(state)
        if self._discovery is not None and event.source_id not in self._discovered:
            configs = self._discovery(event.source_id, event.result.class_names)
            self._discovered[event.source_id] = configs
            for topic, body in configs:
                self._send(Direct(Message(topic, body, qos=1, retain=True)))
        return out

    def _send(self, direct: Direct) -> None:
        client = self._client
        if not self._connected or client is None:
            return
        m = direct.message
        properties = None
        if direct.correlation_data is not None and self._protocol == "5":
            from paho.mqtt.packettypes import PacketTypes  # lazy: paho
            from paho.mqtt.properties import Properties  # lazy: paho

            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.CorrelationData = direct.correlation_data
        client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain, properties=properties)

    def _pump(self) -> None:
        """Hand outbox rows to paho in order while connected, keeping at most ``max_inflight`` unacked."""
        client = self._client
        if not self._connected or self._outbox is None or client is None:
            return
        room = self.settings.max_inflight - len(self._inflight)
        if room <= 0:
            return
        for stored in self._outbox.after(self._handed, room):
            m = stored.message
            info = client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)
            self._inflight[info.mid] = stored.seq
            self._handed = stored.seq

    def _tick(self) -> None:
        interval = self.settings.telemetry_interval_s
        now = time.monotonic()
        if not interval or not self._connected or now < self._next_telemetry or self._telemetry is None:
            return
        self._next_telemetry = now + interval
        try:
            body = {**t.envelope(self.settings.device_id), **self._telemetry(), "mqtt": self.snapshot()}
        except Exception:  # a telemetry source failing must not stop the bridge
            log.exception("telemetry failed")
            return
        self._send(Direct(Message(self.topics.telemetry, t.dumps(body), qos=0)))

    def _update_outbox_stats(self) -> None:
        if self._outbox is not None:
            self.stats.outbox_depth, self.stats.outbox_bytes = self._outbox.depth, self._outbox.bytes

    def snapshot(self) -> dict[str, Any]:
        s = self.stats
        return {"connected": s.connected, "protocol": s.protocol or None, "connects": s.connects,
                "published": s.published, "outbox_depth": s.outbox_depth, "outbox_bytes": s.outbox_bytes,
                "dropped": {"outbox_full": s.dropped_outbox, "handoff_full": s.dropped_handoff}}

    # ------------------------------------------------------------------ stopping

    def _shutdown(self) -> None:
        """Keep pumping until the outbox is empty or ``stop_flush_s`` is up, then say ``stopped``."""
        deadline = time.monotonic() + self.settings.stop_flush_s
        self._drain()
        while self._connected and time.monotonic() < deadline and (self._inflight or self._outbox_waiting()):
            self._io(0.05)
            self._drain()
            self._pump()
        if self._outbox_waiting() or self._inflight:
            log.warning("MQTT: stopping with %d message(s) in the outbox; they go on the next start",
                        self.stats.outbox_depth)
        client = self._client
        if client is not None and self._connected:
            info = client.publish(self.topics.status, t.STOPPED, qos=1, retain=True)
            end = time.monotonic() + 2.0
            while not info.is_published() and client.socket() is not None and time.monotonic() < end:
                self._io(0.05)
            self._phase = "idle"
            client.disconnect()
            end = time.monotonic() + 1.0
            while client.socket() is not None and time.monotonic() < end:
                self._io(0.05)
        self._drain(force=True)  # the last acknowledgements

    def _outbox_waiting(self) -> bool:
        return self._outbox is not None and self._outbox.depth > len(self._inflight) + len(self._acked)
