"""The MQTT source: one paho-mqtt client subscribed to every configured device.

Why paho's own network thread and not an asyncio client: the per-message cost of
this path sets the gateway's ceiling. Measured here, paho with `json.loads` alone
reaches about 13,400 messages/s and aiomqtt about 7,500. So paho's loop runs in
its thread, decodes each message right there and hands the rows to the journal
writer (thread-safe and non-blocking); nothing crosses into asyncio per
message. The asyncio side sees an `async with` lifetime and the health object.

Nothing lost: the gateway keeps a persistent session under a fixed client id and
subscribes with QoS 1, so the broker queues the devices' messages while the gateway
restarts. Messages are acknowledged by hand, and only once their records are
committed to the journal: a gateway killed between receiving and committing gets
them again. That is at-least-once; a redelivered message journals the same readings
again at the same device time, which the TSDB stores once and counters see as no
energy.

MQTT 3.1.1 by default: paho builds a properties object for every MQTT 5 packet, which
costs about a third of the ingest rate here. A 3.1.1 broker sends only a window of
unacknowledged messages (Mosquitto's `max_inflight_messages`, default 20), so when
the window fills the journal commits at once instead of waiting for its batch delay;
deploy/mosquitto/ raises the window anyway. With `version = "5"` the gateway asks for
a window of 65,535 (Receive Maximum).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.config import Device, MqttSettings
from gateway.decoders import decoder_class
from gateway.decoders.base import DecodeError, MqttDecoder
from gateway.journal import GroupCommitWriter, NewRow
from gateway.journal.schema import BADGE
from gateway.model import BadgeEvent, Reading, Record
from gateway.sources.base import SourceHealth

log = logging.getLogger(__name__)

#: How often decoders that need one (Victron Venus) get their keepalive published.
KEEPALIVE_EVERY_S = 30.0
_ROUTE_CACHE_MAX = 50_000
#: Unacknowledged messages after which the journal commits at once (see `_on_message`).
ACK_WINDOW = 16


@dataclass(frozen=True, slots=True)
class Route:
    topic_filter: str
    decoder: MqttDecoder
    device: Device


class Router:
    """Finds the decoder of a topic: by its first level, then by filter match; cached per topic."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = list(routes)
        self._by_first: dict[str, list[Route]] = {}
        self._wild: list[Route] = []
        for route in self.routes:
            first = route.topic_filter.split("/", 1)[0]
            if first in {"+", "#"}:
                self._wild.append(route)
            else:
                self._by_first.setdefault(first, []).append(route)
        self._cache: dict[str, Route | None] = {}

    def find(self, topic: str) -> Route | None:
        try:
            return self._cache[topic]
        except KeyError:
            pass
        candidates = self._by_first.get(topic.split("/", 1)[0], []) + self._wild
        found = next((r for r in candidates if paho.topic_matches_sub(r.topic_filter, topic)), None)
        if len(self._cache) >= _ROUTE_CACHE_MAX:
            self._cache.clear()
        self._cache[topic] = found
        return found


def to_rows(records: list[Record], keys: dict[str, str]) -> tuple[list[NewRow], int]:
    """Records -> journal rows under the configured device ids. Returns (rows, records of unknown devices).

    Built directly as tuples: this runs once per message on the hot path.
    """
    rows: list[NewRow] = []
    unknown = 0
    for rec in records:
        if type(rec) is Reading:
            device = keys.get(rec.device)
            if device is not None:
                rows.append((rec.ts, device, rec.metric, rec.value, None))
                continue
        elif isinstance(rec, BadgeEvent):
            device = keys.get(rec.reader)
            if device is not None:
                rows.append((rec.ts, device, BADGE, None, rec.badge_uid))
                continue
        unknown += 1
    return rows, unknown


_PUBACK = struct.Struct("!BBH")
_PUBACK_BYTE = 0x40


