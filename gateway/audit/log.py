"""`AuditLog`: the ledger's Merkle log, kept in the gateway's database file.

The ledger stores each transaction's canonical bytes; this log records, in order, the
leaf hash of every transaction as it appears (`audit_leaves`) and the checkpoints the
gateway signed over them (`audit_checkpoints`). The leaf hashes are a second, independent
record: `commonwatt audit verify` recomputes them from the ledger's bytes, so a
transaction changed, deleted or moved after it was logged is named by id, and the signed
roots catch a rewrite even of both tables.

The signing key lives next to the database, `<journal dir>/audit-key.pem` (mode 0600,
created on first use). Whoever holds it can sign a rewritten history, so it is backed up
with the database but never published; its public half, the verifier key, is what the
lab publishes (notice board, website) for members to check proofs against.

One connection per log, guarded by a lock: the audit service and the API's request
threads share it.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from gateway.audit.checkpoints import Checkpoint, Signer, Verifier, at_second, load_or_create_key
from gateway.audit.merkle import AuditError, TreeView, leaf_hash
from gateway.audit.proofs import consistency_bundle, inclusion_bundle
from gateway.ledger.schema import DDL as LEDGER_DDL

if TYPE_CHECKING:
    from gateway.config import Config

KEY_FILE = "audit-key.pem"
#: Ledger transactions read per query while syncing.
SYNC_BATCH = 5000

AUDIT_DDL = """
CREATE TABLE IF NOT EXISTS audit_leaves (
    idx INTEGER PRIMARY KEY,
    tx_id INTEGER NOT NULL UNIQUE,
    leaf_hash BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    size INTEGER PRIMARY KEY,
    signed_note TEXT NOT NULL,
    ts REAL NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_leaves_no_update BEFORE UPDATE ON audit_leaves
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
CREATE TRIGGER IF NOT EXISTS audit_leaves_no_delete BEFORE DELETE ON audit_leaves
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
CREATE TRIGGER IF NOT EXISTS audit_checkpoints_no_change BEFORE UPDATE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'a signed checkpoint never changes');
END;
"""


class NotFound(AuditError):
    """No such transaction or checkpoint in the log (yet)."""


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    """A checkpoint as stored: the signed text and what it says."""

    signed_note: str
    checkpoint: Checkpoint

    def as_json(self) -> dict[str, Any]:
        cp = self.checkpoint
        return {"size": cp.size, "root": cp.root.hex(), "time": cp.time_text, "checkpoint": self.signed_note}


def origin_of(config: Config) -> str:
    """The log's name: `commonwatt/<site>`."""
    return f"commonwatt/{config.site.id}"


def key_path_of(config: Config) -> Path:
    return config.journal.path.parent / KEY_FILE


def as_bytes(value: bytes | str) -> bytes:
    """A BLOB column as bytes, also when someone stored it as TEXT behind the ledger's back."""
    return value.encode("utf-8", "surrogateescape") if isinstance(value, str) else bytes(value)


class _StoredLeaves(Sequence[bytes]):
    """The stored leaf hashes as a read-only sequence for `TreeView`, read in slices on demand."""

    def __init__(self, log: AuditLog) -> None:
        self._log = log

    def __len__(self) -> int:
        return self._log.size

    @overload
    def __getitem__(self, i: int) -> bytes: ...
    @overload
    def __getitem__(self, i: slice) -> list[bytes]: ...
    def __getitem__(self, i: int | slice) -> bytes | list[bytes]:
        if isinstance(i, slice):
            start, stop, _ = i.indices(len(self))
            return self._log.leaf_hashes(start, stop)
        hashes = self._log.leaf_hashes(i, i + 1)
        if not hashes:
            raise IndexError(i)
        return hashes[0]


