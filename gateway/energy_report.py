"""`commonwatt energy report`: a period's balance as a table, and a PNG chart of it.

Read from the energy interval tables. Members appear under their pseudonym (the one the
TSDB uses) unless the operator asks for names. The chart uses matplotlib (Agg backend, no
display needed): the flows per hour over the period, and each consumer's energy by source.

Quality: the period's word is the worst flag of any of its intervals (one interval without
a meter makes a month `missing`), so the report also counts the intervals by quality: each
interval once, under its own worst flag (`ok`, `estimated`, `integrated`, `missing`), as a
number and a percentage of the period's intervals in the tables ("0.3 % missing"). The
counts add up to the intervals. The community report (`gateway.statements`) and
/api/v1/energy/balance give the same counts.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from gateway.domain.energy import FLOW_NAMES, worst
from gateway.energy_store import EnergyStore, pseudonym

TERMS = ("pv", "discharge", "import", "charge", "export", "consumption")
SOURCES = ("sun", "battery_sun", "battery_grid", "grid")
LABELS = {
    "pv": "PV", "discharge": "battery discharge", "import": "grid import", "charge": "battery charge",
    "export": "grid export", "consumption": "consumption",
}  # fmt: skip
COLOURS = {"sun": "#f2b701", "battery_sun": "#7fb800", "battery_grid": "#3969ac", "grid": "#80807f"}
#: An interval's quality, from best to worst: the name of its worst flag (`worst`).
QUALITIES = ("ok", "estimated", "integrated", "missing")


def quality_counts(flags: Iterable[int]) -> dict[str, int]:
    """Intervals by quality, in `QUALITIES` order: each under its worst flag, so they add up to the intervals."""
    out = dict.fromkeys(QUALITIES, 0)
    for f in flags:
        out[worst(f)] += 1
    return out


def share_text(n: int, total: int) -> str | None:
    """`n` of `total` as a percentage with one decimal ("2.5"); None when `total` is 0.

    Never rounded to 0 or 100 when it is not: one interval missing in a month of minutes is
    "<0.1", not "0.0".
    """
    if total <= 0:
        return None
    text = f"{100 * n / total:.1f}"
    if n and text == "0.0":
        return "<0.1"
    if n < total and text == "100.0":
        return ">99.9"
    return text


def quality_summary(counts: Mapping[str, int]) -> str:
    """The qualities present, best first, as shares ("99.9 % ok, 0.1 % missing"); "no intervals" if none."""
    total = sum(counts.values())
    shares = [f"{share_text(n, total)} % {q}" for q, n in counts.items() if n]
    return ", ".join(shares) if shares else "no intervals"


@dataclass
class PeriodBalance:
    """Sums over a period's intervals, mWh; ratios from the sums."""

    intervals: int = 0
    terms: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TERMS, 0))
    flows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FLOW_NAMES, 0))
    mix: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SOURCES, 0))
    residual: int | None = None
    co2_mg: int = 0
    flags: int = 0
    #: Intervals by quality (see `quality_counts`).
    quality_counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(QUALITIES, 0))
    convention: str = ""

    def add(self, r: sqlite3.Row) -> None:
        self.intervals += 1
        for k in TERMS:
            self.terms[k] += int(r[k])
        for k in FLOW_NAMES:
            self.flows[k] += int(r[k])
        for k in SOURCES:
            self.mix[k] += int(r[f"mix_{k}"])
        if r["residual"] is not None:
            self.residual = (self.residual or 0) + int(r["residual"])
        self.co2_mg += int(r["co2_mg"])
        self.flags |= int(r["flags"])
        self.quality_counts[worst(int(r["flags"]))] += 1
        self.convention = str(r["convention"])

    @property
    def quality(self) -> str:
        """The worst quality of any interval."""
        return worst(self.flags)

    @property
    def self_consumption(self) -> float | None:
        pv = self.terms["pv"]
        return (pv - self.flows["sun_grid"]) / pv if pv > 0 else None

    @property
    def self_sufficiency(self) -> float | None:
        c = self.terms["consumption"]
        return (c - self.mix["grid"]) / c if c > 0 else None


def period_balance(rows: list[sqlite3.Row]) -> PeriodBalance:
    out = PeriodBalance()
    for r in rows:
        out.add(r)
    return out


def kwh(mwh: int) -> str:
    return f"{mwh / 1_000_000:,.3f}"


def pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.1%}"


def consumer_name(kind: str, machine: str, member: str, secret: bytes, names: bool) -> str:
    if kind == "base":
        return "base load"
    if kind == "unattributed":
        return f"{machine} (nobody badged in)"
    return f"{member if names else pseudonym(secret, member)} on {machine}"


