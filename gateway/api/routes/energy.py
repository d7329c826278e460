"""/api/v1/energy/balance and /api/v1/members/{id}/energy: the site's balance and a member's energy.

Both read the energy interval tables (`gateway.energy_store`), kept by the live energy
service and rebuilt by `commonwatt replay`. Energy is integer mWh, as in the tables, so
sums close exactly; CO₂ is integer mg.

- The balance names no member: any token reads it. `step` (seconds, a multiple of the
  interval) sums intervals into rows; ratios are taken from the sums, never averaged.
  `quality` is the worst flag of any interval of the row; `quality_counts` counts the
  row's intervals by quality, each under its worst flag (`ok`, `estimated`, `integrated`,
  `missing`: they add up to `intervals`), and `quality_percent` gives each count as a
  percentage of `intervals`, rounded to 0.01 (the counts are exact).
- A member's energy: operators, auditors and admins read anyone's; any other token only
  its own member's, and asking for another is a 404, the same as for a member who does
  not exist (as /api/v1/members does).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel

from gateway.api.auth import ERRORS, CurrentPrincipal, PeopleDep
from gateway.api.deps import GatewayDep
from gateway.api.routes.members import MemberId, visible_member
from gateway.api.routes.sessions import period
from gateway.domain.energy import FLOW_NAMES, worst
from gateway.energy_report import quality_counts
from gateway.energy_service import energy_config
from gateway.energy_store import EnergyStore
from gateway.model import iso

router = APIRouter(prefix="/api/v1", tags=["energy"], responses=ERRORS)

#: Rows one balance request may return.
MAX_ROWS = 10_000
DAY_S = 86_400
_TIME_DOC = "ISO 8601 or unix seconds; default: the last 24 hours"
SOURCES = ("sun", "battery_sun", "battery_grid", "grid")
TERMS = ("pv", "discharge", "import", "charge", "export", "consumption")


class BalanceRow(BaseModel):
    start: str
    end: str
    intervals: int
    pv_mwh: int
    battery_discharge_mwh: int
    grid_import_mwh: int
    battery_charge_mwh: int
    grid_export_mwh: int
    consumption_mwh: int
    flows_mwh: dict[str, int]
    unmatched_mwh: int
    mix_mwh: dict[str, int]
    residual_mwh: int | None
    self_consumption: float | None
    self_sufficiency: float | None
    co2_mg: int
    quality: str
    quality_counts: dict[str, int]
    quality_percent: dict[str, float]
    convention: str


class SourceEnergy(BaseModel):
    energy_mwh: int = 0
    sun_mwh: int = 0
    battery_sun_mwh: int = 0
    battery_grid_mwh: int = 0
    grid_mwh: int = 0


class SessionEnergy(SourceEnergy):
    session_id: str
    machine_id: str


class MemberEnergy(BaseModel):
    member_id: str
    start: str
    end: str
    total: SourceEnergy
    machines: dict[str, SourceEnergy]
    sessions: list[SessionEnergy]


@contextmanager
def _store(gateway: Any) -> Iterator[EnergyStore | None]:
    """The energy tables, read-only; None before the live service or a replay made them."""
    try:
        store = EnergyStore(gateway.config.journal.path, readonly=True)
    except sqlite3.Error:
        yield None
        return
    try:
        yield store
    finally:
        store.close()


def _bounds(start: str | None, end: str | None) -> tuple[float, float]:
    since, until = period(start, end)
    until = until if until is not None else time.time()
    since = since if since is not None else until - DAY_S
    if until <= since:
        raise HTTPException(422, ["from: the period starts after it ends"])
    return since, until


def _rows(store: EnergyStore | None, since: float, until: float) -> list[sqlite3.Row]:
    if store is None:
        return []
    try:
        return store.intervals(since, until)
    except sqlite3.OperationalError:  # no tables yet
        return []


def balance_row(group: list[sqlite3.Row], start: int, step: int) -> BalanceRow:
    s = {k: sum(int(r[k]) for r in group) for k in (*TERMS, *FLOW_NAMES, "unmatched", "co2_mg")}
    mix = {src: sum(int(r[f"mix_{src}"]) for r in group) for src in SOURCES}
    residuals = [int(r["residual"]) for r in group if r["residual"] is not None]
    flags = 0
    for r in group:
        flags |= int(r["flags"])
    counts = quality_counts(int(r["flags"]) for r in group)
    return BalanceRow(
        start=iso(start), end=iso(start + step), intervals=len(group), pv_mwh=s["pv"],
        battery_discharge_mwh=s["discharge"], grid_import_mwh=s["import"], battery_charge_mwh=s["charge"],
        grid_export_mwh=s["export"], consumption_mwh=s["consumption"],
        flows_mwh={f: s[f] for f in FLOW_NAMES}, unmatched_mwh=s["unmatched"], mix_mwh=mix,
        residual_mwh=sum(residuals) if residuals else None,
        self_consumption=(s["pv"] - s["sun_grid"]) / s["pv"] if s["pv"] > 0 else None,
        self_sufficiency=(s["consumption"] - mix["grid"]) / s["consumption"] if s["consumption"] > 0 else None,
        co2_mg=s["co2_mg"], quality=worst(flags), quality_counts=counts,
        quality_percent={q: round(100 * n / len(group), 2) for q, n in counts.items()},
        convention=str(group[0]["convention"]),
    )  # fmt: skip


def balance_rows(rows: list[sqlite3.Row], step: int) -> list[BalanceRow]:
    groups: dict[int, list[sqlite3.Row]] = {}
    for r in rows:
        groups.setdefault(int(r["start"]) // step * step, []).append(r)
    return [balance_row(g, start, step) for start, g in sorted(groups.items())]


@router.get("/energy/balance")
def get_balance(
    gateway: GatewayDep,
    _principal: CurrentPrincipal,
    start: Annotated[str | None, Query(alias="from", max_length=40, description=f"period start: {_TIME_DOC}")] = None,
    end: Annotated[str | None, Query(alias="to", max_length=40, description="period end (excluded)")] = None,
    step: Annotated[
        int | None, Query(ge=1, le=366 * DAY_S, description="seconds per row; default: one interval")
    ] = None,
) -> list[BalanceRow]:
    """The site's balance per `step`: terms, seven flows, mix, residual, ratios, CO₂, quality (worst, by count)."""
    interval = energy_config(gateway.config).interval_s
    step = step or interval
    if step % interval:
        raise HTTPException(422, [f"step: {step} s is not a multiple of the {interval} s interval"])
    since, until = _bounds(start, end)
    if (until - since) / step > MAX_ROWS:
        raise HTTPException(422, [f"step: more than {MAX_ROWS} rows; choose a longer step or a shorter period"])
    with _store(gateway) as store:
        return balance_rows(_rows(store, since, until), step)


