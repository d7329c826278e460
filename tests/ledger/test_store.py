"""The ledger store on a real SQLite file shared with the journal."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.journal import Journal
from gateway.ledger import Ledger, LedgerError, Posting, check_ledger, policy_hash
from gateway.model import Reading
from tests.ledger.factories import POLICY, Clock, ledger_events

LASER = {"busy_s": 1800, "idle_s": 600, "mwh_by_source": {"sun": 500_000, "grid": 123_456}}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "commonwatt.sqlite"


@pytest.fixture
def ledger(db: Path) -> Iterator[Ledger]:
    with Ledger(db, POLICY, clock=Clock()) as store:
        yield store


def test_charge_posts_the_breakdown_once(ledger: Ledger, db: Path) -> None:
    first = ledger.charge_session("s1", "ann", "laser", co2_mg=41_000, **LASER)  # type: ignore[arg-type]
    again = ledger.charge_session("s1", "ann", "laser", busy_s=99, idle_s=0, mwh_by_source={})
    assert again == first and ledger.size() == 1
    assert first.kind == "charge" and first.key == "charge:s1" and first.policy == policy_hash(POLICY)
    assert first.detail["total_mcr"] == 3349 and first.detail["co2_mg"] == 41_000
    assert ledger.balance("member:ann") == -3349 == ledger.running_balance("member:ann")
    assert ledger.balance("machine-time:laser") == 3250
    assert [e["what"]["key"] for e in ledger_events(db)] == ["charge:s1"]


def test_a_restart_never_charges_twice(db: Path) -> None:
    with Ledger(db, POLICY) as ledger:
        first = ledger.charge_session("s1", "ann", "laser", **LASER)  # type: ignore[arg-type]
    with Ledger(db, POLICY) as ledger:
        assert ledger.charge_session("s1", "ann", "laser", **LASER) == first  # type: ignore[arg-type]
        assert ledger.size() == 1 and len(ledger_events(db)) == 1


def test_ledger_and_journal_share_the_file(ledger: Ledger, db: Path) -> None:
    with Journal(db) as journal:
        journal.append([Reading(1.0, "meter", "power_w", 5.0)])
        ledger.issue_allowances("2024-01", ["ann"])
        assert journal.last_seq() == 2
        assert journal.events("event.ledger")[0][0] == 2


def test_transactions_are_append_only(ledger: Ledger, db: Path) -> None:
    ledger.issue_allowances("2024-01", ["ann"])
    with sqlite3.connect(db) as conn:
        for sql in (
            "UPDATE ledger_transactions SET memo = 'x'",
            "UPDATE ledger_transactions SET key = 'x'",
            "DELETE FROM ledger_transactions",
            "UPDATE ledger_postings SET amount = 0",
            "DELETE FROM ledger_postings",
            "INSERT INTO ledger_transactions VALUES (5, 0, 'charge', 'k', NULL, x'00', '', '')",
        ):
            with pytest.raises(sqlite3.DatabaseError):
                conn.execute(sql)


def test_allowances_are_issued_once_per_member_and_month(ledger: Ledger) -> None:
    first = ledger.issue_allowances("2024-01", ["ann", "bob"])
    assert [t.key for t in first] == ["allowance:ann:2024-01", "allowance:bob:2024-01"]
    assert ledger.issue_allowances("2024-01", ["ann", "bob"]) == first
    assert ledger.balance("member:ann") == 20_000 and ledger.balance("issuance:allowance") == -40_000


def test_unused_allowance_expires_after_the_policy_months(ledger: Ledger) -> None:
    ledger.issue_allowances("2024-01", ["ann"])
    ledger.charge_session("s1", "ann", "laser", **LASER)  # type: ignore[arg-type]
    ledger.issue_allowances("2024-02", ["ann"])
    assert ledger.by_key("allowance_expiry:ann:2024-01") is None
    out = ledger.issue_allowances("2024-03", ["ann"])
    expiry = out[0]
    assert expiry.key == "allowance_expiry:ann:2024-01" and expiry.detail["unused_mcr"] == 20_000 - 3349
    assert ledger.balance("member:ann") == 40_000  # February's and March's
    assert ledger.issue_allowances("2024-03", ["ann"]) == out


def test_nothing_to_expire_is_recorded_as_nothing(ledger: Ledger) -> None:
    ledger.issue_allowances("2024-01", ["ann"])
    ledger.charge_session("big", "ann", "laser", busy_s=4 * 3600, idle_s=0, mwh_by_source={})
    expiry = ledger.issue_allowances("2024-03", ["ann"])[0]
    assert expiry.postings == () and expiry.detail["unused_mcr"] == 0


def test_small_contribution_is_posted_at_once(ledger: Ledger, db: Path) -> None:
    c = ledger.grant_contribution("ann", 50_000, "cleaning", "the workshop floor", by="op1")
    assert c.status == "posted" and c.tx_id == 1
    tx = ledger.transaction(1)
    assert tx is not None and tx.detail["category"] == "cleaning" and tx.memo == "the workshop floor"
    assert ledger.balance("member:ann") == 50_000 and ledger.balance("contributions") == -50_000
    assert [e["action"] for e in ledger_events(db)] == ["contribution.request", "transaction"]


def test_large_contribution_waits_for_a_second_operator(ledger: Ledger) -> None:
    c = ledger.grant_contribution("ann", 50_001, "teaching", "laser course", by="op1")
    assert c.status == "pending" and ledger.size() == 0 and ledger.balance("member:ann") == 0
    with pytest.raises(LedgerError, match="another operator"):
        ledger.approve_contribution(c.id, by="op1")
    approved = ledger.approve_contribution(c.id, by="op2")
    assert approved.status == "posted" and approved.decided_by == "op2"
    assert ledger.approve_contribution(c.id, by="op3") == approved  # idempotent
    assert ledger.balance("member:ann") == 50_001
    tx = ledger.by_key(f"contribution:{c.id}")
    assert tx is not None and tx.detail["approved_by"] == "op2" and tx.detail["by"] == "op1"


def test_rejected_contribution_is_never_posted(ledger: Ledger) -> None:
    c = ledger.grant_contribution("ann", 90_000, "donation", "", by="op1")
    assert ledger.reject_contribution(c.id, by="op2", reason="duplicate").status == "rejected"
    with pytest.raises(LedgerError, match="rejected"):
        ledger.approve_contribution(c.id, by="op2")
    assert ledger.size() == 0 and [x.status for x in ledger.contributions()] == ["rejected"]


@pytest.mark.parametrize("amount", [0, -5, 1.5])
def test_contribution_amounts(ledger: Ledger, amount: object) -> None:
    with pytest.raises(LedgerError):
        ledger.grant_contribution("ann", amount, "x", "", by="op1")  # type: ignore[arg-type]


def test_reversal_negates_once(ledger: Ledger) -> None:
    charge = ledger.charge_session("s1", "ann", "laser", **LASER)  # type: ignore[arg-type]
    reversal = ledger.reverse(charge.id, by="op1", memo="meter fault")
    assert reversal.reverses == charge.id and reversal.key == f"reversal:{charge.id}"
    assert [p.amount for p in reversal.postings] == [-p.amount for p in charge.postings]
    assert ledger.reverse(charge.id, by="op2") == reversal
    with pytest.raises(LedgerError, match="is a reversal"):
        ledger.reverse(reversal.id, by="op1")
    with pytest.raises(LedgerError, match="no transaction"):
        ledger.reverse(99, by="op1")
    assert all(v == 0 for v in ledger.balances().values())
    # the session stays charged-and-reversed: charging it again is still a no-op
    assert ledger.charge_session("s1", "ann", "laser", **LASER) == charge  # type: ignore[arg-type]


def test_adjustment(ledger: Ledger) -> None:
    postings = (Posting("member:ann", 1500), Posting("adjustments", -1500))
    tx = ledger.adjust("2024-01-ann-meter", postings, by="op1", memo="meter read double")
    assert ledger.adjust("2024-01-ann-meter", postings, by="op1", memo="again") == tx
    with pytest.raises(LedgerError, match="sum to"):
        ledger.adjust("bad", (Posting("member:ann", 1),), by="op1", memo="x")
    with pytest.raises(LedgerError, match="memo"):
        ledger.adjust("why", postings, by="op1", memo=" ")
    assert ledger.size() == 1


def test_credit_limit_refuses_new_sessions(ledger: Ledger) -> None:
    assert ledger.can_start_session("ann")  # 0 > -5 credits
    assert not ledger.can_start_session("carol")  # carol's limit is 0: she needs credit first
    ledger.charge_session("s1", "ann", "laser", busy_s=2999, idle_s=0, mwh_by_source={})  # 4998 mcr
    assert ledger.can_start_session("ann")
    ledger.charge_session("s2", "ann", "laser", busy_s=2, idle_s=0, mwh_by_source={})  # +500 minimum
    assert not ledger.can_start_session("ann")
    ledger.grant_contribution("ann", 1000, "cleaning", "", by="op1")
    assert ledger.can_start_session("ann")


def test_a_policy_change_is_recorded_on_later_transactions(db: Path) -> None:
    with Ledger(db, POLICY) as ledger:
        ledger.charge_session("s1", "ann", "laser", **LASER)  # type: ignore[arg-type]
    dearer = POLICY.model_copy(update={"minimum_charge": "10"})
    with Ledger(db, dearer) as ledger:
        second = ledger.charge_session("s2", "ann", "laser", **LASER)  # type: ignore[arg-type]
        assert second.policy == policy_hash(dearer) and second.detail["total_mcr"] == 10_000
    assert check_ledger(db).ok


def test_entries_and_statement(ledger: Ledger) -> None:
    ledger.issue_allowances("2024-01", ["ann", "bob"])
    ledger.charge_session("s1", "bob", "laser", **LASER)  # type: ignore[arg-type]
    entries = ledger.entries()
    assert [e.id for e in entries] == [1, 2, 3] and entries[2].transaction.key == "charge:s1"
    assert [t.key for t in ledger.of_account("member:bob")] == ["allowance:bob:2024-01", "charge:s1"]
    assert ledger.transactions(after=2) == [entries[2].transaction]


def test_allowance_months_go_in_order(ledger: Ledger) -> None:
    ledger.issue_allowances("2024-03", ["ann"])
    with pytest.raises(LedgerError, match="in order"):
        ledger.issue_allowances("2024-01", ["ann", "bob"])
    assert ledger.size() == 1  # all or nothing: bob got nothing either


def test_sigkill_during_charges_leaves_exactly_one_charge_each(db: Path) -> None:
    """A process charging sessions is killed with SIGKILL; charging them all again posts each once."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = (
        "import sys\n"
        "from gateway.ledger import Ledger\n"
        "from tests.ledger.factories import POLICY\n"
        "ledger = Ledger(sys.argv[1], POLICY)\n"
        "for i in range(100000):\n"
        "    ledger.charge_session(f's{i}', 'ann', 'laser', busy_s=60, idle_s=0, mwh_by_source={'grid': 1000})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(db)], cwd=Path(__file__).parents[2])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if db.exists() and _size(db) > 200:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = _size(db)
    with Ledger(db, POLICY) as ledger:
        for i in range(done + 5):
            ledger.charge_session(f"s{i}", "ann", "laser", busy_s=60, idle_s=0, mwh_by_source={"grid": 1000})
        assert ledger.size() == done + 5
        assert ledger.balance("member:ann") == -(done + 5) * 500
    assert check_ledger(db).ok


def _size(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return int(conn.execute("SELECT count(*) FROM ledger_transactions").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def test_a_database_from_a_newer_commonwatt_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    Ledger(path, POLICY).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE ledger_meta SET value = '7' WHERE key = 'schema_version'")
    db.close()
    with pytest.raises(LedgerError, match=r"ledger schema 7, this commonwatt reads 1"):
        Ledger(path, POLICY)
