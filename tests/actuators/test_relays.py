"""Relay commands: exact messages per protocol, then the round trip through a real Mosquitto.

The round trip: the actuator publishes through the gateway's own MQTT source, a
simulated device answers in its real format, and the project's decoder turns the
answer into a `relay_on` reading in the journal under the configured device id,
which is what the domain takes as the confirmation.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.actuators import (
    OutgoingMessage,
    RelayActuator,
    RpcReply,
    RpcReplyError,
    SentCommand,
    UnknownRelay,
    parse_rpc_reply,
    relay_messages,
    rpc_reply_topic,
    split_channel,
)
from gateway.config import Device, MqttSettings
from gateway.decoders import decoder_class
from gateway.decoders.base import MqttDecoder
from gateway.demo.devices import ShellyPlusPlugS
from gateway.demo.physics import MACHINES, SiteModel, SiteSettings
from gateway.journal import GroupCommitWriter, Journal
from gateway.model import Reading
from gateway.sources.mqtt import MqttSource
from tests.services import Mosquitto

GW = "commonwatt-lab"
GEN2 = "shellyplus2pm-a8032ab12345"
GEN1 = "shellyplug-s-C45BBE"
TASMOTA = "tasmota_A1B2C3"
NODE = "commonwatt/cnc"
PLUG = MACHINES[0].prefix  # the demo's Shelly Plus Plug S in front of the laser


def build(protocol: str, prefix: str, on: bool, **kw: Any) -> list[OutgoingMessage]:
    kw.setdefault("request_id", 7)
    kw.setdefault("client_id", GW)
    return relay_messages(protocol, prefix, on, **kw)


def device(device_id: str, protocol: str, prefix: str, **options: Any) -> Device:
    return Device(id=device_id, protocol=protocol, prefix=prefix, role="machine", options=options)


# -- the builders ---------------------------------------------------------------------------------


def test_shelly_gen2_is_a_switch_set_rpc() -> None:
    [msg] = build("shelly_gen2", GEN2, True, channel=1, request_id=42)
    assert msg.topic == f"{GEN2}/rpc"
    assert json.loads(msg.payload) == {
        "id": 42,
        "src": GW,
        "method": "Switch.Set",
        "params": {"id": 1, "on": True},
    }
    [off] = build("shelly_gen2", "lab/workshop/bandsaw", False)
    assert off.topic == "lab/workshop/bandsaw/rpc" and json.loads(off.payload)["params"] == {"id": 0, "on": False}


@pytest.mark.parametrize(
    ("options", "channel", "topic"),
    [
        ({}, 0, f"shellies/{GEN1}/relay/0/command"),
        ({}, 1, f"shellies/{GEN1}/relay/1/command"),
        ({"base": "lab/shellies/"}, 0, f"lab/shellies/{GEN1}/relay/0/command"),
    ],
)
def test_shelly_gen1_command_topic(options: dict[str, str], channel: int, topic: str) -> None:
    assert build("shelly_gen1", GEN1, True, channel=channel, options=options) == [OutgoingMessage(topic, b"on")]
    assert build("shelly_gen1", GEN1, False, channel=channel, options=options)[0].payload == b"off"


@pytest.mark.parametrize(
    ("full_topic", "channel", "topic"),
    [
        (None, 0, f"cmnd/{TASMOTA}/POWER"),
        (None, 1, f"cmnd/{TASMOTA}/POWER2"),
        ("tasmota/%topic%/%prefix%/", 0, f"tasmota/{TASMOTA}/cmnd/POWER"),
        ("lab/%prefix%/%topic%", 3, f"lab/cmnd/{TASMOTA}/POWER4"),
    ],
)
def test_tasmota_power_command(full_topic: str | None, channel: int, topic: str) -> None:
    options = {} if full_topic is None else {"full_topic": full_topic}
    assert build("tasmota", TASMOTA, True, channel=channel, options=options) == [OutgoingMessage(topic, b"ON")]
    assert build("tasmota", TASMOTA, False, channel=channel, options=options)[0].payload == b"OFF"


def test_esphome_uses_the_contracts_command() -> None:
    assert build("esphome", NODE, True) == [OutgoingMessage(f"{NODE}/switch/relay/command", b"ON")]
    assert build("esphome", NODE, False) == [OutgoingMessage(f"{NODE}/switch/relay/command", b"OFF")]


@pytest.mark.parametrize(
    ("protocol", "prefix"), [("shelly_gen2", GEN2), ("shelly_gen1", GEN1), ("tasmota", TASMOTA), ("esphome", NODE)]
)
def test_every_command_is_qos_1_and_never_retained(protocol: str, prefix: str) -> None:
    for on in (True, False):
        for msg in build(protocol, prefix, on):
            assert (msg.qos, msg.retain) == (1, False)


@pytest.mark.parametrize(
    ("protocol", "prefix", "kw", "match"),
    [
        ("opendtu", "114182912345", {}, "supported: esphome, shelly_gen1, shelly_gen2, tasmota"),
        ("shelly_gen2", "shellies/+", {}, "not usable in a topic"),
        ("shelly_gen2", GEN2, {"client_id": "gw/#"}, "not usable in a topic"),
        ("shelly_gen2", GEN2, {"channel": -1}, "negative"),
        ("shelly_gen1", "", {}, "not usable in a topic"),
        ("shelly_gen1", "lab/plug", {}, "one topic level"),
        ("tasmota", TASMOTA, {"options": {"full_topic": "%prefix%/%hostname%/%topic%/"}}, "cannot address"),
        ("tasmota", TASMOTA, {"options": {"full_topic": "%topic%/"}}, "needs %prefix%"),
        ("tasmota", "+", {}, "not usable in a topic"),
        ("esphome", "commonwatt/#", {}, "not a topic prefix"),
        ("esphome", NODE, {"channel": 1}, "one relay"),
    ],
)
def test_what_cannot_be_addressed_is_refused(protocol: str, prefix: str, kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build(protocol, prefix, True, **kw)


@pytest.mark.parametrize(
    ("protocol", "key", "expected"),
    [
        ("shelly_gen2", GEN2, (GEN2, 0)),
        ("shelly_gen2", f"{GEN2}/switch:1", (GEN2, 1)),
        ("shelly_gen2", "lab/saw/switch:2", ("lab/saw", 2)),
        ("shelly_gen1", GEN1, (GEN1, 0)),
        ("shelly_gen1", f"{GEN1}/relay/1", (GEN1, 1)),
        ("tasmota", TASMOTA, (TASMOTA, 0)),
        ("esphome", NODE, (NODE, 0)),
    ],
)
def test_device_keys_name_their_channel(protocol: str, key: str, expected: tuple[str, int]) -> None:
    assert split_channel(protocol, key) == expected


@pytest.mark.parametrize(
    ("protocol", "key"), [("shelly_gen2", "shellypro3em-x/em1:2"), ("shelly_gen1", "shellyem-x/emeter/1")]
)
def test_a_meter_channel_is_not_a_relay(protocol: str, key: str) -> None:
    with pytest.raises(ValueError, match="meter channel"):
        split_channel(protocol, key)


def test_channel_keys_agree_with_the_decoders() -> None:
    """The channel a command addresses is the channel whose report the decoder files under that key."""
    key = f"{GEN2}/switch:1"
    prefix, channel = split_channel("shelly_gen2", key)
    [msg] = build("shelly_gen2", prefix, True, channel=channel)
    channel = json.loads(msg.payload)["params"]["id"]
    report = json.dumps({"method": "NotifyStatus", "params": {f"switch:{channel}": {"output": True}}}).encode()
    assert decode("shelly_gen2", f"{GEN2}/events/rpc", report) == [(key, "relay_on", 1.0)]
    prefix, channel = split_channel("shelly_gen1", f"{GEN1}/relay/1")
    [cmd] = build("shelly_gen1", prefix, False, channel=channel)
    state_topic = cmd.topic.removesuffix("/command")
    assert decode("shelly_gen1", state_topic, b"off") == [(f"{GEN1}/relay/1", "relay_on", 0.0)]


def decode(protocol: str, topic: str, payload: bytes) -> list[tuple[str, str, float]]:
    decoder = decoder_class(protocol)()
    assert isinstance(decoder, MqttDecoder)
    return [(r.device, r.metric, r.value) for r in decoder.decode(topic, payload, 1.0) if isinstance(r, Reading)]


# -- Shelly RPC replies ------------------------------------------------------------------------------


def test_rpc_replies() -> None:
    assert rpc_reply_topic(GW) == f"{GW}/rpc"
    ok = parse_rpc_reply(b'{"id":42,"src":"shellypro1pm-30c6f7a1b2c3","dst":"fabgw","result":{"was_on":true}}')
    assert ok == RpcReply(42, "shellypro1pm-30c6f7a1b2c3", was_on=True) and ok.ok
    error = parse_rpc_reply(b'{"id":43,"src":"x","error":{"code":404,"message":"No handler for Switch.Set"}}')
    assert error == RpcReply(43, "x", error="404: No handler for Switch.Set") and not error.ok


@pytest.mark.parametrize(
    "payload", [b"", b"not json", b"[1]", b'{"id":"7","result":{}}', b'{"id":true,"result":{}}', b'{"id":7}']
)
def test_rpc_replies_that_are_not_responses(payload: bytes) -> None:
    with pytest.raises(RpcReplyError):
        parse_rpc_reply(payload)


# -- the actuator ------------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, int, bool]] = []

    def __call__(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> None:
        self.published.append((topic, payload, qos, retain))


CONFIGURED = [
    device("saw", "shelly_gen2", f"{GEN2}/switch:1"),
    device("drill", "shelly_gen1", GEN1, base="lab/shellies"),
    device("printers", "tasmota", TASMOTA, full_topic="tasmota/%topic%/%prefix%/"),
    device("cnc", "esphome", NODE),
    device("grid", "shelly_gen2", "shellypro3em-x/em1:2"),
    device("roof", "opendtu", "114182912345"),
]


def test_actuator_addresses_configured_devices() -> None:
    out = Recorder()
    actuator = RelayActuator(CONFIGURED, out, client_id=GW)
    assert set(actuator.targets) == {"saw", "drill", "printers", "cnc"}
    assert list(actuator.problems) == ["grid"] and "meter channel" in actuator.problems["grid"]
    assert actuator.reply_topics() == [f"{GW}/rpc"]
    [saw] = actuator.command("saw", True)
    assert json.loads(saw.payload) == {"id": 1, "src": GW, "method": "Switch.Set", "params": {"id": 1, "on": True}}
    assert actuator.command("drill", False) == [OutgoingMessage(f"lab/shellies/{GEN1}/relay/0/command", b"off")]
    assert actuator.command("printers", True)[0].topic == f"tasmota/{TASMOTA}/cmnd/POWER"
    assert actuator.command("cnc", True)[0].topic == f"{NODE}/switch/relay/command"
    assert [p[0] for p in out.published] == [
        f"{GEN2}/rpc",
        f"lab/shellies/{GEN1}/relay/0/command",
        f"tasmota/{TASMOTA}/cmnd/POWER",
        f"{NODE}/switch/relay/command",
    ]
    assert all((qos, retain) == (1, False) for _t, _p, qos, retain in out.published)
    assert json.loads(actuator.command("saw", False)[0].payload)["id"] == 5
    assert actuator.sent(5) == SentCommand("saw", False, 5)


def test_actuator_refuses_unknown_and_unaddressable_devices() -> None:
    actuator = RelayActuator(CONFIGURED, Recorder(), client_id=GW)
    with pytest.raises(UnknownRelay):
        actuator.command("roof", True)
    with pytest.raises(UnknownRelay):
        actuator.command("nobody", True)
    with pytest.raises(ValueError, match=r"grid.*meter channel"):
        actuator.command("grid", True)
    with pytest.raises(ValueError, match="client id"):
        RelayActuator(CONFIGURED, Recorder(), client_id="gw/+")
    assert RelayActuator(CONFIGURED[1:4], Recorder(), client_id=GW).reply_topics() == []


def test_request_ids_grow_in_publish_order_across_threads() -> None:
    out = Recorder()
    actuator = RelayActuator(CONFIGURED, out, client_id=GW, first_id=100)

    def burst() -> None:
        for i in range(200):
            actuator.command("saw", i % 2 == 0)

    threads = [threading.Thread(target=burst) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [json.loads(payload)["id"] for _t, payload, _q, _r in out.published]
    assert ids == list(range(100, 900))
    assert actuator.sent(100) is None and actuator.sent(899) is not None  # only the last few hundred are kept


# -- through a real Mosquitto ------------------------------------------------------------------------

#: A relay device answering a command: (topic, payload) -> messages (topic, payload, retain) it publishes.
Answer = Callable[[str, bytes], list[tuple[str, bytes, bool]]]


def shelly_gen2(topic: str, payload: bytes) -> list[tuple[str, bytes, bool]]:
    """A Plus 2PM: RPC reply to `<src>/rpc`, a NotifyStatus delta and the generic status topic."""
    request = json.loads(payload)
    channel, on = request["params"]["id"], request["params"]["on"]
    reply = {"id": request["id"], "src": GEN2, "dst": request["src"], "result": {"was_on": not on}}
    delta = {"id": channel, "output": on, "source": "MQTT"}
    notify = {"src": GEN2, "dst": f"{GEN2}/events", "method": "NotifyStatus", "params": {f"switch:{channel}": delta}}
    status = {**delta, "apower": 0.0, "voltage": 231.4, "aenergy": {"total": 12.5}}
    return [
        (f"{request['src']}/rpc", json.dumps(reply).encode(), False),
        (f"{GEN2}/events/rpc", json.dumps(notify).encode(), False),
        (f"{GEN2}/status/switch:{channel}", json.dumps(status).encode(), False),
    ]


def shelly_gen1(topic: str, payload: bytes) -> list[tuple[str, bytes, bool]]:
    return [(topic.removesuffix("/command"), payload, False)]


def tasmota(topic: str, payload: bytes) -> list[tuple[str, bytes, bool]]:
    state = payload.decode().upper()
    return [
        (f"stat/{TASMOTA}/RESULT", json.dumps({"POWER": state}).encode(), False),
        (f"stat/{TASMOTA}/POWER", payload, False),
    ]


def esphome(topic: str, payload: bytes) -> list[tuple[str, bytes, bool]]:
    return [(f"{NODE}/switch/relay/state", payload, True)]


#: device id, protocol, configured key, command topic filter of the simulated device, its answer.
RELAYS: list[tuple[str, str, str, str, Answer]] = [
    ("saw", "shelly_gen2", f"{GEN2}/switch:1", f"{GEN2}/rpc", shelly_gen2),
    ("drill", "shelly_gen1", GEN1, f"shellies/{GEN1}/relay/+/command", shelly_gen1),
    ("printers", "tasmota", TASMOTA, f"cmnd/{TASMOTA}/+", tasmota),
    ("cnc", "esphome", NODE, f"{NODE}/switch/relay/command", esphome),
]


class SimulatedRelay:
    """A device on its own connection: subscribes to its command topic at QoS 1 and answers."""

    def __init__(self, broker: Mosquitto, name: str, command_filter: str, answer: Answer) -> None:
        self.answer = answer
        self.commands: list[tuple[str, bytes, int, bool]] = []
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"sim-{name}")
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe(command_filter, qos=1)
        self.client.loop_start()
        assert subscribed.wait(5)

    def _on_message(self, client: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        self.commands.append((msg.topic, bytes(msg.payload), msg.qos, msg.retain))
        for topic, payload, retain in self.answer(msg.topic, bytes(msg.payload)):
            client.publish(topic, payload, qos=1, retain=retain)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def demo_plug(broker: Mosquitto) -> SimulatedRelay:
    """The demo's own Shelly Plus Plug S simulator, on a connection of its own."""
    plug = ShellyPlusPlugS(SiteModel(SiteSettings(autopilot=False)), MACHINES[0])
    plug.tick(time.time(), False)

    def answer(topic: str, payload: bytes) -> list[tuple[str, bytes, bool]]:
        return [(m.topic, m.payload, m.retain) for m in plug.on_message(topic, payload, time.time())]

    return SimulatedRelay(broker, "demo-plug", plug.subscriptions[0], answer)


