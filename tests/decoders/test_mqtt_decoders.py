"""Unit tests of the MQTT decoders beyond their corpora (tests/fixtures/<protocol>/):
construction checks, topic filters, keep-alives, and a fuzz test that nothing but
DecodeError ever leaves `decode`."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.decoders import decoder_class
from gateway.decoders.base import DecodeError, MqttDecoder
from gateway.decoders.generic_json import GenericJsonDecoder
from gateway.decoders.opendtu import OpenDTUDecoder
from gateway.decoders.tasmota import TasmotaDecoder
from gateway.decoders.victron_venus import VictronVenusDecoder, full_keepalive, quiet_keepalive
from gateway.model import Reading

TS = 1_700_000_000.0

GENERIC_MAPPING: list[dict[str, Any]] = [
    {"topic": "lab/+/energy", "device": "{1}", "metric": "energy_wh", "path": "ENERGY.Total", "scale": 1000},
    {"topic": "lab/+/state", "device": "{1}", "metric": "relay_on", "ts_path": "t"},
    {"topic": "raw/#", "device": "raw", "metric": "power_w", "path": "[0].v", "ts_path": "ts"},
    {"topic": "+/plain", "device": "plain", "metric": "online"},
]


def readings(decoder: MqttDecoder, topic: str, payload: bytes | str) -> list[tuple[str, str, float]]:
    raw = payload.encode() if isinstance(payload, str) else payload
    out = []
    for record in decoder.decode(topic, raw, TS):
        assert isinstance(record, Reading)
        out.append((record.device, record.metric, record.value))
    return out


@pytest.mark.parametrize("protocol", ["tasmota", "opendtu", "victron_venus", "generic_json"])
def test_sample_config_builds_its_decoder(protocol: str) -> None:
    sample = Path(__file__).parents[2] / "gateway" / "decoders" / protocol / "sample.toml"
    for device in tomllib.loads(sample.read_text())["devices"]:
        assert set(device) <= {"id", "protocol", "prefix", "role", "options"}
        decoder = decoder_class(device["protocol"])(**device.get("options", {}))
        assert isinstance(decoder, MqttDecoder) and decoder.topics(device["prefix"])


# --- Tasmota ---------------------------------------------------------------------------


def test_tasmota_topics_follow_full_topic() -> None:
    assert TasmotaDecoder().topics() == ["tele/+/+", "stat/+/+"]
    custom = TasmotaDecoder(full_topic="site/%prefix%/%hostname%/%topic%")
    assert custom.topics("plug1") == ["site/tele/+/plug1/+", "site/stat/+/plug1/+"]
    assert readings(custom, "site/stat/host-1/plug1/POWER", "on") == [("plug1", "relay_on", 1.0)]


@pytest.mark.parametrize(
    ("full_topic", "problem"),
    [
        ("%topic%/", "%prefix%"),
        ("%prefix%/x/", "%topic%"),
        ("%prefix%/+/%topic%/", "wildcards"),
        ("%prefix%/%topic%/%foo%/", "%foo%"),
    ],
)
def test_tasmota_rejects_unusable_full_topic(full_topic: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        TasmotaDecoder(full_topic=full_topic)


def test_tasmota_rejects_unknown_timezone() -> None:
    with pytest.raises(ValueError, match="Mars/Olympus"):
        TasmotaDecoder(timezone="Mars/Olympus")


def test_tasmota_local_time_follows_daylight_saving() -> None:
    decoder = TasmotaDecoder(timezone="Europe/Berlin")
    summer = decoder.decode("tele/p/SENSOR", b'{"Time":"2024-07-01T12:00:00","ENERGY":{"Power":1}}', TS)
    winter = decoder.decode("tele/p/SENSOR", b'{"Time":"2024-01-01T12:00:00","ENERGY":{"Power":1}}', TS)
    assert summer[0].ts == 1719828000.0  # 10:00 UTC
    assert winter[0].ts == 1704106800.0  # 11:00 UTC


def test_tasmota_time_with_offset_is_taken_as_given() -> None:
    records = TasmotaDecoder(timezone="Asia/Tokyo").decode(
        "tele/p/STATE", b'{"Time":"2024-01-01T12:00:00+01:00","POWER":"ON"}', TS
    )
    assert records[0].ts == 1704106800.0


def test_tasmota_relays_after_the_first_are_not_read() -> None:
    assert readings(TasmotaDecoder(), "stat/p/RESULT", '{"POWER2":"ON"}') == []
    assert readings(TasmotaDecoder(), "stat/p/POWER2", "ON") == []


# --- OpenDTU ---------------------------------------------------------------------------


def test_opendtu_topics() -> None:
    decoder = OpenDTUDecoder(base="/home/solar/")
    assert decoder.topics() == ["home/solar/#"]
    assert decoder.topics("total") == ["home/solar/ac/#", "home/solar/dc/#"]
    assert decoder.topics("1141") == ["home/solar/1141/#", "home/solar/+/inverters/1141/#"]


@pytest.mark.parametrize("base", ["", "/", "solar/+", "#"])
def test_opendtu_rejects_bad_base(base: str) -> None:
    with pytest.raises(ValueError, match="base"):
        OpenDTUDecoder(base=base)


def test_opendtu_night_reachability() -> None:
    assert readings(OpenDTUDecoder(), "solar/1141/status/reachable", "0") == [("1141", "online", 0.0)]


# --- Victron Venus ---------------------------------------------------------------------


def test_venus_keepalive_asks_for_a_full_republish_when_nothing_was_heard() -> None:
    decoder = VictronVenusDecoder()
    key = "c0619ab1b2c3/battery/512"
    assert decoder.keepalive(key) == [full_keepalive("c0619ab1b2c3")]
    decoder.decode(f"N/{key}/Soc", b'{"value": 80}', TS)
    assert decoder.keepalive(key) == [quiet_keepalive("c0619ab1b2c3")]
    # Nothing arrived since: the session may have lapsed (broker outage), so ask for everything.
    assert decoder.keepalive(key) == [("R/c0619ab1b2c3/keepalive", b"")]
    decoder.decode("N/c0619ab1b2c3/vebus/276/Mode", b'{"value": 3}', TS)
    assert decoder.keepalive("c0619ab1b2c3") == [full_keepalive("c0619ab1b2c3")]  # first for this key
    decoder.decode("N/c0619ab1b2c3/vebus/276/Mode", b'{"value": 3}', TS)
    assert decoder.keepalive("c0619ab1b2c3")[0][1] == b'{ "keepalive-options" : ["suppress-republish"] }'


def test_venus_keepalive_asks_for_a_full_republish_every_eighth_time_anyway() -> None:
    """Values are published on change only: a resting battery's counters must still come by."""
    decoder = VictronVenusDecoder()
    key = "c0619ab1b2c3/battery/512"
    kinds = []
    for _ in range(25):
        decoder.decode(f"N/{key}/Soc", b'{"value": 80}', TS)  # the device is heard every time
        kinds.append("full" if decoder.keepalive(key)[0][1] == b"" else "quiet")
    assert kinds == (["full"] + ["quiet"] * 7) * 3 + ["full"]


