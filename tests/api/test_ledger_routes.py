"""/api/v1/ledger and receipts, on a running gateway whose ledger service charges real sessions.

The lab of `conftest.py` with a price list: a minimum charge of 0.5 credits, an allowance
of 0.3 credits and no credit limit, so ada may start one session and, once it is charged,
no other. Until the gateway composes the ledger service itself, the test runs one beside
it on a loop of its own and hangs it on the gateway as `gateway.ledger`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.api.routes import ledger as ledger_routes
from gateway.app import Gateway
from gateway.energy_store import EnergyStore, pseudonym
from gateway.journal import Journal
from gateway.ledger import PricingPolicy
from gateway.ledger_service import RECEIPT_EVENT, LedgerService
from tests.api.conftest import Lab, api_app, lab_config, pty_ports, running_gateway, seed_people, wait_for

PRICING = {
    "machines": {"laser": {"busy_per_hour": "6", "idle_per_hour": "1.5"}},
    "energy": {"grid": "0.4"},
    "minimum_charge": "0.5",
    "allowance": {"amount": "0.3", "day": 1},
    "contribution_approval_above": "100",
}


@dataclass
class LedgerLab(Lab):
    service: LedgerService
    wired: bool
    session: dict[str, Any]

    def nudge(self) -> None:
        """Wake the ledger service (the gateway does it on every commit once it runs the service)."""
        loop = getattr(self.service, "_test_loop", None)
        if loop is not None:
            loop.call_soon_threadsafe(self.service.notify)


@contextlib.contextmanager
def ledger_beside(gateway: Gateway) -> Iterator[tuple[LedgerService, bool]]:
    """The gateway's ledger service, or one started beside it until the gateway runs its own."""
    wired = getattr(gateway, "ledger", None)
    if isinstance(wired, LedgerService):
        yield wired, True
        return
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    service = LedgerService(gateway.config, publish=None)
    asyncio.run_coroutine_threadsafe(service.__aenter__(), loop).result(10)
    service._test_loop = loop  # type: ignore[attr-defined]
    gateway.ledger = service  # type: ignore[attr-defined]
    try:
        yield service, False
    finally:
        asyncio.run_coroutine_threadsafe(service.__aexit__(None, None, None), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def closed_sessions(path: Path) -> list[dict[str, Any]]:
    with Journal(path, readonly=True) as journal:
        return [json.loads(str(r[5])) for r in journal.events("event.session_closed")]


@pytest.fixture(scope="module")
def ledger_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LedgerLab]:
    """ada has worked one session at the laser, and it is charged."""
    tmp = tmp_path_factory.mktemp("ledger")
    with pty_ports(["laser_meter", "laser_reader", "cnc_meter", "cnc_reader"]) as ports:
        config = lab_config(tmp, ports).model_copy(update={"pricing": PricingPolicy.model_validate(PRICING)})
        tokens = seed_people(config.journal.path)
        with running_gateway(config) as gateway, ledger_beside(gateway) as (service, wired):
            wait_for(lambda: service.ledger.running_balance("member:ada") == 300)
            app = api_app(gateway)
            if "/api/v1/ledger/balances" not in app.openapi()["paths"]:  # until api/app.py includes it
                app.include_router(ledger_routes.router)
                app.openapi_schema = None
            with TestClient(app) as client:
                lab = LedgerLab(gateway, app, client, tokens, service, wired, {})
                lab.badge("laser", "ada")
                lab.badge("laser", "ada")
                [lab.session] = closed_sessions(config.journal.path)
                key = f"charge:{lab.session['session_id']}"

                def charged() -> bool:
                    lab.nudge()
                    return service.ledger.by_key(key) is not None

                wait_for(charged, timeout=10)
                yield lab
            for name in ("people", "ledger"):
                store = getattr(app.state, name, None)
                if store is not None:
                    store.close()


def expected_total(session: dict[str, Any]) -> int:
    """The policy applied by hand: 6 and 1.5 credits an hour, 0.4 per kWh from the grid, at least 0.5."""
    busy, idle = round(session["busy_s"]), round(session["idle_s"])
    items = round(busy * 6000 / 3600) + round(idle * 1500 / 3600) + round(round(session["energy_wh"] * 1000) * 0.4)
    return max(int(items), 500)


def test_a_closed_session_is_charged_exactly_once(ledger_lab: Lab) -> None:
    lab = ledger_lab
    assert isinstance(lab, LedgerLab)
    sid = lab.session["session_id"]
    charges = [tx for tx in lab.service.ledger.transactions() if tx.kind == "charge"]
    assert [tx.key for tx in charges] == [f"charge:{sid}"]
    assert -charges[0].amount_for("member:ada") == expected_total(lab.session) == 500
    account = lab.get("/api/v1/ledger/members/ada", "ada").json()
    assert account["balance"] == {"mcr": -200, "credits": "-0.200"}
    assert not account["may_start_session"]
    assert [t["kind"] for t in account["transactions"]] == ["allowance", "charge"]


