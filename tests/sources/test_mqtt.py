"""The MQTT source against a real Mosquitto: routing, bad input, acknowledgements."""

from __future__ import annotations

import asyncio
import faulthandler
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from gateway.app import Gateway
from gateway.config import parse_config
from gateway.journal import Journal
from tests.services import Mosquitto

PLUG = "shellyplusplugs-e86beae1a2b3"
TOPICS = [
    f"{PLUG}/events/rpc",
    f"{PLUG}/status/switch:0",
    f"{PLUG}/online",
    "shellies/shellyplug-s-C45BBE/relay/0/power",
    "shellies/shellyplug-s-C45BBE/relay/0/energy",
    "tele/tasmota_A1B2C3/SENSOR",
    "tele/tasmota_A1B2C3/LWT",
    "stat/tasmota_A1B2C3/RESULT",
    "solar/114182912345/0/power",
    "solar/114182912345/0/yieldtotal",
    "N/c0619ab1b2c3/battery/512/Soc",
    "N/c0619ab1b2c3/battery/512/Dc/0/Power",
    "lab/weather/outdoor",
]
DEVICES = [
    {"id": "laser", "protocol": "shelly_gen2", "prefix": PLUG, "role": "machine"},
    {"id": "drill", "protocol": "shelly_gen1", "prefix": "shellyplug-s-C45BBE", "role": "machine"},
    {"id": "printers", "protocol": "tasmota", "prefix": "tasmota_A1B2C3", "role": "machine"},
    {"id": "roof", "protocol": "opendtu", "prefix": "114182912345", "role": "pv"},
    {"id": "battery", "protocol": "victron_venus", "prefix": "c0619ab1b2c3/battery/512", "role": "battery"},
    {
        "id": "weather",
        "protocol": "generic_json",
        "prefix": "weather",
        "role": "other",
        "options": {
            "mapping": [{"topic": "lab/weather/outdoor", "device": "weather", "metric": "temperature_c", "path": "t"}]
        },
    },
]


