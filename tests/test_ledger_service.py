"""The ledger at run time: sessions charged once from their attributed energy, receipts, allowances, credit.

Real journals and energy tables in temp files; the energy tables are built by
`replay_journal` from counter readings, as `commonwatt replay` builds them. Amounts are
recomputed here from the policy's prices with exact fractions, independently of
`gateway.ledger.pricing`.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from typer.testing import CliRunner, Result

from gateway.cli_ledger import ledger_app
from gateway.config import Config, parse_config
from gateway.energy_service import replay_journal
from gateway.journal import Journal, NewRow
from gateway.ledger import Ledger
from gateway.ledger_service import (
    CONSUMER,
    RECEIPT_EVENT,
    LedgerCore,
    LedgerService,
    format_credits,
    format_kwh,
    pricing_active,
)
from gateway.people import People
from tests.services import Mosquitto

T0 = 1_717_200_000  # 2024-06-01 00:00 UTC
PRICING = {
    "machines": {"laser": {"busy_per_hour": "6", "idle_per_hour": "1.5"}},
    "energy": {"sun": "0.1", "battery": "0.2", "grid": "0.4"},
    "credit_limit": "1",
}
BUSY_RATE, IDLE_RATE = Fraction(6), Fraction(3, 2)
PRICE = {"sun": Fraction(1, 10), "battery": Fraction(2, 10), "grid": Fraction(4, 10)}
CO2_G_PER_KWH = 400


def config(tmp_path: Path, *, sources: bool = True, **pricing: Any) -> Config:
    def dev(i: str, role: str) -> dict[str, Any]:
        return {"id": i, "protocol": "shelly_gen2", "prefix": f"shelly-{i}", "role": role}

    devices = [dev("laser_meter", "machine")]
    if sources:
        devices += [dev("grid", "grid"), dev("pv", "pv")]
    return parse_config(
        {
            "site": {"id": "lab"},
            "journal": {"path": str(tmp_path / "journal.sqlite")},
            "mqtt": {},
            "api": {"enabled": False},
            "devices": devices,
            "machines": [{"id": "laser", "meter": "laser_meter"}],
            "energy": {"co2_g_per_kwh": CO2_G_PER_KWH, "final_after_s": 0},
            "pricing": {**PRICING, **pricing},
        }
    )


def closed(session_id: str, start: float, end: float, *, member: str = "ada", **extra: Any) -> NewRow:
    body = {
        "session_id": session_id, "machine_id": "laser", "member_id": member, "start": start, "end": end,
        "end_reason": "badge", "busy_s": (end - start) * 0.8, "idle_s": (end - start) * 0.2,
        "energy_wh": 375.0, "relay_unconfirmed": False, **extra,
    }  # fmt: skip
    return (end, "laser", "event.session_closed", None, json.dumps(body))


def opened(session_id: str, start: float, member: str = "ada") -> NewRow:
    body = {"session_id": session_id, "machine_id": "laser", "member_id": member, "start": start}
    return (start, "laser", "event.session_opened", None, json.dumps(body))


def record(path: Path, *, start: float, end: float, session: str = "s1") -> None:
    """30 minutes of pv 2 kW, grid 0.5 kW, the laser 1.5 kW during the session; counters every 10 s."""
    rows: list[NewRow] = []
    pv = grid = laser = 0.0
    for i in range(181):
        t = T0 + i * 10
        if t == start:
            rows.append(opened(session, start))
        if t == end:
            rows.append(closed(session, start, end))
        pv += 2000 * 10 / 3600
        grid += 500 * 10 / 3600
        laser += (1500 if start <= t < end else 0) * 10 / 3600
        rows += [(t, "pv", "energy_wh", pv, None), (t, "grid", "energy_wh", grid, None)]
        rows.append((t, "laser_meter", "energy_wh", laser, None))
    with Journal(path) as journal:
        journal.append_rows(rows)


def expected_charge(busy_s: int, idle_s: int, mwh: dict[str, int]) -> int:
    items = [busy_s * BUSY_RATE * 1000 / 3600, idle_s * IDLE_RATE * 1000 / 3600]
    items += [mwh[s] * PRICE[s] / 1000 for s in PRICE]
    return sum(round(x) for x in items)


def session_shares(path: Path, session: str) -> dict[str, int]:
    with sqlite3.connect(path) as conn:
        row = conn.execute(
            "SELECT sum(energy), sum(sun), sum(battery_sun) + sum(battery_grid), sum(grid) FROM energy_shares "
            "WHERE session_id = ?",
            (session,),
        ).fetchone()
    energy, sun, battery, grid = (int(x) for x in row)
    return {"sun": sun, "battery": battery, "grid": grid + energy - sun - battery - grid}


def receipts(path: Path) -> list[dict[str, Any]]:
    with Journal(path) as journal:
        return [json.loads(str(r[5])) for r in journal.events(RECEIPT_EVENT)]


def charges(path: Path) -> list[Any]:
    with Ledger(path, parse_config({"site": {"id": "x"}}).pricing) as ledger:
        return [tx for tx in ledger.transactions() if tx.kind == "charge"]


# -- charges -------------------------------------------------------------------------------------------


def test_a_session_is_charged_once_from_its_attributed_energy(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    core = LedgerCore.open(cfg)  # a new ledger: it charges what ends from now on
    start, end = T0 + 300, T0 + 1200
    record(cfg.journal.path, start=start, end=end)
    assert core.step(end + 5) == []  # the energy of its intervals is not final yet
    assert core.pending and not charges(cfg.journal.path)
    replay_journal(cfg)
    [r] = core.step(end + 5)
    mwh = session_shares(cfg.journal.path, "s1")
    assert mwh["sun"] > 0 and mwh["grid"] > 0
    total = expected_charge(720, 180, mwh)
    [tx] = charges(cfg.journal.path)
    assert tx.key == "charge:s1" and -tx.amount_for("member:ada") == total
    assert r.document["charged_mcr"] == total and r.document["balance_after_mcr"] == -total
    assert r.document["charged"] == format_credits(total)
    assert r.document["energy_basis"] == "attributed"
    assert sum(r.document["energy_mwh"].values()) == sum(mwh.values())
    assert r.document["co2_mg"] == tx.detail["co2_mg"] > 0
    assert receipts(cfg.journal.path) == [r.document]
    core.close()


def test_without_source_meters_the_meters_energy_is_priced_as_grid(tmp_path: Path) -> None:
    cfg = config(tmp_path, sources=False)
    core = LedgerCore.open(cfg)
    with Journal(cfg.journal.path) as journal:
        journal.append_rows([closed("s2", T0, T0 + 3600, busy_s=3000.5, idle_s=599.5, energy_wh=1234.5678)])
    [r] = core.step(T0 + 3601)  # nothing to wait for
    mwh = {"sun": 0, "battery": 0, "grid": 1_234_568}
    assert r.document["charged_mcr"] == expected_charge(3000, 600, mwh)  # halves to even: 3000.5 -> 3000
    assert r.document["energy_mwh"]["unknown"] == 1_234_568
    assert r.document["energy_kwh"]["unknown"] == "1.234568"
    assert r.document["energy_basis"] == "meter"
    assert r.document["co2_mg"] == round(1_234_568 * CO2_G_PER_KWH / 1000)
    core.close()


def test_restart_and_replay_never_charge_twice(tmp_path: Path) -> None:
    cfg = config(tmp_path, sources=False)
    core = LedgerCore.open(cfg)
    with Journal(cfg.journal.path) as journal:
        journal.append_rows([closed("s3", T0, T0 + 60), closed("s4", T0 + 100, T0 + 200, member="bob")])
    assert len(core.step(T0 + 300)) == 2
    core.close()
    core = LedgerCore.open(cfg)  # a restart: nothing new
    assert core.step(T0 + 400) == []
    with Journal(cfg.journal.path) as journal:  # a replay of the whole journal
        journal.append_with_checkpoint([], CONSUMER, 0, json.dumps({"pending": []}))
    core.close()
    core = LedgerCore.open(cfg)
    replayed = core.step(T0 + 500)
    assert len(replayed) == 2  # receipts again, charges not
    assert [tx.key for tx in charges(cfg.journal.path)] == ["charge:s3", "charge:s4"]
    assert [r.document["tx_id"] for r in replayed] == [1, 2]
    core.close()


def test_a_pending_session_survives_a_restart(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    core = LedgerCore.open(cfg)
    record(cfg.journal.path, start=T0 + 300, end=T0 + 1200)
    assert core.step(T0 + 1205) == []
    core.close()
    core = LedgerCore.open(cfg)
    assert list(core.pending) == ["s1"]
    # An interval, the grace (0), meter_wait_s and the margin after its end: charged anyway.
    [r] = core.step(T0 + 1200 + 60 + 0 + 300 + 61)
    assert r.document["session_id"] == "s1"
    core.close()


KILL_SCRIPT = """
import json, os, signal, sys
from gateway.config import parse_config
from gateway.ledger_service import LedgerCore
cfg = parse_config(json.loads(open(sys.argv[1]).read()))
core = LedgerCore.open(cfg)
original = core.journal.append_with_checkpoint
def killed(*args, **kw):
    if sys.argv[2] == "after":
        original(*args, **kw)
    os.kill(os.getpid(), signal.SIGKILL)
