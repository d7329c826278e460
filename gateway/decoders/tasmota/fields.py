"""What Tasmota publishes, as tables: JSON field -> metric and scale.

Units are Tasmota's own (FORMATS.md §5): `Total`, `Today` and `ExportActive` in
kWh (scaled to Wh here), everything else already in the vocabulary's unit.
`Yesterday` is left out (it is yesterday's `Today`, nothing new) and so is
`Period`, whose unit is not verified.
"""

from __future__ import annotations

from typing import NamedTuple


class Field(NamedTuple):
    metric: str
    scale: float = 1.0


#: The ENERGY object of `tele/<t>/SENSOR` and of `StatusSNS` (STATUS8 / STATUS10).
#: Records come out in this order.
ENERGY: dict[str, Field] = {
    "Total": Field("energy_wh", 1000.0),
    "ExportActive": Field("energy_returned_wh", 1000.0),
    "Today": Field("energy_today_wh", 1000.0),
    "Power": Field("power_w"),
    "ApparentPower": Field("apparent_power_va"),
    "ReactivePower": Field("reactive_power_var"),
    "Factor": Field("power_factor"),
    "Voltage": Field("voltage_v"),
    "Current": Field("current_a"),
    "Frequency": Field("frequency_hz"),
}

#: Relay keys of STATE / RESULT / StatusSTS. `POWER` on single-relay devices,
#: `POWER1` on multi-relay ones; the relays after the first are not read.
RELAY_KEYS = ("POWER", "POWER1")

#: Relay payloads (case-insensitive) -> relay_on.
RELAY_STATES = {"on": 1.0, "off": 0.0}

#: `tele/<t>/LWT` payloads (case-insensitive) -> online.
LWT_STATES = {"online": 1.0, "offline": 0.0}

#: Per-phase suffixes for array values (`"Power":[230,0,12]` of a three-phase meter).
PHASES = ("_l1", "_l2", "_l3")
