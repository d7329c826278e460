"""How fast a month of a 50-meter site replays into intervals, balance and attribution.

Run: .venv/bin/python bench/replay.py [--days 3] [--journal-days 3] [--baseline-days 1]
The whole month, measured rather than extrapolated (about 8 minutes with the journal written first):
     .venv/bin/python bench/replay.py --days 1 --journal-days 30

A synthetic site of 50 meters (1 grid with import and export counters, 1 PV, 1 battery with
charge and discharge counters, 1 site-load meter, 46 machines), every meter read every 10 s
with a second of jitter, a few counter resets and 30-minute gaps, random member sessions.
Three figures, in one run, so they share the machine's load:

(a) `gateway.domain.energy` in memory: journal-ordered rows (generated a day at a time, not
    timed) through `Router.feed_rows` and `finish`;
(b) `commonwatt replay` (`gateway.energy_service.replay_journal`) from a real SQLite journal of
    `--journal-days` (written first, not timed): batched reads of the energy series, the
    domain, the interval tables written; with the series read in this process, and with two
    worker processes, twice each, interleaved (wall clock, and CPU summed over every process);
(c) the obvious per-reading implementation (`naive` below: floats, no exact sums, no flags).

Each is extrapolated to a 30-day month from its rate unless it ran a whole month, and labelled so.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from gateway.config import parse_config
from gateway.counters import CounterBank
from gateway.domain.energy import EnergySettings, Session, SiteMeters, finish
from gateway.domain.energy.meters import Router
from gateway.energy_service import replay_journal
from gateway.journal import Journal, NewRow

START = 1_709_251_200  # 2024-03-01 00:00 UTC
DAY = 86_400
STEP = 10
MACHINES = [f"m{i:02d}" for i in range(46)]
#: Counter series: grid import and export, PV, battery charge and discharge, site load, 46 machines.
SERIES = 6 + len(MACHINES)
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


def ours(gen: Simulator, ndays: int, sessions: list[Session]) -> tuple[float, float, int]:
    meters = site()
    settings = EnergySettings(interval_s=60, max_gap_s=900, convention="proportional")
    router = Router(meters, interval_s=60, max_gap_s=900)
    spent = cpu = 0.0
    n = 0
    for day in range(ndays):
        rows = gen.day(day)
        n += len(rows)
        t0, c0 = time.perf_counter(), time.process_time()
        router.feed_rows(rows)
        spent += time.perf_counter() - t0
        cpu += time.process_time() - c0
        del rows
    t0, c0 = time.perf_counter(), time.process_time()
    result = finish(router, meters, sessions, settings)
    spent += time.perf_counter() - t0
    cpu += time.process_time() - c0
    print(f"    {len(result.balances):,} intervals, {len(result.shares):,} attribution rows")
    return spent, cpu, n


def write_journal(path: Path, days: int, sessions: list[Session]) -> int:
    """`days` of the site into a real journal, sessions as the floor journals them; the row count."""
    gen = Simulator(sessions, random.Random(7))
    n = 0
    with Journal(path) as journal:
        for day in range(days):
            rows: list[NewRow] = [(ts, d, m, v, None) for ts, d, m, v in gen.day(day)]
            for s in sessions:
                if START + day * DAY <= s.start < START + (day + 1) * DAY:
                    body = {"session_id": s.session_id, "machine_id": s.machine_id, "member_id": s.member_id}
                    rows.append(
                        (s.start, s.machine_id, "event.session_opened", None, json.dumps({**body, "start": s.start}))
                    )
                    closed = json.dumps({**body, "start": s.start, "end": s.end})
                    rows.append((s.end or s.start, s.machine_id, "event.session_closed", None, closed))
            rows.sort(key=lambda r: r[0])
            for i in range(0, len(rows), 5000):
                journal.append_rows(rows[i : i + 5000])
            n += len(rows)
    return n


def bench_config(path: Path) -> Any:
    meters = site()
    devices = [
        {"id": d, "protocol": "shelly_gen2", "prefix": f"p-{d}", "role": r} for d, r in sorted(meters.roles.items())
    ]
    machines = [{"id": m, "meter": d} for m, d in sorted(meters.machines.items())]
    return parse_config(
        {"site": {"id": "bench"}, "journal": {"path": str(path)}, "mqtt": {}, "devices": devices, "machines": machines}
    )


def journal_replay(path: Path, workers: int, month: int) -> None:
    """`commonwatt replay` (`replay_journal`) on the journal at `path`: wall clock and CPU of every process."""
    config = bench_config(path)
    cpu0, kids0 = time.process_time(), _children_cpu()
    summary = replay_journal(config, workers=workers)
    cpu = time.process_time() - cpu0 + _children_cpu() - kids0
    rate = summary.readings / summary.seconds
    print(
        f"(b) commonwatt replay from SQLite, {workers} process(es) reading: {rate:,.0f} readings/s "
        f"({summary.readings:,} readings, {summary.intervals:,} intervals written, {summary.seconds:,.1f} s wall, "
        f"{cpu:,.1f} s CPU in all processes)"
    )
    if summary.readings >= month * 0.999:  # --journal-days 30: the whole month, measured
        print(f"    the month: {summary.seconds:,.1f} s wall, measured (load {os.getloadavg()[0]:.1f})")
    else:
        print(f"    the month: {month / rate:,.1f} s wall, extrapolated at this rate")


def _children_cpu() -> float:
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=int, default=3, help="days through the in-memory domain (a)")
    ap.add_argument("--journal-days", type=int, default=3, help="days in the SQLite journal replayed (b); 0 skips")
    ap.add_argument("--baseline-days", type=int, default=1, help="days through the naive version (c)")
    args = ap.parse_args()
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    rng = random.Random(5)
    sessions = make_sessions(max(args.days, args.journal_days, args.baseline_days), rng)
    per_day = DAY // STEP * SERIES
    month = per_day * 30
    print(f"site: 50 meters, {per_day:,} readings a day, a 30-day month = {month:,} readings")

    gen = Simulator(sessions, random.Random(6))
    spent, cpu, n = ours(gen, args.days, sessions)
    print(f"(a) gateway.domain.energy in memory: {n / spent:,.0f} readings/s ({n:,} readings, {args.days} days)")
    print(f"    the month: {month * spent / n:,.1f} s wall ({month * cpu / n:,.1f} s CPU), extrapolated")

    if args.journal_days:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "journal.sqlite"
            write_journal(path, args.journal_days, sessions)
            for workers in (1, 2, 1, 2):  # interleaved: the machine's load changes under a run
                journal_replay(path, workers, month)

    days = [Simulator(sessions, random.Random(8)).day(0)] if args.baseline_days == 1 else None
    if days is None:
        gen = Simulator(sessions, random.Random(8))
        days = [gen.day(d) for d in range(args.baseline_days)]
    t0, c0 = time.perf_counter(), time.process_time()
    naive(days, sessions, dict(site().roles), dict(site().machines))
    base_s, base_cpu = time.perf_counter() - t0, time.process_time() - c0
    base_n = sum(len(d) for d in days)
    print(f"(c) naive per-reading Python: {base_n / base_s:,.0f} readings/s ({base_n:,} readings)")
    print(
        f"    the month: {month * base_s / base_n:,.1f} s wall ({month * base_cpu / base_n:,.1f} s CPU), extrapolated"
    )
    print(f"load average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
