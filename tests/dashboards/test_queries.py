"""Acceptance: every dashboard query runs against a real VictoriaMetrics filled by the demo lab.

One module-scoped run (about 25 s): the demo's simulated devices and badge nodes on the
embedded broker, a fast lab day (`Scenario`, speed 10) with members badging in and out,
and a real `Gateway` with `[tsdb]` pointing at a private VictoriaMetrics. The machine
state sink writes every second, and VictoriaMetrics scrapes the gateway's /metrics every
second, as `deploy/` sets it up in production (`-promscrape.config`). Malformed
frames are published so that the "rejected frames" panel has something to show.

The lab prices its machines and energy (`PRICING`): the ledger issues the month's
allowance when the gateway starts, and the gateway's ledger writer sends it to
VictoriaMetrics. Sessions are charged once the energy of their last interval is final,
which on a running gateway is two intervals after they end; here, after the run, the
replay makes the intervals final and the ledger charges the run's sessions, as the
gateway would have a couple of minutes later. An operator grants a contribution through
the API, and the ledger writer, started again, sends what came after its cursor.

Then:
- every panel's query, with its variables resolved, returns at least one series (the
  credit panels asked once the run's sessions are charged);
- the site's PV energy and grid import, and each member's energy, computed by the
  dashboards' own queries, agree with the gateway's API (`/api/v1/energy/balance`,
  `/api/v1/members/{id}/energy`) within 0.5 %;
- the credits charged to each member and each member's balance on the Members dashboard,
  and the community's credit totals, are the ledger API's (`/api/v1/ledger/...`) to the
  milli-credit.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.publish as mqtt_publish
import pytest
from fastapi.testclient import TestClient

from gateway.api.app import create_app
from gateway.app import Gateway
from gateway.config import Config, load_config
from gateway.demo import DemoSite, EmbeddedBroker, SiteSettings
from gateway.demo.run import demo_config_text
from gateway.demo.scenario import DEMO_PEOPLE, BadgeNodes, Scenario, machines_toml, seed_people
from gateway.energy_service import EnergyTsdbWriter, replay_journal
from gateway.energy_store import EnergyStore, pseudonym
from gateway.journal import Journal
from gateway.ledger import Ledger
from gateway.ledger_service import LedgerCore
from gateway.people import People
from gateway.sinks.ledger_tsdb import CONSUMER as LEDGER_TSDB
from gateway.sinks.ledger_tsdb import LedgerTsdbWriter
from gateway.sinks.machinestate import MachineStateSink
from tests.services import VictoriaMetrics, _find, free_port

JSON_DIR = Path(__file__).resolve().parents[2] / "dashboards" / "json"
SITE = "demo"
RUN_S = 24.0
SPEED = 10.0
TOLERANCE = 0.005
#: The lab's prices: high enough that the run's short sessions cost machine time, energy of
#: each source they drew and a minimum charge; a credit limit no session of the run reaches,
#: so that the lab's sessions are the same as without prices.
PRICING = """
[pricing]
minimum_charge = "5"
credit_limit = "1000"

[pricing.default_rate]
busy_per_hour = "60"
idle_per_hour = "6"

[pricing.energy]
sun = "50"
battery = "100"
grid = "200"

[pricing.allowance]
amount = "20"
"""
#: What the operator grants during the run, in mcr.
CONTRIBUTION_MCR = 12_500


class ScrapingVictoriaMetrics(VictoriaMetrics):
    """tests.services.VictoriaMetrics, also scraping the gateway's /metrics every second."""

    def __init__(self, folder: Path, api_port: int) -> None:
        super().__init__(folder)
        self.scrape = folder / "scrape.yml"
        self.api_port = api_port

    def start(self) -> ScrapingVictoriaMetrics:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.scrape.write_text(
            "scrape_configs:\n  - job_name: commonwatt\n    scrape_interval: 1s\n    static_configs:\n"
            f'      - targets: ["127.0.0.1:{self.api_port}"]\n        labels: {{site: "{SITE}"}}\n'
        )
        log = (self.folder / "vm.log").open("ab")
        self.proc = subprocess.Popen(
            [
                _find("victoria-metrics"),
                f"-httpListenAddr=127.0.0.1:{self.port}",
                f"-storageDataPath={self.folder / 'data'}",
                "-retentionPeriod=100y",
                "-search.latencyOffset=0s",
                "-search.disableCache",
                "-dedup.minScrapeInterval=1ms",
                f"-promscrape.config={self.scrape}",
                "-loggerLevel=ERROR",
            ],
            stdout=log,
            stderr=log,
        )
        from tests.services import _wait_port

        _wait_port(self.port)
        return self


