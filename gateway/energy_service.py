"""The energy balance at run time and on replay: journal rows -> the energy interval tables.

One engine (`EnergyEngine`) serves both:

- `replay_journal` (`commonwatt replay`) reads the journal in big batches of the rows the
  energy domain needs (energy counters, `power_w` of power-only devices, session events),
  feeds `gateway.domain.energy`, and writes each interval as soon as no later reading can
  change it: when the newest reading is more than `max_gap_s` plus an interval past its end
  (a later counter delta reaching back further is a gap, which places no energy). Memory
  stays flat over a month. The result is the same, byte for byte, on every replay;
- `EnergyService`, in the gateway, a journal consumer like the machine floor: it wakes on
  every commit, feeds the new rows, writes the intervals not yet final (`final = 0`,
  rewritten as readings arrive) and makes an interval final once its end plus
  `final_after_s` (two intervals by default) has passed. Its state (the next interval to
  make final, the battery pool, the sessions still open, where to re-read from) is saved
  with `Journal.append_with_checkpoint`; after a restart it re-reads from there.

Replay is the reference. The live service gives the same numbers except where a reading
reached the journal later than `final_after_s` after its interval ended; `commonwatt replay`
(gateway stopped) rebuilds the tables from the journal and the live service goes on from
the replay's end.

The TSDB gets its energy series from the tables, not from the journal: `EnergyTsdbWriter`
(the TSDB sink's retrying writer, with a cursor of its own over the tables' `rev`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import sqlite3
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from influxdb_client.client.write_api import WriteApi

from gateway.config import EnergyConfig
from gateway.domain.energy import (
    BatteryPool,
    Router,
    Session,
    SiteMeters,
    co2_mg,
    compute,
    power_only_devices,
)
from gateway.domain.energy.meters import COUNTER_CHANNELS
from gateway.energy_store import EnergyStore, IntervalResult, pseudonym
from gateway.journal import Journal
from gateway.sinks.lineprotocol import Formatted, escape_key, to_ms
from gateway.sinks.tsdb import TsdbSink

log = logging.getLogger(__name__)

CONSUMER = "energy"
SESSION_EVENTS = ("event.session_opened", "event.session_closed")
#: Journal rows (seq numbers) looked at per read.
READ_SPAN = 100_000
TICK_S = 5.0


def energy_config(config: Any) -> EnergyConfig:
    """The configuration's `[energy]` section."""
    found: EnergyConfig = config.energy
    return found


def site_meters(config: Any, journal: Journal) -> SiteMeters:
    """Roles, machine meters and power-only devices (from what the journal holds of each device)."""
    roles = {d.id: d.role for d in config.devices if d.role in COUNTER_CHANNELS}
    metrics: dict[str, list[str]] = {}
    for device, metric in journal.stats().series:
        metrics.setdefault(device, []).append(metric)
    return SiteMeters(
        roles=roles,
        machines={m.id: m.meter for m in config.machines if m.meter in roles},
        power_only=power_only_devices(roles, metrics),
    )


# -- the engine -------------------------------------------------------------------------------