def test_venus_topics() -> None:
    assert VictronVenusDecoder().topics() == ["N/#"]
    assert VictronVenusDecoder().topics("c0/battery/512") == ["N/c0/battery/512/#"]


def test_venus_rounds_float_noise_and_negative_zero() -> None:
    decoder = VictronVenusDecoder()
    got = readings(decoder, "N/c0/battery/1/Dc/0/Voltage", '{"value": 20.43000030517578}')
    assert got[-1][2] == 20.43
    got = readings(decoder, "N/c0/battery/1/Dc/0/Current", '{"value": -0.0001}')
    assert math.copysign(1.0, got[-1][2]) == 1.0


def test_venus_unknown_service_gives_no_presence() -> None:
    decoder = VictronVenusDecoder()
    assert decoder.decode("N/c0/settings/0/Settings/X", b"", TS) == []
    assert decoder.decode("N/c0/vebus/276/Ac/Out/L1/P", b'{"value": 5}', TS) == []


# --- Generic JSON ----------------------------------------------------------------------


def test_generic_lists_every_problem_of_the_mapping() -> None:
    bad: list[Any] = [
        {"topic": "a/#/b", "device": "x", "metric": "power_w"},
        {"topic": "a/+", "device": "{2}", "metric": "watts", "path": "a..b", "scale": 0, "colour": "red"},
        {"device": "x"},
        "not a rule",
    ]
    with pytest.raises(ValueError) as info:
        GenericJsonDecoder(mapping=bad)
    text = str(info.value)
    for expected in (
        "mapping[0].topic",
        "mapping[1].device",
        "mapping[1].metric: unknown metric 'watts'",
        "mapping[1].path",
        "mapping[1].scale",
        "mapping[1].colour: unknown key",
        "mapping[2].topic: required",
        "mapping[2].metric: required",
        "mapping[3]",
    ):
        assert expected in text


