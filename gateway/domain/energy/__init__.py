"""The site's energy: intervals, balance, flows, source mix and attribution. Pure, integer mWh.

Read README.md in this folder for the conventions and worked examples.
"""

from gateway.domain.energy.attribution import BatteryPool, Session, Share, sessions_from_rows
from gateway.domain.energy.balance import CONVENTIONS, FLOW_NAMES, Balance, Convention
from gateway.domain.energy.figures import Figures, Intensity, co2_mg, interval_figures, period_figures
from gateway.domain.energy.intervals import ESTIMATED, INTEGRATED, MISSING, OK, flag_names, worst
from gateway.domain.energy.meters import Router, SiteMeters, power_only_devices
from gateway.domain.energy.pipeline import EnergyResult, EnergySettings, compute, finish, replay

__all__ = [
    "CONVENTIONS",
    "ESTIMATED",
    "FLOW_NAMES",
    "INTEGRATED",
    "MISSING",
    "OK",
    "Balance",
    "BatteryPool",
    "Convention",
    "EnergyResult",
    "EnergySettings",
    "Figures",
    "Intensity",
    "Router",
    "Session",
    "Share",
    "SiteMeters",
    "co2_mg",
    "compute",
    "finish",
    "flag_names",
    "interval_figures",
    "period_figures",
    "power_only_devices",
    "replay",
    "sessions_from_rows",
    "worst",
]
