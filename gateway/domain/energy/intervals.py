"""Readings of one series (one device and metric) -> energy per interval, in integer mWh.

Intervals are `interval_s` long (60 s by default; 900 and 1800 for energy communities) and
aligned to multiples of it since the Unix epoch, in UTC: interval `k` is
`[k * interval_s, (k + 1) * interval_s)`. A span of time that ends exactly on a boundary
belongs to the interval before it.

Counters go through `gateway.counters.CounterTracker`, the one place that knows resets,
jitter, wraps and gaps. Each delta is rounded to the mWh once; from then on everything is an
integer. Where the delta goes:

- inside one interval, or across one boundary (the reading before and the reading after
  sit in neighbouring intervals): it is cut at the boundary in proportion to time. This is
  the ordinary interpolation of a counter at a boundary and carries no flag; flagging it
  would mark nearly every interval of a meter that is not read exactly on the boundaries;
- across three or more intervals (some interval has no reading of its own): spread over
  them in proportion to time, largest remainder, and every one of them is `ESTIMATED`;
- a counter that did not move (by less than half a mWh), across any span, even a silence
  longer than `max_gap_s`: zero in every interval of it, with no flag. A counter never goes down, so an unchanged
  value proves that nothing flowed at any moment in between (devices that publish on change
  only, Victron's GX, an inverter asleep at night, are silent exactly when nothing flows);
- after a `gap` (more than `max_gap_s` of silence; the tracker's flag): not placed at all.
  The energy is real but when it flowed is unknown, so it is added to the series'
  `unplaced_mwh`, reported beside the intervals, and every interval the silence touches is
  `MISSING`. The intervals plus `unplaced_mwh` add up to every delta the tracker gave;
- after a `reset`: what the meter shows now is placed like any delta, and the intervals it
  touches are `MISSING`, because what it counted between the last reading and the reset is
  lost. A reset (or a jitter) after a silence longer than `max_gap_s` is treated as a gap.

Power-only devices (a battery or grid meter reporting only signed `power_w`) are integrated
by the trapezoid rule between consecutive samples no more than `max_gap_s` apart, and each
touched interval is `INTEGRATED`. A segment whose ends have opposite signs is cut at its zero
crossing, so import and export (or charge and discharge) are never netted inside a segment.

Coverage: an interval is known only between the series' first and last readings. Intervals
before the first reading, the one it falls in (unless it falls on the boundary), and those
after the last reading are `MISSING`. Their energy is reported as zero or as far as known:
never invented.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.counters import CounterTracker
from gateway.domain.energy.apportion import split, split_pair

#: Quality flags, a bit set. The worst present names the interval: missing > integrated > estimated > ok.
OK = 0
ESTIMATED = 1
INTEGRATED = 2
MISSING = 4
FLAG_NAMES = {ESTIMATED: "estimated", INTEGRATED: "integrated", MISSING: "missing"}

#: Joule -> mWh: 1 mWh = 3.6 J.
_J_PER_MWH = 3.6


def worst(flags: int) -> str:
    """The name of the worst flag in a set: `missing`, `integrated`, `estimated` or `ok`."""
    for bit in (MISSING, INTEGRATED, ESTIMATED):
        if flags & bit:
            return FLAG_NAMES[bit]
    return "ok"


def flag_names(flags: int) -> list[str]:
    """The set spelled out, worst first; `["ok"]` for none."""
    return [FLAG_NAMES[b] for b in (MISSING, INTEGRATED, ESTIMATED) if flags & b] or ["ok"]


@dataclass(slots=True)
class SeriesEnergy:
    """What a series gave: energy and flags per interval index, and what could not be placed."""

    interval_s: int
    energy: dict[int, int] = field(default_factory=dict)
    flags: dict[int, int] = field(default_factory=dict)
    #: Energy of deltas across gaps: real, counted, but not placed in any interval.
    unplaced_mwh: int = 0
    first_ts: float | None = None
    last_ts: float | None = None

    def as_lists(self, k0: int, k1: int) -> tuple[list[int], list[int]]:
        """Energy and flags of intervals k0..k1-1, with the coverage rule applied."""
        n = k1 - k0
        energy = [0] * n
        flags = [MISSING] * n
        if self.first_ts is None or self.last_ts is None or n <= 0:
            return energy, flags
        step = self.interval_s
        lo = max(k0, math.ceil(self.first_ts / step))
        hi = min(k1, math.floor(self.last_ts / step))
        for k in range(lo, hi):
            flags[k - k0] = OK
        get = self.energy.get
        for k, f in self.flags.items():
            if k0 <= k < k1:
                flags[k - k0] |= f
        for k in range(k0, k1):
            energy[k - k0] = get(k, 0)
        return energy, flags

    def total_mwh(self) -> int:
        return sum(self.energy.values())


class CounterSeries:
    """Feed one counter's readings in time order; `result` holds the energy per interval."""

    def __init__(self, *, interval_s: int = 60, max_gap_s: float = 900.0, tracker: CounterTracker | None = None):
        self.tracker = tracker or CounterTracker(max_gap_s=max_gap_s)
        self.max_gap_s = self.tracker.max_gap_s
        self.result = SeriesEnergy(interval_s)

    def feed(self, timestamps: Iterable[float], values: Iterable[float]) -> None:
        """The hot loop: the tracker's deltas in one call, then integer bookkeeping per delta.

        Two cases are handled inline, because nearly every delta is one of them: a plain delta
        inside the interval being filled, and a plain delta across one boundary (one in six at
        10 s readings and 60 s intervals), cut by time exactly as `_spread` cuts it.
        """
        res = self.result
        step = res.interval_s
        energy = res.energy
        max_gap = self.max_gap_s
        # The interval being filled, kept in locals: most deltas fall inside it.
        cur = -1
        lo = hi = 0.0
        acc = 0
        for start, end, delta, flag in self.tracker.deltas(timestamps, values):
            if lo <= start and end <= hi and flag == "ok":
                acc += round(delta * 1000.0)
                continue
            if acc:
                energy[cur] = energy.get(cur, 0) + acc
                acc = 0
            if flag == "first":
                if res.first_ts is None:
                    res.first_ts = end
                continue
            cur = int(end // step)
            if end == cur * step:
                cur -= 1
            lo = cur * step
            hi = lo + step
            if flag == "ok" and lo - step <= start < lo and end - start <= max_gap:
                # Across the one boundary at `lo`: the part before it goes to the interval before.
                mwh = round(delta * 1000.0)
                first = split_pair(mwh, round((lo - start) * 1_000_000), round((end - lo) * 1_000_000))
                energy[cur - 1] = energy.get(cur - 1, 0) + first
                acc = mwh - first
                continue
            self._place(start, end, round(delta * 1000.0), flag)
        if acc:
            energy[cur] = energy.get(cur, 0) + acc
        if res.first_ts is not None:
            res.last_ts = self.tracker.last_ts

    def _place(self, start: float, end: float, mwh: int, flag: str) -> None:
        """A delta that is not the plain case: across boundaries, after a gap or a reset."""
        res = self.result
        if mwh == 0 and flag in ("ok", "gap"):
            # The counter did not move (not by half a mWh): a counter never goes down, so nothing
            # flowed at any moment between the two readings, however long the silence.
            return
        ks, ke = _span(start, end, res.interval_s)
        if flag == "gap" or end - start > self.max_gap_s:
            res.unplaced_mwh += mwh
            _mark(res.flags, ks, ke, MISSING)
            return
        mark = MISSING if flag == "reset" else (ESTIMATED if ke - ks >= 2 else OK)
        if ks == ke:
            res.energy[ks] = res.energy.get(ks, 0) + mwh
        else:
            _spread(res.energy, start, end, ks, ke, mwh, res.interval_s)
        if mark:
            _mark(res.flags, ks, ke, mark)


class PowerSeries:
    """Feed one signed `power_w` series in time order; trapezoids -> `positive` and `negative`.

    `positive` gets the energy while the power is above zero (grid import, battery charge,
    a machine's consumption), `negative` the energy while it is below, as a positive number.
    """

    def __init__(self, *, interval_s: int = 60, max_gap_s: float = 900.0):
        self.interval_s = interval_s
        self.max_gap_s = max_gap_s
        self._pos: dict[int, float] = {}
        self._neg: dict[int, float] = {}
        self._flags: dict[int, int] = {}
        self._last: tuple[float, float] | None = None
        self.first_ts: float | None = None

    def feed(self, timestamps: Iterable[float], watts: Iterable[float]) -> None:
        step = self.interval_s
        gap = self.max_gap_s
        flags = self._flags
        last = self._last
        t0, p0 = last if last is not None else (math.nan, 0.0)
        for t1, p1 in zip(timestamps, watts, strict=True):
            if not (math.isfinite(t1) and math.isfinite(p1)) or t1 <= t0:
                continue
            if self.first_ts is None:
                self.first_ts = t1
            elif t1 - t0 > gap:
                ks, ke = _span(t0, t1, step)
                _mark(flags, ks, ke, MISSING)
            else:
                self._segment(t0, p0, t1, p1)
            t0, p0 = t1, p1
        if self.first_ts is not None:
            self._last = (t0, p0)

    def _segment(self, t0: float, p0: float, t1: float, p1: float) -> None:
        if (p0 >= 0.0) == (p1 >= 0.0) or p0 == 0.0 or p1 == 0.0:
            self._add(t0, t1, (p0 + p1) * (t1 - t0) / (2 * _J_PER_MWH))
            return
        tz = t0 + (t1 - t0) * p0 / (p0 - p1)
        self._add(t0, tz, p0 * (tz - t0) / (2 * _J_PER_MWH))
        self._add(tz, t1, p1 * (t1 - tz) / (2 * _J_PER_MWH))

    def _add(self, t0: float, t1: float, mwh: float) -> None:
        bucket = self._pos if mwh >= 0.0 else self._neg
        mwh = abs(mwh)
        step = self.interval_s
        ks, ke = _span(t0, t1, step)
        flags = self._flags
        for k in range(ks, ke + 1):
            a = max(t0, k * step)
            b = min(t1, (k + 1) * step)
            share = mwh if ks == ke else mwh * (b - a) / (t1 - t0)
            bucket[k] = bucket.get(k, 0.0) + share
            flags[k] = flags.get(k, 0) | INTEGRATED

    def forget(self, k: int) -> None:
        """Drop the intervals before `k`, keeping `results()` exactly as if nothing was dropped:
        the buckets before `k` become one at k - 1 holding their running sum, added in the
        order `results()` adds them, so its cumulative rounding does not change."""
        for bucket in (self._pos, self._neg):
            old = sorted(x for x in bucket if x < k)
            if old and old != [k - 1]:
                carry = 0.0
                for x in old:
                    carry += bucket.pop(x)
                bucket[k - 1] = carry
        for x in [x for x in self._flags if x < k]:
            del self._flags[x]

    def results(self) -> tuple[SeriesEnergy, SeriesEnergy]:
        """(positive, negative) as integer mWh: cumulative rounding, so no mWh is lost in sums."""
        last_ts = self._last[0] if self._last is not None else None
        out = []
        for bucket in (self._pos, self._neg):
            res = SeriesEnergy(self.interval_s, flags=dict(self._flags), first_ts=self.first_ts, last_ts=last_ts)
            exact = 0.0
            given = 0
            for k in sorted(bucket):
                exact += bucket[k]
                res.energy[k] = round(exact) - given
                given += res.energy[k]
            out.append(res)
        return out[0], out[1]


def _span(start: float, end: float, step: int) -> tuple[int, int]:
    """First and last interval a span touches (an end on a boundary stays in the interval before)."""
    ks = int(start // step)
    ke = int(end // step)
    if ke > ks and end == ke * step:
        ke -= 1
    return ks, ke


def _mark(flags: dict[int, int], ks: int, ke: int, bit: int) -> None:
    for k in range(ks, ke + 1):
        flags[k] = flags.get(k, 0) | bit


def _spread(energy: dict[int, int], start: float, end: float, ks: int, ke: int, mwh: int, step: int) -> None:
    """`mwh` over intervals ks..ke in proportion to the time each holds (in µs, integers)."""
    if ke == ks + 1:
        cut = (ks + 1) * step
        first = split_pair(mwh, round((cut - start) * 1_000_000), round((end - cut) * 1_000_000))
        energy[ks] = energy.get(ks, 0) + first
        energy[ke] = energy.get(ke, 0) + mwh - first
        return
    weights = []
    for k in range(ks, ke + 1):
        a = max(start, k * step)
        b = min(end, (k + 1) * step)
        weights.append(max(0, round((b - a) * 1_000_000)))
    for k, part in zip(range(ks, ke + 1), split(mwh, weights), strict=True):
        if part:
            energy[k] = energy.get(k, 0) + part
