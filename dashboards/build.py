"""commonwatt's Grafana dashboards, as code: `python dashboards/build.py` writes dashboards/json/*.json.

Four dashboards for a Prometheus-type data source pointing at VictoriaMetrics (PromQL and
MetricsQL), uid `commonwatt-vm` as `deploy/grafana/provisioning/datasources/victoriametrics.yaml`
provisions it:

- Site energy: the seven flows, PV, battery power and state of charge, grid import and
  export, self-consumption and self-sufficiency, today and this month;
- Machines: state timeline, sessions, utilization, energy per machine, unauthorized use;
- Members: energy by source and credits per member (pseudonyms, never names), the community's
  totals;
- Gateway health: ingest rate, rejected frames by reason, journal and sink lag, devices last seen.

The series they read (see dashboards/README.md): `commonwatt_<metric>` from the readings
(gateway/sinks/TSDB.md), `commonwatt_energy_*_mwh` from the energy intervals (one sample per
interval, at its start, in mWh: a window's energy is `sum_over_time`), `commonwatt_ledger_*_mcr`
from the credit ledger (gateway/sinks/ledger_tsdb.py: one sample per transaction, in milli-credits:
a window's amounts are `sum_over_time`, a balance `last_over_time`), `commonwatt_machine_*` from
`gateway/sinks/machinestate.py`, and the gateway's own /metrics scraped by VictoriaMetrics.

The JSON is committed; the test suite fails when it differs from what this file generates.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import bargauge, prometheus, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.builders.common import ReduceDataOptions, StackingConfig, VizLegendOptions
from grafana_foundation_sdk.builders.dashboard import (
    CustomVariable,
    Dashboard,
    QueryVariable,
    Row,
    ThresholdsConfig,
)
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.variants import Dataquery
from grafana_foundation_sdk.models.common import (
    BigValueColorMode,
    BigValueGraphMode,
    GraphDrawStyle,
    LegendDisplayMode,
    LegendPlacement,
    StackingMode,
    VisibilityMode,
)
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    DataTransformerConfig,
    Threshold,
    ThresholdsMode,
    ValueMap,
    ValueMapping,
    ValueMappingResult,
    VariableOption,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

OUT = Path(__file__).resolve().parent / "json"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="commonwatt-vm")
#: Every dashboard lives in this folder (file provisioning and `commonwatt grafana push`).
FOLDER_UID = "commonwatt"
FOLDER_TITLE = "commonwatt"
TAGS = ["commonwatt"]

#: The queries of one panel.
Targets = list[Builder[Dataquery]]

S = 'site="$site"'
BAL = f'{S}, kind="balance"'
#: mWh -> kWh.
KWH = "/ 1e6"
FLOWS = ("sun_load", "sun_battery", "sun_grid", "battery_load", "battery_grid", "grid_load", "grid_battery")
FLOW_NAMES = {
    "sun_load": "sun → load",
    "sun_battery": "sun → battery",
    "sun_grid": "sun → grid",
    "battery_load": "battery → load",
    "battery_grid": "battery → grid",
    "grid_load": "grid → load",
    "grid_battery": "grid → battery",
}
#: mcr -> credits, shown with three decimals (a milli-credit is the ledger's unit).
CREDITS = "/ 1e3"
CREDIT_UNIT = "suffix: credits"
CREDIT_DECIMALS = 3
#: A member's balance is the last transaction's `balance_mcr`; one this old or newer is looked for.
BALANCE_LOOKBACK = "1y"
SOURCES = {"sun": "sun", "battery_sun": "battery (sun)", "battery_grid": "battery (grid)", "grid": "grid"}
#: `commonwatt_machine_state_code` values (gateway/sinks/machinestate.py STATE_CODES).
MACHINE_STATES = {
    0: ("free", "green"),
    1: ("in use", "blue"),
    2: ("to check", "yellow"),
    3: ("blocked", "red"),
    4: ("disabled", "gray"),
}


# -- building blocks ------------------------------------------------------------------------------


def query(expr: str, legend: str = "", *, instant: bool = False, ref: str = "A") -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE)
    if legend:
        q = q.legend_format(legend)
    return q.instant() if instant else q.range()


def steps(*pairs: tuple[float | None, str]) -> ThresholdsConfig:
    return ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps([Threshold(v, c) for v, c in pairs])


NEUTRAL = steps((None, "blue"))


def window(expr: str, rng: str = "$__range") -> str:
    """Energy of a window from the per-interval mWh series, in kWh."""
    return f"sum(sum_over_time({expr}[{rng}])) {KWH}"


def stat_panel(
    title: str,
    description: str,
    expr: str,
    unit: str,
    *,
    thresholds: ThresholdsConfig = NEUTRAL,
    time_from: str | None = None,
    span: int = 4,
    decimals: int | None = 2,
) -> stat.Panel:
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(query(expr, instant=True))
        .unit(unit)
        .thresholds(thresholds)
        .color_mode(BigValueColorMode.VALUE)
        .graph_mode(BigValueGraphMode.NONE)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .height(4)
        .span(span)
    )
    if decimals is not None:
        panel = panel.decimals(decimals)
    return panel.time_from(time_from) if time_from else panel


def series_panel(
    title: str,
    description: str,
    targets: Targets,
    unit: str,
    *,
    bars: bool = False,
    stacked: bool = False,
    thresholds: ThresholdsConfig = NEUTRAL,
    interval: str | None = None,
    span: int = 12,
    height: int = 8,
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(targets)
        .unit(unit)
        .thresholds(thresholds)
        .draw_style(GraphDrawStyle.BARS if bars else GraphDrawStyle.LINE)
        .fill_opacity(80 if bars else 10)
        .stacking(StackingConfig().mode(StackingMode.NORMAL if stacked else StackingMode.NONE))
        .legend(
            VizLegendOptions().display_mode(LegendDisplayMode.LIST).placement(LegendPlacement.BOTTOM).show_legend(True)
        )
        .height(height)
        .span(span)
    )
    return panel.interval(interval) if interval else panel


def bar_panel(
    title: str, description: str, expr: str, legend: str, unit: str, *, span: int = 12, time_from: str | None = None
) -> bargauge.Panel:
    panel = (
        bargauge.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(query(expr, legend, instant=True))
        .unit(unit)
        .decimals(2)
        .thresholds(NEUTRAL)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .height(8)
        .span(span)
    )
    return panel.time_from(time_from) if time_from else panel


def site_variable(metric: str) -> QueryVariable:
    return (
        QueryVariable("site")
        .label("Site")
        .description("The site id from commonwatt.toml ([site] id).")
        .datasource(DATASOURCE)
        .query(f"label_values({metric}, site)")
        .refresh(VariableRefresh.ON_DASHBOARD_LOAD)
        .sort(VariableSort.ALPHABETICAL_ASC)
    )


def period_variable() -> CustomVariable:
    """How much energy one bar of the energy charts adds up: an hour, a day, a week, a month."""
    return (
        CustomVariable("period")
        .label("Energy per")
        .description("The length of one bar in the energy charts.")
        .values("1h,1d,7d,30d")
        .current(VariableOption(selected=True, text="1h", value="1h"))
    )


def dashboard(uid: str, title: str, description: str, variables: list[Any]) -> Dashboard:
    board = (
        Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .timezone("browser")
        .time("now/d", "now")
        .refresh("1m")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .editable()
    )
    for v in variables:
        board = board.with_variable(v)
    return board


# -- Site energy ----------------------------------------------------------------------------------


def totals_row(board: Dashboard, label: str, time_from: str) -> Dashboard:
    """PV, import, export, consumption and the two ratios over `time_from` (now/d, now/M)."""
    pv = f"commonwatt_energy_pv_mwh{{{BAL}}}"
    cons = f"commonwatt_energy_consumption_mwh{{{BAL}}}"
    board = board.with_row(Row(label))
    for title, desc, field in (
        ("PV energy", "Energy the panels produced.", "pv"),
        ("Grid import", "Energy taken from the grid.", "import"),
        ("Grid export", "Energy sent to the grid.", "export"),
        ("Consumption", "The site's consumption: PV + discharge + import − charge − export.", "consumption"),
    ):
        expr = window(f"commonwatt_energy_{field}_mwh{{{BAL}}}")
        board = board.with_panel(stat_panel(f"{title}, {label.lower()}", desc, expr, "kwatth", time_from=time_from))
    self_consumption = f"1 - sum(sum_over_time(commonwatt_energy_sun_grid_mwh{{{BAL}}}[$__range])) / sum(sum_over_time({pv}[$__range]))"  # noqa: E501
    self_sufficiency = f"1 - sum(sum_over_time(commonwatt_energy_mix_grid_mwh{{{BAL}}}[$__range])) / sum(sum_over_time({cons}[$__range]))"  # noqa: E501
    ratio = steps((None, "red"), (0.5, "yellow"), (0.8, "green"))
    board = board.with_panel(
        stat_panel(
            f"Self-consumption, {label.lower()}",
            "Share of the PV energy used on site (directly or through the battery) rather than exported.",
            self_consumption,
            "percentunit",
            thresholds=ratio,
            time_from=time_from,
        )
    )
    return board.with_panel(
        stat_panel(
            f"Self-sufficiency, {label.lower()}",
            "Share of the consumption that did not come from the grid (sun directly or the battery's sun share).",
            self_sufficiency,
            "percentunit",
            thresholds=ratio,
            time_from=time_from,
        )
    )


def site_energy() -> Dashboard:
    board = dashboard(
        "commonwatt-site-energy",
        "Site energy",
        "Where the site's energy came from and went: PV, battery, grid and the seven flows between them.",
        [site_variable("commonwatt_energy_pv_mwh"), period_variable()],
    )
    board = totals_row(board, "Today", "now/d")
    board = totals_row(board, "This month", "now/M")
    board = board.with_row(Row("Flows and power"))
    flows: Targets = [
        query(
            f"sum(sum_over_time(commonwatt_energy_{f}_mwh{{{BAL}}}[$__interval])) {KWH}", FLOW_NAMES[f], ref=chr(65 + i)
        )
        for i, f in enumerate(FLOWS)
    ]
    board = board.with_panel(
        series_panel(
            "Energy flows",
            "The seven flows, each bar one period (variable 'Energy per'): sun, battery and grid to the "
            "load, the battery and the grid.",
            flows,
            "kwatth",
            bars=True,
            stacked=True,
            interval="$period",
            span=24,
        )
    )
    power: Targets = [
        query(f'sum(commonwatt_power_w{{{S}, role="pv"}})', "PV", ref="A"),
        query(f'sum(commonwatt_power_w{{{S}, role="battery"}})', "battery (+ charging)", ref="B"),
        query(f'sum(commonwatt_power_w{{{S}, role="grid"}})', "grid (+ import)", ref="C"),
    ]
    board = board.with_panel(
        series_panel(
            "Power",
            "PV production, battery power (positive while charging) and grid power (positive while importing).",
            power,
            "watt",
        )
    )
    soc: Targets = [query(f'commonwatt_soc_pct{{{S}, role="battery"}}', "{{device}}")]
    board = board.with_panel(
        series_panel(
            "Battery state of charge",
            "The battery's state of charge as its monitor reports it.",
            soc,
            "percent",
            thresholds=steps((None, "red"), (20, "yellow"), (40, "green")),
        )
        .min(0)
        .max(100)
    )
    grid: Targets = [
        query(f"sum(sum_over_time(commonwatt_energy_import_mwh{{{BAL}}}[$__interval])) {KWH}", "import", ref="A"),
        query(f"-sum(sum_over_time(commonwatt_energy_export_mwh{{{BAL}}}[$__interval])) {KWH}", "export", ref="B"),
    ]
    board = board.with_panel(
        series_panel(
            "Grid import and export",
            "Energy bought from the grid (up) and sold to it (down), per period.",
            grid,
            "kwatth",
            bars=True,
            interval="$period",
        )
    )
    battery: Targets = [
        query(f"sum(sum_over_time(commonwatt_energy_charge_mwh{{{BAL}}}[$__interval])) {KWH}", "charge", ref="A"),
        query(
            f"-sum(sum_over_time(commonwatt_energy_discharge_mwh{{{BAL}}}[$__interval])) {KWH}", "discharge", ref="B"
        ),
    ]
    return board.with_panel(
        series_panel(
            "Battery charge and discharge",
            "Energy into the battery (up) and out of it (down), per period.",
            battery,
            "kwatth",
            bars=True,
            interval="$period",
        )
    )


# -- Machines -------------------------------------------------------------------------------------


def machines() -> Dashboard:
    board = dashboard(
        "commonwatt-machines",
        "Machines",
        "Each machine's state, sessions, utilization and energy, and use with nobody badged in.",
        [site_variable("commonwatt_machine_state_code")],
    )
    mapping: list[ValueMapping] = [
        ValueMap({str(code): ValueMappingResult(text=text, color=color, index=code)})
        for code, (text, color) in MACHINE_STATES.items()
    ]
    timeline = (
        statetimeline.Panel()
        .title("Machine state")
        .description("free, in use (a session is open), to check, blocked or disabled, as the floor sees it.")
        .datasource(DATASOURCE)
        .with_target(query(f"max by (machine) (commonwatt_machine_state_code{{{S}}})", "{{machine}}"))
        .mappings(mapping)
        .thresholds(NEUTRAL)
        .show_value(VisibilityMode.NEVER)
        .height(8)
        .span(24)
    )
    board = board.with_panel(timeline)
    board = board.with_panel(
        bar_panel(
            "Sessions",
            "Sessions opened on each machine in the dashboard's time range.",
            f"sum by (machine) (increase(commonwatt_machine_sessions_total{{{S}}}[$__range]))",
            "{{machine}}",
            "short",
            span=8,
        ).decimals(0)
    )
    board = board.with_panel(
        bar_panel(
            "Utilization",
            "Share of the time range each machine had a session open.",
            f"avg by (machine) (avg_over_time(commonwatt_machine_in_use{{{S}}}[$__range]))",
            "{{machine}}",
            "percentunit",
            span=8,
        )
    )
    board = board.with_panel(
        bar_panel(
            "Energy per machine",
            "Energy each machine's meter counted in the time range, badged in or not.",
            f'sum by (machine) (sum_over_time(commonwatt_energy_energy_mwh{{{S}, kind=~"member|unattributed"}}[$__range])) {KWH}',  # noqa: E501
            "{{machine}}",
            "kwatth",
            span=8,
        )
    )
    board = board.with_panel(
        bar_panel(
            "Unauthorized use",
            "Times a machine drew power with nobody badged in (alert unauthorized_use) in the time range.",
            f"sum by (machine) (increase(commonwatt_machine_unauthorized_total{{{S}}}[$__range]))",
            "{{machine}}",
            "short",
        ).decimals(0)
    )
    board = board.with_panel(
        bar_panel(
            "Energy with nobody badged in",
            "Energy a machine drew outside any session (standby, or unauthorized use) in the time range.",
            f'sum by (machine) (sum_over_time(commonwatt_energy_energy_mwh{{{S}, kind="unattributed"}}[$__range])) {KWH}',  # noqa: E501
            "{{machine}}",
            "kwatth",
        )
    )
    return board.with_panel(
        series_panel(
            "Machine power",
            "Power each machine's meter reports.",
            [query(f'commonwatt_power_w{{{S}, role="machine"}}', "{{device}}")],
            "watt",
            span=24,
        )
    )


# -- Members --------------------------------------------------------------------------------------


def member_variable() -> QueryVariable:
    return (
        QueryVariable("member")
        .label("Member")
        .description("Members by pseudonym: the gateway never writes names or ids to the time series.")
        .datasource(DATASOURCE)
        .query(f'label_values(commonwatt_energy_energy_mwh{{{S}, kind="member"}}, member)')
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(VariableOption(selected=True, text="All", value="$__all"))
    )


def members() -> Dashboard:
    board = dashboard(
        "commonwatt-members",
        "Members",
        "Energy by source and credits per member (pseudonyms), the community's totals.",
        [site_variable("commonwatt_energy_energy_mwh"), period_variable(), member_variable()],
    )
    member = f'{S}, kind="member"'
    board = board.with_row(Row("The community"))
    board = board.with_panel(
        stat_panel(
            "Members' energy",
            "Energy used in sessions by all members in the time range.",
            window(f"commonwatt_energy_energy_mwh{{{member}}}"),
            "kwatth",
            span=6,
        )
    )
    sun = f"sum(sum_over_time(commonwatt_energy_sun_mwh{{{member}}}[$__range])) + sum(sum_over_time(commonwatt_energy_battery_sun_mwh{{{member}}}[$__range]))"  # noqa: E501
    board = board.with_panel(
        stat_panel(
            "Members' solar share",
            "Share of the members' energy that came from the sun, directly or through the battery.",
            f"({sun}) / sum(sum_over_time(commonwatt_energy_energy_mwh{{{member}}}[$__range]))",
            "percentunit",
            thresholds=steps((None, "red"), (0.3, "yellow"), (0.6, "green")),
            span=6,
        )
    )
    board = board.with_panel(
        stat_panel(
            "Machines, nobody badged in",
            "Energy machines drew outside any session in the time range.",
            window(f'commonwatt_energy_energy_mwh{{{S}, kind="unattributed"}}'),
            "kwatth",
            span=6,
        )
    )
    board = board.with_panel(
        stat_panel(
            "Base load",
            "The site's consumption not metered at any machine (lights, network, fridge) in the time range.",
            window(f'commonwatt_energy_energy_mwh{{{S}, kind="base"}}'),
            "kwatth",
            span=6,
        )
    )
    board = board.with_row(Row("Per member"))
    sel = f'{member}, member=~"$member"'
    by_source: Targets = [
        query(
            f"sum by (member) (sum_over_time(commonwatt_energy_{src}_mwh{{{sel}}}[$__range])) {KWH}",
            name,
            instant=True,
            ref=chr(65 + i),
        ).format(PromQueryFormat.TABLE)
        for i, (src, name) in enumerate(SOURCES.items())
    ]
    energy_table = (
        table.Panel()
        .title("Energy by source per member")
        .description("Each member's energy in the time range, in kWh, by where it came from (sun, battery, grid).")
        .datasource(DATASOURCE)
        .targets(by_source)
        .unit("kwatth")
        .decimals(3)
        .thresholds(NEUTRAL)
        .with_transformation(DataTransformerConfig(id_val="merge", options={}))
        .height(8)
        .span(12)
    )
    board = board.with_panel(energy_table)
    board = board.with_panel(
        bar_panel(
            "Energy per member",
            "Each member's energy in the time range.",
            f"sum by (member) (sum_over_time(commonwatt_energy_energy_mwh{{{sel}}}[$__range])) {KWH}",
            "{{member}}",
            "kwatth",
        )
    )
    over_time: Targets = [
        query(f"sum(sum_over_time(commonwatt_energy_{src}_mwh{{{sel}}}[$__interval])) {KWH}", name, ref=chr(65 + i))
        for i, (src, name) in enumerate(SOURCES.items())
    ]
    board = board.with_panel(
        series_panel(
            "Selected members' energy by source",
            "The selected members' energy per period (variable 'Energy per'), by source.",
            over_time,
            "kwatth",
            bars=True,
            stacked=True,
            interval="$period",
            span=24,
        )
    )
    return credits_row(board)


def credit_window(expr: str, rng: str = "$__range") -> str:
    """Credits of a window from the per-transaction mcr series."""
    return f"sum(sum_over_time({expr}[{rng}])) {CREDITS}"


def balances(selector: str) -> str:
    """Each member's balance after their last transaction before the evaluation time, in mcr."""
    return f"last_over_time(commonwatt_ledger_balance_mcr{{{selector}}}[{BALANCE_LOOKBACK}])"


