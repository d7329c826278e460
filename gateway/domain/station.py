"""One machine's state machine: its session, relay, power, state, reservation and timers.

`gateway.domain.floor.Floor` owns one `Station` per configured machine, keeps the clock and
dispatches inputs; the rules live here. Every method takes `now`, the floor's clock, and
returns the effects it caused, in order.

Power and time. The last power sample holds until the next one (sample and hold): the time
between two samples counts as busy when the earlier one was at or above the machine's
`idle_threshold_w`, idle otherwise; before any sample the machine counts as idle. A session's
`busy_s + idle_s` is therefore exactly its duration, and a meter that goes quiet keeps its
last verdict (the runtime raises `device_silent` for that, and an offline device ends the
session).

Idle timeout with spin-down. Once power has been under the threshold for `idle_timeout_s`
(counted from the later of the last crossing downwards and the session's start), the session
is not cut at once: power must stay under the threshold for a further `spin_down_s`. Any
sample at or above the threshold in that time makes the machine busy again and the count
starts over. The session then ends at that deadline, not when the gateway happens to notice.

Energy. A cumulative counter reading is turned into a delta by `gateway.counters` (resets,
jitter and wrap-around are handled there) and the delta belongs to the session open when the
reading arrives. Energy drawn between a session's last reading and its end is counted by the
next reading, hence by whoever holds the machine then.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from gateway.config import AccessSettings, Machine
from gateway.counters import CounterTracker
from gateway.domain.access import TRAINING_DENIALS, Decision
from gateway.domain.floor_events import (
    ADMIN_STATES,
    AccessEvent,
    Alert,
    Effect,
    EndReason,
    EndSession,
    MachineStateChanged,
    OperatorCommand,
    Outcome,
    Override,
    RelayCommand,
    ReservationChanged,
    Reserve,
    SessionClosed,
    SessionOpened,
    SetState,
    TrainingGranted,
)


class FloorError(ValueError):
    """An input the floor refuses: unknown machine, a state nobody can set, a time in the past."""


@dataclass(slots=True)
class Session:
    id: str
    member_id: str
    start: float
    #: busy_s and idle_s are accounted up to this time.
    acc_ts: float
    busy_s: float = 0.0
    idle_s: float = 0.0
    energy_wh: float = 0.0
    relay_unconfirmed: bool = False


@dataclass(slots=True)
class Pending:
    """A relay command waiting for the device to report the commanded state."""

    on: bool
    attempt: int
    deadline: float
    session_id: str | None


Timer = tuple[float, Callable[[float, float], list[Effect]]]


@dataclass(slots=True)
class Station:
    machine: Machine
    access: AccessSettings
    #: The state an operator set; an override, while it lasts, takes its place.
    state: str = "free"
    override_state: str | None = None
    override_until: float | None = None
    reserved_for: str | None = None
    reserved_until: float | None = None
    session: Session | None = None
    power_w: float | None = None
    power_ts: float | None = None
    #: Whether the last power sample was at or above the idle threshold, and since when (None: ever).
    drawing: bool = False
    since: float | None = None
    #: When the last session ended (None: never), for the unauthorized-use count.
    free_since: float | None = None
    unauth_alerted: bool = False
    relay_on: bool | None = None
    pending: Pending | None = None
    online: bool = True
    trainer: str | None = None
    trainer_until: float | None = None
    last_id_base: str = ""
    id_dup: int = 0
    counter: CounterTracker = field(default_factory=CounterTracker)

    # -- inputs ---------------------------------------------------------------------------

    def badge(self, now: float, decision: Decision, trainer: bool) -> list[Effect]:
        member = decision.member_id
        if self._is_trainee(decision):
            assert member is not None and self.trainer is not None
            grants = [TrainingGranted(now, member, t, self.trainer, self.machine.id) for t in decision.missing]
            return [self._access(now, decision, "trainee"), *grants]
        if not decision.allowed or member is None:
            return [self._access(now, decision, "denied")]
        outcome, out = self._allowed(now, member)
        if trainer and outcome != "session_closed":
            self.trainer, self.trainer_until = member, now + self.access.trainer_window_s
        return [self._access(now, decision, outcome), *out]

    def power(self, now: float, watts: float) -> list[Effect]:
        if not math.isfinite(watts):
            return []
        self._account(now)
        drawing = watts >= self.machine.idle_threshold_w
        if drawing != self.drawing:
            self.drawing, self.since = drawing, now
            if not drawing:
                self.unauth_alerted = False  # the episode is over; the next one alerts again
        self.power_w, self.power_ts = watts, now
        return []

    def energy(self, ts: float, counter_wh: float) -> list[Effect]:
        delta = self.counter.update(ts, counter_wh)
        if delta is not None and self.session is not None:
            self.session.energy_wh += delta.delta
        return []

    def relay_state(self, now: float, on: bool) -> list[Effect]:
        self.relay_on = on
        if self.pending is not None and self.pending.on == on:
            self.pending = None
        return []

    def set_online(self, now: float, online: bool) -> list[Effect]:
        self.online = online
        if not online and self.session is not None:
            return self._close(now, now, "offline")
        return []

    def operator(self, now: float, command: OperatorCommand) -> list[Effect]:
        if isinstance(command, EndSession):
            return self._close(now, now, "operator") if self.session is not None else []
        if isinstance(command, Reserve):
            if command.until is not None and not math.isfinite(command.until):
                raise FloorError(f"a reservation needs a finite end, not {command.until}")
            self.reserved_for, self.reserved_until = command.member_id, command.until
            if command.member_id is None:
                self.reserved_until = None
            return [ReservationChanged(now, self.machine.id, command.member_id, self.reserved_until, command.by)]
        if command.state not in ADMIN_STATES:
            raise FloorError(f"{command.state!r} cannot be set; one of {', '.join(sorted(ADMIN_STATES))}")
        if isinstance(command, SetState):
            self.state, self.override_state, self.override_until = command.state, None, None
            until = None
        else:
            self._check_override(now, command)
            self.override_state, self.override_until = command.state, command.until
            until = command.until
        out: list[Effect] = [MachineStateChanged(now, self.machine.id, command.state, command.by, until)]
        return out + self._end_if_unusable(now, now)

    # -- timers ---------------------------------------------------------------------------

    def due(self, now: float) -> list[Effect]:
        """Fire every timer whose deadline is at or before `now`, earliest first."""
        out: list[Effect] = []
        while (timer := self._next_timer()) is not None and timer[0] <= now:
            out += timer[1](timer[0], now)
        return out

    def _next_timer(self) -> Timer | None:
        timers: list[Timer] = []
        if self.session is not None:
            timers += self._session_timers(self.session)
        elif self.drawing and not self.unauth_alerted:
            started = max(self.since or 0.0, self.free_since or 0.0)
            timers.append((started + self.machine.unauthorized_after_s, self._unauthorized))
        if self.pending is not None:
            timers.append((self.pending.deadline, self._relay_timeout))
        if self.override_until is not None:
            timers.append((self.override_until, self._override_expired))
        if self.reserved_until is not None:
            timers.append((self.reserved_until, self._reservation_expired))
        if self.trainer_until is not None:
            timers.append((self.trainer_until, self._trainer_expired))
        return min(timers, key=lambda t: t[0], default=None)

    def _session_timers(self, session: Session) -> list[Timer]:
        m = self.machine
        timers: list[Timer] = []
        if not self.drawing:
            idle_from = max(self.since if self.since is not None else session.start, session.start)
            timers.append((idle_from + m.idle_timeout_s + m.spin_down_s, self._idle_timeout))
        if m.max_duration_s > 0:
            timers.append((session.start + m.max_duration_s, self._max_duration))
        return timers

    def _idle_timeout(self, deadline: float, now: float) -> list[Effect]:
        return self._close(deadline, now, "idle_timeout")

    def _max_duration(self, deadline: float, now: float) -> list[Effect]:
        return self._close(deadline, now, "max_duration")

    def _unauthorized(self, deadline: float, now: float) -> list[Effect]:
        self.unauth_alerted = True
        detail = f"{self.power_w} W drawn for {self.machine.unauthorized_after_s:g} s with no session"
        return [Alert(deadline, "unauthorized_use", self.machine.id, detail)]

    def _relay_timeout(self, deadline: float, now: float) -> list[Effect]:
        pending = self.pending
        assert pending is not None and self.machine.relay is not None
        if pending.attempt <= self.access.relay_retries:
            pending.attempt += 1
            pending.deadline = now + self.access.relay_confirm_s
            return [RelayCommand(now, self.machine.id, self.machine.relay, pending.on, pending.attempt)]
        self.pending = None
        if self.session is not None and self.session.id == pending.session_id:
            self.session.relay_unconfirmed = True
        word = "on" if pending.on else "off"
        detail = f"relay {self.machine.relay} did not report {word} after {pending.attempt} attempt(s)"
        return [Alert(deadline, "relay_unconfirmed", self.machine.id, detail, pending.session_id)]

    def _override_expired(self, deadline: float, now: float) -> list[Effect]:
        self.override_state = self.override_until = None
        event = MachineStateChanged(deadline, self.machine.id, self.state, "override_expired", None)
        return [event, *self._end_if_unusable(deadline, now)]

    def _reservation_expired(self, deadline: float, now: float) -> list[Effect]:
        self.reserved_for = self.reserved_until = None
        return [ReservationChanged(deadline, self.machine.id, None, None, "expired")]

    def _trainer_expired(self, deadline: float, now: float) -> list[Effect]:
        self.trainer = self.trainer_until = None
        return []

    # -- sessions -------------------------------------------------------------------------

    @property
    def admin_state(self) -> str:
        """The state in force: the override while it lasts, else the state an operator set."""
        return self.override_state or self.state

    def _allowed(self, now: float, member: str) -> tuple[Outcome, list[Effect]]:
        session = self.session
        if session is None:
            return "session_opened", self._open(now, member, switch=True)
        if session.member_id == member:
            return "session_closed", self._close(now, now, "badge_out")
        closed = self._close(now, now, "takeover", switch=False)
        return "takeover", closed + self._open(now, member, switch=False)

    def _is_trainee(self, decision: Decision) -> bool:
        member = decision.member_id
        return (
            self.trainer is not None
            and member is not None
            and member != self.trainer
            and (decision.allowed or decision.reason in TRAINING_DENIALS)
        )

    def _access(self, now: float, d: Decision, outcome: Outcome) -> AccessEvent:
        reason = None if d.reason is None else str(d.reason)
        return AccessEvent(now, self.machine.id, d.badge_uid, d.member_id, d.allowed, reason, d.missing, outcome)

    def _open(self, now: float, member: str, *, switch: bool) -> list[Effect]:
        session_id = self._session_id(now)
        self.session = Session(session_id, member, now, now)
        self.unauth_alerted = False
        out: list[Effect] = [SessionOpened(now, session_id, self.machine.id, member, now)]
        if switch:
            out += self._command(now, True, session_id)
        elif self.pending is not None:
            self.pending.session_id = session_id
        return out

    def _close(self, end: float, now: float, reason: EndReason, *, switch: bool = True) -> list[Effect]:
        s = self.session
        assert s is not None
        self._account(end)
        self.session, self.free_since = None, end
        self.trainer = self.trainer_until = None
        closed = SessionClosed(
            end, s.id, self.machine.id, s.member_id, s.start, end, reason,
            s.busy_s, s.idle_s, s.energy_wh, s.relay_unconfirmed,
        )  # fmt: skip
        return [closed, *self._command(now, False, s.id)] if switch else [closed]

    def _end_if_unusable(self, end: float, now: float) -> list[Effect]:
        if self.session is not None and self.admin_state != "free":
            return self._close(end, now, "operator")
        return []

    def _check_override(self, now: float, command: Override) -> None:
        if not math.isfinite(command.until) or command.until <= now:
            raise FloorError(f"an override must end in the future (now {now}, until {command.until})")

    def _command(self, now: float, on: bool, session_id: str) -> list[Effect]:
        relay = self.machine.relay
        if relay is None:
            return []
        self.pending = Pending(on, 1, now + self.access.relay_confirm_s, session_id)
        return [RelayCommand(now, self.machine.id, relay, on, 1)]

    def _account(self, until: float) -> None:
        s = self.session
        if s is None or until <= s.acc_ts:
            return
        if self.drawing:
            s.busy_s += until - s.acc_ts
        else:
            s.idle_s += until - s.acc_ts
        s.acc_ts = until

    def _session_id(self, now: float) -> str:
        """`<machine>-<ms>`; a second session in the same millisecond gets `-2`, `-3`..."""
        base = f"{self.machine.id}-{round(now * 1000)}"
        self.id_dup = self.id_dup + 1 if base == self.last_id_base else 1
        self.last_id_base = base
        return base if self.id_dup == 1 else f"{base}-{self.id_dup}"

    # -- persistence ----------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in _PLAIN_FIELDS}
        data["session"] = None if self.session is None else asdict(self.session)
        data["pending"] = None if self.pending is None else asdict(self.pending)
        data["counter"] = self.counter.state()
        return data

    def restore(self, data: dict[str, Any]) -> None:
        for name in _PLAIN_FIELDS:
            setattr(self, name, data[name])
        self.session = None if data["session"] is None else Session(**data["session"])
        self.pending = None if data["pending"] is None else Pending(**data["pending"])
        if self.machine.relay is None:
            self.pending = None  # the relay was removed from the configuration
        self.counter.restore(data["counter"])


_PLAIN_FIELDS = tuple(
    name for name in Station.__dataclass_fields__ if name not in {"machine", "access", "session", "pending", "counter"}
)
