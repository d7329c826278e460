"""The energy balance at run time and on replay: journal rows -> the energy interval tables.

One engine (`EnergyEngine`) serves both:

- `replay_journal` (`commonwatt replay`) reads the journal in big batches of the rows the
  energy domain needs (energy counters, `power_w` of power-only devices, session events),
  feeds `gateway.domain.energy`, and writes each interval as soon as no later reading can
  change it: when the newest reading is more than `max_gap_s` plus an interval past its end
  (a later counter delta reaching back further is a gap, which places no energy). Memory
  stays flat over a month. On a machine with two cores, two worker processes read and count
  the series while this one does the balance and the writes (see "replay on two cores").
  The result is the same, byte for byte, on every replay and with any number of workers;
- `EnergyService`, in the gateway, a journal consumer like the machine floor: it wakes on
  every commit, feeds the new rows, writes the intervals not yet final (`final = 0`,
  rewritten as readings arrive) and makes an interval final once its end plus
  `final_after_s` (two intervals by default) has passed and every meter has reported past
  its end, or `meter_wait_s` (5 minutes) more has passed (`EnergyEngine.k_ready`). Its state (the next interval to
  make final, the battery pool, the sessions still open, where to re-read from) is saved
  with `Journal.append_with_checkpoint`; after a restart it re-reads from there.

Replay is the reference. The live service gives the same numbers except where a meter
went more than `meter_wait_s` without a reading and then reported energy for that time (a
meter that reports every few minutes is waited for); `commonwatt replay`
(gateway stopped) rebuilds the tables from the journal and the live service goes on from
the replay's end.

The TSDB gets its energy series from the tables, not from the journal: `EnergyTsdbWriter`
(the TSDB sink's retrying writer, with a cursor of its own over the tables' `rev`).
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import itertools
import json
import logging
import math
import multiprocessing
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import ForkContext, SpawnContext
from multiprocessing.process import BaseProcess
from operator import itemgetter
from pathlib import Path
from typing import Any

from influxdb_client.client.write_api import WriteApi

from gateway.config import EnergyConfig
from gateway.consumer import JournalConsumerService
from gateway.domain.energy import (
    BatteryPool,
    Router,
    Session,
    SiteMeters,
    co2_mg,
    compute,
    power_only_devices,
)
from gateway.domain.energy.intervals import SeriesEnergy
from gateway.domain.energy.meters import COUNTER_CHANNELS, Channels
from gateway.energy_store import EnergyStore, IntervalResult, pseudonym
from gateway.journal import Journal
from gateway.sinks.lineprotocol import Formatted, escape_key, to_ms
from gateway.sinks.tsdb import TsdbSink

log = logging.getLogger(__name__)

CONSUMER = "energy"
SESSION_EVENTS = ("event.session_opened", "event.session_closed")
#: Journal rows (seq numbers) looked at per read.
READ_SPAN = 100_000
#: Open (provisional) intervals and the live service's checkpoint are saved at most this often.
PENDING_EVERY_S = 2.0
TICK_S = 5.0
#: Intervals one live step makes final at most (a week of minutes). A gateway far behind (started
#: on an old journal, or fed by a meter whose clock is years off) catches up in such steps, saving
#: its checkpoint after each, and a stop waits for one of them only, not for the whole backlog.
SETTLE_SPAN = 10_080
#: Readings of one window by series key: (timestamps, values) in journal order.
Columns = dict[str, tuple[list[float], list[float]]]
_SID, _TS, _VALUE = itemgetter(0), itemgetter(1), itemgetter(2)
#: Numbers the temporary tables of the readers on one connection.
_TABLES = itertools.count(1)


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

    def __init__(
        self, site: SiteMeters, cfg: EnergyConfig, state: EngineState | None = None, *, router: Router | None = None
    ) -> None:
        self.site = site
        self.cfg = cfg
        self.settings = cfg.settings()
        self.intensity = cfg.intensity()
        self.step = cfg.interval_s
        self.router = router or Router(site, interval_s=self.step, max_gap_s=cfg.max_gap_s)
        state = state or EngineState()
        self.k_next = state.k_next
        self.pool = BatteryPool(state.pool_sun, state.pool_grid)
        self.sessions: dict[str, Session] = {s.session_id: s for s in state.sessions}

    def feed(self, readings: Columns, events: list[tuple[str, str]]) -> None:
        """Readings by series (see `RowReader`); session events (metric, JSON) in journal order."""
        self.feed_events(events)
        self.router.feed_columns(readings)

    def feed_events(self, events: list[tuple[str, str]]) -> None:
        for metric, text in events:
            e = json.loads(text)
            end = e["end"] if metric == "event.session_closed" else None
            old = self.sessions.get(e["session_id"])
            if old is None or old.end is None:
                self.sessions[e["session_id"]] = Session(
                    e["session_id"], e["machine_id"], e["member_id"], float(e["start"]), end
                )

    @property
    def max_ts(self) -> float:
        return self.router.max_ts

    def k_ready(self, now: float, grace_s: float) -> int:
        """Intervals before this one may be made final at `now` (live).

        An interval is final `grace_s` after its end once every meter has reported past it,
        so a meter that reports every few minutes (Tasmota's default TelePeriod is 5 min, a
        Victron GX publishing on change) still has its delta placed in the intervals it spans,
        as a replay places it; and in any case `meter_wait_s` later, so that a meter asleep
        (an inverter at night) or gone does not hold back the receipts.
        """
        k_now = int((now - grace_s) // self.step)
        reported = self.router.reported_until()
        if reported is None:
            return k_now
        k_waited = int((now - self.cfg.meter_wait_s - grace_s) // self.step)
        return min(k_now, max(int(reported // self.step), k_waited))

    def state(self) -> EngineState:
        live = tuple(sorted(self.sessions.values(), key=lambda s: (s.start, s.session_id)))
        return EngineState(self.k_next, self.pool.sun, self.pool.grid, live)

    def first_k(self) -> int | None:
        first = self.router.first_ts()
        return None if first is None else int(first // self.step)

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
        channels = self.router.channels(k0, k_end)
        if final:  # before the balance: a router in worker processes goes on with the next readings
            self.router.forget(k_end)
        result = compute(channels, self.site.machines, sessions, self.settings, pool)
        out = self._results(result.balances, result.shares, start_pool)
        if final:
            self.k_next = k_end
            self.sessions = {i: s for i, s in self.sessions.items() if s.end is None or s.end > k_end * self.step}
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


# -- reading the journal ----------------------------------------------------------------------


class RowReader:
    """The rows the engine needs, by seq windows: readings of routed series, and session events.

    Readings come back split by series, as columns (key -> (timestamps, values)): SQLite
    matches each row to its series through a small temporary table (`energy_routes_<n>`) and
    Python sorts the window by series with one C-level sort, so there is no Python step per
    row between the journal and `CounterTracker.deltas`. Within a series the rows keep
    journal order (the sort is stable).
    """

    def __init__(self, conn: sqlite3.Connection, site: SiteMeters, keys: Iterable[str] | None = None) -> None:
        self.conn = conn
        routes = site.routes()
        wanted = set(routes.values()) if keys is None else set(keys)
        self.keys = sorted(k for k in routes.values() if k in wanted)
        ids = {key: i for i, key in enumerate(self.keys)}
        table = f"temp.energy_routes_{next(_TABLES)}"
        conn.execute(f"CREATE TABLE {table} (device TEXT, metric TEXT, sid INTEGER, PRIMARY KEY (device, metric))")
        conn.executemany(
            f"INSERT INTO {table} VALUES (?, ?, ?)",
            [(d, m, ids[key]) for (d, m), key in sorted(routes.items()) if key in ids],
        )
        self._readings = (
            f"SELECT r.sid, x.ts, x.value FROM records x JOIN {table} r ON r.device = x.device AND r.metric = x.metric "
            "WHERE x.seq > ? AND x.seq <= ? AND x.value IS NOT NULL AND x.text IS NULL ORDER BY x.seq"
        )
        self._events = (
            "SELECT metric, text FROM records WHERE metric IN (?, ?) AND text IS NOT NULL "
            "AND seq > ? AND seq <= ? ORDER BY seq"
        )

    def window(self, after: int, upto: int) -> tuple[Columns, list[tuple[str, str]]]:
        return self.readings(after, upto), self.events(after, upto)

    def readings(self, after: int, upto: int) -> Columns:
        rows = self.conn.execute(self._readings, (after, upto)).fetchall()
        rows.sort(key=_SID)
        out: Columns = {}
        i, n = 0, len(rows)
        while i < n:
            sid = rows[i][0]
            j = bisect.bisect_right(rows, sid, i, key=_SID)
            part = rows[i:j]
            out[self.keys[sid]] = (list(map(_TS, part)), list(map(_VALUE, part)))
            i = j
        return out

    def events(self, after: int, upto: int) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = self.conn.execute(self._events, (*SESSION_EVENTS, after, upto)).fetchall()
        return found


def count(columns: Columns) -> int:
    return sum(len(ts) for ts, _v in columns.values())


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
    workers: int | None = None,
) -> ReplaySummary:
    """Rebuild the energy tables from the journal: all of it, or the intervals in [since, until).

    `progress(seq done, last seq)` is called after every batch. Stop the gateway first: the
    live service would write into the same tables. `workers`: processes that read and count
    the series (by default 2 on a machine with 2 cores or more and a journal of more than a
    few windows; 1 reads them in this process). The result is the same whatever the number.
    """
    cfg = cfg or energy_config(config)
    path = Path(config.journal.path)
    t0 = time.perf_counter()
    with Journal(path) as journal, EnergyStore(path) as store:
        site = site_meters(config, journal)
        last_seq = journal.last_seq()
        counts = {f"{d}/{m}": s.count for (d, m), s in journal.stats().series.items()}
        k_lo = None if since is None else int(since // cfg.interval_s)
        k_hi = None if until is None else math.ceil(until / cfg.interval_s)
        state = _start_state(store, k_lo, cfg)
        conn = sqlite3.connect(path, isolation_level=None)
        groups = _split_keys(site, counts, _worker_count(workers, last_seq))
        try:
            with _readings_source(conn, path, site, cfg, groups, last_seq) as source:
                engine = EnergyEngine(site, cfg, state, router=source.router)
                n, written = _replay_rows(
                    engine, source, RowReader(conn, site, ()), store, last_seq, k_lo, k_hi, progress
                )
        finally:
            conn.close()
        state_after = engine.state()
        journal.append_with_checkpoint(
            [], CONSUMER, last_seq, json.dumps({**state_after.to_json(), "resume_seq": _resume(journal, engine)})
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
    source: Source,
    events: RowReader,
    store: EnergyStore,
    last_seq: int,
    k_lo: int | None,
    k_hi: int | None,
    progress: Progress | None,
) -> tuple[int, int]:
    step = engine.step
    n = written = 0
    after = 0
    cleared = k_lo is None
    while after < last_seq:
        upto = min(after + READ_SPAN, last_seq)
        engine.feed_events(events.events(after, upto))
        n += source.feed(after, upto)
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
        source.release()  # the workers read the next window while this one is written
        if results:
            store.write(results, step, engine.cfg.convention, final=True)
            written += len(results)
        if progress is not None:
            progress(after, last_seq)
    return n, written


# -- replay on two cores ------------------------------------------------------------------------
#
# The series are independent until the balance: each worker process opens the journal read-only,
# reads the readings of its share of the series (`RowReader` with `keys`) and counts them into
# intervals with its own `Router`; the parent reads the session events, asks the workers for
# their series' energy when it settles intervals, and does the balance, the attribution and the
# writes. While the parent writes one window, the workers already read the next. The numbers
# are the same as in one process, since every series sees the same readings in the same order
# and is settled at the same points (tested).


def _worker_count(workers: int | None, last_seq: int) -> int:
    if workers is not None:
        return max(1, workers)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 2 if cores >= 2 and last_seq > 4 * READ_SPAN else 1


def _split_keys(site: SiteMeters, counts: Mapping[str, int], parts: int) -> list[list[str]]:
    """The series keys in `parts` groups of about equal readings (largest first, to the lightest)."""
    groups: list[list[str]] = [[] for _ in range(parts)]
    loads = [0] * parts
    for key in sorted(set(site.routes().values()), key=lambda k: (-counts.get(k, 0), k)):
        i = loads.index(min(loads))
        groups[i].append(key)
        loads[i] += counts.get(key, 0)
    return [g for g in groups if g]


class Source:
    """Readings into the engine's router, window by window, in this process."""

    def __init__(self, conn: sqlite3.Connection, site: SiteMeters, cfg: EnergyConfig) -> None:
        self.router = Router(site, interval_s=cfg.interval_s, max_gap_s=cfg.max_gap_s)
        self.reader = RowReader(conn, site)

    def feed(self, after: int, upto: int) -> int:
        """Feed the readings with seq in (after, upto]; how many there were."""
        columns = self.reader.readings(after, upto)
        self.router.feed_columns(columns)
        return count(columns)

    def release(self) -> None:
        """The window is settled: its readings are no longer needed."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class WorkerRouter(Router):
    """The parent's view of series counted in worker processes (one `Pipe` each)."""

    def __init__(self, site: SiteMeters, cfg: EnergyConfig, pipes: list[Connection]) -> None:
        super().__init__(site, interval_s=cfg.interval_s, max_gap_s=cfg.max_gap_s)
        self.pipes = pipes
        self._first: float | None = None
        #: Whether the workers were told to go on to the next window (after `forget`).
        self.released = False

    def fed(self) -> int:
        """Wait for every worker to have fed the current window; how many readings it held."""
        n = 0
        self.released = False
        for pipe in self.pipes:
            max_ts, found, first = pipe.recv()
            n += found
            self.max_ts = max(self.max_ts, max_ts)
            if first is not None and (self._first is None or first < self._first):
                self._first = first
        return n

    def first_ts(self) -> float | None:
        return self._first

    def channels(self, k0: int, k1: int, series: Mapping[str, SeriesEnergy] | None = None) -> Channels:
        if series is None:
            for pipe in self.pipes:
                pipe.send(("series",))
            merged: dict[str, SeriesEnergy] = {}
            for pipe in self.pipes:
                merged.update(pipe.recv())
            series = merged
        return super().channels(k0, k1, series)

    def forget(self, k: int) -> None:
        """The intervals before `k` are final: the workers drop them and read the next window."""
        for pipe in self.pipes:
            pipe.send(("forget", k))
            pipe.send(("next",))
        self.released = True


