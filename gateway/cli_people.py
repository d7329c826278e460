"""`commonwatt members|badges|trainings|tokens`: people admin from the command line.

Each command opens the people store in the database file of the configuration
(`--config`), makes one change or listing, and exits: 0 when done, 1 with a one-line
reason when the store refuses (unknown member, badge in use...), 2 for a bad
configuration or bad usage. Changes are journaled with the actor `cli:<user>`.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, NoReturn
from zoneinfo import ZoneInfo

import typer
from rich.console import Console
from rich.table import Table

from gateway.config import Config, ConfigError, load_config
from gateway.journal import JournalError
from gateway.model import iso
from gateway.people import MEMBER_STATUSES, People, PeopleError, PeopleImportError

members_app = typer.Typer(no_args_is_help=True, help="Members: add, import from CSV, list, disable.")
badges_app = typer.Typer(no_args_is_help=True, help="Badges: assign to members, revoke, list.")
trainings_app = typer.Typer(no_args_is_help=True, help="Trainings: grant, revoke, list.")
tokens_app = typer.Typer(no_args_is_help=True, help="API bearer tokens: create, revoke, list.")

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="commonwatt.toml")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]
MemberOpt = Annotated[str | None, typer.Option("--member", "-m", help="only this member")]


def load_or_exit(path: Path) -> Config:
    """The validated configuration, or every problem on standard error and exit 2."""
    try:
        return load_config(path)
    except ConfigError as exc:
        typer.echo(f"{exc.source}: the configuration has {len(exc.problems)} problem(s):", err=True)
        for problem in exc.problems:
            typer.echo(f"  {problem}", err=True)
        raise typer.Exit(2) from None


def fail(message: str, code: int = 1) -> NoReturn:
    """`error: <message>` on standard error and exit `code` (1: refused, 2: bad configuration or usage)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def cli_actor() -> str:
    """Who a command's changes are recorded as: `cli:<user>`, or `cli` when the user has no name."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):
        return "cli"


@contextmanager
def _store(config: Path) -> Iterator[tuple[Config, People]]:
    """The configuration and its people store; the store's refusals become exit 1."""
    cfg = load_or_exit(config)
    try:
        people = People(cfg.journal.path)
    except (JournalError, PeopleError, sqlite3.Error) as exc:
        fail(f"{cfg.journal.path}: {exc}")
    try:
        yield cfg, people
    except PeopleImportError as exc:
        typer.echo(f"error: {exc}:", err=True)
        for problem in exc.problems:
            typer.echo(f"  {problem}", err=True)
        raise typer.Exit(1) from None
    except (PeopleError, sqlite3.Error) as exc:
        fail(str(exc))
    finally:
        people.close()


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True))


def _when(ts: float | None, empty: str = "—") -> str:
    return empty if ts is None else iso(ts)


# -- members -----------------------------------------------------------------------------------


@members_app.command("add")
def members_add(
    member_id: Annotated[str, typer.Argument(metavar="ID", help="short id: lower-case letters, digits, . _ -")],
    name: Annotated[str, typer.Argument(help="full name")],
    role: Annotated[list[str] | None, typer.Option("--role", "-r", help="a role (repeat for several)")] = None,
    config: ConfigOpt = Path("commonwatt.toml"),
) -> None:
    """Add a member (active; role `member` unless --role is given)."""
    with _store(config) as (_cfg, people):
        m = people.add_member(member_id, name, roles=role or ("member",), actor=cli_actor())
    typer.echo(f"added member {m.id} ({m.name}), roles {', '.join(sorted(m.roles))}")


@members_app.command("import")
def members_import(
    file: Annotated[Path, typer.Argument(help="CSV with a header: id,name[,roles,badge,trainings]")],
    config: ConfigOpt = Path("commonwatt.toml"),
) -> None:
    """Add and update members from a CSV, all or nothing; every problem is listed with its line number."""
    try:
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {file}: {exc}")
    with _store(config) as (_cfg, people):
        r = people.import_csv(text, actor=cli_actor())
    typer.echo(
        f"{file}: {len(r.added)} added, {len(r.updated)} updated, {len(r.unchanged)} unchanged; "
        f"{len(r.badges_assigned)} badge(s) assigned, {len(r.trainings_granted)} training(s) granted"
    )


