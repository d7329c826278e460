"""What OpenDTU publishes, as tables: topic field -> metric and scale (FORMATS.md §6.1).

OpenDTU publishes one value per topic, as plain text. `yieldtotal` is in kWh
(scaled to Wh here), `yieldday` already in Wh. Fields not listed here
(`efficiency`, `irradiation`, `name`, limits ...) are ignored without complaint.
"""

from __future__ import annotations

from typing import NamedTuple


class Field(NamedTuple):
    metric: str
    scale: float = 1.0


#: `<serial>/0/<field>`: the inverter's AC side (channel 0).
AC: dict[str, Field] = {
    "power": Field("power_w"),
    "voltage": Field("voltage_v"),
    "current": Field("current_a"),
    "frequency": Field("frequency_hz"),
    "powerfactor": Field("power_factor"),
    "reactivepower": Field("reactive_power_var"),
    "temperature": Field("temperature_c"),
    "powerdc": Field("pv_power_w"),
    "yieldtotal": Field("energy_wh", 1000.0),
    "yieldday": Field("energy_today_wh"),
}

#: `<serial>/<n>/<field>`, n = 1..8: one DC input (panel); the metric takes the suffix `_in<n>`.
DC: dict[str, Field] = {
    "power": Field("pv_power_w"),
    "voltage": Field("pv_voltage_v"),
    "current": Field("pv_current_a"),
    "yieldtotal": Field("energy_wh", 1000.0),
    "yieldday": Field("energy_today_wh"),
}

#: `ac/<field>` and `dc/<field>`: totals over all inverters of the DTU, device key `total`.
TOTALS: dict[tuple[str, str], Field] = {
    ("ac", "power"): Field("power_w"),
    ("ac", "yieldtotal"): Field("energy_wh", 1000.0),
    ("ac", "yieldday"): Field("energy_today_wh"),
    ("dc", "power"): Field("pv_power_w"),
}

#: `<serial>/status/<field>`: 0/1 flags.
STATUS: dict[str, Field] = {
    "reachable": Field("online"),
}

#: Device key of the totals.
TOTAL_KEY = "total"
#: DC inputs that have a suffix in the vocabulary (`_in1` ... `_in8`).
MAX_INPUTS = 8
