from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.counters import CounterTracker
from gateway.domain.energy.apportion import split, split4, split_pair
from gateway.domain.energy.intervals import ESTIMATED, INTEGRATED, MISSING, OK, CounterSeries, PowerSeries, worst


def counter(points: list[tuple[float, float]], interval_s: int = 60, max_gap_s: float = 900.0) -> CounterSeries:
    s = CounterSeries(interval_s=interval_s, max_gap_s=max_gap_s)
    s.feed([t for t, _ in points], [v for _, v in points])
    return s


def test_plain_deltas_fall_in_their_interval() -> None:
    s = counter([(0.0, 0.0), (30.0, 1.0), (60.0, 2.0), (90.0, 2.5), (120.0, 3.0)])
    energy, flags = s.result.as_lists(0, 2)
    assert energy == [2000, 1000]
    assert flags == [OK, OK]


def test_one_boundary_is_cut_by_time_without_flag() -> None:
    s = counter([(0.0, 0.0), (50.0, 0.0), (70.0, 2.0), (120.0, 2.0)])
    energy, flags = s.result.as_lists(0, 2)
    assert energy == [1000, 1000]
    assert flags == [OK, OK]


def test_delta_over_several_intervals_is_spread_and_estimated() -> None:
    s = counter([(0.0, 0.0), (30.0, 0.0), (200.0, 1.7), (240.0, 1.7)])
    energy, flags = s.result.as_lists(0, 4)
    # 1700 mWh over 170 s: 30 s, 60 s, 60 s, 20 s.
    assert energy == [300, 600, 600, 200]
    assert flags == [ESTIMATED] * 4


def test_gap_is_missing_and_unplaced() -> None:
    s = counter([(0.0, 0.0), (60.0, 1.0), (2000.0, 5.0), (2040.0, 6.0), (2100.0, 6.0)], max_gap_s=900)
    energy, flags = s.result.as_lists(0, 35)
    assert s.result.unplaced_mwh == 4000
    assert energy[0] == 1000 and energy[33] == 1000
    assert flags[0] == OK and all(f & MISSING for f in flags[1:34]) and flags[34] == OK
    assert sum(energy) + s.result.unplaced_mwh == 6000


def test_a_counter_that_did_not_move_proves_nothing_flowed_however_long_the_silence() -> None:
    """A battery at rest behind a GX that publishes on change only, an inverter asleep at night."""
    s = counter([(0.0, 0.0), (60.0, 1.0), (7260.0, 1.0), (7320.0, 2.0)], max_gap_s=900)
    energy, flags = s.result.as_lists(0, 122)
    assert s.result.unplaced_mwh == 0
    assert energy[0] == 1000 and energy[121] == 1000 and sum(energy) == 2000
    assert all(f == OK for f in flags)  # two hours of silence, and not one interval missing
    # The same silence with the counter moved by 1 mWh: when it flowed is unknown, so it is missing.
    s = counter([(0.0, 0.0), (60.0, 1.0), (7260.0, 1.001), (7320.0, 2.001)], max_gap_s=900)
    energy, flags = s.result.as_lists(0, 122)
    assert s.result.unplaced_mwh == 1 and all(f & MISSING for f in flags[1:121])
    # Not spread and estimated either, over a shorter silence.
    s = counter([(0.0, 0.0), (60.0, 1.0), (600.0, 1.0), (660.0, 2.0)], max_gap_s=900)
    assert s.result.as_lists(0, 11)[1] == [OK] * 11


def test_reset_counts_what_the_meter_shows_and_flags_missing() -> None:
    s = counter([(0.0, 100.0), (30.0, 101.0), (60.0, 102.0), (90.0, 0.5), (120.0, 1.0)])
    energy, flags = s.result.as_lists(0, 2)
    assert energy == [2000, 1000]
    assert flags == [OK, MISSING]


def test_coverage_before_first_and_after_last_reading_is_missing() -> None:
    s = counter([(70.0, 0.0), (130.0, 1.0), (190.0, 2.0)])
    _energy, flags = s.result.as_lists(0, 4)
    assert flags == [MISSING, MISSING, OK, MISSING]


def test_power_trapezoid_and_sign_change() -> None:
    p = PowerSeries(interval_s=60)
    # +3600 W for 60 s = 60 Wh; then from +3600 to -3600 over 60 s: 15 Wh each way.
    p.feed([0.0, 60.0, 120.0], [3600.0, 3600.0, -3600.0])
    pos, neg = p.results()
    assert pos.as_lists(0, 2) == ([60_000, 15_000], [INTEGRATED, INTEGRATED])
    assert neg.as_lists(0, 2)[0] == [0, 15_000]


