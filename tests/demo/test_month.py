"""`commonwatt demo --month`: the demo lab's month through the real gateway, then its books checked.

One simulation, through the command itself, of the first three days of June 2026 (Monday to
Wednesday: the first three working days of the plan, with its takeover, refusals and both
contributions), shared by the tests below. They read what the gateway wrote: the journal's
sessions, the ledger's transactions, the statements and their files, and `audit verify`;
the last one changes one byte of one stored transaction and watches the verification fail.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gateway.audit.verify import verify
from gateway.cli import app
from gateway.config import Config, load_config
from gateway.demo.month import MonthError, Period, month_config_text, previous_month
from gateway.demo.month_plan import (
    OPERATOR,
    TRAINEE,
    Approve,
    Grant,
    Unattended,
    Visit,
    action_time,
    eligible,
    month_plan,
)
from gateway.demo.scenario import DEMO_PEOPLE
from gateway.journal import Journal
from gateway.ledger import Ledger, member_account

MONTH, DAYS = "2026-06", 3
MEMBERS = [m.id for m in DEMO_PEOPLE]
FIRST_DAYS = (date(2026, 6, 1), date(2026, 6, 3))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Config, str]]:
    """The first three days of the month, simulated by `commonwatt demo --month 2026-06 --days 3`."""
    folder = tmp_path_factory.mktemp("month") / "lab"
    result = CliRunner().invoke(app, ["demo", "--month", MONTH, "--days", str(DAYS), "--folder", str(folder)])
    assert result.exit_code == 0, result.output
    yield load_config(folder / "commonwatt.toml"), result.output


def events(config: Config, metric: str) -> list[dict[str, Any]]:
    with Journal(config.journal.path, readonly=True) as journal:
        return [json.loads(str(row[5])) for row in journal.events(metric, limit=100_000)]


def statement(config: Config, member: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((config.journal.path.parent / f"statement-{member}-{MONTH}.json").read_text())
    return doc


def test_the_command_prints_the_statements_the_audit_and_what_to_run_next(lab: tuple[Config, str]) -> None:
    config, output = lab
    assert "ok: nothing differs" in output and "(rejected: none)" in output
    for member in MEMBERS:
        assert any(line.strip("│┃ ").startswith(member) for line in output.splitlines()), member
    assert f"commonwatt audit verify --config {config.journal.path.parent / 'commonwatt.toml'}" in output
    folder = config.journal.path.parent
    for fmt in ("json", "csv", "html"):
        assert (folder / f"community-report-{MONTH}.{fmt}").stat().st_size > 0
        for member in MEMBERS:
            assert (folder / f"statement-{member}-{MONTH}.{fmt}").stat().st_size > 0


def test_the_days_show_what_the_plan_is_there_to_show(lab: tuple[Config, str]) -> None:
    config, _ = lab
    ended = Counter(e["end_reason"] for e in events(config, "event.session_closed"))
    assert ended["badge_out"] > 10 and ended["takeover"] == 1 and ended["idle_timeout"] >= 1
    refused = Counter(e["reason"] for e in events(config, "event.access") if not e["allowed"])
    assert refused == {"training_missing": 1, "training_expired": 1, "unknown_badge": 1}
    with Ledger(config.journal.path, config.pricing) as ledger:
        small, large = ledger.contributions()
    assert (small.status, small.requested_by, small.decided_by) == ("posted", OPERATOR, None)
    assert large.status == "posted" and large.requested_by == OPERATOR
    assert large.decided_by is not None and large.decided_by.startswith("token:")  # a second operator


def test_statements_add_up_to_the_ledger_exactly(lab: tuple[Config, str]) -> None:
    config, _ = lab
    with Ledger(config.journal.path, config.pricing) as ledger:
        charges = Counter(str(tx.detail["member"]) for tx in ledger.transactions(limit=10_000) if tx.kind == "charge")
        for member in MEMBERS:
            doc = statement(config, member)
            c = {line: value["mcr"] for line, value in doc["credits"].items()}
            assert all(isinstance(v, int) for v in c.values())
            assert c["opening"] == 0 and c["allowance"] == 40_000  # a new lab; the month's allowance on the 1st
            assert c["opening"] + c["allowance"] + c["contributions"] - c["charged"] == c["closing"]
            assert c["closing"] == ledger.balance(member_account(member))  # the sum of the postings
            assert doc["totals"]["sessions"] == len(doc["sessions"]) == charges[member]
            assert c["charged"] == sum(s["charged_mcr"] for s in doc["sessions"])
    contributed = {m: statement(config, m)["credits"]["contributions"]["mcr"] for m in MEMBERS}
    assert contributed == {m: {"bruno": 20_000, "fatou": 150_000}.get(m, 0) for m in MEMBERS}


def test_every_closed_session_has_exactly_one_charge(lab: tuple[Config, str]) -> None:
    config, _ = lab
    closed = [e["session_id"] for e in events(config, "event.session_closed")]
    assert len(closed) == len(set(closed)) > 20
    with Ledger(config.journal.path, config.pricing) as ledger:
        charged = Counter(tx.detail["session"] for tx in ledger.transactions(limit=10_000) if tx.kind == "charge")
    assert set(charged) == set(closed) and set(charged.values()) == {1}
    receipts = Counter(e["session_id"] for e in events(config, "event.receipt"))
    assert receipts == charged


def test_the_commands_it_prints_work_on_the_folder(lab: tuple[Config, str]) -> None:
    config, _ = lab
    path = str(config.journal.path.parent / "commonwatt.toml")
    shown = CliRunner().invoke(app, ["statement", "amira", "--month", MONTH, "--config", path])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["credits"] == statement(config, "amira")["credits"]
    report = CliRunner().invoke(app, ["report", "community", "--month", MONTH, "--config", path])
    assert report.exit_code == 0 and json.loads(report.output)["balances_total"]["closing"]["mcr"] > 0
    verified = CliRunner().invoke(app, ["audit", "verify", "--config", path])
    assert verified.exit_code == 0 and "ok: nothing differs" in verified.output


def test_a_byte_changed_in_a_stored_transaction_fails_the_audit(lab: tuple[Config, str]) -> None:
    """Last: it spoils the shared folder. An intruder with the file drops the ledger's guard trigger."""
    config, _ = lab
    assert verify(config).ok
    conn = sqlite3.connect(config.journal.path)
    try:
        (trigger,) = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'ledger_transactions' "
            "AND sql LIKE '%UPDATE%'"
        ).fetchone()
        conn.execute(f"DROP TRIGGER {trigger}")
        tx_id, canonical = conn.execute(
            "SELECT id, canonical FROM ledger_transactions WHERE kind = 'charge'"
        ).fetchone()
        data = bytearray(canonical)
        at = data.index(b'"total_mcr":') + len(b'"total_mcr":')
        data[at] = ord("9") if data[at] != ord("9") else ord("8")  # the charge's total, one digit
        conn.execute("UPDATE ledger_transactions SET canonical = ? WHERE id = ?", (bytes(data), tx_id))
        conn.commit()
    finally:
        conn.close()
    report = verify(config)
    assert not report.ok
    assert tx_id in report.errors_by_tx()
    verified = CliRunner().invoke(
        app, ["audit", "verify", "--config", str(config.journal.path.parent / "commonwatt.toml")]
    )
    assert verified.exit_code == 1 and "FAIL" in verified.output


