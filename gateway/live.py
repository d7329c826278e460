"""The gateway's live view: the latest value of every series and when each device was last heard.

It is a journal consumer like any sink, so it only ever shows what is durable. Its
position is kept in memory: at start-up it rebuilds itself from the journal's
per-series summary, then follows new commits.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from gateway.aio import wait_event
from gateway.journal import Journal, Row
from gateway.journal.schema import BADGE

READ_LIMIT = 20_000


@dataclass
class DeviceLive:
    last_seen: float | None = None
    online: bool | None = None
    latest: dict[str, tuple[float, float]] = field(default_factory=dict)


class LiveState:
    def __init__(self, journal_path: Path) -> None:
        self.journal_path = journal_path
        self.devices: dict[str, DeviceLive] = {}
        self.badges: deque[tuple[float, str, str]] = deque(maxlen=100)
        self.position = 0
        self._journal: Journal | None = None
        # One thread of its own: a sqlite3 connection stays in the thread that made it.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="live")

    def bootstrap(self) -> None:
        """Latest values from the journal's series summary (one row per device and metric)."""
        with sqlite3.connect(f"file:{self.journal_path}?mode=ro", uri=True) as db:
            rows = db.execute(
                "SELECT r.seq, r.ts, r.device, r.metric, r.value, r.text FROM series s "
                "JOIN records r ON r.seq = s.last_seq ORDER BY r.seq"
            ).fetchall()
            last = db.execute("SELECT coalesce(max(seq), 0) FROM records").fetchone()[0]
        self.apply(rows)
        self.position = int(last)

    def apply(self, rows: list[Row]) -> None:
        devices = self.devices
        for _seq, ts, device, metric, value, text in rows:
            live = devices.get(device)
            if live is None:
                live = devices[device] = DeviceLive()
            if live.last_seen is None or ts > live.last_seen:
                live.last_seen = ts
            if value is not None and text is None:
                live.latest[metric] = (ts, value)
                if metric == "online":
                    live.online = value >= 0.5
            elif metric == BADGE and text is not None:
                self.badges.append((ts, device, text))

    def catch_up(self) -> int:
        """Apply every committed row after our position; returns how many. Runs in a worker thread."""
        if self._journal is None:
            self._journal = Journal(self.journal_path, readonly=True)
        n = 0
        while True:
            rows = self._journal.read(self.position, READ_LIMIT)
            if not rows:
                return n
            self.apply(rows)
            self.position = rows[-1][0]
            n += len(rows)

    async def follow(self, wake: asyncio.Event) -> None:
        """Follow the journal: wake is set by the writer's commit listener."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.bootstrap)
        while True:
            await loop.run_in_executor(self._executor, self.catch_up)
            await wait_event(wake, 1.0)
            wake.clear()

    def close(self) -> None:
        def _close() -> None:
            if self._journal is not None:
                self._journal.close()
                self._journal = None

        self._executor.submit(_close).result()
        self._executor.shutdown()
