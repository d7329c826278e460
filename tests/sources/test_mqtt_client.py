"""`BufferedClient` reads what paho reads, in the same order, however the bytes arrive.

Two set-ups, each comparing the batch reader (`on_publishes`) with paho's own reading:

- the broker's end of a real TCP connection played by the test, so that the bytes
  reach the client split exactly where the test says (every byte boundary of a stream
  of PUBLISH packets encoded by paho, mixed with packets paho must handle itself);
- a real Mosquitto, for MQTT 3.1.1 and 5, with QoS 0/1/2, retained messages, MQTT 5
  properties and payloads larger than one read.
"""

from __future__ import annotations

import fcntl
import itertools
import socket
import struct
import termios
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as paho
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.sources.mqtt import BufferedClient
from gateway.sources.mqtt_packets import Publish
from tests.services import Mosquitto
from tests.sources.test_mqtt_packets import VERSIONS, PahoEncoder, Spec

Got = tuple[bytes, bytes, int, int]
CONNACK = {MQTTProtocolVersion.MQTTv311: b"\x20\x02\x00\x00", MQTTProtocolVersion.MQTTv5: b"\x20\x03\x00\x00\x00"}


class Receiver:
    """A BufferedClient that records every message it delivers: batched (`fast`) or through paho only."""

    def __init__(self, version: MQTTProtocolVersion, *, fast: bool, client_id: str = "") -> None:
        clean_session = None if version == MQTTProtocolVersion.MQTTv5 else True  # MQTT 5 has no such flag
        self.client = BufferedClient(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=version,
            clean_session=clean_session,
            manual_ack=True,
        )
        self.got: list[Got] = []
        self.batches = 0
        self.client.on_message = self._on_message
        if fast:
            self.client.on_publishes = self._on_publishes

    def _on_message(self, _c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        self.got.append((msg._topic, bytes(msg.payload), msg.qos, msg.mid if msg.qos else 0))

    def _on_publishes(self, batch: list[Publish]) -> None:
        self.batches += 1
        self.got.extend(batch)


class ScriptedConnection:
    """The broker's end of one TCP connection, played by the test; the client's loop is driven by hand."""

    def __init__(self, receiver: Receiver, version: MQTTProtocolVersion) -> None:
        self.client = receiver.client
        with socket.create_server(("127.0.0.1", 0)) as listener:
            self.client.connect("127.0.0.1", listener.getsockname()[1], keepalive=600)
            self.peer, _ = listener.accept()
        self.peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # each piece is sent at once
        assert self.peer.recv(4096)[0] == 0x10  # CONNECT
        assert self.feed(CONNACK[version]) == MQTTErrorCode.MQTT_ERR_SUCCESS
        assert self.client.is_connected()

    def feed(self, data: bytes) -> MQTTErrorCode:
        """Send `data` in one piece, wait until all of it is in the client's socket, let the client read it all.

        Each piece is read on its own: the client has read everything before when the
        next piece is sent (tests keep pieces well under the socket's buffer).
        """
        sock = self.client.socket()
        if sock is None:  # the client has closed the connection (a protocol error)
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        self.peer.sendall(data)
        deadline = time.monotonic() + 5
        while _unread(sock) < len(data):
            assert time.monotonic() < deadline, "the bytes did not arrive"
            time.sleep(0.0005)
        while sock is not None and _unread(sock):
            rc = self.client.loop_read()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return rc
            sock = self.client.socket()
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def close(self) -> None:
        self.client._sock_close()
        self.peer.close()


def _unread(sock: socket.socket | Any) -> int:
    """Bytes received by the kernel and not read yet."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]  # type: ignore[no-any-return]


@pytest.fixture(params=sorted(VERSIONS))
def version(request: pytest.FixtureRequest) -> MQTTProtocolVersion:
    return VERSIONS[request.param]


def stream_of(version: MQTTProtocolVersion, specs: list[Spec]) -> tuple[bytes, list[Got]]:
    """The packets of `specs` as paho encodes them (a QoS 2 message with its PUBREL), and what they deliver."""
    encoder = PahoEncoder(version)
    try:
        parts = []
        for spec in specs:
            parts.append(encoder.encode(spec))
            if spec.qos == 2:
                parts.append(b"\x62\x02" + spec.mid.to_bytes(2, "big"))  # PUBREL: paho delivers on it
        return b"".join(parts), [spec.expected() for spec in specs]
    finally:
        encoder.close()


MIXED = [
    Spec(b"shellyplusplugs-000001/events/rpc", b'{"method":"NotifyStatus","params":{"ts":1.5}}', 1, 1),
    Spec(b"plug/online", b"true", 0, 0, retain=True),
    Spec(b"plug/status/switch:0", b'{"apower":12.5}', 1, 2, dup=True),
    Spec(b"plug/qos2", b"exactly once", 2, 3),
    Spec(b"plug/props", b"with properties", 1, 4, props="application/json"),
    Spec(b"caf\xc3\xa9/\xff", b"", 1, 5),  # a topic that is not UTF-8 is delivered as it came
    Spec(b"plug/longer", bytes(range(256)) + b"two bytes of remaining length", 1, 6),
    Spec(b"plug/last", b"0", 0, 0),
]
OTHERS = b"\xd0\x00" + b"\x40\x02\x12\x34"  # PINGRESP, a PUBACK for a message the client never sent


def test_a_stream_split_at_every_byte_delivers_every_message_once_in_order(version: MQTTProtocolVersion) -> None:
    data, expected = stream_of(version, MIXED)
    data = OTHERS + data + OTHERS
    fast = Receiver(version, fast=True)
    conn = ScriptedConnection(fast, version)
    try:
        for cut in range(len(data) + 1):
            fast.got.clear()
            assert conn.feed(data[:cut]) == MQTTErrorCode.MQTT_ERR_SUCCESS
            assert conn.feed(data[cut:]) == MQTTErrorCode.MQTT_ERR_SUCCESS
            assert fast.got == expected, f"split at byte {cut}"
            assert fast.client._in_packet["command"] == 0
        assert fast.batches > 0
    finally:
        conn.close()


def test_without_on_publishes_every_packet_goes_through_paho(version: MQTTProtocolVersion) -> None:
    data, expected = stream_of(version, MIXED)
    plain = Receiver(version, fast=False)
    conn = ScriptedConnection(plain, version)
    try:
        for cut in (0, 1, len(data) // 2, len(data) - 1):
            plain.got.clear()
            conn.feed(data[:cut])
            conn.feed(data[cut:])
            assert plain.got == expected
        assert plain.batches == 0
    finally:
        conn.close()


specs = st.builds(
    Spec,
    topic=st.binary(min_size=1, max_size=30),
    payload=st.binary(max_size=60),
    qos=st.sampled_from([0, 1, 1, 2]),
    mid=st.integers(1, 65_535),
    retain=st.booleans(),
    dup=st.booleans(),
    props=st.none() | st.sampled_from(["", "text/plain"]),
)


@settings(max_examples=150, deadline=None)
@given(
    batch=st.lists(specs, min_size=1, max_size=12),
    cuts=st.lists(st.integers(0, 2000), max_size=6),
    garbage=st.none() | st.binary(min_size=1, max_size=12),
)
def test_any_stream_split_anywhere_reads_as_paho_reads_it(
    batch: list[Spec], cuts: list[int], garbage: bytes | None
) -> None:
    """Differential: the batch reader and paho alone deliver the same messages and fail the same way."""
    for version in VERSIONS.values():
        # Unique packet ids for QoS 2: paho keeps one message per id until its PUBREL.
        batch = [Spec(s.topic, s.payload, s.qos, k + 1, s.retain, s.dup, s.props) for k, s in enumerate(batch)]
        data, _expected = stream_of(version, batch)
        if garbage is not None:  # bytes that may be anything, a protocol error included
            data = data[: len(data) // 2] + garbage + data[len(data) // 2 :]
        bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
        outcomes = []
        for fast in (True, False):
            receiver = Receiver(version, fast=fast)
            conn = ScriptedConnection(receiver, version)
            try:
                rcs = [conn.feed(data[a:b]) for a, b in itertools.pairwise(bounds)]
                failed = next((rc for rc in rcs if rc != MQTTErrorCode.MQTT_ERR_SUCCESS), None)
                # (after a failure the next pieces find the connection closed: MQTT_ERR_NO_CONN)
                outcomes.append((receiver.got, failed, receiver.client.is_connected()))
            finally:
                conn.close()
        assert outcomes[0] == outcomes[1]
        if garbage is None:
            assert outcomes[0] == ([s.expected() for s in batch], None, True)


# -- against a real Mosquitto ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    mq = Mosquitto(tmp_path_factory.mktemp("mqtt-client")).start()
    yield mq
    mq.stop()


def publish_mix(broker: Mosquitto, version: MQTTProtocolVersion, prefix: str) -> Counter[Got]:
    """Publish a mix of messages; returns what a QoS 2 subscriber gets (topic, payload, QoS, -)."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{prefix}-devices", protocol=version)
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    sent: Counter[Got] = Counter()
    infos = []
    for k in range(600):
        qos = k % 3
        topic = f"{prefix}/dev{k % 7}/status"
        payload = (f'{{"n":{k}}}' * (1 + k % 5)).encode()
        properties = None
        if version == MQTTProtocolVersion.MQTTv5 and k % 4 == 0:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.UserProperty = ("k", str(k))
        infos.append(client.publish(topic, payload, qos=qos, retain=k % 50 == 0, properties=properties))
        sent[(topic.encode(), payload, qos, 0)] += 1
    big = bytes(range(256)) * 2000  # 512 kB: more than one read of the socket
    infos.append(client.publish(f"{prefix}/big", big, qos=1))
    sent[(f"{prefix}/big".encode(), big, 1, 0)] += 1
    for info in infos:
        info.wait_for_publish(10)
    client.loop_stop()
    client.disconnect()
    return sent


