"""What the fields of a Shelly Gen2+ component status mean, as data.

One table per component type: a path into the status object (as published on
`<prefix>/status/<type>:<id>` and inside `NotifyStatus` frames) -> metric.
Sources: the Switch and EM/EM1 component docs of shelly-api-docs.shelly.cloud,
checked against captured payloads (see FORMATS.md §4.2-4.4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: How a raw JSON value becomes a reading value:
#: "number" as it is; "magnitude" without its sign; "bool" true -> 1, false -> 0.
Conversion = Literal["number", "magnitude", "bool"]


@dataclass(frozen=True, slots=True)
class Field:
    path: tuple[str, ...]
    metric: str
    conversion: Conversion = "number"


@dataclass(frozen=True, slots=True)
class Component:
    """A component type we read. `channel` names its channels in device keys (see README)."""

    channel: str
    fields: tuple[Field, ...]


# Switch (Plus Plug S, Plus 1PM, Plus 2PM, Pro 1PM, Plug S Gen3, 1PM Gen4 ...).
# `aenergy.total` is already in Wh. `pf` is stored as a magnitude: the vocabulary's
# power factor is 0..1 and the direction of flow is in the sign of `apower`.
SWITCH = (
    Field(("output",), "relay_on", "bool"),
    Field(("apower",), "power_w"),
    Field(("voltage",), "voltage_v"),
    Field(("current",), "current_a"),
    Field(("freq",), "frequency_hz"),
    Field(("pf",), "power_factor", "magnitude"),
    Field(("aenergy", "total"), "energy_wh"),
    Field(("ret_aenergy", "total"), "energy_returned_wh"),
    Field(("temperature", "tC"), "temperature_c"),
)

_PHASES = (("a", "l1"), ("b", "l2"), ("c", "l3"))

# Pro 3EM, triphase profile. `total_act_power` is signed: + import, - export.
# Frequency is the same on every phase and the vocabulary has no per-phase
# frequency, so only phase A's is kept. `total_current` (an arithmetic sum of
# phase currents) and `n_current` (neutral) have no metric and are skipped.
EM = (
    Field(("total_act_power",), "power_w"),
    Field(("total_aprt_power",), "apparent_power_va"),
    *(Field((f"{p}_act_power",), f"power_w_{s}") for p, s in _PHASES),
    *(Field((f"{p}_aprt_power",), f"apparent_power_va_{s}") for p, s in _PHASES),
    *(Field((f"{p}_voltage",), f"voltage_v_{s}") for p, s in _PHASES),
    *(Field((f"{p}_current",), f"current_a_{s}") for p, s in _PHASES),
    *(Field((f"{p}_pf",), f"power_factor_{s}", "magnitude") for p, s in _PHASES),
    Field(("a_freq",), "frequency_hz"),
)

# Pro 3EM energy counters, Wh.
EMDATA = (
    Field(("total_act",), "energy_wh"),
    Field(("total_act_ret",), "energy_returned_wh"),
    *(Field((f"{p}_total_act_energy",), f"energy_wh_{s}") for p, s in _PHASES),
    *(Field((f"{p}_total_act_ret_energy",), f"energy_returned_wh_{s}") for p, s in _PHASES),
)

# Pro 3EM monophase profile (and other single-phase meters with em1 components):
# each em1:N is an independent meter.
EM1 = (
    Field(("act_power",), "power_w"),
    Field(("aprt_power",), "apparent_power_va"),
    Field(("voltage",), "voltage_v"),
    Field(("current",), "current_a"),
    Field(("freq",), "frequency_hz"),
    Field(("pf",), "power_factor", "magnitude"),
)

EM1DATA = (
    Field(("total_act_energy",), "energy_wh"),
    Field(("total_act_ret_energy",), "energy_returned_wh"),
)

#: Component type (the part before ':' in `switch:0`) -> what we read from it.
#: `emdata:N` belongs to the same meter as `em:N`, `em1data:N` to `em1:N`.
COMPONENTS: dict[str, Component] = {
    "switch": Component("switch", SWITCH),
    "em": Component("em", EM),
    "emdata": Component("em", EMDATA),
    "em1": Component("em1", EM1),
    "em1data": Component("em1", EM1DATA),
}
