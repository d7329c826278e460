"""`commonwatt demo --month [YYYY-MM]`: a month of the demo lab in minutes, through the real gateway.

The demo lab of `commonwatt demo` (its devices, members, trainings and machines) lives a
whole calendar month on a simulated clock, then the month is closed as a lab would close
it: a statement for every member (JSON, CSV, HTML), the community report, and
`commonwatt audit verify`. The exit status is 0 only if the verification passes.

Nothing here decides, measures or charges by itself; it only plays the world around the
gateway:

- the sun, battery, grid and machines are the demo's physics (`gateway.demo.physics`),
  stepped every 10 s of simulated time; the demo's simulated devices turn it into their
  real MQTT payloads (Shelly Pro 3EM, Shelly Plus Plug S, OpenDTU, Venus OS) every 60 s of
  simulated time, and at once when a machine's relay or load changes, as a Shelly plug
  pushes its NotifyStatus. The badge readers' messages are the firmware bridge's;
- the messages go through the gateway's own MQTT routing and decoders
  (`gateway.sources.mqtt`) into the journal (`gateway.journal`); only the broker's socket
  is left out. The gateway's relay commands (`gateway.actuators.relays`) reach the plugs,
  and its Venus keep-alives the GX, the same way in reverse;
- the machine floor (`FloorService.step`), the energy service (`EnergyService.step`), the
  ledger (`LedgerService.step`) and the audit log (`AuditService.round`) are the gateway's
  services, stepped on the simulated clock instead of on their timers: the floor after
  every badge, load change and reading (while nobody is at a machine, every 15 minutes of
  readings at once), the energy service and the ledger every 5 minutes, the audit log
  every 15 minutes as in the gateway;
- the members follow `gateway.demo.month_plan`; an operator's contributions are posted
  with `Ledger.grant_contribution` / `approve_contribution`, as the API posts them.

Every clock the services read is the simulated one: the records' times, the ledger's
transaction times (`Ledger(clock=...)`), the people's (`People(clock=...)`), the audit
checkpoints'. So the statements of the simulated month are the ones `commonwatt statement`
prints afterwards on the folder, and `commonwatt audit verify` checks the same database.
"""

from __future__ import annotations

import heapq
import itertools
import json
import math
import tempfile
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from paho.mqtt.client import topic_matches_sub
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gateway.actuators.relays import RelayActuator
from gateway.audit.service import DEFAULT_EVERY_S as AUDIT_EVERY_S
from gateway.audit.service import AuditService
from gateway.audit.verify import VerifyReport, verify
from gateway.config import Config, load_config, parse_config
from gateway.decoders.base import DecodeError
from gateway.demo.devices import SOURCE_BUTTON, Message, SimulatedDevice, json_message, text_message
from gateway.demo.month_plan import (
    TRAINEE_AFTER_S,
    VISITOR,
    Action,
    Approve,
    Grant,
    Unattended,
    Visit,
    action_time,
    month_plan,
)
from gateway.demo.physics import DAY_S, SiteSettings
from gateway.demo.run import demo_config_text
from gateway.demo.scenario import (
    CONTRACT_VERSION,
    DEMO_MACHINES,
    DEMO_PEOPLE,
    ENERGY_TOML,
    PRICING_TOML,
    SEEDED_BY,
    VISITOR_CARD,
    machines_toml,
    seed_people,
)
from gateway.demo.simulators import DemoSite
from gateway.energy_service import EnergyService
from gateway.floor_service import FloorService
from gateway.journal import Journal, NewRow
from gateway.ledger_service import LedgerService
from gateway.people import People
from gateway.people.tokens import parse_token
from gateway.sources.mqtt import Router, build_routes, to_rows
from gateway.statements import (
    FORMATS,
    StatementError,
    community_report,
    member_statement,
    month_of,
    open_audit_log,
    render,
)

