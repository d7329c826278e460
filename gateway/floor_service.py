"""The machine floor at run time: journal rows in, access decisions, sessions and relay commands out.

A journal consumer like the sinks, but stateful. It reads the rows after its position
(badges at the machines' readers, the meters' power and energy, the relays' reported
state, devices' last wills, operators' commands), feeds them to the pure
`gateway.domain.floor.Floor`, and writes what came of them (access decisions, sessions
opened and closed, alerts, trainings granted) back into the journal as `event.<kind>`
rows, in the same transaction as the floor's state and its cursor
(`Journal.append_with_checkpoint`). Only then does it act: relay commands go to the
actuator, alerts to `commonwatt/<site>/alert/<kind>`. A gateway killed at any moment
restarts from the last checkpoint and handles the rows after it again: every open
session and machine state is exactly as before, and nothing is decided twice.

Operators' commands reach the floor the same way as everything else: the API journals
them as `event.operator` rows first.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.actuators.relays import RelayActuator
from gateway.config import Config
from gateway.consumer import JournalConsumerService
from gateway.domain.access import BadgeInfo, Decision, MachineRules, decide
from gateway.domain.floor import Floor, MachineState
from gateway.domain.floor_events import (
    Alert,
    EndSession,
    Event,
    OperatorCommand,
    Override,
    RelayCommand,
    Reserve,
    SetState,
    TrainingGranted,
)
from gateway.journal import Journal, NewRow, Row
from gateway.journal.schema import BADGE
from gateway.people import People, PeopleSnapshot

log = logging.getLogger(__name__)

CONSUMER = "floor"
OPERATOR_EVENT = "event.operator"
READ_LIMIT = 5_000
TICK_S = 1.0
#: Without events, the floor's state is saved at most this often (see `_commit`).
CHECKPOINT_EVERY_S = 5.0

Publish = Callable[..., None]


@dataclass(frozen=True, slots=True)
class Wiring:
    """Which device feeds which machine, from the configuration."""

    readers: dict[str, list[str]]
    meters: dict[str, list[str]]
    relays: dict[str, list[str]]

    @classmethod
    def from_config(cls, config: Config) -> Wiring:
        readers: dict[str, list[str]] = {}
        meters: dict[str, list[str]] = {}
        relays: dict[str, list[str]] = {}
        for m in config.machines:
            for reader in m.readers:
                readers.setdefault(reader, []).append(m.id)
            meters.setdefault(m.meter, []).append(m.id)
            if m.relay is not None:
                relays.setdefault(m.relay, []).append(m.id)
        return cls(readers, meters, relays)


def operator_row(ts: float, command: OperatorCommand) -> NewRow:
    """The journal row of an operator's command (what the API appends)."""
    kind = type(command).__name__
    return (ts, "operator", OPERATOR_EVENT, None, json.dumps({"command": kind, **_fields(command)}))


def _fields(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__slots__}


_COMMANDS: dict[str, type[Any]] = {c.__name__: c for c in (SetState, Override, EndSession, Reserve)}


def parse_operator(text: str) -> OperatorCommand:
    data = json.loads(text)
    cls = _COMMANDS[data.pop("command")]
    command: OperatorCommand = cls(**data)
    return command


class FloorCore:
    """The floor and its people, fed row by row. Not thread-safe: one thread drives it."""

    def __init__(
        self, config: Config, people: People, floor: Floor, *, credit_ok: Callable[[str], bool] | None = None
    ) -> None:
        self.config = config
        #: The ledger's verdict on a member's credit (gateway.ledger_service); None: no ledger.
        self.credit_ok = credit_ok
        self.people = people
        self.floor = floor
        self.wiring = Wiring.from_config(config)
        self.rules = {m.id: MachineRules.from_config(m) for m in config.machines}
        self._snapshot: PeopleSnapshot = people.snapshot()

    def refresh_people(self) -> None:
        if self.people.version() != self._snapshot.version:
            self._snapshot = self.people.snapshot()

    def feed(self, rows: Iterable[Row]) -> list[Any]:
        effects: list[Any] = []
        w = self.wiring
        for _seq, ts, device, metric, value, text in rows:
            if metric == BADGE and text is not None and device in w.readers:
                for machine in w.readers[device]:
                    effects += self._badge(ts, machine, text)
            elif metric == OPERATOR_EVENT and text is not None:
                effects += self._operator(ts, text)
            elif value is not None:
                effects += self._reading(ts, device, metric, value)
        return effects

    def _reading(self, ts: float, device: str, metric: str, value: float) -> list[Any]:
        floor, w = self.floor, self.wiring
        out: list[Any] = []
        if metric == "power_w" and device in w.meters:
            for machine in w.meters[device]:
                out += floor.power(ts, machine, value)
        elif metric == "energy_wh" and device in w.meters:
            for machine in w.meters[device]:
                out += floor.energy(ts, machine, value)
        elif metric == "relay_on" and device in w.relays:
            for machine in w.relays[device]:
                out += floor.relay_state(ts, machine, value >= 0.5)
        elif metric == "online":
            for machine in dict.fromkeys(w.meters.get(device, []) + w.relays.get(device, [])):
                out += floor.online(ts, machine, value >= 0.5)
        return out

    def _operator(self, ts: float, text: str) -> list[Any]:
        try:
            return list(self.floor.operator(ts, parse_operator(text)))
        except (KeyError, TypeError, ValueError) as exc:  # validated by the API; a bad row is logged, not fatal
            log.warning("operator command ignored: %s (%s)", text, exc)
            return []

    def decision(self, ts: float, machine: str, uid: str) -> tuple[Decision, bool]:
        snap = self._snapshot
        found = snap.badges.get(uid)
        info = None
        if found is not None:
            badge, member = found
            info = BadgeInfo(uid, badge.status, member.id, member.status, member.roles)
        view = self.floor.machine_view(machine)
        trainings = snap.trainings.get(info.member_id, {}) if info and info.member_id else {}
        decision = decide(
            ts=ts,
            machine=self.rules[machine],
            machine_state=view.admin_state,
            reserved_for=view.reserved_for,
            badge=info,
            trainings=trainings,
            open_now=self.floor.open_now(ts),
            credit_ok=info is None
            or info.member_id is None
            or self.credit_ok is None
            or self.credit_ok(info.member_id),
            badge_uid=uid,
        )
        trainer = info is not None and "trainer" in info.member_roles and decision.allowed
        return decision, trainer

    def _credit_ok(self, info: BadgeInfo | None) -> bool:
        if info is None or info.member_id is None or self.credit_ok is None:
            return True  # an unknown badge is refused for that; no ledger: no credit check
        return self.credit_ok(info.member_id)

    def _badge(self, ts: float, machine: str, uid: str) -> list[Any]:
        # Timers due by now (an override that expired, a session that timed out) first:
        # the decision must see the machine as it is at the badge's time.
        out: list[Any] = list(self.floor.tick(ts))
        decision, trainer = self.decision(ts, machine, uid)
        return out + list(self.floor.badge(ts, machine, decision, trainer=trainer))


