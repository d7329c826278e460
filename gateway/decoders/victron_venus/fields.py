"""Which Venus OS D-Bus paths are read, per service type: path -> metric, scale, rounding.

Venus publishes hundreds of paths per device; only the ones below become
readings, the others are ignored without complaint. Values are in D-Bus units
(V, A, W, %, Ah, s, kWh); energies are scaled to Wh.

Rounding: D-Bus values are often single-precision floats printed as doubles
(`20.43000030517578`). Readings are rounded to 3 decimals in their own unit
(mV, mA, mW, 0.001 %; energies, scaled from kWh to Wh, to the mWh). That removes the noise without
cutting large counters short, which rounding to significant digits would do.

On `system/0`, `power_w`, `voltage_v`, `current_a` and `soc_pct` are the
battery's (as the GX's overview shows them) and `power_w_l1..l3` the grid's
phases. To meter the grid as a device of its own, configure its `grid/<n>` service.
"""

from __future__ import annotations

from typing import NamedTuple


class Field(NamedTuple):
    metric: str
    scale: float = 1.0
    #: Decimals kept after scaling.
    digits: int = 3


def _kwh(metric: str) -> Field:
    return Field(metric, 1000.0, 3)


def _phases(template: str, metric: str) -> dict[str, Field]:
    """`Ac/L{n}/Power` -> power_w_l1 .. power_w_l3."""
    return {template.format(n=n): Field(f"{metric}_l{n}") for n in (1, 2, 3)}


SYSTEM: dict[str, Field] = {
    "Dc/Battery/Soc": Field("soc_pct"),
    "Dc/Battery/Voltage": Field("voltage_v"),
    "Dc/Battery/Current": Field("current_a"),
    "Dc/Battery/Power": Field("power_w"),
    "Dc/Battery/ConsumedAmphours": Field("consumed_ah"),
    "Dc/Battery/TimeToGo": Field("time_to_go_s"),
    "Dc/Pv/Power": Field("pv_power_w"),
    "Dc/Pv/Current": Field("pv_current_a"),
    # Ac/Grid/L1..3/Power are deliberately absent: under one device key they would read as
    # phases of the battery power above. Meter the grid through its `grid/<n>` service.
}

BATTERY: dict[str, Field] = {
    "Soc": Field("soc_pct"),
    "Dc/0/Voltage": Field("voltage_v"),
    "Dc/0/Current": Field("current_a"),
    "Dc/0/Power": Field("power_w"),
    "Dc/0/Temperature": Field("temperature_c"),
    "ConsumedAmphours": Field("consumed_ah"),
    "TimeToGo": Field("time_to_go_s"),
    "History/ChargedEnergy": _kwh("energy_charged_wh"),
    "History/DischargedEnergy": _kwh("energy_discharged_wh"),
}

SOLARCHARGER: dict[str, Field] = {
    "Yield/Power": Field("pv_power_w"),
    "Pv/V": Field("pv_voltage_v"),
    "Dc/0/Voltage": Field("voltage_v"),
    "Dc/0/Current": Field("current_a"),
    "Yield/User": _kwh("energy_wh"),
    "State": Field("device_state", digits=0),
    "ErrorCode": Field("error_code", digits=0),
}

PVINVERTER: dict[str, Field] = {
    "Ac/Power": Field("power_w"),
    "Ac/Energy/Forward": _kwh("energy_wh"),
    **_phases("Ac/L{n}/Power", "power_w"),
    **_phases("Ac/L{n}/Voltage", "voltage_v"),
    **_phases("Ac/L{n}/Current", "current_a"),
}

GRID: dict[str, Field] = {
    "Ac/Power": Field("power_w"),
    "Ac/Energy/Forward": _kwh("energy_wh"),
    "Ac/Energy/Reverse": _kwh("energy_returned_wh"),
    **_phases("Ac/L{n}/Power", "power_w"),
    **_phases("Ac/L{n}/Voltage", "voltage_v"),
    **_phases("Ac/L{n}/Current", "current_a"),
}

#: Service type (second topic level after the portal) -> its path table.
SERVICES: dict[str, dict[str, Field]] = {
    "system": SYSTEM,
    "battery": BATTERY,
    "solarcharger": SOLARCHARGER,
    "pvinverter": PVINVERTER,
    "grid": GRID,
}
