"""`commonwatt demo`: a simulated lab, the gateway reading it, and a live table.

Everything runs in this one process from embedded defaults: an amqtt broker on a
free loopback port, the simulated devices publishing their real payload formats,
and the gateway with a SQLite journal and its API. The configuration it runs under
is written next to the journal, so every other command works on the demo too:
`commonwatt journal stats --config <folder>/commonwatt.toml`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from gateway.aio import wait_event
from gateway.app import Gateway, stop_on_signals
from gateway.config import Config, load_config
from gateway.demo import GATEWAY_DEVICES, DemoSite, DemoTiming, EmbeddedBroker, SiteSettings
from gateway.demo.scenario import ENERGY_TOML, PRICING_TOML, BadgeNodes, Scenario, machines_toml, seed_people
from gateway.demo.serial_devices import SerialDemo, from_snapshot
from gateway.energy_report import today_line
from gateway.people import People
from gateway.quantities import quantity

#: Demo device ids, by the device key the simulators publish under.
DEVICE_IDS = {
    "shellypro3em-demo01": "grid",
    "shellyplusplugs-laser01": "laser",
    "shellyplusplugs-printer01": "printer",
    "shellyplusplugs-cnc01": "cnc",
    "114182912345": "roof-pv",
    "c0619ab1b2c3/battery/512": "battery",
}
SHOWN = ("power_w", "energy_wh", "energy_returned_wh", "soc_pct", "relay_on", "online")
HEADERS = ("power", "energy in", "energy out", "SoC", "relay", "online")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


#: The live demo signs a checkpoint every minute, so the member page has proofs to download
#: soon after the first receipts (a lab's default is 15 minutes).
LIVE_AUDIT_TOML = "[audit]\ncheckpoint_every_s = 60\n"


def demo_config_text(broker_port: int, api_port: int) -> str:
    lines = [
        "# Written by `commonwatt demo`: the demo lab's configuration.",
        '[site]\nid = "demo"\nname = "commonwatt demo lab"\n',
        '[journal]\npath = "commonwatt.sqlite"\n',
        # amqtt speaks MQTT 3.1.1 only.
        f'[mqtt]\nport = {broker_port}\nclient_id = "commonwatt-demo"\nversion = "3.1.1"\n',
        f"[api]\nport = {api_port}\n",
    ]
    for dev in GATEWAY_DEVICES:
        lines.append(
            f'[[devices]]\nid = "{DEVICE_IDS[dev.key]}"\nprotocol = "{dev.protocol}"\n'
            f'prefix = "{dev.key}"\nrole = "{dev.role}"\nname = "{dev.machine or DEVICE_IDS[dev.key]}"\n'
        )
    return "\n".join(lines)


def _fmt(metric: str, value: float) -> str:
    unit = quantity(metric).unit
    if metric in {"relay_on", "online"}:
        return "on" if value >= 0.5 else "off"
    if metric.startswith("energy"):
        return f"{value / 1000:,.3f} kWh"
    return f"{value:,.1f} {unit}".strip()


def live_table(gw: Gateway, started: float, scenario: Scenario | None = None) -> Group:
    health = gw.health()
    mqtt = health["sources"][0] if health["sources"] else {}
    elapsed = max(time.time() - started, 1e-3)
    rejected = sum(mqtt.get("rejected", {}).values())
    head = Text.assemble(
        ("commonwatt demo", "bold"),
        f"  API http://127.0.0.1:{gw.api_port}/api/docs   journal {health['journal']['committed_seq']:,} records   ",
        f"MQTT {mqtt.get('messages', 0):,} messages ({mqtt.get('messages', 0) / elapsed:,.0f}/s), {rejected} rejected",
    )
    table = Table("device", "role", "last seen", *HEADERS, expand=False)
    now = time.time()
    for dev in gw.config.devices:
        live = gw.live.devices.get(dev.id)
        latest = live.latest if live else {}
        seen = f"{now - live.last_seen:.1f} s ago" if live and live.last_seen else "never"
        cells = [_fmt(m, latest[m][1]) if m in latest else "" for m in SHOWN]
        table.add_row(dev.id, dev.role, seen, *cells)
    badge = gw.live.badges[-1] if gw.live.badges else None
    seen = f"last badge: {badge[2]} at {badge[1]}, {now - badge[0]:.0f} s ago" if badge else "no badge yet"
    lines: list[Table | Text] = [head, table, *_machines(gw, now), Text(seen)]
    if scenario is not None:
        lines.append(Text(f"at the machines: {scenario.last}"))
    lines.append(Text(today_line(gw.config.journal.path, time.time())))
    return Group(*lines, Text("Ctrl-C stops the demo.", style="dim"))


def _machines(gw: Gateway, now: float) -> list[Table]:
    """Each machine's state and session, as the floor sees it."""
    if gw.floor is None:
        return []
    table = Table("machine", "state", "member", "session", "energy", "relay", expand=False)
    for machine in gw.config.machines:
        view = gw.floor.machine_view(machine.id)
        s = view.session
        relay = "" if view.relay_on is None else ("on" if view.relay_on else "off")
        if view.relay_pending is not None:
            relay += " (switching)"
        table.add_row(
            machine.name or machine.id,
            view.state,
            s.member_id if s else "",
            f"{(now - s.start) / 60:.1f} min" if s else "",
            f"{s.energy_wh:.1f} Wh" if s else "",
            relay,
        )
    return [table]