def event_row(event: Event) -> NewRow:
    data = event.as_json()
    return (event.ts, data.get("machine_id") or "floor", f"event.{event.kind}", None, json.dumps(data))


class FloorService(JournalConsumerService):
    """Runs the floor on its own thread: `async with FloorService(...) as floor:` in the gateway."""

    def __init__(
        self,
        config: Config,
        *,
        actuator: RelayActuator | None,
        publish: Publish | None,
        credit_ok: Callable[[str], bool] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__("floor", tick_s=TICK_S, log=log)
        self.config = config
        self.credit_ok = credit_ok
        #: The time trainings granted at a machine are recorded with (a simulation's clock in the demo).
        self.clock = clock
        self.path = Path(config.journal.path)
        self.actuator = actuator
        self.publish = publish
        self.lock = threading.Lock()  # the API reads machine views while the floor thread writes
        self.core: FloorCore | None = None
        self.journal: Journal | None = None
        self.position = 0
        self._checkpointed = 0.0
        self.decisions = 0

    # -- lifetime (the thread, the wake-ups and the tick: `JournalConsumerService`) ----------------

    def open(self) -> None:
        """Open the journal and the people and restore the floor (`async with` does it on its thread)."""
        cfg = self.config
        self.journal = Journal(self.path)
        people = People(self.path, clock=self.clock)
        saved = self.journal.checkpoint(CONSUMER)
        if saved is None:
            floor = Floor(cfg.machines, cfg.access, timezone=cfg.site.timezone)
            self.position = self.journal.last_seq()  # a new floor starts now, not from history
        else:
            self.position, state = saved
            floor = Floor.from_json(json.loads(state), cfg.machines, cfg.access, cfg.site.timezone)
        self.core = FloorCore(cfg, people, floor, credit_ok=self.credit_ok)

    def close(self) -> None:
        if self.core is not None:
            self.core.people.close()
        if self.journal is not None:
            self.journal.close()

    # -- one step (the floor thread) ---------------------------------------------------------------

    def step(self, now: float) -> None:
        """Handle every committed row after our position, then the timers due at `now`."""
        assert self.core is not None and self.journal is not None
        core = self.core
        core.refresh_people()
        while True:
            rows = self.journal.read(self.position, READ_LIMIT)
            with self.lock:
                effects = core.feed(rows)
                if not rows:
                    effects += core.floor.tick(now)
                self._commit(effects, rows[-1][0] if rows else self.position)
            self._act(effects)
            if not rows:
                return

    def _commit(self, effects: list[Any], position: int) -> None:
        assert self.core is not None and self.journal is not None
        events = [e for e in effects if not isinstance(e, RelayCommand)]
        grants = [e for e in events if isinstance(e, TrainingGranted)]
        for grant in grants:  # idempotent: a replay after a crash renews the same grant
            self.core.people.grant_training(grant.member_id, grant.training, granted_by=grant.granted_by, at=grant.ts)
        now = time.monotonic()
        if not events and (position == self.position or now - self._checkpointed < CHECKPOINT_EVERY_S):
            # Nothing decided: the state only moved with the readings, which a restart replays
            # from the last checkpoint to the same result. Saving it on every commit would make
            # the floor compete with the ingest path for the database.
            self.position = position
            return
        state = json.dumps(self.core.floor.to_json())
        self.journal.append_with_checkpoint([event_row(e) for e in events], CONSUMER, position, state)
        self.position = position
        self._checkpointed = now
        self.decisions += sum(1 for e in events if e.kind == "access")

    def _act(self, effects: list[Any]) -> None:
        for effect in effects:
            if isinstance(effect, RelayCommand) and self.actuator is not None:
                try:
                    self.actuator.command(effect.relay, effect.on)
                except (ValueError, KeyError) as exc:
                    log.error("relay %s of %s: %s", effect.relay, effect.machine_id, exc)
            elif isinstance(effect, Alert) and self.publish is not None:
                topic = f"commonwatt/{self.config.site.id}/alert/{effect.alert}"
                self.publish(topic, json.dumps(effect.as_json()), qos=1, retain=False)

    # -- views for the API -------------------------------------------------------------------------

    def machine_view(self, machine_id: str) -> MachineState:
        assert self.core is not None
        with self.lock:
            return self.core.floor.machine_view(machine_id)