class WorkerSource(Source):
    """Readings counted by worker processes, one per group of series."""

    def __init__(self, path: Path, site: SiteMeters, cfg: EnergyConfig, groups: list[list[str]], last_seq: int):
        ctx = _context()
        self.pipes: list[Connection] = []
        self.procs: list[BaseProcess] = []
        # A forked worker must never close this process's SQLite connections, which a garbage
        # collection in it could do: what exists now is left out of its collections.
        gc.freeze()
        try:
            self._start(ctx, path, site, cfg, groups, last_seq)
        finally:
            gc.unfreeze()
        self.router = WorkerRouter(site, cfg, self.pipes)

    def _start(
        self,
        ctx: ForkContext | SpawnContext,
        path: Path,
        site: SiteMeters,
        cfg: EnergyConfig,
        groups: list[list[str]],
        last_seq: int,
    ) -> None:
        for keys in groups:
            here, there = ctx.Pipe()
            proc = ctx.Process(
                target=_series_worker,
                args=(there, str(path), site, keys, (cfg.interval_s, cfg.max_gap_s), (last_seq, READ_SPAN)),
                daemon=True,
                name="energy-replay",
            )
            proc.start()
            there.close()
            self.pipes.append(here)
            self.procs.append(proc)

    def feed(self, after: int, upto: int) -> int:
        assert isinstance(self.router, WorkerRouter)
        return self.router.fed()

    def release(self) -> None:
        assert isinstance(self.router, WorkerRouter)
        if not self.router.released:
            for pipe in self.pipes:
                pipe.send(("next",))
            self.router.released = True

    def __exit__(self, *exc: object) -> None:
        for pipe in self.pipes:
            pipe.close()
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()


