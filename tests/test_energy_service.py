"""Replay and the live energy service over a real journal: byte-identical rebuilds, exact sums."""

from __future__ import annotations

import json
import multiprocessing
import re
import shutil
import sqlite3
from pathlib import Path

import pytest

from gateway.config import EnergyConfig
from gateway.domain.energy import SiteMeters, replay, sessions_from_rows
from gateway.energy_service import SETTLE_SPAN, EnergyService, energy_lines, replay_journal, site_meters
from gateway.energy_store import EnergyStore, pseudonym
from gateway.journal import Journal
from tests.energy_helpers import DAY0, energy_config, record_day


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("day")
    record_day(energy_config(folder).journal.path)
    return folder


def copy_of(recorded: Path, tmp_path: Path) -> Path:
    for name in ("journal.sqlite", "journal.sqlite-wal", "journal.sqlite-shm"):
        if (recorded / name).exists():
            shutil.copy(recorded / name, tmp_path / name)
    return tmp_path


def test_a_recorded_day_replays_byte_for_byte(recorded: Path, tmp_path: Path) -> None:
    config = energy_config(copy_of(recorded, tmp_path))
    seen: list[tuple[int, int]] = []
    first = replay_journal(config, progress=lambda done, total: seen.append((done, total)))
    with EnergyStore(config.journal.path) as store:
        once = store.dump()
    replay_journal(config)
    with EnergyStore(config.journal.path) as store:
        twice = store.dump()
    assert first.intervals == 1439 and first.readings == 24 * 360 * 8
    assert seen[-1][0] == seen[-1][1]
    assert once == twice


def test_the_tables_hold_what_the_domain_computes_and_close_exactly(recorded: Path, tmp_path: Path) -> None:
    config = energy_config(copy_of(recorded, tmp_path))
    replay_journal(config, cfg=EnergyConfig(convention="priority"))
    with Journal(config.journal.path) as journal:
        site: SiteMeters = site_meters(config, journal)
        rows = journal.read(0, 10**7)
    result = replay(
        [r[1:5] for r in rows], site, sessions_from_rows(rows), EnergyConfig(convention="priority").settings()
    )
    con = sqlite3.connect(config.journal.path)
    balances = con.execute(
        "SELECT start, consumption, pv, mix_sun, mix_grid, flags FROM energy_intervals ORDER BY start"
    )
    expected = [(b.start, b.consumption, b.pv, b.mix[0], b.mix[3], b.flags) for b in result.balances]
    assert balances.fetchall() == expected
    per_interval = con.execute(
        "SELECT i.consumption, sum(s.energy), sum(s.sun + s.battery_sun + s.battery_grid + s.grid) "
        "FROM energy_intervals i JOIN energy_shares s USING (start) GROUP BY i.start"
    ).fetchall()
    assert per_interval and all(c == e == parts for c, e, parts in per_interval)
    members = con.execute("SELECT DISTINCT member_id FROM energy_shares WHERE kind = 'member'").fetchall()
    assert sorted(m for (m,) in members) == ["ada", "bob"]


def test_a_period_replay_changes_only_its_period(recorded: Path, tmp_path: Path) -> None:
    config = energy_config(copy_of(recorded, tmp_path))
    replay_journal(config)
    con = sqlite3.connect(config.journal.path)
    before = con.execute("SELECT * FROM energy_intervals ORDER BY start").fetchall()
    replay_journal(config, since=DAY0 + 10 * 3600, until=DAY0 + 12 * 3600)
    after = con.execute("SELECT * FROM energy_intervals ORDER BY start").fetchall()
    assert len(after) == len(before)
    strip = [r[:-1] for r in before]  # rev moves for the rewritten intervals
    assert [r[:-1] for r in after] == strip


def test_live_service_follows_the_journal_and_resumes_from_its_checkpoint(recorded: Path, tmp_path: Path) -> None:
    config = energy_config(copy_of(recorded, tmp_path))
    path = config.journal.path
    with Journal(path) as journal:
        journal.append_with_checkpoint([], "energy", 0, json.dumps({"k_next": None, "pool": [0, 0], "sessions": []}))
    service = EnergyService(config)
    service.open()
    service.step(DAY0 + 12 * 3600)  # the clock at noon: the morning is final, the afternoon provisional
    service.close()
    con = sqlite3.connect(path)
    finals = con.execute("SELECT count(*) FROM energy_intervals WHERE final = 1").fetchone()[0]
    assert finals == 12 * 60 - 2
    again = EnergyService(config)
    again.open()
    again.step(DAY0 + 2 * 86400)
    again.close()
    live = con.execute("SELECT start, consumption, mix_sun, flags FROM energy_intervals ORDER BY start").fetchall()
    replay_journal(config)
    replayed = con.execute("SELECT start, consumption, mix_sun, flags FROM energy_intervals ORDER BY start").fetchall()
    assert live[: len(replayed)] == replayed


