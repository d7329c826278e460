"""The community credit ledger: double entry, integer milli-credits, append-only, hash-chained.

- `Ledger`: the store in the gateway's database file (charges, allowances, contributions,
  reversals, adjustments; balances and the access decision's `can_start_session`);
- `PricingPolicy`, `charge_for_session`, `policy_hash`: the pure money rules (`[pricing]`);
- `Transaction`, `Posting`, `Entry`: what it stores; `Transaction.canonical()` is a Merkle leaf;
- `check_ledger`: the invariants, checked from the stored bytes, each problem by transaction;
- `LedgerError`: what it refuses.

See README.md for accounts, signs, how a charge is computed and how corrections work.
"""

from gateway.ledger.checks import CheckReport, Problem, check_ledger
from gateway.ledger.model import (
    KINDS,
    SOURCES,
    LedgerError,
    Posting,
    Transaction,
    account_kind,
    canonical_json,
    chain_next,
    energy_account,
    machine_account,
    member_account,
)
from gateway.ledger.pricing import (
    ChargeBreakdown,
    PricingPolicy,
    allowance_due,
    charge_for_session,
    mcr,
    policy_hash,
)
from gateway.ledger.store import Contribution, Entry, Ledger

__all__ = [
    "KINDS",
    "SOURCES",
    "ChargeBreakdown",
    "CheckReport",
    "Contribution",
    "Entry",
    "Ledger",
    "LedgerError",
    "Posting",
    "PricingPolicy",
    "Problem",
    "Transaction",
    "account_kind",
    "allowance_due",
    "canonical_json",
    "chain_next",
    "charge_for_session",
    "check_ledger",
    "energy_account",
    "machine_account",
    "mcr",
    "member_account",
    "policy_hash",
]
