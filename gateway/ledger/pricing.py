"""The pricing policy (`[pricing]` in commonwatt.toml) and the pure money rules that use it.

Prices are written in credits as decimal strings ("0.25"), never TOML floats: a float
cannot hold 0.1 exactly, and money must come out the same on every machine. They are
parsed with `decimal.Decimal` and applied as exact fractions of integers.

Rounding: every item of a charge (busy time, idle time, the energy of each source) is
computed exactly and rounded once to a whole milli-credit, halves to even (0.5 mcr -> 0,
1.5 mcr -> 2, 2.5 mcr -> 2). Halves to even does not drift up or down over thousands of
sessions. The total is the sum of the rounded items, so a receipt always adds up.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from fractions import Fraction
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from gateway.ledger.model import (
    COMMONS,
    SOURCES,
    LedgerError,
    Posting,
    canonical_json,
    energy_account,
    machine_account,
    member_account,
)

MCR_PER_CREDIT = 1000
_DECIMAL = re.compile(r"\d{1,9}(\.\d{1,6})?")


def _credits(value: Any) -> str:
    if isinstance(value, bool | float):
        raise ValueError(f'write amounts of credits as a string, e.g. "{value}": a float is not exact')
    text = str(value).strip()
    if not _DECIMAL.fullmatch(text):
        raise ValueError(f"{value!r} is not an amount of credits (a non-negative decimal, up to 6 decimals)")
    return text


#: An amount or rate of credits, as a decimal string ("0.25"); TOML integers are accepted.
Credits = Annotated[str, BeforeValidator(_credits)]


@functools.lru_cache(maxsize=1024)
def mcr(credits: str) -> int:
    """Whole milli-credits of an amount of credits (halves to even below 1 mcr)."""
    return round_mcr(Fraction(Decimal(credits)) * MCR_PER_CREDIT)


def round_mcr(value: Fraction) -> int:
    """The one rounding rule of the ledger: to the nearest integer, halves to even."""
    return round(value)


def round_div(num: int, den: int) -> int:
    """`round_mcr(Fraction(num, den))` in integer arithmetic (den > 0): the same rule, faster.

    `audit verify` recomputes every charge of the ledger; fractions made that the slowest
    part of checking a million transactions.
    """
    q, r = divmod(num, den)  # num/den = q + r/den with 0 <= r/den < 1
    twice = 2 * r
    if twice > den or (twice == den and q % 2 == 1):
        q += 1
    return q


@functools.lru_cache(maxsize=1024)
def _ratio(credits: str) -> tuple[int, int]:
    """A price in credits as an exact integer ratio (numerator, denominator)."""
    return Decimal(credits).as_integer_ratio()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MachineRate(_Strict):
    #: Credits per hour while the machine works (above its idle threshold).
    busy_per_hour: Credits = "0"
    #: Credits per hour while a session holds the machine but it is idle.
    idle_per_hour: Credits = "0"


class EnergyPrices(_Strict):
    """Credits per kWh by source. The sun is never dearer than the battery or the grid."""

    sun: Credits = "0"
    battery: Credits = "0"
    grid: Credits = "0"

    @model_validator(mode="after")
    def _sun_cheapest(self) -> EnergyPrices:
        sun = Decimal(self.sun)
        if sun > Decimal(self.battery) or sun > Decimal(self.grid):
            raise ValueError("energy: the sun must not cost more than the battery or the grid")
        return self


class AllowanceSettings(_Strict):
    #: Credits every active member receives each month.
    amount: Credits = "0"
    #: Day of the month the allowance is issued (1-28, in the site's time zone).
    day: int = Field(1, ge=1, le=28)
    #: Unused allowance of a month expires when the allowance this many months later is issued;
    #: absent: allowances never expire.
    expire_after_months: int | None = Field(None, ge=1, le=120)


class PricingPolicy(_Strict):
    #: Time rates per machine id; machines not listed use `default_rate`.
    machines: dict[str, MachineRate] = Field(default_factory=dict)
    default_rate: MachineRate = Field(default_factory=MachineRate)
    energy: EnergyPrices = Field(default_factory=EnergyPrices)
    #: A session never costs less than this; the difference goes to the commons.
    minimum_charge: Credits = "0"
    allowance: AllowanceSettings = Field(default_factory=AllowanceSettings)
    #: A contribution above this many credits waits for a second operator's approval.
    contribution_approval_above: Credits = "100"
    #: How far below zero a member's balance may be and still start a session.
    credit_limit: Credits = "0"
    #: Per-member exceptions to `credit_limit`.
    member_credit_limits: dict[str, Credits] = Field(default_factory=dict)

    def rate(self, machine: str) -> MachineRate:
        return self.machines.get(machine, self.default_rate)

    def credit_limit_mcr(self, member: str) -> int:
        return mcr(self.member_credit_limits.get(member, self.credit_limit))


def policy_document(policy: PricingPolicy) -> dict[str, Any]:
    doc: dict[str, Any] = policy.model_dump(mode="json")
    return doc


def policy_bytes(policy: PricingPolicy) -> bytes:
    return canonical_json(policy_document(policy))


def policy_hash(policy: PricingPolicy) -> str:
    """SHA-256 (hex) of the policy's canonical JSON, recorded on every transaction made under it."""
    return hashlib.sha256(policy_bytes(policy)).hexdigest()