@pytest.mark.parametrize("mapping", [[], {}, None])
def test_generic_needs_rules(mapping: Any) -> None:
    with pytest.raises(ValueError, match="non-empty list"):
        GenericJsonDecoder(mapping=mapping)


def test_generic_topics_are_the_rule_filters_once_each() -> None:
    mapping = [*GENERIC_MAPPING, {"topic": "lab/+/energy", "device": "{1}", "metric": "power_w", "path": "P"}]
    assert GenericJsonDecoder(mapping=mapping).topics() == ["lab/+/energy", "lab/+/state", "raw/#", "+/plain"]


def test_generic_wildcards_follow_mqtt() -> None:
    decoder = GenericJsonDecoder(mapping=[{"topic": "#", "device": "all", "metric": "power_w"}])
    assert readings(decoder, "a/b/c", "1") == [("all", "power_w", 1.0)]
    with pytest.raises(DecodeError, match="unknown_topic"):
        decoder.decode("$SYS/broker/load", b"1", TS)  # wildcards never match $ topics
    plus = GenericJsonDecoder(mapping=[{"topic": "a/+/c", "device": "[{1}]", "metric": "power_w"}])
    assert readings(plus, "a//c", "2") == [("[]", "power_w", 2.0)]
    with pytest.raises(DecodeError, match="unknown_topic"):
        plus.decode("a/b/c/d", b"1", TS)


def test_generic_rules_keep_mapping_order_across_the_index() -> None:
    mapping = [
        {"topic": "+/x", "device": "d", "metric": "power_w", "path": "a"},
        {"topic": "m/x", "device": "d", "metric": "voltage_v", "path": "b"},
        {"topic": "#", "device": "d", "metric": "current_a", "path": "c"},
    ]
    got = readings(GenericJsonDecoder(mapping=mapping), "m/x", '{"a": 1, "b": 2, "c": 3}')
    assert [metric for _, metric, _ in got] == ["power_w", "voltage_v", "current_a"]


def test_generic_many_rules_index_by_first_level() -> None:
    mapping = [{"topic": f"dev{i}/power", "device": f"dev{i}", "metric": "power_w"} for i in range(2000)]
    decoder = GenericJsonDecoder(mapping=mapping)
    assert readings(decoder, "dev1999/power", "5") == [("dev1999", "power_w", 5.0)]
    assert len(decoder._candidates("dev7/power")) == 1