@pytest.fixture
def sims(mosquitto: Mosquitto) -> Iterator[list[SimulatedRelay]]:
    devices = [SimulatedRelay(mosquitto, name, flt, answer) for name, _p, _k, flt, answer in RELAYS]
    devices.append(demo_plug(mosquitto))
    yield devices
    for sim in devices:
        sim.close()


def relay_states(path: Path, after: int) -> tuple[int, dict[str, float | None]]:
    """The last relay_on per device journaled after seq `after`, and the last seq read."""
    with Journal(path, readonly=True) as journal:
        rows = journal.read(after, 10_000)
    states = {device: value for _seq, _ts, device, metric, value, _text in rows if metric == "relay_on"}
    return (rows[-1][0] if rows else after), states


class Replies:
    """What the gateway would log: Shelly RPC replies on `<client_id>/rpc`."""

    def __init__(self, broker: Mosquitto) -> None:
        self.got: list[RpcReply] = []
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="reply-listener")
        self.client.on_message = lambda _c, _u, msg: self.got.append(parse_rpc_reply(msg.payload))
        self.client.connect("127.0.0.1", broker.port)
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.subscribe(rpc_reply_topic(GW), qos=1)
        self.client.loop_start()
        assert subscribed.wait(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def test_every_relay_confirms_through_its_decoder(
    tmp_path: Path, mosquitto: Mosquitto, sims: list[SimulatedRelay]
) -> None:
    configured = [device(name, protocol, key) for name, protocol, key, _f, _a in RELAYS]
    configured.append(device("laser", "shelly_gen2", PLUG))
    journal = tmp_path / "journal.sqlite"
    replies = Replies(mosquitto)
    try:
        asyncio.run(_switch_on_and_off(journal, mosquitto, configured))
    finally:
        replies.close()
    wait_for(lambda: len(replies.got) == 4)
    assert [r.ok for r in replies.got] == [True] * 4
    assert {r.device for r in replies.got} == {GEN2, PLUG}
    received = [cmd for sim in sims for cmd in sim.commands]
    assert len(received) == 10 and all((qos, retain) == (1, False) for _t, _p, qos, retain in received)


async def _switch_on_and_off(journal: Path, broker: Mosquitto, configured: list[Device]) -> None:
    settings = MqttSettings(port=broker.port)
    with GroupCommitWriter(journal, max_delay=0.005) as writer:
        async with MqttSource(settings, configured, writer, client_id=GW) as source:
            await source.wait_connected()
            await asyncio.sleep(0.2)  # subscriptions acknowledged
            actuator = RelayActuator(configured, source.publish, client_id=GW)
            seq = 0
            for on in (True, False):
                for dev in configured:
                    actuator.command(dev.id, on)
                seq = await asyncio.to_thread(_confirmed, journal, seq, {d.id for d in configured}, on)


def _confirmed(journal: Path, seq: int, devices: set[str], on: bool) -> int:
    """Waits until every device has journaled relay_on == `on`; returns the seq read up to."""
    seen: dict[str, float | None] = {}

    def done() -> bool:
        nonlocal seq
        seq, states = relay_states(journal, seq)
        seen.update(states)
        return all(seen.get(d) == float(on) for d in devices)

    wait_for(done)
    return seq


def test_commands_are_not_retained(mosquitto: Mosquitto) -> None:
    configured = [device(name, protocol, key) for name, protocol, key, _f, _a in RELAYS]
    publisher = paho.Client(CallbackAPIVersion.VERSION2, client_id="publisher")
    publisher.connect("127.0.0.1", mosquitto.port)
    publisher.loop_start()

    def publish(topic: str, payload: bytes, *, qos: int, retain: bool) -> None:
        publisher.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(5)

    actuator = RelayActuator(configured, publish, client_id=GW)
    topics = [m.topic for dev in configured for m in actuator.command(dev.id, True)]
    publisher.disconnect()
    publisher.loop_stop()
    late: list[str] = []
    subscribed = threading.Event()
    listener = paho.Client(CallbackAPIVersion.VERSION2, client_id="late")
    listener.on_message = lambda _c, _u, msg: late.append(msg.topic)
    listener.on_subscribe = lambda *_a: subscribed.set()
    listener.connect("127.0.0.1", mosquitto.port)
    listener.subscribe([(t, 1) for t in topics])
    listener.loop_start()
    try:
        assert subscribed.wait(5)
        time.sleep(0.3)  # retained messages are sent right after the SUBACK
    finally:
        listener.disconnect()
        listener.loop_stop()
    assert late == []
