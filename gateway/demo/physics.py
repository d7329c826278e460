"""The simulated lab itself: sun, machines, battery, grid. Pure and deterministic.

`SiteModel.step(dt)` advances every power and every counter by the same `dt`
seconds, from the same powers, so the site's energy balance closes exactly by
construction:

    grid import - grid export + pv + battery discharge - battery charge = machines + base load

Two clocks: counters integrate real seconds (so they agree with the powers and
their timestamps, as a real meter's do), while the sun and the battery's state of
charge run on a compressed "day" of `day_length_s` real seconds, so a ten-minute
demo shows a sunrise, a midday surplus charging the battery and a night running on
it. The battery's capacity is shrunk by the same factor, which is the same thing as
running its state of charge on the fast clock.

Given the same seed, the same commands at the same steps give the same numbers.
Inverter and charger losses are left out: they would be one more term in the
balance without teaching anything.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

DAY_S = 86_400.0
PHASES = 3


@dataclass(frozen=True, slots=True)
class MachineProfile:
    """How one machine draws power. Busy work alternates `high_w` and `low_w` (a laser tube
    firing and resting, a heater cycling) with a duty cycle over `period_s` real seconds."""

    name: str
    prefix: str  # the Shelly Plus Plug S it is plugged into
    phase: int  # 0, 1, 2 = L1, L2, L3
    standby_w: float  # relay on, nobody working
    high_w: float
    low_w: float
    duty: float
    period_s: float
    noise_w: float
    power_factor: float  # while busy; resistive standby loads are near 1


MACHINES: tuple[MachineProfile, ...] = (
    MachineProfile("laser", "shellyplusplugs-laser01", 0, 28.0, 1150.0, 180.0, 0.7, 12.0, 35.0, 0.93),
    MachineProfile("printer", "shellyplusplugs-printer01", 1, 6.5, 210.0, 70.0, 0.45, 20.0, 6.0, 0.99),
    MachineProfile("cnc", "shellyplusplugs-cnc01", 2, 45.0, 850.0, 300.0, 0.8, 30.0, 55.0, 0.88),
)

#: Autopilot (when nobody drives a machine): off -> busy -> idle -> off, each for an
#: exponentially distributed time with this mean, in real seconds.
AUTOPILOT: tuple[tuple[str, bool, bool, float], ...] = (
    ("off", False, False, 120.0),
    ("busy", True, True, 90.0),
    ("idle", True, False, 25.0),
)

#: Share of the base load (lights, network, fridge, ventilation) on each phase.
BASE_LOAD_SPLIT = (0.4, 0.3, 0.3)
#: The single-phase inverters: the OpenDTU micro-inverter on L1, the battery's on L2.
PV_PHASE = 0
BATTERY_PHASE = 1
#: Sunrise and sunset as fractions of the day (06:00, 20:00).
SUNRISE, SUNSET = 0.25, 20.0 / 24.0
#: Counter readings when the demo starts: devices that have been in service a while.
INITIAL_COUNTERS = {
    "laser": 15_872.341,
    "printer": 4_210.907,
    "cnc": 9_034.112,
    "pv": 1_843_217.0,
    "charged": 612_400.0,
    "discharged": 548_900.0,
}
INITIAL_GRID_IMPORT = (1_210_455.12, 980_331.07, 1_102_978.55)
INITIAL_GRID_EXPORT = (402_118.30, 1_203.44, 2_007.91)


@dataclass(frozen=True, slots=True)
class SiteSettings:
    day_length_s: float = 600.0
    start_hour: float = 7.0
    seed: int = 1
    pv_peak_w: float = 2400.0
    base_load_w: float = 320.0
    battery_capacity_wh: float = 10_000.0  # on the compressed clock, see the module doc
    battery_max_charge_w: float = 1200.0
    battery_max_discharge_w: float = 1500.0
    battery_min_soc: float = 10.0
    battery_initial_soc: float = 55.0
    autopilot: bool = True


@dataclass(slots=True)
class Machine:
    profile: MachineProfile
    relay: bool = False
    busy: bool = False
    power_w: float = 0.0
    energy_wh: float = 0.0
    autopilot: bool = True
    stage: int = 0
    stage_left_s: float = 0.0


@dataclass(frozen=True, slots=True)
class MachineSnapshot:
    name: str
    prefix: str
    phase: int
    relay: bool
    busy: bool
    power_w: float
    energy_wh: float
    power_factor: float


@dataclass(frozen=True, slots=True)
class SiteSnapshot:
    """The true state of the simulated site. Powers in W, counters in Wh.

    `battery_w` is + charging (Victron's convention), `grid_w` + importing.
    """

    elapsed_s: float
    time_of_day_s: float
    pv_w: float
    pv_dc_w: float
    irradiance: float  # 0..1 of the panels' peak, clouds included
    battery_w: float
    soc_pct: float
    base_load_w: float
    grid_w: float
    grid_phase_w: tuple[float, ...]
    voltage_v: tuple[float, ...]
    frequency_hz: float
    machines: tuple[MachineSnapshot, ...]
    pv_wh: float
    pv_today_wh: float
    charged_wh: float
    discharged_wh: float
    base_load_wh: float
    grid_import_wh: tuple[float, ...]
    grid_export_wh: tuple[float, ...]

    @property
    def load_w(self) -> float:
        return self.base_load_w + sum(m.power_w for m in self.machines)

    def machine(self, name: str) -> MachineSnapshot:
        return next(m for m in self.machines if m.name == name)


def clear_sky(day_fraction: float) -> float:
    """0..1: a bell from sunrise to sunset, flattened at noon like a real panel's day."""
    x = (day_fraction - SUNRISE) / (SUNSET - SUNRISE)
    if not 0.0 < x < 1.0:
        return 0.0
    bell: float = math.sin(math.pi * x) ** 1.5
    return bell


def battery_power(pv_w: float, load_w: float, soc: float, s: SiteSettings) -> float:
    """Self-consumption policy: PV surplus charges, a deficit discharges. Tapers at the ends."""
    surplus = pv_w - load_w
    if surplus >= 0:
        room = min(1.0, max(0.0, (100.0 - soc) / 5.0))
        return min(surplus, s.battery_max_charge_w * room)
    left = min(1.0, max(0.0, (soc - s.battery_min_soc) / 5.0))
    return -min(-surplus, s.battery_max_discharge_w * left)


@dataclass(slots=True)
class _Counters:
    pv_wh: float = INITIAL_COUNTERS["pv"]
    pv_today_wh: float = 0.0
    charged_wh: float = INITIAL_COUNTERS["charged"]
    discharged_wh: float = INITIAL_COUNTERS["discharged"]
    base_load_wh: float = 0.0
    grid_import_wh: list[float] = field(default_factory=lambda: list(INITIAL_GRID_IMPORT))
    grid_export_wh: list[float] = field(default_factory=lambda: list(INITIAL_GRID_EXPORT))


class SiteModel:
    """The site, stepped by the caller. Commands (`set_relay`, `set_busy`) apply at the next step."""

    def __init__(self, settings: SiteSettings | None = None) -> None:
        self.settings = s = settings or SiteSettings()
        self._rng = random.Random(s.seed)
        self.elapsed_s = 0.0
        self.soc = s.battery_initial_soc
        self.cloud = 0.0
        self.counters = _Counters()
        self.machines = {p.name: Machine(p, energy_wh=INITIAL_COUNTERS[p.name]) for p in MACHINES}
        for index, machine in enumerate(self.machines.values()):
            machine.autopilot = s.autopilot
            if s.autopilot:
                self._enter_stage(machine, index % len(AUTOPILOT))
        self._last = self._measure(0.0)

    # -- commands ---------------------------------------------------------------------------

    def set_relay(self, name: str, on: bool) -> None:
        """Switch a machine's relay; the machine leaves the autopilot. KeyError for an unknown name."""
        machine = self.machines[name]
        machine.autopilot = False
        machine.relay = on
        self._refresh(machine)

    def set_busy(self, name: str, busy: bool) -> None:
        """Someone starts or stops working at the machine (it draws power only while its relay is on)."""
        machine = self.machines[name]
        machine.autopilot = False
        machine.busy = busy
        self._refresh(machine)

    # -- time -------------------------------------------------------------------------------

    @property
    def time_of_day_s(self) -> float:
        speed = DAY_S / self.settings.day_length_s
        return (self.settings.start_hour * 3600.0 + self.elapsed_s * speed) % DAY_S

    def step(self, dt: float) -> SiteSnapshot:
        """Advance `dt` real seconds: integrate the powers of the last step, then measure anew."""
        self._integrate(self._last, dt)
        day_before = self.time_of_day_s
        self.elapsed_s += dt
        if self.time_of_day_s < day_before:
            self.counters.pv_today_wh = 0.0  # midnight: OpenDTU's yieldday starts over
        for machine in self.machines.values():
            self._autopilot(machine, dt)
        self._last = self._measure(dt)
        return self._last

    def snapshot(self) -> SiteSnapshot:
        return self._last

    # -- internals --------------------------------------------------------------------------

    def _integrate(self, now: SiteSnapshot, dt: float) -> None:
        hours = dt / 3600.0
        c = self.counters
        for machine in self.machines.values():
            machine.energy_wh += machine.power_w * hours
        c.base_load_wh += now.base_load_w * hours
        c.pv_wh += now.pv_w * hours
        c.pv_today_wh += now.pv_w * hours
        c.charged_wh += max(now.battery_w, 0.0) * hours
        c.discharged_wh += max(-now.battery_w, 0.0) * hours
        for phase, power in enumerate(now.grid_phase_w):
            c.grid_import_wh[phase] += max(power, 0.0) * hours
            c.grid_export_wh[phase] += max(-power, 0.0) * hours
        capacity = self.settings.battery_capacity_wh * self.settings.day_length_s / DAY_S
        self.soc = min(100.0, max(0.0, self.soc + now.battery_w * hours / capacity * 100.0))

    def _autopilot(self, machine: Machine, dt: float) -> None:
        if not machine.autopilot:
            return
        machine.stage_left_s -= dt
        if machine.stage_left_s <= 0:
            self._enter_stage(machine, (machine.stage + 1) % len(AUTOPILOT))

    def _enter_stage(self, machine: Machine, stage: int) -> None:
        _, relay, busy, mean_s = AUTOPILOT[stage]
        machine.stage, machine.relay, machine.busy = stage, relay, busy
        machine.stage_left_s = self._rng.expovariate(1.0 / mean_s)

    def _machine_power(self, machine: Machine) -> float:
        p = machine.profile
        if not machine.relay:
            return 0.0
        if not machine.busy:
            return p.standby_w
        firing = (self.elapsed_s % p.period_s) / p.period_s < p.duty
        return max(p.standby_w, (p.high_w if firing else p.low_w) + self._rng.gauss(0.0, p.noise_w))

    def _refresh(self, machine: Machine) -> None:
        """A command takes effect at once in what the meters see (energy still integrates per step)."""
        machine.power_w = self._machine_power(machine)
        last = self._last
        self._last = self._balance(last.pv_w, last.pv_dc_w, last.irradiance, last.voltage_v, last.frequency_hz)

    def _measure(self, dt: float) -> SiteSnapshot:
        self.cloud = min(1.0, max(0.0, self.cloud * (1 - 0.05 * dt) + self._rng.gauss(0.0, 0.12 * math.sqrt(dt))))
        irradiance = clear_sky(self.time_of_day_s / DAY_S) * (1.0 - 0.75 * self.cloud)
        pv_dc = self.settings.pv_peak_w / 0.96 * irradiance
        pv = pv_dc * 0.96 if pv_dc > 10.0 else 0.0  # below ~10 W the inverter does not start
        for machine in self.machines.values():
            machine.power_w = self._machine_power(machine)
        voltages = tuple(230.0 + self._rng.gauss(0.0, 0.8) for _ in range(PHASES))
        frequency = 50.0 + self._rng.gauss(0.0, 0.015)
        return self._balance(pv, pv_dc if pv else 0.0, irradiance, voltages, frequency)

    def _balance(
        self, pv: float, pv_dc: float, irradiance: float, voltages: tuple[float, ...], frequency: float
    ) -> SiteSnapshot:
        """Battery and grid follow from the sun and the loads."""
        s = self.settings
        machines = tuple(_machine_snapshot(m) for m in self.machines.values())
        load = s.base_load_w + sum(m.power_w for m in machines)
        battery = battery_power(pv, load, self.soc, s)
        phase_w = [s.base_load_w * share for share in BASE_LOAD_SPLIT]
        for m in machines:
            phase_w[m.phase] += m.power_w
        phase_w[PV_PHASE] -= pv
        phase_w[BATTERY_PHASE] += battery
        c = self.counters
        return SiteSnapshot(
            elapsed_s=self.elapsed_s,
            time_of_day_s=self.time_of_day_s,
            pv_w=pv,
            pv_dc_w=pv_dc,
            irradiance=irradiance,
            battery_w=battery,
            soc_pct=self.soc,
            base_load_w=s.base_load_w,
            grid_w=sum(phase_w),
            grid_phase_w=tuple(phase_w),
            voltage_v=voltages,
            frequency_hz=frequency,
            machines=machines,
            pv_wh=c.pv_wh,
            pv_today_wh=c.pv_today_wh,
            charged_wh=c.charged_wh,
            discharged_wh=c.discharged_wh,
            base_load_wh=c.base_load_wh,
            grid_import_wh=tuple(c.grid_import_wh),
            grid_export_wh=tuple(c.grid_export_wh),
        )


def _machine_snapshot(m: Machine) -> MachineSnapshot:
    pf = m.profile.power_factor if m.busy and m.relay else 0.98
    p = m.profile
    return MachineSnapshot(p.name, p.prefix, p.phase, m.relay, m.busy, m.power_w, m.energy_wh, pf)
