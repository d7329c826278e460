"""The durable journal: every reading and event that entered the gateway, in order.

- `Journal`: one connection (per thread) for appending, reading and cursors;
- `GroupCommitWriter`: the ingest path's single writer, batching puts from any thread;
- `Row`: (seq, ts, device, metric, value, text) as read back; `NewRow` without the seq.

See `schema.py` for how records map to rows and README.md for operating notes.
"""

from gateway.journal.schema import SCHEMA_VERSION, NewRow, Row
from gateway.journal.store import CursorStats, Journal, JournalError, JournalStats, SeriesStats
from gateway.journal.writer import GroupCommitWriter

__all__ = [
    "SCHEMA_VERSION",
    "CursorStats",
    "GroupCommitWriter",
    "Journal",
    "JournalError",
    "JournalStats",
    "NewRow",
    "Row",
    "SeriesStats",
]
