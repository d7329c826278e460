"""A day at the demo lab: members badging in and out, machines that draw power while used.

The demo's machines are switched by the gateway, exactly as in a real lab: a member's
badge goes from a simulated badge-only ESPHome node (firmware-bridge/CONTRACT.md, the
"Shelly variant") through the broker to the gateway; the gateway decides, and on
"allow" sends `Switch.Set` to the machine's Shelly plug, which the simulated plug
applies. The scenario never switches a plug for a member: it waits for the plug's relay
to come on, and only then does the member start working (`DemoSite.set_busy`), so the
power the gateway meters follows the session it opened.

    async with BadgeNodes(broker.host, broker.port) as nodes, Scenario(site, nodes):
        ...  # the lab day plays in a loop until the block exits

What a loop shows, at `speed` 1 in about two minutes, on three machines at once:

- sessions opened and closed by the same badge (`badge_out`);
- a member who walks away from the printer, whose session the idle timeout ends;
- a member who forgets to badge out at the laser, and the next member's badge takes over;
- refusals: a training missing (CNC), a training expired (laser), a card nobody holds;
- the CNC switched on at the plug's own button with nobody badged in (`unauthorized_use`).

The gateway's configuration for all this comes from `machines_toml()`, the people from
`seed_people()`. `speed` shortens every pause of the scenario, and `machines_toml(speed)`
the machines' timers by the same factor, so a test can play the same day in seconds.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.demo.simulators import DemoSite
from gateway.people import People

# -- the people ---------------------------------------------------------------------------------

DAY_S = 86_400.0


@dataclass(frozen=True, slots=True)
class DemoMember:
    """A member of the demo lab. `expired`: trainings granted once that ran out a month ago."""

    id: str
    name: str
    roles: tuple[str, ...]
    badge: str  # an RDM6300 card's 32-bit tag id, 8 hex digits, as the badge node sends it
    trainings: tuple[str, ...] = ()
    expired: tuple[str, ...] = ()


DEMO_PEOPLE: tuple[DemoMember, ...] = (
    DemoMember("amira", "Amira Haddad", ("member",), "3F0A1C52", ("laser-basic", "cnc-basic")),
    DemoMember("bruno", "Bruno Costa", ("member", "trainer"), "5B22E917", ("laser-basic", "cnc-basic")),
    DemoMember("chloe", "Chloé Martin", ("member",), "7C90D4A3", ("laser-basic",)),  # no cnc-basic
    DemoMember("dan", "Dan Okafor", ("member",), "12E4B08F", expired=("laser-basic",)),
    DemoMember("elif", "Elif Yılmaz", ("member", "operator"), "A04C7D19", ("laser-basic", "cnc-basic")),
    DemoMember("fatou", "Fatou Diallo", ("member",), "E1570B6C", ("laser-basic",)),
)
#: A card nobody in the lab holds: a visitor trying their office badge.
VISITOR_CARD = "9D3366A0"
#: Who grants the demo's trainings.
SEEDED_BY = "demo"


def seed_people(people: People, *, now: float | None = None) -> int:
    """Add the demo's members, badges and trainings that are not there yet; returns how many.

    Idempotent: a second call changes nothing (and journals nothing), so a demo restarted
    on the same folder keeps its people as they are.
    """
    now = time.time() if now is None else now
    added = 0
    for m in DEMO_PEOPLE:
        if people.member(m.id) is None:
            people.add_member(m.id, m.name, roles=m.roles, actor=SEEDED_BY)
            added += 1
        if people.badge(m.badge) is None:
            people.assign_badge(m.badge, m.id, actor=SEEDED_BY)
            added += 1
        added += _seed_trainings(people, m, now)
    return added


def _seed_trainings(people: People, m: DemoMember, now: float) -> int:
    held = {t.training for t in people.trainings(m.id)}
    added = 0
    for training in m.trainings:
        if training not in held:
            people.grant_training(m.id, training, granted_by=SEEDED_BY, at=now)
            added += 1
    for training in m.expired:
        if training not in held:
            at = now - 400 * DAY_S
            people.grant_training(m.id, training, granted_by=SEEDED_BY, at=at, expires_at=now - 30 * DAY_S)
            added += 1
    return added


# -- the machines and their readers in commonwatt.toml ------------------------------------------


@dataclass(frozen=True, slots=True)
class DemoMachine:
    """A machine of the demo lab: its plug is the demo device `id`, its badge node `<id>-reader`.

    `idle_threshold_w` sits between the machine's standby and its lowest working power
    (gateway/demo/physics.py), so a machine left on but unused counts as idle.
    """

    id: str
    name: str
    trainings: tuple[str, ...]
    idle_threshold_w: float

    @property
    def reader(self) -> str:
        return f"{self.id}-reader"

    @property
    def reader_prefix(self) -> str:
        return f"commonwatt/{self.reader}"


DEMO_MACHINES: tuple[DemoMachine, ...] = (
    DemoMachine("laser", "laser cutter", ("laser-basic",), 50.0),  # standby 28 W, working from 180 W
    DemoMachine("printer", "3D printer", (), 20.0),  # open to every member; standby 6.5 W, working 70 W
    DemoMachine("cnc", "CNC router", ("cnc-basic",), 80.0),  # standby 45 W, working from 300 W
)
MACHINE_NAMES = {m.id: m.name for m in DEMO_MACHINES}

#: The machines' timers at demo scale, in seconds: a lab's would be minutes to hours.
DEMO_TIMERS: dict[str, float] = {
    "idle_timeout_s": 60.0,
    "spin_down_s": 10.0,
    "max_duration_s": 600.0,
    "unauthorized_after_s": 15.0,
}


#: What the demo lab charges and gives (the live demo and `demo --month`): prices in credits, as
#: `[pricing]` in commonwatt.toml. Sun is cheapest, then the battery, then the grid.
PRICING_TOML = """\
[pricing]
minimum_charge = "0.1"
credit_limit = "40"
contribution_approval_above = "100"

