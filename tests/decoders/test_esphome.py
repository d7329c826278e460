"""The ESPHome decoder beyond its corpus: topics, options, relay commands, robustness.

The messages themselves are the corpus in tests/fixtures/esphome/ (test_corpus.py).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import Device
from gateway.decoders import decoder_class
from gateway.decoders.base import DecodeError
from gateway.decoders.esphome import CONTRACT_VERSION, ESPHomeDecoder, relay_command
from gateway.decoders.esphome.fields import ENTITIES
from gateway.model import BadgeEvent, Reading

REPO = Path(__file__).resolve().parents[2]
PREFIX = "commonwatt/lasercutter"


def test_registered_under_esphome() -> None:
    assert decoder_class("esphome") is ESPHomeDecoder


def test_subscribes_to_state_topics_only() -> None:
    topics = ESPHomeDecoder().topics(PREFIX)
    assert f"{PREFIX}/status" in topics
    assert f"{PREFIX}/badge" in topics
    assert f"{PREFIX}/sensor/+/state" in topics
    assert f"{PREFIX}/switch/+/state" in topics
    assert not any(t.endswith(("/command", "#")) for t in topics)
    assert all(t.startswith("commonwatt/+/") for t in ESPHomeDecoder().topics())


@pytest.mark.parametrize(
    ("on", "payload"),
    [(True, b"ON"), (False, b"OFF")],
)
def test_relay_command(on: bool, payload: bytes) -> None:
    assert relay_command(PREFIX, on) == (f"{PREFIX}/switch/relay/command", payload, False)


@pytest.mark.parametrize("prefix", ["", "commonwatt/+", "commonwatt/#", "commonwatt/lasercutter/"])
def test_relay_command_refuses_what_is_not_a_prefix(prefix: str) -> None:
    with pytest.raises(ValueError, match="not a topic prefix"):
        relay_command(prefix, True)


def test_the_gateways_own_command_is_not_a_reading() -> None:
    topic, payload, _ = relay_command(PREFIX, True)
    assert ESPHomeDecoder().decode(topic, payload, 1.0) == []


def test_the_device_key_is_the_whole_prefix() -> None:
    decoder = ESPHomeDecoder()
    deep = "site-b/hall/sensor/bench-3"
    assert decoder.decode(f"{deep}/sensor/power/state", b"12.5", 1.0) == [Reading(1.0, deep, "power_w", 12.5)]
    assert decoder.decode(f"{deep}/badge", b'{"v":1,"uid":"74:10:37:94"}', 2.0) == [BadgeEvent(2.0, deep, "74103794")]


def test_options_extend_and_replace_the_table() -> None:
    decoder = ESPHomeDecoder(sensors={"power": "apparent_power_va", "switch/fan": "relay_on_l2"})
    assert decoder.decode(f"{PREFIX}/sensor/power/state", b"100", 1.0) == [
        Reading(1.0, PREFIX, "apparent_power_va", 100.0)
    ]
    assert decoder.decode(f"{PREFIX}/switch/fan/state", b"ON", 1.0) == [Reading(1.0, PREFIX, "relay_on_l2", 1.0)]


def test_bad_options_name_every_problem() -> None:
    sensors = {"spindle": "spindle_w", "text_sensor/mode": "device_state", "Spindle Power": "power_w"}
    with pytest.raises(ValueError) as info:
        ESPHomeDecoder(sensors=sensors)
    message = str(info.value)
    assert "'spindle': 'spindle_w' is not a metric" in message
    assert "'text_sensor/mode': component must be one of" in message
    assert "'Spindle Power': an object id is" in message


def test_the_contract_names_every_entity_the_decoder_reads() -> None:
    contract = (REPO / "firmware-bridge" / "CONTRACT.md").read_text()
    assert f"version {CONTRACT_VERSION}" in contract
    for component, object_id in ENTITIES:
        assert f"<p>/{component}/{object_id}/state" in contract


def test_sample_config_is_valid() -> None:
    sample = tomllib.loads((REPO / "gateway" / "decoders" / "esphome" / "sample.toml").read_text())
    devices = [Device.model_validate(raw) for raw in sample["devices"]]
    assert {d.protocol for d in devices} == {"esphome"}
    for device in devices:
        ESPHomeDecoder(**device.options)


@given(value=st.floats(allow_nan=False, allow_infinity=False, width=32), decimals=st.integers(0, 4))
def test_sensor_states_as_esphome_formats_them(value: float, decimals: int) -> None:
    text = f"{value:.{decimals}f}"
    records = ESPHomeDecoder().decode(f"{PREFIX}/sensor/energy/state", text.encode(), 1.0)
    assert records == [Reading(1.0, PREFIX, "energy_wh", float(text))]


_TOPICS = [
    f"{PREFIX}/{suffix}"
    for suffix in (
        "status",
        "badge",
        "sensor/power/state",
        "switch/relay/state",
        "text_sensor/contract_version/state",
        "binary_sensor/door/state",
    )
]


@given(topic=st.sampled_from(_TOPICS), payload=st.binary(max_size=80))
def test_any_payload_gives_records_or_a_decode_error(topic: str, payload: bytes) -> None:
    try:
        records = ESPHomeDecoder().decode(topic, payload, 1.0)
    except DecodeError as exc:
        assert re.fullmatch(r"[a-z_]+", exc.reason)
        return
    assert all(isinstance(r, Reading | BadgeEvent) for r in records)
