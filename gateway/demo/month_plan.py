"""A month at the demo lab, planned: who comes to which machine when, and what the operators do.

`commonwatt demo --month` (gateway/demo/month.py) plays this plan through the real gateway.
The plan is what the people intend; the gateway decides what happens. A member whose badge
is refused walks off, a member who walks away leaves the idle timeout to end the session,
and everything else (sessions, charges, energy) comes out of the gateway's own code.

Pure and seeded. Every day has a random stream of its own (`seed`, the date), so
`--days 3` plays exactly the first three days of the full month.

What a month shows, on working days (Monday to Friday, 09:00 to about 20:00 in the site's
time zone), beside ordinary sessions on the laser, the printer and the CNC:

- every fifth working day from the first, a member who forgets to badge out at the laser,
  and the next member's badge takes the machine over (`takeover`);
- members who walk away without badging out: the idle timeout ends their sessions;
- refusals: Chloé at the CNC without `cnc-basic` (until she is trained), Dan at the laser
  with his `laser-basic` expired, a visitor's unknown card;
- on the fourth working day, Bruno (a trainer) opens the CNC and Chloé badges within his
  window: the gateway grants her `cnc-basic`, and from then on she uses the CNC too;
- every fifth working day from the fifth, the CNC switched on at its plug's own button with
  nobody badged in, in the evening (an `unauthorized_use` alert);
- the operator Elif grants two contributions: 20 credits for cleaning the workshop (posted
  at once) and 150 credits for teaching a course, which is above the approval threshold of
  `[pricing]` and waits until a second operator (the lab's admin token) approves it the next
  working day.

The monthly allowance needs no plan: the ledger issues it on the 1st at midnight.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from gateway.demo.scenario import DEMO_MACHINES, DEMO_PEOPLE

MINUTE = 60.0
#: A member badges, the relay comes on (milliseconds), then they set up for this long.
SETUP_S = (60.0, 240.0)
#: Between two stretches of work at one machine.
PAUSE_S = (2 * MINUTE, 8 * MINUTE)
#: After the last stretch, tidying up before the badge out.
TIDY_S = (MINUTE, 4 * MINUTE)
#: Between one visitor leaving a machine and the next arriving.
GAP_S = (15 * MINUTE, 100 * MINUTE)
#: Stretches of work per visit, and how long each lasts, per machine (seconds).
WORK: dict[str, tuple[tuple[int, int], tuple[float, float]]] = {
    "laser": ((1, 3), (8 * MINUTE, 35 * MINUTE)),
    "printer": ((1, 1), (30 * MINUTE, 110 * MINUTE)),
    "cnc": ((1, 2), (15 * MINUTE, 50 * MINUTE)),
}
#: Share of visits that end by walking away (the idle timeout ends the session).
WALK_AWAY = 0.12
#: The lab opens, the last member arrives, the evening's unattended use (local hours).
OPEN_H, LAST_ARRIVAL_H, EVENING_H = 9.0, 19.0, 20.25
#: Working days: Monday to Friday.
WORKING_WEEKDAYS = frozenset(range(5))
#: The trainer's day (working-day index) and who trains whom on which machine.
TRAINING_DAY = 3
TRAINER, TRAINEE, TRAINED_MACHINE, TRAINED = "bruno", "chloe", "cnc", "cnc-basic"
#: How long after the trainer's badge the trainee's comes (the gateway's window is 30 s).
TRAINEE_AFTER_S = 15.0
#: The operator who grants contributions (a second operator, the lab's admin token, approves large ones).
OPERATOR = "elif"
#: A card nobody holds (scenario.VISITOR_CARD), planned as this name.
VISITOR = "visitor"

Leave = Literal["badge_out", "walk_away", "stay"]


@dataclass(frozen=True, slots=True)
class Visit:
    """Someone at a machine: the badge at `arrive`, stretches of work, then how they leave.

    `work` are (start, end) UTC seconds; `leave_at` is the badge out (for `badge_out`).
    `trainee`: a member who badges at the machine `TRAINEE_AFTER_S` after the arrival.
    """

    machine: str
    who: str
    arrive: float
    work: tuple[tuple[float, float], ...] = ()
    leave: Leave = "badge_out"
    leave_at: float = 0.0
    trainee: str | None = None

    @property
    def end(self) -> float:
        """When the member is gone from the machine (the session may run on: walk away, stay)."""
        last = self.work[-1][1] if self.work else self.arrive + MINUTE
        return max(last, self.leave_at)


@dataclass(frozen=True, slots=True)
class Unattended:
    """Somebody switches a machine on at its plug's own button, runs it, and switches it off."""

    machine: str
    on: float
    off: float


