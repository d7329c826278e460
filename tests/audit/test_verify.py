"""`audit verify` on an honest ledger, and on one a forger with the database file tampered with."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.audit.log import AuditLog
from gateway.audit.verify import VerifyReport, run, verify
from gateway.config import Config, parse_config
from gateway.journal import Journal
from gateway.ledger import Ledger, check_ledger
from gateway.ledger.model import chain_next, sha256
from tests.ledger.factories import POLICY, Clock

LASER = {"busy_s": 1800, "idle_s": 600, "mwh_by_source": {"sun": 500_000, "grid": 123_456}}
T0 = 1_700_000_000.0


def closed(session: str, member: str, machine: str = "laser") -> tuple[float, str, str, None, str]:
    event = {"kind": "session_closed", "session_id": session, "member_id": member, "machine_id": machine}
    return (T0, machine, "event.session_closed", None, json.dumps(event))


@pytest.fixture
def config(tmp_path: Path) -> Config:
    path = tmp_path / "commonwatt.sqlite"
    with Journal(path) as journal:
        journal.append_rows([closed("s1", "ann"), closed("s2", "bob"), closed("s3", "bob")])
    with Ledger(path, POLICY, clock=Clock()) as ledger:
        ledger.issue_allowances("2024-01", ["ann", "bob"])  # 1, 2
        ledger.charge_session("s1", "ann", "laser", **LASER)  # type: ignore[arg-type]  # 3
        ledger.grant_contribution("bob", 60_000, "teaching", "course", by="op1")
        ledger.approve_contribution(1, by="op2")  # 4
        ledger.charge_session("s2", "bob", "laser", **LASER)  # type: ignore[arg-type]  # 5
        ledger.reverse(3, by="op1", memo="meter fault")  # 6
    cfg = parse_config({"site": {"id": "lab"}, "journal": {"path": str(path)}})
    cfg = cfg.model_copy(update={"pricing": POLICY})
    with AuditLog.for_config(cfg) as log:
        log.sync()
        log.checkpoint(T0)
    return cfg


@contextmanager
def raw(config: Config) -> Iterator[sqlite3.Connection]:
    """A plain connection with every append-only trigger dropped: what a forger with file access has."""
    conn = sqlite3.connect(config.journal.path, isolation_level=None)
    triggers = conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall()
    for (name,) in triggers:
        conn.execute(f"DROP TRIGGER {name}")
    try:
        yield conn
    finally:
        conn.close()


def log_errors(report: VerifyReport) -> set[int | None]:
    return {p.tx for p in report.problems if p.severity == "error"}


def test_an_honest_ledger_verifies(config: Config) -> None:
    report = verify(config)
    assert report.ok, report.lines()
    assert (report.transactions, report.leaves, report.checkpoints) == (6, 6, 1)
    assert (report.sessions_closed, report.charges) == (3, 2)
    status, lines = run(config)
    assert status == 0 and lines[-1] == "ok: nothing differs"


def test_transactions_not_logged_yet_are_no_mismatch(config: Config) -> None:
    with Ledger(config.journal.path, POLICY, clock=Clock(T0 + 10)) as ledger:
        ledger.charge_session("s3", "bob", "laser", **LASER)  # type: ignore[arg-type]
    report = verify(config)
    assert report.ok and (report.transactions, report.leaves) == (7, 6)


def test_every_byte_of_a_logged_transaction_is_covered(config: Config) -> None:
    with raw(config) as conn:
        original = bytes(conn.execute("SELECT canonical FROM ledger_transactions WHERE id = 3").fetchone()[0])
        for i in range(len(original)):
            changed = original[:i] + bytes([original[i] ^ 0x20]) + original[i + 1 :]
            conn.execute("UPDATE ledger_transactions SET canonical = ? WHERE id = 3", (changed,))
            report = verify(config)
            assert log_errors(report) == {3, None}, (i, report.lines())  # the leaf, and the signed root
            assert not report.ok
    status, lines = run(config)
    assert status == 1
    assert any("transaction 3" in line and "changed" in line for line in lines)


def rewrite_history(conn: sqlite3.Connection, tx_id: int, find: bytes, put: bytes) -> None:
    """Change one transaction and recompute every hash after it: the ledger's own checks pass."""
    rows = conn.execute("SELECT id, canonical, chain_hash FROM ledger_transactions ORDER BY id").fetchall()
    prev = bytes(32)
    for row_id, canonical, chain in rows:
        data = bytes(canonical).replace(find, put) if row_id == tx_id else bytes(canonical)
        if row_id >= tx_id:
            chain = chain_next(prev, data).hex()
            conn.execute(
                "UPDATE ledger_transactions SET canonical = ?, tx_hash = ?, chain_hash = ? WHERE id = ?",
                (data, sha256(data).hex(), chain, row_id),
            )
        prev = bytes.fromhex(chain)