def test_power_gap_is_missing() -> None:
    p = PowerSeries(interval_s=60, max_gap_s=120)
    p.feed([0.0, 60.0, 600.0, 660.0], [100.0, 100.0, 100.0, 100.0])
    pos, _neg = p.results()
    _energy, flags = pos.as_lists(0, 11)
    assert flags[0] == INTEGRATED and flags[10] == INTEGRATED
    assert all(f & MISSING for f in flags[1:10])
    assert worst(flags[5]) == "missing"


@given(st.integers(-(10**9), 10**9), st.lists(st.integers(0, 10**6), min_size=1, max_size=8))
def test_split_sums_exactly(total: int, weights: list[int]) -> None:
    parts = split(total, weights)
    assert sum(parts) == total
    if sum(weights) and total >= 0:
        assert all(abs(p * sum(weights) - total * w) < sum(weights) for p, w in zip(parts, weights, strict=True))


@given(st.integers(-(10**9), 10**9), st.lists(st.integers(0, 10**6), min_size=4, max_size=4))
def test_fast_splits_agree(total: int, w: list[int]) -> None:
    assert list(split4(total, *w)) == split(total, w)
    assert split_pair(total, w[0], w[1]) == split(total, w[:2])[0] or sum(w[:2]) == 0


steps = st.lists(
    st.tuples(
        st.floats(0.5, 400.0),  # seconds since the last reading
        st.floats(0.0, 50.0),  # Wh added
        st.sampled_from(["ok"] * 8 + ["reset", "jitter"]),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(steps, st.sampled_from([60, 900, 1800]), st.floats(0.0, 10_000.0))
def test_counter_energy_reconciles_with_the_tracker(raw: list[tuple[float, float, str]], step: int, t0: float) -> None:
    """Intervals + unplaced = every tracker delta rounded to the mWh; nothing invented."""
    t, v = t0, 1000.0
    points = [(t, v)]
    for dt, add, event in raw:
        t += dt
        v = add if event == "reset" else (v - 0.01 if event == "jitter" else v + add)
        points.append((round(t, 3), round(v, 3)))
    s = counter(points, interval_s=step, max_gap_s=300.0)
    ref = CounterTracker(max_gap_s=300.0)
    expected = sum(round(d.delta * 1000) for tt, vv in points if (d := ref.update(tt, vv)) is not None)
    assert s.result.total_mwh() + s.result.unplaced_mwh == expected
    assert all(e >= 0 for e in s.result.energy.values())


def placed_one_by_one(points: list[tuple[float, float]], interval_s: int) -> CounterSeries:
    """The reference for `CounterSeries.feed`: every delta from `update()`, every one through `_place`."""
    s = CounterSeries(interval_s=interval_s, max_gap_s=900.0)
    res = s.result
    for t, v in points:
        d = s.tracker.update(t, v)
        if d is None:
            continue
        if d.flag == "first":
            res.first_ts = t if res.first_ts is None else res.first_ts
            continue
        s._place(d.start_ts, d.end_ts, round(d.delta * 1000.0), d.flag)
    if res.first_ts is not None:
        res.last_ts = s.tracker.last_ts
    return s


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.floats(0.5, 120), st.floats(900, 3000), st.floats(-30, -1)),
            st.floats(0, 20),
            st.sampled_from("oooooorjn"),
        ),
        max_size=80,
    ),
    st.sampled_from([60, 900]),
    st.integers(1, 40),
)
def test_the_inline_cases_of_feed_place_exactly_what_place_would(
    steps: list[tuple[float, float, str]], interval_s: int, chunk: int
) -> None:
    """Deltas inside one interval and across one boundary are placed inline in `feed`; fed in
    chunks of any size, the energy, flags and unplaced energy are those of `_place` on each."""
    t, v, points = 1_717_200_000.0, 1000.0, []
    for dt, add, event in steps:
        t += dt
        v = add if event == "r" else v - 0.01 if event == "j" else v + add
        points.append((t, float("nan") if event == "n" else v))
    fast = CounterSeries(interval_s=interval_s, max_gap_s=900.0)
    for i in range(0, len(points), chunk):
        part = points[i : i + chunk]
        fast.feed([p[0] for p in part], [p[1] for p in part])
    slow = placed_one_by_one(points, interval_s)
    nonzero = {k: e for k, e in slow.result.energy.items() if e}
    assert {k: e for k, e in fast.result.energy.items() if e} == nonzero
    assert fast.result.flags == slow.result.flags
    assert (fast.result.unplaced_mwh, fast.result.first_ts, fast.result.last_ts) == (
        slow.result.unplaced_mwh,
        slow.result.first_ts,
        slow.result.last_ts,
    )
