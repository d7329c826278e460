"""`MachineStateSink`: each machine's state and its session and alert counts, as time series.

The machine floor keeps state and sessions as journal events, not readings, so the TSDB
sink does not write them. Grafana's Machines dashboard needs them as series; this sink
writes, every `every_s` seconds (10 by default), one line per machine:

    commonwatt_machine,machine=laser,site=lab state_code=1,in_use=1,sessions_total=4,unauthorized_total=0 1732614745123

which VictoriaMetrics stores as

| series | meaning |
| --- | --- |
| `commonwatt_machine_state_code{site, machine}` | 0 free, 1 in use, 2 to check, 3 blocked, 4 disabled (`STATE_CODES`) |
| `commonwatt_machine_in_use{site, machine}` | 1 while a session is open, else 0 |
| `commonwatt_machine_sessions_total{site, machine}` | sessions opened since the gateway started (a counter) |
| `commonwatt_machine_unauthorized_total{site, machine}` | `unauthorized_use` alerts since the start (a counter) |

These are snapshots, like a scrape: a write that fails is logged and skipped, not
retried, and the next one carries the current values. The counters restart at 0 with the
gateway, as Prometheus counters do; `increase()` over a window counts across restarts.
The state and session history itself stays in the journal, where audits read it.

    async with MachineStateSink(floor=gw.floor, machines=[m.id for m in cfg.machines], ...) as sink:
        gw.sinks.append(sink)  # its health shows in /api/v1/health and /metrics
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gateway.journal import Journal
from gateway.journal.schema import Row
from gateway.sinks.lineprotocol import escape_key, to_ms

log = logging.getLogger(__name__)

MEASUREMENT = "commonwatt_machine"
#: The floor's machine states as numbers, for Grafana's state timeline (value mappings).
STATE_CODES = {"free": 0, "in_use": 1, "to_check": 2, "blocked": 3, "disabled": 4}
#: The journal events counted, and the counter each feeds.
SESSION_OPENED = "event.session_opened"
ALERT = "event.alert"
READ_LIMIT = 10_000


class MachineViews(Protocol):
    """What the sink needs of the floor (`gateway.floor_service.FloorService`)."""

    def machine_view(self, machine_id: str) -> Any: ...


@dataclass
class EventCounts:
    """Sessions opened and unauthorized-use alerts per machine, from journal events."""

    sessions: Counter[str] = field(default_factory=Counter)
    unauthorized: Counter[str] = field(default_factory=Counter)

    def add(self, rows: Iterable[Row]) -> None:
        for _seq, _ts, _device, metric, _value, text in rows:
            if text is None or metric not in (SESSION_OPENED, ALERT):
                continue
            event = json.loads(text)
            if metric == SESSION_OPENED:
                self.sessions[str(event["machine_id"])] += 1
            elif event.get("alert") == "unauthorized_use":
                self.unauthorized[str(event["machine_id"])] += 1


def machine_line(site: str, machine: str, state: str, counts: EventCounts, ms: int) -> str:
    """One machine's line. An unknown state is written as -1, so it shows rather than hides."""
    code = STATE_CODES.get(state, -1)
    fields = (
        f"state_code={float(code)!r},in_use={float(state == 'in_use')!r},"
        f"sessions_total={float(counts.sessions[machine])!r},unauthorized_total={float(counts.unauthorized[machine])!r}"
    )
    return f"{MEASUREMENT},machine={escape_key(machine)},site={escape_key(site)} {fields} {ms}"


@dataclass
class MachineStateHealth:
    """Shown with the other sinks' health (/api/v1/health, /metrics)."""

    name: str = "machinestate"
    connected: bool = False
    last_ok_ts: float | None = None
    last_error: str | None = None
    points_written: int = 0
    writes: int = 0
    failed: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "connected": self.connected,
            "last_ok_ts": self.last_ok_ts,
            "last_error": self.last_error,
            "points_written": self.points_written,
            "writes": self.writes,
            "failed": self.failed,
            "lag": 0,
        }


class MachineStateSink:
    """Writes every machine's state and counts to a line-protocol endpoint every `every_s` seconds."""

    def __init__(
        self,
        *,
        floor: MachineViews,
        machines: Sequence[str],
        journal_path: str | Path,
        url: str,
        site: str,
        token: str = "",
        org: str = "",
        bucket: str = "commonwatt",
        every_s: float = 10.0,
        timeout_s: float = 10.0,
    ) -> None:
        self.floor = floor
        self.machines = list(machines)
        self.journal_path = Path(journal_path)
        query = urllib.parse.urlencode({"org": org, "bucket": bucket, "precision": "ms"})
        self.write_url = f"{url.rstrip('/')}/api/v2/write?{query}"
        self.headers = {"Content-Type": "text/plain; charset=utf-8"}
        if token:
            self.headers["Authorization"] = f"Token {token}"
        self.site = site
        self.every_s = every_s
        self.timeout_s = timeout_s
        self.counts = EventCounts()
        self.health = MachineStateHealth()
        self._position = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> MachineStateSink:
        self._position = await asyncio.to_thread(self._last_seq)
        self._task = asyncio.create_task(self._run(), name="machinestate")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.write_once, time.time())  # the final state, best effort

    def _last_seq(self) -> int:
        with Journal(self.journal_path, readonly=True) as journal:
            return journal.last_seq()

    async def _run(self) -> None:
        while True:
            await asyncio.to_thread(self.write_once, time.time())
            await asyncio.sleep(self.every_s)

    def lines(self, now: float) -> list[str]:
        """Count the new journal events, then one line per machine as of `now`."""
        with Journal(self.journal_path, readonly=True) as journal:
            while rows := journal.read(self._position, READ_LIMIT):
                self.counts.add(rows)
                self._position = rows[-1][0]
        ms = to_ms(now)
        return [machine_line(self.site, m, self.floor.machine_view(m).state, self.counts, ms) for m in self.machines]

    def write_once(self, now: float) -> None:
        """One snapshot. A failure is logged and counted in health; the next snapshot goes on."""
        try:
            lines = self.lines(now)
            body = ("\n".join(lines) + "\n").encode()
            request = urllib.request.Request(self.write_url, data=body, headers=self.headers, method="POST")
            with urllib.request.urlopen(request, timeout=self.timeout_s):
                pass
        except (OSError, ValueError, KeyError) as exc:  # URLError and HTTPError are OSErrors
            self.health.connected = False
            self.health.failed += 1
            self.health.last_error = str(exc)
            log.warning("machine state not written: %s", exc)
            return
        self.health.connected = True
        self.health.last_ok_ts = time.time()
        self.health.writes += 1
        self.health.points_written += 4 * len(lines)