[pricing.default_rate]
busy_per_hour = "0.4"
idle_per_hour = "0.1"

[pricing.machines.laser]
busy_per_hour = "1.5"
idle_per_hour = "0.25"

[pricing.machines.cnc]
busy_per_hour = "1"
idle_per_hour = "0.25"

[pricing.energy]
sun = "0.05"
battery = "0.1"
grid = "0.25"

[pricing.allowance]
amount = "40"
day = 1
"""


#: The grid's carbon intensity for the demo's receipts and statements (g CO₂ per kWh).
ENERGY_TOML = "[energy]\nco2_g_per_kwh = 150\n"


def machines_toml(speed: float = 1.0) -> str:
    """`[[devices]]` for the badge nodes and `[[machines]]` for the demo's three machines.

    The plugs themselves are the demo devices `laser`, `printer` and `cnc` of `run.py`;
    every timer is divided by `speed`, as `Scenario(speed=...)` divides its pauses.
    """
    tables = [
        f'[[devices]]\nid = "{m.reader}"\nprotocol = "esphome"\nprefix = "{m.reader_prefix}"\n'
        f'role = "other"\nname = "badge reader, {m.name}"\nsilent_after_s = 86400\n'
        for m in DEMO_MACHINES
    ]
    for m in DEMO_MACHINES:
        timers = "".join(f"{key} = {value / speed:g}\n" for key, value in DEMO_TIMERS.items())
        tables.append(
            f'[[machines]]\nid = "{m.id}"\nname = "{m.name}"\nmeter = "{m.id}"\nrelay = "{m.id}"\n'
            f'readers = ["{m.reader}"]\ntrainings = {json.dumps(list(m.trainings))}\n'
            f"idle_threshold_w = {m.idle_threshold_w:g}\n{timers}"
        )
    return "\n".join(tables)


# -- the badge nodes -----------------------------------------------------------------------------

#: The firmware bridge's contract version the simulated nodes implement.
CONTRACT_VERSION = "1"
CONNECT_TIMEOUT_S = 10.0
FLUSH_TIMEOUT_S = 2.0


class _Node:
    """One badge-only ESPHome node on its own MQTT connection, as `badge-node-shelly.yaml` runs."""

    def __init__(self, prefix: str, loop: asyncio.AbstractEventLoop) -> None:
        self.prefix = prefix
        self.ready = asyncio.Event()
        self._loop = loop
        self._last: mqtt.MQTTMessageInfo | None = None
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=prefix.replace("/", "-"))
        client.will_set(f"{prefix}/status", b"offline", qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=5)
        client.on_connect = self._on_connect
        self.client = client

    def connect(self, host: str, port: int) -> None:
        self.client.connect_async(host, port, keepalive=30)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool = False) -> None:
        self._last = self.client.publish(topic, payload, qos=qos, retain=retain)

    def badge(self, uid: str) -> None:
        message = {"v": int(CONTRACT_VERSION), "uid": uid, "reader": "rdm6300"}
        self.publish(f"{self.prefix}/badge", json.dumps(message, separators=(",", ":")).encode(), qos=1)

    async def close(self) -> None:
        """A clean shutdown: `offline` (as the node's own shutdown sends it), then disconnect."""
        if self.client.is_connected():
            self.publish(f"{self.prefix}/status", b"offline", qos=1, retain=True)
            last = self._last
            if last is not None:
                with contextlib.suppress(RuntimeError, ValueError):
                    await asyncio.to_thread(last.wait_for_publish, FLUSH_TIMEOUT_S)
        self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)

    def _on_connect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        """Birth on every (re)connection, on paho's thread."""
        if reason.is_failure:
            return
        self.publish(f"{self.prefix}/status", b"online", qos=1, retain=True)
        self.publish(f"{self.prefix}/text_sensor/contract_version/state", CONTRACT_VERSION.encode(), qos=0, retain=True)
        self._loop.call_soon_threadsafe(self.ready.set)