def test_generic_timestamps() -> None:
    mapping = [{"topic": "t", "device": "d", "metric": "power_w", "path": "p", "ts_path": "meta.t"}]
    decoder = GenericJsonDecoder(mapping=mapping)

    def ts_of(payload: str) -> float:
        return decoder.decode("t", payload.encode(), TS)[0].ts

    assert ts_of('{"p": 1}') == TS  # no time in the message: receive time
    assert ts_of('{"p": 1, "meta": {"t": null}}') == TS
    assert ts_of('{"p": 1, "meta": {"t": 1704067200}}') == 1704067200.0
    assert ts_of('{"p": 1, "meta": {"t": 1704067200500}}') == 1704067200.5  # milliseconds
    assert ts_of('{"p": 1, "meta": {"t": "2024-01-01T00:00:00"}}') == 1704067200.0  # no offset: UTC
    assert ts_of('{"p": 1, "meta": {"t": "2024-01-01T01:00:00+01:00"}}') == 1704067200.0
    with pytest.raises(DecodeError, match="bad_time"):
        ts_of('{"p": 1, "meta": {"t": [1]}}')


def test_generic_state_needs_a_state_word() -> None:
    decoder = GenericJsonDecoder(mapping=GENERIC_MAPPING)
    assert readings(decoder, "lab/p/state", "on") == [("p", "relay_on", 1.0)]
    assert readings(decoder, "lab/p/state", "0") == [("p", "relay_on", 0.0)]
    with pytest.raises(DecodeError, match="bad_value"):
        decoder.decode("lab/p/state", b'{"t": 1}', TS)


# --- Fuzz: nothing but DecodeError, on every topic shape ------------------------------

DECODERS: list[tuple[MqttDecoder, list[str]]] = [
    (
        TasmotaDecoder(timezone="Europe/Brussels"),
        [
            "tele/{}/SENSOR",
            "tele/{}/STATE",
            "tele/{}/LWT",
            "stat/{}/POWER",
            "stat/{}/POWER1",
            "stat/{}/RESULT",
            "stat/{}/STATUS8",
            "stat/{}/STATUS10",
            "stat/{}/STATUS11",
            "cmnd/{}/POWER",
            "{}/x/SENSOR",
            "{}",
        ],
    ),
    (
        OpenDTUDecoder(),
        [
            "solar/{}/0/power",
            "solar/{}/0/yieldtotal",
            "solar/{}/3/current",
            "solar/{}/status/reachable",
            "solar/ac/{}",
            "solar/dc/power",
            "solar/{}/inverters/1141/1/power",
            "solar/{}",
            "{}",
        ],
    ),
    (
        VictronVenusDecoder(),
        [
            "N/c0/battery/{}/Soc",
            "N/c0/system/0/Dc/Battery/Power",
            "N/c0/solarcharger/1/{}",
            "N/c0/grid/{}/Ac/Power",
            "N/c0/{}",
            "N/{}",
            "R/c0/{}",
            "{}",
        ],
    ),
    (
        GenericJsonDecoder(mapping=GENERIC_MAPPING),
        ["lab/{}/energy", "lab/{}/state", "raw/{}", "{}/plain", "{}"],
    ),
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(["ON", "off", "Online", "2024-01-01T00:00:00", "1970-01-01T00:00:00"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["ENERGY", "Total", "Power", "Time", "POWER", "StatusSNS", "value", "v", "t", "ts", "x"]),
            inner,
            max_size=5,
        )
    ),
    max_leaves=12,
)
payloads = st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v).encode())
levels = st.text(max_size=6) | st.sampled_from(["", "+", "#", "0", "9", "ac", "dtu", "inverters", "x/y"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.integers(0, len(DECODERS) - 1), data=st.data(), payload=payloads, level=levels)
def test_decoders_raise_nothing_but_decode_error(which: int, data: st.DataObject, payload: bytes, level: str) -> None:
    decoder, shapes = DECODERS[which]
    topic = data.draw(st.sampled_from(shapes)).format(level)
    try:
        records = decoder.decode(topic, payload, TS)
    except DecodeError as exc:
        assert exc.reason.isidentifier() and exc.reason == exc.reason.lower()
        return
    for record in records:
        assert isinstance(record, Reading) and math.isfinite(record.value) and math.isfinite(record.ts)
