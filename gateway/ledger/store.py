"""`Ledger`: the credit ledger in the gateway's database file.

Every write runs in one `BEGIN IMMEDIATE` SQLite transaction that appends the ledger
transaction (canonical bytes, hashes, postings), updates the running balances, and
appends an `event.ledger` row to the journal (`{"action": ..., "who": ..., "what": ...}`),
so the journal and the ledger can never disagree, and a crash (even SIGKILL) leaves
either all of it or none.

Idempotency: every transaction has a key (`charge:<session>`, `allowance:<member>:<month>`
...). Posting a key that exists returns the transaction already there and posts nothing:
after a restart the gateway simply posts again whatever it is not sure was posted.

One connection per `Ledger`; a lock makes it safe to share between threads.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.journal import Journal, NewRow
from gateway.journal.schema import INSERT_ROWS, UPDATE_SERIES
from gateway.ledger.model import (
    CONTRIBUTIONS,
    GENESIS,
    ISSUANCE,
    Kind,
    LedgerError,
    Posting,
    Transaction,
    account_kind,
    chain_next,
    member_account,
    negated,
    sha256,
)
from gateway.ledger.pricing import (
    MemberMove,
    PricingPolicy,
    add_months,
    charge_for_session,
    mcr,
    policy_bytes,
    policy_hash,
    unused_allowances,
)
from gateway.ledger.schema import DDL, EVENT_DEVICE, EVENT_METRIC, LEDGER_SCHEMA_VERSION
from gateway.sqlite import immediate, open_store

#: The actor of transactions the gateway posts on its own (charges, allowances, expiries).
GATEWAY = "gateway"


@dataclass(frozen=True, slots=True)
class Entry:
    """A stored transaction with its bytes and hashes: what the Merkle log and audits read."""

    id: int
    canonical: bytes
    tx_hash: bytes
    chain_hash: bytes

    @property
    def transaction(self) -> Transaction:
        return Transaction.from_canonical(self.canonical)


@dataclass(frozen=True, slots=True)
class Contribution:
    id: int
    member: str
    amount: int  # mcr
    category: str
    note: str
    requested_by: str
    status: str  # pending | posted | rejected
    decided_by: str | None
    tx_id: int | None


_CONTRIBUTION_COLS = "id, member, amount, category, note, requested_by, status, decided_by, tx_id"


class _Write:
    """One write transaction: its time, its actor, and the journal events it will append."""

    def __init__(self, conn: sqlite3.Connection, now: float, actor: str) -> None:
        self.conn = conn
        self.now = now
        self.ts_ms = round(now * 1000)
        self.actor = actor
        self.events: list[NewRow] = []

    def event(self, action: str, what: dict[str, Any]) -> None:
        text = json.dumps({"action": action, "who": self.actor, "what": what}, sort_keys=True, separators=(",", ":"))
        self.events.append((self.now, EVENT_DEVICE, EVENT_METRIC, None, text))


class Ledger:
    """The ledger of one gateway database file, posting under one pricing policy."""

    def __init__(
        self,
        path: str | Path,
        policy: PricingPolicy,
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout: float = 5.0,
    ) -> None:
        self.path = Path(path)
        self.policy = policy
        self.policy_hash = policy_hash(policy)
        self._clock = clock
        self._lock = threading.RLock()
        Journal(self.path, busy_timeout=busy_timeout).close()  # the journal's tables first
        self._conn = open_store(
            self.path, name="ledger", ddl=DDL, reads=LEDGER_SCHEMA_VERSION, error=LedgerError, busy_timeout=busy_timeout
        )

    # -- transactions ------------------------------------------------------------------------

    @contextmanager
    def _write(self, actor: str) -> Iterator[_Write]:
        with self._lock, immediate(self._conn) as conn:
            w = _Write(conn, self._clock(), actor)
            yield w
            if w.events:
                before: int = conn.execute("SELECT coalesce(max(seq), 0) FROM records").fetchone()[0]
                conn.executemany(INSERT_ROWS, w.events)
                conn.execute(UPDATE_SERIES, (before,))

    def _post(
        self,
        w: _Write,
        kind: Kind,
        key: str,
        postings: Sequence[Posting],
        *,
        memo: str = "",
        detail: Mapping[str, Any] | None = None,
        reverses: int | None = None,
    ) -> Transaction:
        existing = self._by_key(key)
        if existing is not None:
            return existing
        last = w.conn.execute("SELECT id, chain_hash FROM ledger_transactions ORDER BY id DESC LIMIT 1").fetchone()
        tx_id, prev = (1, GENESIS) if last is None else (last[0] + 1, bytes.fromhex(last[1]))
        tx = Transaction(tx_id, w.ts_ms, kind, key, memo, self.policy_hash, tuple(postings), detail or {}, reverses)
        canonical = tx.canonical()
        tx_hash, chain = sha256(canonical), chain_next(prev, canonical)
        w.conn.execute(
            "INSERT INTO ledger_transactions (id, ts_ms, kind, key, reverses, canonical, tx_hash, chain_hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (tx_id, tx.ts_ms, kind, key, reverses, canonical, tx_hash.hex(), chain.hex()),
        )
        self._apply_postings(w, tx)
        w.conn.execute(
            "INSERT OR IGNORE INTO ledger_policies (hash, canonical, first_ms) VALUES (?, ?, ?)",
            (self.policy_hash, policy_bytes(self.policy), w.ts_ms),
        )
        w.event("transaction", {"id": tx_id, "kind": kind, "key": key, "tx_hash": tx_hash.hex(), "chain": chain.hex()})
        return tx

    def _apply_postings(self, w: _Write, tx: Transaction) -> None:
        w.conn.executemany(
            "INSERT INTO ledger_postings (tx_id, n, account, amount) VALUES (?, ?, ?, ?)",
            [(tx.id, n, p.account, p.amount) for n, p in enumerate(tx.postings)],
        )
        w.conn.executemany(
            "INSERT INTO ledger_accounts (name, kind, opened_ms, balance) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET balance = balance + excluded.balance",
            [(p.account, account_kind(p.account), tx.ts_ms, p.amount) for p in tx.postings],
        )

    # -- reading -----------------------------------------------------------------------------

    def _by_key(self, key: str) -> Transaction | None:
        row = self._conn.execute("SELECT canonical FROM ledger_transactions WHERE key = ?", (key,)).fetchone()
        return None if row is None else Transaction.from_canonical(row[0])

    def by_key(self, key: str) -> Transaction | None:
        with self._lock:
            return self._by_key(key)

    def transaction(self, tx_id: int) -> Transaction | None:
        with self._lock:
            row = self._conn.execute("SELECT canonical FROM ledger_transactions WHERE id = ?", (tx_id,)).fetchone()
        return None if row is None else Transaction.from_canonical(row[0])

    def entries(self, after: int = 0, limit: int = 1000) -> list[Entry]:
        """Up to `limit` stored transactions with id > `after`, in order: the Merkle log's leaves."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, canonical, tx_hash, chain_hash FROM ledger_transactions WHERE id > ? ORDER BY id LIMIT ?",
                (after, limit),
            ).fetchall()
        return [Entry(r[0], bytes(r[1]), bytes.fromhex(r[2]), bytes.fromhex(r[3])) for r in rows]

    def transactions(self, after: int = 0, limit: int = 1000) -> list[Transaction]:
        return [e.transaction for e in self.entries(after, limit)]

    def of_account(self, account: str, *, after: int = 0, limit: int = 1000) -> list[Transaction]:
        """Transactions that post to `account`, in order (a member's statement)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT t.canonical FROM ledger_postings p JOIN ledger_transactions t ON t.id = p.tx_id "
                "WHERE p.account = ? AND p.tx_id > ? ORDER BY p.tx_id LIMIT ?",
                (account, after, limit),
            ).fetchall()
        return [Transaction.from_canonical(r[0]) for r in rows]

    def size(self) -> int:
        with self._lock:
            value: int | None = self._conn.execute("SELECT max(id) FROM ledger_transactions").fetchone()[0]
        return value or 0

    def balance(self, account: str) -> int:
        """An account's balance in mcr, summed from its postings."""
        with self._lock:
            row = self._conn.execute(
                "SELECT coalesce(sum(amount), 0) FROM ledger_postings WHERE account = ?", (account,)
            ).fetchone()
        return int(row[0])

    def running_balance(self, account: str) -> int:
        """The balance kept up to date with every posting (instant; `checks` proves it equals `balance`)."""
        with self._lock:
            row = self._conn.execute("SELECT balance FROM ledger_accounts WHERE name = ?", (account,)).fetchone()
        return 0 if row is None else int(row[0])

    def balances(self) -> dict[str, int]:
        with self._lock:
            rows = self._conn.execute("SELECT name, balance FROM ledger_accounts ORDER BY name").fetchall()
        return {name: int(balance) for name, balance in rows}

    def can_start_session(self, member: str) -> bool:
        """The access decision's `credit_ok`: the balance is above minus the member's credit limit.

        Only new sessions are refused; a running session is never cut, so a balance may end
        below the limit after the charge of a long session.
        """
        return self.running_balance(member_account(member)) > -self.policy.credit_limit_mcr(member)

    # -- charges -----------------------------------------------------------------------------

    def charge_session(
        self,
        session_id: str,
        member: str,
        machine: str,
        *,
        busy_s: int,
        idle_s: int,
        mwh_by_source: Mapping[str, int],
        co2_mg: int = 0,
    ) -> Transaction:
        """Charge a finished session (key `charge:<session_id>`); again for the same session returns the first."""
        key = f"charge:{session_id}"
        with self._write(GATEWAY) as w:
            existing = self._by_key(key)
            if existing is not None:
                return existing
            bill = charge_for_session(self.policy, machine, busy_s, idle_s, mwh_by_source)
            detail = {"session": session_id, "member": member, "co2_mg": _whole(co2_mg, "co2_mg"), **bill.document()}
            return self._post(w, "charge", key, bill.postings(member), memo=f"session {session_id}", detail=detail)

    # -- allowances --------------------------------------------------------------------------

    def issue_allowances(self, month: str, members: Iterable[str]) -> list[Transaction]:
        """Expire what the policy says has expired, then issue `month`'s allowance to each member.

        Idempotent per member and month: run it as often as the scheduler likes. Months are
        issued in order: a month older than one a member already received is refused
        (LedgerError), since expiries were already decided without it.
        """
        amount = mcr(self.policy.allowance.amount)
        out: list[Transaction] = []
        with self._write(GATEWAY) as w:
            for member in members:
                if amount:
                    out.extend(self._issue(w, month, member, amount))
        return out

    def _issue(self, w: _Write, month: str, member: str, amount: int) -> list[Transaction]:
        key = f"allowance:{member}:{month}"
        existing = self._by_key(key)
        if existing is not None:
            after = self.policy.allowance.expire_after_months
            expiry = None if after is None else self._by_key(f"allowance_expiry:{member}:{add_months(month, -after)}")
            return [existing] if expiry is None else [expiry, existing]
        latest = w.conn.execute(
            "SELECT max(substr(key, -7)) FROM ledger_transactions WHERE kind = 'allowance' AND key GLOB ?",
            (f"allowance:{member}:*",),
        ).fetchone()[0]
        if latest is not None and latest > month:
            raise LedgerError(f"allowance {month} for {member!r}: {latest} was already issued; months go in order")
        postings = (Posting(ISSUANCE, -amount), Posting(member_account(member), amount))
        detail = {"member": member, "month": month}
        return [
            *self._expire(w, month, member),
            self._post(w, "allowance", key, postings, memo=f"allowance {month}", detail=detail),
        ]

    def _expire(self, w: _Write, month: str, member: str) -> list[Transaction]:
        after = self.policy.allowance.expire_after_months
        if after is None:
            return []
        expired = add_months(month, -after)
        if self._by_key(f"allowance:{member}:{expired}") is None:
            return []
        unused = unused_allowances(self._member_moves(member)).get(expired, 0)
        postings = (Posting(member_account(member), -unused), Posting(ISSUANCE, unused)) if unused else ()
        detail = {"member": member, "month": expired, "unused_mcr": unused}
        key = f"allowance_expiry:{member}:{expired}"
        return [self._post(w, "allowance_expiry", key, postings, memo=f"unused allowance of {expired}", detail=detail)]

    def _member_moves(self, member: str) -> list[MemberMove]:
        rows = self._conn.execute(
            "SELECT t.kind, t.key, p.amount, r.kind, r.key FROM ledger_postings p "
            "JOIN ledger_transactions t ON t.id = p.tx_id LEFT JOIN ledger_transactions r ON r.id = t.reverses "
            "WHERE p.account = ? ORDER BY p.tx_id",
            (member_account(member),),
        ).fetchall()
        moves = []
        for kind, key, amount, r_kind, r_key in rows:
            if kind == "reversal" and r_kind in ("allowance", "allowance_expiry"):
                kind, key = r_kind, r_key
            month = key[-7:] if kind in ("allowance", "allowance_expiry") else None
            moves.append(MemberMove(int(amount), month))
        return moves

    # -- contributions -----------------------------------------------------------------------

    def grant_contribution(self, member: str, amount: int, category: str, note: str, *, by: str) -> Contribution:
        """Credit a member for a contribution (mcr). Above the policy's threshold it waits for a second operator."""
        if not isinstance(amount, int) or amount <= 0:
            raise LedgerError(f"a contribution is a positive integer of mcr, not {amount!r}")
        if not category.strip() or not by.strip():
            raise LedgerError("a contribution needs a category and the operator who grants it")
        if account_kind(member_account(member)) != "member":
            raise LedgerError(f"{member!r} is not a member id")
        with self._write(by) as w:
            cur = w.conn.execute(
                "INSERT INTO ledger_contributions (member, amount, category, note, requested_by, requested_ms, status) "
                "VALUES (?, ?, ?, ?, ?, ?, 'pending')",
                (member, amount, category.strip(), note, by, w.ts_ms),
            )
            cid = int(cur.lastrowid or 0)
            w.event("contribution.request", {"id": cid, "member": member, "amount_mcr": amount, "category": category})
            if amount <= mcr(self.policy.contribution_approval_above):
                self._post_contribution(w, cid, None)
        return self.contribution(cid)

    def approve_contribution(self, cid: int, *, by: str) -> Contribution:
        """A second operator (not the one who granted it) approves a pending contribution: it is posted."""
        with self._write(by) as w:
            c = self.contribution(cid)
            if c.status == "posted":
                return c
            if c.status != "pending":
                raise LedgerError(f"contribution {cid} is {c.status}")
            if by.strip() == c.requested_by or not by.strip():
                raise LedgerError(f"contribution {cid} must be approved by another operator than {c.requested_by!r}")
            self._post_contribution(w, cid, by.strip())
        return self.contribution(cid)

    def reject_contribution(self, cid: int, *, by: str, reason: str = "") -> Contribution:
        with self._write(by) as w:
            c = self.contribution(cid)
            if c.status != "pending":
                raise LedgerError(f"contribution {cid} is {c.status}, not pending")
            w.conn.execute(
                "UPDATE ledger_contributions SET status = 'rejected', decided_by = ?, decided_ms = ? WHERE id = ?",
                (by, w.ts_ms, cid),
            )
            w.event("contribution.reject", {"id": cid, "reason": reason})
        return self.contribution(cid)

    def _post_contribution(self, w: _Write, cid: int, approved_by: str | None) -> Transaction:
        c = self.contribution(cid)
        postings = (Posting(CONTRIBUTIONS, -c.amount), Posting(member_account(c.member), c.amount))
        detail = {
            "contribution": cid,
            "member": c.member,
            "category": c.category,
            "by": c.requested_by,
            "approved_by": approved_by,
        }
        tx = self._post(w, "contribution", f"contribution:{cid}", postings, memo=c.note, detail=detail)
        w.conn.execute(
            "UPDATE ledger_contributions SET status = 'posted', decided_by = ?, decided_ms = ?, tx_id = ? WHERE id = ?",
            (approved_by, w.ts_ms, tx.id, cid),
        )
        return tx

    def contribution(self, cid: int) -> Contribution:
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_CONTRIBUTION_COLS} FROM ledger_contributions WHERE id = ?", (cid,)
            ).fetchone()
        if row is None:
            raise LedgerError(f"no contribution {cid}")
        return Contribution(*row)

    def contributions(self, *, status: str | None = None) -> list[Contribution]:
        sql = f"SELECT {_CONTRIBUTION_COLS} FROM ledger_contributions"
        with self._lock:
            rows = (
                self._conn.execute(sql + " ORDER BY id").fetchall()
                if status is None
                else self._conn.execute(sql + " WHERE status = ? ORDER BY id", (status,)).fetchall()
            )
        return [Contribution(*r) for r in rows]

    # -- corrections -------------------------------------------------------------------------

    def reverse(self, tx_id: int, *, by: str, memo: str = "") -> Transaction:
        """Undo a transaction by posting its negation (key `reversal:<id>`); once per transaction."""
        with self._write(by) as w:
            original = self.transaction(tx_id)
            if original is None:
                raise LedgerError(f"no transaction {tx_id}")
            if original.kind == "reversal":
                raise LedgerError(f"transaction {tx_id} is a reversal; post an adjustment instead of reversing it")
            detail = {"by": by, "original_key": original.key}
            postings = negated(original.postings)
            return self._post(w, "reversal", f"reversal:{tx_id}", postings, memo=memo, detail=detail, reverses=tx_id)

    def adjust(self, ref: str, postings: Sequence[Posting], *, by: str, memo: str) -> Transaction:
        """An operator's correction that is not a plain reversal (key `adjustment:<ref>`); postings sum to zero.

        The usual form moves credit between a member and `adjustments`.
        """
        if not memo.strip():
            raise LedgerError("an adjustment says why, in its memo")
        with self._write(by) as w:
            return self._post(w, "adjustment", f"adjustment:{ref}", postings, memo=memo, detail={"by": by})

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _whole(value: int, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise LedgerError(f"{name} = {value!r}: a non-negative integer")
    return value
