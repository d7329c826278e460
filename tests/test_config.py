"""The checks of commonwatt.toml that span sections: what a machine's meter, relay and readers may be.

Each mistake is named by its key path, all of them at once, and `check-config` exits 2.
The protocol sets the checks use are kept equal to the decoders and the relay actuator
by the tests at the end, from the code and the decoders' corpora (tests/fixtures/).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway.actuators.relays import BUILDERS
from gateway.config import (
    BADGE_PROTOCOLS,
    METER_METRICS,
    POWER_PROTOCOLS,
    RELAY_PROTOCOLS,
    Config,
    ConfigError,
    parse_config,
)
from gateway.decoders import PROTOCOLS
from gateway.demo.month import month_config_text

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"

#: A small lab: a grid meter, a plug in front of the laser, badge readers of every kind.
DEVICES: dict[str, dict[str, Any]] = {
    "grid": {"protocol": "shelly_gen2", "prefix": "shellypro3em-8813bfe14804", "role": "grid"},
    "pv": {"protocol": "opendtu", "prefix": "114182912345", "role": "pv"},
    "laser": {"protocol": "shelly_gen2", "prefix": "shellyplusplugs-e86beae1a2b3", "role": "machine"},
    "cnc": {"protocol": "esphome", "prefix": "commonwatt/cnc-mill", "role": "machine"},
    "printers": {"protocol": "tasmota", "prefix": "tasmota_A1B2C3", "role": "machine"},
    "laser-reader": {"protocol": "rdm6300", "port": "/dev/ttyUSB0", "role": "other"},
    "door-reader": {"protocol": "commonwatt_bridge", "prefix": "workshop-pi/door-reader", "role": "other"},
    "badge-node": {"protocol": "esphome", "prefix": "commonwatt/printers-badge", "role": "other"},
}


def raw_config(*machines: dict[str, Any], **extra_devices: dict[str, Any]) -> dict[str, Any]:
    devices = {**DEVICES, **extra_devices}
    return {
        "site": {"id": "lab"},
        "mqtt": {},
        "devices": [{"id": device_id, **fields} for device_id, fields in devices.items()],
        "machines": list(machines),
    }


def problems(*machines: dict[str, Any], **extra_devices: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw_config(*machines, **extra_devices))
    return caught.value.problems


def valid(*machines: dict[str, Any], **extra_devices: dict[str, Any]) -> Config:
    return parse_config(raw_config(*machines, **extra_devices))


# -- readers ------------------------------------------------------------------------------------------


def test_every_kind_of_badge_reader_is_accepted() -> None:
    config = valid(
        {"id": "laser", "meter": "laser", "readers": ["laser-reader", "door-reader"]},
        {"id": "cnc", "meter": "cnc", "readers": ["cnc"]},
        {"id": "printers", "meter": "printers", "readers": ["badge-node"]},
    )
    assert [m.readers for m in config.machines] == [["laser-reader", "door-reader"], ["cnc"], ["badge-node"]]


def test_a_reader_that_gives_no_badges_is_named() -> None:
    found = problems({"id": "laser", "meter": "laser", "readers": ["laser-reader", "grid"]})
    assert found == [
        "machines[0].readers[1]: 'grid' is a shelly_gen2 device, which gives no badges; "
        "a reader is a device of protocol commonwatt_bridge, esphome, rdm6300"
    ]


def test_a_generic_json_device_is_no_reader() -> None:
    mapping = [{"topic": "lab/+/uid", "device": "{1}", "metric": "device_state"}]
    found = problems(
        {"id": "laser", "meter": "laser", "readers": ["json-reader"]},
        **{
            "json-reader": {
                "protocol": "generic_json",
                "prefix": "door",
                "role": "other",
                "options": {"mapping": mapping},
            }
        },
    )
    assert found == [
        "machines[0].readers[0]: 'json-reader' is a generic_json device, which gives no badges; "
        "a reader is a device of protocol commonwatt_bridge, esphome, rdm6300"
    ]


def test_an_unknown_reader_is_still_named_as_such() -> None:
    assert problems({"id": "laser", "meter": "laser", "readers": ["nobody"]}) == [
        "machines[0].readers[0]: no device 'nobody'"
    ]


# -- meter --------------------------------------------------------------------------------------------


def test_a_meter_of_the_sites_own_is_named() -> None:
    assert problems({"id": "laser", "meter": "grid"}) == [
        "machines[0].meter: 'grid' has role grid; a machine's meter is a device of role machine"
    ]


def test_a_meter_that_gives_no_power_is_named() -> None:
    found = problems(
        {"id": "laser", "meter": "reader-on-a-machine"},
        **{"reader-on-a-machine": {"protocol": "rdm6300", "port": "/dev/ttyUSB1", "role": "machine"}},
    )
    assert found == [
        "machines[0].meter: 'reader-on-a-machine' is a rdm6300 device, which gives no power or energy; "
        "a meter is a device of protocol " + ", ".join(sorted(POWER_PROTOCOLS))
    ]


def test_serial_and_bridged_meters_are_accepted() -> None:
    config = valid(
        {"id": "kiln", "meter": "kiln-p1"},
        {"id": "saw", "meter": "saw-bridged"},
        **{
            "kiln-p1": {"protocol": "dsmr", "port": "/dev/ttyUSB2", "role": "machine"},
            "saw-bridged": {"protocol": "commonwatt_bridge", "prefix": "workshop-pi/saw", "role": "machine"},
        },
    )
    assert [m.meter for m in config.machines] == ["kiln-p1", "saw-bridged"]


def _json_meter(prefix: str, *rules: tuple[str, str, str]) -> dict[str, Any]:
    mapping = [{"topic": topic, "device": device, "metric": metric} for topic, device, metric in rules]
    return {"protocol": "generic_json", "prefix": prefix, "role": "machine", "options": {"mapping": mapping}}


@pytest.mark.parametrize(
    "rules",
    [
        [("kiln/power", "kiln", "power_w")],
        [("kiln/state", "kiln", "relay_on"), ("kiln/energy", "kiln", "energy_wh")],
        [("zigbee2mqtt/+", "z2m-{1}", "power_w")],
        [("plugs/+/+/power", "{1}/{2}", "power_w")],
    ],
    ids=["literal", "energy-among-others", "placeholder", "two-placeholders"],
)
def test_a_generic_json_meter_needs_a_power_or_energy_rule_for_its_key(rules: list[tuple[str, str, str]]) -> None:
    prefix = {"z2m-{1}": "z2m-kiln", "{1}/{2}": "shed/kiln"}.get(rules[-1][1], "kiln")
    config = valid({"id": "kiln", "meter": "kiln-json"}, **{"kiln-json": _json_meter(prefix, *rules)})
    assert config.machines[0].meter == "kiln-json"


@pytest.mark.parametrize(
    ("prefix", "rules"),
    [
        ("kiln", [("kiln/temp", "kiln", "temperature_c"), ("kiln/phase", "kiln", "power_w_l1")]),
        ("kiln", [("other/power", "other", "power_w")]),
        ("z2m-kiln/x", [("zigbee2mqtt/+", "z2m-{1}", "power_w")]),
    ],
    ids=["no-power-metric", "power-of-another-key", "placeholder-spans-no-level"],
)
def test_a_generic_json_meter_without_power_for_its_key_is_named(
    prefix: str, rules: list[tuple[str, str, str]]
) -> None:
    found = problems({"id": "kiln", "meter": "kiln-json"}, **{"kiln-json": _json_meter(prefix, *rules)})
    assert found == [
        "machines[0].meter: 'kiln-json': no rule of its mapping gives energy_wh or power_w"
        f" under its device key {prefix!r}"
    ]


# -- relay --------------------------------------------------------------------------------------------


def test_relays_of_every_switching_protocol_are_accepted() -> None:
    config = valid(
        {"id": "laser", "meter": "laser", "relay": "laser"},
        {"id": "cnc", "meter": "cnc", "relay": "cnc"},
        {"id": "printers", "meter": "printers", "relay": "printers"},
        {"id": "drill", "meter": "drill", "relay": "drill-switch"},
        **{
            "drill": {"protocol": "shelly_gen1", "prefix": "shellyplug-s-C45BBE", "role": "machine"},
            "drill-switch": {
                "protocol": "shelly_gen2",
                "prefix": "shellyplus2pm-a8032ab12345/switch:1",
                "role": "other",
            },
        },
    )
    assert [m.relay for m in config.machines] == ["laser", "cnc", "printers", "drill-switch"]


def test_a_relay_of_a_protocol_that_switches_nothing_is_named() -> None:
    assert problems({"id": "laser", "meter": "laser", "relay": "laser-reader"}) == [
        "machines[0].relay: rdm6300 cannot switch a relay; use one of esphome, shelly_gen1, shelly_gen2, tasmota"
    ]


def test_the_sites_own_meter_is_no_relay() -> None:
    assert problems({"id": "laser", "meter": "laser", "relay": "grid"}) == [
        "machines[0].relay: 'grid' is the site's grid meter; a relay is a device of role machine or other"
    ]


def test_a_meter_channel_is_no_relay() -> None:
    found = problems(
        {"id": "laser", "meter": "laser", "relay": "em-channel"},
        **{"em-channel": {"protocol": "shelly_gen2", "prefix": "shellypro3em-x/em1:2", "role": "machine"}},
    )
    assert found == [
        "machines[0].relay: 'em-channel' cannot be switched: shelly_gen2 key 'shellypro3em-x/em1:2' "
        "names a meter channel, not a relay"
    ]


def test_a_relay_the_actuator_cannot_address_is_named() -> None:
    hostname = {"protocol": "tasmota", "prefix": "tasmota_D4E5F6", "role": "machine"}
    hostname["options"] = {"full_topic": "%hostname%/%prefix%/%topic%/"}
    found = problems({"id": "lathe", "meter": "lathe", "relay": "lathe"}, lathe=hostname)
    assert len(found) == 1
    assert found[0].startswith("machines[0].relay: 'lathe' cannot be switched: tasmota full_topic")
    assert "%hostname%" in found[0]


# -- all at once, and through the command ---------------------------------------------------------------


def test_every_machine_problem_is_named_at_once() -> None:
    found = problems(
        {"id": "laser", "meter": "grid", "relay": "pv", "readers": ["laser", "laser-reader"]},
        {"id": "cnc", "meter": "laser-reader", "relay": "cnc", "readers": ["printers"]},
    )
    assert [p.partition(":")[0] for p in found] == [
        "machines[0].meter",
        "machines[0].relay",
        "machines[0].readers[0]",
        "machines[1].meter",
        "machines[1].readers[0]",
    ]


def test_check_config_names_a_wrong_reader_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "commonwatt.toml"
    bad.write_text(
        '[site]\nid = "lab"\n[mqtt]\n'
        '[[devices]]\nid = "grid"\nprotocol = "shelly_gen2"\nprefix = "shellypro3em-8813bfe14804"\nrole = "grid"\n'
        '[[devices]]\nid = "laser"\nprotocol = "shelly_gen2"\nprefix = "shellyplusplugs-e86beae1a2b3"\n'
        'role = "machine"\n'
        '[[machines]]\nid = "laser"\nmeter = "laser"\nrelay = "laser"\nreaders = ["grid"]\n'
    )
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "machines[0].readers[0]: 'grid' is a shelly_gen2 device, which gives no badges" in out.stderr


def test_the_demo_labs_machines_are_valid() -> None:
    config = parse_config(tomllib.loads(month_config_text()))
    for machine in config.machines:
        assert machine.relay is not None and machine.readers, machine.id


# -- the protocol sets follow the code ------------------------------------------------------------------


def _corpus(protocol: str) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for expected in sorted((FIXTURES / protocol).glob("*/expected.jsonl"))
        for line in expected.read_text().splitlines()
        if line.strip()
    ]


def _package_source(protocol: str) -> str:
    package = ROOT / PROTOCOLS[protocol].partition(":")[0].replace(".", "/")
    return "".join(p.read_text() for p in sorted(package.glob("*.py")))


def test_badge_protocols_are_the_decoders_that_give_badges() -> None:
    building = {p for p in PROTOCOLS if "BadgeEvent(" in _package_source(p)}
    in_corpus = {p for p in PROTOCOLS if any("uid" in record for record in _corpus(p))}
    assert building == BADGE_PROTOCOLS
    assert in_corpus == BADGE_PROTOCOLS


def test_power_protocols_are_the_decoders_that_give_power_or_energy() -> None:
    in_corpus = {p for p in PROTOCOLS if any(record.get("metric") in METER_METRICS for record in _corpus(p))}
    assert in_corpus == POWER_PROTOCOLS


def test_relay_protocols_are_the_actuators_and_report_their_relay() -> None:
    assert set(BUILDERS) == RELAY_PROTOCOLS
    for protocol in RELAY_PROTOCOLS:
        # The actuator takes a command as done when the decoder reports the relay's new state.
        assert any(record.get("metric") == "relay_on" for record in _corpus(protocol)), protocol


@pytest.mark.parametrize("client_id", ["", "lab/+", "gw#1", "/gateway", "gateway/"])
def test_a_client_id_that_cannot_be_a_topic_is_named(client_id: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"site": {"id": "lab"}, "mqtt": {"client_id": client_id}})
    [problem] = caught.value.problems
    assert problem.startswith("mqtt.client_id") and "<client_id>/rpc" in problem


def test_a_plain_client_id_is_accepted() -> None:
    assert parse_config({"site": {"id": "lab"}, "mqtt": {"client_id": "commonwatt-lab/gw1"}}).mqtt is not None