def _add(acc: SourceEnergy, values: list[int]) -> None:
    acc.energy_mwh += values[0]
    acc.sun_mwh += values[1]
    acc.battery_sun_mwh += values[2]
    acc.battery_grid_mwh += values[3]
    acc.grid_mwh += values[4]


@router.get("/members/{member_id}/energy")
def get_member_energy(
    member_id: MemberId,
    gateway: GatewayDep,
    people: PeopleDep,
    principal: CurrentPrincipal,
    start: Annotated[str | None, Query(alias="from", max_length=40, description=f"period start: {_TIME_DOC}")] = None,
    end: Annotated[str | None, Query(alias="to", max_length=40, description="period end (excluded)")] = None,
) -> MemberEnergy:
    """The member's energy in the period by source: in total, per machine, per session."""
    visible_member(people, principal, member_id)
    since, until = _bounds(start, end)
    total = SourceEnergy()
    machines: dict[str, SourceEnergy] = {}
    sessions: dict[str, SessionEnergy] = {}
    with _store(gateway) as store:
        try:
            shares = [] if store is None else store.member_shares(member_id, since, until)
        except sqlite3.OperationalError:
            shares = []
    for _start, _kind, machine, _member, sid, *values, _flags in shares:
        v = [int(str(x)) for x in values]
        _add(total, v)
        _add(machines.setdefault(str(machine), SourceEnergy()), v)
        _add(sessions.setdefault(str(sid), SessionEnergy(session_id=str(sid), machine_id=str(machine))), v)
    return MemberEnergy(
        member_id=member_id, start=iso(since), end=iso(until), total=total, machines=machines,
        sessions=sorted(sessions.values(), key=lambda s: s.session_id),
    )  # fmt: skip