@dataclass
class LabRun:
    config: Config
    vm: VictoriaMetrics
    started: float
    ended: float  # while the gateway still ran: instant queries of scraped series are asked at this time
    token: str
    credited: float  # after the run's sessions were charged and sent: the credit panels are asked at this time


async def _play(config: Config, broker: EmbeddedBroker, site: DemoSite, nodes: BadgeNodes, vm_url: str) -> float:
    async with Gateway(config) as gw:
        assert gw.floor is not None and gw.mqtt is not None
        await gw.mqtt.wait_connected()
        machines = [m.id for m in config.machines]
        path = config.journal.path
        async with (
            MachineStateSink(floor=gw.floor, machines=machines, journal_path=path, url=vm_url, site=SITE, every_s=1),
            Scenario(site, nodes, speed=SPEED, relay_wait_s=2.5),
        ):
            # Frames no decoder accepts: the gateway counts them under rejected, by reason. Six,
            # a second apart, so the scraped counter changes between several scrapes (increase()
            # sees it) however busy the machine is.
            for _ in range(6):
                await asyncio.sleep(1.0)
                await asyncio.to_thread(
                    mqtt_publish.single,
                    "shellypro3em-demo01/events/rpc",
                    b"{not json",
                    hostname=broker.host,
                    port=broker.port,
                )
            await asyncio.sleep(RUN_S - 6.0)
            return time.time()


async def _lab(folder: Path, vm: VictoriaMetrics, api_port: int) -> tuple[Config, float]:
    async with (
        EmbeddedBroker() as broker,
        DemoSite(SiteSettings(autopilot=False, day_length_s=120)).running(broker.host, broker.port) as site,
        BadgeNodes(broker.host, broker.port) as nodes,
    ):
        path = folder / "commonwatt.toml"
        tsdb = f'[tsdb]\nurl = "{vm.url}"\nmax_backoff_s = 1.0\n'
        text = demo_config_text(broker.port, api_port) + "\n" + tsdb + "\n" + machines_toml(SPEED) + PRICING
        path.write_text(text)
        config = load_config(path)
        with People(config.journal.path) as people:
            seed_people(people)
        ended = await _play(config, broker, site, nodes, vm.url)
    return config, ended


def _meters_report_again(config: Config, ts: float) -> None:
    from gateway.journal import Journal
    from gateway.model import Reading

    counters = {"energy_wh", "energy_returned_wh", "energy_charged_wh", "energy_discharged_wh"}
    with Journal(config.journal.path) as journal:
        latest = {(d, m): journal.read(s.last_seq - 1, 1)[0] for (d, m), s in journal.stats().series.items()}
        again = [
            Reading(ts, d, m, float(row[4])) for (d, m), row in latest.items() if m in counters and row[4] is not None
        ]
        journal.append(again)


async def _deliver_energy(config: Config, vm_url: str) -> None:
    """What the gateway's energy writer had not sent when it stopped, as its next start would send it."""
    with EnergyStore(config.journal.path, readonly=True) as store:
        rev = store.rev()
    async with EnergyTsdbWriter(journal_path=config.journal.path, site=SITE, url=vm_url) as writer:
        deadline = time.monotonic() + 20
        while writer.health.cursor < rev:
            assert time.monotonic() < deadline, "energy intervals not delivered"
            await asyncio.sleep(0.1)


def _charge_the_runs_sessions(config: Config) -> int:
    """The ledger's next step, as the gateway takes it once the sessions' energy is final; how many it charged."""
    core = LedgerCore.open(config)
    try:
        core.step(time.time())
        return core.charged
    finally:
        core.close()