@dataclass(frozen=True, slots=True)
class Grant:
    """An operator credits a member for a contribution (`ref` names it for a later approval)."""

    at: float
    ref: str
    member: str
    amount_mcr: int
    category: str
    note: str
    by: str = OPERATOR


@dataclass(frozen=True, slots=True)
class Approve:
    """A second operator approves the pending contribution `ref`."""

    at: float
    ref: str


Action = Visit | Unattended | Grant | Approve


def action_time(action: Action) -> float:
    if isinstance(action, Visit):
        return action.arrive
    if isinstance(action, Unattended):
        return action.on
    return action.at


#: The two contributions of a month: (working day, local hour, grant).
CLEANING = ("cleaning", "bruno", 20_000, "cleaning", "cleaned and sorted the workshop")
COURSE = ("course", "fatou", 150_000, "teaching", "taught the laser course")


@dataclass(slots=True)
class _Day:
    """Who is where on one day: each member's visits as (start, end), to keep them at one machine at a time."""

    rng: random.Random
    busy: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def free(self, member: str, start: float, end: float) -> bool:
        return all(end <= s or start >= e for s, e in self.busy.get(member, []))

    def take(self, member: str, start: float, end: float) -> None:
        self.busy.setdefault(member, []).append((start, end))


def working_days(first: date, last: date) -> Iterator[date]:
    """The working days from `first` to `last`, both included."""
    day = first
    while day <= last:
        if day.weekday() in WORKING_WEEKDAYS:
            yield day
        day += timedelta(days=1)


def eligible(machine: str, index: int) -> list[str]:
    """Members who hold the machine's trainings on working day `index` (Dan's laser-basic expired)."""
    needs = set(next(m.trainings for m in DEMO_MACHINES if m.id == machine))
    out = []
    for m in DEMO_PEOPLE:
        held = set(m.trainings)
        if m.id == TRAINEE and index > TRAINING_DAY:
            held.add(TRAINED)
        if needs <= held:
            out.append(m.id)
    return out


def month_plan(first: date, last: date, timezone: str, *, seed: int = 1) -> list[Action]:
    """Every action of the days `first`..`last` (local dates), in time order."""
    tz = ZoneInfo(timezone)
    actions: list[Action] = []
    for index, day in enumerate(working_days(first, last)):
        actions += day_plan(day, index, tz, seed=seed)
    return sorted(actions, key=action_time)


def day_plan(day: date, index: int, tz: ZoneInfo, *, seed: int = 1) -> list[Action]:
    """One working day: the special events of working day `index`, then ordinary visits around them."""

    def at(hour: float) -> float:
        return datetime.combine(day, time(), tz).timestamp() + hour * 3600.0

    d = _Day(random.Random(f"{seed}:{day.isoformat()}"))
    specials = _specials(index, at, d)
    actions: list[Action] = [a for a in specials if not isinstance(a, Visit)]
    booked = [a for a in specials if isinstance(a, Visit)]
    for visit in booked:
        d.take(visit.who, visit.arrive, visit.end)
        if visit.trainee is not None:
            d.take(visit.trainee, visit.arrive, visit.arrive + 2 * MINUTE)
    for machine in WORK:
        mine = [v for v in booked if v.machine == machine]
        taken = [(v.arrive, _until(v)) for v in mine]
        taken += [(a.on, a.off) for a in actions if isinstance(a, Unattended) and a.machine == machine]
        actions += [*mine, *_lane(machine, index, at(OPEN_H), at(LAST_ARRIVAL_H), sorted(taken), d)]
    return actions


