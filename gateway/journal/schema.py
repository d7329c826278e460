"""The journal's tables, and how a record becomes a row and back.

One table, `records`, holds everything that entered the gateway, in arrival order:

| record | ts | device | metric | value | text |
| --- | --- | --- | --- | --- | --- |
| Reading | ts | device | metric | value | NULL |
| BadgeEvent | ts | reader | `badge` | NULL | badge UID |
| other events | ts | source | `event.<kind>` | optional | JSON |

A row whose `text` is NULL is a Reading; `badge` rows are BadgeEvents; metrics that
start with `event.` are reserved for the events later parts of the gateway append
(access decisions, session boundaries). Triggers refuse UPDATE, DELETE and an INSERT
that names its own seq (which is how `INSERT OR REPLACE` would overwrite a row: in a
BEFORE INSERT trigger an automatic rowid reads as -1). The journal only ever grows, and
its seqs run 1, 2, 3... without holes, which is what lets an auditor recompute
everything from it. The insert trigger costs about a fifth of the append throughput;
worth it for a store that audits rely on.

`series` is a summary kept in the same transaction as every append (count, first and
last ts, last seq per device and metric), so `Journal.stats()` is instant on millions
of rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from gateway.model import BadgeEvent, Reading, Record

SCHEMA_VERSION = 1

#: Metric of BadgeEvent rows.
BADGE = "badge"
#: Prefix of the metrics of event rows (JSON in `text`); `records()` skips them.
EVENT_PREFIX = "event."

#: (seq, ts, device, metric, value, text), as read back.
Row = tuple[int, float, str, str, float | None, str | None]
#: (ts, device, metric, value, text), as appended: the seq is the journal's to give.
NewRow = tuple[float, str, str, float | None, str | None]

DDL = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    device TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL,
    text TEXT
);
CREATE TRIGGER IF NOT EXISTS records_no_update BEFORE UPDATE ON records
BEGIN
    SELECT RAISE(ABORT, 'journal records are append-only: UPDATE refused');
END;
CREATE TRIGGER IF NOT EXISTS records_no_delete BEFORE DELETE ON records
BEGIN
    SELECT RAISE(ABORT, 'journal records are append-only: DELETE refused');
END;
CREATE TRIGGER IF NOT EXISTS records_seq_is_given BEFORE INSERT ON records
WHEN NEW.seq <> -1
BEGIN
    SELECT RAISE(ABORT, 'journal records are append-only: seq is given by the journal');
END;
CREATE TABLE IF NOT EXISTS cursors (
    consumer TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    updated REAL
);
-- Badges and events (the rows with text) by kind, for the API's sessions, alerts and audits.
-- Partial: readings (text NULL) are not indexed, so ingest pays nothing for it. A query uses it
-- when it says `text IS NOT NULL` along with the metric.
CREATE INDEX IF NOT EXISTS records_events ON records (metric, seq) WHERE text IS NOT NULL;
CREATE TABLE IF NOT EXISTS checkpoints (
    consumer TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    state TEXT NOT NULL,
    updated REAL
);
CREATE TABLE IF NOT EXISTS series (
    device TEXT NOT NULL,
    metric TEXT NOT NULL,
    count INTEGER NOT NULL,
    first_ts REAL NOT NULL,
    last_ts REAL NOT NULL,
    last_seq INTEGER NOT NULL,
    PRIMARY KEY (device, metric)
) WITHOUT ROWID;
"""

INSERT_ROWS = "INSERT INTO records (ts, device, metric, value, text) VALUES (?, ?, ?, ?, ?)"

#: Folds the rows appended after `?` into `series`; runs inside the append's transaction.
UPDATE_SERIES = """
INSERT INTO series (device, metric, count, first_ts, last_ts, last_seq)
SELECT device, metric, count(*), min(ts), max(ts), max(seq) FROM records WHERE seq > ?
GROUP BY device, metric
ON CONFLICT (device, metric) DO UPDATE SET
    count = count + excluded.count,
    first_ts = min(first_ts, excluded.first_ts),
    last_ts = max(last_ts, excluded.last_ts),
    last_seq = excluded.last_seq
"""

#: Rows `records()` rebuilds: Readings (text NULL) and BadgeEvents, never event rows.
SELECT_RECORDS = f"""
SELECT seq, ts, device, metric, value, text FROM records
WHERE seq > ? AND (metric = '{BADGE}' OR (text IS NULL AND substr(metric, 1, {len(EVENT_PREFIX)}) != '{EVENT_PREFIX}'))
ORDER BY seq LIMIT ?
"""


def _reading_row(r: Any) -> NewRow:
    return (float(r.ts), r.device, r.metric, float(r.value), None)


def _badge_row(b: Any) -> NewRow:
    return (float(b.ts), b.reader, BADGE, None, b.badge_uid)


_TO_ROW: dict[type, Callable[[Any], NewRow]] = {Reading: _reading_row, BadgeEvent: _badge_row}


def to_rows(records: Any) -> list[NewRow]:
    """Rows of Readings and BadgeEvents. TypeError for anything else, ValueError for a non-number value."""
    try:
        return [_TO_ROW[type(r)](r) for r in records]
    except KeyError as exc:
        raise TypeError(f"the journal stores Reading and BadgeEvent, not {exc.args[0].__name__}") from None


def from_row(row: Row) -> Record | None:
    """The Reading or BadgeEvent of a row; None for event rows."""
    _seq, ts, device, metric, value, text = row
    if metric == BADGE and text is not None:
        return BadgeEvent(ts, device, text)
    if text is None and not metric.startswith(EVENT_PREFIX):
        # SQLite stores NaN as NULL: a Reading of NaN comes back as NaN.
        return Reading(ts, device, metric, math.nan if value is None else value)
    return None
