"""`commonwatt demo` as the README's first command runs it (for a few seconds)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gateway.journal import Journal

ROOT = Path(__file__).resolve().parent.parent.parent


def test_demo_runs_and_journals_every_device(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "demo", "--seconds", "9", "--api-port", "0", "--folder", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "commonwatt demo" in out.stdout and "grid" in out.stdout
    with Journal(tmp_path / "commonwatt.sqlite", readonly=True) as journal:
        stats = journal.stats()
    expected = {"grid", "laser", "printer", "cnc", "roof-pv", "battery", "mppt", "shunt", "door-reader"}
    assert expected <= set(stats.devices), sorted(stats.devices)
    assert ("door-reader", "badge") in stats.series
    assert ("battery", "soc_pct") in stats.series and ("roof-pv", "power_w") in stats.series
