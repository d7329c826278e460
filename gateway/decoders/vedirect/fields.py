"""What the labels of a VE.Direct TEXT block mean, as data.

Label -> metric and how the raw integer becomes the vocabulary's unit:
`value = int(raw) * mul / div`. Units are Victron's (FORMATS.md §1.4, §1.5,
VE.Direct Protocol 3.33): millivolts, milliamps, per mille, minutes, 0.01 kWh.
Labels not in the table (PID, FW, MPPT, OR, LOAD, IL, H21..H23, HSDS, Alarm, AR,
BMV, MON, VS, VM, DM, H1..H16 ...) are read past without a record: they are
product facts or statistics the gateway does not keep, not errors.
"""

from __future__ import annotations

from typing import NamedTuple


class Field(NamedTuple):
    metric: str
    #: Multiplier and divisor from Victron's unit to the metric's unit. Two integers
    #: rather than one float factor so that 13450 mV becomes exactly 13.45 V.
    mul: int = 1
    div: int = 1
    #: A raw value that means "no value" for this label (besides `---`, which means
    #: that for every label): TTG -1 is an infinite time to go.
    absent: bytes | None = None
    #: ON/OFF text instead of a number (1.0 / 0.0).
    on_off: bool = False


#: Victron sends `---` for statistics that have no meaning yet (a BMV not synchronised).
NO_VALUE = b"---"

FIELDS: dict[str, Field] = {
    # Battery side, every product.
    "V": Field("voltage_v", div=1000),
    "I": Field("current_a", div=1000),  # signed, + charging: the vocabulary's sign too
    "T": Field("temperature_c"),
    "Relay": Field("relay_on", on_off=True),
    # Charger (MPPT) state and panel side.
    "VPV": Field("pv_voltage_v", div=1000),
    "PPV": Field("pv_power_w"),
    "CS": Field("device_state"),
    "ERR": Field("error_code"),
    # H19 is the lifetime yield, H20 today's (reset by the charger at its own "new day").
    "H19": Field("energy_wh", mul=10),
    "H20": Field("energy_today_wh", mul=10),
    # Battery monitors (BMV, SmartShunt).
    "P": Field("power_w"),
    "SOC": Field("soc_pct", div=10),
    # CE is sent as a negative number of mAh (-65473 = 65.473 Ah taken out); the
    # vocabulary's consumed_ah is the charge taken, so the sign is turned.
    "CE": Field("consumed_ah", mul=-1, div=1000),
    "TTG": Field("time_to_go_s", mul=60, absent=b"-1"),
    # History block of a BMV: H17 discharged, H18 charged energy, both lifetime counters.
    "H17": Field("energy_discharged_wh", mul=10),
    "H18": Field("energy_charged_wh", mul=10),
}

#: The label whose value is the device key (the serial number).
SERIAL_LABEL = b"SER#"

ON_OFF: dict[bytes, float] = {b"ON": 1.0, b"OFF": 0.0}