def _context() -> ForkContext | SpawnContext:
    """`fork` when this process runs one thread (the worker starts at once, nothing imported
    again: about a second of CPU less per worker); `spawn` otherwise, since a forked child of
    a threaded process may inherit a lock some other thread held (a progress bar's, a logger's)."""
    if threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


@contextlib.contextmanager
def _readings_source(
    conn: sqlite3.Connection, path: Path, site: SiteMeters, cfg: EnergyConfig, groups: list[list[str]], last_seq: int
) -> Iterator[Source]:
    source = Source(conn, site, cfg) if len(groups) <= 1 else WorkerSource(path, site, cfg, groups, last_seq)
    with source:
        yield source


def _series_worker(
    pipe: Connection, path: str, site: SiteMeters, keys: list[str], options: tuple[int, float], reads: tuple[int, int]
) -> None:
    """A worker process: its series, window after window, as the parent asks (see the section above)."""
    conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    try:
        reader = RowReader(conn, site, keys)
        router = Router(site, interval_s=options[0], max_gap_s=options[1])
        last_seq, span = reads
        mine = {k for key in keys for k in (key, key + "/+", key + "/-")}
        after = 0
        while after < last_seq:
            upto = min(after + span, last_seq)
            columns = reader.readings(after, upto)
            router.feed_columns(columns)
            pipe.send((router.max_ts, count(columns), router.first_ts()))
            after = upto
            while (msg := pipe.recv())[0] != "next":
                if msg[0] == "series":
                    pipe.send({k: v for k, v in router.series().items() if k in mine})
                else:
                    router.forget(msg[1])
    except EOFError:  # the parent stopped early (an error there): nothing more to do
        pass
    finally:
        conn.close()
        pipe.close()


