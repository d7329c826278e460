"""The machine floor: every session rule as a scenario, then random input sequences as properties."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import AccessSettings, Machine
from gateway.counters import CounterTracker
from gateway.domain.access import Decision, Deny
from gateway.domain.floor import Floor, FloorError
from gateway.domain.floor_events import (
    AccessEvent,
    Alert,
    Effect,
    EndSession,
    MachineStateChanged,
    Override,
    RelayCommand,
    ReservationChanged,
    Reserve,
    SessionClosed,
    SessionOpened,
    SetState,
    TrainingGranted,
)

T0 = 1_700_000_000.0
E = TypeVar("E")
ACCESS = AccessSettings(trainer_window_s=30, relay_confirm_s=3, relay_retries=2)
LASER = Machine(
    id="laser", meter="laser-meter", relay="laser-relay", trainings=["laser_basic"],
    idle_threshold_w=10, idle_timeout_s=60, spin_down_s=20, max_duration_s=3600, unauthorized_after_s=30,
)  # fmt: skip
DRILL = Machine(
    id="drill", meter="drill-meter", idle_threshold_w=5, idle_timeout_s=40, spin_down_s=0,
    max_duration_s=300, unauthorized_after_s=0,
)  # fmt: skip


def new_floor(machines: Sequence[Machine] = (LASER, DRILL)) -> Floor:
    return Floor(machines, ACCESS, timezone="Europe/Brussels")


def allow(member: str, ts: float = T0, machine: str = "laser") -> Decision:
    return Decision(True, None, member, machine, ts, (), f"UID-{member}")


def deny(member: str | None, reason: Deny, missing: tuple[str, ...] = (), machine: str = "laser") -> Decision:
    return Decision(False, reason, member, machine, T0, missing, f"UID-{member}")


def kinds(effects: Sequence[Effect]) -> list[str]:
    return [f"relay_{'on' if e.on else 'off'}" if isinstance(e, RelayCommand) else e.kind for e in effects]


def only(effects: Sequence[Effect], cls: type[E]) -> E:
    found = [e for e in effects if isinstance(e, cls)]
    assert len(found) == 1, effects
    return found[0]


def opened(floor: Floor, member: str = "alice", ts: float = T0) -> str:
    """Badge `member` in and confirm the relay; the session id."""
    effects = floor.badge(ts, "laser", allow(member, ts))
    floor.relay_state(ts + 0.1, "laser", True)
    return only(effects, SessionOpened).session_id


# -- badges ---------------------------------------------------------------------------------


def test_badge_in_opens_a_session_and_switches_on() -> None:
    floor = new_floor()
    effects = floor.badge(T0, "laser", allow("alice"))
    assert kinds(effects) == ["access", "session_opened", "relay_on"]
    assert only(effects, AccessEvent).outcome == "session_opened"
    assert only(effects, SessionOpened) == SessionOpened(T0, "laser-1700000000000", "laser", "alice", T0)
    assert only(effects, RelayCommand) == RelayCommand(T0, "laser", "laser-relay", True, 1)
    view = floor.machine_view("laser")
    assert (view.state, view.relay_pending) == ("in_use", True)
    floor.relay_state(T0 + 0.2, "laser", True)
    assert (floor.machine_view("laser").relay_pending, floor.machine_view("laser").relay_on) == (None, True)


def test_same_badge_again_closes() -> None:
    floor = new_floor()
    sid = opened(floor)
    effects = floor.badge(T0 + 50, "laser", allow("alice"))
    assert kinds(effects) == ["access", "session_closed", "relay_off"]
    closed = only(effects, SessionClosed)
    assert (closed.session_id, closed.end_reason, closed.start, closed.end) == (sid, "badge_out", T0, T0 + 50)
    assert (closed.busy_s, closed.idle_s) == (0.0, 50.0)
    assert floor.machine_view("laser").state == "free"


def test_takeover_keeps_the_relay_on() -> None:
    floor = new_floor()
    opened(floor)
    effects = floor.badge(T0 + 50, "laser", allow("bob"))
    assert kinds(effects) == ["access", "session_closed", "session_opened"]
    assert only(effects, AccessEvent).outcome == "takeover"
    assert only(effects, SessionClosed).end_reason == "takeover"
    assert only(effects, SessionOpened).member_id == "bob"
    view = floor.machine_view("laser")
    assert view.session is not None and view.session.member_id == "bob"


def test_takeover_in_the_same_millisecond_gets_a_distinct_id() -> None:
    floor = new_floor()
    first = only(floor.badge(T0, "laser", allow("alice")), SessionOpened).session_id
    second = only(floor.badge(T0, "laser", allow("bob")), SessionOpened).session_id
    third = only(floor.badge(T0, "laser", allow("carol")), SessionOpened).session_id
    assert (first, second, third) == ("laser-1700000000000", "laser-1700000000000-2", "laser-1700000000000-3")


@pytest.mark.parametrize("reason", list(Deny))
def test_denied_badge_only_journals(reason: Deny) -> None:
    floor = new_floor()
    before = floor.to_json()
    effects = floor.badge(T0, "laser", deny("alice", reason))
    assert kinds(effects) == ["access"]
    event = only(effects, AccessEvent)
    assert (event.allowed, event.reason, event.outcome) == (False, reason.value, "denied")
    assert floor.to_json()["machines"] == before["machines"]


def test_denied_badge_during_a_session_changes_nothing() -> None:
    floor = new_floor()
    opened(floor)
    assert kinds(floor.badge(T0 + 5, "laser", deny("bob", Deny.TRAINING_MISSING, ("laser_basic",)))) == ["access"]
    view = floor.machine_view("laser")
    assert view.session is not None and view.session.member_id == "alice"


def test_machine_without_relay_sends_no_command() -> None:
    floor = new_floor()
    assert kinds(floor.badge(T0, "drill", allow("alice", machine="drill"))) == ["access", "session_opened"]
    assert kinds(floor.badge(T0 + 1, "drill", allow("alice", machine="drill"))) == ["access", "session_closed"]


def test_unknown_machine_is_refused() -> None:
    with pytest.raises(FloorError):
        new_floor().badge(T0, "lathe", allow("alice"))


# -- idle, spin-down, max duration, offline -------------------------------------------------


def test_idle_timeout_waits_for_spin_down_and_never_cuts_while_drawing() -> None:
    floor = new_floor()
    sid = opened(floor)
    floor.power(T0 + 1, "laser", 100.0)
    floor.power(T0 + 100, "laser", 2.0)  # idle from here: timeout 60 s + spin-down 20 s
    assert floor.tick(T0 + 179) == []
    floor.power(T0 + 170, "laser", 50.0)  # the clock is at +179: taken as drawing again at +179
    floor.power(T0 + 200, "laser", 3.0)
    assert floor.tick(T0 + 279) == []
    effects = floor.tick(T0 + 290)
    assert kinds(effects) == ["session_closed", "relay_off"]
    closed = only(effects, SessionClosed)
    assert (closed.session_id, closed.end_reason, closed.end) == (sid, "idle_timeout", T0 + 280)
    # idle 0-1, busy 1-100, idle 100-179, busy 179-200, idle 200-280
    assert (closed.busy_s, closed.idle_s) == (120.0, 160.0)
    assert only(effects, RelayCommand).ts == T0 + 290  # sent when noticed


def test_idle_counts_from_session_start_when_the_machine_never_drew() -> None:
    floor = new_floor()
    opened(floor)
    closed = only(floor.tick(T0 + 80), SessionClosed)
    assert (closed.end, closed.idle_s, closed.busy_s) == (T0 + 80, 80.0, 0.0)


def test_a_drawing_machine_runs_to_max_duration() -> None:
    floor = new_floor()
    opened(floor)
    floor.power(T0 + 10, "laser", 500.0)
    assert floor.tick(T0 + 3599) == []
    effects = floor.tick(T0 + 4000)
    closed = only(effects, SessionClosed)
    assert (closed.end_reason, closed.end, closed.busy_s, closed.idle_s) == ("max_duration", T0 + 3600, 3590.0, 10.0)
    # Still drawing with no session: unauthorized use 30 s after the end.
    assert kinds(effects) == ["session_closed", "relay_off", "alert"]
    assert only(effects, Alert).ts == T0 + 3630


def test_readings_after_a_timer_deadline_close_the_session_first() -> None:
    floor = new_floor()
    opened(floor)
    floor.energy(T0 + 1, "laser", 100.0)
    effects = floor.energy(T0 + 100, "laser", 105.0)  # idle deadline was T0 + 80
    assert only(effects, SessionClosed).energy_wh == 0.0


def test_offline_ends_the_session() -> None:
    floor = new_floor()
    opened(floor)
    effects = floor.online(T0 + 30, "laser", False)
    assert kinds(effects) == ["session_closed", "relay_off"]
    assert only(effects, SessionClosed).end_reason == "offline"
    assert not floor.machine_view("laser").online
    assert floor.online(T0 + 31, "laser", True) == []


# -- relay confirmation ---------------------------------------------------------------------


def test_relay_retries_then_alerts_and_marks_the_session() -> None:
    floor = new_floor()
    sid = only(floor.badge(T0, "laser", allow("alice")), SessionOpened).session_id
    assert floor.tick(T0 + 2.9) == []
    assert floor.tick(T0 + 3) == [RelayCommand(T0 + 3, "laser", "laser-relay", True, 2)]
    assert floor.tick(T0 + 6.5) == [RelayCommand(T0 + 6.5, "laser", "laser-relay", True, 3)]
    effects = floor.tick(T0 + 9.5)
    alert = only(effects, Alert)
    assert (alert.alert, alert.session_id, alert.ts) == ("relay_unconfirmed", sid, T0 + 9.5)
    assert floor.tick(T0 + 20) == []
    closed = only(floor.badge(T0 + 30, "laser", allow("alice")), SessionClosed)
    assert closed.relay_unconfirmed


def test_a_late_confirmation_stops_the_retries() -> None:
    floor = new_floor()
    floor.badge(T0, "laser", allow("alice"))
    floor.tick(T0 + 3)
    assert floor.relay_state(T0 + 4, "laser", False) == []  # the old state: not a confirmation
    assert floor.relay_state(T0 + 4.5, "laser", True) == []
    assert floor.tick(T0 + 60) == []
    view = floor.machine_view("laser")
    assert view.session is not None and not view.session.relay_unconfirmed


def test_unconfirmed_off_alerts_with_the_closed_session() -> None:
    floor = new_floor()
    sid = opened(floor)
    floor.badge(T0 + 10, "laser", allow("alice"))
    effects = floor.tick(T0 + 10 + 3) + floor.tick(T0 + 10 + 6) + floor.tick(T0 + 10 + 9)
    assert kinds(effects) == ["relay_off", "relay_off", "alert"]
    assert [e.attempt for e in effects if isinstance(e, RelayCommand)] == [2, 3]
    assert only(effects, Alert).session_id == sid


# -- unauthorized use -----------------------------------------------------------------------


def test_unauthorized_use_alerts_once_per_episode() -> None:
    floor = new_floor()
    floor.power(T0, "laser", 200.0)
    assert floor.tick(T0 + 29) == []
    alert = only(floor.tick(T0 + 31), Alert)
    assert (alert.alert, alert.ts, alert.machine_id) == ("unauthorized_use", T0 + 30, "laser")
    floor.power(T0 + 60, "laser", 180.0)
    assert floor.tick(T0 + 200) == []
    floor.power(T0 + 201, "laser", 0.0)
    floor.power(T0 + 202, "laser", 150.0)
    assert kinds(floor.tick(T0 + 232)) == ["alert"]


def test_use_within_a_session_is_not_unauthorized_but_after_it_is() -> None:
    floor = new_floor()
    floor.power(T0, "laser", 200.0)
    opened(floor, ts=T0 + 10)
    assert [e for e in floor.tick(T0 + 100) if isinstance(e, Alert)] == []
    floor.badge(T0 + 200, "laser", allow("alice"))  # badge out, the machine still draws
    floor.relay_state(T0 + 201, "laser", False)
    assert floor.tick(T0 + 229) == []
    assert only(floor.tick(T0 + 230), Alert).ts == T0 + 230


# -- operators ------------------------------------------------------------------------------


def test_blocking_a_machine_ends_its_session() -> None:
    floor = new_floor()
    opened(floor)
    effects = floor.operator(T0 + 5, SetState("laser", "blocked", by="olga"))
    assert kinds(effects) == ["machine_state", "session_closed", "relay_off"]
    assert only(effects, MachineStateChanged) == MachineStateChanged(T0 + 5, "laser", "blocked", "olga", None)
    assert only(effects, SessionClosed).end_reason == "operator"
    assert floor.machine_view("laser").state == "blocked"


def test_in_use_cannot_be_set() -> None:
    floor = new_floor()
    with pytest.raises(FloorError):
        floor.operator(T0, SetState("laser", "in_use"))  # type: ignore[arg-type]
    with pytest.raises(FloorError):
        floor.operator(T0, Override("laser", "blocked", until=T0 - 1))
    assert floor.machine_view("laser").state == "free"


def test_operator_ends_a_session() -> None:
    floor = new_floor()
    opened(floor)
    effects = floor.operator(T0 + 5, EndSession("laser"))
    assert only(effects, SessionClosed).end_reason == "operator"
    assert floor.operator(T0 + 6, EndSession("laser")) == []


def test_override_expires_back_to_the_set_state_and_ends_its_session() -> None:
    floor = new_floor()
    floor.operator(T0, SetState("laser", "blocked"))
    floor.operator(T0 + 1, Override("laser", "free", until=T0 + 600, by="olga"))
    view = floor.machine_view("laser")
    assert (view.state, view.set_state, view.override_until) == ("free", "blocked", T0 + 600)
    opened(floor, ts=T0 + 10)
    floor.power(T0 + 11, "laser", 80.0)
    assert floor.tick(T0 + 599) == []
    effects = floor.tick(T0 + 700)
    assert kinds(effects) == ["machine_state", "session_closed", "relay_off", "alert"]  # and it still draws
    assert only(effects, MachineStateChanged) == MachineStateChanged(
        T0 + 600, "laser", "blocked", "override_expired", None
    )
    assert only(effects, SessionClosed).end == T0 + 600
    assert floor.machine_view("laser").state == "blocked"


def test_override_on_a_free_machine_expires_to_free_and_set_state_cancels_it() -> None:
    floor = new_floor()
    floor.operator(T0, Override("laser", "to_check", until=T0 + 60))
    assert floor.machine_view("laser").state == "to_check"
    assert only(floor.tick(T0 + 60), MachineStateChanged).state == "free"
    floor.operator(T0 + 70, Override("laser", "disabled", until=T0 + 100))
    floor.operator(T0 + 80, SetState("laser", "free"))
    assert floor.tick(T0 + 200) == []


def test_reservation_and_its_expiry() -> None:
    floor = new_floor()
    effects = floor.operator(T0, Reserve("laser", "bob", until=T0 + 3600, by="olga"))
    assert effects == [ReservationChanged(T0, "laser", "bob", T0 + 3600, "olga")]
    assert floor.machine_view("laser").reserved_for == "bob"
    assert floor.tick(T0 + 3600) == [ReservationChanged(T0 + 3600, "laser", None, None, "expired")]
    floor.operator(T0 + 4000, Reserve("laser", "bob", until=T0 + 9000))
    assert floor.operator(T0 + 4001, Reserve("laser", None)) == [
        ReservationChanged(T0 + 4001, "laser", None, None, "operator")
    ]
    assert floor.tick(T0 + 10_000) == []


# -- the trainer at the machine -------------------------------------------------------------


def test_trainer_grants_trainings_within_the_window() -> None:
    floor = new_floor()
    effects = floor.badge(T0, "laser", allow("tina"), trainer=True)
    assert kinds(effects) == ["access", "session_opened", "relay_on"]
    assert floor.machine_view("laser").trainer_until == T0 + 30
    floor.relay_state(T0 + 1, "laser", True)
    effects = floor.badge(T0 + 10, "laser", deny("tom", Deny.TRAINING_MISSING, ("laser_basic",)))
    assert effects == [
        AccessEvent(T0 + 10, "laser", "UID-tom", "tom", False, "training_missing", ("laser_basic",), "trainee"),
        TrainingGranted(T0 + 10, "tom", "laser_basic", "tina", "laser"),
    ]
    # A second trainee; then an allowed member's badge in the window is a trainee's too (nothing to grant).
    assert kinds(floor.badge(T0 + 12, "laser", deny("tia", Deny.TRAINING_EXPIRED, ("laser_basic",)))) == [
        "access",
        "training_granted",
    ]
    assert kinds(floor.badge(T0 + 15, "laser", allow("tom"))) == ["access"]
    view = floor.machine_view("laser")
    assert view.session is not None and view.session.member_id == "tina"
    # Other deny reasons are not lifted by a trainer.
    assert kinds(floor.badge(T0 + 16, "laser", deny("eve", Deny.MEMBER_INACTIVE))) == ["access"]


def test_trainer_window_expires() -> None:
    floor = new_floor()
    floor.badge(T0, "laser", allow("tina"), trainer=True)
    floor.tick(T0 + 30)
    effects = floor.badge(T0 + 31, "laser", deny("tom", Deny.TRAINING_MISSING, ("laser_basic",)))
    assert only(effects, AccessEvent).outcome == "denied"
    assert kinds(effects) == ["access"]


def test_trainer_leaving_closes_the_window() -> None:
    floor = new_floor()
    floor.badge(T0, "laser", allow("tina"), trainer=True)
    floor.badge(T0 + 5, "laser", allow("tina"), trainer=True)  # badge out: no window
    assert floor.machine_view("laser").trainer_id is None
    effects = floor.badge(T0 + 6, "laser", deny("tom", Deny.TRAINING_MISSING, ("laser_basic",)))
    assert only(effects, AccessEvent).outcome == "denied"


# -- energy ---------------------------------------------------------------------------------


def test_session_energy_from_counter_deltas_with_a_reset() -> None:
    floor = new_floor()
    floor.energy(T0 - 10, "laser", 1000.0)  # baseline before the session: not credited
    opened(floor)
    floor.power(T0 + 1, "laser", 100.0)
    floor.energy(T0 + 10, "laser", 1000.5)
    floor.energy(T0 + 20, "laser", 1002.0)
    floor.energy(T0 + 30, "laser", 1.0)  # the meter rebooted: 1 Wh since
    floor.energy(T0 + 40, "laser", 0.9999)  # jitter: nothing
    view = floor.machine_view("laser")
    assert view.session is not None and view.session.energy_wh == 3.0
    closed = only(floor.badge(T0 + 50, "laser", allow("alice")), SessionClosed)
    assert closed.energy_wh == 3.0
    floor.energy(T0 + 60, "laser", 5.0)  # after the session: nobody's


def test_inputs_older_than_the_clock_happen_at_the_clock() -> None:
    floor = new_floor()
    floor.tick(T0 + 100)
    effects = floor.badge(T0, "laser", allow("alice"))
    assert only(effects, SessionOpened).start == T0 + 100
    with pytest.raises(FloorError):
        floor.tick(float("nan"))


def test_json_round_trip_is_exact_and_survives_config_changes() -> None:
    floor = new_floor()
    opened(floor)
    floor.power(T0 + 0.1, "laser", 123.456789)
    floor.energy(T0 + 0.2, "laser", 1234.5678901)
    floor.operator(T0 + 0.3, Override("drill", "to_check", until=T0 + 99.9))
    data = json.loads(json.dumps(floor.to_json()))
    restored = Floor.from_json(data, [LASER, DRILL], ACCESS, "Europe/Brussels")
    assert restored.to_json() == floor.to_json()
    assert restored.machine_view("laser") == floor.machine_view("laser")
    fewer = Floor.from_json(data, [LASER], ACCESS, "Europe/Brussels")
    assert fewer.machine_ids == ["laser"]
    with pytest.raises(FloorError):
        Floor.from_json({**data, "version": 0}, [LASER], ACCESS, "UTC")


def test_restart_without_the_relay_drops_its_pending_command() -> None:
    floor = new_floor()
    floor.badge(T0, "laser", allow("alice"))
    no_relay = LASER.model_copy(update={"relay": None})
    restored = Floor.from_json(floor.to_json(), [no_relay, DRILL], ACCESS, "UTC")
    assert restored.machine_view("laser").relay_pending is None
    assert [e for e in restored.tick(T0 + 10) if isinstance(e, RelayCommand | Alert)] == []


def test_a_decision_for_another_machine_is_refused() -> None:
    with pytest.raises(FloorError):
        new_floor().badge(T0, "drill", allow("alice", machine="laser"))


def test_events_as_json() -> None:
    event = AccessEvent(T0, "laser", "04AB", "tom", False, "training_missing", ("laser_basic",), "denied")
    assert event.as_json() == {
        "kind": "access",
        "ts": T0,
        "machine_id": "laser",
        "badge_uid": "04AB",
        "member_id": "tom",
        "allowed": False,
        "reason": "training_missing",
        "missing": ["laser_basic"],
        "outcome": "denied",
    }
    assert RelayCommand(T0, "laser", "laser-relay", True, 2).as_json()["kind"] == "relay_command"


def test_open_now_uses_the_site_hours() -> None:
    access = AccessSettings(opening_hours={"mon": "09:00-18:00"})
    floor = Floor([LASER], access, timezone="UTC")
    assert floor.open_now(1_704_103_200.0)  # Mon 2024-01-01 10:00 UTC
    assert not floor.open_now(1_704_103_200.0 + 9 * 3600)


# -- properties over random input sequences -------------------------------------------------

MEMBERS = ("alice", "bob", "tina", "tom")
REASONS = (None, None, None, Deny.TRAINING_MISSING, Deny.TRAINING_MISSING, Deny.MACHINE_BLOCKED, Deny.UNKNOWN_BADGE)

machine_ids = st.sampled_from(["laser", "drill"])
badges = st.tuples(st.just("badge"), machine_ids, st.sampled_from(MEMBERS), st.sampled_from(REASONS), st.booleans())
# A change of the meter's counter: up, a little down (jitter), or down past zero (a reset).
energies = st.tuples(st.just("energy"), machine_ids, st.floats(-100, 100) | st.sampled_from([0.0, 0.25, -0.01, -1e6]))
steps = st.one_of(
    badges,
    badges,
    energies,
    energies,
    st.tuples(st.just("power"), machine_ids, st.sampled_from([0.0, 4.0, 10.0, 250.0, float("nan")])),
    st.tuples(st.just("relay"), machine_ids, st.booleans()),
    st.tuples(st.just("online"), machine_ids, st.booleans()),
    st.tuples(st.just("tick")),
    st.tuples(
        st.just("op"),
        machine_ids,
        st.sampled_from(["set", "override", "end", "reserve", "release"]),
        st.sampled_from(["free", "to_check", "blocked", "disabled"]),
        st.sampled_from(MEMBERS),
    ),
)
gaps = st.sampled_from([0.0, 0.001, 1.0, 1.0, 2.5, 2.5, 7.0, 7.0, 25.0, 90.0, 400.0, -3.0])
# Mixed sequences over every input, and busy ones on one machine, where sessions live long
# enough to collect energy across resets, jitter and restarts.
mixed = st.lists(st.tuples(gaps, steps), min_size=10, max_size=80)
busy_steps = st.one_of(
    st.tuples(st.just("badge"), st.just("laser"), st.sampled_from(MEMBERS[:2]), st.just(None), st.just(False)),
    energies.map(lambda e: ("energy", "laser", e[2])),
    energies.map(lambda e: ("energy", "laser", abs(e[2]))),
    st.tuples(st.just("power"), st.just("laser"), st.sampled_from([0.0, 250.0])),
    st.tuples(st.just("relay"), st.just("laser"), st.booleans()),
    st.tuples(st.just("tick")),
)
busy = st.lists(st.tuples(st.sampled_from([0.0, 0.5, 1.0, 5.0, 20.0]), busy_steps), min_size=10, max_size=80)
timed_steps = mixed | busy


def command(ts: float, machine: str, what: str, state: Any, member: str) -> Any:
    return {
        "set": SetState(machine, state),
        "override": Override(machine, state, until=ts + 120.0),
        "end": EndSession(machine),
        "reserve": Reserve(machine, member, until=ts + 300.0),
        "release": Reserve(machine, None),
    }[what]


class Run:
    """Feeds steps to a floor and checks the invariants on what comes out."""

    def __init__(self) -> None:
        self.floor = new_floor()
        self.ts = T0
        self.shadow = {"laser": CounterTracker(), "drill": CounterTracker()}
        self.meter = {"laser": 1000.0, "drill": 0.0}
        self.expected: dict[str, float] = {}
        self.open: dict[str, str | None] = {"laser": None, "drill": None}
        self.closed: set[str] = set()
        self.effects: list[Effect] = []

    def step(self, dt: float, step: tuple[Any, ...]) -> None:
        self.ts += dt
        ts, floor = self.ts, self.floor
        kind, args = step[0], step[1:]
        if kind == "badge":
            machine, member, reason, trainer = args
            missing = ("laser_basic",) if reason is Deny.TRAINING_MISSING else ()
            decision = Decision(reason is None, reason, member, machine, ts, missing, member.upper())
            self.check(floor.badge(ts, machine, decision, trainer=trainer))
        elif kind == "power":
            self.check(floor.power(ts, args[0], args[1]))
        elif kind == "energy":
            self.energy(ts, args[0], args[1])
        elif kind == "relay":
            self.check(floor.relay_state(ts, args[0], args[1]))
        elif kind == "online":
            self.check(floor.online(ts, args[0], args[1]))
        elif kind == "tick":
            self.check(floor.tick(ts))
        else:
            self.check(floor.operator(ts, command(max(ts, floor.now or ts), *args)))

    def energy(self, ts: float, machine: str, change: float) -> None:
        value = self.meter[machine] + change
        self.meter[machine] = value = value if value >= 0 else -change % 50
        self.check(self.floor.tick(ts))
        session = self.floor.machine_view(machine).session
        delta = self.shadow[machine].update(ts, value)
        self.check(self.floor.energy(ts, machine, value))
        if delta is not None and session is not None:
            self.expected[session.session_id] = self.expected.get(session.session_id, 0.0) + delta.delta

    def check(self, effects: list[Effect]) -> None:
        self.effects += effects
        for e in effects:
            if isinstance(e, SessionOpened):
                assert self.open[e.machine_id] is None, "sessions overlap"
                assert e.session_id not in self.closed and e.session_id not in self.expected
                self.open[e.machine_id] = e.session_id
                self.expected[e.session_id] = 0.0
            elif isinstance(e, SessionClosed):
                assert self.open[e.machine_id] == e.session_id
                assert e.session_id not in self.closed
                self.open[e.machine_id] = None
                self.closed.add(e.session_id)
                assert e.energy_wh >= 0.0
                assert e.energy_wh == self.expected[e.session_id]
                assert e.end >= e.start
                assert e.busy_s + e.idle_s == pytest.approx(e.end - e.start, abs=1e-6)


@settings(max_examples=150, deadline=None)
@given(timed_steps)
def test_random_sequences_keep_the_invariants(steps: list[tuple[float, tuple[Any, ...]]]) -> None:
    run = Run()
    for dt, step in steps:
        run.step(dt, step)
    run.check(run.floor.tick(run.ts + 10_000))
    for machine, session_id in run.open.items():
        view = run.floor.machine_view(machine)
        assert (view.session.session_id if view.session else None) == session_id


@settings(max_examples=150, deadline=None)
@given(timed_steps, st.data())
def test_restart_at_any_point_gives_the_same_future(steps: list[tuple[float, tuple[Any, ...]]], data: Any) -> None:
    cut = data.draw(st.integers(0, len(steps)))
    straight = Run()
    for dt, step in steps:
        straight.step(dt, step)
    restarted = Run()
    for dt, step in steps[:cut]:
        restarted.step(dt, step)
    state = json.loads(json.dumps(restarted.floor.to_json()))
    restarted.floor = Floor.from_json(state, [LASER, DRILL], ACCESS, "Europe/Brussels")
    for dt, step in steps[cut:]:
        restarted.step(dt, step)
    end = straight.ts + 10_000
    assert straight.effects + straight.floor.tick(end) == restarted.effects + restarted.floor.tick(end)
    assert straight.floor.to_json() == restarted.floor.to_json()