class RunningGateway:
    """A Gateway on an event loop of its own thread, for tests that drive it from outside."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = parse_config(config)
        self.loop = asyncio.new_event_loop()
        self.gateway = Gateway(self.config)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Gateway:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.gateway.__aenter__(), self.loop).result(20)
        assert self.gateway.mqtt is not None
        asyncio.run_coroutine_threadsafe(self.gateway.mqtt.wait_connected(), self.loop).result(20)
        time.sleep(0.3)
        return self.gateway

    def __exit__(self, *exc: object) -> None:
        stopping = asyncio.run_coroutine_threadsafe(self.gateway.__aexit__(None, None, None), self.loop)
        try:
            stopping.result(60)
        except TimeoutError:
            faulthandler.dump_traceback(all_threads=True)  # where the gateway's stop is stuck
            for task in asyncio.all_tasks(self.loop):
                task.print_stack(file=sys.stderr)
            raise
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    mq = Mosquitto(tmp_path_factory.mktemp("mqtt")).start()
    yield mq
    mq.stop()


@pytest.fixture(scope="module")
def gateway(broker: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("gw")
    config = {
        "site": {"id": "lab"},
        "journal": {"path": str(folder / "journal.sqlite"), "max_delay_ms": 5},
        "mqtt": {"port": broker.port},
        "api": {"enabled": False},
        "devices": DEVICES,
    }
    with RunningGateway(config) as gw:
        yield gw


@pytest.fixture(scope="module")
def device_client(broker: Mosquitto) -> Iterator[paho.Client]:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="fuzzing-devices")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    yield client
    client.loop_stop()
    client.disconnect()


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


json_text = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
).map(json.dumps)
malformed = st.one_of(
    st.binary(max_size=300),
    json_text,
    json_text.map(lambda s: s[: max(1, len(s) // 2)]),  # truncated
    st.sampled_from(['{"value": "x"}', '{"params": {"switch:0": {"apower": "high"}}}', "nan", "", "{", "\xff"]),
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=st.lists(st.tuples(st.sampled_from(TOPICS), malformed), min_size=1, max_size=40))
def test_random_bytes_and_malformed_json_never_stop_ingestion(
    gateway: Gateway, device_client: paho.Client, messages: list[tuple[str, bytes | str]]
) -> None:
    assert gateway.mqtt is not None
    health = gateway.mqtt.health
    before = health.messages
    for topic, payload in messages:
        device_client.publish(topic, payload, qos=1).wait_for_publish(5)
    sentinel = time.time()
    device_client.publish("solar/114182912345/0/power", "123.5", qos=1).wait_for_publish(5)
    wait_for(lambda: health.messages >= before + len(messages) + 1)
    wait_for(
        lambda: gateway.live.devices.get("roof") is not None and gateway.live.devices["roof"].last_seen >= sentinel - 1
    )
    assert health.messages == before + len(messages) + 1
    assert all(reason.replace("_", "").isalpha() for reason in health.rejected)
    assert "decoder_error" not in health.rejected, "a decoder raised something other than DecodeError"
    assert health.connected


def test_records_of_an_unconfigured_channel_are_counted_not_journaled(
    gateway: Gateway, device_client: paho.Client
) -> None:
    assert gateway.mqtt is not None
    rejected = gateway.mqtt.health.rejected
    before = rejected["unconfigured_device"]
    # The plug's prefix is configured, its second channel is not: that channel's readings have no device.
    status = {"id": 1, "apower": 5.0, "output": True}
    device_client.publish(f"{PLUG}/status/switch:1", json.dumps(status), qos=1).wait_for_publish(5)
    wait_for(lambda: rejected["unconfigured_device"] >= before + 2)


def test_messages_are_acknowledged_after_the_journal_commit(gateway: Gateway, device_client: paho.Client) -> None:
    mqtt = gateway.mqtt
    assert mqtt is not None
    path = Path(gateway.config.journal.path)
    before = mqtt.health.messages
    for k in range(200):
        device_client.publish(f"{PLUG}/online", "true" if k % 2 else "false", qos=1)
    wait_for(lambda: mqtt.health.messages >= before + 200)
    wait_for(lambda: not mqtt._acks)
    # Every acknowledged message's rows are committed: nothing acknowledged is still pending.
    assert gateway.writer.pending == 0
    committed = gateway.writer.committed_seq
    with Journal(path, readonly=True) as journal:
        assert journal.last_seq() >= committed > 0


def test_a_default_inflight_window_does_not_throttle_acknowledgement_after_commit(tmp_path: Path) -> None:
    """Mosquitto's default window (20 unacknowledged messages) with acks that wait for the commit."""
    broker = Mosquitto(tmp_path / "mq")
    broker.extra_conf = "max_inflight_messages 20\n"
    broker.start()
    try:
        for version in ("3.1.1", "5"):
            config = {
                "site": {"id": "lab"},
                "journal": {"path": str(tmp_path / f"j{version}.sqlite"), "max_delay_ms": 200},
                "mqtt": {"port": broker.port, "version": version, "client_id": f"gw-{version}"},
                "api": {"enabled": False},
                "devices": DEVICES[:1],
            }
            with RunningGateway(config) as gw:
                assert gw.mqtt is not None
                client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"plug-{version}")
                client.max_inflight_messages_set(100)
                client.connect("127.0.0.1", broker.port)
                client.loop_start()
                started = time.monotonic()
                for k in range(2000):
                    client.publish(f"{PLUG}/online", "true" if k % 2 else "false", qos=1)
                wait_for(lambda gw=gw: gw.mqtt.health.messages >= 2000, 20)  # type: ignore[union-attr]
                elapsed = time.monotonic() - started
                client.loop_stop()
                client.disconnect()
            # 2000 messages in windows of 20 with a 200 ms batch delay would take 20 s if every
            # window waited for the delay; committing when the window fills takes well under that.
            assert elapsed < 8, f"MQTT {version}: {elapsed:.1f} s for 2000 messages"
    finally:
        broker.stop()


def test_messages_without_rows_are_acknowledged_in_their_turn(tmp_path: Path) -> None:
    """Rejected messages yield no rows and are acknowledged in order with the rest: none stays unacknowledged.

    With Mosquitto's default window of 20, a message never acknowledged would stop the
    flow after 20. A second gateway on the same persistent session then gets nothing
    redelivered.
    """
    broker = Mosquitto(tmp_path / "mq")
    broker.extra_conf = "max_inflight_messages 20\n"
    broker.start()
    try:
        config = {
            "site": {"id": "lab"},
            "journal": {"path": str(tmp_path / "journal.sqlite"), "max_delay_ms": 200},
            "mqtt": {"port": broker.port, "client_id": "gw-acks"},
            "api": {"enabled": False},
            "devices": DEVICES[:1],
        }
        with RunningGateway(config) as gw:
            mqtt = gw.mqtt
            assert mqtt is not None
            client = paho.Client(CallbackAPIVersion.VERSION2, client_id="plug-acks")
            client.max_inflight_messages_set(100)
            client.connect("127.0.0.1", broker.port)
            client.loop_start()
            for k in range(600):  # every third one is not JSON; the others are `online` readings
                if k % 3 == 0:
                    client.publish(f"{PLUG}/events/rpc", "not json", qos=1)
                else:
                    client.publish(f"{PLUG}/online", "true", qos=1)
            wait_for(lambda: mqtt.health.messages >= 600, 20)
            wait_for(lambda: not mqtt._acks, 5)
            assert mqtt._unacked == 0
            assert mqtt.health.rejected["bad_json"] == 200
            assert mqtt.health.records == 400
            client.loop_stop()
            client.disconnect()
        with RunningGateway(config) as again:
            assert again.mqtt is not None
            time.sleep(1.0)
            assert again.mqtt.health.messages == 0, "the broker redelivered messages the gateway had acknowledged"
    finally:
        broker.stop()