async def run_demo(*, api_port: int = 8080, seconds: float = 0, folder: Path | None = None) -> Config:
    folder = folder or Path(tempfile.mkdtemp(prefix="commonwatt-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    if api_port and not _port_free(api_port):
        api_port = 0  # somebody else has it: any free port will do
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)  # a log file or CI: room for the whole table
    async with (
        EmbeddedBroker() as broker,
        DemoSite(SiteSettings(autopilot=False), DemoTiming()).running(broker.host, broker.port) as site,
        SerialDemo(folder, state=from_snapshot(site.snapshot)) as serial,
        BadgeNodes(broker.host, broker.port) as nodes,
    ):
        path = folder / "commonwatt.toml"
        parts = (demo_config_text(broker.port, api_port), serial.devices_toml(), machines_toml(), ENERGY_TOML)
        path.write_text("\n".join((*parts, PRICING_TOML, LIVE_AUDIT_TOML)))
        config = load_config(path)
        with People(config.journal.path) as people:
            seed_people(people)
        console.print(f"demo configuration: {path}")
        async with stop_on_signals() as stop, Gateway(config) as gw:
            if gw.mqtt is not None:
                await gw.mqtt.wait_connected()  # badges are not retained: the gateway must be listening
            async with Scenario(site, nodes) as scenario:
                badges = asyncio.create_task(_door_badges(serial))
                try:
                    await _show(gw, stop, seconds, console, scenario)
                finally:
                    badges.cancel()
    console.print(f"journal kept in {config.journal.path}")
    return config


#: Cards shown at the door reader now and then (10 hex digits: the RDM6300's 5 data bytes).
DOOR_CARDS = ("0D00A3F2C1", "0D0047B11E", "0D00C0FFEE")


async def _door_badges(serial: SerialDemo) -> None:
    """Members arriving: a card held at the door reader every few seconds."""
    for n in range(1_000_000):
        await asyncio.sleep(7.0)
        serial.reader.present(DOOR_CARDS[n % len(DOOR_CARDS)], hold_s=0.8)


async def _show(
    gw: Gateway, stop: asyncio.Event, seconds: float, console: Console, scenario: Scenario | None = None
) -> None:
    started = time.time()
    deadline = started + seconds if seconds > 0 else None
    refresh: Any = Live(live_table(gw, started, scenario), console=console, refresh_per_second=2, transient=False)
    with refresh if console.is_terminal else contextlib.nullcontext():
        while not stop.is_set() and (deadline is None or time.time() < deadline):
            await wait_event(stop, 1.0)
            if console.is_terminal:
                refresh.update(live_table(gw, started, scenario))
    if not console.is_terminal:
        console.print(live_table(gw, started, scenario))
