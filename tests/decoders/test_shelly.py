"""Shelly Gen1 and Gen2+ decoders: behaviour the corpus cannot show (state, subscriptions, robustness)."""

from __future__ import annotations

import contextlib
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.decoders.base import DecodeError
from gateway.decoders.shelly_gen1 import ShellyGen1Decoder
from gateway.decoders.shelly_gen1.topics import TOPICS
from gateway.decoders.shelly_gen2 import ShellyGen2Decoder
from gateway.decoders.shelly_gen2.fields import COMPONENTS
from gateway.model import Reading, Record, iso
from gateway.quantities import is_known

TS = 1_718_195_640.0
PLUG = "shellyplusplugs-e86beae1a2b3"
FULL = {
    "id": 0,
    "output": True,
    "apower": 412.6,
    "aenergy": {"total": 15872.341, "by_minute": [1.0, 2.0, 3.0], "minute_ts": 1718195580},
    "temperature": {"tC": 38.2, "tF": 100.8},
}


def _notify(params: dict[str, object], method: str = "NotifyStatus") -> bytes:
    return json.dumps({"src": PLUG, "dst": f"{PLUG}/events", "method": method, "params": params}).encode()


def _values(records: list[Record]) -> dict[tuple[str, str], float]:
    return {(r.device, r.metric): r.value for r in records if isinstance(r, Reading)}


# --- Gen2 --------------------------------------------------------------------


def test_delta_emits_only_changed_fields_and_is_overlaid_on_the_last_status() -> None:
    dec = ShellyGen2Decoder()
    dec.decode(f"{PLUG}/status/switch:0", json.dumps(FULL).encode(), TS)
    delta = {"ts": TS + 60.25, "switch:0": {"id": 0, "aenergy": {"total": 15880.0}}}
    records = dec.decode(f"{PLUG}/events/rpc", _notify(delta), TS + 61)
    assert records == [Reading(TS + 60.25, PLUG, "energy_wh", 15880.0)]
    status = dec.status(PLUG, "switch:0")
    assert status is not None
    assert status["aenergy"] == {"total": 15880.0, "by_minute": [1.0, 2.0, 3.0], "minute_ts": 1718195580}
    assert status["apower"] == 412.6 and status["output"] is True


def test_full_status_notification_replaces_the_known_status() -> None:
    dec = ShellyGen2Decoder()
    dec.decode(f"{PLUG}/status/switch:0", json.dumps(FULL).encode(), TS)
    dec.decode(f"{PLUG}/events/rpc", _notify({"ts": TS, "switch:0": {"id": 0}}, "NotifyFullStatus"), TS)
    assert dec.status(PLUG, "switch:0") == {"id": 0}


def test_a_rejected_frame_changes_no_state() -> None:
    dec = ShellyGen2Decoder()
    dec.decode(f"{PLUG}/status/switch:0", json.dumps(FULL).encode(), TS)
    bad = {"ts": TS, "switch:0": {"apower": 1.0}, "em:0": {"total_act_power": "lots"}}
    with pytest.raises(DecodeError) as err:
        dec.decode(f"{PLUG}/events/rpc", _notify(bad), TS)
    assert err.value.reason == "bad_value"
    status = dec.status(PLUG, "switch:0")
    assert status is not None and status["apower"] == 412.6
    assert dec.status(PLUG, "em:0") is None


def test_status_returns_a_copy() -> None:
    dec = ShellyGen2Decoder()
    dec.decode(f"{PLUG}/status/switch:0", json.dumps(FULL).encode(), TS)
    status = dec.status(PLUG, "switch:0")
    assert status is not None
    status["aenergy"]["total"] = 0
    again = dec.status(PLUG, "switch:0")
    assert again is not None and again["aenergy"]["total"] == 15872.341


def test_delta_without_a_known_status_still_gives_its_readings() -> None:
    dec = ShellyGen2Decoder()
    records = dec.decode(f"{PLUG}/events/rpc", _notify({"ts": TS, "switch:1": {"output": True}}), TS)
    assert records == [Reading(TS, f"{PLUG}/switch:1", "relay_on", 1.0)]


