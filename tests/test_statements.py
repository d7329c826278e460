"""Statements and the community report: every figure adds up, exactly, across a month boundary.

One real database is built through the real APIs: members in `People`, a recorded day of
the lab in the journal (`tests.energy_helpers.record_day`), the energy tables by
`replay_journal`, sessions charged by `Ledger.charge_session` from their attributed
shares, allowances, contributions (one approved by a second operator), a reversal, an
adjustment, and the audit log with a signed checkpoint. The site is in Pacific/Auckland
(UTC+12 in winter), so June starts at 12:00 UTC on 31 May, in the middle of the
recorded day: some sessions are May's, some June's.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from gateway.audit import check_bundle
from gateway.audit.log import AuditLog
from gateway.cli_statements import report_app, statement
from gateway.config import Config, load_config
from gateway.energy_service import replay_journal
from gateway.energy_store import EnergyStore
from gateway.journal import Journal
from gateway.ledger import Ledger, Posting, member_account
from gateway.ledger_service import ClosedSession, energy_from_shares
from gateway.people import People
from gateway.statements import (
    LINE_ORDER,
    STATEMENT_COLUMNS,
    StatementError,
    community_report,
    member_statement,
    month_of,
    open_audit_log,
    render,
)
from tests.energy_helpers import DAY0, MACHINES

MAY31 = DAY0 - 86_400  # 2024-05-31 00:00 UTC
JUNE = MAY31 + 12 * 3600  # 2024-06-01 00:00 in Auckland
MEMBERS = {"ada": "Ada Lovelace", "bob": "Bob Widlar"}

TOML = """
[site]
id = "lab"
timezone = "Pacific/Auckland"
[journal]
path = "{db}"
[mqtt]
[api]
enabled = false
[energy]
co2_g_per_kwh = 300
[pricing]
minimum_charge = "0.5"
contribution_approval_above = "20"
[pricing.machines.laser]
busy_per_hour = "6"
idle_per_hour = "1.5"
[pricing.default_rate]
busy_per_hour = "2"
[pricing.energy]
sun = "0.1"
battery = "0.2"
grid = "0.4"
[pricing.allowance]
amount = "10"
{devices}
"""


def _toml(db: Path) -> str:
    roles = {"grid": "grid", "pv": "pv", "battery": "battery", **{f"{m}_meter": "machine" for m in MACHINES}}
    devices = "".join(
        f'[[devices]]\nid = "{d}"\nprotocol = "shelly_gen2"\nprefix = "shelly-{d}"\nrole = "{r}"\n'
        for d, r in roles.items()
    )
    devices += "".join(f'[[machines]]\nid = "{m}"\nmeter = "{m}_meter"\n' for m in MACHINES)
    return TOML.format(db=db, devices=devices)


class Clock:
    def __init__(self) -> None:
        self.now = float(MAY31 - 20 * 86_400)

    def __call__(self) -> float:
        return self.now


def _charge_sessions(config: Config, ledger: Ledger, clock: Clock) -> None:
    with Journal(config.journal.path) as journal:
        bodies = [json.loads(str(r[5])) for r in journal.events("event.session_closed")]
    with EnergyStore(config.journal.path) as store:
        for body in sorted(bodies, key=lambda b: b["end"]):
            s = ClosedSession.from_event(body)
            shares = store.member_shares(s.member_id, s.start - 60, s.end + 60)
            e = energy_from_shares(shares, s, config.energy.intensity())
            clock.now = s.end + 30
            busy = int(s.end - s.start)
            ledger.charge_session(
                s.session_id, s.member_id, s.machine_id, busy_s=busy, idle_s=busy // 5,
                mwh_by_source=e.priced(), co2_mg=e.co2_mg,
            )  # fmt: skip


def _build(tmp: Path) -> tuple[Config, Path]:
    from tests.energy_helpers import record_day

    db = tmp / "journal.sqlite"
    (tmp / "commonwatt.toml").write_text(_toml(db))
    config = load_config(tmp / "commonwatt.toml")
    with People(db) as people:
        for mid, name in MEMBERS.items():
            people.add_member(mid, name)
    record_day(db, day0=MAY31, hours=17)
    replay_journal(config, workers=1)
    clock = Clock()
    with Ledger(db, config.pricing, clock=clock) as ledger:
        ledger.issue_allowances("2024-05", MEMBERS)
        clock.now = MAY31 - 5 * 86_400
        ledger.grant_contribution("ada", 5_000, "cleaning", "laser bed", by="op-1")
        _charge_sessions(config, ledger, clock)
        clock.now = JUNE + 600
        ledger.issue_allowances("2024-06", MEMBERS)
        big = ledger.grant_contribution("bob", 50_000, "teaching", "CNC course", by="op-1")
        clock.now = JUNE + 3600
        ledger.approve_contribution(big.id, by="op-2")
        june_charge = next(
            tx for tx in ledger.of_account(member_account("ada")) if tx.kind == "charge" and tx.ts_ms > JUNE * 1000
        )
        clock.now = MAY31 + 17 * 3600
        ledger.reverse(june_charge.id, by="op-1", memo="laser jammed")
        with AuditLog.for_config(config) as log:
            log.sync()
            log.checkpoint(clock.now)
        clock.now += 60
        ledger.adjust(
            "bob-fix",
            (Posting(member_account("bob"), 1_234), Posting("adjustments", -1_234)),
            by="op-2",
            memo="overcharge",
        )
    return config, db


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, Path]:
    return _build(tmp_path_factory.mktemp("statements"))


@pytest.fixture
def log(site: tuple[Config, Path]) -> Iterator[AuditLog]:
    found = open_audit_log(site[0])
    assert found is not None
    yield found
    found.close()


def statement_of(site: tuple[Config, Path], member: str, month: str, log: AuditLog | None = None) -> dict[str, Any]:
    return member_statement(site[0], member, month, inclusion=None if log is None else log.inclusion)


# -- months ------------------------------------------------------------------------------------


def test_a_month_is_cut_at_local_midnight() -> None:
    june = month_of("2024-06", "Pacific/Auckland")
    assert (june.since, june.until) == (JUNE, JUNE + 30 * 86_400)
    assert month_of("2024-12", "UTC").until == month_of("2025-01", "UTC").since
    with pytest.raises(StatementError):
        month_of("2024-13", "UTC")


# -- the member statement ---------------------------------------------------------------------------


@pytest.mark.parametrize("member", sorted(MEMBERS))
def test_opening_plus_postings_is_closing_and_months_chain(site: tuple[Config, Path], member: str) -> None:
    may, june = statement_of(site, member, "2024-05"), statement_of(site, member, "2024-06")
    for doc in (may, june):
        c = {k: v["mcr"] for k, v in doc["credits"].items()}
        assert c["opening"] + sum(p["amount_mcr"] for p in doc["postings"]) == c["closing"]
        assert c["closing"] == c["opening"] - c["charged"] + c["allowance"] - c["allowance_expired"] + (
            c["contributions"] + c["other"]
        )
        assert doc["postings"][-1]["balance_after_mcr"] == c["closing"]
        assert c["charged"] == doc["totals"]["charged_mcr"] == sum(s["charged_mcr"] for s in doc["sessions"])
        for s in ("sun", "battery", "grid"):
            assert doc["totals"]["mwh"][s] == sum(r["mwh"][s] for r in doc["sessions"])
        assert doc["totals"]["co2_mg"] == sum(r["co2_mg"] for r in doc["sessions"])
        assert all(isinstance(v["mcr"], int) for v in doc["credits"].values())
    assert may["credits"]["opening"]["mcr"] == 0
    assert may["credits"]["closing"] == june["credits"]["opening"]
    with Ledger(site[1], site[0].pricing) as ledger:
        assert june["credits"]["closing"]["mcr"] == ledger.balance(member_account(member))


def test_sessions_fall_in_the_month_of_local_time_and_match_the_energy_tables(site: tuple[Config, Path]) -> None:
    may, june = statement_of(site, "ada", "2024-05"), statement_of(site, "ada", "2024-06")
    assert may["sessions"] and june["sessions"]
    assert all(s["end"] < "2024-06-01T00:00:00+12:00" for s in may["sessions"])
    assert all(s["end"] >= "2024-06-01T00:00:00+12:00" for s in june["sessions"])
    with sqlite3.connect(site[1]) as conn:
        for s in may["sessions"] + june["sessions"]:
            row = conn.execute(
                "SELECT sum(energy), sum(sun), sum(battery_sun + battery_grid) FROM energy_shares WHERE session_id = ?",
                (s["session_id"],),
            ).fetchone()
            assert (s["mwh"]["sun"], s["mwh"]["battery"]) == (row[1], row[2])
            assert sum(s["mwh"].values()) == row[0]
    assert june["credits"]["other"]["mcr"] == june["sessions"][0]["charged_mcr"]  # the reversed charge, refunded
    assert june["credits"]["contributions"]["mcr"] == 0 and may["credits"]["contributions"]["mcr"] == 5_000


def test_a_contribution_counts_once_approved_and_an_adjustment_is_other(site: tuple[Config, Path]) -> None:
    june = statement_of(site, "bob", "2024-06")
    assert june["credits"]["contributions"]["mcr"] == 50_000
    assert june["credits"]["other"] == {"mcr": 1_234, "credits": "1.234"}
    assert june["credits"]["allowance"]["mcr"] == 10_000


def test_every_transaction_is_proven_or_named_as_waiting(site: tuple[Config, Path], log: AuditLog) -> None:
    june = statement_of(site, "bob", "2024-06", log)
    proofs = june["proofs"]
    proven = [json.loads(base64.b64decode(b["leaf"]))["id"] for b in proofs["bundles"]]
    waiting = [w["tx_id"] for w in proofs["not_yet_provable"]]
    assert sorted(proven + waiting) == [p["tx_id"] for p in june["postings"]]
    assert len(waiting) == 1  # the adjustment posted after the checkpoint
    for bundle in proofs["bundles"]:
        check_bundle(bundle, [log.verifier])


def test_csv_has_the_documented_columns_and_its_totals_add_up(site: tuple[Config, Path]) -> None:
    doc = statement_of(site, "ada", "2024-05")
    sessions, totals = render(doc, "csv").split("\n\n")
    rows = list(csv.DictReader(io.StringIO(sessions)))
    assert tuple(rows[0]) == STATEMENT_COLUMNS
    block = {r["item"]: r for r in csv.DictReader(io.StringIO(totals))}
    assert sum(int(r["charged_mcr"]) for r in rows) == int(block["charged_mcr"]["value"])
    assert sum(int(r["grid_mwh"]) for r in rows) == int(block["grid_mwh"]["value"])
    assert [k for k in block if k.endswith("_mcr")] == [f"{line}_mcr" for line in LINE_ORDER]
    assert block["closing_mcr"]["text"] == doc["credits"]["closing"]["credits"]


def test_html_is_self_contained_with_a_chart(site: tuple[Config, Path], log: AuditLog) -> None:
    page = render(statement_of(site, "ada", "2024-06", log), "html")
    assert "<svg" in page and "Ada Lovelace" in page and "data:application/json;base64," in page
    without_svg_ns = page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "http://" not in without_svg_ns and "https://" not in without_svg_ns
    assert "<script" not in page and "<link" not in page


def test_an_unknown_member_has_no_statement(site: tuple[Config, Path]) -> None:
    with pytest.raises(StatementError, match="no member"):
        statement_of(site, "zed", "2024-06")


# -- the community report ------------------------------------------------------------------------------


def test_the_community_report_adds_up_and_hides_names(site: tuple[Config, Path]) -> None:
    doc = community_report(site[0], "2024-06")
    text = json.dumps(doc)
    assert '"ada"' not in text and "ada)" not in text and "Lovelace" not in text
    e, c = doc["energy"], doc["credits"]
    assert e["terms"]["mwh"]["consumption"] == e["attributed_mwh"] + e["unattributed_mwh"] + e["base_mwh"]
    assert e["base_mwh"] > 0 and e["intervals"] > 0
    statements = [statement_of(site, m, "2024-06") for m in MEMBERS]
    assert c["issued"]["allowance"]["mcr"] == 10_000 * len(MEMBERS)
    assert c["issued"]["contributions"]["mcr"] == 50_000
    charged = sum(s["credits"]["charged"]["mcr"] - s["credits"]["other"]["mcr"] for s in statements) + 1_234
    assert c["spent_total"]["mcr"] == charged
    assert (
        c["spent_total"]["mcr"]
        == sum(v["mcr"] for v in c["spent_by_machine"].values())
        + sum(v["mcr"] for v in c["spent_by_source"].values())
        + c["spent_commons"]["mcr"]
    )
    assert doc["balances_total"]["closing"]["mcr"] == sum(s["credits"]["closing"]["mcr"] for s in statements)
    assert sum(b["closing"]["mcr"] for b in doc["balances"]) == doc["balances_total"]["closing"]["mcr"]


def test_the_community_report_counts_the_months_intervals_by_quality(site: tuple[Config, Path]) -> None:
    may = month_of("2024-05", "Pacific/Auckland")
    with sqlite3.connect(site[1]) as conn:
        flags = [
            int(r[0])
            for r in conn.execute(
                "SELECT flags FROM energy_intervals WHERE start >= ? AND start < ?", (may.since, may.until)
            )
        ]
    # Each interval under its worst flag: missing (4) > integrated (2) > estimated (1) > ok.
    expected = {q: 0 for q in ("ok", "estimated", "integrated", "missing")}
    for f in flags:
        expected["missing" if f & 4 else "integrated" if f & 2 else "estimated" if f & 1 else "ok"] += 1
    doc = community_report(site[0], "2024-05")
    e = doc["energy"]
    # The recorded day starts on 31 May: its first interval has no reading before it.
    assert expected == {"ok": len(flags) - 1, "estimated": 0, "integrated": 0, "missing": 1}
    assert e["quality_counts"] == expected and e["intervals"] == len(flags) == 720
    assert e["quality"] == "missing"  # the one word the month had so far, kept
    assert e["quality_percent"] == {"ok": "99.9", "estimated": "0.0", "integrated": "0.0", "missing": "0.1"}
    assert {"intervals", "convention", "terms", "flows", "load_by_source", "residual_mwh", "co2_mg"} <= set(e)
    june = community_report(site[0], "2024-06")["energy"]
    assert june["quality"] == "ok" and june["quality_counts"]["ok"] == june["intervals"] > 0
    assert june["quality_percent"]["ok"] == "100.0"

    block = {r["item"]: r for r in csv.DictReader(io.StringIO(render(doc, "csv").split("\n\n")[1]))}
    assert block["intervals"] == {"item": "intervals", "value": "720", "text": "quality missing"}
    assert block["quality.missing_intervals"] == {"item": "quality.missing_intervals", "value": "1", "text": "0.1 %"}
    assert block["quality.ok_intervals"]["value"] == "719" and block["quality.ok_intervals"]["text"] == "99.9 %"
    page = render(doc, "html")
    assert "720 energy intervals (99.9 % ok, 0.1 % missing)" in page
    assert "<td>quality.missing_intervals</td><td class=n>1</td><td class=n>0.1 %</td>" in page


def test_names_only_when_asked(site: tuple[Config, Path]) -> None:
    doc = community_report(site[0], "2024-06", names=True)
    assert {b["member"] for b in doc["balances"]} == {f"{n} ({m})" for m, n in MEMBERS.items()}
    page = render(doc, "html")
    assert "Ada Lovelace (ada)" in page
    rows = list(csv.DictReader(io.StringIO(render(doc, "csv").split("\n\n")[0])))
    assert sum(int(r["closing_mcr"]) for r in rows) == doc["balances_total"]["closing"]["mcr"]


# -- the command line ---------------------------------------------------------------------------------


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command("statement")(statement)
    app.add_typer(report_app, name="report")
    return app


def test_the_commands_write_each_format(site: tuple[Config, Path], tmp_path: Path) -> None:
    cfg = str(site[1].parent / "commonwatt.toml")
    runner = CliRunner()
    out = tmp_path / "ada.html"
    done = runner.invoke(
        _cli(), ["statement", "ada", "--month", "2024-06", "--format", "html", "--out", str(out), "--config", cfg]
    )
    assert done.exit_code == 0, done.output
    assert out.read_text().startswith("<!DOCTYPE html>")
    done = runner.invoke(_cli(), ["statement", "ada", "--month", "2024-06", "--config", cfg])
    assert done.exit_code == 0 and json.loads(done.stdout)["proofs"]["bundles"]
    done = runner.invoke(_cli(), ["report", "community", "--month", "2024-05", "--format", "csv", "--config", cfg])
    assert done.exit_code == 0 and done.stdout.startswith("member,opening_mcr,closing_mcr")
    assert runner.invoke(_cli(), ["statement", "zed", "--month", "2024-06", "--config", cfg]).exit_code == 1
    assert runner.invoke(_cli(), ["statement", "ada", "--month", "June", "--config", cfg]).exit_code == 2
