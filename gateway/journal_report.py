"""`commonwatt journal stats` output: a rich table for people, JSON for scripts."""

from __future__ import annotations

import json
import time
from dataclasses import asdict

from rich.console import Console
from rich.table import Table

from gateway.journal import JournalStats
from gateway.model import iso


def _ago(ts: float | None) -> str:
    if ts is None:
        return "never"
    secs = time.time() - ts
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if secs >= size:
            return f"{secs / size:.1f} {unit} ago"
    return f"{secs:.0f} s ago"


def print_stats(stats: JournalStats, *, as_json: bool = False) -> None:
    if as_json:
        data = asdict(stats)
        data["series"] = {f"{d}/{m}": asdict(v) for (d, m), v in stats.series.items()}
        print(json.dumps(data, indent=2))
        return
    console = Console()
    span = "empty" if stats.first_ts is None else f"{iso(stats.first_ts)} → {iso(stats.last_ts or 0)}"
    console.print(f"[bold]journal[/]: {stats.records:,} records, last seq {stats.last_seq:,}, span {span}")
    devices = Table("device", "records", "first", "last reading", title="devices")
    for name, dev in sorted(stats.devices.items()):
        devices.add_row(name, f"{dev.count:,}", iso(dev.first_ts), f"{iso(dev.last_ts)} ({_ago(dev.last_ts)})")
    console.print(devices)
    consumers = Table("consumer", "cursor", "lag (records)", "updated", title="consumers")
    for name, cur in sorted(stats.cursors.items()):
        consumers.add_row(name, f"{cur.seq:,}", f"{cur.lag:,}", _ago(cur.updated))
    console.print(consumers)