@pytest.mark.parametrize("device_ts", [0, 42.5, 1e12, None])
def test_unsynchronised_or_missing_device_time_falls_back_to_receive_time(device_ts: float | None) -> None:
    params: dict[str, object] = {"switch:0": {"apower": 5}}
    if device_ts is not None:
        params["ts"] = device_ts
    records = ShellyGen2Decoder().decode(f"{PLUG}/events/rpc", _notify(params), TS)
    assert records == [Reading(TS, PLUG, "power_w", 5.0)]


@pytest.mark.parametrize("raw", ["true", '"12"', "1e400", "1" + "0" * 400, "[1]", "{}"])
def test_gen2_numbers_must_be_json_numbers_in_range(raw: str) -> None:
    with pytest.raises(DecodeError) as err:
        ShellyGen2Decoder().decode(f"{PLUG}/status/switch:0", f'{{"apower": {raw}}}'.encode(), TS)
    assert err.value.reason == "bad_value"


def test_null_fields_are_absent_not_errors() -> None:
    payload = b'{"apower": null, "temperature": null, "aenergy": {"total": null}}'
    assert ShellyGen2Decoder().decode(f"{PLUG}/status/switch:0", payload, TS) == []


def test_deeply_nested_json_is_bad_json_not_a_crash() -> None:
    with pytest.raises(DecodeError) as err:
        ShellyGen2Decoder().decode(f"{PLUG}/events/rpc", b"[" * 100_000, TS)
    assert err.value.reason == "bad_json"


def test_gen2_topics() -> None:
    dec = ShellyGen2Decoder()
    assert dec.topics() == ["+/status/#", "+/events/rpc", "+/online"]
    want = ["lab/saw/status/#", "lab/saw/events/rpc", "lab/saw/online"]
    assert dec.topics("lab/saw") == want
    assert dec.topics("lab/saw/switch:1") == want


# --- Gen1 --------------------------------------------------------------------

G1 = "shellies/shellyplug-s-C45BBE"


def test_gen1_topics_follow_the_base() -> None:
    assert ShellyGen1Decoder().topics() == ["shellies/#"]
    dec = ShellyGen1Decoder(base="lab/shellies/")
    assert dec.topics() == ["lab/shellies/#"]
    assert dec.topics("shellyswitch25-98CDAC1F2E3D/relay/1") == ["lab/shellies/shellyswitch25-98CDAC1F2E3D/#"]


def test_gen1_energy_is_watt_minutes() -> None:
    (reading,) = ShellyGen1Decoder().decode(f"{G1}/relay/0/energy", b"60", TS)
    assert reading == Reading(TS, "shellyplug-s-C45BBE", "energy_wh", 1.0)


def test_gen1_three_phase_only_for_the_3em() -> None:
    dec = ShellyGen1Decoder()
    em3 = dec.decode("shellies/shellyem3-485519C9A1B2/emeter/2/power", b"10", TS)
    em = dec.decode("shellies/shellyem-B9F3A1/emeter/1/power", b"10", TS)
    renamed = dec.decode("shellies/grid-meter/emeter/2/power", b"10", TS)
    assert _values(em3) == {("shellyem3-485519C9A1B2", "power_w_l3"): 10.0}
    assert _values(em) == {("shellyem-B9F3A1/emeter/1", "power_w"): 10.0}
    assert _values(renamed) == {("grid-meter/emeter/2", "power_w"): 10.0}


@pytest.mark.parametrize("raw", [b"", b"12,5", b"nan", b"inf", b"1_000", b"0x10", b"1e999", b"\x80"])
def test_gen1_bad_numbers(raw: bytes) -> None:
    with pytest.raises(DecodeError) as err:
        ShellyGen1Decoder().decode(f"{G1}/relay/0/power", raw, TS)
    assert err.value.reason == "bad_value"


# --- Both --------------------------------------------------------------------


