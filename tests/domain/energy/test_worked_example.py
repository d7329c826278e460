"""The hand-worked example of the README: a laser cutter in a 15-minute interval.

10:00-10:15 UTC on 2024-06-01 (interval_s 900). Meter readings at 10:00 and 10:15:

    PV produced        1000 Wh      grid import   700 Wh
    battery discharge   300 Wh      grid export   200 Wh      battery charge 0
    laser cutter meter  450 Wh      ada's session from 10:05 (600 of the 900 s)
    battery pool before: 600 Wh of sun, 300 Wh of grid

    consumption = 1000 + 300 + 700 - 0 - 200 = 1800 Wh

Flows: the export comes from the sun (200); the load takes the rest of the sun (800), the
battery (300) and the grid (700). Pool: 300 Wh leave it 600 : 300, so 200 of sun origin and
100 of grid origin; the pool keeps 400 + 200.

Laser cutter: 450 Wh, ada 600/900 of it = 300 Wh, unattributed 150 Wh. Base = 1800 - 450 = 1350 Wh.
"""

from __future__ import annotations

from gateway.domain.energy import BatteryPool, EnergySettings, Session, SiteMeters, replay

T0 = 1_717_236_000  # 2024-06-01 10:00:00 UTC, a multiple of 900
T1 = T0 + 900
SITE = SiteMeters(
    roles={"grid": "grid", "pv": "pv", "battery": "battery", "laser-meter": "machine"},
    machines={"laser": "laser-meter"},
)
READINGS = [
    ("grid", "energy_wh", 10_000.0, 10_700.0),
    ("grid", "energy_returned_wh", 5_000.0, 5_200.0),
    ("pv", "energy_wh", 20_000.0, 21_000.0),
    ("battery", "energy_charged_wh", 3_000.0, 3_000.0),
    ("battery", "energy_discharged_wh", 2_000.0, 2_300.0),
    ("laser-meter", "energy_wh", 100.0, 550.0),
]
SESSIONS = [Session("s1", "laser", "ada", T0 + 300, T0 + 3600)]


def run(convention: str):  # type: ignore[no-untyped-def]
    rows = [(float(T0), d, m, a) for d, m, a, _b in READINGS] + [(float(T1), d, m, b) for d, m, _a, b in READINGS]
    settings = EnergySettings(interval_s=900, convention=convention)  # type: ignore[arg-type]
    return replay(rows, SITE, SESSIONS, settings, pool=BatteryPool(sun=600_000, grid=300_000))


def by_kind(result) -> dict[str, tuple[int, ...]]:  # type: ignore[no-untyped-def]
    return {s[1]: s[5:10] for s in result.shares}


def test_balance_and_flows() -> None:
    result = run("priority")
    (b,) = result.balances
    assert (b.pv, b.discharge, b.imported, b.charge, b.exported) == (1_000_000, 300_000, 700_000, 0, 200_000)
    assert b.consumption == 1_800_000
    # sun->load, sun->battery, sun->grid, battery->load, battery->grid, grid->load, grid->battery
    assert b.flows == (800_000, 0, 200_000, 300_000, 0, 700_000, 0)
    assert b.unmatched == 0 and b.flags == 0
    assert (result.pool.sun, result.pool.grid) == (400_000, 200_000)


def test_priority() -> None:
    """Load mix: sun 800, battery 300 (200 sun + 100 grid origin), grid 700 Wh.

    The machines (450 of 1800 Wh, a quarter) take a quarter of each: 200, 50, 25, 175 Wh.
    ada takes 2/3 of that: 133 333.3, 33 333.3, 16 666.7, 116 666.7 mWh; floors sum to
    299 998, and the two largest remainders (.7, .7, the battery-grid and grid parts) get
    the two mWh left: 133 333 + 33 333 + 16 667 + 116 667 = 300 000. The unattributed
    account takes the rest of the machines' share; the base load the rest of the mix.
    """
    b = run("priority").balances[0]
    assert b.mix == (800_000, 200_000, 100_000, 700_000)
    shares = by_kind(run("priority"))
    assert shares["member"] == (300_000, 133_333, 33_333, 16_667, 116_667)
    assert shares["unattributed"] == (150_000, 66_667, 16_667, 8_333, 58_333)
    assert shares["base"] == (1_350_000, 600_000, 150_000, 75_000, 525_000)


def test_proportional() -> None:
    """Load mix pro rata of pv : discharge : import = 1000 : 300 : 700.

    1800 x 1000/2000 = 900 sun, 1800 x 300/2000 = 270 battery, 1800 x 700/2000 = 630 grid.
    Battery origin 600 : 300 of the 300 Wh discharged = 2 : 1: 180 sun, 90 grid.
    Machines a quarter: 225, 45, 22.5, 157.5; ada 2/3 of that: 150, 30, 15, 105 Wh.
    """
    result = run("proportional")
    assert result.balances[0].mix == (900_000, 180_000, 90_000, 630_000)
    shares = by_kind(result)
    assert shares["member"] == (300_000, 150_000, 30_000, 15_000, 105_000)
    assert shares["unattributed"] == (150_000, 75_000, 15_000, 7_500, 52_500)
    assert shares["base"] == (1_350_000, 675_000, 135_000, 67_500, 472_500)


def test_convention_recorded() -> None:
    assert run("priority").as_json()["convention"] == "priority"
    assert run("proportional").as_json()["convention"] == "proportional"
