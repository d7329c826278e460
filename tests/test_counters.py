"""Counter readings -> energy deltas: the table of gateway/counters.py, case by case and as properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.counters import CounterBank, CounterDelta, CounterTracker, is_counter
from gateway.model import Reading


def feed(tracker: CounterTracker, points: list[tuple[float, float]]) -> list[CounterDelta | None]:
    return [tracker.update(ts, value) for ts, value in points]


def test_first_reading_is_a_baseline() -> None:
    assert CounterTracker().update(10.0, 1234.0) == CounterDelta(10.0, 10.0, 0.0, "first")


def test_normal_increase() -> None:
    deltas = feed(CounterTracker(), [(0, 100.0), (60, 104.5), (120, 104.5)])
    assert deltas[1:] == [CounterDelta(0, 60, 4.5, "ok"), CounterDelta(60, 120, 0.0, "ok")]


def test_gap_keeps_the_energy_and_flags_it() -> None:
    tracker = CounterTracker(max_gap_s=900)
    deltas = feed(tracker, [(0, 100.0), (3600, 150.0), (3660, 151.0)])
    assert deltas[1] == CounterDelta(0, 3600, 50.0, "gap")
    assert deltas[2] == CounterDelta(3600, 3660, 1.0, "ok")
    assert tracker.gaps == 1


def test_reset_counts_what_accumulated_since() -> None:
    tracker = CounterTracker()
    deltas = feed(tracker, [(0, 5000.0), (60, 3.0), (120, 7.0)])
    assert deltas[1] == CounterDelta(0, 60, 3.0, "reset")
    assert deltas[2] == CounterDelta(60, 120, 4.0, "ok")
    assert tracker.resets == 1


def test_reset_to_zero() -> None:
    deltas = feed(CounterTracker(), [(0, 5000.0), (60, 0.0), (120, 2.0)])
    assert [(d.delta, d.flag) for d in deltas if d] == [(0.0, "first"), (0.0, "reset"), (2.0, "ok")]


def test_jitter_yields_no_negative_energy_and_no_double_count() -> None:
    tracker = CounterTracker()
    deltas = feed(tracker, [(0, 1000.0), (10, 999.0), (20, 1000.0), (30, 1002.0)])
    assert deltas[1] == CounterDelta(0, 10, 0.0, "jitter")
    assert deltas[2] == CounterDelta(10, 20, 0.0, "ok")
    assert deltas[3] == CounterDelta(20, 30, 2.0, "ok")
    assert tracker.jitters == 1


def test_drop_of_exactly_the_ratio_is_jitter_and_below_is_reset() -> None:
    assert feed(CounterTracker(), [(0, 1000.0), (1, 900.0)])[1] == CounterDelta(0, 1, 0.0, "jitter")
    assert feed(CounterTracker(), [(0, 1000.0), (1, 899.0)])[1] == CounterDelta(0, 1, 899.0, "reset")


def test_wrap_around_of_a_fixed_width_counter() -> None:
    tracker = CounterTracker(wrap_at=65536.0)
    deltas = feed(tracker, [(0, 65530.0), (60, 4.0), (120, 10.0)])
    assert deltas[1] == CounterDelta(0, 60, 10.0, "ok")
    assert deltas[2] == CounterDelta(60, 120, 6.0, "ok")
    assert tracker.wraps == 1


def test_drop_in_the_middle_of_a_fixed_width_range_is_a_reset() -> None:
    tracker = CounterTracker(wrap_at=65536.0)
    assert feed(tracker, [(0, 30000.0), (60, 4.0)])[1] == CounterDelta(0, 60, 4.0, "reset")


@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0])
def test_invalid_values_are_ignored(value: float) -> None:
    tracker = CounterTracker()
    assert feed(tracker, [(0, 10.0), (1, value), (2, 11.0)])[1:] == [None, CounterDelta(0, 2, 1.0, "ok")]
    assert tracker.invalid == 1


def test_out_of_order_readings_are_ignored_and_counted() -> None:
    tracker = CounterTracker()
    deltas = feed(tracker, [(100, 10.0), (50, 5.0), (200, 12.0)])
    assert deltas[1:] == [None, CounterDelta(100, 200, 2.0, "ok")]
    assert tracker.out_of_order == 1


def test_bad_ratio_is_refused() -> None:
    with pytest.raises(ValueError):
        CounterTracker(reset_ratio=1.5)


def test_bank_tracks_each_series_and_skips_gauges() -> None:
    bank = CounterBank()
    assert bank.update_reading(Reading(0, "m1", "power_w", 100.0)) is None
    bank.update_reading(Reading(0, "m1", "energy_wh", 10.0))
    bank.update_reading(Reading(0, "m2", "energy_wh", 500.0))
    assert bank.update_reading(Reading(60, "m1", "energy_wh", 12.0)) == CounterDelta(0, 60, 2.0, "ok")
    assert bank.update_reading(Reading(60, "m2", "energy_wh_l1", 1.0)) == CounterDelta(60, 60, 0.0, "first")
    assert set(bank.trackers) == {("m1", "energy_wh"), ("m2", "energy_wh"), ("m2", "energy_wh_l1")}


def test_bank_factory_sets_per_device_options() -> None:
    bank = CounterBank(lambda device, _metric: CounterTracker(wrap_at=1000.0 if device == "old" else None))
    assert bank.trackers == {}
    bank.update("old", "energy_wh", 0, 995.0)
    assert bank.update("old", "energy_wh", 1, 5.0) == CounterDelta(0, 1, 10.0, "ok")


def test_is_counter() -> None:
    assert is_counter("energy_wh") and is_counter("energy_returned_wh_l2")
    assert not is_counter("power_w") and not is_counter("nonsense_wh")


# -- properties ------------------------------------------------------------------------------

values = st.floats(min_value=0.0, max_value=1e9, allow_nan=False)
steps = st.lists(st.floats(min_value=0.0, max_value=1e6, allow_nan=False), min_size=1, max_size=50)


def deltas_of(values_: list[float], tracker: CounterTracker | None = None) -> list[CounterDelta]:
    tracker = tracker or CounterTracker()
    out = [tracker.update(float(i * 60), v) for i, v in enumerate(values_)]
    assert None not in out
    return [d for d in out if d is not None]


@given(values, steps)
def test_monotonic_series_sums_to_last_minus_first(start: float, increments: list[float]) -> None:
    series = [start]
    for inc in increments:
        series.append(series[-1] + inc)
    deltas = deltas_of(series)
    assert {d.flag for d in deltas[1:]} <= {"ok"}
    total = math.fsum(d.delta for d in deltas)
    assert math.isclose(total, series[-1] - series[0], rel_tol=1e-9, abs_tol=1e-6)


@given(st.lists(values, min_size=1, max_size=60))
def test_never_a_negative_delta(series: list[float]) -> None:
    assert all(d.delta >= 0.0 for d in deltas_of(series))


@given(values, steps, steps)
def test_reset_counts_the_post_reset_energy(start: float, before: list[float], after: list[float]) -> None:
    high = start + sum(before) + 1000.0
    post = [sum(after[: i + 1]) for i in range(len(after))]
    deltas = deltas_of([start, high, *post])
    reset_at = 2 if post[0] < 0.9 * high else None
    if reset_at is not None:
        assert deltas[reset_at].flag == "reset"
        total_after = math.fsum(d.delta for d in deltas[reset_at:])
        assert math.isclose(total_after, post[-1], rel_tol=1e-9, abs_tol=1e-6)


@given(values, st.lists(st.floats(min_value=0.9, max_value=1.1), min_size=1, max_size=60))
def test_jitter_never_adds_energy(base: float, noise: list[float]) -> None:
    """Dips within the jitter band below the highest value so far: the energy is the highest minus the first."""
    series = [base]
    for n in noise:
        series.append(max(series) * n)
    deltas = deltas_of(series)
    assert "reset" not in {d.flag for d in deltas}
    total = math.fsum(d.delta for d in deltas)
    assert math.isclose(total, max(series) - base, rel_tol=1e-9, abs_tol=1e-6)


# -- the batch method: exactly update(), reading after reading ----------------------------------

#: A reading's step: (seconds after the last, the value's change, what happens).
reading_steps = st.lists(
    st.tuples(
        st.one_of(st.floats(0, 120), st.floats(-60, 0), st.floats(900, 4000), st.just(0.0)),
        st.floats(0, 50),
        st.sampled_from("oooooorjJwnibx"),
    ),
    max_size=60,
)


def series_of(start: float, steps_: list[tuple[float, float, str]]) -> list[tuple[float, float]]:
    """Readings with resets (r), jitter (j, J: small and large dips), wraps (w), NaN and inf values
    (n, i), negative values (b), non-finite timestamps (x), out-of-order times and gaps."""
    t, v, out = 0.0, start, []
    specials = {"n": math.nan, "i": math.inf, "b": -1.0}
    for dt, add, event in steps_:
        t += dt
        v = add if event == "r" else v * 0.95 if event == "J" else v - 0.01 if event == "j" else v + add
        if event == "w":
            v = add % 100.0
        ts = math.nan if event == "x" else t
        out.append((ts, specials.get(event, v)))
    return out


@given(st.floats(0, 1e5), reading_steps, st.sampled_from([None, 1000.0]), st.integers(0, 60))
def test_batch_deltas_equal_update_reading_after_reading(
    start: float, steps_: list[tuple[float, float, str]], wrap_at: float | None, cut: int
) -> None:
    points = series_of(start, steps_)
    one, batch = CounterTracker(wrap_at=wrap_at), CounterTracker(wrap_at=wrap_at)
    expected = [d for d in feed(one, points) if d is not None]
    # Two calls (cut anywhere) give what one call and every single update gives.
    got = batch.deltas([t for t, _ in points[:cut]], [v for _, v in points[:cut]])
    got += batch.deltas([t for t, _ in points[cut:]], [v for _, v in points[cut:]])
    assert [tuple(d) for d in expected] == got
    assert one.state() == batch.state()


def test_batch_deltas_on_an_empty_series_change_nothing() -> None:
    tracker = CounterTracker()
    assert tracker.deltas([], []) == []
    assert tracker.state() == CounterTracker().state()