def test_the_receipt_is_journaled_and_served_to_its_member_only(ledger_lab: Lab) -> None:
    lab = ledger_lab
    assert isinstance(lab, LedgerLab)
    sid = lab.session["session_id"]
    with Journal(lab.gateway.config.journal.path, readonly=True) as journal:
        [row] = journal.events(RECEIPT_EVENT)
    receipt = json.loads(str(row[5]))
    assert receipt["session_id"] == sid and receipt["charged"] == "0.500"
    assert receipt["balance_after"] == "-0.200" and receipt["machine_id"] == "laser"
    assert receipt["items_mcr"]["minimum"] == 500
    assert lab.get(f"/api/v1/sessions/{sid}/receipt", "ada").json() == receipt
    mine, nobody = lab.get(f"/api/v1/sessions/{sid}/receipt", "bob"), lab.get("/api/v1/sessions/x/receipt", "bob")
    assert mine.status_code == nobody.status_code == 404
    assert "ada" not in mine.text


def test_insufficient_credit(ledger_lab: Lab) -> None:
    lab = ledger_lab
    assert isinstance(lab, LedgerLab)
    assert not lab.service.credit_ok("ada")  # -0.2 credits, no credit limit
    assert lab.service.credit_ok("bob")  # 0.3 credits of allowance
    if not lab.wired:
        pytest.skip("the floor asks the ledger once the gateway composes the ledger service")
    mark = Journal(lab.gateway.config.journal.path, readonly=True)
    try:
        before = mark.last_seq()
        lab.badge("laser", "ada")
        access = [json.loads(str(r[5])) for r in mark.events("event.access", after=before)]
    finally:
        mark.close()
    assert [(a["allowed"], a["reason"]) for a in access] == [(False, "insufficient_credit")]


def test_balances_for_operators_and_pseudonyms_for_auditors(ledger_lab: Lab) -> None:
    lab = ledger_lab
    rows = {r["account"]: r["balance"]["mcr"] for r in lab.get("/api/v1/ledger/balances", "operator").json()}
    assert rows["member:ada"] == -200 and rows["member:bob"] == 300 and sum(rows.values()) == 0
    with EnergyStore(lab.gateway.config.journal.path) as store:
        ada = pseudonym(store.secret(), "ada")
    audited = lab.get("/api/v1/ledger/balances", "auditor")
    assert {r["account"] for r in audited.json()} >= {f"member:{ada}"}
    # As a word: a pseudonym is hex, and "ada" can be a run of hex digits in one.
    assert not re.search(r"\bada\b", audited.text) and "bob" not in audited.text
    txs = lab.get("/api/v1/ledger/transactions", "auditor", params={"limit": 1000})
    assert txs.status_code == 200 and not re.search(r"\bada\b", txs.text) and len(txs.json()) >= 5
    assert lab.get("/api/v1/ledger/balances", "ada").status_code == 403
    assert lab.get("/api/v1/ledger/transactions", "trainer").status_code == 403


def test_a_member_reads_only_its_own_account(ledger_lab: Lab) -> None:
    lab = ledger_lab
    bob, nobody = lab.get("/api/v1/ledger/members/bob", "ada"), lab.get("/api/v1/ledger/members/nobody", "ada")
    assert bob.status_code == nobody.status_code == 404
    assert lab.get("/api/v1/ledger/members/bob", "bob").json()["balance"]["credits"] == "0.300"
    assert lab.get("/api/v1/ledger/members/nobody", "admin").status_code == 404


def test_large_contributions_need_a_second_operator(ledger_lab: Lab) -> None:
    lab = ledger_lab
    body = {"member": "bob", "amount_mcr": 150_000, "category": "teaching", "note": "laser course"}
    granted = lab.client.post("/api/v1/ledger/contributions", json=body, headers=lab.headers("operator"))
    assert granted.status_code == 201 and granted.json()["status"] == "pending"
    cid = granted.json()["id"]
    url = f"/api/v1/ledger/contributions/{cid}/approve"
    same = lab.client.post(url, headers=lab.headers("operator"))
    assert same.status_code == 409 and "another operator" in same.json()["detail"]
    assert lab.client.post(url, headers=lab.headers("ada")).status_code == 403
    approved = lab.client.post(url, headers=lab.headers("admin"))
    assert approved.status_code == 200 and approved.json()["status"] == "posted"
    assert approved.json()["amount"] == {"mcr": 150_000, "credits": "150.000"}
    assert lab.get("/api/v1/ledger/members/bob", "bob").json()["balance"]["mcr"] == 150_300
    assert lab.client.post("/api/v1/ledger/contributions/999/approve", headers=lab.headers("admin")).status_code == 404
    small = {**body, "amount_mcr": 5000}
    assert (
        lab.client.post("/api/v1/ledger/contributions", json=small, headers=lab.headers("admin")).json()["status"]
        == "posted"
    )


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"member": "nobody", "amount_mcr": 10, "category": "x"}, 404),
        ({"member": "bob", "amount_mcr": 0, "category": "x"}, 422),
        ({"member": "bob", "amount_mcr": 1.5, "category": "x"}, 422),
        ({"member": "bob", "amount_mcr": 10}, 422),
    ],
)
def test_a_bad_contribution_is_a_4xx_with_a_reason(ledger_lab: Lab, body: dict[str, Any], status: int) -> None:
    response = ledger_lab.client.post("/api/v1/ledger/contributions", json=body, headers=ledger_lab.headers("admin"))
    assert response.status_code == status and response.json()["detail"]


def test_contributions_are_listed_for_readers(ledger_lab: Lab) -> None:
    assert ledger_lab.get("/api/v1/ledger/contributions", "auditor").status_code == 200
    assert ledger_lab.get("/api/v1/ledger/contributions", "bob").status_code == 403
