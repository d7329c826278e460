"""Self-consumption, self-sufficiency and CO₂, per interval and per period.

A period's figures are sums of the intervals' integer mWh, and the ratios are taken at the
end: never an average of per-interval ratios, which would weigh a dark minute like a sunny one.

- self-consumption: the share of the PV energy used on site, (pv − sun→grid) / pv; sun stored
  in the battery counts as used on site;
- self-sufficiency: the share of the consumption not taken from the grid,
  (consumption − the load mix's grid part) / consumption, with the result's convention
  (under `priority` this is the Home Assistant dashboard's figure; battery energy counts as
  not from the grid whatever its origin);
- CO₂: grid import × intensity, in integer milligrams, per interval, rounded half up. The
  intensity is constant or a step series of (from ts, g/kWh), the value at the interval's start.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.domain.energy.balance import Balance

#: mWh per kWh.
_MWH_PER_KWH = 1_000_000


@dataclass(frozen=True, slots=True)
class Intensity:
    """Grid carbon intensity: `constant` g/kWh, or `series` [(from ts, g/kWh)] sorted by ts."""

    constant: float = 0.0
    series: tuple[tuple[float, float], ...] = ()

    def at(self, ts: float) -> float:
        if not self.series:
            return self.constant
        i = bisect.bisect_right(self.series, (ts, float("inf"))) - 1
        return self.series[i][1] if i >= 0 else self.constant


def co2_mg(grid_mwh: int, g_per_kwh: float) -> int:
    """Milligrams of CO₂ for `grid_mwh` at `g_per_kwh`: mWh × mg/kWh / 10⁶, half up, integers only."""
    mg_per_kwh = round(g_per_kwh * 1000)
    return (grid_mwh * mg_per_kwh + _MWH_PER_KWH // 2) // _MWH_PER_KWH


@dataclass(frozen=True, slots=True)
class Figures:
    """Sums over one interval or a period; ratios computed from them (None when undefined)."""

    pv_mwh: int
    self_consumed_mwh: int
    consumption_mwh: int
    not_from_grid_mwh: int
    grid_mwh: int
    co2_mg: int
    flags: int

    @property
    def self_consumption(self) -> float | None:
        return self.self_consumed_mwh / self.pv_mwh if self.pv_mwh > 0 else None

    @property
    def self_sufficiency(self) -> float | None:
        return self.not_from_grid_mwh / self.consumption_mwh if self.consumption_mwh > 0 else None


def interval_figures(b: Balance, intensity: Intensity) -> Figures:
    grid = b.mix[3]
    return Figures(
        pv_mwh=b.pv,
        self_consumed_mwh=b.pv - b.flows[2],
        consumption_mwh=b.consumption,
        not_from_grid_mwh=b.consumption - grid,
        grid_mwh=b.imported,
        co2_mg=co2_mg(b.imported, intensity.at(b.start)),
        flags=b.flags,
    )


def period_figures(balances: Iterable[Balance], intensity: Intensity) -> Figures:
    """Per interval, then summed; the flags of every interval carried (OR)."""
    parts = [interval_figures(b, intensity) for b in balances]
    return total(parts)


def total(parts: Sequence[Figures]) -> Figures:
    flags = 0
    for p in parts:
        flags |= p.flags
    return Figures(
        pv_mwh=sum(p.pv_mwh for p in parts),
        self_consumed_mwh=sum(p.self_consumed_mwh for p in parts),
        consumption_mwh=sum(p.consumption_mwh for p in parts),
        not_from_grid_mwh=sum(p.not_from_grid_mwh for p in parts),
        grid_mwh=sum(p.grid_mwh for p in parts),
        co2_mg=sum(p.co2_mg for p in parts),
        flags=flags,
    )
