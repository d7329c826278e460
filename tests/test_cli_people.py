"""`commonwatt members|badges|trainings|tokens`, through the Typer apps the main command mounts."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import typer
from typer.testing import CliRunner, Result

from gateway.cli_people import badges_app, members_app, tokens_app, trainings_app
from gateway.people import People

runner = CliRunner()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "commonwatt.toml"
    path.write_text('[site]\nid = "lab"\ntimezone = "Europe/Brussels"\n[journal]\npath = "var/lab.sqlite"\n')
    return path


def run(app: typer.Typer, config: Path, *args: str) -> Result:
    return runner.invoke(app, [*args, "--config", str(config)])


def ok(app: typer.Typer, config: Path, *args: str) -> Result:
    result = run(app, config, *args)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


def as_json(app: typer.Typer, config: Path, *args: str) -> Any:
    return json.loads(ok(app, config, *args, "--json").stdout)


def test_members_add_list_disable_enable(config: Path) -> None:
    assert (
        "added member ada"
        in ok(members_app, config, "add", "ada", "Ada Lovelace", "-r", "member", "-r", "trainer").stdout
    )
    ok(members_app, config, "add", "bob", "Bob")
    ok(badges_app, config, "assign", "04:a1:b2:c3", "ada")
    assert as_json(members_app, config, "list") == [
        {
            "id": "ada",
            "name": "Ada Lovelace",
            "status": "active",
            "roles": ["member", "trainer"],
            "badges": ["04A1B2C3"],
        },
        {"id": "bob", "name": "Bob", "status": "active", "roles": ["member"], "badges": []},
    ]
    assert "is inactive" in ok(members_app, config, "disable", "bob").stdout
    assert [m["id"] for m in as_json(members_app, config, "list", "--status", "inactive")] == ["bob"]
    ok(members_app, config, "enable", "bob")
    table = ok(members_app, config, "list").stdout
    assert "Ada Lovelace" in table and "04A1B2C3" in table and "2 member(s)" in table


def test_refusals_are_one_line_and_exit_1(config: Path) -> None:
    ok(members_app, config, "add", "ada", "Ada")
    for app, args, reason in [
        (members_app, ("add", "ada", "Ada again"), "already exists"),
        (members_app, ("add", "Bad Id", "X"), "member id"),
        (members_app, ("add", "zed", "Zed", "--role", "wizard"), "unknown role"),
        (members_app, ("disable", "nobody"), "no member"),
        (badges_app, ("assign", "04A1", "nobody"), "no member"),
        (badges_app, ("revoke", "FFFF"), "no badge"),
        (trainings_app, ("revoke", "ada", "laser"), "does not hold"),
        (tokens_app, ("create", "--role", "member"), "belongs to a member"),
        (tokens_app, ("revoke", "0000000000"), "no token"),
    ]:
        result = run(app, config, *args)
        assert result.exit_code == 1, (args, result.stdout, result.stderr)
        assert result.stderr.startswith("error: ") and reason in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1


def test_bad_usage_and_bad_config_exit_2(config: Path, tmp_path: Path) -> None:
    assert run(members_app, config, "list", "--status", "gone").exit_code == 2
    ok(members_app, config, "add", "ada", "Ada")
    assert run(trainings_app, config, "grant", "ada", "laser", "--expires", "next week").exit_code == 2
    assert run(members_app, config, "add", "only-an-id").exit_code == 2
    bad = tmp_path / "bad.toml"
    bad.write_text('[site]\nid = "Fab Lab"\n')
    result = run(members_app, bad, "list")
    assert result.exit_code == 2 and "site.id" in result.stderr


def test_badges_assign_conflict_revoke_and_list(config: Path) -> None:
    ok(members_app, config, "add", "ada", "Ada")
    ok(members_app, config, "add", "bob", "Bob")
    ok(badges_app, config, "assign", "04a1b2c3", "ada")
    result = run(badges_app, config, "assign", "04A1B2C3", "bob")
    assert result.exit_code == 1 and "active for member 'ada'" in result.stderr
    assert "is lost" in ok(badges_app, config, "revoke", "04A1B2C3", "--lost").stdout
    ok(badges_app, config, "assign", "04A1B2C3", "bob")
    ok(badges_app, config, "assign", "0A0B", "ada")
    assert as_json(badges_app, config, "list", "--member", "bob") == [
        {"uid": "04A1B2C3", "member_id": "bob", "status": "active"}
    ]
    assert "2 badge(s)" in ok(badges_app, config, "list").stdout


def test_members_import_all_or_nothing(config: Path, tmp_path: Path) -> None:
    good = tmp_path / "members.csv"
    good.write_text("id,name,roles,badge,trainings\nada,Ada,member;trainer,04A1B2C3,laser\ngrace,Grace,,,\n")
    first = ok(members_app, config, "import", str(good)).stdout
    assert "2 added, 0 updated, 0 unchanged; 1 badge(s) assigned, 1 training(s) granted" in first
    assert "0 added, 0 updated, 2 unchanged" in ok(members_app, config, "import", str(good)).stdout
    bad = tmp_path / "bad.csv"
    bad.write_text("id,name\nok,Fine\nBAD,Someone\ncarl,\n")
    result = run(members_app, config, "import", str(bad))
    assert result.exit_code == 1
    assert "line 3: member id 'BAD'" in result.stderr and "line 4: the name is empty" in result.stderr
    assert "nothing was imported" in result.stderr
    assert [m["id"] for m in as_json(members_app, config, "list")] == ["ada", "grace"]
    missing = run(members_app, config, "import", str(tmp_path / "missing.csv"))
    assert missing.exit_code == 1 and "cannot read" in missing.stderr


def test_trainings_grant_with_expiry_in_the_site_time_zone(config: Path) -> None:
    ok(members_app, config, "add", "ada", "Ada")
    out = ok(trainings_app, config, "grant", "ada", "laser", "--expires", "2099-06-30", "--by", "bob").stdout
    assert "ada holds training laser until 2099-06-30T22:00:00.000Z (granted by bob)" in out
    ok(trainings_app, config, "grant", "ada", "cnc")
    listed = as_json(trainings_app, config, "list", "--member", "ada")
    assert isinstance(listed, list)
    assert [(t["training"], t["expires_at"]) for t in listed] == [
        ("cnc", None),
        ("laser", dt.datetime(2099, 7, 1, tzinfo=ZoneInfo("Europe/Brussels")).timestamp()),
    ]
    assert listed[0]["granted_by"].startswith("cli")
    ok(trainings_app, config, "revoke", "ada", "cnc")
    assert "1 training(s)" in ok(trainings_app, config, "list").stdout


def test_tokens_are_shown_once_and_work(config: Path, tmp_path: Path) -> None:
    ok(members_app, config, "add", "ada", "Ada")
    result = ok(tokens_app, config, "create", "--role", "member", "--member", "ada")
    token = result.stdout.strip()
    token_id = token.split("_")[1]
    assert "shown only once" in result.stderr and token not in result.stderr
    listed = as_json(tokens_app, config, "list")
    assert isinstance(listed, list) and [(t["id"], t["role"], t["member_id"]) for t in listed] == [
        (token_id, "member", "ada")
    ]
    assert token.split("_")[2] not in json.dumps(listed)
    with People(tmp_path / "var" / "lab.sqlite") as people:
        assert people.authenticate(token) is not None
    ok(tokens_app, config, "revoke", token_id)
    with People(tmp_path / "var" / "lab.sqlite") as people:
        assert people.authenticate(token) is None
    assert token_id in ok(tokens_app, config, "list").stdout
