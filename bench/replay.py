"""How fast the energy domain replays a month: intervals -> balance -> attribution.

Run: .venv/bin/python bench/replay.py [--days 30] [--baseline-days 1] [--sqlite-days 1]

A synthetic site of 50 meters (1 grid with import and export counters, 1 PV, 1 battery with
charge and discharge counters, 1 site-load meter, 46 machines), every meter read every 10 s
with a second of jitter, a few counter resets and 30-minute gaps, random member sessions.
The month is generated a day at a time in memory (not timed) and fed as journal-ordered rows
to `gateway.domain.energy` (timed). A plain per-reading implementation, written the obvious
way below, runs on the first `--baseline-days` and is extrapolated to the month. Last, the
time to read the rows back from a SQLite journal (`SELECT ts, device, metric, value`) is
measured on `--sqlite-days` of them, since a replay from the journal pays it too.

`--journal-days N` (default 0: skipped) writes N days into a real SQLite journal (not timed)
and times `gateway.energy_service.replay_journal` on it: the whole `commonwatt replay` path
(batched reads of the energy metrics only, the domain, the interval tables written).
"""

from __future__ import annotations

import argparse
import math
import random
import sqlite3
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from gateway.counters import CounterBank
from gateway.domain.energy import EnergySettings, Session, SiteMeters, finish
from gateway.domain.energy.meters import Router
from gateway.journal import Journal, NewRow

START = 1_709_251_200  # 2024-03-01 00:00 UTC
DAY = 86_400
STEP = 10
MACHINES = [f"m{i:02d}" for i in range(46)]
Row4 = tuple[float, str, str, float]


def site() -> SiteMeters:
    roles = {"grid": "grid", "pv": "pv", "battery": "battery", "site": "site_load"}
    roles |= {f"meter-{m}": "machine" for m in MACHINES}
    return SiteMeters(roles=roles, machines={m: f"meter-{m}" for m in MACHINES})


def make_sessions(days: int, rng: random.Random) -> list[Session]:
    out = []
    for day in range(days):
        for m in MACHINES:
            for j in range(rng.randint(0, 4)):
                start = START + day * DAY + rng.uniform(8, 20) * 3600
                out.append(
                    Session(f"{m}-{day}-{j}", m, f"member{rng.randint(1, 120)}", start, start + rng.uniform(600, 5400))
                )
    return out


