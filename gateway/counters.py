"""The one place that turns cumulative counter readings into energy deltas.

Meters report energy as a running total (`energy_wh` and the other `counter`
quantities). What the balance, attribution and the ledger need is energy per interval:
the difference between consecutive totals. Real counters misbehave, and each
misbehaviour has exactly one answer, here:

- the first reading of a series -> `first`, delta 0: a baseline, nothing is known before it;
- not below the last, within `max_gap_s` -> `ok`, delta new - last: the normal case;
- not below the last, after more than `max_gap_s` -> `gap`, delta new - last: the energy is
  real but its timing unknown; the caller decides how to place it, and nothing is invented
  for the silent time;
- below `reset_ratio` x the last -> `reset`, delta new: the device rebooted or was reset, and
  what it shows now accumulated since then (what it counted between the last reading and the
  reset is lost; the flag says so);
- between `reset_ratio` x the last and the last -> `jitter`, delta 0: rounding or a meter's
  noise gives no negative energy, and the high-water mark is kept so that the recovery to
  the old value is not counted twice;
- from the top tenth of a fixed-width counter's range (`wrap_at`) into its bottom tenth ->
  `ok` (or `gap`), delta (wrap_at - last) + new: the counter wrapped around;
- older than the last reading, not finite, or negative -> None: ignored, and counted.

"The last" is the high-water mark: the highest value since the last reset.

`delta` is in the counter's own unit (Wh for every counter in `gateway.quantities`).
The energy of a delta happened between `start_ts` and `end_ts`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Literal, NamedTuple

from gateway.model import Reading
from gateway.quantities import QUANTITIES, base_name

Flag = Literal["ok", "reset", "jitter", "gap", "first"]

_INF = math.inf

#: A fall from the top tenth of a fixed-width counter's range into its bottom tenth is a wrap.
WRAP_BAND = 0.1


class CounterDelta(NamedTuple):
    """Energy counted between two readings of one counter. Never negative.

    A named tuple rather than a dataclass: one is made per counter reading, and a replay
    of a month makes millions (bench/replay.py).
    """

    start_ts: float
    end_ts: float
    delta: float
    flag: Flag


#: A delta as a plain tuple, (start_ts, end_ts, delta, flag): what `CounterTracker.deltas` gives.
Delta = tuple[float, float, float, Flag]


class CounterTracker:
    """Deltas of one counter (one device and metric). Feed readings in time order."""

    def __init__(
        self,
        *,
        reset_ratio: float = 0.9,
        max_gap_s: float = 900.0,
        wrap_at: float | None = None,
    ) -> None:
        if not 0.0 < reset_ratio <= 1.0:
            raise ValueError(f"reset_ratio must be in (0, 1], not {reset_ratio}")
        self.reset_ratio = reset_ratio
        self.max_gap_s = max_gap_s
        self.wrap_at = wrap_at
        self.last_ts: float | None = None
        #: The highest value seen since the last reset: deltas are taken from it.
        self.high: float = 0.0
        self.resets = 0
        self.jitters = 0
        self.gaps = 0
        self.wraps = 0
        self.out_of_order = 0
        self.invalid = 0

    #: What `state()` saves: everything a restarted gateway needs to continue exactly.
    STATE = ("last_ts", "high", "resets", "jitters", "gaps", "wraps", "out_of_order", "invalid")

    def state(self) -> dict[str, float | int | None]:
        """The tracker's progress as plain JSON values (options come from the configuration)."""
        return {name: getattr(self, name) for name in self.STATE}

    def restore(self, state: dict[str, float | int | None]) -> None:
        for name in self.STATE:
            setattr(self, name, state[name])

    def update(self, ts: float, value: float) -> CounterDelta | None:
        """The delta this reading adds, or None when the reading is ignored."""
        if not (math.isfinite(value) and value >= 0.0 and math.isfinite(ts)):
            self.invalid += 1
            return None
        last_ts = self.last_ts
        if last_ts is None:
            return self._accept(ts, value, ts, 0.0, "first")
        if ts < last_ts:
            self.out_of_order += 1
            return None
        gap = ts - last_ts > self.max_gap_s
        if value >= self.high:
            return self._accept(ts, value, last_ts, value - self.high, self._timing(gap))
        if self._wrapped(value):
            self.wraps += 1
            assert self.wrap_at is not None
            return self._accept(ts, value, last_ts, self.wrap_at - self.high + value, self._timing(gap))
        if value < self.reset_ratio * self.high:
            self.resets += 1
            return self._accept(ts, value, last_ts, value, "reset")
        self.jitters += 1
        self.last_ts = ts
        return CounterDelta(last_ts, ts, 0.0, "jitter")

    def deltas(self, timestamps: Iterable[float], values: Iterable[float]) -> list[Delta]:
        """The deltas of many readings at once: exactly `update()` on each, ignored readings left out.

        The common reading (finite, in order, not below the high-water mark) is `update()`'s
        first rule written inline, without a call or a `CounterDelta` per reading; every other
        reading goes through `update()` itself, so there is one set of rules. A replay of a
        month spends most of its time here (bench/replay.py).
        """
        out: list[Delta] = []
        append = out.append
        update = self.update
        max_gap = self.max_gap_s
        # The tracker's state in locals; +inf before the first reading sends it to `update()`.
        last = self.last_ts if self.last_ts is not None else math.inf
        high = self.high
        for ts, value in zip(timestamps, values, strict=True):
            if last <= ts < _INF and high <= value < _INF:
                if ts - last > max_gap:
                    self.gaps += 1
                    append((last, ts, value - high, "gap"))
                else:
                    append((last, ts, value - high, "ok"))
                last = ts
                high = value
                continue
            self.last_ts = None if last == _INF else last
            self.high = high
            d = update(ts, value)
            if d is not None:
                append(d)
            last = self.last_ts if self.last_ts is not None else math.inf
            high = self.high
        self.last_ts = None if last == _INF else last
        self.high = high
        return out

    def _timing(self, gap: bool) -> Flag:
        if gap:
            self.gaps += 1
            return "gap"
        return "ok"

    def _wrapped(self, value: float) -> bool:
        """A fall from the top part of a fixed-width counter's range to its bottom part."""
        wrap = self.wrap_at
        return wrap is not None and self.high >= (1 - WRAP_BAND) * wrap and value < WRAP_BAND * wrap

    def _accept(self, ts: float, value: float, start: float, delta: float, flag: Flag) -> CounterDelta:
        self.last_ts = ts
        self.high = value
        return CounterDelta(start, ts, delta, flag)


