"""`commonwatt ledger`: balances, contributions, allowances and reversals from the command line.

Each command opens the ledger in the database file of the configuration (`--config`),
under the configuration's `[pricing]`, makes one change or listing, and exits: 0 when
done, 1 with a one-line reason when the ledger refuses (an unknown member, a second
approval by the same operator, a reversal of a reversal), 2 for a bad configuration.
Changes are recorded with the actor `cli:<user>`; amounts are typed in credits
("12.5") and shown in credits, exactly.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from gateway.cli_people import ConfigOpt, JsonOpt, cli_actor, fail, load_or_exit
from gateway.ledger import Ledger, LedgerError, mcr, member_account
from gateway.ledger_service import format_credits
from gateway.people import People

ledger_app = typer.Typer(no_args_is_help=True, help="The credit ledger: balances, contributions, allowances.")
contributions_app = typer.Typer(no_args_is_help=True, help="Contributions: grant, approve, list.")
allowances_app = typer.Typer(no_args_is_help=True, help="Monthly allowances: issue.")
ledger_app.add_typer(contributions_app, name="contributions")
ledger_app.add_typer(allowances_app, name="allowances")

DEFAULT_CONFIG = Path("commonwatt.toml")
_AMOUNT = re.compile(r"\d{1,9}(\.\d{1,3})?")
_MONTH = re.compile(r"\d{4}-(0[1-9]|1[0-2])")


@contextmanager
def _ledger(config: Path) -> Iterator[tuple[Ledger, Path]]:
    """The ledger of the configuration; its refusals become exit 1."""
    cfg = load_or_exit(config)
    path = Path(cfg.journal.path)
    try:
        ledger = Ledger(path, cfg.pricing)
    except (LedgerError, sqlite3.Error) as exc:
        fail(f"{path}: {exc}")
    try:
        yield ledger, path
    except (LedgerError, sqlite3.Error) as exc:
        fail(str(exc))
    finally:
        ledger.close()


def _known_member(path: Path, member: str) -> None:
    with People(path) as people:
        if people.member(member) is None:
            fail(f"no member {member!r}")


@ledger_app.command("balance")
def balance(member: str, config: ConfigOpt = DEFAULT_CONFIG, as_json: JsonOpt = False) -> None:
    """A member's balance and whether they may start a session."""
    with _ledger(config) as (ledger, path):
        _known_member(path, member)
        amount = ledger.running_balance(member_account(member))
        ok = ledger.can_start_session(member)
    if as_json:
        typer.echo(json.dumps({"member": member, "balance_mcr": amount, "may_start_session": ok}))
    else:
        typer.echo(f"{member}: {format_credits(amount)} credits" + ("" if ok else " (below the credit limit)"))


@contributions_app.command("grant")
def grant(
    member: str,
    amount: Annotated[str, typer.Argument(help='credits, e.g. "12.5"')],
    category: Annotated[str, typer.Option("--category", help="what was contributed: cleaning, teaching...")],
    note: Annotated[str, typer.Option("--note", help="a word on it")] = "",
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Credit a member for a contribution (above the policy's threshold it waits for approval)."""
    if not _AMOUNT.fullmatch(amount) or mcr(amount) <= 0:
        fail(f"{amount!r} is not a positive amount of credits (up to 3 decimals)", 2)
    with _ledger(config) as (ledger, path):
        _known_member(path, member)
        c = ledger.grant_contribution(member, mcr(amount), category, note, by=cli_actor())
    typer.echo(f"contribution {c.id}: {format_credits(c.amount)} credits to {c.member}, {c.status}")


@contributions_app.command("approve")
def approve(contribution: int, config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Approve a pending contribution (by another operator than the one who granted it)."""
    with _ledger(config) as (ledger, _path):
        c = ledger.approve_contribution(contribution, by=cli_actor())
    typer.echo(f"contribution {c.id}: {c.status} (transaction {c.tx_id})")


@contributions_app.command("list")
def list_contributions(
    status: Annotated[str | None, typer.Option("--status", help="pending, posted or rejected")] = None,
    config: ConfigOpt = DEFAULT_CONFIG,
    as_json: JsonOpt = False,
) -> None:
    """Contributions, oldest first."""
    with _ledger(config) as (ledger, _path):
        found = ledger.contributions(status=status)
    for c in found:
        if as_json:
            typer.echo(json.dumps({"id": c.id, "member": c.member, "amount_mcr": c.amount, "status": c.status}))
        else:
            typer.echo(f"{c.id}\t{c.member}\t{format_credits(c.amount)}\t{c.category}\t{c.status}\t{c.requested_by}")


@allowances_app.command("issue")
def issue(
    month: Annotated[str, typer.Option("--month", help="YYYY-MM")],
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Issue a month's allowance to every active member (again: nothing more is issued)."""
    if not _MONTH.fullmatch(month):
        fail(f"--month {month!r}: use YYYY-MM", 2)
    with _ledger(config) as (ledger, path):
        with People(path) as people:
            members = [m.id for m in people.members(status="active")]
        txs = ledger.issue_allowances(month, members)
    issued = sum(1 for tx in txs if tx.kind == "allowance")
    typer.echo(f"allowance {month}: {issued} member(s) hold it")


@ledger_app.command("reverse")
def reverse(
    tx: int,
    memo: Annotated[str, typer.Option("--memo", help="why (required)")],
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Undo a transaction by posting its negation."""
    if not memo.strip():
        fail("--memo: say why", 2)
    with _ledger(config) as (ledger, _path):
        done = ledger.reverse(tx, by=cli_actor(), memo=memo)
    typer.echo(f"transaction {done.id} reverses {tx}")