def credits_row(board: Dashboard) -> Dashboard:
    """The credit ledger (gateway/sinks/ledger_tsdb.py): the community's totals, then per member."""
    member = f'{S}, account="member"'
    sel = f'{member}, member=~"$member"'
    allowance = f'commonwatt_ledger_issued_mcr{{{S}, account="issuance:allowance", kind="allowance"}}'
    contributions = f'commonwatt_ledger_issued_mcr{{{S}, account="contributions"}}'
    board = board.with_row(Row("Credits"))
    for title, description, expr in (
        (
            "Credits charged",
            "Credits charged for sessions in the time range, all members: machine time, energy and "
            "minimum charges. A charge reversed later still counts here; the reversal refunds it.",
            credit_window(f"commonwatt_ledger_charged_mcr{{{member}}}"),
        ),
        (
            "Allowance issued",
            "Monthly allowance credited to members in the time range (before any of it expires).",
            credit_window(allowance),
        ),
        (
            "Contributions granted",
            "Credits granted to members for their contributions in the time range (teaching, cleaning, "
            "repairs ...); a reversed contribution is subtracted.",
            credit_window(contributions),
        ),
        (
            "Members' credit",
            "The sum of every member's balance at the end of the time range: credit the members hold, "
            "less what members with a negative balance owe.",
            f"sum({balances(member)}) {CREDITS}",
        ),
    ):
        board = board.with_panel(stat_panel(title, description, expr, CREDIT_UNIT, span=6, decimals=CREDIT_DECIMALS))
    board = board.with_panel(
        bar_panel(
            "Credits charged per member",
            "Credits charged to each member for sessions in the time range (members by pseudonym).",
            f"sum by (member) (sum_over_time(commonwatt_ledger_charged_mcr{{{sel}}}[$__range])) {CREDITS}",
            "{{member}}",
            CREDIT_UNIT,
        ).decimals(CREDIT_DECIMALS)
    )
    board = board.with_panel(
        bar_panel(
            "Balance per member",
            "Each member's balance at the end of the time range, after their last transaction (members by "
            "pseudonym). Negative: the member owes credits, down to their credit limit.",
            f"sum by (member) ({balances(sel)}) {CREDITS}",
            "{{member}}",
            CREDIT_UNIT,
        ).decimals(CREDIT_DECIMALS)
    )
    spent: Targets = [
        query(
            f'sum by (machine) (sum_over_time(commonwatt_ledger_spent_mcr{{{S}, account="machine-time"}}[$__interval])) {CREDITS}',  # noqa: E501
            "machine time, {{machine}}",
            ref="A",
        ),
        query(
            f'sum by (source) (sum_over_time(commonwatt_ledger_spent_mcr{{{S}, account="energy"}}[$__interval])) {CREDITS}',  # noqa: E501
            "energy, {{source}}",
            ref="B",
        ),
        query(
            f'sum(sum_over_time(commonwatt_ledger_spent_mcr{{{S}, account="commons"}}[$__interval])) {CREDITS}',
            "minimum charges (commons)",
            ref="C",
        ),
    ]
    board = board.with_panel(
        series_panel(
            "Credits spent by account",
            "What the members' credits paid for, per period (variable 'Energy per'): each machine's time, "
            "energy by source (sun, battery, grid), and what minimum charges added (the commons). "
            "A reversed charge counts negative.",
            spent,
            CREDIT_UNIT,
            bars=True,
            stacked=True,
            interval="$period",
        ).decimals(CREDIT_DECIMALS)
    )
    issued: Targets = [
        query(f"sum(sum_over_time({allowance}[$__interval])) {CREDITS}", "allowance", ref="A"),
        query(f"sum(sum_over_time({contributions}[$__interval])) {CREDITS}", "contributions", ref="B"),
    ]
    board = board.with_panel(
        series_panel(
            "Credits issued",
            "Credits the community handed out per period (variable 'Energy per'): the monthly allowance "
            "and contributions.",
            issued,
            CREDIT_UNIT,
            bars=True,
            stacked=True,
            interval="$period",
        ).decimals(CREDIT_DECIMALS)
    )
    return board.with_panel(
        bar_panel(
            "Credits spent by account, in total",
            "What the members' credits paid for in the time range: machine time per machine, energy by "
            "source, minimum charges (commons).",
            f"sum by (account, machine, source) (sum_over_time(commonwatt_ledger_spent_mcr{{{S}}}[$__range])) {CREDITS}",  # noqa: E501
            "{{account}} {{machine}}{{source}}",
            CREDIT_UNIT,
            span=24,
        ).decimals(CREDIT_DECIMALS)
    )