@pytest.mark.parametrize("name", sorted(VERSIONS))
def test_against_mosquitto_the_batch_reader_gets_what_paho_gets(broker: Mosquitto, name: str) -> None:
    version = VERSIONS[name]
    prefix = f"mix{name.replace('.', '')}"
    receivers = [Receiver(version, fast=fast, client_id=f"{prefix}-{fast}") for fast in (True, False)]
    for r in receivers:
        r.client.on_message = _acking(r)
        if r.client.on_publishes is not None:
            r.client.on_publishes = _acking_batches(r)
        r.client.connect("127.0.0.1", broker.port)
        r.client.subscribe(f"{prefix}/#", 2)
        r.client.loop_start()
    try:
        time.sleep(0.5)
        sent = publish_mix(broker, version, prefix)
        deadline = time.monotonic() + 20
        while any(len(r.got) < sent.total() for r in receivers) and time.monotonic() < deadline:
            time.sleep(0.05)
        fast, plain = ([(t, p, q, 0) for t, p, q, _ in r.got] for r in receivers)
        assert Counter(fast) == Counter(plain) == sent
        assert receivers[0].batches > 0
    finally:
        for r in receivers:
            r.client.loop_stop()
            r.client.disconnect()


def _acking(r: Receiver) -> paho.CallbackOnMessage:
    def on_message(client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        r._on_message(client, userdata, msg)
        client.ack(msg.mid, msg.qos)

    return on_message


def _acking_batches(r: Receiver) -> Callable[[list[Publish]], None]:
    def on_publishes(batch: list[Publish]) -> None:
        r._on_publishes(batch)
        assert isinstance(r.client, BufferedClient)
        r.client.ack_many([mid for _t, _p, qos, mid in batch if qos == 1])

    return on_publishes
