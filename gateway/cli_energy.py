"""`commonwatt energy report` and `commonwatt replay`: the energy tables from the command line.

`replay` rebuilds the energy interval tables from the journal (all of it, or a period) with
a progress bar; stop the gateway first. `energy report` prints a period's balance and who
used it from which source, and writes a PNG chart with `--png`. Exit 2 for a bad
configuration or bad usage, 1 when the database cannot be read.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from gateway.cli_people import load_or_exit
from gateway.journal import JournalError

energy_app = typer.Typer(no_args_is_help=True, help="The site's energy balance: reports and charts.")

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="commonwatt.toml")]
_TIME = "ISO 8601 (2025-06-01, 2025-06-01T08:00:00Z; naive is UTC) or unix seconds"


def parse_time(name: str, text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a time; use {_TIME}", param_hint=name) from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def replay(
    config: ConfigOpt = Path("commonwatt.toml"),
    start: Annotated[str | None, typer.Option("--from", help=f"first interval: {_TIME}")] = None,
    end: Annotated[str | None, typer.Option("--to", help="end (excluded)")] = None,
) -> None:
    """Rebuild the energy interval tables from the journal. Stop the gateway first."""
    from gateway.energy_service import replay_journal

    cfg = load_or_exit(config)
    since, until = parse_time("--from", start), parse_time("--to", end)
    console = Console(stderr=True)
    columns = (TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    try:
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("journal", total=None)
            summary = replay_journal(
                cfg,
                since=since,
                until=until,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
    except (JournalError, sqlite3.Error) as exc:
        typer.echo(f"error: {cfg.journal.path}: {exc}", err=True)
        raise typer.Exit(1) from None
    rate = summary.readings / summary.seconds if summary.seconds else 0.0
    typer.echo(
        f"{summary.intervals:,} intervals from {summary.readings:,} readings in {summary.seconds:,.1f} s "
        f"({rate:,.0f} readings/s)"
    )


@energy_app.command("report")
def report(
    start: Annotated[str, typer.Option("--from", help=f"period start: {_TIME}")],
    end: Annotated[str | None, typer.Option("--to", help="period end (excluded); default now")] = None,
    png: Annotated[Path | None, typer.Option("--png", help="also write a chart to this PNG file")] = None,
    names: Annotated[bool, typer.Option("--names", help="members by id rather than by pseudonym")] = False,
    config: ConfigOpt = Path("commonwatt.toml"),
) -> None:
    """The period's balance, flows, source mix, ratios, CO₂, and each consumer's energy by source."""
    from gateway.energy_report import print_report, write_png

    cfg = load_or_exit(config)
    since = parse_time("--from", start)
    until = parse_time("--to", end) or time.time()
    assert since is not None
    if until <= since:
        raise typer.BadParameter("the period ends before it starts", param_hint="--to")
    try:
        print_report(Console(), cfg.journal.path, since, until, names=names)
        if png is not None:
            write_png(cfg.journal.path, png, since, until, names=names)
            typer.echo(f"chart written to {png}")
    except sqlite3.Error as exc:
        typer.echo(f"error: {cfg.journal.path}: {exc}", err=True)
        raise typer.Exit(1) from None
