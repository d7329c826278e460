"""Who used the interval's energy, and from which source.

Consumers of one interval, in this order:

1. per machine (sorted by machine id), each member whose session was open on it during the
   interval, then the machine's `unattributed` account. The machine's energy (its meter's
   interval energy) is split between them in proportion to time: each session gets the
   milliseconds it overlaps the interval, `unattributed` the milliseconds no session covers;
2. the site's `base` load: consumption minus every machine's energy. It is negative when the
   machines' meters add up to more than the site's consumption; reported so, never clamped.

Source mix: the machines together take their total from the load's mix (sun, battery of sun
origin, battery of grid origin, grid) pro rata; each machine consumer then takes its energy
pro rata from what the machines' share has left, the last one taking the rest exactly; the
base load gets what the machines did not take. So, exactly, in every interval:
members + unattributed + base = consumption, each consumer's four parts = its energy, and each
part summed over the consumers = the load's mix.

The battery pool keeps the origin of stored energy: charge adds sun→battery to its sun side
and the rest of the charge to its grid side (energy of unknown origin counts as grid: the
gateway never claims sun it did not see); discharge then takes from both sides pro rata.
Inside one interval the charge is added before the discharge is taken.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.domain.energy.apportion import split, split4, split_pair
from gateway.journal.schema import Row

#: (milliseconds inside the interval, member id, session id): a session's part of one interval.
Overlap = tuple[int, str, str]

#: One consumer in one interval: (interval start, kind, machine id, member id, session id,
#: energy, sun, battery of sun origin, battery of grid origin, grid, flags). Kinds:
#: `member`, `unattributed`, `base`. Energy in mWh. Consumers with no energy are left out.
Share = tuple[int, str, str | None, str | None, str | None, int, int, int, int, int, int]


@dataclass(frozen=True, slots=True)
class Session:
    session_id: str
    machine_id: str
    member_id: str
    start: float
    #: None: still open (it runs to the end of what is replayed).
    end: float | None


def sessions_from_rows(rows: Iterable[Row]) -> list[Session]:
    """Sessions from the journal's `event.session_opened` / `event.session_closed` rows."""
    opened: dict[str, Session] = {}
    closed: dict[str, Session] = {}
    for _seq, _ts, _device, metric, _value, text in rows:
        if text is None or metric not in ("event.session_opened", "event.session_closed"):
            continue
        e = json.loads(text)
        end = e["end"] if metric == "event.session_closed" else None
        s = Session(e["session_id"], e["machine_id"], e["member_id"], float(e["start"]), end)
        (closed if end is not None else opened)[s.session_id] = s
    merged = {**opened, **closed}
    return sorted(merged.values(), key=lambda s: (s.start, s.session_id))


def overlaps(sessions: Iterable[Session], interval_s: int, until: float) -> dict[tuple[str, int], list[Overlap]]:
    """(machine id, interval index) -> [(ms inside the interval, member, session)], in session order."""
    out: dict[tuple[str, int], list[Overlap]] = {}
    for s in sorted(sessions, key=lambda s: (s.start, s.session_id)):
        end = until if s.end is None else s.end
        if end <= s.start:
            continue
        k = int(s.start // interval_s)
        while k * interval_s < end:
            a = max(s.start, k * interval_s)
            b = min(end, (k + 1) * interval_s)
            ms = round(b * 1000) - round(a * 1000)
            if ms > 0:
                out.setdefault((s.machine_id, k), []).append((ms, s.member_id, s.session_id))
            k += 1
    return out


@dataclass(slots=True)
class BatteryPool:
    """Energy stored in the battery by origin, mWh. Part of the replay state."""

    sun: int = 0
    grid: int = 0

    def step(self, charge: int, sun_charge: int, discharge: int) -> tuple[int, int]:
        """Add the interval's charge, take its discharge: (discharged of sun origin, of grid origin)."""
        self.sun += sun_charge
        self.grid += charge - sun_charge
        held = self.sun + self.grid
        if discharge >= held:
            d_sun = self.sun
            self.sun = self.grid = 0
            return d_sun, discharge - d_sun
        d_sun = split_pair(discharge, self.sun, self.grid)
        self.sun -= d_sun
        self.grid -= discharge - d_sun
        return d_sun, discharge - d_sun


def machine_consumers(
    energy: int, sessions: list[Overlap] | None, interval_ms: int
) -> list[tuple[str, str | None, str | None, int]]:
    """(kind, member, session, energy) of one machine in one interval; parts sum to `energy`."""
    if not sessions:
        return [("unattributed", None, None, energy)]
    weights = [ms for ms, _m, _s in sessions]
    weights.append(max(0, interval_ms - sum(weights)))
    parts = split(energy, weights)
    out: list[tuple[str, str | None, str | None, int]] = [
        ("member", member, sid, part) for (_ms, member, sid), part in zip(sessions, parts, strict=False) if part
    ]
    if parts[-1]:
        out.append(("unattributed", None, None, parts[-1]))
    return out


#: One machine in one interval: (machine id, energy, meter flags, session overlaps or None).
MachineInterval = tuple[str, int, int, list[Overlap] | None]


def attribute(
    start: int,
    consumption: int,
    mix: tuple[int, int, int, int],
    machines: Iterable[MachineInterval],
    flags: int,
    interval_ms: int,
) -> list[Share]:
    """Every consumer of one interval with its source mix; `machines` sorted by machine id."""
    consumers: list[tuple[str, str, str | None, str | None, int, int]] = []
    total = 0
    base_flags = flags
    for machine, energy, mflags, sessions in machines:
        base_flags |= mflags
        if not energy:
            continue
        total += energy
        if sessions is None:
            consumers.append(("unattributed", machine, None, None, energy, flags | mflags))
            continue
        for kind, member, sid, part in machine_consumers(energy, sessions, interval_ms):
            consumers.append((kind, machine, member, sid, part, flags | mflags))
    m0, m1, m2, m3 = mix
    t0, t1, t2, t3 = split4(total, m0 if m0 > 0 else 0, m1 if m1 > 0 else 0, m2 if m2 > 0 else 0, m3 if m3 > 0 else 0)
    out: list[Share] = []
    l0, l1, l2, l3 = t0, t1, t2, t3
    for kind, machine, member, sid, part, cflags in consumers:
        a, b, c, d = split4(part, l0, l1, l2, l3)
        l0 -= a
        l1 -= b
        l2 -= c
        l3 -= d
        out.append((start, kind, machine, member, sid, part, a, b, c, d, cflags))
    base = consumption - total
    b0, b1, b2, b3 = m0 - t0, m1 - t1, m2 - t2, m3 - t3
    if base or b0 or b1 or b2 or b3:
        out.append((start, "base", None, None, None, base, b0, b1, b2, b3, base_flags))
    return out