# -- the plan and the options, without a simulation ---------------------------------------------------


def test_the_plan_is_the_same_for_the_first_days_of_the_month_and_keeps_people_at_one_machine() -> None:
    whole = month_plan(date(2026, 6, 1), date(2026, 6, 30), "UTC")
    first = month_plan(*FIRST_DAYS, "UTC")
    assert first == [a for a in whole if action_time(a) < Period.of(MONTH, "UTC", DAYS).until]
    visits = [a for a in whole if isinstance(a, Visit)]
    for member in {v.who for v in visits}:
        mine = sorted((v.arrive, v.end) for v in visits if v.who == member)
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(mine)), member
    for machine in ("laser", "printer", "cnc"):
        lane = sorted((v.arrive, v.end) for v in visits if v.machine == machine)
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(lane)), machine
    kinds = Counter(type(a).__name__ for a in whole)
    assert kinds[Grant.__name__] == 2 and kinds[Approve.__name__] == 1 and kinds[Unattended.__name__] >= 4
    assert any(v.trainee == TRAINEE for v in visits)
    assert TRAINEE in eligible("cnc", 10) and TRAINEE not in eligible("cnc", 1)


def test_months_days_and_folders_are_checked() -> None:
    assert previous_month("UTC", now=datetime(2026, 1, 15, tzinfo=UTC).timestamp()) == "2025-12"
    assert previous_month("Pacific/Auckland", now=datetime(2026, 10, 31, 12, tzinfo=UTC).timestamp()) == "2026-10"
    with pytest.raises(MonthError, match="YYYY-MM"):
        Period.of("2026-13", "UTC")
    with pytest.raises(MonthError, match="days 1 to 28"):
        Period.of("2026-02", "UTC", 29)
    result = CliRunner().invoke(app, ["demo", "--month", "2026-13"])
    assert result.exit_code == 2 and "YYYY-MM" in result.output
    assert "[pricing]" in month_config_text()


def test_a_folder_that_holds_a_lab_is_refused(tmp_path: Path) -> None:
    (tmp_path / "commonwatt.toml").write_text(month_config_text())
    result = CliRunner().invoke(app, ["demo", "--month", MONTH, "--days", "1", "--folder", str(tmp_path)])
    assert result.exit_code == 2 and "already holds a lab" in result.output
