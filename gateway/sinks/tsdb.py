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
`poll_s` seconds anyway. The thread, the cursor and the health it shares with the MQTT
publisher are in `gateway.sinks.base`.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from influxdb_client.client.exceptions import InfluxDBError
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS, WriteApi
from influxdb_client.domain.write_precision import WritePrecision

from gateway.journal import Journal
from gateway.journal.schema import Row
from gateway.sinks.base import FIRST_BACKOFF_S, JournalSink, SinkHealth
from gateway.sinks.lineprotocol import Formatted, LineFormatter

log = logging.getLogger(__name__)

#: Statuses that mean "these lines are bad": split the batch and skip what the server refuses.
BAD_DATA_STATUSES = frozenset({400, 413, 422})
#: Timestamps are integer milliseconds (`lineprotocol.to_ms`).
_MS = cast(WritePrecision, WritePrecision.MS)


class _BadData(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


#: Pause after the journal was busy (a local condition, unlike an unreachable server).
JOURNAL_RETRY_S = 0.5


@dataclass
class TsdbHealth(SinkHealth):
    """Live state of the sink, for /api/v1/health and /metrics.

    `connected` is True when the last write was accepted; `retries` counts the HTTP writes
    that failed and were tried again; `skipped` counts the rows that are not time series
    (badge and other events), by kind.
    """

    name: str = "tsdb"
    url: str = ""
    points_written: int = 0
    #: HTTP writes attempted.
    requests: int = 0
    #: Readings not written, by reason (non_finite, duplicate, invalid_metric, http_400, ...).
    rejected: Counter[str] = field(default_factory=Counter)

    def set_connected(self, connected: bool, error: str | None = None) -> None:
        super().set_connected(connected, error)
        if connected:
            self.last_ok_ts = time.time()

    def _target_json(self) -> dict[str, Any]:
        return {"url": self.url}

    def _counts_json(self) -> dict[str, Any]:
        return {"points_written": self.points_written, "requests": self.requests, "rejected": dict(self.rejected)}


class TsdbSink(JournalSink[TsdbHealth]):
    """Delivers the journal's readings to a line-protocol endpoint, at least once, in order.

    `close()` waits for the write in progress, at most `timeout_s`.
    """

    kind = "TSDB sink"

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
        super().__init__(
            journal_path=journal_path,
            health=TsdbHealth(url=url),
            consumer=consumer,
            batch_size=batch_size,
            max_backoff_s=max_backoff_s,
            poll_s=poll_s,
        )
        self.url = url
        self.token = token
        self.org = org
        self.bucket = bucket
        self.timeout_s = timeout_s
        self.formatter = LineFormatter(site=site, device_tags=device_tags)

    # -- the sink thread ---------------------------------------------------------------------

    def _serve(self, journal: Journal) -> None:
        client = InfluxDBClient(url=self.url, token=self.token, org=self.org, timeout=int(self.timeout_s * 1000))
        try:
            self._loop(journal, client.write_api(write_options=SYNCHRONOUS))
        finally:
            client.close()  # type: ignore[no-untyped-call]

    def _record_crash(self, error: str) -> None:
        # `connected` means "the last write was accepted": no write will be any more.
        self.health.set_connected(False, error)

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
        if rows := self._read_batch(journal):
            self._deliver(api, rows)
            self._advance(journal, rows[-1][0])

    def _deliver(self, api: WriteApi, rows: list[Row]) -> None:
        batch = self.formatter.format(rows)
        self.health.skipped.update(batch.skipped)
        self.health.rejected.update(batch.rejected)
        if batch.lines:
            self._write_split(api, batch)

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
        self._pause(pause)


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
