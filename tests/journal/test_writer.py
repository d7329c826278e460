"""GroupCommitWriter: every put committed exactly once, in order; flush, waiting, listeners, retries."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.journal import GroupCommitWriter, Journal
from gateway.model import BadgeEvent, Reading


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[GroupCommitWriter]:
    w = GroupCommitWriter(tmp_path / "journal.db", max_batch=500, max_delay=0.01)
    w.start()
    yield w
    w.close()


def test_flush_commits_everything_put_so_far(writer: GroupCommitWriter, tmp_path: Path) -> None:
    writer.put([Reading(1.0, "m1", "power_w", 1.0), BadgeEvent(2.0, "door", "AA")])
    writer.put_rows([(3.0, "access", "event.access", None, "{}")])
    assert writer.flush(timeout=5) == 3
    assert writer.committed_seq == 3 and writer.pending == 0
    with Journal(tmp_path / "journal.db", readonly=True) as reader:
        assert [row[3] for row in reader.read(0, 10)] == ["power_w", "badge", "event.access"]


def test_flush_does_not_wait_for_max_delay(tmp_path: Path) -> None:
    with GroupCommitWriter(tmp_path / "j.db", max_delay=30.0) as writer:
        writer.put([Reading(1.0, "m1", "power_w", 1.0)])
        started = time.monotonic()
        assert writer.flush(timeout=5) == 1
        assert time.monotonic() - started < 2


def test_max_delay_commits_without_flush(writer: GroupCommitWriter) -> None:
    writer.put([Reading(1.0, "m1", "power_w", 1.0)])
    assert writer.wait_committed(0, timeout=5) == 1


def test_wait_committed_times_out(writer: GroupCommitWriter) -> None:
    started = time.monotonic()
    assert writer.wait_committed(0, timeout=0.05) == 0
    assert time.monotonic() - started >= 0.04


def test_many_threads_every_record_once_and_in_per_thread_order(writer: GroupCommitWriter, tmp_path: Path) -> None:
    threads, per_thread = 4, 3000

    def produce(name: str) -> None:
        for start in range(0, per_thread, 7):
            writer.put([Reading(float(i), name, "power_w", float(i)) for i in range(start, min(start + 7, per_thread))])

    workers = [threading.Thread(target=produce, args=(f"t{n}",)) for n in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert writer.flush(timeout=10) == threads * per_thread
    seen: dict[str, list[float]] = defaultdict(list)
    with Journal(tmp_path / "journal.db", readonly=True) as reader:
        for _seq, _ts, device, _metric, value, _text in reader.read(0, threads * per_thread + 1):
            assert value is not None
            seen[device].append(value)
    assert {d: len(v) for d, v in seen.items()} == {f"t{n}": per_thread for n in range(threads)}
    assert all(v == [float(i) for i in range(per_thread)] for v in seen.values())
    assert writer.batches < threads * per_thread / 7


def test_batches_are_split_at_max_batch(tmp_path: Path) -> None:
    with GroupCommitWriter(tmp_path / "j.db", max_batch=100, max_delay=0.01) as writer:
        writer.put([Reading(float(i), "m1", "power_w", float(i)) for i in range(350)])
        assert writer.flush(timeout=5) == 350
        assert writer.batches == 4


def _failing_listener(seq: int) -> None:
    raise RuntimeError(f"listener failed at {seq}")


def test_listeners_hear_every_commit(writer: GroupCommitWriter) -> None:
    heard: list[int] = []
    writer.add_listener(heard.append)
    writer.add_listener(_failing_listener)  # a failing listener does not stop the writer
    writer.put([Reading(1.0, "m1", "power_w", 1.0)])
    writer.flush(timeout=5)
    writer.put([Reading(2.0, "m1", "power_w", 2.0)] * 3)
    writer.flush(timeout=5)
    assert heard == [1, 4]
    writer.remove_listener(heard.append)
    writer.put([Reading(3.0, "m1", "power_w", 3.0)])
    writer.flush(timeout=5)
    assert heard == [1, 4]


def test_starts_after_existing_records(tmp_path: Path) -> None:
    Journal(tmp_path / "j.db").append([Reading(1.0, "m1", "power_w", 1.0)] * 5)
    with GroupCommitWriter(tmp_path / "j.db") as writer:
        assert writer.committed_seq == 5
        writer.put([Reading(1.0, "m1", "power_w", 1.0)])
        assert writer.flush(timeout=5) == 6


def test_start_fails_loudly_on_a_bad_file(tmp_path: Path) -> None:
    (tmp_path / "x.db").write_bytes(b"not a database at all" * 200)
    with pytest.raises(sqlite3.DatabaseError):
        GroupCommitWriter(tmp_path / "x.db").start()


def test_put_validates_records_in_the_caller(writer: GroupCommitWriter) -> None:
    with pytest.raises(TypeError):
        writer.put(["nope"])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        writer.put([Reading(1.0, "m1", "power_w", "high")])  # type: ignore[arg-type]
    assert writer.pending == 0


def test_put_after_close_is_refused(tmp_path: Path) -> None:
    writer = GroupCommitWriter(tmp_path / "j.db")
    writer.start()
    writer.put([Reading(1.0, "m1", "power_w", 1.0)])
    writer.close()
    assert writer.committed_seq == 1
    with pytest.raises(RuntimeError):
        writer.put([Reading(1.0, "m1", "power_w", 1.0)])


def test_flush_before_start_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        GroupCommitWriter(tmp_path / "j.db").flush()


def _last_error(writer: GroupCommitWriter) -> BaseException | None:
    return writer.last_error


def test_a_locked_journal_delays_but_loses_nothing(tmp_path: Path) -> None:
    """Another process holding the write lock (a backup, an operator's shell) makes commits fail for a while."""
    path = tmp_path / "j.db"
    with GroupCommitWriter(path, max_delay=0.001, busy_timeout=0.02) as writer:
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        writer.put([Reading(float(i), "m1", "power_w", float(i)) for i in range(10)])
        deadline = time.monotonic() + 5
        while writer.last_error is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert isinstance(writer.last_error, sqlite3.OperationalError)
        with pytest.raises(TimeoutError):
            writer.flush(timeout=0.05)
        blocker.execute("ROLLBACK")
        blocker.close()
        assert writer.flush(timeout=5) == 10
        assert _last_error(writer) is None and writer.failures >= 1
    with Journal(path, readonly=True) as reader:
        assert [row[4] for row in reader.read(0, 20)] == [float(i) for i in range(10)]
