"""The access decision: every deny reason, the order of the checks, and who bypasses what."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from gateway.config import Machine
from gateway.domain.access import BadgeInfo, Decision, Deny, MachineRules, decide

TS = 1_700_000_000.0
LASER = MachineRules("laser", ("laser_basic", "laser_safety"))
ALICE = BadgeInfo("04A1B2C3", "active", "alice", "active", frozenset({"member"}))
OPERATOR = BadgeInfo("04FFFF01", "active", "olga", "active", frozenset({"member", "operator"}))
ADMIN = BadgeInfo("04FFFF02", "active", "adam", "active", frozenset({"admin"}))
VALID: Mapping[str, tuple[float, float | None]] = {"laser_basic": (TS - 100, None), "laser_safety": (TS - 100, TS + 1)}


def check(**overrides: Any) -> Decision:
    args: dict[str, Any] = {
        "ts": TS,
        "machine": LASER,
        "machine_state": "free",
        "reserved_for": None,
        "badge": ALICE,
        "trainings": VALID,
        "open_now": True,
        "credit_ok": True,
    }
    args.update(overrides)
    return decide(**args)


def test_allowed() -> None:
    assert check() == Decision(True, None, "alice", "laser", TS, (), "04A1B2C3")


def test_machine_in_use_can_be_taken_over() -> None:
    assert check(machine_state="in_use").allowed


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"badge": None, "badge_uid": "DEADBEEF"}, Deny.UNKNOWN_BADGE),
        ({"badge": BadgeInfo("0001", "active", None)}, Deny.UNKNOWN_BADGE),
        ({"badge": BadgeInfo("04A1B2C3", "lost", "alice")}, Deny.BADGE_REVOKED),
        ({"badge": BadgeInfo("04A1B2C3", "revoked", "alice")}, Deny.BADGE_REVOKED),
        ({"badge": BadgeInfo("04A1B2C3", "active", "alice", "inactive")}, Deny.MEMBER_INACTIVE),
        ({"machine_state": "blocked"}, Deny.MACHINE_BLOCKED),
        ({"machine_state": "disabled"}, Deny.MACHINE_DISABLED),
        ({"machine_state": "to_check"}, Deny.MACHINE_TO_CHECK),
        ({"reserved_for": "bob"}, Deny.MACHINE_RESERVED),
        ({"open_now": False}, Deny.OUTSIDE_OPENING_HOURS),
        ({"trainings": {"laser_basic": (TS - 100, None)}}, Deny.TRAINING_MISSING),
        ({"trainings": {**VALID, "laser_safety": (TS - 100, TS)}}, Deny.TRAINING_EXPIRED),
        ({"credit_ok": False}, Deny.INSUFFICIENT_CREDIT),
    ],
)
def test_every_deny_reason(overrides: dict[str, Any], reason: Deny) -> None:
    decision = check(**overrides)
    assert not decision.allowed
    assert decision.reason is reason


def test_unknown_badge_keeps_its_uid() -> None:
    decision = check(badge=None, badge_uid="DEADBEEF")
    assert (decision.member_id, decision.badge_uid) == (None, "DEADBEEF")


def test_missing_lists_missing_and_expired_in_machine_order() -> None:
    decision = check(trainings={"laser_safety": (TS - 10, TS - 1)})
    assert decision.reason is Deny.TRAINING_MISSING  # one is missing outright
    assert decision.missing == ("laser_basic", "laser_safety")


def test_grant_in_the_future_does_not_count() -> None:
    decision = check(trainings={**VALID, "laser_basic": (TS + 5, None)})
    assert (decision.reason, decision.missing) == (Deny.TRAINING_MISSING, ("laser_basic",))


def test_reserved_for_the_member_is_allowed() -> None:
    assert check(reserved_for="alice").allowed


def test_machine_without_trainings() -> None:
    assert check(machine=MachineRules("drill"), trainings={}).allowed


@pytest.mark.parametrize("badge", [OPERATOR, ADMIN])
def test_operators_check_machines_and_work_late(badge: BadgeInfo) -> None:
    assert check(badge=badge, machine_state="to_check", open_now=False).allowed


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"machine_state": "blocked"}, Deny.MACHINE_BLOCKED),
        ({"reserved_for": "bob"}, Deny.MACHINE_RESERVED),
        ({"trainings": {}}, Deny.TRAINING_MISSING),
        ({"credit_ok": False}, Deny.INSUFFICIENT_CREDIT),
    ],
)
def test_operators_do_not_bypass_the_rest(overrides: dict[str, Any], reason: Deny) -> None:
    assert check(badge=OPERATOR, **overrides).reason is reason


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        # Each row fails every check from its reason on: the earliest one wins.
        ({"badge": BadgeInfo("X", "lost", "alice", "inactive"), "machine_state": "blocked"}, Deny.BADGE_REVOKED),
        ({"badge": BadgeInfo("X", "active", "alice", "inactive"), "machine_state": "blocked"}, Deny.MEMBER_INACTIVE),
        ({"machine_state": "disabled", "reserved_for": "bob"}, Deny.MACHINE_DISABLED),
        ({"reserved_for": "bob", "open_now": False}, Deny.MACHINE_RESERVED),
        ({"open_now": False, "trainings": {}}, Deny.OUTSIDE_OPENING_HOURS),
        ({"trainings": {}, "credit_ok": False}, Deny.TRAINING_MISSING),
    ],
)
def test_order_of_checks(overrides: dict[str, Any], reason: Deny) -> None:
    assert check(**overrides).reason is reason


def test_rules_from_config() -> None:
    machine = Machine(id="laser", meter="m1", trainings=["laser_basic"])
    assert MachineRules.from_config(machine) == MachineRules("laser", ("laser_basic",))
