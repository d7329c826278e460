"""Acceptance: every dashboard query runs against a real VictoriaMetrics filled by the demo lab.

One module-scoped run (about 25 s): the demo's simulated devices and badge nodes on the
embedded broker, a fast lab day (`Scenario`, speed 10) with members badging in and out,
and a real `Gateway` with `[tsdb]` pointing at a private VictoriaMetrics. The machine
state sink writes every second, and VictoriaMetrics scrapes the gateway's /metrics every
second, as `deploy/` sets it up in production (`-promscrape.config`). One malformed
frame is published so that the "rejected frames" panel has something to show.

Then:
- every panel's query, with its variables resolved, returns at least one series;
- the site's PV energy and grid import, and each member's energy, computed by the
  dashboards' own queries, agree with the gateway's API (`/api/v1/energy/balance`,
  `/api/v1/members/{id}/energy`) within 0.5 %.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
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
from gateway.people import People
from gateway.sinks.machinestate import MachineStateSink
from tests.services import VictoriaMetrics, _find, free_port

JSON_DIR = Path(__file__).resolve().parents[2] / "dashboards" / "json"
SITE = "demo"
RUN_S = 24.0
SPEED = 10.0
TOLERANCE = 0.005


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
            # Frames no decoder accepts: the gateway counts them under rejected, by reason. Two,
            # seconds apart, so the scraped counter changes between scrapes (increase() sees it).
            for _ in range(2):
                await asyncio.sleep(3.0)
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
        path.write_text(demo_config_text(broker.port, api_port) + "\n" + tsdb + "\n" + machines_toml(SPEED))
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
        with People(config.journal.path) as people:
            token = people.create_token("admin")
        vm.flush()
        yield LabRun(config, vm, started, ended, token)
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
    window = int(lab.ended - lab.started) + 300
    expr = resolve(target["expr"], window)
    if target.get("instant"):
        result = vm_query(lab.vm, expr, at=lab.ended)
    else:
        result = vm_query_range(lab.vm, expr, lab.started - 120, lab.ended)
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