class BadgeNodes:
    """The demo machines' badge readers: one simulated ESPHome badge-only node each.

    `async with BadgeNodes(host, port) as nodes:` connects them all (each announces
    itself `online` with its contract version); `nodes.badge("laser", uid)` is a card
    held at the laser's reader. Call `badge` from the event loop's thread.
    """

    def __init__(self, host: str, port: int, machines: Sequence[DemoMachine] = DEMO_MACHINES) -> None:
        self.host, self.port = host, port
        self._prefixes = {m.id: m.reader_prefix for m in machines}
        self._nodes: dict[str, _Node] = {}

    async def __aenter__(self) -> BadgeNodes:
        loop = asyncio.get_running_loop()
        self._nodes = {machine: _Node(prefix, loop) for machine, prefix in self._prefixes.items()}
        for node in self._nodes.values():
            node.connect(self.host, self.port)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await asyncio.gather(*(node.ready.wait() for node in self._nodes.values()))
        except TimeoutError:
            await self.__aexit__()
            raise ConnectionError(f"badge nodes could not connect to MQTT at {self.host}:{self.port}") from None
        return self

    async def __aexit__(self, *exc: object) -> None:
        nodes, self._nodes = self._nodes, {}
        await asyncio.gather(*(node.close() for node in nodes.values()))

    def badge(self, machine: str, uid: str) -> None:
        """A card held at `machine`'s reader. KeyError for a machine without a node."""
        self._nodes[machine].badge(uid)


# -- the lab day ---------------------------------------------------------------------------------

#: How a member leaves a machine: badges out; walks away and lets the idle timeout end the
#: session; or leaves it running, so the next member's badge takes over.
Leave = Literal["badge_out", "walk_away", "stay"]


@dataclass(frozen=True, slots=True)
class Visit:
    """Someone at a machine, `gap_s` after the previous visit there.

    `who` is a member id, `"visitor"` (a card nobody holds), or None: somebody switches
    the machine on at its plug's own button without badging. `work_s`: stretches of work,
    with a short pause between them. A member whose relay does not come on walks off.
    """

    machine: str
    who: str | None
    gap_s: float = 3.0
    work_s: tuple[float, ...] = ()
    leave: Leave = "badge_out"


#: One day at the lab: one lane of visits per machine, the lanes played side by side.
LAB_DAY: tuple[tuple[Visit, ...], ...] = (
    (
        Visit("laser", "amira", 2.0, (9.0, 4.0, 7.0), "stay"),  # forgets to badge out ...
        Visit("laser", "fatou", 4.0, (8.0, 5.0)),  # ... and Fatou's badge takes the machine over
        Visit("laser", "dan", 6.0),  # laser-basic expired: refused
        Visit("laser", "visitor", 5.0),  # unknown badge: refused
        Visit("laser", "bruno", 4.0, (10.0, 6.0)),
    ),
    (
        Visit("printer", "dan", 1.0, (25.0,), "walk_away"),  # the idle timeout ends his session
        Visit("printer", "chloe", 5.0, (12.0, 8.0)),
    ),
    (
        Visit("cnc", "elif", 4.0, (12.0, 6.0)),
        Visit("cnc", "chloe", 5.0),  # no cnc-basic: refused
        Visit("cnc", None, 6.0, (30.0,)),  # switched on at the plug with nobody badged in
        Visit("cnc", "amira", 8.0, (10.0, 8.0)),
    ),
)
#: Between two stretches of work or before badging out, and between two days (seconds at speed 1).
PAUSE_S = 2.0
NIGHT_S = 10.0
#: How long a member waits for the relay after badging (real seconds: MQTT and the gateway
#: do not run faster with `speed`); the gateway's answer takes milliseconds.
RELAY_WAIT_S = 3.0
#: How often the relay's state is looked at while waiting for it.
POLL_S = 0.05
#: What the scenario remembers of what happened, for a live display.
HISTORY = 50


