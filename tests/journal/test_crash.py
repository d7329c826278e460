"""The journal survives kill -9 of the gateway in the middle of writing.

A child process writes continuously through GroupCommitWriter (and moves a cursor
now and then) and is SIGKILLed at a random moment, several rounds in a row on the
same file. Afterwards the file must be intact, its seqs without holes, each round's
records a gap-free prefix of what that round put, the series summary consistent with
the rows, and the journal must take new appends.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from gateway.journal import GroupCommitWriter, Journal
from gateway.model import Reading

CHILD = """
import sys
from gateway.journal import GroupCommitWriter, Journal
from gateway.model import Reading

path, device = sys.argv[1], sys.argv[2]
writer = GroupCommitWriter(path, max_batch=200, max_delay=0.002)
writer.start()
cursors = Journal(path)
n = 0
while True:
    writer.put([Reading(float(n + i), device, "energy_wh", float(n + i)) for i in range(20)])
    n += 20
    if n == 200:
        writer.flush()
        print("ready", flush=True)
    if n % 1000 == 0:
        cursors.set_cursor("crash-test", writer.committed_seq)
"""

ROUNDS = 5


def _run_and_kill(path: Path, device: str, rng: random.Random) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), device],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.01, 0.2))
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL


def _check_file(path: Path, rounds: int) -> int:
    with Journal(path) as journal:
        assert journal.integrity_check() == "ok"
        conn = sqlite3.connect(path)
        count, low, high = conn.execute("SELECT count(*), min(seq), max(seq) FROM records").fetchone()
        assert (low, high) == (1, count), "seqs must run 1..n without holes"
        for r in range(rounds):
            values = [v for (v,) in conn.execute("SELECT value FROM records WHERE device = ? ORDER BY seq", (f"r{r}",))]
            assert len(values) >= 200
            assert values == [float(i) for i in range(len(values))], f"round {r} lost records in the middle"
        summary = dict(conn.execute("SELECT device, count FROM series").fetchall())
        actual = dict(conn.execute("SELECT device, count(*) FROM records GROUP BY device").fetchall())
        assert summary == actual
        conn.close()
        assert 0 < journal.cursor("crash-test") <= count
        return int(count)


def test_sigkill_while_writing_leaves_an_intact_journal(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    for r in range(ROUNDS):
        _run_and_kill(path, f"r{r}", rng)
    count = _check_file(path, ROUNDS)
    with Journal(path) as journal:
        assert journal.append([Reading(0.0, "after", "power_w", 1.0)]) == count + 1, f"seed {seed}"
    with GroupCommitWriter(path) as writer:
        writer.put([Reading(0.0, "after", "power_w", 2.0)])
        assert writer.flush(timeout=5) == count + 2
