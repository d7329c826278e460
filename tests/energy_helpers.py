"""A recorded day of a small lab, written into a real journal: energy meters every 10 s and sessions."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

from gateway.config import Config, parse_config
from gateway.journal import Journal, NewRow

DAY0 = 1_717_200_000  # 2024-06-01 00:00 UTC
MACHINES = ("laser", "cnc", "printer")


def energy_config(tmp_path: Path) -> Config:
    def dev(i: str, role: str) -> dict[str, Any]:
        return {"id": i, "protocol": "shelly_gen2", "prefix": f"shelly-{i}", "role": role}

    devices = [dev("grid", "grid"), dev("pv", "pv"), dev("battery", "battery")]
    devices += [dev(f"{m}_meter", "machine") for m in MACHINES]
    return parse_config(
        {
            "site": {"id": "lab"},
            "journal": {"path": str(tmp_path / "journal.sqlite")},
            "mqtt": {},
            "api": {"enabled": False},
            "devices": devices,
            "machines": [{"id": m, "meter": f"{m}_meter"} for m in MACHINES],
        }
    )


def session_rows(day0: float, rng: random.Random) -> list[tuple[float, NewRow]]:
    """(when to append, row): sessions opened and closed as the floor journals them."""
    out: list[tuple[float, NewRow]] = []
    for i, machine in enumerate(MACHINES):
        for j in range(3):
            start = day0 + 8 * 3600 + j * 3 * 3600 + i * 700 + rng.uniform(0, 600)
            end = start + rng.uniform(900, 5400)
            body = {"session_id": f"s-{machine}-{j}", "machine_id": machine, "member_id": ("ada", "bob")[j % 2]}
            opened = json.dumps({**body, "start": start})
            closed = json.dumps({**body, "start": start, "end": end})
            out.append((start, (start, machine, "event.session_opened", None, opened)))
            out.append((end, (end, machine, "event.session_closed", None, closed)))
    return out


def record_day(path: Path, *, day0: float = DAY0, hours: float = 24, seed: int = 1) -> int:
    """Write `hours` of the lab into the journal at `path`, in time order; returns the row count."""
    rng = random.Random(seed)
    events = sorted(session_rows(day0, rng), key=lambda e: e[0])
    counters: dict[tuple[str, str], float] = {}
    busy = {(r[1], r[0]) for _t, r in events}
    soc = 3000.0
    n = 0
    with Journal(path) as journal:
        batch: list[NewRow] = []
        for i in range(int(hours * 360)):
            t = day0 + i * 10
            while events and events[0][0] <= t:
                batch.append(events.pop(0)[1])
            powers, soc = _powers(t - day0, soc, busy, rng)
            for key, watts in powers.items():
                counters[key] = counters.get(key, 0.0) + watts * 10 / 3600
                batch.append((t + rng.uniform(0, 1), key[0], key[1], round(counters[key], 3), None))
            if len(batch) > 2000:
                n += len(batch)
                journal.append_rows(batch)
                batch = []
        n += len(batch)
        journal.append_rows(batch)
    return n


def _powers(
    s: float, soc: float, busy: set[tuple[str, float]], rng: random.Random
) -> tuple[dict[tuple[str, str], float], float]:
    pv = max(0.0, math.sin((s / 3600 - 6) / 12 * math.pi)) * 6000 * rng.uniform(0.8, 1.0)
    out: dict[tuple[str, str], float] = {("pv", "energy_wh"): pv}
    load = 300.0
    for m in MACHINES:
        on = 8 * 3600 <= s % 86400 <= 20 * 3600 and rng.random() < 0.7
        p = {"laser": 1800.0, "cnc": 900.0, "printer": 150.0}[m] if on else 2.0
        out[(f"{m}_meter", "energy_wh")] = p
        load += p
    batt = max(-2000.0, min(2000.0, pv - load))
    if (batt > 0 and soc > 9000) or (batt < 0 and soc < 500):
        batt = 0.0
    soc += batt * 10 / 3600
    out[("battery", "energy_charged_wh")] = max(batt, 0.0)
    out[("battery", "energy_discharged_wh")] = max(-batt, 0.0)
    grid = load - pv + batt
    out[("grid", "energy_wh")] = max(grid, 0.0)
    out[("grid", "energy_returned_wh")] = max(-grid, 0.0)
    return out, soc
