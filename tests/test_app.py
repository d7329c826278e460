"""The gateway as a whole, with a real Mosquitto (and VictoriaMetrics where a sink is configured)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

from gateway.app import Gateway
from gateway.config import parse_config
from gateway.journal import Journal
from tests.services import Mosquitto, VictoriaMetrics

PLUG = "shellyplusplugs-e86beae1a2b3"


def site_config(tmp_path: Path, broker: Mosquitto, **extra: Any) -> dict[str, Any]:
    return {
        "site": {"id": "lab"},
        "journal": {"path": str(tmp_path / "journal.sqlite"), "max_delay_ms": 10},
        "mqtt": {"host": "127.0.0.1", "port": broker.port},
        "api": {"port": 0},
        "devices": [
            {"id": "laser", "protocol": "shelly_gen2", "prefix": PLUG, "role": "machine"},
            {"id": "printers", "protocol": "tasmota", "prefix": "tasmota_A1B2C3", "role": "machine"},
            {"id": "roof", "protocol": "opendtu", "prefix": "114182912345", "role": "pv"},
            {"id": "battery", "protocol": "victron_venus", "prefix": "c0619ab1b2c3/battery/512", "role": "battery"},
            {"id": "drill", "protocol": "shelly_gen1", "prefix": "shellyplug-s-C45BBE", "role": "machine"},
        ],
        **extra,
    }


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def journal_rows(path: Path) -> list[tuple[Any, ...]]:
    with Journal(path, readonly=True) as journal:
        return journal.read(0, 1_000_000)


def test_messages_of_every_protocol_arrive_in_the_journal(tmp_path: Path, mosquitto: Mosquitto) -> None:
    config = parse_config(site_config(tmp_path, mosquitto))

    async def scenario() -> dict[str, Any]:
        async with Gateway(config) as gw:
            assert gw.mqtt is not None
            await gw.mqtt.wait_connected()
            await asyncio.sleep(0.2)  # subscriptions acknowledged
            publish = mosquitto.publish
            status = {"id": 0, "output": True, "apower": 412.6, "voltage": 231.4, "aenergy": {"total": 15872.341}}
            await asyncio.to_thread(publish, f"{PLUG}/status/switch:0", json.dumps(status))
            sensor = {"Time": "2024-06-12T12:00:00", "ENERGY": {"Total": 2674.596, "Power": 17}}
            await asyncio.to_thread(publish, "tele/tasmota_A1B2C3/SENSOR", json.dumps(sensor))
            await asyncio.to_thread(publish, "solar/114182912345/0/power", "612.4")
            await asyncio.to_thread(publish, "N/c0619ab1b2c3/battery/512/Soc", '{"value": 87.4}')
            await asyncio.to_thread(publish, "shellies/shellyplug-s-C45BBE/relay/0/energy", "87341")
            await asyncio.to_thread(publish, f"{PLUG}/status/switch:0", "{not json")
            path = config.journal.path
            await asyncio.to_thread(wait_for, lambda: len(journal_rows(path)) >= 9)
            await asyncio.sleep(0.3)
            url = f"http://127.0.0.1:{gw.api_port}"
            health = json.loads(await asyncio.to_thread(lambda: urllib.request.urlopen(f"{url}/api/v1/health").read()))
            latest = json.loads(
                await asyncio.to_thread(lambda: urllib.request.urlopen(f"{url}/api/v1/readings/latest").read())
            )
            metrics = await asyncio.to_thread(lambda: urllib.request.urlopen(f"{url}/metrics").read().decode())
            return {"health": health, "latest": latest, "metrics": metrics}

    out = asyncio.run(scenario())
    rows = journal_rows(config.journal.path)
    got = {(r[2], r[3]): r[4] for r in rows}
    assert got[("laser", "power_w")] == 412.6
    assert got[("laser", "energy_wh")] == 15872.341
    assert got[("laser", "relay_on")] == 1
    assert got[("printers", "energy_wh")] == 2674596.0
    assert got[("printers", "power_w")] == 17
    assert got[("roof", "power_w")] == 612.4
    assert got[("battery", "soc_pct")] == 87.4
    assert abs(got[("drill", "energy_wh")] - 87341 / 60) < 1e-9
    mqtt = out["health"]["sources"][0]
    assert mqtt["connected"] is True
    assert mqtt["rejected"] == {"bad_json": 1}
    assert out["health"]["devices"]["laser"]["silent"] is False
    assert {"device": "roof", "metric": "power_w", "value": 612.4, "unit": "W"}.items() <= next(
        r for r in out["latest"] if r["device"] == "roof" and r["metric"] == "power_w"
    ).items()
    assert 'commonwatt_rejected_total{source="mqtt",reason="bad_json"} 1' in out["metrics"]


def test_every_protocol_reaches_victoriametrics_with_units_in_the_names(
    tmp_path: Path, mosquitto: Mosquitto, victoria: VictoriaMetrics
) -> None:
    config = parse_config(site_config(tmp_path, mosquitto, tsdb={"url": victoria.url}))
    n = 50

    async def scenario() -> None:
        async with Gateway(config) as gw:
            assert gw.mqtt is not None
            await gw.mqtt.wait_connected()
            await asyncio.sleep(0.2)
            lines = []
            for k in range(n):
                ts = 1_750_000_000 + k
                notify = {"method": "NotifyStatus", "params": {"ts": ts, "switch:0": {"apower": 100.0 + k}}}
                lines.append((f"{PLUG}/events/rpc", json.dumps(notify)))
                sensor = {"Time": f"2025-06-15T15:{k // 60:02d}:{k % 60:02d}", "ENERGY": {"Total": 1.0 + k / 1000}}
                lines.append(("tele/tasmota_A1B2C3/SENSOR", json.dumps(sensor)))
            for topic, payload in lines:
                await asyncio.to_thread(mosquitto.publish, topic, payload)
            sink = gw.sinks[0]
            await asyncio.to_thread(wait_for, lambda: sink.health.as_json()["points_written"] >= 2 * n, 20)

    asyncio.run(scenario())
    laser = victoria.export('{__name__="commonwatt_power_w", device="laser"}')
    assert len(laser) == 1
    assert laser[0]["metric"] == {
        "__name__": "commonwatt_power_w",
        "site": "lab",
        "device": "laser",
        "role": "machine",
    }
    assert laser[0]["values"] == [100.0 + k for k in range(n)]
    assert laser[0]["timestamps"] == [(1_750_000_000 + k) * 1000 for k in range(n)]
    printers = victoria.export('{__name__="commonwatt_energy_wh", device="printers"}')
    assert [round(v, 6) for v in printers[0]["values"]] == [1000.0 + k for k in range(n)]


def test_the_energy_balance_reaches_victoriametrics(
    tmp_path: Path, mosquitto: Mosquitto, victoria: VictoriaMetrics
) -> None:
    from gateway.energy_service import EnergyTsdbWriter, replay_journal

    machines = [{"id": "laser", "meter": "laser"}]
    config = parse_config(site_config(tmp_path, mosquitto, tsdb={"url": victoria.url}, machines=machines))

    async def record() -> None:
        async with Gateway(config) as gw:
            assert gw.mqtt is not None
            await gw.mqtt.wait_connected()
            await asyncio.sleep(0.2)
            now = time.time()
            for k in range(12):  # two minutes of a machine drawing 600 W, as its plug counts it
                status = {"apower": 600.0, "aenergy": {"total": 1000.0 + k * 1.0}}
                notify = {"method": "NotifyStatus", "params": {"ts": now - 130 + k * 10, "switch:0": status}}
                await asyncio.to_thread(mosquitto.publish, f"{PLUG}/events/rpc", json.dumps(notify))
            await asyncio.to_thread(lambda: wait_for(lambda: gw.writer.committed_seq >= 12))

    async def deliver() -> None:
        # Only final intervals go to the TSDB; a replay makes the recorded ones final, as two
        # intervals of waiting would on a running gateway.
        async with EnergyTsdbWriter(journal_path=config.journal.path, site="lab", url=victoria.url) as writer:
            await asyncio.to_thread(lambda: wait_for(lambda: writer.health.as_json()["lag"] == 0, 20))

    asyncio.run(record())
    replay_journal(config)
    asyncio.run(deliver())
    base = victoria.export('{__name__="commonwatt_energy_energy_mwh", kind="unattributed", machine="laser"}')
    assert base, "the laser's unattributed energy by interval is a series"
    from gateway.energy_store import EnergyStore

    with EnergyStore(config.journal.path, readonly=True) as store:
        totals = store.consumer_totals(0, time.time())
    laser = next(t for t in totals if t[0] == "unattributed" and t[1] == "laser")
    # What the tables hold for the laser is what the database got, to the mWh; of the 11 Wh
    # counted, the part in the last, still open interval is not final and not sent.
    assert sum(sum(s["values"]) for s in base) == laser[3] - open_part(config, "laser")  # type: ignore[misc]
    assert 0 < laser[3] <= 11_000


def open_part(config: Any, machine: str) -> int:
    """mWh of the machine in intervals that are not final yet."""
    import sqlite3

    with sqlite3.connect(config.journal.path) as db:
        row = db.execute(
            "SELECT coalesce(sum(s.energy), 0) FROM energy_shares s JOIN energy_intervals i ON i.start = s.start "
            "WHERE i.final = 0 AND s.kind = 'unattributed' AND s.machine_id = ?",
            (machine,),
        ).fetchone()
    return int(row[0])


def test_home_assistant_discovery_from_the_running_gateway(tmp_path: Path, mosquitto: Mosquitto) -> None:
    import subprocess

    config = parse_config(site_config(tmp_path, mosquitto, homeassistant={"interval_s": 0.2}))

    async def scenario() -> list[dict[str, Any]]:
        async with Gateway(config) as gw:
            assert gw.mqtt is not None
            await gw.mqtt.wait_connected()
            await asyncio.sleep(0.5)
            sub = await asyncio.to_thread(
                subprocess.run,
                ["mosquitto_sub", "-p", str(mosquitto.port), "-t", "homeassistant/sensor/+/config", "-W", "2"],
                capture_output=True,
                text=True,
            )
            return [json.loads(line) for line in sub.stdout.splitlines() if line.strip()]

    configs = asyncio.run(scenario())
    assert configs, "retained discovery configs"
    by_class = {c.get("device_class") for c in configs}
    assert {"power", "energy"} <= by_class
    for c in configs:
        if c.get("device_class") == "energy":
            assert c["state_class"] in {"total", "total_increasing"}
        assert c["unique_id"] and c["state_topic"].startswith("commonwatt/lab/")
