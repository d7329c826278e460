"""Random sites, counters with resets and gaps, random sessions: every sum exact to the mWh."""

from __future__ import annotations

import json
from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.energy import (
    BatteryPool,
    EnergyResult,
    EnergySettings,
    Intensity,
    Session,
    SiteMeters,
    period_figures,
    replay,
    sessions_from_rows,
)

T0 = 1_717_200_000
COUNTERS = [
    ("grid", "energy_wh"),
    ("grid", "energy_returned_wh"),
    ("pv", "energy_wh"),
    ("battery", "energy_charged_wh"),
    ("battery", "energy_discharged_wh"),
    ("site", "energy_wh"),
]


@st.composite
def sites(draw: st.DrawFn) -> tuple[list[tuple[float, str, str, float]], SiteMeters, list[Session], EnergySettings]:
    machines = [f"m{i}" for i in range(draw(st.integers(0, 3)))]
    series = COUNTERS + [(f"meter-{m}", "energy_wh") for m in machines]
    rows: list[tuple[float, str, str, float]] = []
    for device, metric in series:
        t, v = T0 + draw(st.floats(0, 100)), draw(st.floats(0, 1e5))
        for dt, add, event in draw(
            st.lists(
                st.tuples(st.floats(1, 700), st.floats(0, 200), st.sampled_from("oooooooorjg")),
                max_size=25,
            )
        ):
            t += dt + (1200 if event == "g" else 0)
            v = add if event == "r" else v - 0.01 if event == "j" else v + add
            rows.append((round(t, 3), device, metric, round(v, 3)))
    rows.sort(key=lambda r: r[0])
    sessions = []
    for i in range(draw(st.integers(0, 5))):
        if machines:
            start = T0 + draw(st.floats(0, 8000))
            end = draw(st.one_of(st.none(), st.floats(1, 4000).map(lambda d, s=start: s + d)))
            sessions.append(Session(f"s{i}", draw(st.sampled_from(machines)), f"member{i % 3}", start, end))
    roles = {"grid": "grid", "pv": "pv", "battery": "battery", "site": "site_load"}
    roles |= {f"meter-{m}": "machine" for m in machines}
    site = SiteMeters(roles=roles, machines={m: f"meter-{m}" for m in machines})
    step = draw(st.sampled_from([60, 900, 1800]))
    convention = draw(st.sampled_from(["proportional", "priority"]))
    return rows, site, sessions, EnergySettings(interval_s=step, max_gap_s=900, convention=convention)


def check(result: EnergyResult) -> None:
    shares = defaultdict(list)
    for s in result.shares:
        shares[s[0]].append(s)
    for b in result.balances:
        s2l, s2b, s2g, b2l, b2g, g2l, g2b = b.flows
        assert min(b.flows) >= 0
        assert s2l + s2b + s2g <= b.pv and b2l + b2g <= b.discharge and g2l + g2b <= b.imported
        assert s2b + g2b <= b.charge and s2g + b2g <= b.exported
        if b.unmatched == 0:
            assert (s2l + s2b + s2g, b2l + b2g, g2l + g2b) == (b.pv, b.discharge, b.imported)
            assert (s2b + g2b, s2g + b2g, s2l + b2l + g2l) == (b.charge, b.exported, b.consumption)
        assert b.consumption == b.pv + b.discharge + b.imported - b.charge - b.exported
        assert sum(b.flows) + b.unmatched == b.charge + b.exported + max(b.consumption, 0)
        assert b.unmatched >= 0
        assert sum(b.mix) == b.consumption
        rows = shares[b.start]
        assert sum(s[5] for s in rows) == b.consumption
        for s in rows:
            assert sum(s[6:10]) == s[5]
        for j in range(4):
            assert sum(s[6 + j] for s in rows) == b.mix[j]
        if b.site_load is not None:
            assert b.residual == b.site_load - b.consumption
    assert result.pool.sun >= 0 and result.pool.grid >= 0


