"""`GroupCommitWriter`: the one thread that writes the ingest path into the journal.

Sources call `put()` from wherever they run (paho's network thread, the asyncio loop,
a serial reader): it only appends to an in-memory queue and returns. The writer thread
commits what has queued up in batches: at most `max_delay` seconds after the first
pending record, at once when `max_batch` records wait or when someone calls `flush()`.
One transaction per batch instead of per message is the difference between ~25k and
~300k rows/s.

Records put by one thread are committed in the order they were put, and every put is
committed exactly once. When SQLite fails (disk full, the file locked by a backup
tool) the writer keeps the batch, reports the error in `last_error` and retries with
backoff; nothing is ever dropped, the queue just grows until the disk takes it again.

The rest of the gateway learns about new commits without polling: threads call
`wait_committed()`, the asyncio side registers a listener that is called from the
writer thread after each commit, e.g.
`writer.add_listener(lambda seq: loop.call_soon_threadsafe(event.set))`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

from gateway.journal.schema import BADGE, NewRow, to_rows
from gateway.journal.store import Journal
from gateway.model import Record

log = logging.getLogger(__name__)

Listener = Callable[[int], None]

#: Retry delays after a failed commit grow from the first to the last, doubling.
RETRY_FIRST_S = 0.05
RETRY_MAX_S = 5.0


class GroupCommitWriter:
    """Batches records from any thread into journal transactions on a thread of its own."""

    def __init__(
        self,
        journal_path: str | Path,
        *,
        max_batch: int = 5000,
        max_delay: float = 0.05,
        busy_timeout: float = 10.0,
    ) -> None:
        self.journal_path = Path(journal_path)
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.busy_timeout = busy_timeout
        self._cond = threading.Condition()
        self._queue: deque[list[NewRow]] = deque()
        self._queued = 0  # rows in _queue
        self._accepted = 0  # rows ever put
        self._done = 0  # rows ever committed
        self._urgent = 0  # commit at once until _done reaches this (flush, close)
        self._closing = False
        self._committed_seq = 0
        self._committed_rows = 0
        self._listeners: list[Listener] = []
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        #: The last error a commit failed with; None again after the next successful commit.
        self.last_error: BaseException | None = None
        self.batches = 0
        self.failures = 0

    # -- producer side (any thread) ----------------------------------------------------------

    def put(self, records: Sequence[Record]) -> None:
        """Queue Readings and BadgeEvents; returns at once. TypeError for anything else.

        Badges are committed at once (see `put_rows`).
        """
        rows = to_rows(records)
        self.put_rows(rows, urgent=any(row[2] == BADGE for row in rows))

    def put_rows(self, rows: Sequence[NewRow], *, urgent: bool = False) -> int:
        """Queue rows (ts, device, metric, value, text); returns at once.

        Returns the number of rows ever put including these: they are durable once
        `committed_rows` reaches it (the MQTT source acknowledges messages that way).
        `urgent` commits at once instead of waiting up to `max_delay` for company: a
        badge at a machine must not wait for a batch to fill.
        """
        if not rows:
            return self._accepted
        batch = list(rows)
        with self._cond:
            if self._closing:
                raise RuntimeError("the journal writer is closed")
            self._queue.append(batch)
            self._queued += len(batch)
            self._accepted += len(batch)
            if urgent:
                self._urgent = max(self._urgent, self._accepted)
            self._cond.notify_all()
            return self._accepted

    @property
    def committed_seq(self) -> int:
        """The seq of the last record known to be durable in the journal."""
        return self._committed_seq

    @property
    def committed_rows(self) -> int:
        """How many of the rows ever put are durable; listeners already see their own batch here."""
        return self._committed_rows

    @property
    def pending(self) -> int:
        """Records put but not committed yet (grows while the disk refuses writes)."""
        return self._accepted - self._done

    def flush(self, timeout: float | None = None) -> int:
        """Block until everything put so far is committed; returns the last seq.

        TimeoutError when that takes longer than `timeout` seconds.
        """
        if self._thread is None:
            raise RuntimeError("the journal writer is not started")
        with self._cond:
            target = self._accepted
            self._urgent = max(self._urgent, target)
            self._cond.notify_all()
            if not self._cond.wait_for(lambda: self._done >= target, timeout):
                raise TimeoutError(f"journal flush: {target - self._done} records still pending")
            return self._committed_seq

    def wait_committed(self, after: int, timeout: float) -> int:
        """Block until `committed_seq` > `after` or `timeout` passes; returns `committed_seq`."""
        with self._cond:
            self._cond.wait_for(lambda: self._committed_seq > after, timeout)
            return self._committed_seq

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(committed_seq)` from the writer thread after each commit. Keep it short."""
        with self._cond:
            self._listeners = [*self._listeners, listener]

    def remove_listener(self, listener: Listener) -> None:
        with self._cond:
            self._listeners = [x for x in self._listeners if x != listener]

    # -- lifetime ----------------------------------------------------------------------------

    def start(self) -> None:
        """Open the journal on the writer thread; raises here if it cannot be opened."""
        if self._thread is not None:
            raise RuntimeError("the journal writer is already started")
        self._thread = threading.Thread(target=self._run, name="journal-writer", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            self._thread.join()
            raise self._start_error

    def close(self, timeout: float | None = None) -> None:
        """Commit everything put so far, then stop the thread. Later puts raise RuntimeError.

        While the disk refuses writes this waits for it (up to `timeout`, then TimeoutError):
        records are never dropped to make a shutdown quicker.
        """
        if self._thread is None:
            return
        with self._cond:
            self._closing = True
            self._urgent = max(self._urgent, self._accepted)
            self._cond.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"journal writer: {self.pending} records still pending at close")

    def __enter__(self) -> GroupCommitWriter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            journal = Journal(self.journal_path, busy_timeout=self.busy_timeout)
            self._committed_seq = journal.last_seq()
        except BaseException as exc:
            self._start_error = exc
            self._started.set()
            return
        self._started.set()
        try:
            while (batch := self._next_batch()) is not None:
                self._commit(journal, batch)
        finally:
            journal.close()

    def _next_batch(self) -> list[NewRow] | None:
        """Wait for a batch worth committing; None when closing with nothing left."""
        with self._cond:
            self._cond.wait_for(lambda: self._queued > 0 or self._closing)
            if self._queued == 0:
                return None
            deadline = time.monotonic() + self.max_delay
            while not self._batch_due() and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            return self._take()

    def _batch_due(self) -> bool:
        return self._queued >= self.max_batch or self._urgent > self._done or self._closing

    def _take(self) -> list[NewRow]:
        batch: list[NewRow] = []
        while self._queue and len(batch) < self.max_batch:
            chunk = self._queue.popleft()
            room = self.max_batch - len(batch)
            if len(chunk) > room:
                self._queue.appendleft(chunk[room:])
                chunk = chunk[:room]
            batch.extend(chunk)
        self._queued -= len(batch)
        return batch

    def _commit(self, journal: Journal, batch: list[NewRow]) -> None:
        """Commit one batch, retrying with backoff until SQLite takes it."""
        delay = RETRY_FIRST_S
        while True:
            try:
                seq = journal.append_rows(batch)
                break
            except Exception as exc:
                self.last_error = exc
                self.failures += 1
                log.warning("journal commit of %d records failed, retrying in %.2fs: %s", len(batch), delay, exc)
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
        with self._cond:
            self.last_error = None
            self.batches += 1
            self._committed_seq = seq
            self._committed_rows = self._done + len(batch)
            listeners = self._listeners
        for listener in listeners:
            try:
                listener(seq)
            except Exception:
                log.exception("journal commit listener failed")
        with self._cond:  # flush() returns after the listeners have heard of its commit
            self._done += len(batch)
            self._cond.notify_all()
