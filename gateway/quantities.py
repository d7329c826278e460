"""The closed list of metrics. One name, one unit, one kind, forever.

The unit is part of the name. Decoders convert to these units (kWh -> Wh,
watt-minutes -> Wh, mV -> V) so that nothing downstream converts anything.

Kinds:
- gauge: an instantaneous value (power, voltage, state of charge);
- counter: a cumulative total that only grows, except when the device resets it;
  deltas are taken by `gateway.counters`, never anywhere else;
- state: a discrete value (relay on/off, online/offline, a charger state code).

Sign conventions: `power_w` of a grid meter is positive when importing; of a
battery, positive when charging (Victron's convention); of a PV inverter and of a
machine, positive when producing / consuming.

Per-phase values take a suffix `_l1`, `_l2`, `_l3`; values of one input of a
multi-input device (PV strings of a micro-inverter) take `_in1` ... `_in8`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Kind = Literal["gauge", "counter", "state"]


@dataclass(frozen=True, slots=True)
class Quantity:
    name: str
    unit: str
    kind: Kind
    description: str


_QUANTITIES = [
    Quantity("power_w", "W", "gauge", "active power (grid: + import; battery: + charging)"),
    Quantity("apparent_power_va", "VA", "gauge", "apparent power"),
    Quantity("reactive_power_var", "var", "gauge", "reactive power"),
    Quantity("power_factor", "", "gauge", "power factor, 0..1"),
    Quantity("voltage_v", "V", "gauge", "voltage"),
    Quantity("current_a", "A", "gauge", "current (battery: + charging)"),
    Quantity("frequency_hz", "Hz", "gauge", "mains frequency"),
    Quantity("soc_pct", "%", "gauge", "battery state of charge"),
    Quantity("temperature_c", "°C", "gauge", "temperature"),
    Quantity("pv_power_w", "W", "gauge", "power from the panels (DC side of a charger)"),
    Quantity("pv_voltage_v", "V", "gauge", "panel voltage"),
    Quantity("pv_current_a", "A", "gauge", "panel current"),
    Quantity("consumed_ah", "Ah", "gauge", "charge taken from a battery since full"),
    Quantity("time_to_go_s", "s", "gauge", "battery time to go at the present load"),
    Quantity("energy_wh", "Wh", "counter", "cumulative energy imported / consumed / produced"),
    Quantity("energy_returned_wh", "Wh", "counter", "cumulative energy exported / returned"),
    Quantity("energy_charged_wh", "Wh", "counter", "cumulative energy into a battery"),
    Quantity("energy_discharged_wh", "Wh", "counter", "cumulative energy out of a battery"),
    Quantity("energy_today_wh", "Wh", "counter", "energy since local midnight (resets daily)"),
    Quantity("relay_on", "", "state", "relay state, 1 on, 0 off"),
    Quantity("online", "", "state", "device reachable (its last will), 1 online, 0 offline"),
    Quantity("device_state", "", "state", "device-specific operating state code"),
    Quantity("error_code", "", "state", "device-specific error code, 0 none"),
]

QUANTITIES: dict[str, Quantity] = {q.name: q for q in _QUANTITIES}

_SUFFIX = re.compile(r"_(l[1-3]|in[1-8])$")
_SUFFIXED_UNITS = {"W", "VA", "var", "", "V", "A", "Wh"}


def base_name(metric: str) -> str:
    """`power_w_l1` -> `power_w`; names without a suffix are returned as they are."""
    return _SUFFIX.sub("", metric)


def quantity(metric: str) -> Quantity:
    """The quantity of a metric name, suffix allowed. KeyError when it is not in the list."""
    q = QUANTITIES.get(metric)
    if q is not None:
        return q
    base = base_name(metric)
    q = QUANTITIES.get(base)
    if q is None or base == metric or q.unit not in _SUFFIXED_UNITS:
        raise KeyError(metric)
    return q


def is_known(metric: str) -> bool:
    try:
        quantity(metric)
    except KeyError:
        return False
    return True