@settings(max_examples=120, deadline=None)
@given(sites())
def test_conservation_in_every_interval(site: tuple) -> None:  # type: ignore[type-arg]
    rows, meters, sessions, cfg = site
    check(replay(rows, meters, sessions, cfg))


@settings(max_examples=40, deadline=None)
@given(sites())
def test_machines_split_by_sessions_sum_to_their_meter(site: tuple) -> None:  # type: ignore[type-arg]
    rows, meters, sessions, cfg = site
    result = replay(rows, meters, sessions, cfg)
    per_machine: dict[tuple[int, str], int] = defaultdict(int)
    for s in result.shares:
        if s[2] is not None:
            per_machine[(s[0], s[2])] += s[5]
    from gateway.domain.energy.meters import Router

    router = Router(meters, interval_s=cfg.interval_s, max_gap_s=cfg.max_gap_s)
    router.feed_rows(rows)
    if not result.balances:
        return
    chans = router.channels(result.balances[0].start // cfg.interval_s, result.balances[-1].start // cfg.interval_s + 1)
    for machine, device in meters.machines.items():
        energy, _flags = chans.get(f"machine:{device}") or ([], [])
        for i, e in enumerate(energy):
            assert per_machine.get((chans.k0 * cfg.interval_s + i * cfg.interval_s, machine), 0) == e


@settings(max_examples=30, deadline=None)
@given(sites())
def test_same_inputs_give_the_same_bytes(site: tuple) -> None:  # type: ignore[type-arg]
    rows, meters, sessions, cfg = site
    first = replay(list(rows), meters, list(sessions), cfg).dumps()
    again = replay(list(rows), meters, list(reversed(sessions)), cfg).dumps()
    assert first == again


def test_period_figures_are_sums_then_ratios() -> None:
    rows = [
        (float(T0), "pv", "energy_wh", 0.0),
        (float(T0), "grid", "energy_wh", 0.0),
        (T0 + 60.0, "pv", "energy_wh", 1.0),
        (T0 + 60.0, "grid", "energy_wh", 0.0),
        (T0 + 120.0, "pv", "energy_wh", 1.0),
        (T0 + 120.0, "grid", "energy_wh", 3.0),
    ]
    meters = SiteMeters(roles={"pv": "pv", "grid": "grid"})
    result = replay(rows, meters, [], EnergySettings(convention="priority"))
    fig = period_figures(result.balances, Intensity(constant=250.0))
    # 1 Wh of sun, 3 Wh of grid: self-sufficiency 1/4 (not the mean of 1 and 0), CO2 3 Wh x 250 g/kWh = 750 mg.
    assert fig.self_sufficiency == 0.25 and fig.self_consumption == 1.0
    assert fig.co2_mg == 750


def test_sessions_from_journal_rows() -> None:
    opened = {"session_id": "a", "machine_id": "laser", "member_id": "ada", "start": 10.0, "ts": 10.0}
    closed = opened | {"end": 70.0, "ts": 70.0}
    other = {"session_id": "b", "machine_id": "mill", "member_id": "bob", "start": 20.0, "ts": 20.0}
    rows = [
        (1, 10.0, "floor", "event.session_opened", None, json.dumps(opened)),
        (2, 20.0, "floor", "event.session_opened", None, json.dumps(other)),
        (3, 70.0, "floor", "event.session_closed", None, json.dumps(closed)),
        (4, 71.0, "pv", "energy_wh", 1.0, None),
    ]
    assert sessions_from_rows(rows) == [
        Session("a", "laser", "ada", 10.0, 70.0),
        Session("b", "mill", "bob", 20.0, None),
    ]


def test_pool_is_carried_between_replays() -> None:
    pool = BatteryPool(sun=5, grid=5)
    assert pool.step(0, 0, 4) == (2, 2)
    assert (pool.sun, pool.grid) == (3, 3)
    assert pool.step(0, 0, 10) == (3, 7)