@dataclass(frozen=True, slots=True)
class ChargeBreakdown:
    """What one session costs, item by item, in mcr; `total` is the sum of the items."""

    machine: str
    busy_s: int
    idle_s: int
    mwh: Mapping[str, int]
    time_busy: int
    time_idle: int
    energy: Mapping[str, int]
    minimum: int  # what was added to reach the minimum charge (0 if the items reached it)

    @property
    def total(self) -> int:
        return self.time_busy + self.time_idle + sum(self.energy.values()) + self.minimum

    def postings(self, member: str) -> tuple[Posting, ...]:
        """Member pays the total; machine time, each energy source and the commons receive their items."""
        items = [
            (machine_account(self.machine), self.time_busy + self.time_idle),
            *((energy_account(s), self.energy[s]) for s in SOURCES),
            (COMMONS, self.minimum),
        ]
        out = [Posting(member_account(member), -self.total)] if self.total else []
        return tuple(out + [Posting(a, n) for a, n in items if n])

    def document(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "busy_s": self.busy_s,
            "idle_s": self.idle_s,
            "mwh": dict(self.mwh),
            "items_mcr": {
                "time_busy": self.time_busy,
                "time_idle": self.time_idle,
                "energy": dict(self.energy),
                "minimum": self.minimum,
            },
            "total_mcr": self.total,
        }


def charge_for_session(
    policy: PricingPolicy, machine: str, busy_s: int, idle_s: int, mwh_by_source: Mapping[str, int]
) -> ChargeBreakdown:
    """The charge of one session from its whole seconds and its attributed mWh per source. Pure."""
    _check_inputs(busy_s, idle_s, mwh_by_source)
    rate = policy.rate(machine)
    # credits/h x s: 1 h = 3600 s, 1 credit = 10^3 mcr.
    num, den = _ratio(rate.busy_per_hour)
    busy = round_div(busy_s * num * MCR_PER_CREDIT, den * 3600)
    num, den = _ratio(rate.idle_per_hour)
    idle = round_div(idle_s * num * MCR_PER_CREDIT, den * 3600)
    mwh = {s: mwh_by_source.get(s, 0) for s in SOURCES}
    # credits/kWh x mWh: 1 kWh = 10^6 mWh, 1 credit = 10^3 mcr.
    energy = {}
    for s in SOURCES:
        num, den = _ratio(getattr(policy.energy, s))
        energy[s] = round_div(mwh[s] * num, den * 1000)
    subtotal = busy + idle + sum(energy.values())
    minimum = max(0, mcr(policy.minimum_charge) - subtotal)
    return ChargeBreakdown(machine, busy_s, idle_s, mwh, busy, idle, energy, minimum)


def _check_inputs(busy_s: int, idle_s: int, mwh_by_source: Mapping[str, int]) -> None:
    for name, value in (("busy_s", busy_s), ("idle_s", idle_s), *mwh_by_source.items()):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise LedgerError(f"{name} = {value!r}: charges are computed from non-negative integers")
    unknown = set(mwh_by_source) - set(SOURCES)
    if unknown:
        raise LedgerError(f"unknown energy source(s) {sorted(unknown)}; known: {', '.join(SOURCES)}")


# -- allowances ------------------------------------------------------------------------------


def month_of(day: date) -> str:
    return f"{day.year:04d}-{day.month:02d}"


def add_months(month: str, n: int) -> str:
    year, mon = int(month[:4]), int(month[5:7])
    index = year * 12 + mon - 1 + n
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def allowance_due(policy: PricingPolicy, today: date) -> str | None:
    """The month whose allowance is due on `today` (its issue day or later); None before the day.

    The scheduler calls `Ledger.issue_allowances` with it as often as it likes: issuing is
    idempotent per member and month.
    """
    if mcr(policy.allowance.amount) == 0 or today.day < policy.allowance.day:
        return None
    return month_of(today)


@dataclass(frozen=True, slots=True)
class MemberMove:
    """One posting to a member's account, as the allowance expiry rule sees it."""

    amount: int
    allowance_month: str | None = None  # an allowance (or its reversal, or its expiry) of this month


def unused_allowances(moves: Sequence[MemberMove]) -> dict[str, int]:
    """Unused allowance per month, replaying a member's postings in order.

    The rule: spending draws on allowances first, oldest month first, then on the rest of
    the balance (contributions, refunds). So a member who contributes keeps that credit,
    and only allowance nobody used expires. A move with `allowance_month` and a positive
    amount is that month's allowance; negative, its reversal or expiry.
    """
    lots: dict[str, int] = {}
    for move in moves:
        if move.allowance_month is not None:
            month = move.allowance_month
            lots[month] = max(0, lots.get(month, 0) + move.amount)
        elif move.amount < 0:
            _spend(lots, -move.amount)
    return {m: n for m, n in sorted(lots.items()) if n}


def _spend(lots: dict[str, int], amount: int) -> None:
    for month in sorted(lots):
        take = min(amount, lots[month])
        lots[month] -= take
        amount -= take
        if not amount:
            return
