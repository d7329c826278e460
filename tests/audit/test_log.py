"""`AuditLog` on a real ledger file: leaves as transactions appear, signed checkpoints, proofs that verify."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.audit import AuditError, check_bundle, check_proof_files, leaf_hash, root_of
from gateway.audit.log import AuditLog, NotFound
from gateway.ledger import Ledger
from tests.ledger.factories import POLICY, Clock

LASER = {"busy_s": 1800, "idle_s": 600, "mwh_by_source": {"sun": 500_000, "grid": 123_456}}
T0 = 1_700_000_000.0


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "commonwatt.sqlite"
    with Ledger(path, POLICY, clock=Clock()) as ledger:
        ledger.issue_allowances("2024-01", ["ann", "bob"])  # 1, 2
        ledger.charge_session("s1", "ann", "laser", **LASER)  # type: ignore[arg-type]  # 3
    return path


def open_log(db: Path) -> AuditLog:
    return AuditLog(db, origin="commonwatt/lab", key_path=db.parent / "audit-key.pem")


def canonicals(db: Path) -> list[bytes]:
    with Ledger(db, POLICY) as ledger:
        return [e.canonical for e in ledger.entries(limit=1_000_000)]


def test_sync_logs_each_transaction_once_in_order(db: Path) -> None:
    with open_log(db) as log:
        assert log.size == 0
        assert log.sync() == 3
        assert log.sync() == 0
        with Ledger(db, POLICY, clock=Clock(T0 + 100)) as ledger:
            ledger.charge_session("s2", "bob", "laser", **LASER)  # type: ignore[arg-type]
        assert log.sync() == 1
        assert log.leaf_hashes(0, 10) == [leaf_hash(c) for c in canonicals(db)]


def test_a_checkpoint_signs_the_root_only_when_the_log_grew(db: Path) -> None:
    with open_log(db) as log:
        log.sync()
        first = log.checkpoint(T0)
        assert first is not None
        assert first.checkpoint.size == 3
        assert first.checkpoint.root == root_of([leaf_hash(c) for c in canonicals(db)])
        assert log.verifier.verify(first.signed_note) == first.checkpoint
        assert log.checkpoint(T0 + 900) is None  # nothing new
        assert [c.checkpoint.size for c in log.checkpoints()] == [3]


def test_a_clock_set_back_never_dates_a_checkpoint_before_the_last(db: Path) -> None:
    with open_log(db) as log:
        log.sync()
        first = log.checkpoint(T0)
        with Ledger(db, POLICY, clock=Clock(T0)) as ledger:
            ledger.charge_session("s2", "bob", "laser", **LASER)  # type: ignore[arg-type]
        log.sync()
        second = log.checkpoint(T0 - 3600)
        assert first is not None and second is not None
        assert second.checkpoint.time == first.checkpoint.time


def test_the_key_is_private_and_kept_across_restarts(db: Path) -> None:
    with open_log(db) as log:
        log.sync()
        log.checkpoint(T0)
        key = str(log.verifier)
    assert stat.S_IMODE((db.parent / "audit-key.pem").stat().st_mode) == 0o600
    with open_log(db) as again:
        assert str(again.verifier) == key
        latest = again.latest()
        assert latest is not None and latest.checkpoint.size == 3


def test_inclusion_needs_a_checkpoint_that_covers_the_transaction(db: Path) -> None:
    with open_log(db) as log:
        log.sync()
        with pytest.raises(NotFound):
            log.inclusion(1)  # logged, not signed yet
        log.checkpoint(T0)
        bundle = log.inclusion(3)
        assert bundle["leaf_index"] == 2 and bundle["tree_size"] == 3
        assert "(transaction 3)" in check_bundle(bundle, [log.verifier]).summary
        with pytest.raises(NotFound):
            log.inclusion(99)


def test_every_transaction_and_checkpoint_pair_proves(db: Path) -> None:
    with open_log(db) as log, Ledger(db, POLICY, clock=Clock(T0)) as ledger:
        for i in range(12):
            ledger.charge_session(f"t{i}", "bob", "laser", **LASER)  # type: ignore[arg-type]
            log.sync()
            log.checkpoint(T0 + 60 * i)
        sizes = [c.checkpoint.size for c in log.checkpoints()]
        assert sizes == list(range(4, 16))
        for tx_id in range(1, 16):
            check_bundle(log.inclusion(tx_id), [log.verifier])
        for old in sizes:
            for new in sizes[sizes.index(old) :]:
                check_bundle(log.consistency(old, new), [log.verifier])
        with pytest.raises(NotFound):
            log.consistency(5, 4)
        with pytest.raises(NotFound):
            log.consistency(2)


def test_an_old_member_proof_still_verifies_after_thousands_of_transactions(db: Path, tmp_path: Path) -> None:
    with open_log(db) as log:
        log.sync()
        log.checkpoint(T0)
        old_proof = tmp_path / "ann-charge.json"
        old_proof.write_text(json.dumps(log.inclusion(3)))
        with Ledger(db, POLICY, clock=Clock(T0 + 60)) as ledger:
            for month in ("2024-02", "2024-03"):
                ledger.issue_allowances(month, [f"m{i}" for i in range(1000)])
        assert log.sync() == 2000
        log.checkpoint(T0 + 3600)
        link = tmp_path / "consistency.json"
        link.write_text(json.dumps(log.consistency(3)))
        new_proof = tmp_path / "new.json"
        new_proof.write_text(json.dumps(log.inclusion(3)))
        key = str(log.verifier)
    ok, lines = check_proof_files([old_proof, link, new_proof], [key])
    assert ok, lines
    cli = subprocess.run(
        [sys.executable, "-m", "gateway", "audit", "check-proof", str(old_proof), str(link), "--key", key],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
        timeout=60,
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert cli.stdout.count("ok ") == 2


def test_a_transaction_changed_after_it_was_logged_gets_no_proof(db: Path) -> None:
    with open_log(db) as log:
        log.sync()
        log.checkpoint(T0)
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("DROP TRIGGER ledger_transactions_no_update")
        (original,) = conn.execute("SELECT canonical FROM ledger_transactions WHERE id = 3").fetchone()
        changed = bytes(original).replace(b"ann", b"amy")
        conn.execute("UPDATE ledger_transactions SET canonical = ? WHERE id = 3", (changed,))
        conn.close()
        with pytest.raises(AuditError, match="changed since it was logged"):
            log.inclusion(3)


def test_the_service_checkpoints_at_start_and_when_the_log_grew(db: Path) -> None:
    import asyncio

    from gateway.audit.service import AuditService
    from gateway.config import parse_config

    config = parse_config({"site": {"id": "lab"}, "journal": {"path": str(db)}})
    sent: list[tuple[str, bytes, bool]] = []

    def publish(topic: str, payload: bytes | str, *, qos: int, retain: bool) -> None:
        sent.append((topic, payload if isinstance(payload, bytes) else payload.encode(), retain))

    async def until(rounds: int, service: AuditService) -> None:
        while service.rounds < rounds:
            await asyncio.sleep(0.01)

    async def main() -> None:
        async with AuditService(config, publish, every_s=3600) as service:
            await asyncio.wait_for(until(1, service), 5)
            with Ledger(db, POLICY, clock=Clock(T0)) as ledger:
                ledger.charge_session("s2", "bob", "laser", **LASER)  # type: ignore[arg-type]
            service.notify()
            await asyncio.wait_for(until(2, service), 5)
            service.notify()
            await asyncio.wait_for(until(3, service), 5)  # nothing new: nothing signed, nothing sent
        async with AuditService(config, publish, every_s=3600) as again:
            await asyncio.wait_for(until(1, again), 5)  # a restart republishes the latest

    asyncio.run(main())
    assert [t for t, _, _ in sent] == ["commonwatt/lab/audit/checkpoint"] * 3
    assert all(retain for _, _, retain in sent)
    assert [p.split(b"\n")[1] for _, p, _ in sent] == [b"3", b"4", b"4"]
