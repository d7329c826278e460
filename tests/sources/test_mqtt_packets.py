"""`take_publishes` against PUBLISH packets as paho-mqtt itself encodes and decodes them.

The packets come from paho's own `_send_publish` (captured where paho queues them for
the socket), for MQTT 3.1.1 and 5, QoS 0/1/2, retain and DUP flags, with and without
MQTT 5 properties, and every take is checked against paho's `decode_publish`.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass

import paho.mqtt.client as paho
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt import _packet
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.sources.mqtt_packets import take_publishes


@dataclass(frozen=True)
class Spec:
    """One PUBLISH as a test wants it; `props` is None (no properties) or a content type."""

    topic: bytes
    payload: bytes
    qos: int
    mid: int
    retain: bool = False
    dup: bool = False
    props: str | None = None

    def takeable(self, mqtt5: bool) -> bool:
        return self.qos < 2 and not (mqtt5 and self.props)

    def expected(self) -> tuple[bytes, bytes, int, int]:
        return (self.topic, self.payload, self.qos, self.mid if self.qos else 0)


class PahoEncoder(paho.Client):
    """paho's client used only for its encoder: `_send_publish` builds the packet, we keep its bytes."""

    def __init__(self, version: MQTTProtocolVersion) -> None:
        super().__init__(CallbackAPIVersion.VERSION2, protocol=version)
        # paho encodes only on a connection; the packet is captured before it reaches this socket.
        self._pair = socket.socketpair()
        self._sock = self._pair[0]
        self.captured: list[bytes] = []

    def _packet_queue(
        self, command: int, packet: bytes | bytearray, mid: int, qos: int, info: object = None
    ) -> MQTTErrorCode:
        self.captured.append(bytes(packet))
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def encode(self, spec: Spec) -> bytes:
        properties = None
        if spec.props is not None:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if spec.props:
                properties.ContentType = spec.props
                properties.UserProperty = ("site", "lab")
        self.captured.clear()
        rc = self._send_publish(
            spec.mid, spec.topic, spec.payload, spec.qos, spec.retain, spec.dup, properties=properties
        )
        assert rc == MQTTErrorCode.MQTT_ERR_SUCCESS
        (packet,) = self.captured
        return packet

    def close(self) -> None:
        self._sock = None
        for s in self._pair:
            s.close()


VERSIONS = {"3.1.1": MQTTProtocolVersion.MQTTv311, "5": MQTTProtocolVersion.MQTTv5}


@pytest.fixture(scope="module", params=sorted(VERSIONS))
def encoder(request: pytest.FixtureRequest) -> Iterator[PahoEncoder]:
    enc = PahoEncoder(VERSIONS[request.param])
    yield enc
    enc.close()


def is5(encoder: PahoEncoder) -> bool:
    return encoder._protocol == MQTTProtocolVersion.MQTTv5


def paho_decodes(encoder: PahoEncoder, packet: bytes) -> tuple[bytes, bytes, int, int]:
    """What paho reads from one whole packet: split the fixed header off as paho's reader does."""
    pos = 1
    while packet[pos] & 0x80:
        pos += 1
    found = _packet.decode_publish(packet[0], packet[pos + 1 :], encoder._protocol)
    return (found.topic, bytes(found.payload), found.qos, found.mid)