def _grant_contribution(config: Config, token: str, member: str) -> None:
    """An operator grants a contribution through the API, as the lab's office would."""
    app = create_app(Gateway(config))
    with TestClient(app) as client:
        response = client.post(
            "/api/v1/ledger/contributions",
            json={"member": member, "amount_mcr": CONTRIBUTION_MCR, "category": "cleaning", "note": "the workshop"},
            headers={"Authorization": f"Bearer {token}"},
        )
    for store in ("ledger", "people"):
        if getattr(app.state, store, None) is not None:
            getattr(app.state, store).close()
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "posted"


async def _deliver_credits(config: Config, vm_url: str) -> None:
    """The ledger's transactions the gateway's ledger writer had not sent, as its next start sends them."""
    with Journal(config.journal.path) as journal:
        last = journal.last_seq()
    async with LedgerTsdbWriter(journal_path=config.journal.path, site=SITE, url=vm_url) as writer:
        assert await asyncio.to_thread(writer.wait_delivered, last, 20), "ledger transactions not delivered"


def _credits_searchable(config: Config, vm: VictoriaMetrics, at: float) -> None:
    """Wait until a query at `at` finds every sample the ledger writers sent.

    VictoriaMetrics makes fresh samples searchable a second or two after they were written,
    flushed or not. A member's posting is two samples (the amount and the balance), any other one.
    """
    with Ledger(config.journal.path, config.pricing) as ledger:
        txs = ledger.transactions(0, 100_000)
    points = sum(2 if p.account.startswith("member:") else 1 for tx in txs for p in tx.postings)
    expr = "sum(count_over_time({__name__=~'commonwatt_ledger_.*'}[1h]))"
    deadline = time.monotonic() + 15
    while (found := sum(int(r["value"][1]) for r in vm_query(vm, expr, at=at))) != points:
        assert found < points and time.monotonic() < deadline, f"{found} ledger samples searchable, {points} written"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabRun]:
    folder = tmp_path_factory.mktemp("dash-lab")
    api_port = free_port()
    vm = ScrapingVictoriaMetrics(folder / "victoria", api_port).start()
    try:
        started = time.time()
        config, ended = asyncio.run(_lab(folder, vm, api_port))
        # The writer sends final intervals only; the run's last ones become final by a replay, as
        # they would two intervals after the run on a gateway left running. The replay settles an
        # interval once a later reading exists: the counters report once more, unchanged, as
        # meters do while nothing draws, so the run's intervals close without energy added.
        _meters_report_again(config, ended + 180.0)
        replay_journal(config)
        asyncio.run(_deliver_energy(config, vm.url))
        with Journal(config.journal.path) as journal:
            assert journal.cursor(LEDGER_TSDB) > 0, "the gateway's ledger writer sent the month's allowance"
        assert _charge_the_runs_sessions(config) >= 2, "members' sessions were charged"
        with People(config.journal.path) as people:
            token = people.create_token("admin")
        _grant_contribution(config, token, DEMO_PEOPLE[0].id)
        asyncio.run(_deliver_credits(config, vm.url))
        # After every ledger point, by more than the range queries' step: VictoriaMetrics aligns
        # their ends to the step.
        credited = time.time() + 10.0
        vm.flush()
        _credits_searchable(config, vm, credited)
        yield LabRun(config, vm, started, ended, token, credited)
    finally:
        vm.stop()


# -- the dashboards' queries -------------------------------------------------------------------------


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(JSON_DIR.glob("*.json"))}


def targets() -> list[tuple[str, str, dict[str, Any]]]:
    """(dashboard, panel title, target) of every query."""
    out = []
    for name, board in dashboards().items():
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                out.append((name, panel["title"], target))
    return out


def resolve(expr: str, range_s: int) -> str:
    """The query as Grafana sends it: variables replaced by the values of this test."""
    values = {
        "$__rate_interval": "1m",
        "$__interval": "1m",
        "$__range": f"{range_s}s",
        "$period": "1m",
        "$member": ".*",
        "$site": SITE,
    }
    for name, value in values.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unresolved variable in {expr}"
    return expr