class Simulator:
    """The site, second by second at 10 s steps: powers, then counters, with faults."""

    def __init__(self, sessions: list[Session], rng: random.Random) -> None:
        self.rng = rng
        self.counters: dict[tuple[str, str], float] = defaultdict(float)
        self.soc = 5000.0  # Wh in the battery
        self.busy: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for s in sessions:
            self.busy[s.machine_id].append((s.start, s.end or s.start))
        self.rate = {m: rng.uniform(300, 3000) for m in MACHINES}
        self.silent: dict[str, float] = {}

    def powers(self, t: float) -> dict[tuple[str, str], float]:
        hour = (t - START) % DAY / 3600
        pv = max(0.0, math.sin((hour - 6) / 12 * math.pi)) * 8000 * self.rng.uniform(0.7, 1.0)
        load = 400.0
        out: dict[tuple[str, str], float] = {("pv", "energy_wh"): pv}
        for m in MACHINES:
            on = any(a <= t < b for a, b in self.busy[m][-8:]) if self.busy[m] else False
            p = self.rate[m] if on else 3.0
            out[(f"meter-{m}", "energy_wh")] = p
            load += p
        out[("site", "energy_wh")] = load
        surplus = pv - load
        batt = max(-2500.0, min(2500.0, surplus))
        if (batt > 0 and self.soc > 9500) or (batt < 0 and self.soc < 500):
            batt = 0.0
        self.soc += batt * STEP / 3600
        out[("battery", "energy_charged_wh")] = max(batt, 0.0)
        out[("battery", "energy_discharged_wh")] = max(-batt, 0.0)
        grid = load - pv + batt
        out[("grid", "energy_wh")] = max(grid, 0.0)
        out[("grid", "energy_returned_wh")] = max(-grid, 0.0)
        return out

    def day(self, day: int) -> list[Row4]:
        rows: list[Row4] = []
        rng = self.rng
        for i in range(DAY // STEP):
            t = START + day * DAY + i * STEP
            for (device, metric), p in self.powers(t).items():
                key = (device, metric)
                self.counters[key] += p * STEP / 3600
                if rng.random() < 2e-6:  # a reboot: the counter starts again from zero
                    self.counters[key] = 0.0
                if device in self.silent and t < self.silent[device]:
                    continue
                if rng.random() < 1e-6:  # a 30-minute silence
                    self.silent[device] = t + 1800
                ts = t + rng.uniform(0, 1)
                rows.append((round(ts, 3), device, metric, round(self.counters[key], 2)))
        return rows


def naive(days: list[list[Row4]], sessions: list[Session], roles: dict[str, str], machines: dict[str, str]) -> int:
    """The obvious way: per reading a counter delta, spread in float, then float pro rata per interval."""
    bank = CounterBank()
    energy: dict[tuple[str, str, int], float] = defaultdict(float)
    for rows in days:
        for ts, device, metric, value in rows:
            d = bank.update(device, metric, ts, value)
            if d is None or d.flag == "first" or d.flag == "gap":
                continue
            t = d.start_ts
            while t < d.end_ts:
                k = int(t // 60)
                b = min(d.end_ts, (k + 1) * 60)
                energy[(device, metric, k)] += d.delta * (b - t) / (d.end_ts - d.start_ts)
                t = b
    ks = sorted({k for _d, _m, k in energy})
    by_machine: dict[str, list[Session]] = defaultdict(list)
    for s in sessions:
        by_machine[s.machine_id].append(s)
    count = 0
    for k in ks:
        pv = energy[("pv", "energy_wh", k)]
        dis = energy[("battery", "energy_discharged_wh", k)]
        imp = energy[("grid", "energy_wh", k)]
        load = pv + dis + imp - energy[("battery", "energy_charged_wh", k)] - energy[("grid", "energy_returned_wh", k)]
        mix = (pv / (pv + dis + imp), dis / (pv + dis + imp), imp / (pv + dis + imp)) if pv + dis + imp else (0, 0, 1)
        used = 0.0
        for m, dev in machines.items():
            e = energy[(dev, "energy_wh", k)]
            used += e
            owners = [s for s in by_machine[m] if s.start < (k + 1) * 60 and (s.end or 0) > k * 60]
            share = e / max(1, len(owners))
            for _owner in range(max(1, len(owners))):
                _ = [share * x for x in mix]
                count += 1
        _ = [(load - used) * x for x in mix]
    return count


def ours(gen: Simulator, ndays: int, sessions: list[Session]) -> tuple[float, int]:
    meters = site()
    settings = EnergySettings(interval_s=60, max_gap_s=900, convention="proportional")
    router = Router(meters, interval_s=60, max_gap_s=900)
    spent = 0.0
    n = 0
    for day in range(ndays):
        rows = gen.day(day)
        n += len(rows)
        t0 = time.perf_counter()
        router.feed_rows(rows)
        spent += time.perf_counter() - t0
        del rows
    t0 = time.perf_counter()
    result = finish(router, meters, sessions, settings)
    spent += time.perf_counter() - t0
    print(f"  {len(result.balances)} intervals, {len(result.shares)} attribution rows")
    return spent, n


def sqlite_rate(rows: list[Row4]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "journal.sqlite"
        with Journal(path) as journal:
            for i in range(0, len(rows), 5000):
                journal.append_rows([(ts, d, m, v, None) for ts, d, m, v in rows[i : i + 5000]])
        con = sqlite3.connect(path)
        t0 = time.perf_counter()
        n = sum(1 for _ in con.execute("SELECT ts, device, metric, value FROM records ORDER BY seq"))
        rate = n / (time.perf_counter() - t0)
        con.close()
        return rate


def journal_replay(days: int, sessions: list[Session]) -> None:
    """`commonwatt replay` on a real journal of `days` days: readings/s through the service."""
    import json

    from gateway.config import parse_config
    from gateway.energy_service import replay_journal

    meters = site()
    devices = [
        {"id": d, "protocol": "shelly_gen2", "prefix": f"p-{d}", "role": r} for d, r in sorted(meters.roles.items())
    ]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "journal.sqlite"
        config = parse_config(
            {
                "site": {"id": "bench"},
                "journal": {"path": str(path)},
                "mqtt": {},
                "devices": devices,
                "machines": [{"id": m, "meter": d} for m, d in sorted(meters.machines.items())],
            }
        )
        gen = Simulator(sessions, random.Random(7))
        with Journal(path) as journal:
            for day in range(days):
                rows: list[NewRow] = [(ts, d, m, v, None) for ts, d, m, v in gen.day(day)]
                for s in sessions:
                    if START + day * DAY <= s.start < START + (day + 1) * DAY:
                        body = {"session_id": s.session_id, "machine_id": s.machine_id, "member_id": s.member_id}
                        rows.append(
                            (
                                s.start,
                                s.machine_id,
                                "event.session_opened",
                                None,
                                json.dumps({**body, "start": s.start}),
                            )
                        )
                        closed = {**body, "start": s.start, "end": s.end}
                        rows.append((s.end or s.start, s.machine_id, "event.session_closed", None, json.dumps(closed)))
                rows.sort(key=lambda r: r[0])
                for i in range(0, len(rows), 5000):
                    journal.append_rows(rows[i : i + 5000])
        summary = replay_journal(config)
        rate = summary.readings / summary.seconds
        print(
            f"commonwatt replay from SQLite: {rate:,.0f} readings/s, "
            f"{summary.readings:,} readings in {summary.seconds:,.1f} s"
        )
        print(
            f"  {summary.intervals:,} intervals written; "
            f"a 30-day month at this rate: {13_478_400 / rate:,.1f} s (extrapolated)"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--baseline-days", type=int, default=1)
    ap.add_argument("--sqlite-days", type=int, default=1)
    ap.add_argument("--journal-days", type=int, default=0)
    args = ap.parse_args()
    if args.journal_days:
        journal_replay(args.journal_days, make_sessions(args.journal_days, random.Random(5)))
        if args.days == 0:
            return
    rng = random.Random(5)
    sessions = make_sessions(args.days, rng)
    gen = Simulator(sessions, rng)
    first = [gen.day(d) for d in range(max(args.baseline_days, args.sqlite_days, 1))]
    per_day = len(first[0])
    print(f"site: 50 meters, {per_day} readings a day, {len(sessions)} sessions, {args.days} days")

    t0 = time.perf_counter()
    naive(first[: args.baseline_days], sessions, dict(site().roles), dict(site().machines))
    base_s = time.perf_counter() - t0
    base_rate = per_day * args.baseline_days / base_s
    print(f"naive per-reading Python: {base_rate:,.0f} readings/s on {args.baseline_days} day(s)")
    print(f"  extrapolated to {args.days} days: {per_day * args.days / base_rate:,.1f} s")

    gen = Simulator(sessions, random.Random(6))
    spent, n = ours(gen, args.days, sessions)
    print(f"gateway.domain.energy: {n / spent:,.0f} readings/s")
    print(f"  {n:,} readings, {args.days} days: {spent:,.1f} s (generation not counted)")

    rate = sqlite_rate([r for day in first[: args.sqlite_days] for r in day])
    print(f"SQLite SELECT ts, device, metric, value: {rate:,.0f} rows/s ({n / rate:,.1f} s for the month)")


if __name__ == "__main__":
    main()
