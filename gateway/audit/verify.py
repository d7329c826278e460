"""`commonwatt audit verify`: everything the ledger and its audit log claim, recomputed from the stored bytes.

Three independent checks, each problem named by transaction where there is one:

1. **The Merkle log.** Every ledger transaction's leaf hash is recomputed from its
   canonical bytes and compared with the leaf hash logged when it appeared: a changed
   byte names that transaction; a transaction deleted or moved names the one missing at
   the first index where the ledger departs from the log. The tree is rebuilt from the
   ledger's bytes and its root at every checkpoint's size compared with the signed root,
   whose signature is checked too: a forger who rewrote the ledger *and* the logged
   hashes still cannot sign a new root without the key.
2. **The ledger's invariants** (`gateway.ledger.checks.check_ledger`): balanced
   transactions, hashes and chain, balances equal to the sums of postings, and every
   charge recomputed under the pricing policy recorded with it.
3. **Charges against the journal.** Every charge names a session the journal closed (an
   `event.session_closed` row) for the same member and machine, and no session is
   charged twice. Closed sessions without a charge are counted, not errors: a lab may run
   without prices, and a charge may still be pending.

Everything is read through a read-only connection, streaming, so a million transactions
take constant memory.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.audit.checkpoints import Checkpoint, CheckpointError, Signer, Verifier, load_or_create_key
from gateway.audit.log import as_bytes, key_path_of, origin_of
from gateway.audit.merkle import LogTree, leaf_hash
from gateway.ledger.checks import CheckReport, Problem, check_ledger

if TYPE_CHECKING:
    from gateway.config import Config

SESSION_CLOSED = "event.session_closed"
_FETCH = 10_000


@dataclass(slots=True)
class VerifyReport:
    """What `verify` found: counts, and every problem (the ledger's own checks included)."""

    transactions: int = 0
    leaves: int = 0
    checkpoints: int = 0
    roots_equal: int = 0
    sessions_closed: int = 0
    charges: int = 0
    problems: list[Problem] = field(default_factory=list)
    ledger: CheckReport = field(default_factory=CheckReport)

    @property
    def all_problems(self) -> list[Problem]:
        return [*self.problems, *self.ledger.problems]

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.all_problems)

    def errors_by_tx(self) -> set[int]:
        return {p.tx for p in self.all_problems if p.severity == "error" and p.tx is not None}

    def lines(self) -> list[str]:
        errors = sum(p.severity == "error" for p in self.all_problems)
        head = [
            f"transactions  {self.transactions} in the ledger, {self.leaves} in the audit log",
            f"checkpoints   {self.checkpoints} stored, {self.roots_equal} agree with the root of the ledger rebuilt",
            f"accounts      {self.ledger.accounts}, every balance recomputed from the postings",
            f"sessions      {self.sessions_closed} closed in the journal, {self.charges} charges",
        ]
        verdict = "ok: nothing differs" if self.ok else f"FAIL: {errors} mismatch(es)"
        return [*head, *(str(p) for p in self.all_problems), verdict]


def verify(config: Config) -> VerifyReport:
    """Verify the ledger and audit log of the gateway configured by `config` (read-only)."""
    path = config.journal.path
    verifier = _verifier(config)
    report = VerifyReport()
    conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    try:
        _check_log(conn, verifier, report)
        _check_sessions(conn, report)
    finally:
        conn.close()
    try:
        report.ledger = check_ledger(path, policy=config.pricing)
    except (TypeError, ValueError, UnicodeError) as exc:  # a column of the wrong type, stored behind its back
        report.problems.append(Problem("ledger", f"the ledger's checks could not read the file: {exc!r}"))
    return report


def _verifier(config: Config) -> Verifier | None:
    """The log's public key from the key file; None when the gateway never signed (no file yet)."""
    key_path = key_path_of(config)
    if not key_path.exists():
        return None
    return Signer(load_or_create_key(key_path), origin_of(config)).verifier


# -- the Merkle log -------------------------------------------------------------------------


@dataclass(slots=True)
class _Walk:
    """The ledger's transactions and the logged leaves walked side by side, both in order."""

    report: VerifyReport
    logged: Iterator[tuple[int, int, bytes]]
    tree: LogTree = field(default_factory=LogTree)
    current: tuple[int, int, bytes] | None = None
    departed: bool = False

    def problem(self, check: str, message: str, tx: int | None = None) -> None:
        self.report.problems.append(Problem(check, message, tx))

    def advance(self) -> None:
        self.current = next(self.logged, None)
        if self.current is not None:
            self.report.leaves += 1

    def departs(self, index: int) -> str:
        """Said once, at the first index where the ledger's sequence leaves the logged one."""
        if self.departed:
            return ""
        self.departed = True
        return f"; the ledger departs from the log at leaf {index}"


def _check_log(conn: sqlite3.Connection, verifier: Verifier | None, report: VerifyReport) -> None:
    if not _has_table(conn, "audit_leaves") or not _has_table(conn, "ledger_transactions"):
        return
    checkpoints = _checkpoints(conn, verifier, report)
    walk = _Walk(report, _rows(conn, "SELECT idx, tx_id, leaf_hash FROM audit_leaves ORDER BY idx"))
    walk.advance()
    pending = sorted(checkpoints)
    for tx_id, canonical in _rows(conn, "SELECT id, canonical FROM ledger_transactions ORDER BY id"):
        h = leaf_hash(as_bytes(canonical))
        _compare(walk, walk.tree.size, int(tx_id), h)
        walk.tree.append(h)
        while pending and pending[0] == walk.tree.size:
            _compare_root(walk, checkpoints[pending.pop(0)])
        report.transactions += 1
    while walk.current is not None:
        _missing(walk, walk.tree.size)
    for size in pending:
        walk.problem("checkpoint", f"a checkpoint signs {size} transactions; the ledger holds {walk.tree.size}")