def balance_table(p: PeriodBalance) -> Table:
    table = Table("", "kWh", title=f"{p.intervals} intervals, convention {p.convention}, quality {p.quality}")
    for k in TERMS:
        table.add_row(LABELS[k], kwh(p.terms[k]))
    for k in FLOW_NAMES:
        table.add_row(k.replace("_", " → "), kwh(p.flows[k]))
    for k in SOURCES:
        table.add_row(f"load from {k.replace('_', ' (')}{')' if '_' in k else ''}", kwh(p.mix[k]))
    table.add_row("residual (site meter − derived)", "—" if p.residual is None else kwh(p.residual))
    table.add_row("self-consumption", pct(p.self_consumption))
    table.add_row("self-sufficiency", pct(p.self_sufficiency))
    table.add_row("CO₂ of grid import (kg)", f"{p.co2_mg / 1_000_000:,.3f}")
    return table


def quality_table(p: PeriodBalance) -> Table:
    """The period's intervals by quality: how many, and what share of the period."""
    table = Table("quality", "intervals", "%", title="intervals by quality")
    for q, n in p.quality_counts.items():
        table.add_row(q, str(n), share_text(n, p.intervals) or "—")
    return table


def consumers_table(totals: list[tuple[object, ...]], secret: bytes, names: bool) -> Table:
    table = Table("consumer", "kWh", *(s.replace("_", " ") for s in SOURCES), title="who used it, from which source")
    for kind, machine, member, *values in totals:
        name = consumer_name(str(kind), str(machine), str(member), secret, names)
        table.add_row(name, *(kwh(int(str(v))) for v in values))
    return table


def print_report(console: Console, path: Path, since: float, until: float, *, names: bool = False) -> PeriodBalance:
    with EnergyStore(path) as store:
        rows = store.intervals(since, until)
        totals = store.consumer_totals(since, until)
        secret = store.secret()
    p = period_balance(rows)
    console.print(balance_table(p))
    console.print(quality_table(p))
    console.print(consumers_table(totals, secret, names))
    return p


def write_png(path: Path, out: Path, since: float, until: float, *, names: bool = False) -> None:
    """Two panels: the seven flows per hour (stacked), and each consumer's energy by source."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with EnergyStore(path) as store:
        rows = store.intervals(since, until)
        totals = store.consumer_totals(since, until)
        secret = store.secret()
    hours: dict[int, dict[str, int]] = {}
    for r in rows:
        h = hours.setdefault(int(r["start"]) // 3600 * 3600, dict.fromkeys(FLOW_NAMES, 0))
        for k in FLOW_NAMES:
            h[k] += int(r[k])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 8), constrained_layout=True)
    xs = [(t - since) / 3600 for t in sorted(hours)]
    top.stackplot(xs, *([hours[t][k] / 1e6 for t in sorted(hours)] for k in FLOW_NAMES), labels=list(FLOW_NAMES))
    top.set(title="energy flows per hour", xlabel="hours from the period's start", ylabel="kWh")
    top.legend(loc="upper left", fontsize="small")
    labels = [consumer_name(str(t[0]), str(t[1]), str(t[2]), secret, names) for t in totals]
    left = [0.0] * len(totals)
    for i, src in enumerate(SOURCES):
        widths = [int(str(t[4 + i])) / 1e6 for t in totals]
        bottom.barh(labels, widths, left=left, color=COLOURS[src], label=src.replace("_", " "))
        left = [a + b for a, b in zip(left, widths, strict=True)]
    bottom.set(title="energy by consumer and source", xlabel="kWh")
    bottom.legend(fontsize="small")
    fig.savefig(out, format="png", dpi=90)
    plt.close(fig)


def today_line(path: Path, now: float) -> str:
    """One line for the demo's live table: today's (UTC) balance so far."""
    day = now // 86_400 * 86_400
    try:
        with EnergyStore(path, readonly=True) as store:
            p = period_balance(store.intervals(day, now + 1))
    except sqlite3.Error:
        return "energy today: no intervals yet"
    t = p.terms
    return (
        f"energy today: consumption {kwh(t['consumption'])} kWh, PV {kwh(t['pv'])}, "
        f"battery +{kwh(t['charge'])}/−{kwh(t['discharge'])}, grid +{kwh(t['import'])}/−{kwh(t['export'])}, "
        f"self-sufficiency {pct(p.self_sufficiency)} (intervals {quality_summary(p.quality_counts)})"
    )