@members_app.command("list")
def members_list(
    status: Annotated[str | None, typer.Option(help="active or inactive")] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = Path("commonwatt.toml"),
) -> None:
    """Members with their status, roles and badges."""
    if status is not None and status not in MEMBER_STATUSES:
        fail(f"--status {status!r}: use active or inactive", 2)
    with _store(config) as (_cfg, people):
        members = people.members(status=status)
        badges: dict[str, list[str]] = {}
        for b in people.badges():
            if b.status == "active":
                badges.setdefault(b.member_id, []).append(b.uid)
    if as_json:
        _print_json([{**asdict(m), "roles": sorted(m.roles), "badges": badges.get(m.id, [])} for m in members])
        return
    table = Table("id", "name", "status", "roles", "active badges", title=f"{len(members)} member(s)")
    for m in members:
        table.add_row(m.id, m.name, m.status, ", ".join(sorted(m.roles)), " ".join(badges.get(m.id, [])))
    Console().print(table)


def _set_status(member_id: str, status: str, config: Path) -> None:
    with _store(config) as (_cfg, people):
        people.update_member(member_id, status=status, actor=cli_actor())
    typer.echo(f"member {member_id} is {status}")


@members_app.command("disable")
def members_disable(
    member_id: Annotated[str, typer.Argument(metavar="ID")], config: ConfigOpt = Path("commonwatt.toml")
) -> None:
    """Make a member inactive: badges stay assigned, but every access is denied."""
    _set_status(member_id, "inactive", config)


@members_app.command("enable")
def members_enable(
    member_id: Annotated[str, typer.Argument(metavar="ID")], config: ConfigOpt = Path("commonwatt.toml")
) -> None:
    """Make a member active again."""
    _set_status(member_id, "active", config)


# -- badges ------------------------------------------------------------------------------------


@badges_app.command("assign")
def badges_assign(
    uid: Annotated[str, typer.Argument(help="badge UID in hex, e.g. 04A1B2C3 or 04:a1:b2:c3")],
    member: Annotated[str, typer.Argument(help="member id")],
    config: ConfigOpt = Path("commonwatt.toml"),
) -> None:
    """Give a badge to a member. A badge active for someone else must be revoked first."""
    with _store(config) as (_cfg, people):
        badge = people.assign_badge(uid, member, actor=cli_actor())
    typer.echo(f"badge {badge.uid} is assigned to {badge.member_id}")


@badges_app.command("revoke")
def badges_revoke(
    uid: Annotated[str, typer.Argument(help="badge UID")],
    lost: Annotated[bool, typer.Option("--lost", help="the holder lost it (rather than: taken back)")] = False,
    config: ConfigOpt = Path("commonwatt.toml"),
) -> None:
    """Revoke a badge (or mark it lost): it opens nothing any more."""
    with _store(config) as (_cfg, people):
        badge = people.revoke_badge(uid, lost=lost, actor=cli_actor())
    typer.echo(f"badge {badge.uid} of {badge.member_id} is {badge.status}")


@badges_app.command("list")
def badges_list(
    member: MemberOpt = None, as_json: JsonOpt = False, config: ConfigOpt = Path("commonwatt.toml")
) -> None:
    """Badges, their members and status."""
    with _store(config) as (_cfg, people):
        badges = people.badges(member)
    if as_json:
        _print_json([asdict(b) for b in badges])
        return
    table = Table("uid", "member", "status", title=f"{len(badges)} badge(s)")
    for b in badges:
        table.add_row(b.uid, b.member_id, b.status)
    Console().print(table)


# -- trainings ---------------------------------------------------------------------------------


def _end_of_day(day: str, timezone: str) -> float:
    """The end of `day` (YYYY-MM-DD) in the site's time zone: a training "expiring 2025-06-30" holds all that day."""
    try:
        date = dt.date.fromisoformat(day)
    except ValueError:
        fail(f"--expires {day!r} is not a date YYYY-MM-DD", 2)
    midnight = dt.datetime.combine(date + dt.timedelta(days=1), dt.time(), tzinfo=ZoneInfo(timezone))
    return midnight.timestamp()