topics = st.text(min_size=1, max_size=70).map(str.encode) | st.binary(min_size=1, max_size=300)
payloads = st.binary(max_size=300) | st.integers(0, 20_000).map(lambda n: bytes(range(256)) * (n // 256) + b"x")
specs = st.builds(
    Spec,
    topic=topics,
    payload=payloads,
    qos=st.sampled_from([0, 1, 1, 2]),
    mid=st.integers(1, 65_535),
    retain=st.booleans(),
    dup=st.booleans(),
    props=st.none() | st.sampled_from(["", "application/json"]),
)


def test_a_shelly_notification_reads_as_paho_reads_it(encoder: PahoEncoder) -> None:
    spec = Spec(b"shellyplusplugs-e86beae1a2b3/events/rpc", b'{"method":"NotifyStatus"}', 1, 4711)
    packet = encoder.encode(spec)
    taken, stop = take_publishes(packet, 0, is5(encoder))
    assert taken == [spec.expected()] == [paho_decodes(encoder, packet)]
    assert stop == len(packet)


@settings(max_examples=300, deadline=None)
@given(batch=st.lists(specs, min_size=1, max_size=8), lead=st.binary(max_size=5))
def test_takes_the_leading_run_of_plain_publishes_exactly_as_paho_decodes_them(
    encoder: PahoEncoder, batch: list[Spec], lead: bytes
) -> None:
    packets = [encoder.encode(spec) for spec in batch]
    buf = lead + b"".join(packets)
    taken, stop = take_publishes(buf, len(lead), is5(encoder))
    run = 0
    while run < len(batch) and batch[run].takeable(is5(encoder)):
        run += 1
    assert taken == [spec.expected() for spec in batch[:run]]
    assert taken == [paho_decodes(encoder, p) for p in packets[:run]]
    assert stop == len(lead) + sum(map(len, packets[:run]))


@settings(max_examples=60, deadline=None)
@given(
    batch=st.lists(
        st.builds(
            Spec, topic=topics, payload=st.binary(max_size=40), qos=st.integers(0, 1), mid=st.integers(1, 65_535)
        ),
        min_size=1,
        max_size=5,
    )
)
def test_a_buffer_cut_at_any_byte_yields_the_whole_packets_before_the_cut(
    encoder: PahoEncoder, batch: list[Spec]
) -> None:
    packets = [encoder.encode(spec) for spec in batch]
    buf = b"".join(packets)
    ends = [sum(map(len, packets[: i + 1])) for i in range(len(packets))]
    for cut in range(len(buf) + 1):
        whole = sum(1 for end in ends if end <= cut)
        taken, stop = take_publishes(buf[:cut], 0, is5(encoder))
        assert taken == [spec.expected() for spec in batch[:whole]], cut
        assert stop == (ends[whole - 1] if whole else 0)


@pytest.mark.parametrize("size", [0, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152])
def test_every_width_of_the_remaining_length(encoder: PahoEncoder, size: int) -> None:
    spec = Spec(b"t", b"\x00" * size, 0, 0)
    packet = encoder.encode(spec)
    taken, stop = take_publishes(packet + b"\xd0\x00", 0, is5(encoder))
    assert taken == [spec.expected()]
    assert stop == len(packet)


@pytest.mark.parametrize(
    "buf",
    [
        b"\x20\x02\x00\x00",  # CONNACK
        b"\xd0\x00",  # PINGRESP
        b"\x40\x02\x00\x07",  # PUBACK
        b"\x90\x03\x00\x01\x01",  # SUBACK
        b"\x34\x07\x00\x01t\x00\x01ab",  # QoS 2
        b"\x36\x07\x00\x01t\x00\x01ab",  # QoS 3: no such thing
        b"\x30\x85\x80\x80\x80\x00\x00\x01tab",  # a remaining length (5) in five bytes
        b"\x30\x05\x00\x09topic",  # the topic runs past the packet
        b"\x30\x01\x00",  # too short for a topic length
        b"\x30\x04\x00\x00ab",  # an empty topic
        b"\x32\x03\x00\x01t",  # QoS 1 without a packet id
        b"\x32\x06\x00\x01t\x00\x00a",  # QoS 1 with packet id 0
        b"\x30",  # one byte of a packet
        b"\x30\x80",  # a remaining length cut short
        b"\x30\x09\x00\x01t",  # the rest is still in the socket
    ],
)
def test_what_it_leaves_to_paho(buf: bytes) -> None:
    for mqtt5 in (False, True):
        assert take_publishes(buf, 0, mqtt5) == ([], 0)
        assert take_publishes(b"\x30\x03\x00\x01t" + buf, 0, mqtt5)[1] == (0 if mqtt5 else 5)


def test_mqtt5_properties_go_to_paho_and_an_empty_list_does_not() -> None:
    encoder = PahoEncoder(MQTTProtocolVersion.MQTTv5)
    plain = encoder.encode(Spec(b"a", b"1", 1, 1, props=""))
    with_props = encoder.encode(Spec(b"a", b"2", 1, 2, props="application/json"))
    encoder.close()
    assert take_publishes(plain + with_props + plain, 0, True) == ([(b"a", b"1", 1, 1)], len(plain))
    assert take_publishes(with_props, 0, True) == ([], 0)


@settings(max_examples=500, deadline=None)
@given(buf=st.binary(max_size=200), pos=st.integers(0, 10), mqtt5=st.booleans())
def test_arbitrary_bytes_never_raise_and_what_is_taken_is_reread_the_same(buf: bytes, pos: int, mqtt5: bool) -> None:
    pos = min(pos, len(buf))
    taken, stop = take_publishes(buf, pos, mqtt5)
    assert pos <= stop <= len(buf)
    assert (stop > pos) == bool(taken)
    assert take_publishes(buf[:stop], pos, mqtt5) == (taken, stop)
    for topic, _payload, qos, mid in taken:
        assert topic and qos in (0, 1) and (mid > 0) == (qos == 1)
