"""Journal: append, read, cursors, append-only triggers, stats, reopening."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import pytest

from gateway.journal import Journal, JournalError
from gateway.model import BadgeEvent, Reading


def readings(n: int, device: str = "m1", start: float = 1_700_000_000.0) -> list[Reading]:
    return [Reading(start + i, device, "power_w", float(i)) for i in range(n)]


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / "journal.db")


def test_append_and_read_round_trip(journal: Journal) -> None:
    records: list[Reading | BadgeEvent] = [Reading(1.0, "m1", "power_w", 230.5), BadgeEvent(2.0, "door", "04A1B2C3")]
    assert journal.append(records) == 2
    assert journal.append_rows([(3.0, "access", "event.access", None, '{"allowed": true}')]) == 3
    assert journal.read(0, 10) == [
        (1, 1.0, "m1", "power_w", 230.5, None),
        (2, 2.0, "door", "badge", None, "04A1B2C3"),
        (3, 3.0, "access", "event.access", None, '{"allowed": true}'),
    ]
    assert journal.records(0, 10) == [(1, records[0]), (2, records[1])]
    assert journal.read(1, 1) == [(2, 2.0, "door", "badge", None, "04A1B2C3")]
    assert journal.last_seq() == 3


def test_records_skips_event_rows_without_stopping_early(journal: Journal) -> None:
    journal.append_rows([(float(i), "dom", "event.session", None, "{}") for i in range(5)])
    journal.append(readings(2))
    got = journal.records(0, 1)
    assert [seq for seq, _ in got] == [6]
    assert journal.records(7, 10) == []


def test_empty_append_and_empty_journal(journal: Journal) -> None:
    assert journal.last_seq() == 0
    assert journal.append([]) == 0
    assert journal.read(0, 10) == []
    stats = journal.stats()
    assert (stats.records, stats.last_seq, stats.first_ts, stats.devices) == (0, 0, None, {})


def test_nan_reading_comes_back_as_nan(journal: Journal) -> None:
    journal.append([Reading(1.0, "m1", "power_w", math.nan)])
    (_, record) = journal.records(0, 1)[0]
    assert isinstance(record, Reading) and math.isnan(record.value)


def test_only_known_records_are_accepted(journal: Journal) -> None:
    with pytest.raises(TypeError):
        journal.append([("not", "a", "record")])  # type: ignore[list-item]
    assert journal.last_seq() == 0


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE records SET value = 0",
        "DELETE FROM records",
        "DELETE FROM records WHERE seq = 1",
        "INSERT OR REPLACE INTO records (seq, ts, device, metric) VALUES (1, 0, 'x', 'y')",
        "INSERT INTO records (seq, ts, device, metric) VALUES (100, 0, 'x', 'y')",
    ],
)
def test_records_are_append_only(tmp_path: Path, sql: str) -> None:
    Journal(tmp_path / "j.db").append(readings(3))
    conn = sqlite3.connect(tmp_path / "j.db")
    with pytest.raises(sqlite3.DatabaseError):
        conn.execute(sql)
    conn.close()
    assert len(Journal(tmp_path / "j.db").read(0, 10)) == 3


def test_cursors_move_forward_only_unless_forced(journal: Journal) -> None:
    journal.append(readings(10))
    assert journal.cursor("tsdb") == 0
    journal.set_cursor("tsdb", 7)
    journal.set_cursor("tsdb", 3)
    assert journal.cursor("tsdb") == 7
    journal.set_cursor("tsdb", 3, force=True)
    assert journal.cursor("tsdb") == 3
    with pytest.raises(JournalError):
        journal.set_cursor("tsdb", 11)


def test_cursors_and_records_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with Journal(path) as journal:
        journal.append(readings(5))
        journal.set_cursor("tsdb", 4)
    with Journal(path) as journal:
        assert journal.cursor("tsdb") == 4
        assert journal.append(readings(1)) == 6


def test_stats(journal: Journal) -> None:
    journal.append(readings(3, "m1", start=100.0))
    journal.append([*readings(2, "m2", start=50.0), BadgeEvent(200.0, "door", "AA")])
    journal.append([Reading(90.0, "m1", "energy_wh", 1.0)])
    journal.set_cursor("tsdb", 2)
    stats = journal.stats()
    assert (stats.records, stats.last_seq, stats.first_ts, stats.last_ts) == (7, 7, 50.0, 200.0)
    m1 = stats.devices["m1"]
    assert (m1.count, m1.first_ts, m1.last_ts, m1.last_seq) == (4, 90.0, 102.0, 7)
    assert stats.series[("m1", "power_w")].count == 3
    assert stats.series[("door", "badge")].last_seq == 6
    assert stats.cursors["tsdb"].lag == 5


def test_readonly_journal_reads_but_cannot_write(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    Journal(path).append(readings(2))
    reader = Journal(path, readonly=True)
    assert reader.last_seq() == 2
    with pytest.raises(sqlite3.OperationalError):
        reader.append(readings(1))
    with pytest.raises(JournalError):
        Journal(tmp_path / "missing.db", readonly=True)


def test_refuses_a_file_that_is_not_a_journal(tmp_path: Path) -> None:
    (tmp_path / "x.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises((JournalError, sqlite3.DatabaseError)):
        Journal(tmp_path / "x.db")


def test_refuses_a_newer_schema(tmp_path: Path) -> None:
    Journal(tmp_path / "j.db").close()
    conn = sqlite3.connect(tmp_path / "j.db")
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(JournalError, match="schema 99"):
        Journal(tmp_path / "j.db")


def test_integrity_check(journal: Journal) -> None:
    journal.append(readings(100))
    assert journal.integrity_check() == "ok"


def test_checkpoint_is_written_with_the_events_it_produced(tmp_path: Path) -> None:
    with Journal(tmp_path / "cp.sqlite") as journal:
        journal.append([Reading(1.0, "m", "power_w", 5.0)])
        assert journal.checkpoint("floor") is None
        last = journal.append_with_checkpoint([(2.0, "floor", "event.x", None, "{}")], "floor", 1, '{"a": 1}')
        assert last == 2
        assert journal.checkpoint("floor") == (1, '{"a": 1}')
        assert journal.cursor("floor") == 1
        assert journal.stats().series[("floor", "event.x")].count == 1