def vm_query(vm: VictoriaMetrics, expr: str, *, at: float) -> list[dict[str, Any]]:
    body = json.loads(vm.get("/api/v1/query", query=expr, time=f"{at:.3f}"))
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def vm_query_range(vm: VictoriaMetrics, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    body = json.loads(vm.get("/api/v1/query_range", query=expr, start=f"{start:.0f}", end=f"{end:.0f}", step="5"))
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def test_the_dashboards_have_queries() -> None:
    assert {name for name, _t, _q in targets()} == {"site-energy", "machines", "members", "gateway-health"}


@pytest.mark.parametrize(("board", "title", "target"), targets(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_query_returns_series(lab: LabRun, board: str, title: str, target: dict[str, Any]) -> None:
    # The credit panels are asked once the run's sessions are charged; the others, scraped
    # series among them, while the gateway still ran.
    end = lab.credited if "commonwatt_ledger_" in target["expr"] else lab.ended
    window = int(end - lab.started) + 300
    expr = resolve(target["expr"], window)
    if target.get("instant"):
        result = vm_query(lab.vm, expr, at=end)
    else:
        result = vm_query_range(lab.vm, expr, lab.started - 120, end)
    assert result, f"{board} / {title}: no series for {expr}"


# -- agreement with the gateway's API -------------------------------------------------------------


def panel_expr(board: str, title: str) -> str:
    for panel in dashboards()[board]["panels"]:
        if panel["title"] == title:
            expr: str = panel["targets"][0]["expr"]
            return expr
    raise KeyError(title)


@dataclass
class Period:
    since: int
    until: int

    @property
    def params(self) -> dict[str, str]:
        return {"from": str(self.since), "to": str(self.until)}


def period(lab: LabRun) -> Period:
    """Whole minutes around the run: no interval starts on either edge."""
    return Period(int(lab.started) // 60 * 60 - 120, (int(time.time()) // 60 + 1) * 60)


def api(lab: LabRun, path: str, **params: str) -> Any:
    with TestClient(create_app(Gateway(lab.config))) as client:
        response = client.get(path, params=params, headers={"Authorization": f"Bearer {lab.token}"})
    assert response.status_code == 200, response.text
    return response.json()


def dashboard_mwh(lab: LabRun, board: str, title: str, p: Period) -> dict[str, float]:
    """The panel's query over the period, in mWh, by its `member` label ('' for a single value)."""
    expr = resolve(panel_expr(board, title), p.until - p.since)
    result = vm_query(lab.vm, expr, at=p.until)
    return {r["metric"].get("member", ""): float(r["value"][1]) * 1e6 for r in result}


def close(dashboard: float, gateway: float) -> bool:
    return abs(dashboard - gateway) <= TOLERANCE * max(abs(gateway), 1.0)


def test_pv_and_grid_import_agree_with_the_balance_api(lab: LabRun) -> None:
    p = period(lab)
    rows = api(lab, "/api/v1/energy/balance", **p.params, step=str(p.until - p.since))
    pv = sum(r["pv_mwh"] for r in rows)
    grid = sum(r["grid_import_mwh"] for r in rows)
    assert pv > 0, "the demo's panels produced energy"
    assert close(dashboard_mwh(lab, "site-energy", "PV energy, today", p)[""], pv)
    assert close(dashboard_mwh(lab, "site-energy", "Grid import, today", p).get("", 0.0), grid)


def test_each_members_energy_agrees_with_the_member_api(lab: LabRun) -> None:
    p = period(lab)
    with EnergyStore(lab.config.journal.path, readonly=True) as store:
        secret = store.secret()
    shown = dashboard_mwh(lab, "members", "Energy per member", p)
    compared = 0
    for member in DEMO_PEOPLE:
        total = api(lab, f"/api/v1/members/{urllib.parse.quote(member.id)}/energy", **p.params)["total"]
        on_dashboard = shown.get(pseudonym(secret, member.id), 0.0)
        assert close(on_dashboard, total["energy_mwh"]), (member.id, on_dashboard, total)
        compared += total["energy_mwh"] > 0
    assert compared >= 2, "members worked at the machines during the run"


def dashboard_mcr(lab: LabRun, board: str, title: str, p: Period, label: str = "member") -> dict[str, int]:
    """The panel's query over the period, in whole mcr, by `label` ('' for a single value)."""
    expr = resolve(panel_expr(board, title), p.until - p.since)
    out = {}
    for r in vm_query(lab.vm, expr, at=p.until):
        mcr = float(r["value"][1]) * 1000
        assert abs(mcr - round(mcr)) < 1e-6, f"{title}: {r['value'][1]} credits is not a whole number of mcr"
        out[r["metric"].get(label, "")] = round(mcr)
    return out


def ledger_transactions(lab: LabRun) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    while True:
        page = api(lab, "/api/v1/ledger/transactions", after=str(found[-1]["id"] if found else 0), limit="1000")
        found += page
        if len(page) < 1000:
            return found


def test_each_members_credits_agree_with_the_ledger_api(lab: LabRun) -> None:
    p = period(lab)
    with EnergyStore(lab.config.journal.path, readonly=True) as store:
        secret = store.secret()
    charged: dict[str, int] = {}
    for tx in ledger_transactions(lab):
        if tx["kind"] == "charge" and p.since * 1000 <= tx["ts_ms"] < p.until * 1000:
            for posting in tx["postings"]:
                if posting["account"].startswith("member:"):
                    member = posting["account"].removeprefix("member:")
                    charged[member] = charged.get(member, 0) - posting["amount"]["mcr"]
    accounts = {m.id: api(lab, f"/api/v1/ledger/members/{urllib.parse.quote(m.id)}") for m in DEMO_PEOPLE}

    def differences() -> list[tuple[str, str, int, int]]:
        shown = dashboard_mcr(lab, "members", "Credits charged per member", p)
        balances = dashboard_mcr(lab, "members", "Balance per member", p)
        out = []
        for member in DEMO_PEOPLE:
            who = pseudonym(secret, member.id)
            if shown.get(who, 0) != charged.get(member.id, 0):
                out.append((member.id, "charged", shown.get(who, 0), charged.get(member.id, 0)))
            if balances.get(who, 0) != accounts[member.id]["balance"]["mcr"]:
                out.append((member.id, "balance", balances.get(who, 0), accounts[member.id]["balance"]["mcr"]))
        return out

    assert eventually(differences) == []
    assert sum(1 for n in charged.values() if n > 0) >= 2, "members' sessions were charged"


def eventually(differences: Callable[[], list[Any]], timeout: float = 10.0) -> list[Any]:
    """The differences once there are none, or the last ones after `timeout`: a sample sent
    a moment ago can take a second or two to show in VictoriaMetrics' answers on a busy machine."""
    deadline = time.monotonic() + timeout
    while (found := differences()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return found


def test_the_communitys_credit_totals_agree_with_the_ledger_api(lab: LabRun) -> None:
    p = period(lab)
    balances = {b["account"]: b["balance"]["mcr"] for b in api(lab, "/api/v1/ledger/balances")}
    charges = sum(
        -posting["amount"]["mcr"]
        for tx in ledger_transactions(lab)
        if tx["kind"] == "charge"
        for posting in tx["postings"]
        if posting["account"].startswith("member:")
    )
    members = sum(n for account, n in balances.items() if account.startswith("member:"))
    assert dashboard_mcr(lab, "members", "Credits charged", p) == {"": charges}
    assert dashboard_mcr(lab, "members", "Allowance issued", p) == {"": -balances["issuance:allowance"]}
    assert dashboard_mcr(lab, "members", "Contributions granted", p) == {"": CONTRIBUTION_MCR}
    assert balances["contributions"] == -CONTRIBUTION_MCR
    assert dashboard_mcr(lab, "members", "Members' credit", p) == {"": members}
    # Spending accounts: their balance is what was spent on them.
    spent = {
        (r["metric"].get("account", ""), r["metric"].get("machine", "") or r["metric"].get("source", "")): round(
            float(r["value"][1]) * 1000
        )
        for r in vm_query(
            lab.vm,
            resolve(panel_expr("members", "Credits spent by account, in total"), p.until - p.since),
            at=p.until,
        )
    }
    expected = {}
    for account, n in balances.items():
        kind, _, name = account.partition(":")
        if kind in ("machine-time", "energy", "commons"):
            expected[(kind, name)] = n
    assert spent == expected
    assert {kind for kind, _ in spent} == {"machine-time", "energy", "commons"}
    assert sum(spent.values()) == charges