def test_every_metric_in_the_tables_is_in_the_vocabulary() -> None:
    metrics = {f.metric for c in COMPONENTS.values() for f in c.fields}
    metrics |= {t.metric for t in TOPICS if t.metric is not None}
    assert metrics and all(is_known(m) for m in metrics), sorted(m for m in metrics if not is_known(m))


GEN2_TOPICS = [
    f"{PLUG}/online",
    f"{PLUG}/events/rpc",
    *(f"{PLUG}/status/{c}:{n}" for c in COMPONENTS for n in (0, 2)),
    f"{PLUG}/status/sys",
    f"{PLUG}/rpc",
    f"{PLUG}/debug/log",
]
GEN1_PATHS = [
    "online",
    "temperature",
    "temperature_f",
    "relay/0",
    "relay/1/power",
    "relay/0/energy",
    "relay/0/command",
    *(f"emeter/{n}/{q}" for n in (0, 2) for q in ("power", "pf", "total", "total_returned", "energy")),
    "weird/topic",
]
GEN1_TOPICS = [
    *(f"{G1}/{p}" for p in GEN1_PATHS),
    *(f"shellies/shellyem3-485519C9A1B2/{p}" for p in GEN1_PATHS),
    "shellies/announce",
    "elsewhere/x",
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text("az:_0-9 ", max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text("az:_0-9", max_size=8), inner, max_size=4),
    max_leaves=8,
)
field_names = st.sampled_from(
    sorted({f.path[0] for c in COMPONENTS.values() for f in c.fields} | {"id", "tC", "total", "ts"})
)
component_names = st.sampled_from([f"{c}:{n}" for c in COMPONENTS for n in (0, 1)] + ["sys", "ts"])
status_like = st.dictionaries(field_names, json_values | st.dictionaries(field_names, json_values), max_size=6)
frames = st.fixed_dictionaries(
    {
        "method": st.sampled_from(["NotifyStatus", "NotifyFullStatus", "NotifyEvent"]) | json_values,
        "params": st.dictionaries(component_names, status_like | json_values, max_size=4) | json_values,
    }
)


def _check(records: list[Record]) -> None:
    for record in records:
        assert isinstance(record, Reading)
        assert is_known(record.metric), record.metric
        assert isinstance(record.value, float) and math.isfinite(record.value)
        iso(record.ts)


def _decode_or_reject(decoder: ShellyGen1Decoder | ShellyGen2Decoder, topic: str, payload: bytes) -> None:
    with contextlib.suppress(DecodeError):
        _check(decoder.decode(topic, payload, TS))


@settings(max_examples=300, deadline=None)
@given(topic=st.sampled_from(GEN2_TOPICS + GEN1_TOPICS), payload=st.binary(max_size=200))
def test_random_bytes_never_raise_anything_but_decode_error(topic: str, payload: bytes) -> None:
    _decode_or_reject(ShellyGen2Decoder(), topic, payload)
    _decode_or_reject(ShellyGen1Decoder(), topic, payload)


@settings(max_examples=100, deadline=None)
@given(topic=st.sampled_from(GEN2_TOPICS), value=json_values | status_like | frames)
def test_random_json_never_raises_anything_but_decode_error(topic: str, value: object) -> None:
    _decode_or_reject(ShellyGen2Decoder(), topic, json.dumps(value).encode())


@settings(max_examples=40, deadline=None)
@given(sequence=st.lists(st.tuples(st.sampled_from([0, 1]), frames | status_like), max_size=4))
def test_random_frame_sequences_keep_state_consistent(sequence: list[tuple[int, object]]) -> None:
    dec = ShellyGen2Decoder()
    for kind, value in sequence:
        topic = f"{PLUG}/events/rpc" if kind else f"{PLUG}/status/switch:0"
        _decode_or_reject(dec, topic, json.dumps(value).encode())
    status = dec.status(PLUG, "switch:0")
    assert status is None or isinstance(status, dict)


def test_gen1_base_must_not_be_empty() -> None:
    with pytest.raises(ValueError):
        ShellyGen1Decoder(base="/")
