"""The energy interval tables, in the gateway's database file beside the journal.

Written by `commonwatt replay` (a rebuild from the journal) and by the live `EnergyService`;
read by the API, `commonwatt energy report` and the TSDB writer. Tables:

- `energy_intervals`: one row per interval (`start`, UTC seconds): the balance terms, the
  seven flows, unmatched energy, the load's mix (sun, battery of sun origin, battery of grid
  origin, grid), the `site_load` meter and residual, CO₂ (mg), quality flags (bit set, see
  `gateway.domain.energy.intervals`), the battery pool after the interval, the convention,
  and `final` (0 while the live service may still revise it);
- `energy_shares`: per interval and consumer (`member` on a machine in a session,
  `unattributed` on a machine, `base` load of the site): energy by source. Absent keys
  are '' (not NULL) so the primary key is a real one;
- `energy_state`: the site's pseudonym secret and the TSDB writer's position.

Every energy value is integer mWh. `rev` grows with every write of an interval (the
TSDB writer's cursor); a replay numbers its intervals 1, 2, 3... in time order, so the
tables, `rev` included, are byte-identical on every replay of the same journal (`dump`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.domain.energy import Balance, Share

DDL = """
CREATE TABLE IF NOT EXISTS energy_intervals (
    start INTEGER PRIMARY KEY,
    interval_s INTEGER NOT NULL,
    convention TEXT NOT NULL,
    pv INTEGER NOT NULL, discharge INTEGER NOT NULL, import INTEGER NOT NULL,
    charge INTEGER NOT NULL, export INTEGER NOT NULL, consumption INTEGER NOT NULL,
    sun_load INTEGER NOT NULL, sun_battery INTEGER NOT NULL, sun_grid INTEGER NOT NULL,
    battery_load INTEGER NOT NULL, battery_grid INTEGER NOT NULL, grid_load INTEGER NOT NULL,
    grid_battery INTEGER NOT NULL, unmatched INTEGER NOT NULL,
    mix_sun INTEGER NOT NULL, mix_battery_sun INTEGER NOT NULL, mix_battery_grid INTEGER NOT NULL,
    mix_grid INTEGER NOT NULL,
    site_load INTEGER, residual INTEGER,
    co2_mg INTEGER NOT NULL,
    flags INTEGER NOT NULL, site_load_flags INTEGER NOT NULL,
    pool_sun INTEGER NOT NULL, pool_grid INTEGER NOT NULL,
    final INTEGER NOT NULL,
    rev INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS energy_intervals_rev ON energy_intervals (rev);
CREATE TABLE IF NOT EXISTS energy_shares (
    start INTEGER NOT NULL,
    kind TEXT NOT NULL,
    machine_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    energy INTEGER NOT NULL,
    sun INTEGER NOT NULL, battery_sun INTEGER NOT NULL, battery_grid INTEGER NOT NULL, grid INTEGER NOT NULL,
    flags INTEGER NOT NULL,
    PRIMARY KEY (start, kind, machine_id, member_id, session_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS energy_shares_member ON energy_shares (member_id, start) WHERE member_id != '';
CREATE TABLE IF NOT EXISTS energy_state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

INTERVAL_COLUMNS = (
    "start", "interval_s", "convention", "pv", "discharge", "import", "charge", "export", "consumption",
    "sun_load", "sun_battery", "sun_grid", "battery_load", "battery_grid", "grid_load", "grid_battery",
    "unmatched", "mix_sun", "mix_battery_sun", "mix_battery_grid", "mix_grid", "site_load", "residual",
    "co2_mg", "flags", "site_load_flags", "pool_sun", "pool_grid", "final", "rev",
)  # fmt: skip
SHARE_COLUMNS = (
    "start", "kind", "machine_id", "member_id", "session_id",
    "energy", "sun", "battery_sun", "battery_grid", "grid", "flags",
)  # fmt: skip

_INSERT_INTERVAL = (
    f"INSERT OR REPLACE INTO energy_intervals ({', '.join(INTERVAL_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(INTERVAL_COLUMNS))})"
)
_INSERT_SHARE = f"INSERT INTO energy_shares ({', '.join(SHARE_COLUMNS)}) VALUES ({', '.join('?' * len(SHARE_COLUMNS))})"

#: Characters of the HMAC-SHA256 hex digest kept as a member's pseudonym.
PSEUDONYM_HEX = 10


@dataclass(frozen=True, slots=True)
class IntervalResult:
    """One computed interval: its balance, CO₂, the battery pool after it, and its consumers."""

    balance: Balance
    co2_mg: int
    pool: tuple[int, int]
    shares: list[Share]


def interval_row(r: IntervalResult, interval_s: int, convention: str, final: bool, rev: int) -> tuple[object, ...]:
    b = r.balance
    return (
        b.start, interval_s, convention, b.pv, b.discharge, b.imported, b.charge, b.exported, b.consumption,
        *b.flows, b.unmatched, *b.mix, b.site_load, b.residual, r.co2_mg, b.flags, b.site_load_flags,
        *r.pool, int(final), rev,
    )  # fmt: skip


def share_row(s: Share) -> tuple[object, ...]:
    start, kind, machine, member, session, *rest = s
    return (start, kind, machine or "", member or "", session or "", *rest)


class EnergyStore:
    """One connection to the energy tables (one per thread, like `Journal`)."""

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        if readonly:
            self._conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.executescript(f"BEGIN IMMEDIATE; {DDL} COMMIT;")
        self._conn.execute("PRAGMA busy_timeout = 5000")
        self._conn.execute("PRAGMA synchronous = NORMAL")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> EnergyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -----------------------------------------------------------------------------

    def clear(self, since: int | None = None, until: int | None = None) -> None:
        """Drop the intervals (and their shares) in [since, until); everything without bounds."""
        lo, hi = since if since is not None else -(2**62), until if until is not None else 2**62
        with self._tx():
            self._conn.execute("DELETE FROM energy_intervals WHERE start >= ? AND start < ?", (lo, hi))
            self._conn.execute("DELETE FROM energy_shares WHERE start >= ? AND start < ?", (lo, hi))

    def write(self, results: Sequence[IntervalResult], interval_s: int, convention: str, *, final: bool) -> int:
        """Write intervals (replacing what is there for their starts) in one transaction; the last rev."""
        if not results:
            return self.rev()
        with self._tx():
            rev = self.rev()
            rows = []
            for r in results:
                rev += 1
                rows.append(interval_row(r, interval_s, convention, final, rev))
            starts = [(r.balance.start,) for r in results]
            self._conn.executemany("DELETE FROM energy_shares WHERE start = ?", starts)
            self._conn.executemany(_INSERT_INTERVAL, rows)
            self._conn.executemany(_INSERT_SHARE, [share_row(s) for r in results for s in r.shares])
            self._set("rev", str(rev))
        return rev

    def _tx(self) -> _Transaction:
        return _Transaction(self._conn)

    # -- state -------------------------------------------------------------------------------

    def get(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM energy_state WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set(self, key: str, value: str) -> None:
        self._set(key, value)

    def _set(self, key: str, value: str) -> None:
        self._conn.execute(
            "INSERT INTO energy_state (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def rev(self) -> int:
        return int(self.get("rev") or 0)

    def secret(self) -> bytes:
        """The site's pseudonym key: 32 random bytes made on first use, kept in `energy_state`."""
        found = self.get("pseudonym_secret")
        if found is None:
            self._conn.execute(
                "INSERT OR IGNORE INTO energy_state (key, value) VALUES ('pseudonym_secret', ?)",
                (secrets.token_hex(32),),
            )
            found = self.get("pseudonym_secret")
        assert found is not None
        return bytes.fromhex(found)

    # -- reading -----------------------------------------------------------------------------

    def intervals(self, since: float, until: float) -> list[sqlite3.Row]:
        self._conn.row_factory = sqlite3.Row
        try:
            return self._conn.execute(
                "SELECT * FROM energy_intervals WHERE start >= ? AND start < ? ORDER BY start", (since, until)
            ).fetchall()
        finally:
            self._conn.row_factory = None

    def intervals_after(self, rev: int, limit: int) -> list[sqlite3.Row]:
        """Intervals written after `rev`, in rev order: what the TSDB has not seen."""
        self._conn.row_factory = sqlite3.Row
        try:
            return self._conn.execute(
                "SELECT * FROM energy_intervals WHERE rev > ? ORDER BY rev LIMIT ?", (rev, limit)
            ).fetchall()
        finally:
            self._conn.row_factory = None

    def shares(self, starts: Iterable[int]) -> list[tuple[object, ...]]:
        """The consumers of the given intervals, in key order."""
        out: list[tuple[object, ...]] = []
        for start in starts:
            out += self._conn.execute(
                f"SELECT {', '.join(SHARE_COLUMNS)} FROM energy_shares WHERE start = ? ORDER BY 1, 2, 3, 4, 5",
                (start,),
            ).fetchall()
        return out

    def member_shares(self, member_id: str, since: float, until: float) -> list[tuple[object, ...]]:
        return self._conn.execute(
            f"SELECT {', '.join(SHARE_COLUMNS)} FROM energy_shares WHERE member_id = ? AND start >= ? AND start < ? "
            "ORDER BY start, machine_id, session_id",
            (member_id, since, until),
        ).fetchall()

    def consumer_totals(self, since: float, until: float) -> list[tuple[object, ...]]:
        """Per (kind, machine, member): energy and the four sources, summed over the period."""
        return self._conn.execute(
            "SELECT kind, machine_id, member_id, sum(energy), sum(sun), sum(battery_sun), sum(battery_grid), "
            "sum(grid) FROM energy_shares WHERE start >= ? AND start < ? GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
            (since, until),
        ).fetchall()

    def span(self) -> tuple[int, int] | None:
        row = self._conn.execute("SELECT min(start), max(start) FROM energy_intervals").fetchone()
        return None if row[0] is None else (int(row[0]), int(row[1]))

    def dump(self) -> bytes:
        """Both tables, every column, in key order, as canonical JSON lines: what a replay must reproduce."""
        lines = [b"energy_intervals " + json.dumps(list(INTERVAL_COLUMNS)).encode()]
        for row in self._conn.execute("SELECT * FROM energy_intervals ORDER BY start"):
            lines.append(json.dumps(list(row), separators=(",", ":")).encode())
        lines.append(b"energy_shares " + json.dumps(list(SHARE_COLUMNS)).encode())
        for row in self._conn.execute("SELECT * FROM energy_shares ORDER BY 1, 2, 3, 4, 5"):
            lines.append(json.dumps(list(row), separators=(",", ":")).encode())
        return b"\n".join(lines) + b"\n"


def pseudonym(secret: bytes, member_id: str) -> str:
    """A member's name in the TSDB: HMAC-SHA256(site secret, member id), the first 10 hex digits.

    Stable for a site (dashboards can follow one member over time), meaningless elsewhere, and
    not reversible without the secret in the database (which never leaves the gateway).
    """
    return hmac.new(secret, member_id.encode(), hashlib.sha256).hexdigest()[:PSEUDONYM_HEX]


class _Transaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
