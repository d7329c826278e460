"""What a P1 telegram tells us, as data: OBIS code -> metric, dimension, sign.

Several registers can feed one metric. Their values (after unit conversion) are
added with their sign:

- the tariff registers 1.8.1 + 1.8.2 make the site's import counter `energy_wh`
  (the energy balance needs the total; which tariff was active is not kept);
- import power minus export power makes the signed `power_w` (+ import), the
  same per phase;
- a register that already holds the total (1.8.0, 2.8.0, sent by Sagemcom and
  EasyMeter meters, some of them next to the tariff registers) is `total=True`
  and, when present, wins over the sum of the tariff registers, so nothing is
  counted twice.

Codes not in this table (gas, power-failure log, text messages, demand peaks,
voltage sag counters) are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

Dimension = Literal["energy", "power", "voltage", "current", "reactive"]


@dataclass(frozen=True, slots=True)
class Field:
    metric: str
    dimension: Dimension
    sign: int = 1
    #: A register that already sums the tariffs; preferred over the tariff registers.
    total: bool = False


#: Units as meters write them after `*` -> (dimension, factor to the metric's unit).
#: Meters differ (kWh on most NL/BE meters, Wh on the Sagemcom T210-D-r): the unit
#: is read from every value, never assumed.
UNITS: dict[str, tuple[Dimension, Decimal]] = {
    "kWh": ("energy", Decimal(1000)),
    "Wh": ("energy", Decimal(1)),
    "kW": ("power", Decimal(1000)),
    "W": ("power", Decimal(1)),
    "V": ("voltage", Decimal(1)),
    "A": ("current", Decimal(1)),
    "kvar": ("reactive", Decimal(1000)),
    "var": ("reactive", Decimal(1)),
}

FIELDS: dict[str, Field] = {
    # Cumulative energy: delivered to the site (import) and by the site (export).
    "1-0:1.8.0": Field("energy_wh", "energy", total=True),
    "1-0:1.8.1": Field("energy_wh", "energy"),
    "1-0:1.8.2": Field("energy_wh", "energy"),
    "1-0:2.8.0": Field("energy_returned_wh", "energy", total=True),
    "1-0:2.8.1": Field("energy_returned_wh", "energy"),
    "1-0:2.8.2": Field("energy_returned_wh", "energy"),
    # Instantaneous power, all phases and per phase: import minus export.
    "1-0:1.7.0": Field("power_w", "power"),
    "1-0:2.7.0": Field("power_w", "power", sign=-1),
    "1-0:21.7.0": Field("power_w_l1", "power"),
    "1-0:22.7.0": Field("power_w_l1", "power", sign=-1),
    "1-0:41.7.0": Field("power_w_l2", "power"),
    "1-0:42.7.0": Field("power_w_l2", "power", sign=-1),
    "1-0:61.7.0": Field("power_w_l3", "power"),
    "1-0:62.7.0": Field("power_w_l3", "power", sign=-1),
    # Reactive power (Sagemcom T210-D-r): Q+ minus Q-.
    "1-0:3.7.0": Field("reactive_power_var", "reactive"),
    "1-0:4.7.0": Field("reactive_power_var", "reactive", sign=-1),
    # Voltage and current per phase. DSMR current is a magnitude, never signed.
    "1-0:32.7.0": Field("voltage_v_l1", "voltage"),
    "1-0:52.7.0": Field("voltage_v_l2", "voltage"),
    "1-0:72.7.0": Field("voltage_v_l3", "voltage"),
    "1-0:31.7.0": Field("current_a_l1", "current"),
    "1-0:51.7.0": Field("current_a_l2", "current"),
    "1-0:71.7.0": Field("current_a_l3", "current"),
}

#: Metrics in the order readings are emitted (the table's order).
METRICS: tuple[str, ...] = tuple(dict.fromkeys(f.metric for f in FIELDS.values()))

#: Meter clock, `YYMMDDhhmmssX` local time, X = S (summer time) or W (winter time).
TIMESTAMP = "0-0:1.0.0"
#: Equipment identifier of the electricity meter, usually hex-encoded ASCII.
EQUIPMENT_ID = "0-0:96.1.1"
#: Codes introduced with DSMR 4 (NL version, BE e-MUCS version): a telegram that has
#: one of them must carry a CRC, so a missing CRC is an error, not an old meter.
CRC_REQUIRED_BY = ("1-3:0.2.8", "0-0:96.1.4")
