"""The people tables, in the gateway's database file next to the journal.

These tables hold the *current* state (who is a member, which badge is whose, who holds
which training, which API tokens exist). They change in place; the history of every
change is in the journal, as `event.people` rows written in the same transaction, so an
auditor can replay who changed what, when, and by whose hand.

`people_meta.version` is bumped by every change: a long-running gateway compares it to
the version of its in-memory snapshot to notice changes made by `commonwatt` commands
in another process.
"""

from __future__ import annotations

PEOPLE_SCHEMA_VERSION = 1

#: Journal rows of people changes: device `people`, metric `event.people`, JSON in `text`.
EVENT_DEVICE = "people"
EVENT_METRIC = "event.people"

DDL = """
CREATE TABLE IF NOT EXISTS people_meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS members (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('active', 'inactive')),
    roles TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS badges (
    uid TEXT PRIMARY KEY,
    member_id TEXT NOT NULL REFERENCES members (id),
    status TEXT NOT NULL CHECK (status IN ('active', 'lost', 'revoked')),
    assigned_at REAL NOT NULL,
    changed_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS badges_member ON badges (member_id);
CREATE TABLE IF NOT EXISTS trainings (
    member_id TEXT NOT NULL REFERENCES members (id),
    training TEXT NOT NULL,
    granted_by TEXT NOT NULL,
    granted_at REAL NOT NULL,
    expires_at REAL,
    revoked_at REAL,
    PRIMARY KEY (member_id, training)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    member_id TEXT REFERENCES members (id),
    created REAL NOT NULL,
    revoked_at REAL,
    last_used REAL
);
INSERT OR IGNORE INTO people_meta (key, value) VALUES ('schema_version', 1), ('version', 0);
"""