@trainings_app.command("grant")
def trainings_grant(
    member: Annotated[str, typer.Argument(help="member id")],
    training: Annotated[str, typer.Argument(help="training id, as machines name it in commonwatt.toml")],
    expires: Annotated[str | None, typer.Option(help="last valid day, YYYY-MM-DD (site time zone)")] = None,
    by: Annotated[str | None, typer.Option("--by", help="who grants it (trainer's member id); default: you")] = None,
    config: ConfigOpt = Path("commonwatt.toml"),
) -> None:
    """Grant (or renew) a training."""
    with _store(config) as (cfg, people):
        expires_at = None if expires is None else _end_of_day(expires, cfg.site.timezone)
        t = people.grant_training(member, training, granted_by=by or cli_actor(), at=time.time(), expires_at=expires_at)
    until = "" if t.expires_at is None else f" until {iso(t.expires_at)}"
    typer.echo(f"{t.member_id} holds training {t.training}{until} (granted by {t.granted_by})")


@trainings_app.command("revoke")
def trainings_revoke(
    member: Annotated[str, typer.Argument(help="member id")],
    training: Annotated[str, typer.Argument(help="training id")],
    config: ConfigOpt = Path("commonwatt.toml"),
) -> None:
    """Revoke a training."""
    with _store(config) as (_cfg, people):
        people.revoke_training(member, training, actor=cli_actor())
    typer.echo(f"training {training} of {member} is revoked")


@trainings_app.command("list")
def trainings_list(
    member: MemberOpt = None, as_json: JsonOpt = False, config: ConfigOpt = Path("commonwatt.toml")
) -> None:
    """Trainings held (not revoked), with who granted them and their expiry."""
    with _store(config) as (_cfg, people):
        trainings = people.trainings(member)
    if as_json:
        _print_json([asdict(t) for t in trainings])
        return
    now = time.time()
    table = Table("member", "training", "granted by", "granted", "expires", title=f"{len(trainings)} training(s)")
    for t in trainings:
        expired = t.expires_at is not None and t.expires_at <= now
        expires = _when(t.expires_at, "never") + (" (expired)" if expired else "")
        table.add_row(t.member_id, t.training, t.granted_by, iso(t.granted_at), expires)
    Console().print(table)


# -- tokens ------------------------------------------------------------------------------------


@tokens_app.command("create")
def tokens_create(
    role: Annotated[str, typer.Option("--role", "-r", help="member, trainer, operator, auditor or admin")],
    member: Annotated[str | None, typer.Option("--member", "-m", help="the member a member token belongs to")] = None,
    config: ConfigOpt = Path("commonwatt.toml"),
) -> None:
    """Create an API bearer token. It is printed once: the database keeps only its hash."""
    with _store(config) as (_cfg, people):
        token = people.create_token(role, member, actor=cli_actor())
    token_id = token.split("_")[1]
    typer.echo(token)
    typer.echo(
        f"This token is shown only once: store it now (its id is {token_id}; "
        f"`commonwatt tokens revoke {token_id}` disables it).",
        err=True,
    )


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: Annotated[str, typer.Argument(metavar="ID", help="the token's id (the part after cw_)")],
    config: ConfigOpt = Path("commonwatt.toml"),
) -> None:
    """Revoke a token: requests that carry it are refused from now on."""
    with _store(config) as (_cfg, people):
        people.revoke_token(token_id, actor=cli_actor())
    typer.echo(f"token {token_id} is revoked")


@tokens_app.command("list")
def tokens_list(as_json: JsonOpt = False, config: ConfigOpt = Path("commonwatt.toml")) -> None:
    """Tokens (ids, roles, members, use), never their secrets."""
    with _store(config) as (_cfg, people):
        tokens = people.tokens()
    if as_json:
        _print_json([asdict(t) for t in tokens])
        return
    table = Table("id", "role", "member", "created", "last used", "revoked", title=f"{len(tokens)} token(s)")
    for t in tokens:
        table.add_row(
            t.id, t.role, t.member_id or "—", iso(t.created), _when(t.last_used, "never"), _when(t.revoked_at)
        )
    Console().print(table)
