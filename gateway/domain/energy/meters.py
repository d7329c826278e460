"""Which device and metric feeds which energy channel, and the router that feeds them.

A channel is one term of the balance: `pv`, `import`, `export`, `charge`, `discharge`,
`site_load`, or `machine:<device>` for a machine's meter. Several devices of one role (two
PV inverters) add into one channel. The tables below are the whole device knowledge.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from gateway.counters import CounterTracker
from gateway.domain.energy.intervals import CounterSeries, PowerSeries, SeriesEnergy

#: role -> counter metric -> channel. A machine's channel is `machine:<device>`.
COUNTER_CHANNELS: dict[str, dict[str, str]] = {
    "pv": {"energy_wh": "pv"},
    "grid": {"energy_wh": "import", "energy_returned_wh": "export"},
    "battery": {"energy_charged_wh": "charge", "energy_discharged_wh": "discharge"},
    "site_load": {"energy_wh": "site_load"},
    "machine": {"energy_wh": "machine"},
}

#: role -> (channel while power_w > 0, channel while < 0 or None: dropped, e.g. an inverter's night draw).
#: Signs as in `gateway.quantities`: grid + import, battery + charging.
POWER_CHANNELS: dict[str, tuple[str, str | None]] = {
    "pv": ("pv", None),
    "grid": ("import", "export"),
    "battery": ("charge", "discharge"),
    "site_load": ("site_load", None),
    "machine": ("machine", None),
}

BALANCE_CHANNELS = ("pv", "discharge", "import", "charge", "export")

#: Rows are fed to the series in chunks of this many readings: fewer calls, little memory.
CHUNK = 4096


def channel_of(role: str, name: str, device: str) -> str:
    return f"machine:{device}" if name == "machine" else name


@dataclass(frozen=True, slots=True)
class SiteMeters:
    """The site's energy devices: role per device, each machine's meter, and which devices are power-only."""

    roles: Mapping[str, str]
    #: machine id -> meter device id.
    machines: Mapping[str, str] = field(default_factory=dict)
    #: Devices whose energy is integrated from `power_w` (they have no energy counters).
    power_only: frozenset[str] = frozenset()

    def routes(self) -> dict[tuple[str, str], str]:
        """(device, metric) -> series key, for the metrics that carry energy."""
        out: dict[tuple[str, str], str] = {}
        for device, role in sorted(self.roles.items()):
            if device in self.power_only and role in POWER_CHANNELS:
                out[(device, "power_w")] = f"{device}/power_w"
            elif device not in self.power_only:
                for metric in COUNTER_CHANNELS.get(role, {}):
                    out[(device, metric)] = f"{device}/{metric}"
        return out


def power_only_devices(roles: Mapping[str, str], metrics: Mapping[str, Iterable[str]]) -> frozenset[str]:
    """Devices with an energy role and no energy counter of their role, but a `power_w`.

    `metrics` is what the journal holds per device (its `series` table answers this at once).
    """
    out = set()
    for device, role in roles.items():
        seen = set(metrics.get(device, ()))
        if role in COUNTER_CHANNELS and not seen & set(COUNTER_CHANNELS[role]) and "power_w" in seen:
            out.add(device)
    return frozenset(out)


class Router:
    """Takes journal rows in time order, sends each energy reading to its series, in chunks."""

    def __init__(self, site: SiteMeters, *, interval_s: int = 60, max_gap_s: float = 900.0) -> None:
        self.site = site
        self.interval_s = interval_s
        self.routes = site.routes()
        self.counters: dict[str, CounterSeries] = {}
        self.powers: dict[str, PowerSeries] = {}
        for (_device, metric), key in self.routes.items():
            if metric == "power_w":
                self.powers[key] = PowerSeries(interval_s=interval_s, max_gap_s=max_gap_s)
            else:
                self.counters[key] = CounterSeries(tracker=CounterTracker(max_gap_s=max_gap_s), interval_s=interval_s)
        self._ts: dict[str, list[float]] = {key: [] for key in self.routes.values()}
        self._val: dict[str, list[float]] = {key: [] for key in self.routes.values()}
        self.max_ts = float("-inf")

    def feed_rows(self, rows: Iterable[tuple[float, str, str, float | None]]) -> None:
        """(ts, device, metric, value) rows; others (events, other metrics) pass by."""
        routes = self.routes
        tsb, valb = self._ts, self._val
        max_ts = self.max_ts
        for ts, device, metric, value in rows:
            key = routes.get((device, metric))
            if key is None or value is None:
                continue
            buf = tsb[key]
            buf.append(ts)
            valb[key].append(value)
            if ts > max_ts:
                max_ts = ts
            if len(buf) >= CHUNK:
                self._flush(key)
        self.max_ts = max_ts

    def feed_columns(self, columns: Mapping[str, tuple[Sequence[float], Sequence[float]]]) -> None:
        """Readings already split by series (key -> (timestamps, values), each in journal order).

        The same as `feed_rows` on the rows they came from, without a Python step per row to
        route it: what `commonwatt replay` reads from the journal.
        """
        max_ts = self.max_ts
        for key in sorted(columns):
            timestamps, values = columns[key]
            if not timestamps:
                continue
            self._flush(key)
            if key in self.counters:
                self.counters[key].feed(timestamps, values)
            else:
                self.powers[key].feed(timestamps, values)
            top = max(timestamps)
            if top != top:  # a NaN first would win max(); feed_rows never takes one
                top = max((t for t in timestamps if t == t), default=max_ts)
            if top > max_ts:
                max_ts = top
        self.max_ts = max_ts

    def feed_series(self, key: str, timestamps: list[float], values: list[float]) -> None:
        """One series' readings at once (what a bench or a per-series query has to hand)."""
        self._flush(key)
        if key in self.counters:
            self.counters[key].feed(timestamps, values)
        else:
            self.powers[key].feed(timestamps, values)
        if timestamps:
            self.max_ts = max(self.max_ts, timestamps[-1])

    def _flush(self, key: str) -> None:
        ts, val = self._ts[key], self._val[key]
        if not ts:
            return
        if key in self.counters:
            self.counters[key].feed(ts, val)
        else:
            self.powers[key].feed(ts, val)
        self._ts[key] = []
        self._val[key] = []

    def series(self) -> dict[str, SeriesEnergy]:
        """channel key per series -> its energy; power series give two (`/+` and `/-`)."""
        for key in list(self._ts):
            self._flush(key)
        out: dict[str, SeriesEnergy] = {}
        for key, counter in self.counters.items():
            out[key] = counter.result
        for key, power in self.powers.items():
            out[key + "/+"], out[key + "/-"] = power.results()
        return out

    def first_ts(self) -> float | None:
        """The earliest first reading of any series fed so far."""
        firsts = [s.first_ts for s in self.series().values() if s.first_ts is not None]
        return min(firsts) if firsts else None

    def reported_until(self) -> float | None:
        """The oldest of the series' newest readings: no later reading can change an interval
        that ends before it (a counter's next delta starts at its last reading). None: no
        series has any reading yet."""
        lasts = [s.last_ts for s in self.series().values() if s.last_ts is not None]
        return min(lasts) if lasts else None

    def forget(self, k: int) -> None:
        """Drop what the intervals before `k` hold (they are final); memory stays flat over a month."""
        for counter in self.counters.values():
            res = counter.result
            for d in (res.energy, res.flags):
                for old in [x for x in d if x < k]:
                    del d[old]
        for power in self.powers.values():
            power.forget(k)

    def channels(self, k0: int, k1: int, series: Mapping[str, SeriesEnergy] | None = None) -> Channels:
        """Every channel's energy and flags over intervals k0..k1-1 (a site-wide flush).

        `series`: the series' energy when it was computed elsewhere (`series()` of routers that
        were each fed a part of the series, in worker processes); by default this router's own.
        """
        series = self.series() if series is None else series
        chans = Channels(k0, k1)
        for (device, metric), key in sorted(self.routes.items()):
            role = self.site.roles[device]
            if metric == "power_w":
                pos, neg = POWER_CHANNELS[role]
                chans.add(channel_of(role, pos, device), series[key + "/+"])
                if neg is not None:
                    chans.add(channel_of(role, neg, device), series[key + "/-"])
            else:
                chans.add(channel_of(role, COUNTER_CHANNELS[role][metric], device), series[key])
            chans.unplaced[key] = series.get(key, series.get(key + "/+", SeriesEnergy(1))).unplaced_mwh
        return chans


class Channels:
    """Per channel, lists over intervals k0..k1-1 of energy (mWh) and flags."""

    def __init__(self, k0: int, k1: int) -> None:
        self.k0 = k0
        self.k1 = k1
        self.energy: dict[str, list[int]] = {}
        self.flags: dict[str, list[int]] = {}
        #: Per series: energy counted across gaps and not placed in any interval.
        self.unplaced: dict[str, int] = {}

    def add(self, channel: str, series: SeriesEnergy) -> None:
        energy, flags = series.as_lists(self.k0, self.k1)
        if channel not in self.energy:
            self.energy[channel], self.flags[channel] = energy, flags
            return
        e, f = self.energy[channel], self.flags[channel]
        self.energy[channel] = [a + b for a, b in zip(e, energy, strict=True)]
        self.flags[channel] = [a | b for a, b in zip(f, flags, strict=True)]

    def get(self, channel: str) -> tuple[list[int], list[int]] | None:
        if channel not in self.energy:
            return None
        return self.energy[channel], self.flags[channel]