def test_a_rewritten_history_passes_the_chain_but_not_the_log(config: Config) -> None:
    with raw(config) as conn:
        rewrite_history(conn, 4, b'"course"', b'"coursE"')  # the memo of the contribution
    assert check_ledger(config.journal.path).ok
    report = verify(config)
    assert log_errors(report) == {4, None}


def test_rewriting_the_logged_hashes_too_is_caught_by_the_signed_root(config: Config) -> None:
    from gateway.audit import leaf_hash

    with raw(config) as conn:
        rewrite_history(conn, 4, b'"course"', b'"coursE"')
        (data,) = conn.execute("SELECT canonical FROM ledger_transactions WHERE id = 4").fetchone()
        conn.execute("UPDATE audit_leaves SET leaf_hash = ? WHERE tx_id = 4", (leaf_hash(bytes(data)),))
    report = verify(config)
    assert not report.ok
    assert [p.check for p in report.problems] == ["checkpoint"]


def test_a_deleted_transaction_is_named(config: Config) -> None:
    with raw(config) as conn:
        conn.execute("DELETE FROM ledger_transactions WHERE id = 4")
    report = verify(config)
    assert log_errors(report) == {4, None}
    assert any("departs from the log at leaf 3" in str(p) for p in report.problems)
    assert run(config)[0] == 1


def test_a_transaction_moved_to_the_end_is_named(config: Config) -> None:
    with raw(config) as conn:
        conn.execute("UPDATE ledger_transactions SET id = 7 WHERE id = 4")
    assert 4 in log_errors(verify(config))


def test_two_transactions_swapped_are_both_named(config: Config) -> None:
    with raw(config) as conn:
        a, b = conn.execute("SELECT id, canonical FROM ledger_transactions WHERE id IN (4, 5) ORDER BY id").fetchall()
        conn.execute("UPDATE ledger_transactions SET canonical = ? WHERE id = ?", (b[1], a[0]))
        conn.execute("UPDATE ledger_transactions SET canonical = ? WHERE id = ?", (a[1], b[0]))
    assert log_errors(verify(config)) == {4, 5, None}


def test_a_forged_checkpoint_is_refused(config: Config) -> None:
    with raw(config) as conn:
        conn.execute("UPDATE audit_checkpoints SET signed_note = replace(signed_note, 'lab\n6', 'lab\n7')")
    report = verify(config)
    assert not report.ok
    assert any(p.check == "checkpoint" and "size 6" in p.message for p in report.problems)


def test_charges_must_match_the_sessions_the_journal_closed(config: Config) -> None:
    with Ledger(config.journal.path, POLICY, clock=Clock(T0 + 10)) as ledger:
        ledger.charge_session("ghost", "ann", "laser", **LASER)  # type: ignore[arg-type]  # 7
        ledger.charge_session("s3", "ann", "laser", **LASER)  # type: ignore[arg-type]  # 8: s3 was bob's
    report = verify(config)
    assert {(p.check, p.tx) for p in report.problems} == {("sessions", 7), ("sessions", 8)}


def test_the_cli_command(config: Config, tmp_path: Path) -> None:
    from gateway.cli import app, audit_app

    if not any(c.name == "verify" for c in audit_app.registered_commands):
        pytest.skip("`commonwatt audit verify` is not wired into gateway/cli.py yet")
    toml = tmp_path / "commonwatt.toml"
    toml.write_text(f'[site]\nid = "lab"\n[journal]\npath = "{config.journal.path}"\n')
    runner = CliRunner()
    good = runner.invoke(app, ["audit", "verify", "--config", str(toml)])
    assert good.exit_code == 0, good.output
    with raw(config) as conn:
        conn.execute("DELETE FROM ledger_transactions WHERE id = 5")
    bad = runner.invoke(app, ["audit", "verify", "--config", str(toml)])
    assert bad.exit_code == 1 and "transaction 5" in bad.output