class BufferedClient(paho.Client):
    """paho's client, reading the socket in large chunks.

    paho reads every packet with at least three recv() calls (the command byte, the
    length bytes one by one, the body) and goes back to select() after each packet.
    Serving those small reads from one 256 KiB recv(), and draining what is buffered
    before returning to select(), is worth about 20 % of the ingest path's time here
    (bench/ingest.py). Only paho's two socket-reading methods are overridden; paho's
    tests of our pinned range are exercised by tests/sources/test_mqtt.py.
    """

    _cw_buf: bytes = b""
    _cw_pos: int = 0
    _cw_sock: object = None

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._cw_sock is not self._sock:  # a new connection: nothing buffered belongs to it
            self._cw_buf, self._cw_pos, self._cw_sock = b"", 0, self._sock
        if self._cw_pos >= len(self._cw_buf):
            data = super()._sock_recv(262_144)
            if not data:
                return data
            self._cw_buf, self._cw_pos = data, 0
        pos = self._cw_pos
        chunk = self._cw_buf[pos : pos + bufsize]
        self._cw_pos = pos + len(chunk)
        return chunk

    def ack_many(self, mids: Sequence[int]) -> None:
        """Acknowledge QoS 1 messages with one write and one wake-up of the network thread.

        paho's `ack()` queues each PUBACK as a packet of its own, wakes the network thread
        with a syscall and writes it with another: about 40 µs a message here, a third of
        the ingest path. A PUBACK is four bytes (MQTT 3.1.1, and MQTT 5 with success and no
        properties); the whole batch goes out as one buffer.
        """
        if not mids:
            return
        blob = b"".join(_PUBACK.pack(_PUBACK_BYTE, 2, mid) for mid in mids)
        packet = {"command": _PUBACK_BYTE, "mid": 0, "qos": 0, "pos": 0, "to_process": len(blob), "packet": blob}
        self._out_packet.append(packet | {"info": None})  # type: ignore[arg-type]
        if self._sockpairW is not None:
            with contextlib.suppress(BlockingIOError):
                self._sockpairW.send(b"0")
        self._call_socket_register_write()

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        rc = super().loop_read(max_packets)
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self._sock is not None and self._cw_pos < len(self._cw_buf):
            rc = super().loop_read(1)
        return rc


def _no_delay(_client: paho.Client, _userdata: Any, sock: Any) -> None:
    """Relay commands and acknowledgements are small single packets: send each at once.

    paho leaves Nagle's algorithm on, so a relay command written right after a badge's
    PUBACK waits for the broker's delayed ACK (40 ms on Linux): bench/badge_latency.py.
    """
    if isinstance(sock, socket.socket):  # ssl.SSLSocket included
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def build_routes(devices: Sequence[Device]) -> list[Route]:
    routes = []
    for dev in devices:
        if dev.is_serial:
            continue
        cls = decoder_class(dev.protocol)
        decoder = cls(**dev.options)
        assert isinstance(decoder, MqttDecoder)
        for topic_filter in decoder.topics(dev.prefix):
            routes.append(Route(topic_filter, decoder, dev))
    return routes


