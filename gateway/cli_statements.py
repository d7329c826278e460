"""`commonwatt statement` and `commonwatt report community`: a month on paper, in CSV, JSON or HTML.

Both read the database file of the configuration (`--config`) and never write to the
ledger. Exit 0 when the document is written (standard output, or `--out FILE`), 1 when
it cannot be made (an unknown member, a database without a ledger), 2 for a bad month,
format or configuration. Months are cut at local midnight in `site.timezone`.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Annotated

import typer

from gateway.audit import AuditError
from gateway.cli_people import ConfigOpt, fail, load_or_exit
from gateway.statements import (
    FORMATS,
    StatementError,
    community_report,
    member_statement,
    month_of,
    open_audit_log,
    render,
)

report_app = typer.Typer(no_args_is_help=True, help="Monthly reports: the community's energy and credits.")

DEFAULT_CONFIG = Path("commonwatt.toml")
MonthOpt = Annotated[str, typer.Option("--month", help="YYYY-MM, in the site's time zone")]
FormatOpt = Annotated[str, typer.Option("--format", "-f", help="csv, json or html")]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="write here instead of standard output")]


def _check_usage(month: str, fmt: str) -> None:
    if fmt not in FORMATS:
        fail(f"--format {fmt!r}: one of {', '.join(FORMATS)}", 2)
    try:
        month_of(month, "UTC")
    except StatementError as exc:
        fail(f"--month: {exc}", 2)


def _write(text: str, out: Path | None) -> None:
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        typer.echo(f"written to {out}", err=True)


def statement(
    member: Annotated[str, typer.Argument(help="member id")],
    month: MonthOpt,
    fmt: FormatOpt = "json",
    out: OutOpt = None,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """A member's month: sessions, kWh by source, CO₂, credits, balance, and the proofs."""
    _check_usage(month, fmt)
    cfg = load_or_exit(config)
    log = open_audit_log(cfg)
    try:
        doc = member_statement(cfg, member, month, inclusion=None if log is None else log.inclusion)
    except (StatementError, AuditError, sqlite3.Error) as exc:
        fail(str(exc))
    finally:
        if log is not None:
            log.close()
    _write(render(doc, fmt), out)


@report_app.command("community")
def community(
    month: MonthOpt,
    names: Annotated[bool, typer.Option("--names", help="members by name (operators only), not by pseudonym")] = False,
    fmt: FormatOpt = "json",
    out: OutOpt = None,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """The community's month: energy balance and residuals, base load, credits issued and spent, balances."""
    _check_usage(month, fmt)
    cfg = load_or_exit(config)
    try:
        doc = community_report(cfg, month, names=names)
    except (StatementError, sqlite3.Error) as exc:
        fail(str(exc))
    _write(render(doc, fmt), out)
