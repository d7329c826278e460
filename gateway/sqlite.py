"""Opening the gateway's SQLite database file, the same way for every store in it.

The journal, the ledger and the people store all live in one file (`[journal] path`).
Each opens its own connection, and all of them want the same settings, so that they
wait for each other instead of failing with "database is locked", and commit as fast as
WAL allows:

- `isolation_level=None`: no implicit transactions, a store says `BEGIN IMMEDIATE`
  itself (see `immediate`) so that a write never upgrades a read lock and deadlocks;
- `busy_timeout`: how long a statement waits for another connection's write;
- `synchronous = NORMAL`: in WAL mode a commit survives a crash of the process, and
  after a power cut the file is never corrupt (the last commits may be missing);
- `journal_mode = WAL` (`wal=True`, the journal does it when it creates the file; the
  mode is stored in the file, so the stores opened after it have it too).

A store that keeps its own tables beside the journal's (`open_store`) creates them and
checks their schema version in its `<name>_meta` table, refusing a file written by a
newer commonwatt.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def connect(
    path: Path,
    *,
    readonly: bool = False,
    busy_timeout: float,
    shared: bool = False,
    wal: bool = False,
    foreign_keys: bool = False,
) -> sqlite3.Connection:
    """A connection to the database file with the gateway's settings (see the module's docstring).

    `readonly` opens the file read-only (it must exist); `shared` lets other threads use
    the connection (the caller then guards it with a lock); `foreign_keys` turns on
    SQLite's foreign key checks for this connection. `busy_timeout` is in seconds.
    """
    if readonly:
        conn = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None, check_same_thread=not shared
        )
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=not shared)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        if wal:
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        if foreign_keys:
            conn.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        conn.close()
        raise
    return conn


def open_store(
    path: Path,
    *,
    name: str,
    ddl: str,
    reads: int,
    error: type[Exception],
    busy_timeout: float,
    foreign_keys: bool = False,
) -> sqlite3.Connection:
    """A connection shared between threads for the store `name`, its tables created.

    `ddl` creates the store's tables if they are missing (in one transaction) and a
    `<name>_meta` table whose `schema_version` row says which schema the file has. A
    version above `reads`, the newest this commonwatt knows, raises `error`: the file
    was written by a newer commonwatt, and this one must not touch it.
    """
    conn = connect(path, busy_timeout=busy_timeout, shared=True, foreign_keys=foreign_keys)
    try:
        conn.executescript(f"BEGIN IMMEDIATE; {ddl} COMMIT;")
        found = conn.execute(f"SELECT value FROM {name}_meta WHERE key = 'schema_version'").fetchone()[0]
        if int(found) > reads:
            raise error(f"{path}: {name} schema {found}, this commonwatt reads {reads}")
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction (`BEGIN IMMEDIATE`): committed when the block ends, rolled back if it raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