def _compare(walk: _Walk, index: int, tx_id: int, h: bytes) -> None:
    """Transaction `tx_id`, at position `index` of the ledger, against the log (merged by transaction id)."""
    while walk.current is not None and walk.current[1] < tx_id:
        _missing(walk, index)
    if walk.current is None:
        return  # not logged yet: the audit service's next round adds it
    logged_idx, logged_tx, logged_hash = walk.current
    if logged_tx != tx_id:
        walk.problem("log", f"in the ledger but not in the log (inserted?){walk.departs(index)}", tx_id)
        return
    where = walk.departs(index) if logged_idx != index else ""
    if as_bytes(logged_hash) != h:
        walk.problem("log", f"its bytes differ from those logged as leaf {logged_idx}: changed{where}", tx_id)
    elif where:
        walk.problem("log", f"logged as leaf {logged_idx}, found at {index}{where}", tx_id)
    walk.advance()


def _missing(walk: _Walk, index: int) -> None:
    assert walk.current is not None
    logged_idx, logged_tx, _ = walk.current
    where = walk.departs(index) if logged_idx >= index else ""
    walk.problem("log", f"logged as leaf {logged_idx} but missing from the ledger (deleted or moved){where}", logged_tx)
    walk.advance()


def _compare_root(walk: _Walk, checkpoint: Checkpoint) -> None:
    if walk.tree.root() == checkpoint.root:
        walk.report.roots_equal += 1
    else:
        walk.problem(
            "checkpoint",
            f"the signed root of size {checkpoint.size} ({checkpoint.time_text}) differs from the tree of the "
            "ledger's transactions: one of them was changed, removed or moved",
        )


def _checkpoints(conn: sqlite3.Connection, verifier: Verifier | None, report: VerifyReport) -> dict[int, Checkpoint]:
    """Stored checkpoints by size, each signature checked; problems for the ones that fail."""
    out: dict[int, Checkpoint] = {}
    for size, note in conn.execute("SELECT size, signed_note FROM audit_checkpoints ORDER BY size"):
        report.checkpoints += 1
        if verifier is None:
            report.problems.append(Problem("checkpoint", f"checkpoint of size {size} but no audit key to check it"))
            continue
        try:
            cp = verifier.verify(note)
        except CheckpointError as exc:
            report.problems.append(Problem("checkpoint", f"checkpoint of size {size}: {exc}"))
            continue
        if cp.size != size:
            report.problems.append(Problem("checkpoint", f"stored as size {size}, the signed text says {cp.size}"))
            continue
        out[size] = cp
    return out


# -- charges against the journal ------------------------------------------------------------


def _check_sessions(conn: sqlite3.Connection, report: VerifyReport) -> None:
    if not _has_table(conn, "records") or not _has_table(conn, "ledger_transactions"):
        return
    sessions: dict[str, dict[str, Any]] = {}
    for (text,) in _rows(conn, "SELECT text FROM records WHERE metric = ? ORDER BY seq", (SESSION_CLOSED,)):
        event = _json(text)
        if isinstance(event.get("session_id"), str):
            sessions.setdefault(event["session_id"], event)
    report.sessions_closed = len(sessions)
    charged: dict[str, int] = {}
    for tx_id, canonical in _rows(conn, "SELECT id, canonical FROM ledger_transactions WHERE kind = 'charge'"):
        report.charges += 1
        _check_charge(report, sessions, charged, int(tx_id), _json(as_bytes(canonical)).get("detail", {}))


def _check_charge(
    report: VerifyReport, sessions: dict[str, dict[str, Any]], charged: dict[str, int], tx_id: int, detail: Any
) -> None:
    session = detail.get("session") if isinstance(detail, dict) else None
    if not isinstance(session, str):
        report.problems.append(Problem("sessions", "a charge that names no session", tx_id))
        return
    if session in charged:
        report.problems.append(Problem("sessions", f"session {session} already charged by {charged[session]}", tx_id))
    charged.setdefault(session, tx_id)
    closed = sessions.get(session)
    if closed is None:
        report.problems.append(Problem("sessions", f"charges session {session}, which the journal never closed", tx_id))
    elif (closed.get("member_id"), closed.get("machine_id")) != (detail.get("member"), detail.get("machine")):
        report.problems.append(
            Problem("sessions", f"member or machine differ from session {session} as the journal closed it", tx_id)
        )


# -- reading --------------------------------------------------------------------------------


def _rows(conn: sqlite3.Connection, sql: str, args: tuple[Any, ...] = ()) -> Iterator[Any]:
    """Rows of a query, fetched in large batches on a cursor of their own."""
    cur = conn.cursor()
    cur.execute(sql, args)
    while batch := cur.fetchmany(_FETCH):
        yield from batch


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
    return row is not None


def _json(raw: str | bytes | None) -> dict[str, Any]:
    try:
        value = json.loads(raw) if raw is not None else None
    except (ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def run(config: Config) -> tuple[int, list[str]]:
    """What `commonwatt audit verify` does: (exit status, lines to print); 1 on any mismatch."""
    report = verify(config)
    return (0 if report.ok else 1), report.lines()