#: Every device reports this often (simulated seconds), and at once on a change of relay or load.
READING_S = 60.0
#: The physics never steps further than this at once (its clouds drift with the step).
PHYSICS_STEP_S = 10.0
#: The energy service, then the ledger, are stepped this often (simulated seconds). Stepped one
#: after the other, the ledger always finds the energy of a session final before it charges it:
#: its fallback for an energy service that lags (charge anyway 4 min after the end) never fires.
SERVICES_EVERY_S = 300.0
#: While the lab is quiet (no relay on, no session), readings are journaled and shown to the
#: floor in batches of this many ticks rather than tick by tick: nothing waits on them then.
QUIET_TICKS = 15
#: After the month: readings go on this long, so that the month's last energy intervals become final.
TAIL_S = 10 * 60.0
#: A member looks at the machine this long after badging: is the relay on, is the session mine?
LOOK_S = 3.0
#: The machines' timers of `machines_toml` are the live demo's divided by this speed: a lab's
#: real ones (idle timeout 15 min, spin-down 2.5 min, maximum 2.5 h, unauthorized use 225 s).
TIMER_SPEED = 1 / 15
#: How the gateway addresses the plugs (the MQTT client id of its RPC replies).
CLIENT_ID = "commonwatt-demo"


class MonthError(Exception):
    """The month cannot be simulated as asked: a bad month, day count or folder."""


def month_config_text() -> str:
    """The demo's configuration (devices, badge readers, machines) with a lab's timers, prices and CO₂.

    The MQTT and API ports are the defaults: nothing listens during the simulation, and a
    `commonwatt run` on the folder would look for a broker there.
    """
    return "\n".join((demo_config_text(1883, 8080), machines_toml(TIMER_SPEED), ENERGY_TOML, PRICING_TOML))


def previous_month(timezone: str, now: float | None = None) -> str:
    """The calendar month before the current one, in `timezone`: `YYYY-MM`."""
    today = datetime.fromtimestamp(time.time() if now is None else now, ZoneInfo(timezone)).date()
    last = today.replace(day=1) - timedelta(days=1)
    return f"{last.year:04d}-{last.month:02d}"


@dataclass(frozen=True, slots=True)
class Period:
    """What is simulated: `days` local days from the 1st of `month`, as UTC seconds [since, until)."""

    month: str
    first: date
    last: date
    since: float
    until: float

    @classmethod
    def of(cls, month: str, timezone: str, days: int | None = None) -> Period:
        try:
            m = month_of(month, timezone)
        except StatementError as exc:
            raise MonthError(str(exc)) from None
        tz = ZoneInfo(timezone)
        first = datetime.fromtimestamp(m.since, tz).date()
        length = (datetime.fromtimestamp(m.until, tz).date() - first).days
        if days is not None and not 1 <= days <= length:
            raise MonthError(f"--days {days}: {month} has days 1 to {length}")
        n = length if days is None else days
        last = first + timedelta(days=n - 1)
        until = datetime.combine(last + timedelta(days=1), datetime.min.time(), tz).timestamp()
        return cls(month, first, last, m.since, until)

    @property
    def whole(self) -> bool:
        """Whether the period is the whole month."""
        return (self.last + timedelta(days=1)).day == 1


# -- the world around the gateway --------------------------------------------------------------


