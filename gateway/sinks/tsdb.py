"""`TsdbSink`: the journal's readings into VictoriaMetrics or InfluxDB 2.x, never losing one.

Outbox pattern. The sink keeps its own cursor in the journal (consumer `tsdb`). It reads
the rows after the cursor, formats them as line protocol (`gateway.sinks.lineprotocol`),
writes them with influxdb-client's synchronous `WriteApi`, and only once the server has
accepted them moves the cursor. What happens when a write fails:

- the server is down, overloaded or refuses us (connection errors, timeouts, 5xx, 429,
  401/403/404 from a wrong token or bucket): the batch is kept and retried with
  exponential backoff (0.5 s doubling up to `max_backoff_s`, with jitter; a `Retry-After`
  is honoured). Nothing is dropped, the cursor does not move; the journal is the buffer,
  and the sink catches up in batches when the server returns;
- the server says the data itself is bad (400, 422, or 413 for a body too large): the
  batch is split in halves until the lines it refuses are isolated; those are counted
  under `http_<status>` and skipped, the rest is written. A poisoned row cannot stop
  the sink.

A crash between a write and the cursor update sends that batch again on restart. That is
harmless when the server keeps one sample per series and timestamp: InfluxDB overwrites
the point, VictoriaMetrics does the same when run with `-dedup.minScrapeInterval=1ms`.

influxdb-client is synchronous, so the sink runs on a thread of its own and the event loop
stays free: `async with TsdbSink(...) as sink:` (or `with` from plain threads). It sleeps
until `notify()` (hook it to the journal writer:
`writer.add_listener(lambda seq: sink.notify())`) and looks at the journal every
`poll_s` seconds anyway.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from influxdb_client.client.exceptions import InfluxDBError
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS, WriteApi
from influxdb_client.domain.write_precision import WritePrecision

from gateway.journal import Journal
from gateway.journal.schema import Row
from gateway.sinks.lineprotocol import Formatted, LineFormatter

log = logging.getLogger(__name__)

#: Statuses that mean "these lines are bad": split the batch and skip what the server refuses.
BAD_DATA_STATUSES = frozenset({400, 413, 422})
#: First retry delay after a failed write; doubles up to `max_backoff_s`.
FIRST_BACKOFF_S = 0.5
#: Timestamps are integer milliseconds (`lineprotocol.to_ms`).
_MS = cast(WritePrecision, WritePrecision.MS)


class _Stopped(Exception):
    """The sink was asked to stop while a write was still being retried."""


class _BadData(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


#: Pause after the journal was busy (a local condition, unlike an unreachable server).
JOURNAL_RETRY_S = 0.5


@dataclass
class TsdbHealth:
    """Live state of the sink, for /api/v1/health and /metrics."""

    name: str = "tsdb"
    url: str = ""
    #: True when the last write was accepted.
    connected: bool = False
    #: When `connected` last changed (UTC seconds).
    since: float | None = None
    last_ok_ts: float | None = None
    last_error: str | None = None
    points_written: int = 0
    #: Journal batches delivered (cursor moves).
    batches: int = 0
    #: HTTP writes attempted, and how many of them failed and were retried.
    requests: int = 0
    retries: int = 0
    #: Readings not written, by reason (non_finite, duplicate, invalid_metric, http_400, ...).
    rejected: Counter[str] = field(default_factory=Counter)
    #: Rows that are not time series (badge and other events), by kind.
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
        if connected:
            self.last_ok_ts = time.time()
        else:
            self.last_error = error

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": self.url,
            "connected": self.connected,
            "since": self.since,
            "last_ok_ts": self.last_ok_ts,
            "last_error": self.last_error,
            "points_written": self.points_written,
            "batches": self.batches,
            "requests": self.requests,
            "retries": self.retries,
            "rejected": dict(self.rejected),
            "skipped": dict(self.skipped),
            "cursor": self.cursor,
            "last_seq": self.last_seq,
            "lag": self.lag,
        }


class TsdbSink:
    """Delivers the journal's readings to a line-protocol endpoint, at least once, in order."""

    def __init__(
        self,
        *,
        journal_path: str | Path,
        url: str,
        token: str = "",
        org: str = "",
        bucket: str = "commonwatt",
        site: str,
        device_tags: Mapping[str, Mapping[str, str]] | None = None,
        consumer: str = "tsdb",
        batch_size: int = 20000,
        timeout_s: float = 10,
        max_backoff_s: float = 30,
        poll_s: float = 0.5,
    ) -> None:
        self.journal_path = Path(journal_path)
        self.url = url
        self.token = token
        self.org = org
        self.bucket = bucket
        self.consumer = consumer
        self.batch_size = batch_size
        self.timeout_s = timeout_s
        self.max_backoff_s = max_backoff_s
        self.poll_s = poll_s
        self.formatter = LineFormatter(site=site, device_tags=device_tags)
        self.health = TsdbHealth(url=url)
        self._wake = threading.Event()
        self._stop = threading.Event()
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
            raise RuntimeError("the TSDB sink is already started")
        self._thread = threading.Thread(target=self._run, name=f"sink-{self.consumer}", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            self._thread.join()
            raise self._start_error

    def close(self) -> None:
        """Stop after the write in progress (at most `timeout_s`); undelivered rows wait in the journal."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> TsdbSink:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> TsdbSink:
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
        client = InfluxDBClient(url=self.url, token=self.token, org=self.org, timeout=int(self.timeout_s * 1000))
        try:
            self._loop(journal, client.write_api(write_options=SYNCHRONOUS))
        except _Stopped:
            pass
        except Exception as exc:
            # A bug, not an outage (those are retried): say so loudly; the rows wait in the journal.
            log.exception("TSDB sink stopped")
            self.health.set_connected(False, f"sink stopped: {exc!r}")
        finally:
            client.close()  # type: ignore[no-untyped-call]
            journal.close()

    def _loop(self, journal: Journal, api: WriteApi) -> None:
        while not self._stop.is_set():
            try:
                self._step(journal, api)
            except sqlite3.Error as exc:
                # A journal busy beyond its timeout (a backup holding a lock, an ingest burst keeping
                # the writer busy): a local and short-lived condition, so try again soon.
                log.warning("TSDB sink cannot read the journal, retrying in %.1fs: %s", JOURNAL_RETRY_S, exc)
                self.health.last_error = f"journal: {exc}"
                self._stop.wait(JOURNAL_RETRY_S)

    def _step(self, journal: Journal, api: WriteApi) -> None:
        self._wake.clear()
        rows = journal.read(self.health.cursor, self.batch_size)
        self.health.last_seq = journal.last_seq()
        if rows:
            self._deliver(api, rows)
            self._advance(journal, rows[-1][0])
        else:
            self._wake.wait(self.poll_s)

    def _deliver(self, api: WriteApi, rows: list[Row]) -> None:
        batch = self.formatter.format(rows)
        self.health.skipped.update(batch.skipped)
        self.health.rejected.update(batch.rejected)
        if batch.lines:
            self._write_split(api, batch)

    def _advance(self, journal: Journal, seq: int) -> None:
        journal.set_cursor(self.consumer, seq)
        with self._progress:
            self.health.cursor = seq
            self.health.batches += 1
            self._progress.notify_all()

    def _write_split(self, api: WriteApi, batch: Formatted) -> None:
        """Write `batch`; when the server refuses its data, bisect and skip the refused lines."""
        try:
            self._write_retrying(api, batch.lines)
        except _BadData as exc:
            if len(batch.lines) == 1:
                log.warning("TSDB refused line %r: %s", batch.lines[0], exc)
                self.health.rejected[f"http_{exc.status}"] += batch.points[0]
                return
            mid = len(batch.lines) // 2
            self._write_split(api, Formatted(batch.lines[:mid], batch.points[:mid]))
            self._write_split(api, Formatted(batch.lines[mid:], batch.points[mid:]))
            return
        self.health.points_written += batch.point_count

    def _write_retrying(self, api: WriteApi, lines: list[str]) -> None:
        """Write `lines` once accepted; retry whatever is not the data's fault, until stopped."""
        body = "\n".join(lines).encode()
        delay = FIRST_BACKOFF_S
        while True:
            try:
                self._post(api, body)
                return
            except _BadData:
                raise
            except Exception as exc:
                self._wait_retry(exc, delay)
                delay = min(delay * 2, self.max_backoff_s)

    def _post(self, api: WriteApi, body: bytes) -> None:
        self.health.requests += 1
        try:
            api.write(bucket=self.bucket, org=self.org, record=body, write_precision=_MS)
        except InfluxDBError as exc:
            status = getattr(exc, "status", None)
            if isinstance(status, int) and status in BAD_DATA_STATUSES:
                raise _BadData(status, exc.message) from exc
            raise
        self.health.set_connected(True)

    def _wait_retry(self, exc: Exception, delay: float) -> None:
        """Sleep before the next attempt: `delay` with jitter, or the server's Retry-After."""
        self.health.retries += 1
        self.health.set_connected(False, _describe(exc))
        pause = min(max(delay * random.uniform(0.5, 1.0), _retry_after(exc)), self.max_backoff_s)
        log.warning("TSDB write to %s failed, retrying in %.1fs: %s", self.url, pause, _describe(exc))
        if self._stop.wait(pause):
            raise _Stopped


def _describe(exc: Exception) -> str:
    if isinstance(exc, InfluxDBError):
        status = getattr(exc, "status", None)
        return f"HTTP {status}: {exc.message}" if status else exc.message
    return f"{type(exc).__name__}: {exc}"


def _retry_after(exc: Exception) -> float:
    value = getattr(exc, "retry_after", None)
    try:
        return float(value) if value is not None else 0.0
    except ValueError:
        return 0.0
