"""The access decision: may this badge switch this machine on, now?

A pure function of what the gateway knows at the instant of the badge; every outcome,
allowed or denied, is journaled by the caller as an `event.access`. The checks run in a
fixed order and the first that fails gives the reason, so the same situation always
gives the same answer:

1. badge: unknown (no such UID, or not assigned to a member) -> `unknown_badge`;
   not active (lost or revoked) -> `badge_revoked`;
2. member: not active -> `member_inactive`;
3. machine state: `blocked` -> `machine_blocked`, `disabled` -> `machine_disabled`,
   `to_check` -> `machine_to_check` unless the member is an operator;
4. reservation: reserved for another member -> `machine_reserved`;
5. opening hours: closed -> `outside_opening_hours` unless the member is an operator;
6. trainings: any required training not held -> `training_missing`, else any expired ->
   `training_expired`; `Decision.missing` lists every training that is missing or expired;
7. credit: `insufficient_credit` (the ledger supplies `credit_ok`).

"Operator" means the role `operator` or `admin`. Operators may check a machine someone
flagged and may work outside opening hours; nobody bypasses trainings, a reservation or a
block: those protect people and other members' bookings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from gateway.config import Machine

#: Roles that may use a machine flagged `to_check` and work outside opening hours.
OPERATOR_ROLES = frozenset({"operator", "admin"})


class Deny(StrEnum):
    UNKNOWN_BADGE = "unknown_badge"
    BADGE_REVOKED = "badge_revoked"
    MEMBER_INACTIVE = "member_inactive"
    TRAINING_MISSING = "training_missing"
    TRAINING_EXPIRED = "training_expired"
    MACHINE_BLOCKED = "machine_blocked"
    MACHINE_DISABLED = "machine_disabled"
    MACHINE_TO_CHECK = "machine_to_check"
    MACHINE_RESERVED = "machine_reserved"
    OUTSIDE_OPENING_HOURS = "outside_opening_hours"
    INSUFFICIENT_CREDIT = "insufficient_credit"


#: Deny reasons that a trainer at the machine can lift by granting the trainings.
TRAINING_DENIALS = frozenset({Deny.TRAINING_MISSING, Deny.TRAINING_EXPIRED})

_STATE_DENIALS = {
    "blocked": Deny.MACHINE_BLOCKED,
    "disabled": Deny.MACHINE_DISABLED,
    "to_check": Deny.MACHINE_TO_CHECK,
}


@dataclass(frozen=True, slots=True)
class MachineRules:
    """What the decision needs to know about a machine."""

    id: str
    trainings: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, machine: Machine) -> MachineRules:
        return cls(machine.id, tuple(machine.trainings))


@dataclass(frozen=True, slots=True)
class BadgeInfo:
    """A known badge and its member, as stored. `status`: active | lost | revoked."""

    uid: str
    status: str
    member_id: str | None
    member_status: str = "active"
    member_roles: frozenset[str] = frozenset({"member"})

    @property
    def is_operator(self) -> bool:
        return not OPERATOR_ROLES.isdisjoint(self.member_roles)


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one badge at one machine. `reason` is None exactly when allowed."""

    allowed: bool
    reason: Deny | None
    member_id: str | None
    machine_id: str
    ts: float
    #: Required trainings the member does not hold or that have expired, in the machine's order.
    missing: tuple[str, ...] = ()
    badge_uid: str = ""


def decide(
    *,
    ts: float,
    machine: MachineRules,
    machine_state: str,
    reserved_for: str | None,
    badge: BadgeInfo | None,
    trainings: Mapping[str, tuple[float, float | None]],
    open_now: bool,
    credit_ok: bool = True,
    badge_uid: str = "",
) -> Decision:
    """Allow or deny, in the order of the module's docstring.

    `trainings` maps each training the member holds to (granted_at, expires_at or None).
    `badge_uid` names the badge when `badge` is None (unknown UIDs are journaled too).
    """
    uid = badge.uid if badge is not None else badge_uid
    member = badge.member_id if badge is not None else None
    missing = tuple(t for t in machine.trainings if not _held(ts, trainings.get(t)))
    reason = _person_and_place(machine_state, reserved_for, badge, open_now)
    if reason is None and missing:
        expired = all(_expired(ts, trainings.get(t)) for t in missing)
        reason = Deny.TRAINING_EXPIRED if expired else Deny.TRAINING_MISSING
    if reason is None and not credit_ok:
        reason = Deny.INSUFFICIENT_CREDIT
    return Decision(reason is None, reason, member, machine.id, ts, missing, uid)


def _person_and_place(
    machine_state: str, reserved_for: str | None, badge: BadgeInfo | None, open_now: bool
) -> Deny | None:
    """Checks 1 to 5: the badge, the member, the machine's state, its reservation, the hours."""
    if badge is None or badge.member_id is None:
        return Deny.UNKNOWN_BADGE
    if badge.status != "active":
        return Deny.BADGE_REVOKED
    if badge.member_status != "active":
        return Deny.MEMBER_INACTIVE
    state_denial = _STATE_DENIALS.get(machine_state)
    if state_denial is not None and not (state_denial is Deny.MACHINE_TO_CHECK and badge.is_operator):
        return state_denial
    if reserved_for is not None and reserved_for != badge.member_id:
        return Deny.MACHINE_RESERVED
    if not open_now and not badge.is_operator:
        return Deny.OUTSIDE_OPENING_HOURS
    return None


def _held(ts: float, grant: tuple[float, float | None] | None) -> bool:
    """A grant counts from its time on, until (excluding) its expiry."""
    if grant is None:
        return False
    granted_at, expires_at = grant
    return granted_at <= ts and (expires_at is None or ts < expires_at)


def _expired(ts: float, grant: tuple[float, float | None] | None) -> bool:
    return grant is not None and grant[1] is not None and grant[1] <= ts