class SimClock:
    """The simulated time, for every service that takes a clock."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Wire:
    """The broker, in process: device messages to the gateway's decoders, the gateway's messages to devices.

    Device messages on the topics the gateway subscribes to are routed and decoded by the
    MQTT source's own `Router` and decoders, and become journal rows under the configured
    device ids (`to_rows`), as `MqttSource` makes them; they wait in `rows` until the lab
    appends them. `messages` counts what was delivered, `rejected` what a decoder refused.
    A message the gateway publishes (a relay command, a Venus keep-alive) goes to every
    device subscribed to its topic, and their answers come back the same way.
    """

    def __init__(self, config: Config, devices: Iterable[SimulatedDevice], clock: SimClock) -> None:
        self.clock = clock
        self.router = Router(build_routes(config.devices))
        self.keys: dict[int, dict[str, str]] = {}
        for route in self.router.routes:
            assert route.device.prefix is not None
            self.keys.setdefault(id(route.decoder), {})[route.device.prefix] = route.device.id
        self.devices = list(devices)
        self._subscribers: dict[str, list[SimulatedDevice]] = {}
        self.rows: list[NewRow] = []
        self.messages = 0
        self.rejected: Counter[str] = Counter()

    def deliver(self, messages: Iterable[Message], ts: float) -> None:
        """Messages from devices, received at `ts`."""
        for msg in messages:
            route = self.router.find(msg.topic)
            if route is None:  # no configured device's topic: the broker would not deliver it
                continue
            self.messages += 1
            try:
                records = route.decoder.decode(msg.topic, msg.payload, ts)
            except DecodeError as exc:
                self.rejected[exc.reason] += 1
                continue
            rows, unknown = to_rows(records, self.keys[id(route.decoder)])
            if unknown:
                self.rejected["unconfigured_device"] += unknown
            self.rows += rows

    def publish(self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False) -> None:
        """The gateway publishes: each subscribed device handles it now; its answers are delivered."""
        body = payload.encode() if isinstance(payload, str) else payload
        now = self.clock()
        for device in self.subscribers(topic):
            self.deliver(device.on_message(topic, body, now), now)

    def subscribers(self, topic: str) -> list[SimulatedDevice]:
        found = self._subscribers.get(topic)
        if found is None:
            found = [d for d in self.devices if any(topic_matches_sub(s, topic) for s in d.subscriptions)]
            self._subscribers[topic] = found
        return found

    def keepalives(self) -> None:
        """What the MQTT source publishes for decoders that need it (Victron Venus): every 30 s in the
        gateway, here before every round of readings (the GX keeps publishing for 60 s after one)."""
        for route in {id(r.decoder): r for r in self.router.routes}.values():
            assert route.device.prefix is not None
            for topic, payload in route.decoder.keepalive(route.device.prefix):
                self.publish(topic, payload, qos=0)


def badge_message(machine: str, uid: str) -> Message:
    """A card held at a demo machine's badge reader (a badge-only ESPHome node of firmware-bridge/)."""
    reader = next(m for m in DEMO_MACHINES if m.id == machine).reader_prefix
    body = {"v": int(CONTRACT_VERSION), "uid": uid, "reader": "rdm6300"}
    return json_message(f"{reader}/badge", body, qos=1)


def reader_births() -> list[Message]:
    """What each badge node publishes when it connects: `online`, and its contract version."""
    out = []
    for m in DEMO_MACHINES:
        out.append(text_message(f"{m.reader_prefix}/status", "online", retain=True, qos=1))
        out.append(text_message(f"{m.reader_prefix}/text_sensor/contract_version/state", CONTRACT_VERSION, retain=True))
    return out


_BADGES = {m.id: m.badge for m in DEMO_PEOPLE} | {VISITOR: VISITOR_CARD}


# -- the month -------------------------------------------------------------------------------------


@dataclass(slots=True)
class Tally:
    """What the simulation did, beside what the gateway journaled."""

    ticks: int = 0
    rows: int = 0
    visits: int = 0
    walked_off: int = 0
    messages: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    contributions: dict[str, int] = field(default_factory=dict)
    approver: str = ""


#: Called now and then while the month plays: (share of the period done, simulated time, tally).
Progressed = Callable[[float, float, Tally], None]


