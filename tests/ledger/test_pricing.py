"""The pure money rules: charges, rounding, the policy model and its hash, allowance expiry."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.ledger import LedgerError, Posting, PricingPolicy, allowance_due, charge_for_session, mcr, policy_hash
from gateway.ledger.pricing import MemberMove, add_months, round_div, round_mcr, unused_allowances

POLICY = PricingPolicy.model_validate(
    {
        "machines": {"laser": {"busy_per_hour": "6", "idle_per_hour": "1.5"}},
        "energy": {"sun": "0.1", "battery": "0.2", "grid": "0.4"},
        "minimum_charge": "0.5",
        "credit_limit": "5",
        "member_credit_limits": {"ann": "20"},
    }
)


def test_items_and_total() -> None:
    bill = charge_for_session(POLICY, "laser", 1800, 600, {"sun": 500_000, "grid": 123_456})
    assert (bill.time_busy, bill.time_idle) == (3000, 250)  # 0.5 h x 6 credits, 1/6 h x 1.5 credits
    assert bill.energy == {"sun": 50, "battery": 0, "grid": 49}  # 0.5 kWh x 0.1; 0.123456 kWh x 0.4 = 49.38
    assert bill.minimum == 0
    assert bill.total == 3349
    assert bill.postings("ann") == (
        Posting("member:ann", -3349),
        Posting("machine-time:laser", 3250),
        Posting("energy:sun", 50),
        Posting("energy:grid", 49),
    )
    assert sum(p.amount for p in bill.postings("ann")) == 0


def test_minimum_charge_tops_up_to_the_commons() -> None:
    bill = charge_for_session(POLICY, "laser", 10, 0, {"sun": 1000})
    assert bill.time_busy == 17 and bill.energy["sun"] == 0  # 16.67 -> 17; 0.1 mcr -> 0
    assert bill.minimum == 500 - 17 and bill.total == 500
    assert dict((p.account, p.amount) for p in bill.postings("bob"))["commons"] == 483


def test_unknown_machine_uses_the_default_rate() -> None:
    bill = charge_for_session(POLICY, "lathe", 3600, 3600, {})
    assert (bill.time_busy, bill.time_idle, bill.minimum) == (0, 0, 500)


def test_free_policy_posts_nothing() -> None:
    bill = charge_for_session(PricingPolicy(), "laser", 3600, 0, {"grid": 10**6})
    assert bill.total == 0 and bill.postings("ann") == ()


@pytest.mark.parametrize(("value", "expected"), [("0.5", 0), ("1.5", 2), ("2.5", 2), ("3.5", 4), ("2.4999", 2)])
def test_rounding_is_half_to_even(value: str, expected: int) -> None:
    from decimal import Decimal
    from fractions import Fraction

    assert round_mcr(Fraction(Decimal(value))) == expected


def test_energy_rounding_halves_to_even() -> None:
    policy = PricingPolicy.model_validate({"energy": {"sun": "0.5", "battery": "0.5", "grid": "0.5"}})
    # 1 mWh x 0.5 credit/kWh = 0.0005 mcr ... 1000 mWh = 0.5 mcr -> 0; 3000 mWh = 1.5 mcr -> 2
    assert charge_for_session(policy, "x", 0, 0, {"sun": 1000, "battery": 3000, "grid": 5000}).energy == {
        "sun": 0,
        "battery": 2,
        "grid": 2,
    }


@pytest.mark.parametrize(
    "mwh", [{"wind": 1}, {"sun": -1}, {"sun": 1.5}, {"sun": True}], ids=["source", "negative", "float", "bool"]
)
def test_bad_energy_inputs_are_refused(mwh: dict[str, object]) -> None:
    with pytest.raises(LedgerError):
        charge_for_session(POLICY, "laser", 0, 0, mwh)  # type: ignore[arg-type]


def test_durations_are_whole_seconds() -> None:
    with pytest.raises(LedgerError):
        charge_for_session(POLICY, "laser", 1.5, 0, {})  # type: ignore[arg-type]


def test_prices_are_decimal_strings_not_floats() -> None:
    with pytest.raises(ValidationError, match="string"):
        PricingPolicy.model_validate({"minimum_charge": 0.5})
    with pytest.raises(ValidationError, match="not an amount"):
        PricingPolicy.model_validate({"minimum_charge": "-1"})
    assert PricingPolicy.model_validate({"minimum_charge": 2}).minimum_charge == "2"


def test_the_sun_is_never_dearer() -> None:
    with pytest.raises(ValidationError, match="sun"):
        PricingPolicy.model_validate({"energy": {"sun": "0.3", "battery": "0.2", "grid": "0.4"}})


def test_policy_hash_is_stable_and_follows_every_change() -> None:
    assert policy_hash(POLICY) == policy_hash(PricingPolicy.model_validate(POLICY.model_dump()))
    changed = POLICY.model_copy(update={"minimum_charge": "0.6"})
    assert policy_hash(changed) != policy_hash(POLICY)
    assert len(policy_hash(POLICY)) == 64


def test_credit_limits() -> None:
    assert mcr("0.0005") == 0 and mcr("0.0015") == 2 and mcr("12.345") == 12345
    assert POLICY.credit_limit_mcr("bob") == 5000
    assert POLICY.credit_limit_mcr("ann") == 20000


def test_allowance_due_on_its_day() -> None:
    policy = PricingPolicy.model_validate({"allowance": {"amount": "10", "day": 5}})
    assert allowance_due(policy, date(2024, 3, 4)) is None
    assert allowance_due(policy, date(2024, 3, 5)) == "2024-03"
    assert allowance_due(policy, date(2024, 3, 31)) == "2024-03"
    assert allowance_due(PricingPolicy(), date(2024, 3, 31)) is None  # no allowance configured


def test_add_months() -> None:
    assert add_months("2024-01", -1) == "2023-12"
    assert add_months("2024-11", 3) == "2025-02"
    assert add_months("2024-05", 0) == "2024-05"


def test_spending_draws_on_the_oldest_allowance_first() -> None:
    moves = [MemberMove(100, "2024-01"), MemberMove(500), MemberMove(100, "2024-02"), MemberMove(-150)]
    assert unused_allowances(moves) == {"2024-02": 50}


def test_contributions_do_not_expire() -> None:
    moves = [MemberMove(100, "2024-01"), MemberMove(1000), MemberMove(-30)]
    assert unused_allowances(moves) == {"2024-01": 70}


def test_allowance_reversal_and_expiry_empty_their_month() -> None:
    assert unused_allowances([MemberMove(100, "2024-01"), MemberMove(-100, "2024-01")]) == {}
    assert unused_allowances([MemberMove(100, "2024-01"), MemberMove(-60), MemberMove(-40, "2024-01")]) == {}


@given(st.integers(-(10**30), 10**30), st.integers(1, 10**12))
def test_integer_rounding_is_the_fraction_rule(num: int, den: int) -> None:
    assert round_div(num, den) == round_mcr(Fraction(num, den))


_price = st.decimals(min_value=0, max_value=999, places=6, allow_nan=False, allow_infinity=False).map(str)


@given(
    busy=_price,
    idle=_price,
    energy=st.lists(_price, min_size=3, max_size=3).map(lambda xs: sorted(xs, key=Decimal)),
    minimum=_price,
    busy_s=st.integers(0, 10**7),
    idle_s=st.integers(0, 10**7),
    mwh=st.lists(st.integers(0, 10**9), min_size=3, max_size=3),
)
def test_charges_equal_the_exact_fraction_computation(
    busy: str, idle: str, energy: list[str], minimum: str, busy_s: int, idle_s: int, mwh: list[int]
) -> None:
    """The integer arithmetic of `charge_for_session` gives what exact fractions give, item by item."""
    policy = PricingPolicy.model_validate(
        {
            "machines": {"laser": {"busy_per_hour": busy, "idle_per_hour": idle}},
            "energy": dict(zip(("sun", "battery", "grid"), energy, strict=True)),
            "minimum_charge": minimum,
        }
    )
    by_source = dict(zip(("sun", "battery", "grid"), mwh, strict=True))
    bill = charge_for_session(policy, "laser", busy_s, idle_s, by_source)
    per_s = Fraction(1000, 3600)
    assert bill.time_busy == round(busy_s * Fraction(Decimal(busy)) * per_s)
    assert bill.time_idle == round(idle_s * Fraction(Decimal(idle)) * per_s)
    for source, price in zip(("sun", "battery", "grid"), energy, strict=True):
        assert bill.energy[source] == round(by_source[source] * Fraction(Decimal(price)) / 1000)
    items = bill.time_busy + bill.time_idle + sum(bill.energy.values())
    assert bill.minimum == max(0, round(Fraction(Decimal(minimum)) * 1000) - items)
