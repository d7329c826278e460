"""The ledger's tables, in the gateway's database file next to the journal.

- `ledger_transactions`: one row per transaction. `canonical` (the exact bytes that are
  hashed) is the source of truth; `ts_ms`, `kind`, `key` and `reverses` are copies for
  queries, and `checks` verifies that they agree. `tx_hash` = SHA-256(canonical),
  `chain_hash` = SHA-256(previous chain_hash || tx_hash), hex.
- `ledger_postings`: the postings of each transaction, for balance queries (also a copy).
- `ledger_accounts`: every account ever posted to, with its running balance, updated in the
  same SQLite transaction as the postings (the only ledger table that changes in place).
- `ledger_policies`: every pricing policy a transaction was made under, by hash, so an
  auditor can recompute any charge under the policy of its day.
- `ledger_contributions`: contributions granted by operators; a pending one (waiting for a
  second operator) is not a posting yet.

Transactions and postings are append-only: triggers refuse UPDATE and DELETE, and a
transaction id other than the next one. Corrections are reversal transactions.
"""

from __future__ import annotations

LEDGER_SCHEMA_VERSION = 1

#: Journal rows of ledger changes: device `ledger`, metric `event.ledger`, JSON in `text`.
EVENT_DEVICE = "ledger"
EVENT_METRIC = "event.ledger"

DDL = """
CREATE TABLE IF NOT EXISTS ledger_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger_transactions (
    id INTEGER PRIMARY KEY,
    ts_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL UNIQUE,
    reverses INTEGER UNIQUE,
    canonical BLOB NOT NULL,
    tx_hash TEXT NOT NULL,
    chain_hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger_postings (
    tx_id INTEGER NOT NULL,
    n INTEGER NOT NULL,
    account TEXT NOT NULL,
    amount INTEGER NOT NULL,
    PRIMARY KEY (tx_id, n)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ledger_postings_account ON ledger_postings (account, tx_id);
CREATE TABLE IF NOT EXISTS ledger_accounts (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    opened_ms INTEGER NOT NULL,
    balance INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger_policies (
    hash TEXT PRIMARY KEY,
    canonical BLOB NOT NULL,
    first_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger_contributions (
    id INTEGER PRIMARY KEY,
    member TEXT NOT NULL,
    amount INTEGER NOT NULL CHECK (amount > 0),
    category TEXT NOT NULL,
    note TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    requested_ms INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'posted', 'rejected')),
    decided_by TEXT,
    decided_ms INTEGER,
    tx_id INTEGER
);
CREATE TRIGGER IF NOT EXISTS ledger_transactions_no_update BEFORE UPDATE ON ledger_transactions
BEGIN
    SELECT RAISE(ABORT, 'ledger transactions are append-only: post a reversal instead');
END;
CREATE TRIGGER IF NOT EXISTS ledger_transactions_no_delete BEFORE DELETE ON ledger_transactions
BEGIN
    SELECT RAISE(ABORT, 'ledger transactions are append-only: post a reversal instead');
END;
CREATE TRIGGER IF NOT EXISTS ledger_transactions_next_id BEFORE INSERT ON ledger_transactions
WHEN NEW.id IS NOT (SELECT coalesce(max(id), 0) + 1 FROM ledger_transactions)
BEGIN
    SELECT RAISE(ABORT, 'ledger transactions are numbered 1, 2, 3... without holes');
END;
CREATE TRIGGER IF NOT EXISTS ledger_postings_no_update BEFORE UPDATE ON ledger_postings
BEGIN
    SELECT RAISE(ABORT, 'ledger postings are append-only: post a reversal instead');
END;
CREATE TRIGGER IF NOT EXISTS ledger_postings_no_delete BEFORE DELETE ON ledger_postings
BEGIN
    SELECT RAISE(ABORT, 'ledger postings are append-only: post a reversal instead');
END;
CREATE TRIGGER IF NOT EXISTS ledger_contributions_decided BEFORE UPDATE ON ledger_contributions
WHEN OLD.status <> 'pending'
BEGIN
    SELECT RAISE(ABORT, 'a decided contribution never changes: post a reversal instead');
END;
INSERT OR IGNORE INTO ledger_meta (key, value) VALUES ('schema_version', '1');
"""