class Scenario:
    """Plays `day` on `site` through `nodes`, in a loop (`loops` times, or until stopped).

    `async with Scenario(site, nodes):` runs it as a task of the running loop. At start it
    takes every machine of the day off the site's autopilot (`park`: relay off, nobody
    working): from then on only the gateway's commands and the scenario's people move them.
    `relay_wait_s` is how long a member waits for the relay after badging before walking off.
    `history` holds the latest (time, what happened) lines, `last` the newest.
    """

    def __init__(
        self,
        site: DemoSite,
        nodes: BadgeNodes,
        *,
        speed: float = 1.0,
        day: Sequence[Sequence[Visit]] = LAB_DAY,
        loops: int | None = None,
        timers: Mapping[str, float] = DEMO_TIMERS,
        relay_wait_s: float = RELAY_WAIT_S,
    ) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be positive, not {speed}")
        self.site, self.nodes, self.speed, self.day, self.loops = site, nodes, speed, day, loops
        self.relay_wait_s = relay_wait_s
        self.idle_wait_s = (timers["idle_timeout_s"] + timers["spin_down_s"]) / speed + relay_wait_s
        self.history: collections.deque[tuple[float, str]] = collections.deque(maxlen=HISTORY)
        self.days_played = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def last(self) -> str:
        return self.history[-1][1] if self.history else "the lab is opening"

    async def __aenter__(self) -> Scenario:
        self._task = asyncio.create_task(self.run(), name="demo-scenario")
        return self

    async def __aexit__(self, *exc: object) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self) -> None:
        """Plays the day `loops` times (forever with None), a quiet night between days."""
        self.park()
        while self.loops is None or self.days_played < self.loops:
            async with asyncio.TaskGroup() as lanes:
                for lane in self.day:
                    lanes.create_task(self._lane(lane))
            self.days_played += 1
            await self._pause(NIGHT_S)

    def park(self) -> None:
        """Every machine of the day off its autopilot: relay off, nobody working. Idempotent."""
        for machine in dict.fromkeys(visit.machine for lane in self.day for visit in lane):
            self.site.set_busy(machine, False)
            self.site.set_relay(machine, False)

    async def _lane(self, visits: Sequence[Visit]) -> None:
        for visit in visits:
            await self._pause(visit.gap_s)
            if visit.who is None:
                await self._unattended(visit)
            else:
                await self._visit(visit, visit.who)

    async def _visit(self, visit: Visit, who: str) -> None:
        name, machine = _name(who), MACHINE_NAMES.get(visit.machine, visit.machine)
        self.nodes.badge(visit.machine, _badge(who))
        self._say(f"{name} badges at the {machine}")
        if not await self._relay(visit.machine, True, self.relay_wait_s):
            self._say(f"{name} is refused at the {machine} and walks off")
            return
        await self._work(visit)
        await self._leave(visit, who, f"{name} leaves the {machine}")

    async def _work(self, visit: Visit) -> None:
        for n, stretch in enumerate(visit.work_s):
            if n:
                await self._pause(PAUSE_S)
            self.site.set_busy(visit.machine, True)
            await self._pause(stretch)
            self.site.set_busy(visit.machine, False)

    async def _leave(self, visit: Visit, who: str, said: str) -> None:
        if visit.leave == "stay":
            self._say(f"{said} running, without badging out")
            return
        if visit.leave == "walk_away":
            self._say(f"{said} without badging out")
            await self._relay(visit.machine, False, self.idle_wait_s)
            return
        await self._pause(PAUSE_S)  # tidies up: the machine settles to standby before the badge
        self.nodes.badge(visit.machine, _badge(who))
        self._say(f"{said} and badges out")
        await self._relay(visit.machine, False, self.idle_wait_s)  # the next one finds it off

    async def _unattended(self, visit: Visit) -> None:
        """Somebody runs the machine from its plug's button, with no session."""
        machine = MACHINE_NAMES.get(visit.machine, visit.machine)
        self.site.set_relay(visit.machine, True)
        self._say(f"somebody switches the {machine} on at its plug, without a badge")
        await self._work(visit)
        self.site.set_relay(visit.machine, False)
        self._say(f"the {machine} is switched off at its plug")

    async def _relay(self, machine: str, on: bool, wait_s: float) -> bool:
        """Waits up to `wait_s` for the machine's plug to have its relay `on`; whether it has."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while self.site.snapshot().machine(machine).relay != on:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(POLL_S)
        return True

    async def _pause(self, seconds: float) -> None:
        await asyncio.sleep(seconds / self.speed)

    def _say(self, text: str) -> None:
        self.history.append((time.time(), text))


_MEMBERS = {m.id: m for m in DEMO_PEOPLE}


def _badge(who: str) -> str:
    return VISITOR_CARD if who == "visitor" else _MEMBERS[who].badge


def _name(who: str) -> str:
    return "a visitor" if who == "visitor" else _MEMBERS[who].name.split()[0]
