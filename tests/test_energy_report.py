"""`commonwatt replay` and `commonwatt energy report` on a recorded morning, through the real commands."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from gateway.cli_energy import energy_app, replay
from gateway.energy_report import period_balance, print_report, quality_summary, share_text, today_line
from gateway.energy_store import EnergyStore
from tests.energy_helpers import DAY0, MACHINES, record_day

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def cli() -> typer.Typer:
    """The commands as the lead mounts them on `commonwatt`."""
    app = typer.Typer()
    app.command("replay")(replay)
    app.add_typer(energy_app, name="energy")
    return app


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("site")
    text = ['[site]\nid = "lab"\n', '[journal]\npath = "journal.sqlite"\n', "[mqtt]\n", "[api]\nenabled = false\n"]
    for dev, role in [("grid", "grid"), ("pv", "pv"), ("battery", "battery")] + [
        (f"{m}_meter", "machine") for m in MACHINES
    ]:
        text.append(f'[[devices]]\nid = "{dev}"\nprotocol = "shelly_gen2"\nprefix = "shelly-{dev}"\nrole = "{role}"\n')
    text += [f'[[machines]]\nid = "{m}"\nmeter = "{m}_meter"\n' for m in MACHINES]
    path = folder / "commonwatt.toml"
    path.write_text("\n".join(text))
    record_day(folder / "journal.sqlite", hours=12)
    result = CliRunner().invoke(cli(), ["replay", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert "719 intervals" in result.output and "readings/s" in result.output
    return path


def test_report_prints_the_balance_with_members_under_pseudonyms(config_file: Path) -> None:
    args = ["energy", "report", "--from", str(DAY0), "--to", str(DAY0 + 43_200), "--config", str(config_file)]
    result = CliRunner().invoke(cli(), args)
    assert result.exit_code == 0, result.output
    assert "self-sufficiency" in result.output and "sun → load" in result.output
    assert "base load" in result.output
    assert " on laser" in result.output and not re.search(r"\bada\b", result.output)  # pseudonyms are hex
    # The replayed morning's first interval has no meter reading before it: one word for the
    # period, and the share that earned it.
    assert re.search(r"719 intervals, convention proportional,\s+quality missing", result.output), result.output
    assert re.search(r"ok\s*│\s*718\s*│\s*99\.9\s", result.output), result.output
    assert re.search(r"missing\s*│\s*1\s*│\s*0\.1\s", result.output), result.output
    assert re.search(r"estimated\s*│\s*0\s*│\s*0\.0\s", result.output), result.output
    named = CliRunner().invoke(cli(), [*args, "--names"])
    assert "ada on laser" in named.output


def test_report_writes_a_png_chart(config_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "energy.png"
    args = ["energy", "report", "--from", "2024-06-01", "--to", "2024-06-01T12:00", "--png", str(out)]
    result = CliRunner().invoke(cli(), [*args, "--config", str(config_file)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(PNG_MAGIC) and out.stat().st_size > 10_000


@pytest.mark.parametrize(
    ("args", "code"),
    [(["--from", "yesterday-ish"], 2), (["--from", str(DAY0), "--to", str(DAY0 - 1)], 2)],
)
def test_bad_periods_are_usage_errors(config_file: Path, args: list[str], code: int) -> None:
    result = CliRunner().invoke(cli(), ["energy", "report", *args, "--config", str(config_file)])
    assert result.exit_code == code


def test_the_demo_line_shows_the_days_balance(config_file: Path) -> None:
    line = today_line(config_file.parent / "journal.sqlite", DAY0 + 43_000)
    assert line.startswith("energy today: consumption ") and "self-sufficiency" in line
    assert line.endswith("(intervals 99.9 % ok, 0.1 % missing)")


@pytest.fixture
def flagged(config_file: Path, tmp_path: Path) -> Path:
    """A copy of the replayed tables with intervals of every quality, some with several flags.

    Flags are a bit set (estimated 1, integrated 2, missing 4); an interval counts under its
    worst. On top of the morning's first interval (missing): 10 estimated, 5 integrated,
    3 integrated and estimated, 2 missing and estimated.
    """
    copy = tmp_path / "flagged.sqlite"
    with sqlite3.connect(config_file.parent / "journal.sqlite") as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    with sqlite3.connect(copy) as conn:
        starts = [r[0] for r in conn.execute("SELECT start FROM energy_intervals WHERE flags = 0 ORDER BY start")]
        for flags, n in ((1, 10), (2, 5), (3, 3), (5, 2)):
            conn.executemany("UPDATE energy_intervals SET flags = ? WHERE start = ?", [(flags, s) for s in starts[:n]])
            starts = starts[n:]
    return copy


def test_intervals_are_counted_by_their_worst_flag(flagged: Path) -> None:
    with EnergyStore(flagged) as store:
        p = period_balance(store.intervals(DAY0, DAY0 + 43_200))
    assert p.quality == "missing"
    assert p.quality_counts == {"ok": 698, "estimated": 10, "integrated": 8, "missing": 3}
    assert sum(p.quality_counts.values()) == p.intervals == 719
    assert quality_summary(p.quality_counts) == "97.1 % ok, 1.4 % estimated, 1.1 % integrated, 0.4 % missing"
    console = Console(record=True, width=120)
    print_report(console, flagged, DAY0, DAY0 + 43_200)
    text = console.export_text()
    for quality, n, share in (("ok", 698, "97.1"), ("estimated", 10, "1.4"), ("integrated", 8, "1.1")):
        assert re.search(rf"{quality}\s*│\s*{n}\s*│\s*{re.escape(share)}\s", text), text
    assert today_line(flagged, DAY0 + 43_000).endswith(
        "(intervals 97.1 % ok, 1.4 % estimated, 1.1 % integrated, 0.4 % missing)"
    )


@pytest.mark.parametrize(
    ("n", "total", "text"),
    [(1, 40, "2.5"), (0, 10, "0.0"), (10, 10, "100.0"), (1, 44_640, "<0.1"), (44_639, 44_640, ">99.9"), (0, 0, None)],
)
def test_a_share_is_never_rounded_to_none_or_all(n: int, total: int, text: str | None) -> None:
    assert share_text(n, total) == text


def test_a_period_without_intervals_says_so() -> None:
    p = period_balance([])
    assert p.quality == "ok" and p.quality_counts == {"ok": 0, "estimated": 0, "integrated": 0, "missing": 0}
    assert quality_summary(p.quality_counts) == "no intervals"