def _specials(index: int, at: Callable[[float], float], d: _Day) -> list[Action]:
    """What working day `index` is there to show, beside ordinary visits."""
    rng = d.rng
    out: list[Action] = []
    if index % 5 == 0:  # a takeover at the laser in the morning
        start = at(9.5)
        work = _stretches(rng, "laser", start + rng.uniform(*SETUP_S))
        out.append(Visit("laser", "amira", start, work, "stay"))  # leaves the laser running, no badge out
        arrive = work[-1][1] + rng.uniform(3 * MINUTE, 8 * MINUTE)  # well within the idle timeout
        work = _stretches(rng, "laser", arrive + rng.uniform(*SETUP_S))
        leave = work[-1][1] + rng.uniform(*TIDY_S)
        out.append(Visit("laser", "fatou", arrive, work, "badge_out", leave))  # her badge takes it over
    if index % 5 == 1 and index < TRAINING_DAY:
        out.append(Visit("cnc", TRAINEE, at(11.25)))  # refused: no cnc-basic yet
    if index % 5 == 2:
        out.append(Visit("laser", "dan", at(14.0)))  # refused: laser-basic expired
        out.append(Visit("laser", VISITOR, at(16.5)))  # refused: a card nobody holds
    if index == TRAINING_DAY:
        start = at(10.0)
        work = _stretches(rng, "cnc", start + 3 * MINUTE)
        leave = work[-1][1] + rng.uniform(*TIDY_S)
        out.append(Visit(TRAINED_MACHINE, TRAINER, start, work, "badge_out", leave, trainee=TRAINEE))
    if index % 5 == 4:
        on = at(EVENING_H)
        out.append(Unattended("cnc", on, on + rng.uniform(8 * MINUTE, 15 * MINUTE)))
    for grant_day, hour, (ref, member, amount, category, note) in ((0, 17.0, CLEANING), (1, 17.5, COURSE)):
        if index == grant_day:
            out.append(Grant(at(hour), ref, member, amount, category, note))
    if index == 2:
        out.append(Approve(at(9.25), COURSE[0]))
    return out


def _stretches(rng: random.Random, machine: str, start: float) -> tuple[tuple[float, float], ...]:
    (least, most), span = WORK[machine]
    out = []
    t = start
    for n in range(rng.randint(least, most)):
        if n:
            t += rng.uniform(*PAUSE_S)
        end = t + rng.uniform(*span)
        out.append((t, end))
        t = end
    return tuple(out)


def _lane(
    machine: str, index: int, opens: float, last_arrival: float, taken: Sequence[tuple[float, float]], d: _Day
) -> list[Visit]:
    """Ordinary visits at one machine, around the times `taken` by the day's special events there."""
    rng = d.rng
    out: list[Visit] = []
    t = opens + rng.uniform(0.0, 45 * MINUTE)
    while t < last_arrival:
        work = _stretches(rng, machine, t + rng.uniform(*SETUP_S))
        walk = rng.random() < WALK_AWAY
        leave_at = 0.0 if walk else work[-1][1] + rng.uniform(*TIDY_S)
        visit = Visit(machine, "", t, work, "walk_away" if walk else "badge_out", leave_at)
        until = _until(visit)
        margin = GAP_S[0]
        clash = next(((s, e) for s, e in taken if s < until + margin and e > t - margin), None)
        members = [m for m in eligible(machine, index) if d.free(m, t, until)]
        if clash is not None or not members:
            t = (clash[1] if clash is not None else t) + rng.uniform(*GAP_S)
            continue
        who = rng.choice(members)
        d.take(who, t, until)
        out.append(Visit(machine, who, t, work, visit.leave, leave_at))
        t = until + rng.uniform(*GAP_S)
    return out


def _until(visit: Visit) -> float:
    """When the machine is free again after a visit: the idle timeout (15 min and the spin-down in the
    demo's configuration) ends the session of a member who walked away."""
    if visit.leave == "walk_away":
        return visit.end + 20 * MINUTE
    return visit.end
