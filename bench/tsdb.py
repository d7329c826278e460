"""How fast readings reach VictoriaMetrics: our line-protocol formatter vs influxdb-client `Point`s.

Run from the repository root: .venv/bin/python -m bench.tsdb [--points N]
Starts a private VictoriaMetrics on a free loopback port (tests/services.py) and prints,
measured in the same run:
- the formatter alone (journal rows -> line protocol), rows/s;
- formatter + synchronous write of pre-formatted batches, points/s;
- influxdb-client `Point` objects built and written synchronously, points/s;
- the whole sink, journal to VictoriaMetrics (TsdbSink), points/s.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write.point import Point
from influxdb_client.client.write_api import SYNCHRONOUS, WriteApi
from influxdb_client.domain.write_precision import WritePrecision

from gateway.journal import Journal, Row
from gateway.model import Reading
from gateway.sinks.lineprotocol import LineFormatter
from gateway.sinks.tsdb import TsdbSink
from tests.services import VictoriaMetrics

BATCH = 20000
MS = WritePrecision.MS


def make_rows(n: int, start: float) -> list[Row]:
    return [(i + 1, start + i * 0.001, f"dev{i % 40}", "power_w", float(i), None) for i in range(n)]


def timed(n: int, work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return n / (time.perf_counter() - started)


def formatted(api: WriteApi, rows: list[Row]) -> None:
    formatter = LineFormatter(site="lab", device_tags={f"dev{i}": {"role": "machine"} for i in range(40)})
    for i in range(0, len(rows), BATCH):
        body = "\n".join(formatter.format(rows[i : i + BATCH]).lines).encode()
        api.write(bucket="commonwatt", record=body, write_precision=MS)  # type: ignore[arg-type]


def point(row: Row) -> Point:
    _seq, ts, device, metric, value, _text = row
    p = Point("commonwatt").tag("site", "lab").tag("device", device).tag("role", "machine")  # type: ignore[no-untyped-call]
    return p.field(metric, value).time(round(ts * 1000), MS)  # type: ignore[no-any-return]


def points(api: WriteApi, rows: list[Row]) -> None:
    for i in range(0, len(rows), BATCH):
        batch = [point(row) for row in rows[i : i + BATCH]]
        api.write(bucket="commonwatt", record=batch, write_precision=MS)  # type: ignore[arg-type]


def whole_sink(folder: Path, url: str, n: int, start: float) -> float:
    path = folder / "journal.sqlite"
    with Journal(path) as journal:
        journal.append([Reading(start + i * 0.001, f"dev{i % 40}", "energy_wh", float(i)) for i in range(n)])
    sink = TsdbSink(journal_path=path, url=url, site="lab")
    started = time.perf_counter()
    with sink:
        sink.wait_delivered(n, 600)
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=200_000)
    n = parser.parse_args().points
    start = time.time() - 86400
    with tempfile.TemporaryDirectory() as tmp:
        vm = VictoriaMetrics(Path(tmp) / "vm").start()
        try:
            client = InfluxDBClient(url=vm.url, token="", org="")
            api = client.write_api(write_options=SYNCHRONOUS)
            rows = make_rows(n, start)
            fmt = LineFormatter(site="lab")
            print(f"formatter only:            {timed(n, lambda: fmt.format(rows)):>10,.0f} rows/s")
            print(f"formatter + write:         {timed(n, lambda: formatted(api, rows)):>10,.0f} points/s")
            few = make_rows(n // 4, start + 3600)
            print(f"Point objects + write:     {timed(len(few), lambda: points(api, few)):>10,.0f} points/s")
            print(f"TsdbSink, journal to VM:   {whole_sink(Path(tmp), vm.url, n, start + 7200):>10,.0f} points/s")
            client.close()  # type: ignore[no-untyped-call]
        finally:
            vm.stop()


if __name__ == "__main__":
    main()