class MonthLab:
    """The demo lab and its gateway's services on one simulated clock. `run()` plays the period."""

    def __init__(self, config: Config, period: Period, plan: Iterable[Action], *, seed: int = 1) -> None:
        self.config = config
        self.period = period
        self.path = Path(config.journal.path)
        self.clock = SimClock(period.since)
        self.tally = Tally()
        settings = SiteSettings(day_length_s=DAY_S, start_hour=_local_hour(period.since, config), seed=seed)
        self.site = DemoSite(settings)
        self.model = self.site.model
        self.sim_t = period.since
        for machine in self.site.plugs:  # off the autopilot: only the gateway and the members move them
            self.model.set_busy(machine, False)
            self.model.set_relay(machine, False)
        self.wire = Wire(config, self.site.devices, self.clock)
        self._queue: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._order = itertools.count()
        for action in plan:
            self._at(action_time(action), self._start, action)
        self.journal = Journal(self.path)
        self._people()
        self._services()

    # -- set-up ----------------------------------------------------------------------------------

    def _people(self) -> None:
        """The demo's members, badges and trainings a day before the month, and the admin's token."""
        with People(self.path, clock=lambda: self.period.since - DAY_S) as people:
            seed_people(people, now=self.period.since - DAY_S)
            token = parse_token(people.create_token("admin", actor=SEEDED_BY))
        assert token is not None
        self.tally.approver = f"token:{token[0]}"  # how the API names an operator without a member

    def _services(self) -> None:
        """The gateway's services, opened as the gateway opens them, on the simulated clock."""
        cfg, clock = self.config, self.clock
        self.ledger = LedgerService(cfg, publish=None, clock=clock)
        self.ledger.open()
        actuator = RelayActuator(cfg.devices, self.wire.publish, client_id=CLIENT_ID)
        self.floor = FloorService(cfg, actuator=actuator, publish=None, credit_ok=self.ledger.credit_ok, clock=clock)
        self.floor.open()
        self.energy = EnergyService(cfg)
        self.energy.open()
        self.audit = AuditService(cfg, None, clock=clock, every_s=cfg.audit.checkpoint_every_s)

    def close(self) -> None:
        self.floor.close()
        self.energy.close()
        self.ledger.close()
        self.audit.log.close()
        self.journal.close()

    # -- the clock -------------------------------------------------------------------------------

    def run(self, progressed: Progressed | None = None) -> Tally:
        """Play the period and the tail after it; every service stepped on the simulated clock."""
        p = self.period
        self.wire.deliver([m for d in self.site.devices for m in d.birth()] + reader_births(), p.since)
        end = p.until + TAIL_S
        next_tick = next_services = next_audit = p.since
        next_report = p.since + 3600.0
        waiting = 0
        while True:
            t = min(next_tick, self._queue[0][0] if self._queue else math.inf)
            if t >= end:
                break
            self._advance(t)
            acted = bool(self._queue) and self._queue[0][0] <= t
            while self._queue and self._queue[0][0] <= t:
                _, _, action, args = heapq.heappop(self._queue)
                action(*args)
            if next_tick <= t:
                self._readings(t)
                next_tick += READING_S
                waiting += 1
            if acted or next_services <= t or waiting >= QUIET_TICKS or not self._quiet():
                self._step_floor(t)
                waiting = 0
            if next_services <= t:
                self.energy.step(t)
                if t < p.until:  # the ledger posts nothing dated after the month
                    self.ledger.step(t)
                next_services += SERVICES_EVERY_S
            if next_audit <= t:
                self.audit.round()
                next_audit += AUDIT_EVERY_S
            if progressed is not None and t >= next_report:
                progressed(min(1.0, (t - p.since) / (p.until - p.since)), t, self.tally)
                next_report += 3600.0
        self._step_floor(end)  # the last readings, journaled and seen by the floor and the energy service
        self.energy.step(end)
        self.clock.now = p.until - 0.001  # the month's books close: anything still pending is charged now
        self.ledger.step(self.clock.now)
        self.clock.now = end
        self.audit.round()
        self.tally.messages, self.tally.rejected = self.wire.messages, self.wire.rejected
        if progressed is not None:
            progressed(1.0, p.until, self.tally)
        return self.tally

    def _advance(self, t: float) -> None:
        """The physics up to `t`, in steps of at most PHYSICS_STEP_S."""
        if t > self.sim_t:
            n = math.ceil((t - self.sim_t) / PHYSICS_STEP_S)
            dt = (t - self.sim_t) / n
            for _ in range(n):
                self.model.step(dt)
            self.sim_t = t
        self.clock.now = t

    def _at(self, ts: float, action: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._queue, (ts, next(self._order), action, args))

    def _readings(self, t: float) -> None:
        self.tally.ticks += 1
        self.wire.keepalives()  # Venus publishes only while kept alive
        for device in self.site.devices:
            self.wire.deliver(device.tick(t, True), t)

    def _flush(self) -> None:
        rows, self.wire.rows = self.wire.rows, []
        if rows:
            self.journal.append_rows(rows)
            self.tally.rows += len(rows)

    def _step_floor(self, t: float) -> None:
        """Journal what arrived, let the floor decide; again while its relay commands bring answers."""
        for _ in range(10):
            self._flush()
            self.floor.step(t)
            if not self.wire.rows:
                return

    def _quiet(self) -> bool:
        """No relay on and no session open: the floor has nothing to decide on readings alone."""
        if any(m.relay for m in self.model.snapshot().machines):
            return False
        return all(self.floor.machine_view(m.id).session is None for m in DEMO_MACHINES)

    # -- the people ------------------------------------------------------------------------------

    def _start(self, action: Action) -> None:
        if isinstance(action, Visit):
            self.tally.visits += 1
            self._badge(action.machine, action.who)
            self._at(action.arrive + LOOK_S, self._look, action)
            if action.trainee is not None:
                self._at(action.arrive + TRAINEE_AFTER_S, self._badge, action.machine, action.trainee)
        elif isinstance(action, Unattended):
            if self.floor.machine_view(action.machine).session is not None:
                return  # somebody works at it: nobody switches it at the plug
            self._button(action.machine, True)
            self._load(action.machine, True)
            self._at(action.off, self._load, action.machine, False)
            self._at(action.off + 30.0, self._button, action.machine, False)
        elif isinstance(action, Grant):
            c = self.ledger.ledger.grant_contribution(
                action.member, action.amount_mcr, action.category, action.note, by=action.by
            )
            self.tally.contributions[action.ref] = c.id
        elif isinstance(action, Approve):
            self.ledger.ledger.approve_contribution(self.tally.contributions[action.ref], by=self.tally.approver)

    def _badge(self, machine: str, who: str) -> None:
        self.wire.deliver([badge_message(machine, _BADGES[who])], self.clock())

    def _holds(self, machine: str, who: str) -> bool:
        """Whether `who` has the machine: the floor's session is theirs and the plug's relay is on."""
        session = self.floor.machine_view(machine).session
        relay = self.model.snapshot().machine(machine).relay
        return relay and session is not None and session.member_id == who

    def _look(self, visit: Visit) -> None:
        """A moment after the badge: work if the machine came on for me, else walk off."""
        if not self._holds(visit.machine, visit.who):
            self.tally.walked_off += 1
            return
        for start, end in visit.work:
            self._at(start, self._work, visit, True)
            self._at(end, self._work, visit, False)
        if visit.leave == "badge_out":
            self._at(visit.leave_at, self._badge_out, visit)

    def _work(self, visit: Visit, busy: bool) -> None:
        if busy and not self._holds(visit.machine, visit.who):
            return  # the session ended under them (a timeout): nobody works a switched-off machine
        self._load(visit.machine, busy)

    def _badge_out(self, visit: Visit) -> None:
        if self._holds(visit.machine, visit.who):  # a badge now on a machine not theirs would open a session
            self._badge(visit.machine, visit.who)

    def _load(self, machine: str, busy: bool) -> None:
        """Someone starts or stops working: the plug reports the new power at once."""
        self.model.set_busy(machine, busy)
        plug = self.site.plugs[machine]
        self.wire.deliver(plug.tick(self.clock(), False), self.clock())

    def _button(self, machine: str, on: bool) -> None:
        """The plug switched at its own button, with no badge."""
        plug = self.site.plugs[machine]
        self.wire.deliver(plug.switch(on, SOURCE_BUTTON, self.clock()), self.clock())


