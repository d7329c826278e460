"""The MQTT source: one paho-mqtt client subscribed to every configured device.

Why paho's own network thread and not an asyncio client: the per-message cost of
this path sets the gateway's ceiling. Measured here, paho with `json.loads` alone
reaches about 13,400 messages/s and aiomqtt about 7,500. So paho's loop runs in
its thread, decodes each message right there and hands the rows to the journal
writer (thread-safe and non-blocking); nothing crosses into asyncio per
message. The asyncio side sees an `async with` lifetime and the health object.

paho's per-packet machinery (a read state machine, `MQTTMessage` objects, callback
dispatch) then cost more than everything else the gateway does with a message, so
`BufferedClient` reads the plain QoS 0/1 PUBLISH packets of each socket read in one
loop (`gateway.sources.mqtt_packets`) and `_ingest` takes them as a batch: one
`put_rows` and one entry of acknowledgements per read. paho still does everything
else (connection, subscriptions, keepalive, reconnects, the will, our publishes,
any packet the loop does not take). bench/ingest.py: about 21 µs of gateway CPU per
message instead of 56, and 30,000 messages/s end to end instead of 14,000.

Nothing lost: the gateway keeps a persistent session under a fixed client id and
subscribes with QoS 1, so the broker queues the devices' messages while the gateway
restarts. Messages are acknowledged by hand, and only once their records are
committed to the journal: a gateway killed between receiving and committing gets
them again. That is at-least-once; a redelivered message journals the same readings
again at the same device time, which the TSDB stores once and counters see as no
energy.

MQTT 3.1.1 by default. With MQTT 5 the batch reader takes PUBLISH packets without
properties too (the usual case, as fast as 3.1.1); one with properties goes through
paho, which builds a properties object for it. A 3.1.1 broker sends only a window of
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
from gateway.sources.mqtt_packets import Publish, take_publishes

log = logging.getLogger(__name__)

#: How often decoders that need one (Victron Venus) get their keepalive published.
KEEPALIVE_EVERY_S = 30.0
_ROUTE_CACHE_MAX = 50_000
#: Unacknowledged messages after which the journal commits at once (see `_ingest`).
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


#: Where one topic's messages go: (topic, route, device keys of its decoder, the gateway's own handler).
_Target = tuple[str, Route | None, dict[str, str], Callable[[str, bytes], object] | None]


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


#: Bytes asked of each recv(): a few thousand messages of a burst.
_READ_SIZE = 262_144
_PUBACK = struct.Struct("!BBH")
_PUBACK_BYTE = 0x40


class BufferedClient(paho.Client):
    """paho's client, reading the socket in large chunks and PUBLISH packets in batches.

    paho reads every packet with at least three recv() calls (the command byte, the
    length bytes one by one, the body) and goes back to select() after each packet;
    then it builds a `PublishPacket` and an `MQTTMessage` and dispatches a callback,
    more Python per message than the gateway's whole decoding and journaling.

    Here the socket is read 256 KiB at a time. With `on_publishes` set, the complete
    QoS 0/1 PUBLISH packets in the buffer are read in one loop (`take_publishes`) and
    handed over as one batch; every other packet (CONNACK, SUBACK, PINGRESP, PUBACK of
    our own publishes, QoS 2, MQTT 5 PUBLISH with properties, the incomplete packet at
    the end of a read) goes through paho's own reading and handling, one at a time, in
    arrival order. Without `on_publishes`, every packet goes through paho and
    `on_message`, still served from the buffer.

    The batch reader relies on paho internals (`_in_packet`, `_packet_read`,
    `_loop_rc_handle`, `_msgtime_mutex`, `_in_callback_mutex`), as `ack_many` does:
    tests/sources/test_mqtt_client.py checks both modes against paho's own reading, over
    a connection whose bytes the test splits anywhere and against a real Mosquitto, so a
    paho release that changes them fails there, not in production. The batch hands over
    topic, payload, QoS and packet id; the DUP and RETAIN flags are not passed on.
    """

    _cw_buf: bytes = b""
    _cw_pos: int = 0
    _cw_sock: object = None
    #: Called on paho's network thread with the PUBLISH packets read in one go, in arrival order.
    on_publishes: Callable[[list[Publish]], None] | None = None

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._cw_sock is not self._sock:  # a new connection: nothing buffered belongs to it
            self._cw_buf, self._cw_pos, self._cw_sock = b"", 0, self._sock
        if self._cw_pos >= len(self._cw_buf):
            data = super()._sock_recv(_READ_SIZE)
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
        if self.on_publishes is None:
            rc = super().loop_read(max_packets)
            while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self._sock is not None and self._cw_pos < len(self._cw_buf):
                rc = super().loop_read(1)
            return rc
        return self._read_batches(self.on_publishes)

    def _read_batches(self, on_publishes: Callable[[list[Publish]], None]) -> MQTTErrorCode:
        """Everything buffered plus one read from the socket: PUBLISH packets in batches, the rest via paho."""
        mqtt5 = self._protocol == MQTTProtocolVersion.MQTTv5
        received = False
        while True:
            sock = self._sock
            if sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            if self._cw_sock is not sock:
                self._cw_buf, self._cw_pos, self._cw_sock = b"", 0, sock
            if self._in_packet["command"] == 0:  # paho is not in the middle of a packet
                buf = self._cw_buf
                if self._cw_pos >= len(buf):
                    if received:
                        return MQTTErrorCode.MQTT_ERR_SUCCESS  # back to select(): acknowledgements go out
                    rc = self._fill()
                    if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                        return MQTTErrorCode.MQTT_ERR_SUCCESS
                    if rc:
                        return self._loop_rc_handle(rc)
                    received = True
                    continue
                batch, pos = take_publishes(buf, self._cw_pos, mqtt5)
                if batch:
                    self._cw_pos = pos
                    with self._in_callback_mutex:
                        on_publishes(batch)
                    continue
            # One packet through paho: one it was reading already, or one the batch reader does not take.
            rc = self._packet_read()
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            if rc:
                return self._loop_rc_handle(rc)

    def _fill(self) -> MQTTErrorCode:
        """One read from the socket into the buffer, with the outcomes paho's own reading gives."""
        try:
            data = paho.Client._sock_recv(self, _READ_SIZE)
        except BlockingIOError:
            return MQTTErrorCode.MQTT_ERR_AGAIN
        except OSError as err:  # TimeoutError, ConnectionError, the socket gone
            log.info("MQTT connection lost while reading: %s", err)
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        if not data:
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        self._cw_buf, self._cw_pos = data, 0
        with self._msgtime_mutex:  # the keepalive sees the broker alive
            self._last_bytes_received = paho.time_func()
        return MQTTErrorCode.MQTT_ERR_SUCCESS


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
        # (rows put so far, mids) of QoS 1 messages waiting for their commit, in arrival order.
        self._acks: deque[tuple[int, list[int]]] = deque()
        self._unacked = 0  # mids in _acks
        self._ack_lock = threading.Lock()
        # Topic as received -> (topic, route, device keys, handler); bounded like the router's cache.
        self._targets: dict[bytes, _Target] = {}
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
        client.on_publishes = self._ingest
        return client

    # -- paho's network thread -------------------------------------------------------------

    def _on_connect(self, client: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self.health.set_connected(False, f"broker refused: {reason}")
            return
        with self._ack_lock:  # the broker redelivers what was not acknowledged on the old connection
            self._acks.clear()
            self._unacked = 0
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
        """A PUBLISH that paho read itself (see `BufferedClient`): ingested as a batch of one."""
        if msg.qos == 2:  # paho has sent PUBREC already; PUBCOMP only ends the handshake
            self._ingest([(msg._topic, bytes(msg.payload), 0, 0)])
            self.client.ack(msg.mid, 2)
        else:
            self._ingest([(msg._topic, bytes(msg.payload), msg.qos, msg.mid)])

    def _ingest(self, batch: list[Publish]) -> None:
        """paho's network thread: decode a batch of messages, queue their rows, note their acknowledgements.

        All rows of the batch go to the journal writer in one `put_rows`, and the batch's
        QoS 1 messages are acknowledged together once that position is committed; a message
        that yields no rows (rejected, or nothing we keep) is acknowledged in its turn, so
        PUBACKs go out in the order the messages came, as MQTT asks.
        """
        now = self.clock()
        rows: list[NewRow] = []
        mids: list[int] = []
        decode = self._decode
        for topic, payload, qos, mid in batch:
            found = decode(topic, payload, now)
            if found:
                rows += found
            if qos:
                mids.append(mid)
        health = self.health
        health.messages += len(batch)
        health.last_message = now
        health.records += len(rows)
        # Commit now rather than with the next batch when a badge is in (someone is waiting at a
        # machine) or when the broker's window of unacknowledged messages is nearly full
        # (Mosquitto sends a 3.1.1 client only `max_inflight_messages`, default 20, at a time).
        with self._ack_lock:
            urgent = self._unacked + len(mids) >= ACK_WINDOW or any(row[2] == BADGE for row in rows)
            position = self.writer.put_rows(rows, urgent=urgent)
            if mids:
                self._acks.append((position, mids))
                self._unacked += len(mids)
                if position <= self.writer.committed_rows:  # nothing of it waits for a commit
                    self._ack_durable()

    def _decode(self, topic_bytes: bytes, payload: bytes, now: float) -> list[NewRow] | None:
        """Journal rows of one message; None (counted by reason) when it yields none."""
        health = self.health
        target = self._targets.get(topic_bytes)
        if target is None:
            try:
                topic = topic_bytes.decode()
            except UnicodeDecodeError:
                health.rejected["bad_topic"] += 1
                return None
            target = self._target(topic)
            if len(self._targets) >= _ROUTE_CACHE_MAX:
                self._targets.clear()
            self._targets[topic_bytes] = target
        topic, route, keys, handler = target
        if handler is not None:
            handler(topic, payload)
            return None
        if route is None:
            health.rejected["unrouted_topic"] += 1
            return None
        try:
            records = route.decoder.decode(topic, payload, now)
        except DecodeError as exc:
            health.rejected[exc.reason] += 1
            return None
        except Exception:  # a decoder bug must not stop ingestion; it is counted and logged
            log.exception("decoder %s failed on %s", route.device.protocol, topic)
            health.rejected["decoder_error"] += 1
            return None
        if not records:
            return None
        rows, unknown = to_rows(records, keys)
        if unknown:
            health.rejected["unconfigured_device"] += unknown
        return rows

    def _target(self, topic: str) -> _Target:
        """Where a topic's messages go: one of the gateway's own handlers, else a decoder (or nowhere)."""
        handler = self._handlers.get(topic)
        route = None if handler is not None else self.router.find(topic)
        keys = self._keys[id(route.decoder)] if route is not None else {}
        return topic, route, keys, handler

    def _ack_committed(self, _seq: int) -> None:
        """Writer thread, after each commit: acknowledge the messages whose rows are now durable."""
        with self._ack_lock:
            self._ack_durable()

    def _ack_durable(self) -> None:
        """Acknowledge, in arrival order, every message whose rows are committed. Holds `_ack_lock`.

        The PUBACKs are queued under the lock too, so the network thread and the writer
        thread cannot put them out of order.
        """
        done = self.writer.committed_rows
        acks = self._acks
        mids: list[int] = []
        while acks and acks[0][0] <= done:
            mids += acks.popleft()[1]
        if mids:
            self._unacked -= len(mids)
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