class AuditLog:
    """The Merkle log of the ledger in one database file."""

    def __init__(self, path: str | Path, *, origin: str, key_path: Path, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.signer = Signer(load_or_create_key(key_path), origin)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            self._conn.executescript(f"BEGIN IMMEDIATE; {LEDGER_DDL} {AUDIT_DDL} COMMIT;")
        except BaseException:
            self._conn.close()
            raise
        self.view = TreeView(_StoredLeaves(self))

    @classmethod
    def for_config(cls, config: Config) -> AuditLog:
        return cls(config.journal.path, origin=origin_of(config), key_path=key_path_of(config))

    @property
    def size(self) -> int:
        """Leaves in the log (read each time: another process's log on this file may have grown it)."""
        with self._lock:
            value: int = self._conn.execute("SELECT coalesce(max(idx) + 1, 0) FROM audit_leaves").fetchone()[0]
        return value

    @property
    def verifier(self) -> Verifier:
        return self.signer.verifier

    # -- growing and signing -----------------------------------------------------------------

    def sync(self, limit: int | None = None) -> int:
        """Append the leaves of the ledger transactions not logged yet (at most `limit`); returns how many."""
        added = 0
        with self._lock:
            while limit is None or added < limit:
                batch = self._sync_batch(SYNC_BATCH if limit is None else min(SYNC_BATCH, limit - added))
                if not batch:
                    break
                added += batch
        return added

    def _sync_batch(self, most: int) -> int:
        """Log up to `most` new transactions in one write transaction; how many."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            size, last = conn.execute(
                "SELECT coalesce(max(idx) + 1, 0), coalesce(max(tx_id), 0) FROM audit_leaves"
            ).fetchone()
            batch = conn.execute(
                "SELECT id, canonical FROM ledger_transactions WHERE id > ? ORDER BY id LIMIT ?", (last, most)
            ).fetchall()
            rows = [(size + n, tx_id, leaf_hash(as_bytes(canonical))) for n, (tx_id, canonical) in enumerate(batch)]
            conn.executemany("INSERT INTO audit_leaves (idx, tx_id, leaf_hash) VALUES (?, ?, ?)", rows)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return len(rows)

    def checkpoint(self, now: float) -> StoredCheckpoint | None:
        """Sign and store a checkpoint of the log as it is, if it grew since the last one."""
        with self._lock:
            latest = self.latest()
            size = self.size
            if size == 0 or (latest is not None and latest.checkpoint.size >= size):
                return None  # nothing to commit to yet, or nothing new
            when = at_second(now)
            if latest is not None and when < latest.checkpoint.time:
                when = latest.checkpoint.time  # a clock set back never dates a checkpoint before the last
            cp = Checkpoint(self.verifier.name, size, self.view.root(size), when)
            signed = self.signer.sign(cp)
            self._conn.execute(
                "INSERT INTO audit_checkpoints (size, signed_note, ts) VALUES (?, ?, ?)", (cp.size, signed, now)
            )
        return StoredCheckpoint(signed, cp)

    # -- reading -----------------------------------------------------------------------------

    def leaf_hashes(self, start: int, stop: int) -> list[bytes]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT leaf_hash FROM audit_leaves WHERE idx >= ? AND idx < ? ORDER BY idx", (start, stop)
            ).fetchall()
        return [as_bytes(r[0]) for r in rows]

    def checkpoints(self) -> list[StoredCheckpoint]:
        """Every stored checkpoint, smallest first."""
        with self._lock:
            rows = self._conn.execute("SELECT signed_note FROM audit_checkpoints ORDER BY size").fetchall()
        return [self._stored(r[0]) for r in rows]

    def latest(self) -> StoredCheckpoint | None:
        with self._lock:
            row = self._conn.execute("SELECT signed_note FROM audit_checkpoints ORDER BY size DESC LIMIT 1").fetchone()
        return None if row is None else self._stored(row[0])

    def checkpoint_of_size(self, size: int) -> StoredCheckpoint:
        with self._lock:
            row = self._conn.execute("SELECT signed_note FROM audit_checkpoints WHERE size = ?", (size,)).fetchone()
        if row is None:
            raise NotFound(f"no checkpoint of size {size}")
        return self._stored(row[0])

    def _stored(self, signed_note: str) -> StoredCheckpoint:
        return StoredCheckpoint(signed_note, self.verifier.verify(signed_note))

    def transaction(self, tx_id: int) -> tuple[int, bytes]:
        """(leaf index, canonical bytes) of a logged transaction; NotFound if it is not logged."""
        with self._lock:
            row = self._conn.execute(
                "SELECT l.idx, l.leaf_hash, t.canonical FROM audit_leaves l "
                "LEFT JOIN ledger_transactions t ON t.id = l.tx_id WHERE l.tx_id = ?",
                (tx_id,),
            ).fetchone()
        if row is None or row[2] is None:
            raise NotFound(f"transaction {tx_id} is not in the log")
        canonical = as_bytes(row[2])
        if leaf_hash(canonical) != as_bytes(row[1]):
            raise AuditError(f"transaction {tx_id} changed since it was logged: run commonwatt audit verify")
        return int(row[0]), canonical

    def accounts_of(self, tx_id: int) -> set[str]:
        """The accounts a transaction posts to (for deciding who may see its proof)."""
        with self._lock:
            rows = self._conn.execute("SELECT account FROM ledger_postings WHERE tx_id = ?", (tx_id,)).fetchall()
        return {r[0] for r in rows}

    # -- proofs ------------------------------------------------------------------------------

    def inclusion(self, tx_id: int) -> dict[str, Any]:
        """The inclusion bundle of a transaction under the latest checkpoint."""
        latest = self.latest()
        index, canonical = self.transaction(tx_id)
        if latest is None or index >= latest.checkpoint.size:
            raise NotFound(f"transaction {tx_id} is not under a signed checkpoint yet; the next one will cover it")
        with self._lock:
            return inclusion_bundle(
                self.view, index, canonical, latest.signed_note, self.verifier, label=f"transaction {tx_id}"
            )

    def consistency(self, old_size: int, new_size: int | None = None) -> dict[str, Any]:
        """The consistency bundle between two stored checkpoints (`new_size`: the latest)."""
        old = self.checkpoint_of_size(old_size)
        new = self.latest() if new_size is None else self.checkpoint_of_size(new_size)
        if new is None or new.checkpoint.size < old_size:
            raise NotFound(f"the checkpoint of size {new_size} is not later than the one of size {old_size}")
        with self._lock:
            return consistency_bundle(self.view, old.signed_note, new.signed_note, self.verifier)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