core.journal.append_with_checkpoint = killed
core.step(float(sys.argv[3]))
"""


@pytest.mark.parametrize("when", ["before", "after"])
def test_sigkill_around_the_checkpoint_leaves_exactly_one_charge(tmp_path: Path, when: str) -> None:
    raw = {
        "site": {"id": "lab"},
        "journal": {"path": str(tmp_path / "journal.sqlite")},
        "pricing": PRICING,
        "machines": [{"id": "laser", "meter": "laser_meter"}],
        "devices": [{"id": "laser_meter", "protocol": "dsmr", "port": "/dev/null", "role": "machine"}],
    }
    (tmp_path / "config.json").write_text(json.dumps(raw))
    cfg = parse_config(raw)
    LedgerCore.open(cfg).close()  # the ledger's first checkpoint, before the session ends
    with Journal(cfg.journal.path) as journal:
        journal.append_rows([closed("s5", T0, T0 + 600)])
    args = [sys.executable, "-c", KILL_SCRIPT, str(tmp_path / "config.json"), when, str(T0 + 700)]
    done = subprocess.run(args, cwd=Path(__file__).parent.parent, capture_output=True, timeout=30)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    assert len(charges(cfg.journal.path)) == 1  # the charge is posted, whatever the checkpoint's fate
    core = LedgerCore.open(cfg)
    again = core.step(T0 + 800)
    core.close()
    assert len(charges(cfg.journal.path)) == 1
    assert len(receipts(cfg.journal.path)) == 1
    assert len(again) == (1 if when == "before" else 0)


# -- allowances and credit ------------------------------------------------------------------------------


def at(day: str) -> float:
    return datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp() + 12 * 3600


def test_allowances_are_issued_once_a_month_to_active_members(tmp_path: Path) -> None:
    cfg = config(tmp_path, sources=False, allowance={"amount": "10", "day": 5})
    with People(cfg.journal.path) as people:
        for member in ("ada", "bob", "cy"):
            people.add_member(member, member.title())
        people.disable_member("cy")
    core = LedgerCore.open(cfg)
    assert core.issue_allowances(at("2024-06-04")) == []
    for day in ("2024-06-05", "2024-06-05", "2024-06-20"):
        core.step(at(day))
    with People(cfg.journal.path) as people:  # a member who joins later gets this month's too
        people.add_member("dee", "Dee")
    core.step(at("2024-06-20"))
    core.step(at("2024-07-05"))
    keys = sorted(tx.key for tx in core.ledger.transactions())
    assert keys == sorted(f"allowance:{m}:{month}" for m in ("ada", "bob", "dee") for month in ("2024-06", "2024-07"))
    assert core.ledger.running_balance("member:ada") == 20_000
    core.close()


def test_credit_ok_follows_the_balance_and_the_limit(tmp_path: Path) -> None:
    cfg = config(tmp_path, sources=False)  # credit limit 1 credit
    service = LedgerService(cfg, publish=None)
    service.open()
    try:
        assert service.credit_ok("ada")  # 0 > -1000
        assert service.core is not None
        with Journal(cfg.journal.path) as journal:
            journal.append_rows([closed("s6", T0, T0 + 3600)])  # 2880 s busy, 720 s idle: 5.1 credits + energy
        service.step(T0 + 3700)
        assert service.ledger.running_balance("member:ada") < -1000
        assert not service.credit_ok("ada")
        service.ledger.grant_contribution("ada", 10_000, "cleaning", "workshop tidy", by="olga")
        assert service.credit_ok("ada")
    finally:
        service.close()


def test_a_site_that_prices_nothing_refuses_nobody(tmp_path: Path) -> None:
    cfg = parse_config({"site": {"id": "lab"}, "journal": {"path": str(tmp_path / "j.sqlite")}})
    assert not pricing_active(cfg.pricing)
    assert pricing_active(config(tmp_path).pricing)
    service = LedgerService(cfg, publish=None)
    service.open()
    try:
        assert service.credit_ok("nobody")
    finally:
        service.close()


def test_formats() -> None:
    assert [format_credits(n) for n in (3349, -500, 0, 1000)] == ["3.349", "-0.500", "0.000", "1.000"]
    assert format_kwh(123_456) == "0.123456" and format_kwh(2_000_001) == "2.000001"


def test_the_receipt_is_published_on_the_machines_topic(tmp_path: Path, mosquitto: Mosquitto) -> None:
    cfg = config(tmp_path, sources=False)
    got: list[tuple[str, bool, dict[str, Any]]] = []
    subscribed = threading.Event()
    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id="receipts")
    sub.on_subscribe = lambda *_a: subscribed.set()
    sub.on_message = lambda _c, _u, m: got.append((m.topic, m.retain, json.loads(m.payload)))
    pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="gateway")
    for client in (sub, pub):
        client.connect("127.0.0.1", mosquitto.port)
        client.loop_start()
    sub.subscribe("commonwatt/lab/machine/+/receipt", qos=1)
    assert subscribed.wait(5)

    def publish(topic: str, payload: str, *, qos: int, retain: bool) -> None:
        pub.publish(topic, payload, qos=qos, retain=retain)

    service = LedgerService(cfg, publish=publish)
    service.open()
    try:
        with Journal(cfg.journal.path) as journal:
            journal.append_rows([closed("s7", T0, T0 + 60)])
        service.step(T0 + 100)
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        service.close()
        for client in (sub, pub):
            client.loop_stop()
            client.disconnect()
    [(topic, retained, doc)] = got
    assert topic == "commonwatt/lab/machine/laser/receipt" and not retained
    assert doc == receipts(cfg.journal.path)[0] and doc["session_id"] == "s7"


def test_the_ledger_commands(tmp_path: Path) -> None:
    toml = tmp_path / "commonwatt.toml"
    toml.write_text(
        f'[site]\nid = "lab"\n[journal]\npath = "{tmp_path / "j.sqlite"}"\n'
        '[pricing]\ncontribution_approval_above = "10"\n[pricing.allowance]\namount = "2"\n'
    )
    with People(tmp_path / "j.sqlite") as people:
        people.add_member("ada", "Ada")
    runner = CliRunner()

    def run(*args: str) -> Result:
        return runner.invoke(ledger_app, [*args, "--config", str(toml)])

    assert "1 member(s)" in run("allowances", "issue", "--month", "2024-06").output
    assert run("allowances", "issue", "--month", "2024-6").exit_code == 2
    assert (
        "contribution 1: 50.000 credits to ada, pending"
        in run("contributions", "grant", "ada", "50", "--category", "teaching").output
    )
    same = run("contributions", "approve", "1")
    assert same.exit_code == 1 and "another operator" in same.output
    assert run("contributions", "grant", "nobody", "5", "--category", "x").exit_code == 1
    assert "ada: 2.000 credits" in run("balance", "ada").output
    assert "transaction 2 reverses 1" in run("reverse", "1", "--memo", "issued by mistake").output
    assert json.loads(run("balance", "ada", "--json").output)["balance_mcr"] == 0
    assert "pending" in run("contributions", "list").output
