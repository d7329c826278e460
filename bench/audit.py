"""How fast `commonwatt audit verify` is over a million ledger transactions, beside a naive recompute.

Run: .venv/bin/python bench/audit.py [--transactions N] [--checkpoints K] [--dir DIR]

Posting through `Ledger` costs one SQLite write transaction each (about 1,500 a second
here), so a million would take over ten minutes. The bench writes them in bulk the way
the store does: each `Transaction` built from real charges (`charge_for_session`) and
allowances, its canonical bytes, SHA-256 and chain hash, its postings, the running
balances and the pricing policy, with the store's triggers in place; one closed session
in the journal per charge. `audit verify` then sees a ledger it cannot tell from a real
one. The audit service's log is built with `AuditLog.sync` and K checkpoints.

Measured in the same run:
- `verify`: the Merkle log (leaf hashes, every checkpoint root, streamed, O(1) memory),
  the charges against the journal, and `check_ledger` (hashes, chain, balances, every
  charge recomputed under its policy), end to end and in parts;
- the naive recompute: every checkpoint's root by the RFC's recursive definition on list
  slices (no subtree reused, one full recursion per checkpoint), and the balances by
  parsing every transaction and summing its postings with a dict per transaction.
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from merkle import naive_root  # bench/merkle.py, beside this script: the RFC's recursive definition

from gateway.audit.log import AuditLog
from gateway.audit.merkle import leaf_hash
from gateway.audit.verify import VerifyReport, _check_log, _verifier, verify
from gateway.config import Config, parse_config
from gateway.journal import Journal
from gateway.ledger import ChargeBreakdown, Ledger, PricingPolicy, Transaction, charge_for_session, policy_hash
from gateway.ledger.model import GENESIS, ISSUANCE, Posting, account_kind, chain_next, member_account, sha256
from gateway.ledger.pricing import policy_bytes

T = TypeVar("T")
POLICY = PricingPolicy.model_validate(
    {
        "machines": {"laser": {"busy_per_hour": "6", "idle_per_hour": "1.5"}, "cnc": {"busy_per_hour": "4"}},
        "energy": {"sun": "0.1", "battery": "0.2", "grid": "0.4"},
        "minimum_charge": "0.5",
        "allowance": {"amount": "20", "day": 1},
    }
)
MEMBERS = 500
BATCH = 20_000
T0_MS = 1_700_000_000_000


def timed(label: str, n: int, fn: Callable[[], T]) -> T:
    started = time.perf_counter()
    result = fn()
    took = time.perf_counter() - started
    print(f"{label:<52} {took:7.2f} s  {n / took:>10,.0f} tx/s", flush=True)
    return result


# -- a ledger of N transactions, written in bulk --------------------------------------------


def transactions(n: int) -> Iterator[Transaction]:
    """Allowances for every member each month, charges in between: about 1 in 40 is an allowance."""
    digest = policy_hash(POLICY)
    month, tx_id = 0, 1
    while tx_id <= n:
        if (tx_id - 1) % (MEMBERS * 40) < MEMBERS:
            member = f"m{(tx_id - 1) % MEMBERS}"
            key = f"allowance:{member}:{2000 + month // 12:04d}-{month % 12 + 1:02d}"
            postings = (Posting(ISSUANCE, -20_000), Posting(member_account(member), 20_000))
            detail = {"member": member, "month": key[-7:]}
            yield Transaction(tx_id, T0_MS + tx_id, "allowance", key, "allowance", digest, postings, detail)
            month += (tx_id - 1) % (MEMBERS * 40) == MEMBERS - 1
        else:
            yield charge(tx_id, digest)
        tx_id += 1


@functools.lru_cache(maxsize=1024)
def bill_of(variant: int) -> ChargeBreakdown:
    """One of 1,000 different sessions (computing each charge anew would only time the pricing code)."""
    mwh = {"sun": 1000 * (variant % 700), "grid": 77 * (variant % 300)}
    return charge_for_session(POLICY, ("laser", "cnc")[variant % 2], 60 * (variant % 90), 30 * (variant % 7), mwh)


def charge(tx_id: int, digest: str) -> Transaction:
    member, bill = f"m{tx_id % MEMBERS}", bill_of(tx_id % 1000)
    detail = {"session": f"s{tx_id}", "member": member, "co2_mg": 0, **bill.document()}
    return Transaction(
        tx_id, T0_MS + tx_id, "charge", f"charge:s{tx_id}", f"session s{tx_id}", digest, bill.postings(member), detail
    )


def write_ledger(path: Path, n: int) -> None:
    Ledger(path, POLICY).close()  # the schema and its triggers
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(
        "INSERT INTO ledger_policies (hash, canonical, first_ms) VALUES (?, ?, ?)",
        (policy_hash(POLICY), policy_bytes(POLICY), T0_MS),
    )
    balances: dict[str, int] = {}
    chain = GENESIS
    batch: list[Transaction] = []
    for tx in transactions(n):
        batch.append(tx)
        if len(batch) == BATCH:
            chain = write_batch(conn, path, batch, chain, balances)
            batch = []
    chain = write_batch(conn, path, batch, chain, balances)
    conn.executemany(
        "INSERT INTO ledger_accounts (name, kind, opened_ms, balance) VALUES (?, ?, ?, ?)",
        [(name, account_kind(name), T0_MS, amount) for name, amount in balances.items()],
    )
    conn.close()


def fast_canonical(tx: Transaction) -> bytes:
    """`tx.canonical()` without its float scan (the bench makes none); checked equal on every 997th."""
    data = json.dumps(tx.document(), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    if tx.id % 997 == 0:
        assert data == tx.canonical()
    return data


def write_batch(
    conn: sqlite3.Connection, path: Path, batch: list[Transaction], chain: bytes, balances: dict[str, int]
) -> bytes:
    rows, postings, sessions = [], [], []
    for tx in batch:
        canonical = fast_canonical(tx)
        chain = chain_next(chain, canonical)
        rows.append((tx.id, tx.ts_ms, tx.kind, tx.key, None, canonical, sha256(canonical).hex(), chain.hex()))
        for n, p in enumerate(tx.postings):
            postings.append((tx.id, n, p.account, p.amount))
            balances[p.account] = balances.get(p.account, 0) + p.amount
        if tx.kind == "charge":
            event = {"kind": "session_closed", "session_id": tx.detail["session"], "member_id": tx.detail["member"]}
            event["machine_id"] = tx.detail["machine"]
            sessions.append((tx.ts_ms / 1000, event["machine_id"], "event.session_closed", None, json.dumps(event)))
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO ledger_transactions VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    conn.executemany("INSERT INTO ledger_postings VALUES (?, ?, ?, ?)", postings)
    conn.execute("COMMIT")
    if sessions:
        with Journal(path) as journal:
            journal.append_rows(sessions)
    return chain


def build_log(config: Config, n: int, checkpoints: int) -> None:
    """Sync in steps so the checkpoints fall at several sizes, as the service's rounds would."""
    with AuditLog.for_config(config) as log:
        while log.sync(limit=max(1, n // checkpoints)):
            log.checkpoint(time.time())


def merkle_part(config: Config) -> None:
    """The part of `verify` that rebuilds the tree and compares it with the log and every checkpoint."""
    report = VerifyReport()
    conn = sqlite3.connect(config.journal.path)
    try:
        _check_log(conn, _verifier(config), report)
    finally:
        conn.close()
    assert report.ok and report.roots_equal == report.checkpoints, report.lines()


# -- the naive recompute --------------------------------------------------------------------


def naive_verify(path: Path) -> bool:
    """Every checkpoint root from scratch, and every balance from the postings, one dict per transaction."""
    conn = sqlite3.connect(path)
    canonicals = [bytes(r[0]) for r in conn.execute("SELECT canonical FROM ledger_transactions ORDER BY id")]
    sizes_roots = [
        (size, note.split("\n")[2]) for size, note in conn.execute("SELECT size, signed_note FROM audit_checkpoints")
    ]
    stored = dict(conn.execute("SELECT name, balance FROM ledger_accounts").fetchall())
    conn.close()
    leaves = [leaf_hash(c) for c in canonicals]
    ok = all(naive_root(leaves[:size]) == base64.b64decode(root) for size, root in sizes_roots)
    totals: dict[str, int] = {}
    for c in canonicals:
        per_tx: dict[str, int] = {}
        for account, amount in json.loads(c)["postings"]:
            per_tx[account] = per_tx.get(account, 0) + amount
        for account, amount in per_tx.items():
            totals[account] = totals.get(account, 0) + amount
    return ok and totals == stored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--transactions", type=int, default=1_000_000)
    parser.add_argument("--checkpoints", type=int, default=10)
    parser.add_argument("--dir", type=Path, default=None, help="where to write the database (default: a temp dir)")
    args = parser.parse_args()
    n = args.transactions
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "commonwatt.sqlite"
        config = parse_config({"site": {"id": "bench"}, "journal": {"path": str(path)}})
        config = config.model_copy(update={"pricing": POLICY})
        print(f"{n:,} transactions, {args.checkpoints} checkpoints, {path.parent}")
        timed("write the ledger in bulk (as the store does)", n, lambda: write_ledger(path, n))
        timed("AuditLog.sync + checkpoints", n, lambda: build_log(config, n, args.checkpoints))
        print(f"database: {path.stat().st_size / 1e6:,.0f} MB")
        timed("verify: the Merkle log alone (leaves, roots)", n, lambda: merkle_part(config))
        assert timed("naive: recursive roots, balances by dict", n, lambda: naive_verify(path))
        report = timed("audit verify (log, sessions, check_ledger)", n, lambda: verify(config))
        assert report.ok, report.lines()[-5:]


if __name__ == "__main__":
    main()
