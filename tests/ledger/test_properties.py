"""Property tests: any sequence of ledger operations, with restarts, keeps the ledger's invariants."""

from __future__ import annotations

import sqlite3
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.ledger import Ledger, LedgerError, Transaction, check_ledger
from tests.ledger.factories import POLICY, Clock

MEMBERS = ("ann", "bob", "carol")
OPERATORS = ("op1", "op2")
MONTHS = ("2024-01", "2024-02", "2024-03", "2024-04")

charge = st.tuples(
    st.just("charge"),
    st.integers(0, 6),  # session: few ids, so the same session is charged again
    st.sampled_from(MEMBERS),
    st.integers(0, 8 * 3600),
    st.integers(0, 3600),
    st.fixed_dictionaries({}, optional={s: st.integers(0, 5_000_000) for s in ("sun", "battery", "grid")}),
)
allowance = st.tuples(st.just("allowance"), st.sampled_from(MONTHS), st.lists(st.sampled_from(MEMBERS), unique=True))
contribute = st.tuples(
    st.just("contribute"), st.sampled_from(MEMBERS), st.integers(1, 120_000), st.sampled_from(OPERATORS)
)
approve = st.tuples(st.just("approve"), st.integers(1, 8), st.sampled_from(OPERATORS))
reverse = st.tuples(st.just("reverse"), st.integers(1, 30))
restart = st.tuples(st.just("restart"))
operations = st.lists(st.one_of(charge, allowance, contribute, approve, reverse, restart), max_size=30)


def apply(ledger: Ledger, op: tuple[Any, ...]) -> None:
    kind = op[0]
    if kind == "charge":
        _, session, member, busy, idle, mwh = op
        ledger.charge_session(f"s{session}", member, "laser", busy_s=busy, idle_s=idle, mwh_by_source=mwh)
    elif kind == "allowance":
        with suppress(LedgerError):  # a month older than one already issued: refused, nothing changes
            ledger.issue_allowances(op[1], op[2])
    elif kind == "contribute":
        ledger.grant_contribution(op[1], op[2], "cleaning", "", by=op[3])
    elif kind == "approve":
        with suppress(LedgerError):  # no such contribution, or the same operator: refused
            ledger.approve_contribution(op[1], by=op[2])
    elif kind == "reverse":
        with suppress(LedgerError):  # no such transaction, or a reversal: refused
            ledger.reverse(op[1], by="op1")


def replay(ledger: Ledger, ops: list[tuple[Any, ...]]) -> None:
    """Post again everything so far: a replay after a crash must change nothing."""
    for op in ops:
        reversed_before = op[0] == "reverse" and ledger.by_key(f"reversal:{op[1]}") is not None
        if op[0] in ("charge", "allowance") or reversed_before:
            apply(ledger, op)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations)
def test_invariants_hold_through_any_sequence(ops: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "commonwatt.sqlite"
        clock = Clock()
        ledger = Ledger(db, POLICY, clock=clock)
        try:
            for i, op in enumerate(ops):
                if op[0] == "restart":
                    ledger.close()
                    ledger = Ledger(db, POLICY, clock=clock)
                    size = ledger.size()
                    replay(ledger, ops[:i])
                    assert ledger.size() == size
                else:
                    apply(ledger, op)
            check_against_sql(ledger, db, ops)
        finally:
            ledger.close()
        report = check_ledger(db, policy=POLICY)
        assert report.ok, [str(p) for p in report.problems]


def check_against_sql(ledger: Ledger, db: Path, ops: list[tuple[Any, ...]]) -> None:
    txs: list[Transaction] = ledger.transactions(limit=10_000)
    assert [t.id for t in txs] == list(range(1, len(txs) + 1))
    assert all(sum(p.amount for p in t.postings) == 0 for t in txs)
    keys = [t.key for t in txs]
    assert len(keys) == len(set(keys))
    charged = {f"charge:s{op[1]}" for op in ops if op[0] == "charge"}
    assert {k for k in keys if k.startswith("charge:")} == charged
    with sqlite3.connect(db) as conn:
        sums = dict(conn.execute("SELECT account, sum(amount) FROM ledger_postings GROUP BY account"))
        events = conn.execute(
            "SELECT count(*) FROM records WHERE metric = 'event.ledger' AND text LIKE '%\"transaction\"%'"
        )
        assert events.fetchone()[0] == len(txs)
    assert {a: b for a, b in ledger.balances().items() if b or a in sums} == sums
    assert sum(ledger.balances().values()) == 0
    for t in txs:
        if t.reverses is not None:
            original = txs[t.reverses - 1]
            assert [p.amount for p in t.postings] == [-p.amount for p in original.postings]
