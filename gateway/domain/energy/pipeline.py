"""Channels -> balance -> attribution, interval by interval: the whole energy computation.

Pure and deterministic: the same rows, sessions and settings give the same result, byte for
byte in `EnergyResult.dumps()`. The battery pool is the only state carried from one
interval to the next; pass the previous result's `pool` to continue a replay.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.domain.energy.apportion import split_pair
from gateway.domain.energy.attribution import BatteryPool, Session, Share, attribute, overlaps
from gateway.domain.energy.balance import FLOW_NAMES, Balance, Convention, flows, load_mix
from gateway.domain.energy.intervals import OK, flag_names
from gateway.domain.energy.meters import BALANCE_CHANNELS, Channels, Router, SiteMeters

SHARE_FIELDS = (
    "start", "kind", "machine_id", "member_id", "session_id",
    "energy_mwh", "sun_mwh", "battery_sun_mwh", "battery_grid_mwh", "grid_mwh", "flags",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class EnergySettings:
    interval_s: int = 60
    max_gap_s: float = 900.0
    convention: Convention = "proportional"

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or 86_400 % self.interval_s:
            raise ValueError(f"interval_s must divide a day, not {self.interval_s}")


@dataclass(slots=True)
class EnergyResult:
    settings: EnergySettings
    balances: list[Balance]
    shares: list[Share]
    #: Per series (`device/metric`): energy counted across gaps, placed in no interval.
    unplaced: dict[str, int]
    pool: BatteryPool = field(default_factory=BatteryPool)

    def as_json(self) -> dict[str, Any]:
        return {
            "interval_s": self.settings.interval_s,
            "convention": self.settings.convention,
            "balances": [balance_json(b) for b in self.balances],
            "shares": [share_json(s) for s in self.shares],
            "unplaced_mwh": dict(sorted(self.unplaced.items())),
            "pool": {"sun_mwh": self.pool.sun, "grid_mwh": self.pool.grid},
        }

    def dumps(self) -> bytes:
        """Canonical JSON: the bytes a replay must reproduce exactly."""
        return json.dumps(self.as_json(), sort_keys=True, separators=(",", ":")).encode()


def balance_json(b: Balance) -> dict[str, Any]:
    return {
        "start": b.start,
        "pv_mwh": b.pv,
        "discharge_mwh": b.discharge,
        "import_mwh": b.imported,
        "charge_mwh": b.charge,
        "export_mwh": b.exported,
        "consumption_mwh": b.consumption,
        "flows_mwh": dict(zip(FLOW_NAMES, b.flows, strict=True)),
        "unmatched_mwh": b.unmatched,
        "mix_mwh": dict(zip(("sun", "battery_sun", "battery_grid", "grid"), b.mix, strict=True)),
        "site_load_mwh": b.site_load,
        "residual_mwh": b.residual,
        "flags": flag_names(b.flags),
        "site_load_flags": flag_names(b.site_load_flags),
    }


def share_json(s: Share) -> dict[str, Any]:
    out: dict[str, Any] = dict(zip(SHARE_FIELDS, s, strict=True))
    out["flags"] = flag_names(s[-1])
    return out


def compute(
    channels: Channels,
    machines: Mapping[str, str],
    sessions: Iterable[Session],
    settings: EnergySettings,
    pool: BatteryPool | None = None,
) -> EnergyResult:
    """Balance and attribution of every interval in `channels`. `machines`: machine id -> meter device."""
    step = settings.interval_s
    k0, k1 = channels.k0, channels.k1
    n = k1 - k0
    zeros = ([0] * n, [OK] * n)
    cols = [channels.get(c) or zeros for c in BALANCE_CHANNELS]
    site = channels.get("site_load")
    meters = [(m, *(channels.get(f"machine:{d}") or zeros)) for m, d in sorted(machines.items())]
    spans = overlaps(sessions, step, k1 * step)
    pool = pool if pool is not None else BatteryPool()
    balances: list[Balance] = []
    shares: list[Share] = []
    for i in range(n):
        k = k0 + i
        b = _balance(k * step, [c[0][i] for c in cols], _or(c[1][i] for c in cols), site, i, pool, settings.convention)
        balances.append(b)
        machine_rows = [(m, e[i], f[i], spans.get((m, k))) for m, e, f in meters]
        shares.extend(attribute(k * step, b.consumption, b.mix, machine_rows, b.flags, step * 1000))
    return EnergyResult(settings, balances, shares, dict(channels.unplaced), pool)


def _or(values: Iterable[int]) -> int:
    out = 0
    for v in values:
        out |= v
    return out


def _balance(
    start: int,
    terms: list[int],
    flags: int,
    site: tuple[list[int], list[int]] | None,
    i: int,
    pool: BatteryPool,
    convention: Convention,
) -> Balance:
    pv, discharge, imported, charge, exported = terms
    s2l, s2b, s2g, b2l, b2g, g2l, g2b, unmatched = flows(pv, discharge, imported, charge, exported)
    consumption = pv + discharge + imported - charge - exported
    d_sun, d_grid = pool.step(charge, s2b, discharge)
    sun, bat, grid = load_mix(convention, consumption, pv, discharge, imported, s2l, b2l)
    bat_sun = split_pair(bat, d_sun, d_grid)
    measured = site[0][i] if site else None
    return Balance(
        start, pv, discharge, imported, charge, exported, consumption,
        (s2l, s2b, s2g, b2l, b2g, g2l, g2b), unmatched,
        (sun, bat_sun, bat - bat_sun, grid),
        measured, None if measured is None else measured - consumption,
        flags, site[1][i] if site else OK,
    )  # fmt: skip


def replay(
    rows: Iterable[tuple[float, str, str, float | None]],
    site: SiteMeters,
    sessions: Iterable[Session],
    settings: EnergySettings,
    *,
    k0: int | None = None,
    k1: int | None = None,
    pool: BatteryPool | None = None,
) -> EnergyResult:
    """Rows (ts, device, metric, value) in time order -> the result for intervals k0..k1-1.

    Without bounds: from the interval of the first energy reading to the last whole interval.
    """
    router = Router(site, interval_s=settings.interval_s, max_gap_s=settings.max_gap_s)
    router.feed_rows(rows)
    return finish(router, site, sessions, settings, k0=k0, k1=k1, pool=pool)


def finish(
    router: Router,
    site: SiteMeters,
    sessions: Iterable[Session],
    settings: EnergySettings,
    *,
    k0: int | None = None,
    k1: int | None = None,
    pool: BatteryPool | None = None,
) -> EnergyResult:
    """The result from a router that has been fed (by rows or by whole series)."""
    step = settings.interval_s
    series = router.series()
    firsts = [s.first_ts for s in series.values() if s.first_ts is not None]
    if k0 is None:
        k0 = int(min(firsts) // step) if firsts else 0
    if k1 is None:
        k1 = int(router.max_ts // step) if firsts else k0
    return compute(router.channels(k0, max(k0, k1)), site.machines, sessions, settings, pool)