def _resume(journal: Journal, engine: EnergyEngine) -> int:
    """Where a restarted engine must re-read from: early enough to see the readings before its next interval."""
    if engine.k_next is None:
        return journal.last_seq()
    warm = engine.k_next * engine.step - engine.cfg.max_gap_s - 2 * engine.step
    row = journal._conn.execute("SELECT max(seq) FROM records WHERE ts < ?", (warm,)).fetchone()
    return int(row[0] or 0)


# -- the live service --------------------------------------------------------------------------


class EnergyService(JournalConsumerService):
    """Keeps the energy tables current in the gateway: `async with EnergyService(config) as energy:`."""

    def __init__(self, config: Any, *, cfg: EnergyConfig | None = None) -> None:
        super().__init__("energy", tick_s=TICK_S, log=log)
        self.config = config
        self.cfg = cfg or energy_config(config)
        self.path = Path(config.journal.path)
        self.journal: Journal | None = None
        self.store: EnergyStore | None = None
        self.engine: EnergyEngine | None = None
        self.reader: RowReader | None = None
        self.position = 0
        #: (seq, newest ts up to it) per batch read: where a checkpoint says to re-read from.
        self._marks: list[tuple[int, float]] = []
        self._saved = 0.0
        self._stopping = False

    async def __aexit__(self, *exc: object) -> None:
        self._stopping = True  # a step catching up stops after its current span
        await super().__aexit__(*exc)

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

    def step(self, now: float) -> None:
        """Feed the rows after our position; write final and provisional intervals as of `now`.

        Far behind, it works in spans of `SETTLE_SPAN` intervals, each saved, and returns
        early when the service is stopping.
        """
        while self._step(now) and not self._stopping:
            pass

    def _step(self, now: float) -> bool:
        """One span; True when intervals up to `now` remain to be made final."""
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
        k_now = engine.k_ready(now, self.cfg.grace_s)
        k_from = engine.k_next if engine.k_next is not None else engine.first_k()
        k_final = k_now if k_from is None else min(k_now, k_from + SETTLE_SPAN)
        behind = k_final < k_now
        final = engine.settle(k_final, final=True)
        if final:
            self.store.write(final, engine.step, self.cfg.convention, final=True)
        elif time.monotonic() - self._saved < PENDING_EVERY_S:
            # Nothing became final: the open intervals and the checkpoint can wait a moment. Writing
            # them on every journal commit would compete with the ingest path for the database.
            return behind
        self._saved = time.monotonic()
        if math.isfinite(engine.max_ts) and not behind:
            # Provisional intervals up to the newest reading, a span at most: a reading stamped far
            # in the future (a device clock gone wrong) must not cost millions of empty intervals.
            k_pending = int(engine.max_ts // engine.step) + 1
            if engine.k_next is not None:
                k_pending = min(k_pending, engine.k_next + SETTLE_SPAN)
            pending = engine.settle(k_pending, final=False)
            self.store.write(pending, engine.step, self.cfg.convention, final=False)
        state = {**engine.state().to_json(), "resume_seq": self._resume_seq()}
        self.journal.append_with_checkpoint([], CONSUMER, self.position, json.dumps(state))
        return behind

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

    Its cursor is the tables' `rev` (in `energy_state`, key `tsdb_rev`). Only FINAL intervals
    are sent: an interval is written once more when it becomes final (a new `rev`), and
    VictoriaMetrics, deduplicating samples of one series and timestamp, keeps the biggest value
    written, not the last; a provisional value that a later reading lowered would stay. So the
    dashboards run `final_after_s` (two intervals by default) behind the gateway's own pages.
    """

    def __init__(self, *, journal_path: str | Path, site: str, **kw: Any) -> None:
        super().__init__(journal_path=journal_path, site=site, consumer="energy_tsdb", **kw)
        self.health.name = "energy_tsdb"
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
        final = [r for r in rows if r["final"]]
        by_start: dict[int, list[tuple[object, ...]]] = {}
        for s in store.shares([int(r["start"]) for r in final]):
            by_start.setdefault(int(str(s[0])), []).append(s)
        batch = Formatted()
        for r in final:
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