def _local_hour(ts: float, config: Config) -> float:
    local = datetime.fromtimestamp(ts, ZoneInfo(config.site.timezone))
    return local.hour + local.minute / 60.0 + local.second / 3600.0


# -- closing the month -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MonthResult:
    """A simulated month and what came of it."""

    config_path: Path
    period: Period
    tally: Tally
    seconds: float
    statements: dict[str, dict[str, Any]]
    community: dict[str, Any]
    happened: dict[str, Counter[str]]
    report: VerifyReport


def write_documents(config: Config, month: str, folder: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Every member's statement and the community report, in every format, into `folder`.

    Made exactly as `commonwatt statement` and `commonwatt report community` make them,
    the statements with the inclusion proofs of the audit log.
    """
    folder.mkdir(parents=True, exist_ok=True)
    statements: dict[str, dict[str, Any]] = {}
    log = open_audit_log(config)
    try:
        for member in DEMO_PEOPLE:
            inclusion = None if log is None else log.inclusion
            doc = member_statement(config, member.id, month, inclusion=inclusion)
            statements[member.id] = doc
            for fmt in FORMATS:
                (folder / f"statement-{member.id}-{month}.{fmt}").write_text(render(doc, fmt), encoding="utf-8")
    finally:
        if log is not None:
            log.close()
    community = community_report(config, month)
    for fmt in FORMATS:
        (folder / f"community-report-{month}.{fmt}").write_text(render(community, fmt), encoding="utf-8")
    return statements, community


#: The floor's outcomes of a badge, as the summary says them.
OUTCOMES = {"session_opened": "badged in", "session_closed": "badged out", "trainee": "trainee's badge"}


def what_happened(path: Path) -> dict[str, Counter[str]]:
    """The floor's and the ledger's events of the journal, counted by what they say."""
    out: dict[str, Counter[str]] = {k: Counter() for k in ("access", "ended", "alerts", "trainings", "receipts")}
    with Journal(path, readonly=True) as journal:
        for metric, key, into in (
            ("event.access", "outcome", "access"),
            ("event.session_closed", "end_reason", "ended"),
            ("event.alert", "alert", "alerts"),
            ("event.training_granted", "training", "trainings"),
            ("event.receipt", "machine_id", "receipts"),
        ):
            after = 0
            while rows := journal.events(metric, after=after, limit=1000):
                for row in rows:
                    body = json.loads(str(row[5]))
                    label = OUTCOMES.get(str(body.get(key)), str(body.get(key)))
                    if label == "denied":
                        label = f"refused for {body.get('reason')}"
                    out[into][label] += 1
                after = int(rows[-1][0])
    return out


def simulate_month(
    month: str, folder: Path, *, days: int | None = None, seed: int = 1, progressed: Progressed | None = None
) -> MonthResult:
    """Create the demo lab in `folder`, play the month (or its first `days`), close it, verify it."""
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "commonwatt.toml"
    if config_path.exists() or (folder / "commonwatt.sqlite").exists():
        raise MonthError(f"{folder} already holds a lab: give an empty or new folder")
    config_path.write_text(month_config_text(), encoding="utf-8")
    config = load_config(config_path)
    period = Period.of(month, config.site.timezone, days)
    started = time.perf_counter()
    plan = month_plan(period.first, period.last, config.site.timezone, seed=seed)
    lab = MonthLab(config, period, plan, seed=seed)
    try:
        tally = lab.run(progressed)
    finally:
        lab.close()
    seconds = time.perf_counter() - started
    statements, community = write_documents(config, month, folder)
    return MonthResult(
        config_path, period, tally, seconds, statements, community, what_happened(config.journal.path), verify(config)
    )


# -- the command -------------------------------------------------------------------------------------


def site_timezone() -> str:
    """The demo lab's time zone, as its configuration says."""
    return parse_config(tomllib.loads(month_config_text())).site.timezone


def run_month_command(month: str | None, folder: Path | None, days: int | None = None) -> int:
    """`commonwatt demo --month`: 0 when the month's audit verifies, 1 when not, 2 for bad usage."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)  # a log file or CI: room for the tables
    timezone = site_timezone()
    name = month or previous_month(timezone)
    try:
        Period.of(name, timezone, days)
    except MonthError as exc:
        console.print(f"error: {exc}", style="red", highlight=False)
        return 2
    folder = folder or Path(tempfile.mkdtemp(prefix=f"commonwatt-month-{name}-"))
    console.print(f"[bold]commonwatt demo[/bold]: the demo lab's {name}, simulated in {folder}", highlight=False)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"))
    with Progress(*columns, TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("opening the lab", total=1.0)

        def progressed(done: float, t: float, tally: Tally) -> None:
            local = datetime.fromtimestamp(t, ZoneInfo(timezone)).strftime("%a %d %b %H:%M")
            description = f"{local}  {tally.visits} visits  {tally.rows:,} records"
            bar.update(task, completed=done, description=description)

        try:
            result = simulate_month(name, folder, days=days, progressed=progressed)
        except MonthError as exc:
            console.print(f"error: {exc}", style="red", highlight=False)
            return 2
        except KeyboardInterrupt:
            console.print(f"stopped: {folder} holds the lab as far as it got, without statements")
            return 130
    print_result(console, result)
    return 0 if result.report.ok else 1


def print_result(console: Console, r: MonthResult) -> None:
    """What the month did, each member's statement in one line, the audit's verdict, what to run next."""
    p, tally = r.period, r.tally
    span = p.month if p.whole else f"{p.first} to {p.last}"
    rejected = ", ".join(f"{k} {n}" for k, n in sorted(tally.rejected.items())) or "none"
    console.print(
        f"simulated {span} in {r.seconds:.0f} s: {tally.ticks:,} rounds of readings, {tally.messages:,} MQTT "
        f"messages decoded (rejected: {rejected}), {tally.rows:,} journal records; {tally.visits} visits at "
        f"the machines, {tally.walked_off} of them refused",
        highlight=False,
    )
    for what, counts in r.happened.items():
        if counts:
            console.print(f"  {what}: " + ", ".join(f"{k} {n}" for k, n in sorted(counts.items())), highlight=False)
    table = Table(
        "member", "sessions", "sun kWh", "battery kWh", "grid kWh", "charged", "allowance", "contributions", "closing",
        title=f"Statements {p.month} (credits)",
    )  # fmt: skip
    for member, doc in r.statements.items():
        t, c = doc["totals"], doc["credits"]
        table.add_row(
            member, str(t["sessions"]), *(t["kwh"][s] for s in ("sun", "battery", "grid")),
            c["charged"]["credits"], c["allowance"]["credits"], c["contributions"]["credits"], c["closing"]["credits"],
        )  # fmt: skip
    console.print(table)
    console.print("commonwatt audit verify:")
    for line in r.report.lines():
        console.print(f"  {line}", highlight=False)
    cfg = r.config_path
    console.print(f"Statements and the community report are in {cfg.parent}. Afterwards, on the same folder:")
    since, until = p.first.isoformat(), (p.last + timedelta(days=1)).isoformat()
    for command in (
        f"commonwatt statement amira --month {p.month} --format html --out amira.html --config {cfg}",
        f"commonwatt report community --month {p.month} --config {cfg}",
        f"commonwatt audit verify --config {cfg}",
        f"commonwatt energy report --from {since} --to {until} --config {cfg}",
        f"commonwatt journal stats --config {cfg}",
    ):
        console.print(f"  {command}", highlight=False, soft_wrap=True)
