"""`commonwatt replay` and `commonwatt energy report` on a recorded morning, through the real commands."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from gateway.cli_energy import energy_app, replay
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
    assert " on laser" in result.output and "ada" not in result.output
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
    from gateway.energy_report import today_line

    line = today_line(config_file.parent / "journal.sqlite", DAY0 + 43_000)
    assert line.startswith("energy today: consumption ") and "self-sufficiency" in line
