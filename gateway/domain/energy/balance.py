"""The balance of one interval: consumption, the seven flows, the residual and the load's mix.

consumption = pv + battery discharge + grid import − battery charge − grid export, in mWh.

The seven flows split the three sources (sun, battery, grid) over the three sinks (load,
battery, grid). Inside one interval the order of events is unknown, so the split is a
convention, applied in this order:

1. export is served first, from the sun, then from the battery: the grid cannot export to
   itself, so when an interval both imports and exports (sun exported at 10:05, the laser
   cutter imported at 10:12), what was exported must have come from the sun or the battery;
2. the load: sun, then battery, then grid;
3. battery charge: the sun left over, then the grid.

Every step takes min(what is left of the source, what is left of the sink), so every flow is
>= 0 and no source gives more than it had. With consistent meters everything is placed: sun
flows = pv, battery flows = discharge, grid flows = import, flows into the battery = charge,
into the grid = export, into the load = consumption. What the meters cannot explain (export
larger than sun and battery together, a battery charged and discharged with nothing else to
feed it, a missing meter) is `unmatched_mwh`: what the sinks took that no source can be found
for, reported, not hidden. Always: seven flows + unmatched = charge + export + max(consumption, 0).

The load's source mix, two conventions, recorded with every result:

- `priority`: the load's flows above: sun, then battery, then grid (the order of the Home
  Assistant energy dashboard);
- `proportional`: every consumer of the interval, the load, the battery charge and the
  export alike, gets the same mix: consumption split pro rata of pv : discharge : import.

Either way the mix sums to the consumption exactly (with unmatched energy the grid part takes
up the difference). The battery part is then split by origin (sun or grid) as it left the
battery pool (see `attribution.BatteryPool`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gateway.domain.energy.apportion import split

Convention = Literal["proportional", "priority"]
CONVENTIONS: tuple[Convention, ...] = ("proportional", "priority")

FLOW_NAMES = ("sun_load", "sun_battery", "sun_grid", "battery_load", "battery_grid", "grid_load", "grid_battery")


@dataclass(frozen=True, slots=True)
class Balance:
    """One interval. Energy in mWh; `start` in seconds since the epoch (UTC)."""

    start: int
    pv: int
    discharge: int
    imported: int
    charge: int
    exported: int
    consumption: int
    #: In FLOW_NAMES order.
    flows: tuple[int, int, int, int, int, int, int]
    unmatched: int
    #: The load's mix: sun, battery (of sun origin), battery (of grid origin), grid.
    mix: tuple[int, int, int, int]
    #: Measured by a `site_load` meter (None without one), and measured − derived.
    site_load: int | None
    residual: int | None
    flags: int
    site_load_flags: int


def flows(pv: int, discharge: int, imported: int, charge: int, exported: int) -> tuple[int, ...]:
    """The seven flows (FLOW_NAMES order) and, last, the unmatched energy."""
    load = pv + discharge + imported - charge - exported
    s2g = min(pv, exported)
    b2g = min(discharge, exported - s2g)
    sun = pv - s2g
    bat = discharge - b2g
    s2l = max(0, min(sun, load))
    b2l = max(0, min(bat, load - s2l))
    g2l = max(0, min(imported, load - s2l - b2l))
    s2b = min(sun - s2l, charge)
    g2b = min(imported - g2l, charge - s2b)
    unmatched = charge + exported + max(load, 0) - (s2l + s2b + s2g + b2l + b2g + g2l + g2b)
    return s2l, s2b, s2g, b2l, b2g, g2l, g2b, unmatched


def load_mix(
    convention: Convention, consumption: int, pv: int, discharge: int, imported: int, s2l: int, b2l: int
) -> tuple[int, int, int]:
    """Sun, battery, grid parts of the consumption; they sum to it exactly."""
    if convention == "priority":
        return s2l, b2l, consumption - s2l - b2l
    sun, bat, grid = split(consumption, [pv, discharge, imported])
    return sun, bat, grid
