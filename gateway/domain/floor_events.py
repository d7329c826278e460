"""What the machine floor (`gateway.domain.floor`) says and what it is told by operators.

Events are journaled by the runtime as `event.<kind>` with `as_json()` as the payload;
`RelayCommand` is sent to the machine's relay (and journaled as `event.relay_command`).
Every event carries `ts`, the instant it happened, which for a timer is the timer's own
deadline (an idle timeout ends the session at the moment the timeout ran out, not at the
moment the gateway noticed), so replaying a journal gives the same times to the millisecond.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal

AdminState = Literal["free", "to_check", "blocked", "disabled"]
#: States an operator can set or put as an override; `in_use` is derived from the session.
ADMIN_STATES: frozenset[str] = frozenset({"free", "to_check", "blocked", "disabled"})
EndReason = Literal["badge_out", "takeover", "idle_timeout", "max_duration", "operator", "offline"]
AlertKind = Literal["unauthorized_use", "relay_unconfirmed", "device_silent"]
#: What the floor did with a badge: opened or closed a session, took it over, treated it as a
#: trainee's badge in a trainer's window, or nothing (denied).
Outcome = Literal["session_opened", "session_closed", "takeover", "trainee", "denied"]


class _Json:
    kind: ClassVar[str]

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


@dataclass(frozen=True, slots=True)
class AccessEvent(_Json):
    """Every badge at a machine, allowed or not, and what came of it."""

    kind: ClassVar[str] = "access"
    ts: float
    machine_id: str
    badge_uid: str
    member_id: str | None
    allowed: bool
    reason: str | None
    missing: tuple[str, ...]
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class SessionOpened(_Json):
    kind: ClassVar[str] = "session_opened"
    ts: float
    session_id: str
    machine_id: str
    member_id: str
    start: float


@dataclass(frozen=True, slots=True)
class SessionClosed(_Json):
    """A finished session. busy_s + idle_s == end - start; energy_wh from the meter's counter."""

    kind: ClassVar[str] = "session_closed"
    ts: float
    session_id: str
    machine_id: str
    member_id: str
    start: float
    end: float
    end_reason: EndReason
    busy_s: float
    idle_s: float
    energy_wh: float
    relay_unconfirmed: bool


@dataclass(frozen=True, slots=True)
class MachineStateChanged(_Json):
    """The operator-set state changed (`until`: an override's expiry, None otherwise)."""

    kind: ClassVar[str] = "machine_state"
    ts: float
    machine_id: str
    state: str
    by: str
    until: float | None


@dataclass(frozen=True, slots=True)
class ReservationChanged(_Json):
    """A machine reserved for a member until a time, or released (`member_id` None)."""

    kind: ClassVar[str] = "reservation"
    ts: float
    machine_id: str
    member_id: str | None
    until: float | None
    by: str


@dataclass(frozen=True, slots=True)
class Alert(_Json):
    kind: ClassVar[str] = "alert"
    ts: float
    alert: AlertKind
    machine_id: str
    detail: str
    session_id: str | None = None


@dataclass(frozen=True, slots=True)
class TrainingGranted(_Json):
    """A trainer granted a training at the machine (trainer badge, then the trainee's)."""

    kind: ClassVar[str] = "training_granted"
    ts: float
    member_id: str
    training: str
    granted_by: str
    machine_id: str


@dataclass(frozen=True, slots=True)
class RelayCommand(_Json):
    """Switch the machine's relay. `attempt` 1 is the first send, then each retry adds one."""

    kind: ClassVar[str] = "relay_command"
    ts: float
    machine_id: str
    relay: str
    on: bool
    attempt: int


Event = AccessEvent | SessionOpened | SessionClosed | MachineStateChanged | ReservationChanged | Alert | TrainingGranted
Effect = Event | RelayCommand


@dataclass(frozen=True, slots=True)
class SetState:
    """Set the machine's state; clears any override. A state other than free ends a session."""

    machine_id: str
    state: AdminState
    by: str = "operator"


@dataclass(frozen=True, slots=True)
class Override:
    """Put the machine in `state` until `until`, then back to its set state by itself."""

    machine_id: str
    state: AdminState
    until: float
    by: str = "operator"


@dataclass(frozen=True, slots=True)
class EndSession:
    machine_id: str
    by: str = "operator"


@dataclass(frozen=True, slots=True)
class Reserve:
    """Reserve the machine for `member_id` until `until`; `member_id` None releases it."""

    machine_id: str
    member_id: str | None
    until: float | None = None
    by: str = "operator"


OperatorCommand = SetState | Override | EndSession | Reserve
