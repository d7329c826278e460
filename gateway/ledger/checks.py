"""`check_ledger`: the ledger's invariants, checked from the stored bytes, in the style of hledger's `check`.

Each problem names the transaction (or account) it is about. What is checked:

- sequence: ids run 1, 2, 3... (a deleted transaction leaves a hole) and each transaction's
  canonical bytes carry its own id (a reordered or moved one does not);
- hash / chain: `tx_hash` = SHA-256(canonical) and `chain_hash` follows the previous one;
- canonical: the bytes parse, are in canonical form, and obey the transaction rules
  (postings balanced, known accounts, integer amounts, a key of the right form);
- columns / postings: the query copies (ts, kind, key, reverses; the postings table) agree
  with the canonical bytes;
- keys: no idempotency key is used twice;
- reversals: a reversal names an earlier transaction that is not itself a reversal, reverses
  it once, and negates every posting;
- policy / charges: the policy hash of every transaction is stored, the stored policy hashes
  to it, and every charge recomputes to the same items and postings under it;
- contributions: one above the approval threshold was approved by a second operator;
- accounts / balances: every account posted to is declared (and a `member:` account names a
  member, when the people table exists); every running balance equals the sum of postings;
- limits (notices, not errors): members below their credit limit (new sessions refused).

The chain check compares each transaction against the *stored* hash of the one before, so
a change to one transaction is reported at that transaction rather than at every later one.
A forger who rewrites a transaction and recomputes every later hash passes these checks;
the signed Merkle checkpoints (gateway.audit) are what catch that.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any, Literal

from gateway.ledger.model import GENESIS, LedgerError, Posting, Transaction, account_kind, chain_next, negated
from gateway.ledger.pricing import PricingPolicy, charge_for_session, mcr

Severity = Literal["error", "notice"]


@dataclass(frozen=True, slots=True)
class Problem:
    check: str
    message: str
    tx: int | None = None
    account: str | None = None
    severity: Severity = "error"

    def __str__(self) -> str:
        where = (
            f"transaction {self.tx}" if self.tx is not None else f"account {self.account}" if self.account else "ledger"
        )
        return f"{self.severity}: {self.check}: {where}: {self.message}"


@dataclass(slots=True)
class CheckReport:
    transactions: int = 0
    accounts: int = 0
    chain_head: str = GENESIS.hex()
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)

    def errors_by_tx(self) -> set[int]:
        return {p.tx for p in self.problems if p.severity == "error" and p.tx is not None}


_Row = tuple[int, int, str, str, int | None, bytes, str, str]


def check_ledger(path: str | Path, *, policy: PricingPolicy | None = None) -> CheckReport:
    """Check the ledger in a database file, read-only. `policy` (the one in force) adds the limit notices."""
    conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    try:
        return _Checker(conn, policy).run()
    finally:
        conn.close()


class _Checker:
    def __init__(self, conn: sqlite3.Connection, policy: PricingPolicy | None) -> None:
        self.conn = conn
        self.policy = policy
        self.report = CheckReport()
        self.sums: dict[str, int] = {}
        self.keys: dict[str, int] = {}
        self.reversed: dict[int, int] = {}
        self.policies: dict[str, PricingPolicy | None] = {}

    def problem(self, check: str, message: str, tx: int | None = None, account: str | None = None) -> None:
        self.report.problems.append(Problem(check, message, tx, account))

    def run(self) -> CheckReport:
        self.check_transactions()
        self.check_accounts()
        self.check_contributions()
        if self.policy is not None:
            self.check_limits(self.policy)
        return self.report

    # -- the chain of transactions ----------------------------------------------------------

    def check_transactions(self) -> None:
        rows = self.conn.execute(
            "SELECT id, ts_ms, kind, key, reverses, canonical, tx_hash, chain_hash FROM ledger_transactions ORDER BY id"
        )
        postings = _postings_by_tx(self.conn.cursor())
        pending = next(postings, None)
        prev_id, prev_chain = 0, GENESIS.hex()
        for row in rows:
            tx_id = row[0]
            while pending is not None and pending[0] < tx_id:
                self.problem("postings", "postings rows of a transaction that is not stored", pending[0])
                pending = next(postings, None)
            rows_of_tx, pending = (
                (pending[1], next(postings, None)) if pending and pending[0] == tx_id else ([], pending)
            )
            self.check_sequence(prev_id, tx_id)
            self.check_hashes(row, prev_chain, prev_id)
            tx = self.parse(row)
            if tx is not None:
                self.check_one(tx, row, rows_of_tx)
            prev_id, prev_chain = tx_id, row[7]
            self.report.transactions += 1
        for tx_id, _rows in ([pending] if pending else []) + list(postings):
            self.problem("postings", "postings rows of a transaction that is not stored", tx_id)
        self.report.chain_head = prev_chain

    def check_sequence(self, prev_id: int, tx_id: int) -> None:
        if tx_id != prev_id + 1:
            missing = f"{prev_id + 1}" if tx_id == prev_id + 2 else f"{prev_id + 1}..{tx_id - 1}"
            self.problem("sequence", f"transaction(s) {missing} missing (deleted?)", prev_id + 1)

    def check_hashes(self, row: _Row, prev_chain: str, prev_id: int) -> None:
        tx_id, canonical, tx_hash, chain = row[0], bytes(row[5]), row[6], row[7]
        if hashlib.sha256(canonical).hexdigest() != tx_hash:
            self.problem("hash", "tx_hash is not the SHA-256 of the stored bytes (changed?)", tx_id)
        try:
            expected = chain_next(bytes.fromhex(prev_chain), canonical).hex()
        except ValueError:
            expected = ""
        if expected != chain:
            self.problem("chain", f"chain_hash does not follow transaction {prev_id}'s", tx_id)

    def parse(self, row: _Row) -> Transaction | None:
        try:
            tx = Transaction.from_canonical(bytes(row[5]))
        except LedgerError as exc:
            self.problem("canonical", str(exc), row[0])
            return None
        if tx.id != row[0]:
            self.problem("sequence", f"the bytes stored as transaction {row[0]} are transaction {tx.id}'s", row[0])
        return tx

    def check_one(self, tx: Transaction, row: _Row, posting_rows: list[Posting]) -> None:
        tx_id = row[0]
        if (tx.ts_ms, tx.kind, tx.key, tx.reverses) != (row[1], row[2], row[3], row[4]):
            self.problem("columns", "ts_ms, kind, key or reverses differ from the canonical bytes", tx_id)
        if list(tx.postings) != posting_rows:
            self.problem("postings", "the postings table differs from the canonical bytes", tx_id)
        if tx.key in self.keys:
            self.problem("keys", f"idempotency key {tx.key!r} already used by transaction {self.keys[tx.key]}", tx_id)
        self.keys.setdefault(tx.key, tx_id)
        for p in tx.postings:
            self.sums[p.account] = self.sums.get(p.account, 0) + p.amount
        if tx.reverses is not None:
            self.check_reversal(tx, tx_id)
        policy = self.policy_of(tx, tx_id)
        if policy is not None and tx.kind == "charge":
            self.check_charge(tx, tx_id, policy)
        if policy is not None and tx.kind == "contribution":
            self.check_contribution_approval(tx, tx_id, policy)

    def check_reversal(self, tx: Transaction, tx_id: int) -> None:
        target_id = tx.reverses or 0
        row = self.conn.execute("SELECT canonical FROM ledger_transactions WHERE id = ?", (target_id,)).fetchone()
        if row is None or target_id >= tx_id:
            self.problem("reversals", f"reverses transaction {target_id}, which does not precede it", tx_id)
            return
        if target_id in self.reversed:
            self.problem(
                "reversals", f"transaction {target_id} is already reversed by {self.reversed[target_id]}", tx_id
            )
        self.reversed.setdefault(target_id, tx_id)
        try:
            target = Transaction.from_canonical(bytes(row[0]))
        except LedgerError:
            return  # reported at the target itself
        if target.kind == "reversal" or tx.postings != negated(target.postings):
            self.problem("reversals", f"does not negate every posting of transaction {target_id}", tx_id)

    def policy_of(self, tx: Transaction, tx_id: int) -> PricingPolicy | None:
        if tx.policy not in self.policies:
            self.policies[tx.policy] = self.load_policy(tx.policy)
        policy = self.policies[tx.policy]
        if policy is None:
            self.problem("policy", f"policy {tx.policy[:12]}... is not stored or does not hash to its name", tx_id)
        return policy

    def load_policy(self, digest: str) -> PricingPolicy | None:
        row = self.conn.execute("SELECT canonical FROM ledger_policies WHERE hash = ?", (digest,)).fetchone()
        if row is None or hashlib.sha256(bytes(row[0])).hexdigest() != digest:
            return None
        try:
            return PricingPolicy.model_validate_json(bytes(row[0]))
        except ValueError:
            return None

    def check_charge(self, tx: Transaction, tx_id: int, policy: PricingPolicy) -> None:
        d: dict[str, Any] = dict(tx.detail)
        try:
            bill = charge_for_session(policy, d["machine"], d["busy_s"], d["idle_s"], d["mwh"])
            same = bill.document() == {k: d[k] for k in bill.document()} and bill.postings(d["member"]) == tx.postings
        except (KeyError, TypeError, LedgerError) as exc:
            self.problem("charges", f"the charge's detail cannot be recomputed: {exc}", tx_id)
            return
        if not same:
            self.problem("charges", "recomputed under its policy, the charge comes out different", tx_id)

    def check_contribution_approval(self, tx: Transaction, tx_id: int, policy: PricingPolicy) -> None:
        amount = max((p.amount for p in tx.postings), default=0)
        by, approved = tx.detail.get("by"), tx.detail.get("approved_by")
        if amount > mcr(policy.contribution_approval_above) and (approved is None or approved == by):
            self.problem("contributions", "above the approval threshold without a second operator's approval", tx_id)

    # -- accounts, balances, limits ---------------------------------------------------------

    def check_accounts(self) -> None:
        declared = {
            r[0]: (r[1], int(r[2])) for r in self.conn.execute("SELECT name, kind, balance FROM ledger_accounts")
        }
        members = self.member_ids()
        self.report.accounts = len(declared)
        for name in sorted(set(declared) | set(self.sums)):
            kind, running = declared.get(name, (None, None))
            total = self.sums.get(name, 0)
            if running is None:
                self.problem("accounts", "posted to but not declared in ledger_accounts", account=name)
            elif running != total:
                self.problem("balances", f"running balance {running} mcr, postings sum to {total} mcr", account=name)
            if account_kind(name) is None or (kind is not None and kind != account_kind(name)):
                self.problem("accounts", f"not a valid account name, or declared with kind {kind!r}", account=name)
            if members is not None and name.startswith("member:") and name[7:] not in members:
                self.problem("accounts", "a member account whose member does not exist", account=name)

    def member_ids(self) -> set[str] | None:
        try:
            return {r[0] for r in self.conn.execute("SELECT id FROM members")}
        except sqlite3.OperationalError:
            return None  # no people table in this file

    def check_contributions(self) -> None:
        rows = self.conn.execute("SELECT id, status, tx_id FROM ledger_contributions ORDER BY id").fetchall()
        for cid, status, tx_id in rows:
            posted = self.keys.get(f"contribution:{cid}")
            if (status == "posted") != (posted is not None) or (posted is not None and posted != tx_id):
                self.problem("contributions", f"contribution {cid} is {status} but its transaction is {posted}", tx_id)

    def check_limits(self, policy: PricingPolicy) -> None:
        for name, total in sorted(self.sums.items()):
            if name.startswith("member:") and total <= -policy.credit_limit_mcr(name[7:]):
                message = f"balance {total} mcr is at or below the credit limit: new sessions are refused"
                self.report.problems.append(Problem("limits", message, account=name, severity="notice"))


def _postings_by_tx(cur: sqlite3.Cursor) -> Iterator[tuple[int, list[Posting]]]:
    cur.execute("SELECT tx_id, account, amount FROM ledger_postings ORDER BY tx_id, n")
    for tx_id, rows in groupby(cur, key=lambda r: int(r[0])):
        yield tx_id, [Posting(r[1], r[2]) for r in rows]