def test_a_meter_reporting_every_five_minutes_gets_the_same_numbers_live_as_on_replay(
    recorded: Path, tmp_path: Path
) -> None:
    """Tasmota's default TelePeriod is 5 minutes: the grid meter's every delta spans intervals that
    a clock-only rule would have made final already, without that energy."""
    with Journal(recorded / "journal.sqlite", readonly=True) as journal:
        rows = [r[1:] for r in journal.read(0, 10**7) if r[2] != "grid" or int(r[1]) % 300 < 10]
    config = energy_config(tmp_path)
    with Journal(config.journal.path) as journal:
        journal.append_with_checkpoint([], "energy", 0, json.dumps({"k_next": None, "pool": [0, 0], "sessions": []}))
    service = EnergyService(config)
    service.open()
    sent = 0
    with Journal(config.journal.path) as journal:
        for minute in range(24 * 60 + 20):  # the rows arrive as the clock passes them
            now = DAY0 + minute * 60
            upto = sent
            while upto < len(rows) and rows[upto][0] <= now:
                upto += 1
            journal.append_rows(rows[sent:upto])
            sent = upto
            service.step(now)
    service.close()
    con = sqlite3.connect(config.journal.path)
    query = "SELECT start, import, consumption, mix_grid, flags FROM energy_intervals WHERE final = 1 ORDER BY start"
    live = con.execute(query).fetchall()
    assert sum(r[1] for r in live) > 0
    replay_journal(config)
    replayed = con.execute(query).fetchall()
    common = min(len(live), len(replayed))  # the live clock ran past the last reading
    assert common >= 24 * 60 - 10
    assert live[:common] == replayed[:common]


def test_far_behind_the_service_catches_up_in_spans_and_stops_between_them(recorded: Path, tmp_path: Path) -> None:
    """A clock three weeks past the recorded day (a gateway started on an old journal, or a meter
    whose clock is wrong): 30,000 intervals to settle, in spans that a stop can come between."""
    config = energy_config(copy_of(recorded, tmp_path))
    path = config.journal.path
    with Journal(path) as journal:
        journal.append_with_checkpoint([], "energy", 0, json.dumps({"k_next": None, "pool": [0, 0], "sessions": []}))
    now = DAY0 + 21 * 86400
    con = sqlite3.connect(path)
    finals = "SELECT count(*), max(start) FROM energy_intervals WHERE final = 1"

    stopping = EnergyService(config)
    stopping.open()
    stopping._stopping = True  # as __aexit__ sets it: one span, then back
    stopping.step(now)
    stopping.close()
    assert con.execute(finals).fetchone()[0] == SETTLE_SPAN

    service = EnergyService(config)
    service.open()  # from the checkpoint the first span left
    service.step(now)
    service.close()
    count, last = con.execute(finals).fetchone()
    k_now = int((now - config.energy.grace_s) // 60)
    assert last == (k_now - 1) * 60  # every interval up to the clock is final
    assert count == k_now - int(DAY0 // 60)  # each once, none skipped


def test_tsdb_lines_name_members_only_by_pseudonym(recorded: Path, tmp_path: Path) -> None:
    config = energy_config(copy_of(recorded, tmp_path))
    replay_journal(config)
    with EnergyStore(config.journal.path) as store:
        secret = store.secret()
        assert store.secret() == secret
        rows = store.intervals(DAY0 + 9 * 3600, DAY0 + 20 * 3600)
        text = ""
        for r in rows:
            lines, points = energy_lines("lab", secret, r, store.shares([r["start"]]))
            assert len(lines) == len(points)
            text += "\n".join(lines)
    assert not re.search(r"\bada\b", text) and "bob" not in text  # as a word: pseudonyms are hex
    assert f"member={pseudonym(secret, 'ada')}" in text
    assert "commonwatt_energy,site=lab,kind=balance pv_mwh=" in text
    assert len(pseudonym(secret, "ada")) == 10


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_replay_on_two_worker_processes_gives_the_same_bytes(
    recorded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start: str
) -> None:
    """Both ways of starting the workers (`fork` from a single-threaded process, else `spawn`)."""
    monkeypatch.setattr("gateway.energy_service._context", lambda: multiprocessing.get_context(start))
    config = energy_config(copy_of(recorded, tmp_path))
    one = replay_journal(config, workers=1)
    with EnergyStore(config.journal.path) as store:
        alone = store.dump()
    two = replay_journal(config, workers=2)
    with EnergyStore(config.journal.path) as store:
        split = store.dump()
    assert (one.readings, one.intervals) == (two.readings, two.intervals)
    assert alone == split


def test_replay_in_many_windows_on_two_workers_gives_the_same_bytes(
    recorded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many windows: the workers read ahead while the parent writes, and still give the same bytes."""
    config = energy_config(copy_of(recorded, tmp_path))
    monkeypatch.setattr("gateway.energy_service.READ_SPAN", 7_001)
    replay_journal(config, workers=1)
    with EnergyStore(config.journal.path) as store:
        whole = store.dump()
    replay_journal(config, workers=2)
    with EnergyStore(config.journal.path) as store:
        windows = store.dump()
    assert whole == windows