def is_counter(metric: str) -> bool:
    """Whether `metric` (suffix allowed) is a cumulative counter of the vocabulary."""
    q = QUANTITIES.get(metric) or QUANTITIES.get(base_name(metric))
    return q is not None and q.kind == "counter"


TrackerFactory = Callable[[str, str], CounterTracker]


class CounterBank:
    """A `CounterTracker` per (device, metric), created on first sight.

    `factory(device, metric)` builds each tracker, which is where a configuration gives a
    device its own `wrap_at` or gap limit; by default every tracker has the defaults.
    """

    def __init__(self, factory: TrackerFactory | None = None) -> None:
        self._factory: TrackerFactory = factory or (lambda _device, _metric: CounterTracker())
        self.trackers: dict[tuple[str, str], CounterTracker] = {}

    def update(self, device: str, metric: str, ts: float, value: float) -> CounterDelta | None:
        key = (device, metric)
        tracker = self.trackers.get(key)
        if tracker is None:
            tracker = self.trackers[key] = self._factory(device, metric)
        return tracker.update(ts, value)

    def update_reading(self, reading: Reading) -> CounterDelta | None:
        """The delta of a counter reading; None for gauges and states, and for ignored readings."""
        if not is_counter(reading.metric):
            return None
        return self.update(reading.device, reading.metric, reading.ts, reading.value)
