"""What each Shelly Gen1 topic means, as data.

Topics are `<base>/<device>/<path>` (base `shellies` unless changed); this table
maps `<path>` -> metric. Sources: the Gen1 API doc (MQTT section of each device),
see FORMATS.md §4.5.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

#: How the plain-text payload is read: a decimal number, `on`/`off`, `true`/`false`.
Parse = Literal["number", "magnitude", "on_off", "true_false"]
#: What a channel number in the path refers to: a relay, or an energy-meter input.
Channel = Literal["relay", "emeter"]


@dataclass(frozen=True, slots=True)
class Topic:
    pattern: re.Pattern[str]
    #: None: a topic Gen1 devices publish that carries nothing we keep.
    metric: str | None
    parse: Parse = "number"
    scale: float = 1.0
    channel: Channel | None = None


def _t(
    path: str, metric: str | None, parse: Parse = "number", scale: float = 1.0, channel: Channel | None = None
) -> Topic:
    return Topic(re.compile(path), metric, parse, scale, channel)


#: Watt-minutes per watt-hour: `relay/N/energy` counts watt-minutes.
WATT_MINUTES = 60.0

TOPICS: tuple[Topic, ...] = (
    _t(r"online", "online", "true_false"),
    _t(r"temperature", "temperature_c"),
    # `overpower`: the device switched the relay off because the load was too high.
    _t(r"relay/(\d{1,2})", "relay_on", "on_off", channel="relay"),
    _t(r"relay/(\d{1,2})/power", "power_w", channel="relay"),
    _t(r"relay/(\d{1,2})/energy", "energy_wh", scale=1 / WATT_MINUTES, channel="relay"),
    _t(r"emeter/(\d{1,2})/power", "power_w", channel="emeter"),
    _t(r"emeter/(\d{1,2})/reactive_power", "reactive_power_var", channel="emeter"),
    _t(r"emeter/(\d{1,2})/voltage", "voltage_v", channel="emeter"),
    _t(r"emeter/(\d{1,2})/current", "current_a", channel="emeter"),
    # Stored as a magnitude: the vocabulary's power factor is 0..1; the direction
    # of flow is in the sign of `power`.
    _t(r"emeter/(\d{1,2})/pf", "power_factor", "magnitude", channel="emeter"),
    # Wh, kept in the meter's non-volatile memory.
    _t(r"emeter/(\d{1,2})/total", "energy_wh", channel="emeter"),
    _t(r"emeter/(\d{1,2})/total_returned", "energy_returned_wh", channel="emeter"),
    # Watt-minute counters since the last reboot: `total` and `total_returned`
    # measure the same energy and survive reboots, so these are not kept.
    _t(r"emeter/\d{1,2}/(?:energy|returned_energy)", None),
    # Commands (published by the gateway or others), duplicates, device chatter.
    _t(r"(?:relay|emeter)/\d{1,2}/command", None),
    _t(r"relay/\d{1,2}/overpower_value", None),
    _t(r"temperature_f|overtemperature|temperature_status", None),
    _t(r"(?:input|input_event|longpush)/\d{1,2}", None),
    _t(r"announce|info|command", None),
)

#: Model part of the device id (before the first '-') of three-phase meters: their
#: emeter inputs 0, 1, 2 are the phases L1, L2, L3 of one connection.
THREE_PHASE_MODELS = frozenset({"shellyem3"})

#: Topics directly under the base, addressed to or sent by every device.
BASE_TOPICS = frozenset({"announce", "command"})
