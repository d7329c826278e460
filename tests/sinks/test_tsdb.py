"""TsdbSink against a real VictoriaMetrics and a real SQLite journal.

The refusals VictoriaMetrics never sends (it logs a bad line and answers 204; it has no
tokens) come from a small InfluxDB stand-in on 127.0.0.1 that answers the way InfluxDB
2.x does: 400 for a body with a bad line, 503/429/401 when it is unwell.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from gateway.journal import GroupCommitWriter, Journal
from gateway.model import BadgeEvent, Reading, Record
from gateway.sinks.tsdb import TsdbSink
from tests.services import VictoriaMetrics, _find, _wait_port

T0 = float(int(time.time()) - 3600)
TAGS = {"grid": {"role": "grid"}, "pv": {"role": "pv"}, "laser, 2": {"role": "machine", "room": "wood shop"}}
SERIES = "{__name__=~'commonwatt_.*'}"


def sink(journal: Path, url: str, **kw: Any) -> TsdbSink:
    return TsdbSink(journal_path=journal, url=url, site="lab", device_tags=TAGS, max_backoff_s=0.4, **kw)


def samples(vm: VictoriaMetrics) -> dict[tuple[str, str], dict[int, float]]:
    """(metric name, device) -> {timestamp ms: value}; fails on a repeated timestamp."""
    out: dict[tuple[str, str], dict[int, float]] = {}
    for series in vm.export(SERIES):
        labels: dict[str, str] = series["metric"]  # type: ignore[assignment]
        ts: list[int] = series["timestamps"]  # type: ignore[assignment]
        assert len(set(ts)) == len(ts), f"{labels} has a timestamp twice"
        out[(labels["__name__"], labels["device"])] = dict(zip(ts, series["values"], strict=True))  # type: ignore[call-overload]
    return out


# -- delivery -----------------------------------------------------------------------------------


def test_readings_arrive_with_their_values(victoria: VictoriaMetrics, tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    metrics = ["power_w", "voltage_v", "energy_wh"]
    readings = [
        Reading(T0 + i, device, metric, 1000.0 * d + 100 * m + i + 0.25)
        for i in range(100)
        for d, device in enumerate(TAGS)
        for m, metric in enumerate(metrics)
    ]
    others: list[Record] = [
        BadgeEvent(T0, "laser, 2", "04A1B2C3"),
        Reading(T0 + 0.5, "grid", "power_w", math.nan),
        Reading(T0 + 0.5, "pv", "power_w", math.inf),
        Reading(T0 + 0.5, "grid", "power\nw", 1.0),
    ]
    with Journal(path) as journal:
        journal.append([*readings[:450], *others, *readings[450:]])
        last = journal.last_seq()
    with sink(path, victoria.url, batch_size=250) as s:
        assert s.wait_delivered(last, 10)
        health = s.health.as_json()

    got = samples(victoria)
    expected: dict[tuple[str, str], dict[int, float]] = {}
    for r in readings:
        expected.setdefault((f"commonwatt_{r.metric}", r.device), {})[round(r.ts * 1000)] = r.value
    assert got == expected
    labels = {json.dumps(s["metric"], sort_keys=True) for s in victoria.export("{device='laser, 2'}")}
    assert json.loads(sorted(labels)[0]) == {
        "__name__": "commonwatt_energy_wh",
        "site": "lab",
        "device": "laser, 2",
        "role": "machine",
        "room": "wood shop",
    }
    assert health["points_written"] == 900
    assert health["rejected"] == {"non_finite": 2, "invalid_metric": 1}
    assert health["skipped"] == {"event": 1}
    assert health["connected"] and health["lag"] == 0 and health["cursor"] == last


def test_outage_every_point_arrives_once(victoria: VictoriaMetrics, tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    devices, per_device, chunks = ["grid", "pv", "laser, 2", "bench"], 5000, 40
    Journal(path).close()
    with sink(path, victoria.url, batch_size=2000) as s:
        producer = threading.Thread(target=_produce, args=(path, s, devices, per_device, chunks))
        producer.start()
        time.sleep(0.5)
        _assert_cursor_behind_vm(victoria, path)
        victoria.stop()
        cursor_at_stop = _cursor(path)
        time.sleep(1.0)  # rows keep coming; nothing can be written
        assert _cursor(path) == cursor_at_stop
        health = s.health.as_json()  # a snapshot: the sink thread keeps changing s.health
        assert not health["connected"] and health["retries"] > 0 and health["lag"] > 0
        victoria.start()
        _assert_cursor_behind_vm(victoria, path)
        producer.join()
        with Journal(path) as journal:
            last = journal.last_seq()
        assert last == len(devices) * per_device
        assert s.wait_delivered(last, 15)
        assert s.health.points_written == last and s.health.connected

    got = samples(victoria)
    assert sorted(device for _name, device in got) == sorted(devices)
    for (_name, _device), values in got.items():
        assert len(values) == per_device
        assert sorted(values.values()) == [float(i) for i in range(per_device)]


def _produce(path: Path, s: TsdbSink, devices: list[str], per_device: int, chunks: int) -> None:
    """Append per_device readings for each device over about two seconds, in chunks."""
    readings = [Reading(T0 + i / 1000, d, "power_w", float(i)) for i in range(per_device) for d in devices]
    size = len(readings) // chunks
    with Journal(path) as journal:
        for start in range(0, len(readings), size):
            journal.append(readings[start : start + size])
            s.notify()
            time.sleep(2.0 / chunks)


def _cursor(path: Path) -> int:
    with Journal(path) as journal:
        return journal.cursor("tsdb")


def _assert_cursor_behind_vm(vm: VictoriaMetrics, path: Path) -> None:
    """Every row up to the cursor is in VictoriaMetrics (one point per row in this test)."""
    cursor = _cursor(path)
    assert vm.sample_count(SERIES) >= cursor


# -- resending is harmless with deduplication ----------------------------------------------------


class DedupVictoriaMetrics(VictoriaMetrics):
    """VictoriaMetrics as TSDB.md asks to run it: one sample per series and millisecond."""

    def start(self) -> DedupVictoriaMetrics:
        self.folder.mkdir(parents=True, exist_ok=True)
        log = (self.folder / "vm.log").open("ab")
        args = [
            _find("victoria-metrics"),
            f"-httpListenAddr=127.0.0.1:{self.port}",
            f"-storageDataPath={self.folder / 'data'}",
            "-retentionPeriod=100y",
            "-search.latencyOffset=0s",
            "-search.disableCache",
            "-loggerLevel=ERROR",
            "-dedup.minScrapeInterval=1ms",
        ]
        self.proc = subprocess.Popen(args, stdout=log, stderr=log)
        _wait_port(self.port)
        return self


@pytest.fixture
def dedup_victoria(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    vm = DedupVictoriaMetrics(tmp_path / "victoria-dedup").start()
    yield vm
    vm.stop()


def test_replay_after_crash_is_harmless(dedup_victoria: VictoriaMetrics, tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    with Journal(path) as journal:
        journal.append([Reading(T0 + i / 100, "grid", "power_w", float(i)) for i in range(1000)])
    with sink(path, dedup_victoria.url) as s:
        assert s.wait_delivered(1000, 10)
    with Journal(path) as journal:  # as if the gateway died before moving the cursor
        journal.set_cursor("tsdb", 0, force=True)
    with sink(path, dedup_victoria.url) as s:
        assert s.wait_delivered(1000, 10)
        assert s.health.points_written == 1000
    assert dedup_victoria.sample_count(SERIES) == 1000


# -- refusals: a stand-in that answers like InfluxDB 2.x ----------------------------------------


class FakeInflux(ThreadingHTTPServer):
    """Answers `failures` in turn first, then 400 for a body with "poison" in it, else 204."""

    def __init__(self, failures: list[int]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.failures = failures
        self.accepted: list[str] = []
        self.statuses: list[int] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeInflux

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        status = self._status(body)
        if status == 204:
            self.server.accepted.extend(body.split("\n"))
        self.server.statuses.append(status)
        message = json.dumps({"code": "invalid", "message": f"status {status}"}).encode()
        self.send_response(status)
        if status == 429:
            self.send_header("Retry-After", "0")
        self.send_header("Content-Length", "0" if status == 204 else str(len(message)))
        self.end_headers()
        if status != 204:
            self.wfile.write(message)

    def _status(self, body: str) -> int:
        if self.server.failures:
            return self.server.failures.pop(0)
        return 400 if "poison" in body else 204

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def fake_influx() -> Iterator[FakeInflux]:
    server = FakeInflux([503, 429, 401])
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_poisoned_lines_skipped_failures_retried(fake_influx: FakeInflux, tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    readings = [Reading(T0 + i, "poison-1" if i % 97 == 0 else "grid", "power_w", float(i)) for i in range(1000)]
    poisoned = sum(r.device == "poison-1" for r in readings)
    assert poisoned == 11
    with GroupCommitWriter(path) as writer:
        writer.put(readings[:10])  # the sink starts with a journal that already has rows
        writer.flush()
        asyncio.run(_deliver_async(path, fake_influx.url, writer, readings[10:]))
        last = writer.committed_seq

    with Journal(path) as journal:
        assert journal.cursor("tsdb") == last == 1000
    assert fake_influx.statuses[:3] == [503, 429, 401]
    assert len(fake_influx.accepted) == len(set(fake_influx.accepted)) == 1000 - poisoned
    assert not any("poison" in line for line in fake_influx.accepted)


async def _deliver_async(path: Path, url: str, writer: GroupCommitWriter, readings: list[Reading]) -> None:
    # poll_s is long: only notify() wakes the sink, as the app wires it.
    async with sink(path, url, poll_s=60, batch_size=400) as s:
        writer.add_listener(lambda seq: s.notify())
        assert await asyncio.to_thread(s.wait_delivered, 10, 5)
        writer.put(readings)
        seq = await asyncio.to_thread(writer.flush)
        assert await asyncio.to_thread(s.wait_delivered, seq, 10)
        health = s.health
        assert health.retries == 3 and health.connected
        assert health.rejected == {"http_400": 11}
        assert health.points_written == 1000 - 11
        assert health.last_error == "HTTP 401: status 401"
