"""`check_ledger` on an honest ledger, and on one tampered with behind the ledger's back."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gateway.ledger import Ledger, check_ledger
from tests.ledger.factories import POLICY, Clock

LASER = {"busy_s": 1800, "idle_s": 600, "mwh_by_source": {"sun": 500_000, "grid": 123_456}}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "commonwatt.sqlite"
    with Ledger(path, POLICY, clock=Clock()) as ledger:
        ledger.issue_allowances("2024-01", ["ann", "bob"])  # 1, 2
        ledger.charge_session("s1", "ann", "laser", **LASER)  # type: ignore[arg-type]  # 3
        ledger.grant_contribution("bob", 60_000, "teaching", "course", by="op1")
        ledger.approve_contribution(1, by="op2")  # 4
        ledger.reverse(3, by="op1", memo="meter fault")  # 5
        ledger.charge_session("s2", "bob", "laser", **LASER)  # type: ignore[arg-type]  # 6
    return path


@contextmanager
def raw(db: Path) -> Iterator[sqlite3.Connection]:
    """A plain connection with the append-only triggers dropped: what a forger with file access has."""
    conn = sqlite3.connect(db, isolation_level=None)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'ledger_%'"):
        conn.execute(f"DROP TRIGGER {name}")
    try:
        yield conn
    finally:
        conn.close()


def errors(db: Path) -> set[int]:
    report = check_ledger(db)
    assert not report.ok
    return report.errors_by_tx()


def test_an_honest_ledger_passes(db: Path) -> None:
    report = check_ledger(db, policy=POLICY)
    assert report.ok and report.problems == [] and report.transactions == 6
    with Ledger(db, POLICY) as ledger:
        assert report.chain_head == ledger.entries()[-1].chain_hash.hex()


def test_every_byte_of_a_transaction_is_covered(db: Path) -> None:
    with raw(db) as conn:
        original = bytes(conn.execute("SELECT canonical FROM ledger_transactions WHERE id = 3").fetchone()[0])
        for i in range(0, len(original), 7):
            changed = original[:i] + bytes([original[i] ^ 0x01]) + original[i + 1 :]
            conn.execute("UPDATE ledger_transactions SET canonical = ? WHERE id = 3", (changed,))
            report = check_ledger(db)
            assert 3 in report.errors_by_tx(), i
            assert report.errors_by_tx() <= {3, 5}, i  # 5 reverses 3: it may disagree with a changed 3
        conn.execute("UPDATE ledger_transactions SET canonical = ? WHERE id = 3", (original,))
    assert check_ledger(db).ok


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE ledger_transactions SET tx_hash = replace(tx_hash, substr(tx_hash, 1, 1), 'x') WHERE id = 4",
        "UPDATE ledger_transactions SET ts_ms = ts_ms + 1 WHERE id = 4",
        "UPDATE ledger_transactions SET key = 'contribution:9' WHERE id = 4",
        "UPDATE ledger_postings SET amount = amount + 1 WHERE tx_id = 4 AND n = 0",
        "UPDATE ledger_postings SET account = 'member:eve' WHERE tx_id = 4 AND n = 1",
        "INSERT INTO ledger_postings VALUES (4, 9, 'member:eve', 0)",
        "DELETE FROM ledger_postings WHERE tx_id = 4 AND n = 1",
    ],
)
def test_a_changed_copy_is_reported_at_its_transaction(db: Path, sql: str) -> None:
    with raw(db) as conn:
        conn.execute(sql)
    assert 4 in errors(db)


def test_a_changed_chain_hash(db: Path) -> None:
    with raw(db) as conn:
        conn.execute("UPDATE ledger_transactions SET chain_hash = ? WHERE id = 4", ("00" * 32,))
    assert errors(db) == {4, 5}  # 4 does not follow 3; 5 does not follow the stored 4


def test_a_deleted_transaction(db: Path) -> None:
    with raw(db) as conn:
        conn.execute("DELETE FROM ledger_transactions WHERE id = 4")
    report = check_ledger(db)
    assert 4 in report.errors_by_tx()
    assert any(p.check == "sequence" and p.tx == 4 and "missing" in p.message for p in report.problems)


def test_the_last_transaction_deleted_shows_in_the_balances(db: Path) -> None:
    with raw(db) as conn:
        conn.execute("DELETE FROM ledger_transactions WHERE id = 6")
    report = check_ledger(db)
    assert 6 in report.errors_by_tx()  # its postings remain, orphaned
    assert {p.account for p in report.problems if p.check == "balances"} >= {"member:bob"}


def test_reordered_transactions(db: Path) -> None:
    with raw(db) as conn:
        rows = conn.execute("SELECT id, canonical, tx_hash, chain_hash FROM ledger_transactions WHERE id IN (3, 4)")
        a, b = rows.fetchall()
        for target, source in ((a, b), (b, a)):
            conn.execute(
                "UPDATE ledger_transactions SET canonical = ?, tx_hash = ?, chain_hash = ? WHERE id = ?",
                (source[1], source[2], source[3], target[0]),
            )
    assert {3, 4} <= errors(db)


def test_a_rewritten_balance(db: Path) -> None:
    with raw(db) as conn:
        conn.execute("UPDATE ledger_accounts SET balance = balance + 1000 WHERE name = 'member:ann'")
    problems = check_ledger(db).problems
    assert [(p.check, p.account) for p in problems] == [("balances", "member:ann")]


def test_a_contribution_approved_by_its_own_operator(db: Path) -> None:
    """A forger who inserts a self-approved contribution, with correct hashes, is caught by the rules."""
    from gateway.ledger.model import Posting, Transaction, chain_next, sha256

    with raw(db) as conn:
        last = conn.execute("SELECT chain_hash FROM ledger_transactions WHERE id = 6").fetchone()[0]
        policy = conn.execute("SELECT hash FROM ledger_policies").fetchone()[0]
        detail = {"contribution": 9, "member": "ann", "category": "x", "by": "op1", "approved_by": "op1"}
        postings = (Posting("contributions", -90_000), Posting("member:ann", 90_000))
        tx = Transaction(7, 1, "contribution", "contribution:9", "", policy, postings, detail)
        data = tx.canonical()
        conn.execute(
            "INSERT INTO ledger_transactions VALUES (7, 1, 'contribution', 'contribution:9', NULL, ?, ?, ?)",
            (data, sha256(data).hex(), chain_next(bytes.fromhex(last), data).hex()),
        )
        conn.execute("INSERT INTO ledger_postings VALUES (7, 0, 'contributions', -90000), (7, 1, 'member:ann', 90000)")
        conn.execute("UPDATE ledger_accounts SET balance = balance - 90000 WHERE name = 'contributions'")
        conn.execute("UPDATE ledger_accounts SET balance = balance + 90000 WHERE name = 'member:ann'")
    assert [p.check for p in check_ledger(db).problems] == ["contributions"]


def test_a_charge_that_does_not_recompute(db: Path) -> None:
    from gateway.ledger.model import Transaction, chain_next, sha256

    with raw(db) as conn:
        row = conn.execute("SELECT canonical FROM ledger_transactions WHERE id = 6").fetchone()
        prev = conn.execute("SELECT chain_hash FROM ledger_transactions WHERE id = 5").fetchone()[0]
        tx = Transaction.from_canonical(bytes(row[0]))
        forged = Transaction(**{**{f: getattr(tx, f) for f in tx.__slots__}, "detail": {**tx.detail, "busy_s": 1}})
        data = forged.canonical()
        conn.execute(
            "UPDATE ledger_transactions SET canonical = ?, tx_hash = ?, chain_hash = ? WHERE id = 6",
            (data, sha256(data).hex(), chain_next(bytes.fromhex(prev), data).hex()),
        )
    assert [(p.check, p.tx) for p in check_ledger(db).problems] == [("charges", 6)]


def test_limits_are_notices(db: Path) -> None:
    with Ledger(db, POLICY) as ledger:
        ledger.charge_session("s3", "carol", "laser", **LASER)  # type: ignore[arg-type]
    report = check_ledger(db, policy=POLICY)
    assert report.ok
    assert [(p.check, p.account, p.severity) for p in report.problems] == [("limits", "member:carol", "notice")]


def test_member_accounts_name_members(db: Path) -> None:
    from gateway.people import People

    with People(db) as people:
        people.add_member("ann", "Ann")
    problems = check_ledger(db).problems
    assert [(p.check, p.account) for p in problems] == [("accounts", "member:bob")]
