"""What the journal's outbox sinks share: their health, their thread, their cursor.

A journal sink (`TsdbSink`, `MqttPublisherSink`, and the TSDB sink's subclasses) keeps a
cursor of its own in the journal (its `consumer`), reads the rows after it, delivers them
somewhere, and moves the cursor only once they are delivered. It runs on a thread of its
own so that the event loop is never blocked by a slow server, and it is told about new
rows by `notify()` (hook it to the journal writer:
`writer.add_listener(lambda seq: sink.notify())`), looking at the journal every `poll_s`
seconds anyway.

`JournalSink` is that thread, its lifetime (`start`/`close`, `with`, `async with`), the
batch read and the cursor move; a subclass says how a batch is delivered (`_serve`,
usually a loop of `_read_batch`, its own delivery, `_advance`). `SinkHealth` is the part
of the health every such sink shows in /api/v1/health and /metrics.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

from gateway.journal import Journal
from gateway.journal.schema import Row

log = logging.getLogger(__name__)

#: First pause before delivering again what was not taken; doubles up to `max_backoff_s`.
FIRST_BACKOFF_S = 0.5


class Stopped(Exception):
    """The sink was asked to stop while a batch was still being delivered."""


@dataclass
class SinkHealth:
    """Live state of a journal sink, for /api/v1/health and /metrics (`as_json()`)."""

    name: str = ""
    #: True while the sink can deliver (what that means is the sink's own: see its health).
    connected: bool = False
    #: When `connected` last changed (UTC seconds).
    since: float | None = None
    last_ok_ts: float | None = None
    last_error: str | None = None
    #: Journal batches delivered (cursor moves).
    batches: int = 0
    retries: int = 0
    #: Rows the sink does not send, by reason.
    skipped: Counter[str] = field(default_factory=Counter)
    cursor: int = 0
    last_seq: int = 0

    @property
    def lag(self) -> int:
        """Journal rows not yet delivered."""
        return max(0, self.last_seq - self.cursor)

    def set_connected(self, connected: bool, error: str | None = None) -> None:
        if connected != self.connected or self.since is None:
            self.since = time.time()
        self.connected = connected
        if not connected:
            self.last_error = error

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            **self._target_json(),
            "connected": self.connected,
            "since": self.since,
            "last_ok_ts": self.last_ok_ts,
            "last_error": self.last_error,
            **self._counts_json(),
            "batches": self.batches,
            "retries": self.retries,
            "skipped": dict(self.skipped),
            "cursor": self.cursor,
            "last_seq": self.last_seq,
            "lag": self.lag,
        }

    def _target_json(self) -> dict[str, Any]:
        """Where the sink delivers to (a URL, a broker), shown after its name."""
        return {}

    def _counts_json(self) -> dict[str, Any]:
        """The sink's own counters, shown before the ones every sink has."""
        return {}


H = TypeVar("H", bound=SinkHealth)


class JournalSink(Generic[H]):
    """Delivers the journal's rows from cursor `consumer` on a thread of its own, at least once."""

    #: What the sink is called in errors and logs ("TSDB sink").
    kind = "journal sink"

    def __init__(
        self,
        *,
        journal_path: str | Path,
        health: H,
        consumer: str,
        batch_size: int,
        max_backoff_s: float,
        poll_s: float,
    ) -> None:
        self.journal_path = Path(journal_path)
        self.health = health
        self.consumer = consumer
        self.batch_size = batch_size
        self.max_backoff_s = max_backoff_s
        self.poll_s = poll_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        # Guards the cursor in `health` (`wait_delivered` waits on it), and whatever else a
        # subclass says it guards.
        self._progress = threading.Condition()
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None

    # -- the public surface (any thread) -----------------------------------------------------

    def notify(self) -> None:
        """New rows are in the journal: look now instead of at the next poll. Thread-safe."""
        self._wake.set()

    def wait_delivered(self, seq: int, timeout: float) -> bool:
        """Block until every row up to `seq` is delivered (or skipped); False after `timeout`."""
        with self._progress:
            return self._progress.wait_for(lambda: self.health.cursor >= seq, timeout)

    def start(self) -> None:
        """Open the journal and start the sink thread; raises here if the journal cannot be opened."""
        if self._thread is not None:
            raise RuntimeError(f"the {self.kind} is already started")
        self._thread = threading.Thread(target=self._run, name=f"sink-{self.consumer}", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            self._thread.join()
            raise self._start_error

    def close(self) -> None:
        """Stop the sink thread once it is between two deliveries; undelivered rows wait in the journal."""
        self._stop.set()
        self._wake.set()
        with self._progress:
            self._progress.notify_all()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.close)

    # -- the sink thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            journal = Journal(self.journal_path)
            self.health.cursor = journal.cursor(self.consumer)
        except BaseException as exc:
            self._start_error = exc
            self._started.set()
            return
        self._started.set()
        try:
            self._serve(journal)
        except Stopped:
            pass
        except Exception as exc:
            # A bug, not an outage (those are waited out): say so loudly; the rows wait in the journal.
            log.exception("%s stopped", self.kind)
            self._record_crash(f"sink stopped: {exc!r}")
        finally:
            journal.close()

    def _serve(self, journal: Journal) -> None:
        """Deliver batches until `_stop` is set (or raise `Stopped`)."""
        raise NotImplementedError

    def _record_crash(self, error: str) -> None:
        """Show in the health why the sink thread stopped."""
        self.health.last_error = error

    def _read_batch(self, journal: Journal) -> list[Row]:
        """The rows after the cursor, at most `batch_size`; none after waiting for `notify()` or `poll_s`."""
        self._wake.clear()
        rows = journal.read(self.health.cursor, self.batch_size)
        self.health.last_seq = journal.last_seq()
        if not rows:
            self._wake.wait(self.poll_s)
        return rows

    def _advance(self, journal: Journal, seq: int) -> None:
        """Every row up to `seq` is delivered: move the cursor, in the journal and in the health."""
        journal.set_cursor(self.consumer, seq)
        with self._progress:
            self.health.cursor = seq
            self.health.batches += 1
            self._progress.notify_all()

    def _pause(self, seconds: float) -> None:
        """Wait before delivering again; `Stopped` when the sink is closed meanwhile."""
        if self._stop.wait(seconds):
            raise Stopped