@dataclass(slots=True)
class EngineState:
    """What carries from one interval to the next, saved in the live service's checkpoint."""

    k_next: int | None = None
    pool_sun: int = 0
    pool_grid: int = 0
    sessions: tuple[Session, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "k_next": self.k_next,
            "pool": [self.pool_sun, self.pool_grid],
            "sessions": [[s.session_id, s.machine_id, s.member_id, s.start, s.end] for s in self.sessions],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EngineState:
        sessions = tuple(Session(*s) for s in data.get("sessions", []))
        return cls(data.get("k_next"), int(data["pool"][0]), int(data["pool"][1]), sessions)


class EnergyEngine:
    """Readings and session events in, intervals out; holds only what open intervals need."""

    def __init__(self, site: SiteMeters, cfg: EnergyConfig, state: EngineState | None = None) -> None:
        self.site = site
        self.cfg = cfg
        self.settings = cfg.settings()
        self.intensity = cfg.intensity()
        self.step = cfg.interval_s
        self.router = Router(site, interval_s=self.step, max_gap_s=cfg.max_gap_s)
        state = state or EngineState()
        self.k_next = state.k_next
        self.pool = BatteryPool(state.pool_sun, state.pool_grid)
        self.sessions: dict[str, Session] = {s.session_id: s for s in state.sessions}

    def feed(self, readings: list[tuple[float, str, str, float]], events: list[tuple[str, str]]) -> None:
        """Readings (ts, device, metric, value) in journal order; session events (metric, JSON)."""
        for metric, text in events:
            e = json.loads(text)
            end = e["end"] if metric == "event.session_closed" else None
            old = self.sessions.get(e["session_id"])
            if old is None or old.end is None:
                self.sessions[e["session_id"]] = Session(
                    e["session_id"], e["machine_id"], e["member_id"], float(e["start"]), end
                )
        self.router.feed_rows(readings)

    @property
    def max_ts(self) -> float:
        return self.router.max_ts

    def state(self) -> EngineState:
        live = tuple(sorted(self.sessions.values(), key=lambda s: (s.start, s.session_id)))
        return EngineState(self.k_next, self.pool.sun, self.pool.grid, live)

    def first_k(self) -> int | None:
        firsts = [s.first_ts for s in self.router.series().values() if s.first_ts is not None]
        return int(min(firsts) // self.step) if firsts else None

    def settle(self, k_end: int, *, final: bool) -> list[IntervalResult]:
        """Intervals from the first one not final up to `k_end` (excluded).

        `final`: they are done; the pool and the position move past them and their
        readings are dropped from memory. Otherwise they are computed on a copy (provisional).
        """
        if self.k_next is None:
            self.k_next = self.first_k()
        k0 = self.k_next
        if k0 is None or k_end <= k0:
            return []
        pool = self.pool if final else BatteryPool(self.pool.sun, self.pool.grid)
        start_pool = BatteryPool(pool.sun, pool.grid)
        lo = k0 * self.step
        sessions = [s for s in self.sessions.values() if s.end is None or s.end > lo]
        result = compute(self.router.channels(k0, k_end), self.site.machines, sessions, self.settings, pool)
        out = self._results(result.balances, result.shares, start_pool)
        if final:
            self.k_next = k_end
            self._forget(k_end)
        return out

    def _results(self, balances: list[Any], shares: list[Any], pool: BatteryPool) -> list[IntervalResult]:
        by_start: dict[int, list[Any]] = {}
        for s in shares:
            by_start.setdefault(s[0], []).append(s)
        out = []
        for b in balances:
            pool.step(b.charge, b.flows[1], b.discharge)
            co2 = co2_mg(b.imported, self.intensity.at(b.start))
            out.append(IntervalResult(b, co2, (pool.sun, pool.grid), by_start.get(b.start, [])))
        return out

    def _forget(self, k: int) -> None:
        """Drop what intervals before `k` held; sessions that ended before it."""
        for counter in self.router.counters.values():
            res = counter.result
            for d in (res.energy, res.flags):
                for old in [x for x in d if x < k]:
                    del d[old]
        for power in self.router.powers.values():
            for bucket in (power._pos, power._neg):
                _fold(bucket, k)
            for old in [x for x in power._flags if x < k]:
                del power._flags[old]
        lo = k * self.step
        self.sessions = {i: s for i, s in self.sessions.items() if s.end is None or s.end > lo}


def _fold(bucket: dict[int, float], k: int) -> None:
    """Replace the buckets before `k` by one at k - 1 holding their running sum, added in the
    same order `PowerSeries.results` adds them, so its cumulative rounding stays exactly as if
    nothing had been dropped."""
    old = sorted(x for x in bucket if x < k)
    if not old or old == [k - 1]:
        return
    carry = 0.0
    for x in old:
        carry += bucket.pop(x)
    bucket[k - 1] = carry


# -- reading the journal ----------------------------------------------------------------------


class RowReader:
    """The rows the engine needs, by seq windows: readings of routed metrics, and session events."""

    def __init__(self, conn: sqlite3.Connection, site: SiteMeters) -> None:
        self.conn = conn
        metrics = sorted({m for _d, m in site.routes()})
        marks = ", ".join("?" * len(metrics))
        self._readings = (
            f"SELECT ts, device, metric, value FROM records WHERE seq > ? AND seq <= ? "
            f"AND value IS NOT NULL AND text IS NULL AND metric IN ({marks}) ORDER BY seq"
        )
        self._events = (
            "SELECT metric, text FROM records WHERE metric IN (?, ?) AND text IS NOT NULL "
            "AND seq > ? AND seq <= ? ORDER BY seq"
        )
        self._metrics = metrics

    def window(self, after: int, upto: int) -> tuple[list[Any], list[Any]]:
        readings = self.conn.execute(self._readings, (after, upto, *self._metrics)).fetchall()
        events = self.conn.execute(self._events, (*SESSION_EVENTS, after, upto)).fetchall()
        return readings, events


def _k_safe(engine: EnergyEngine) -> int:
    """The first interval a later reading could still change (streaming replay)."""
    if not math.isfinite(engine.max_ts):
        return -(2**62)
    return int((engine.max_ts - engine.cfg.max_gap_s) // engine.step) - 1


@dataclass(frozen=True, slots=True)
class ReplaySummary:
    readings: int
    intervals: int
    seconds: float
    first: int | None
    last: int | None


Progress = Callable[[int, int], None]


def replay_journal(
    config: Any,
    *,
    since: float | None = None,
    until: float | None = None,
    progress: Progress | None = None,
    cfg: EnergyConfig | None = None,
) -> ReplaySummary:
    """Rebuild the energy tables from the journal: all of it, or the intervals in [since, until).

    `progress(seq done, last seq)` is called after every batch. Stop the gateway first: the
    live service would write into the same tables.
    """
    cfg = cfg or energy_config(config)
    path = Path(config.journal.path)
    t0 = time.perf_counter()
    with Journal(path) as journal, EnergyStore(path) as store:
        site = site_meters(config, journal)
        k_lo = None if since is None else int(since // cfg.interval_s)
        k_hi = None if until is None else math.ceil(until / cfg.interval_s)
        engine = EnergyEngine(site, cfg, _start_state(store, k_lo, cfg))
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            n, written, last_seq = _replay_rows(
                engine, RowReader(conn, site), store, journal.last_seq(), k_lo, k_hi, progress
            )
        finally:
            conn.close()
        state = engine.state()
        journal.append_with_checkpoint(
            [], CONSUMER, last_seq, json.dumps({**state.to_json(), "resume_seq": _resume(journal, engine)})
        )
    span = store_span(path)
    return ReplaySummary(n, written, time.perf_counter() - t0, span[0] if span else None, span[1] if span else None)


def store_span(path: Path) -> tuple[int, int] | None:
    with EnergyStore(path) as store:
        return store.span()


def _start_state(store: EnergyStore, k_lo: int | None, cfg: EnergyConfig) -> EngineState:
    """A full replay starts empty; a period replay from the pool stored before its first interval."""
    if k_lo is None:
        store.clear()
        store.set("rev", "0")
        store.set("tsdb_rev", "0")
        return EngineState()
    before = store.intervals((k_lo - 1) * cfg.interval_s, k_lo * cfg.interval_s)
    pool = (before[0]["pool_sun"], before[0]["pool_grid"]) if before else (0, 0)
    return EngineState(None, int(pool[0]), int(pool[1]))


def _replay_rows(
    engine: EnergyEngine,
    reader: RowReader,
    store: EnergyStore,
    last_seq: int,
    k_lo: int | None,
    k_hi: int | None,
    progress: Progress | None,
) -> tuple[int, int, int]:
    step = engine.step
    n = written = 0
    after = 0
    cleared = k_lo is None
    while after < last_seq:
        upto = min(after + READ_SPAN, last_seq)
        readings, events = reader.window(after, upto)
        engine.feed(readings, events)
        n += len(readings)
        after = upto
        k_end = _k_safe(engine) if after < last_seq else int(engine.max_ts // step)
        if k_hi is not None:
            k_end = min(k_end, k_hi)
        if k_lo is not None and engine.k_next is None:
            first = engine.first_k()
            engine.k_next = None if first is None else max(first, k_lo)
        if not cleared and engine.k_next is not None:
            store.clear(engine.k_next * step, None if k_hi is None else k_hi * step)
            cleared = True
        results = engine.settle(k_end, final=True)
        if results:
            store.write(results, step, engine.cfg.convention, final=True)
            written += len(results)
        if progress is not None:
            progress(after, last_seq)
    return n, written, last_seq


def _resume(journal: Journal, engine: EnergyEngine) -> int:
    """Where a restarted engine must re-read from: early enough to see the readings before its next interval."""
    if engine.k_next is None:
        return journal.last_seq()
    warm = engine.k_next * engine.step - engine.cfg.max_gap_s - 2 * engine.step
    row = journal._conn.execute("SELECT max(seq) FROM records WHERE ts < ?", (warm,)).fetchone()
    return int(row[0] or 0)


# -- the live service --------------------------------------------------------------------------


class EnergyService:
    """Keeps the energy tables current in the gateway: `async with EnergyService(config) as energy:`."""

    def __init__(self, config: Any, *, cfg: EnergyConfig | None = None) -> None:
        self.config = config
        self.cfg = cfg or energy_config(config)
        self.path = Path(config.journal.path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="energy")
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.journal: Journal | None = None
        self.store: EnergyStore | None = None
        self.engine: EnergyEngine | None = None
        self.reader: RowReader | None = None
        self.position = 0
        self.last_error: str | None = None
        #: (seq, newest ts up to it) per batch read: where a checkpoint says to re-read from.
        self._marks: list[tuple[int, float]] = []

    async def __aenter__(self) -> EnergyService:
        await asyncio.get_running_loop().run_in_executor(self._executor, self.open)
        self._task = asyncio.create_task(self._run(), name="energy")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(self._executor, self.close)
        self._executor.shutdown()

    def notify(self) -> None:
        """New rows in the journal (called on the event loop)."""
        self._wake.set()

    def open(self) -> None:
        self.journal = Journal(self.path)
        self.store = EnergyStore(self.path)
        site = site_meters(self.config, self.journal)
        saved = self.journal.checkpoint(CONSUMER)
        if saved is None:  # a new service starts now; history is `commonwatt replay`'s
            self.position = self.journal.last_seq()
            state = EngineState()
            resume = self.position
        else:
            self.position, text = saved
            data = json.loads(text)
            state = EngineState.from_json(data)
            resume = int(data.get("resume_seq", self.position))
        self.engine = EnergyEngine(site, self.cfg, state)
        self.reader = RowReader(self.journal._conn, site)
        self._marks = [(resume, -math.inf)]
        self._catch_up(resume, self.position)

    def _catch_up(self, resume: int, position: int) -> None:
        """Re-read what the engine needs before its position (its state is saved, its readings not)."""
        assert self.reader is not None and self.engine is not None
        after = resume
        while after < position:
            upto = min(after + READ_SPAN, position)
            readings, events = self.reader.window(after, upto)
            self.engine.feed(readings, events)
            after = upto

    def close(self) -> None:
        for closable in (self.store, self.journal):
            if closable is not None:
                closable.close()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await loop.run_in_executor(self._executor, self.step, time.time())
                self.last_error = None
            except Exception as exc:  # keep running; the error is shown in health
                log.exception("energy step failed")
                self.last_error = str(exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=TICK_S)
            self._wake.clear()

    def step(self, now: float) -> None:
        """Feed the rows after our position; write final and provisional intervals as of `now`."""
        assert self.journal is not None and self.reader is not None and self.engine is not None
        assert self.store is not None
        engine = self.engine
        last = self.journal.last_seq()
        while self.position < last:
            upto = min(self.position + READ_SPAN, last)
            readings, events = self.reader.window(self.position, upto)
            engine.feed(readings, events)
            self.position = upto
            self._marks.append((upto, engine.max_ts))
        k_final = int((now - self.cfg.grace_s) // engine.step)
        final = engine.settle(k_final, final=True)
        if final:
            self.store.write(final, engine.step, self.cfg.convention, final=True)
        if math.isfinite(engine.max_ts):
            pending = engine.settle(int(engine.max_ts // engine.step) + 1, final=False)
            self.store.write(pending, engine.step, self.cfg.convention, final=False)
        state = {**engine.state().to_json(), "resume_seq": self._resume_seq()}
        self.journal.append_with_checkpoint([], CONSUMER, self.position, json.dumps(state))

    def _resume_seq(self) -> int:
        engine = self.engine
        assert engine is not None
        if engine.k_next is None:
            return self.position
        warm = engine.k_next * engine.step - self.cfg.max_gap_s - 2 * engine.step
        keep = 0
        while keep < len(self._marks) - 1 and self._marks[keep + 1][1] < warm:
            keep += 1
        self._marks = self._marks[keep:]
        first = self._marks[0] if self._marks else None
        return first[0] if first is not None and first[1] < warm else self._saved_resume()

    def _saved_resume(self) -> int:
        assert self.journal is not None
        saved = self.journal.checkpoint(CONSUMER)
        return int(json.loads(saved[1]).get("resume_seq", 0)) if saved else 0


# -- the TSDB ------------------------------------------------------------------------------------

MEASUREMENT = "commonwatt_energy"
BALANCE_FIELDS = (
    "pv", "discharge", "import", "charge", "export", "consumption", "sun_load", "sun_battery", "sun_grid",
    "battery_load", "battery_grid", "grid_load", "grid_battery", "unmatched", "mix_sun", "mix_battery_sun",
    "mix_battery_grid", "mix_grid", "site_load", "residual",
)  # fmt: skip
SOURCE_FIELDS = ("energy", "sun", "battery_sun", "battery_grid", "grid")


def energy_lines(
    site: str, secret: bytes, interval: sqlite3.Row, shares: list[tuple[object, ...]]
) -> tuple[list[str], list[int]]:
    """Line protocol of one interval: its balance, and its consumers by source (members pseudonymous).

    Sessions are summed per member and machine: session ids would make a series each.
    """
    ms = to_ms(int(interval["start"]))
    tag = f"{MEASUREMENT},site={escape_key(site)}"
    fields = [f"{name}_mwh={float(interval[name])!r}" for name in BALANCE_FIELDS if interval[name] is not None]
    fields += [f"co2_mg={float(interval['co2_mg'])!r}", f"flags={float(interval['flags'])!r}"]
    lines, points = [f"{tag},kind=balance {','.join(fields)} {ms}"], [len(fields)]
    sums: dict[tuple[str, str, str], list[int]] = {}
    for _start, kind, machine, member, _sid, *values, _flags in shares:
        who = pseudonym(secret, str(member)) if member else ""
        acc = sums.setdefault((str(kind), str(machine), who), [0] * 5)
        for i, v in enumerate(values):
            acc[i] += int(str(v))
    for (kind, machine, who), acc in sorted(sums.items()):
        tags = f"{tag},kind={kind}" + (f",machine={escape_key(machine)}" if machine else "")
        tags += f",member={who}" if who else ""
        body = ",".join(f"{n}_mwh={float(v)!r}" for n, v in zip(SOURCE_FIELDS, acc, strict=True))
        lines.append(f"{tags} {body} {ms}")
        points.append(len(SOURCE_FIELDS))
    return lines, points


class EnergyTsdbWriter(TsdbSink):
    """The energy tables' intervals into the TSDB, with the TSDB sink's retries and bisection.

    Its cursor is the tables' `rev` (in `energy_state`, key `tsdb_rev`): every interval written
    or rewritten after it is sent again; the TSDB keeps the last value per series and timestamp.
    """

    def __init__(self, *, journal_path: str | Path, site: str, **kw: Any) -> None:
        super().__init__(journal_path=journal_path, site=site, consumer="energy_tsdb", **kw)
        self.site = site
        self._store: EnergyStore | None = None

    def _step(self, journal: Journal, api: WriteApi) -> None:
        self._wake.clear()
        if self._store is None:
            self._store = EnergyStore(self.journal_path)
            self.health.cursor = int(self._store.get("tsdb_rev") or 0)
        store = self._store
        rows = store.intervals_after(self.health.cursor, max(1, self.batch_size // 50))
        self.health.last_seq = store.rev()
        if not rows:
            self._wake.wait(self.poll_s)
            return
        secret = store.secret()
        by_start: dict[int, list[tuple[object, ...]]] = {}
        for s in store.shares([int(r["start"]) for r in rows]):
            by_start.setdefault(int(str(s[0])), []).append(s)
        batch = Formatted()
        for r in rows:
            lines, points = energy_lines(self.site, secret, r, by_start.get(int(r["start"]), []))
            batch.lines += lines
            batch.points += points
        self._write_split(api, batch)
        rev = int(rows[-1]["rev"])
        store.set("tsdb_rev", str(rev))
        with self._progress:
            self.health.cursor = rev
            self.health.batches += 1
            self._progress.notify_all()

    def _run(self) -> None:
        try:
            super()._run()
        finally:  # the store's connection belongs to this thread: close it here
            if self._store is not None:
                self._store.close()
                self._store = None
