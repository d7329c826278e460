"""How fast the journal takes records: batched through GroupCommitWriter vs one row per transaction.

Run: .venv/bin/python bench/journal.py [--records N]
Prints rows/s for each way of writing, measured in the same run on the same disk, and
how long `Journal.stats()` takes on the result.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from gateway.journal import GroupCommitWriter, Journal
from gateway.model import Reading


def make_readings(n: int) -> list[Reading]:
    start = time.time()
    return [Reading(start + i * 0.001, f"dev{i % 40}", "power_w", float(i)) for i in range(n)]


def one_per_transaction(path: Path, readings: list[Reading]) -> float:
    with Journal(path) as journal:
        started = time.perf_counter()
        for reading in readings:
            journal.append([reading])
        return len(readings) / (time.perf_counter() - started)


def batched(path: Path, readings: list[Reading], batch: int) -> float:
    with Journal(path) as journal:
        started = time.perf_counter()
        for i in range(0, len(readings), batch):
            journal.append(readings[i : i + batch])
        return len(readings) / (time.perf_counter() - started)


def group_commit(path: Path, readings: list[Reading], per_put: int) -> float:
    """Sources put a few records per message; the writer thread batches them."""
    with GroupCommitWriter(path) as writer:
        started = time.perf_counter()
        for i in range(0, len(readings), per_put):
            writer.put(readings[i : i + per_put])
        writer.flush()
        return len(readings) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    args = parser.parse_args()
    readings = make_readings(args.records)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = [
            ("one row per transaction", one_per_transaction(folder / "single.db", readings[:20_000])),
            ("Journal.append, 1000 per transaction", batched(folder / "batched.db", readings, 1000)),
            ("GroupCommitWriter, 5 per put", group_commit(folder / "group.db", readings, 5)),
        ]
        with Journal(folder / "group.db") as journal:
            started = time.perf_counter()
            journal.stats()
            stats_ms = (time.perf_counter() - started) * 1000
    baseline = rows[0][1]
    for label, rate in rows:
        print(f"{label:40s} {rate:>10,.0f} rows/s  x{rate / baseline:5.1f}")
    print(f"Journal.stats() on {args.records:,} rows: {stats_ms:.2f} ms")


if __name__ == "__main__":
    main()