class MqttSource:
    """`async with MqttSource(settings, devices, writer, client_id=...) as source:` ingests until exit."""

    def __init__(
        self,
        settings: MqttSettings,
        devices: Sequence[Device],
        writer: GroupCommitWriter,
        *,
        client_id: str,
        clock: Callable[[], float] = time.time,
        will: tuple[str, str, int, bool] | None = None,
        on_connected: Callable[[], None] | None = None,
        handlers: dict[str, Callable[[str, bytes], object]] | None = None,
    ) -> None:
        """`will`: the gateway's last will (its availability topic); `on_connected`: called on
        every (re)connection; `handlers`: topics the gateway itself listens to (Home Assistant's
        birth message), handled before any decoder."""
        self.settings = settings
        self._will = will
        self._on_connected_hook = on_connected
        self._handlers = dict(handlers or {})
        self.writer = writer
        self.clock = clock
        self.health = SourceHealth(name="mqtt", kind="mqtt")
        self.router = Router(build_routes(devices))
        # Device key (as decoders report it) -> configured device id, per decoder.
        self._keys: dict[int, dict[str, str]] = {}
        for route in self.router.routes:
            assert route.device.prefix is not None
            self._keys.setdefault(id(route.decoder), {})[route.device.prefix] = route.device.id
        # (rows put so far, mid) of QoS 1 messages waiting for their commit, in arrival order.
        self._acks: deque[tuple[int, int]] = deque()
        self._ack_lock = threading.Lock()
        self.client = self._make_client(client_id)
        writer.add_listener(self._ack_committed)
        self._keepalive_task: asyncio.Task[None] | None = None
        self.device_online: dict[str, bool] = {}

    def _make_client(self, client_id: str) -> BufferedClient:
        s = self.settings
        if s.version == "5":
            client = BufferedClient(
                CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5, manual_ack=True
            )
        else:
            client = BufferedClient(
                CallbackAPIVersion.VERSION2,
                client_id=client_id,
                protocol=MQTTProtocolVersion.MQTTv311,
                clean_session=False,
                manual_ack=True,
            )
        if s.username:
            client.username_pw_set(s.username, s.password)
        if s.tls:
            client.tls_set(ca_certs=str(s.ca_file) if s.ca_file else None, cert_reqs=ssl.CERT_REQUIRED)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.max_queued_messages_set(10_000)
        if self._will is not None:
            client.will_set(*self._will)
        client.on_socket_open = _no_delay
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    # -- paho's network thread -------------------------------------------------------------

    def _on_connect(self, client: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self.health.set_connected(False, f"broker refused: {reason}")
            return
        with self._ack_lock:  # the broker redelivers what was not acknowledged on the old connection
            self._acks.clear()
        filters = sorted({r.topic_filter for r in self.router.routes})
        if filters:
            client.subscribe([(f, int(self.settings.qos)) for f in filters])
        if self._handlers:
            client.subscribe([(t, 1) for t in self._handlers])
        self.health.set_connected(True)
        self._send_keepalives(first=True)
        if self._on_connected_hook is not None:
            self._on_connected_hook()
        log.info("connected to %s:%s, %d subscriptions", self.settings.host, self.settings.port, len(filters))

    def _on_disconnect(self, _c: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.health.set_connected(False, f"disconnected: {reason}")

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        now = self.clock()
        health = self.health
        health.messages += 1
        health.last_message = now
        rows = self._decode(msg, now)
        if rows:
            health.records += len(rows)
            # Commit now rather than with the next batch when a badge is in (someone is waiting
            # at a machine) or when the broker's window of unacknowledged messages is nearly full
            # (Mosquitto sends a 3.1.1 client only `max_inflight_messages`, default 20, at a time).
            urgent = rows[0][2] == BADGE or len(self._acks) >= ACK_WINDOW
            position = self.writer.put_rows(rows, urgent=urgent)
            if msg.qos:
                with self._ack_lock:
                    self._acks.append((position, msg.mid))
        elif msg.qos:
            self.client.ack(msg.mid, msg.qos)  # nothing to keep: acknowledged at once

    def _decode(self, msg: paho.MQTTMessage, now: float) -> list[NewRow]:
        health = self.health
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            health.rejected["bad_topic"] += 1
            return []
        handler = self._handlers.get(topic)
        if handler is not None:
            handler(topic, bytes(msg.payload))
            return []
        route = self.router.find(topic)
        if route is None:
            health.rejected["unrouted_topic"] += 1
            return []
        try:
            records = route.decoder.decode(topic, bytes(msg.payload), now)
        except DecodeError as exc:
            health.rejected[exc.reason] += 1
            return []
        except Exception:  # a decoder bug must not stop ingestion; it is counted and logged
            log.exception("decoder %s failed on %s", route.device.protocol, topic)
            health.rejected["decoder_error"] += 1
            return []
        if not records:
            return []
        rows, unknown = to_rows(records, self._keys[id(route.decoder)])
        if unknown:
            health.rejected["unconfigured_device"] += unknown
        return rows

    def _ack_committed(self, _seq: int) -> None:
        """Writer thread, after each commit: acknowledge the messages whose rows are now durable."""
        done = self.writer.committed_rows
        mids = []
        with self._ack_lock:
            acks = self._acks
            while acks and acks[0][0] <= done:
                mids.append(acks.popleft()[1])
        self.client.ack_many(mids)

    def _send_keepalives(self, *, first: bool = False) -> None:
        for route in {id(r.decoder): r for r in self.router.routes}.values():
            assert route.device.prefix is not None
            for topic, payload in route.decoder.keepalive(route.device.prefix):
                self.client.publish(topic, payload, qos=0, retain=False)

    # -- asyncio side ------------------------------------------------------------------------

    async def __aenter__(self) -> MqttSource:
        s = self.settings
        if s.version == "5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = s.session_expiry_s
            props.ReceiveMaximum = 65_535
            self.client.connect_async(s.host, s.port, keepalive=s.keepalive_s, clean_start=False, properties=props)
        else:
            self.client.connect_async(s.host, s.port, keepalive=s.keepalive_s)
        self.client.loop_start()
        self._keepalive_task = asyncio.create_task(self._keepalive_loop(), name="mqtt-keepalive")
        return self

    async def _keepalive_loop(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_EVERY_S)
            if self.health.connected:
                self._send_keepalives()

    async def wait_connected(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.health.connected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no MQTT connection to {self.settings.host}:{self.settings.port}")
            await asyncio.sleep(0.02)

    def publish(self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain)

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
        await asyncio.to_thread(self._stop)

    def _stop(self) -> None:
        self.writer.remove_listener(self._ack_committed)
        self.client.disconnect()
        self.client.loop_stop()
        self.health.set_connected(False, "stopped")


__all__ = ["MqttSource", "Route", "Router", "build_routes"]