# -- Gateway health -------------------------------------------------------------------------------


def gateway_health() -> Dashboard:
    board = dashboard(
        "commonwatt-gateway-health",
        "Gateway health",
        "The gateway's own /metrics, scraped by VictoriaMetrics: ingest, rejections, lag, silent devices.",
        [site_variable("commonwatt_records_total")],
    )
    board = board.with_panel(
        series_panel(
            "Ingest rate",
            "Records (readings and badges) the gateway decoded per second, per source.",
            [query(f"sum by (source) (rate(commonwatt_records_total{{{S}}}[$__rate_interval]))", "{{source}}")],
            "reqps",
        )
    )
    board = board.with_panel(
        series_panel(
            "Rejected frames by reason",
            "Frames and messages dropped per minute: bad checksums, bad JSON, unknown topics, ... "
            "A steady rate points at a device or a wiring fault.",
            [
                query(
                    f"sum by (source, reason) (increase(commonwatt_rejected_total{{{S}}}[$__rate_interval]))",
                    "{{source}}: {{reason}}",
                )
            ],
            "short",
            bars=True,
            thresholds=steps((None, "green"), (1, "red")),
        )
    )
    board = board.with_panel(
        series_panel(
            "Journal backlog",
            "Records received but not yet committed to the journal. Stays near 0; a rising line means the disk is too slow.",  # noqa: E501
            [query(f"max(commonwatt_journal_pending{{{S}}})", "pending")],
            "short",
            thresholds=steps((None, "green"), (1000, "yellow"), (10000, "red")),
            span=8,
        )
    )
    board = board.with_panel(
        series_panel(
            "Sink lag",
            "Journal rows (or energy revisions) each sink has still to deliver. A growing lag means the "
            "time-series database is away: see the gateway's health for the last error.",
            [query(f"max by (sink) (commonwatt_sink_lag{{{S}}})", "{{sink}}")],
            "short",
            thresholds=steps((None, "green"), (1000, "yellow"), (100000, "red")),
            span=8,
        )
    )
    board = board.with_panel(
        series_panel(
            "Sources connected",
            "1 while a source (the MQTT connection, a serial port) is connected.",
            [query(f"max by (source) (commonwatt_source_connected{{{S}}})", "{{source}}")],
            "bool_on_off",
            span=8,
        )
        .min(0)
        .max(1)
    )
    seen = (
        bar_panel(
            "Devices last seen",
            "Seconds since each device's last record. Red after five minutes of silence.",
            f"time() - max by (device) (commonwatt_device_last_seen_seconds{{{S}}})",
            "{{device}}",
            "s",
            span=24,
        )
        .decimals(0)
        .thresholds(steps((None, "green"), (60, "yellow"), (300, "red")))
    )
    return board.with_panel(seen)


# -- output ---------------------------------------------------------------------------------------

DASHBOARDS: dict[str, Callable[[], Dashboard]] = {
    "site-energy": site_energy,
    "machines": machines,
    "members": members,
    "gateway-health": gateway_health,
}


def render(build: Callable[[], Dashboard]) -> str:
    """One dashboard as the JSON Grafana imports, panels numbered in order, keys sorted."""
    model = json.loads(json.dumps(build().build(), cls=JSONEncoder))
    for n, panel in enumerate(model.get("panels", []), start=1):
        panel["id"] = n
    return json.dumps(model, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def generate() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {f"{name}.json": render(build) for name, build in DASHBOARDS.items()}


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    files = generate()
    for stale in OUT.glob("*.json"):
        if stale.name not in files:
            stale.unlink()
    for name, text in files.items():
        (OUT / name).write_text(text, encoding="utf-8")
        print(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
