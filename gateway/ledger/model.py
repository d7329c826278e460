"""The ledger's vocabulary: accounts, postings, transactions and their canonical bytes.

Amounts are integers of milli-credits (mcr: 1 credit = 1000 mcr); energy is integer mWh.
There is no float anywhere in a transaction, so its canonical bytes are the same on
every machine and in every language.

Sign convention (one rule, no debit/credit columns): a posting adds its amount to the
account's balance, and the postings of every transaction sum to zero.

- `member:<id>` holds a member's credit: positive means the member has credit to spend.
- Source accounts (`issuance:allowance`, `contributions`) go negative as they hand out credit.
- Spending accounts (`machine-time:<machine>`, `energy:<source>`, `commons`) go positive as
  credit is spent on them.
- `adjustments` is the other side of an operator's correction, either way.

So the balances of all accounts always sum to zero, and "credits in circulation" is minus
the sum of the source accounts.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

#: Version of the canonical document; bumped only if its fields ever change.
CANONICAL_VERSION = 1

Kind = Literal["charge", "allowance", "allowance_expiry", "contribution", "reversal", "adjustment"]
KINDS: tuple[Kind, ...] = ("charge", "allowance", "allowance_expiry", "contribution", "reversal", "adjustment")

#: Energy sources the ledger prices and records, in this order everywhere.
SOURCES = ("sun", "battery", "grid")

_ID = r"[a-z0-9][a-z0-9_.-]{0,62}"
_MONTH = r"\d{4}-(0[1-9]|1[0-2])"

#: Every account name the ledger accepts, with its role (see the module docstring).
ACCOUNT_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(rf"member:{_ID}"), "member"),
    (re.compile(r"issuance:allowance"), "source"),
    (re.compile(r"contributions"), "source"),
    (re.compile(r"commons"), "spending"),
    (re.compile(r"energy:(sun|battery|grid)"), "spending"),
    (re.compile(rf"machine-time:{_ID}"), "spending"),
    (re.compile(r"adjustments"), "adjustment"),
)

#: The idempotency key each kind of transaction carries.
KEY_PATTERNS: dict[str, re.Pattern[str]] = {
    "charge": re.compile(r"charge:\S{1,200}"),
    "allowance": re.compile(rf"allowance:{_ID}:{_MONTH}"),
    "allowance_expiry": re.compile(rf"allowance_expiry:{_ID}:{_MONTH}"),
    "contribution": re.compile(r"contribution:\d+"),
    "reversal": re.compile(r"reversal:\d+"),
    "adjustment": re.compile(r"adjustment:\S{1,200}"),
}

#: Amounts stay within what every JSON reader holds exactly (2^53 - 1).
MAX_AMOUNT = 2**53 - 1

ISSUANCE = "issuance:allowance"
CONTRIBUTIONS = "contributions"
COMMONS = "commons"
ADJUSTMENTS = "adjustments"
GENESIS = bytes(32)


class LedgerError(Exception):
    """A ledger call breaks a rule (unknown account, unbalanced postings, a second approval by the same hand)."""


def member_account(member: str) -> str:
    return f"member:{member}"


def machine_account(machine: str) -> str:
    return f"machine-time:{machine}"


def energy_account(source: str) -> str:
    return f"energy:{source}"


def account_kind(name: str) -> str | None:
    """The role of a valid account name (`member`, `source`, `spending`, `adjustment`); None if invalid."""
    for pattern, kind in ACCOUNT_PATTERNS:
        if pattern.fullmatch(name):
            return kind
    return None


@dataclass(frozen=True, slots=True)
class Posting:
    account: str
    amount: int  # mcr; adds to the account's balance


@dataclass(frozen=True, slots=True)
class Transaction:
    """One ledger transaction. Its `canonical()` bytes are what is hashed, chained and logged."""

    id: int
    ts_ms: int
    kind: Kind
    key: str
    memo: str
    policy: str  # hash of the pricing policy in force (see pricing.policy_hash)
    postings: tuple[Posting, ...]
    detail: Mapping[str, Any] = field(default_factory=dict)
    reverses: int | None = None

    def __post_init__(self) -> None:
        problems = transaction_problems(self)
        if problems:
            raise LedgerError(f"transaction {self.key!r}: " + "; ".join(problems))

    def document(self) -> dict[str, Any]:
        return {
            "v": CANONICAL_VERSION,
            "id": self.id,
            "ts_ms": self.ts_ms,
            "kind": self.kind,
            "key": self.key,
            "memo": self.memo,
            "policy": self.policy,
            "postings": [[p.account, p.amount] for p in self.postings],
            "detail": dict(self.detail),
            "reverses": self.reverses,
        }

    def canonical(self) -> bytes:
        return canonical_json(self.document())

    def amount_for(self, account: str) -> int:
        return sum(p.amount for p in self.postings if p.account == account)

    @staticmethod
    def from_canonical(data: bytes) -> Transaction:
        """The transaction of stored canonical bytes; LedgerError if they are not a valid one."""
        try:
            doc = json.loads(data.decode("utf-8"), parse_float=_no_float, parse_constant=_no_float)
            tx = Transaction(
                id=doc["id"],
                ts_ms=doc["ts_ms"],
                kind=doc["kind"],
                key=doc["key"],
                memo=doc["memo"],
                policy=doc["policy"],
                postings=tuple(Posting(a, n) for a, n in doc["postings"]),
                detail=doc["detail"],
                reverses=doc["reverses"],
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise LedgerError(f"not a ledger transaction: {exc}") from None
        # Parsed without floats, so the document needs no second walk looking for one.
        if doc.get("v") != CANONICAL_VERSION or _dumps(tx.document()) != data:
            raise LedgerError("the bytes are not in canonical form")
        return tx


def _no_float(text: str) -> Any:
    raise ValueError(f"a float ({text}) in a ledger document: money and energy are integers")


def transaction_problems(tx: Transaction) -> list[str]:
    """Every rule a transaction breaks on its own (balance, accounts, key, integers)."""
    problems: list[str] = []
    if tx.kind not in KINDS:
        problems.append(f"unknown kind {tx.kind!r}")
    elif not KEY_PATTERNS[tx.kind].fullmatch(tx.key):
        problems.append(f"key {tx.key!r} is not a {tx.kind} key")
    for p in tx.postings:
        if account_kind(p.account) is None:
            problems.append(f"unknown account {p.account!r}")
        if not _is_int(p.amount) or abs(p.amount) > MAX_AMOUNT:
            problems.append(f"amount {p.amount!r} of {p.account} is not an integer of mcr within ±2^53")
    accounts = [p.account for p in tx.postings]
    if len(set(accounts)) != len(accounts):
        problems.append("an account is posted twice")
    if not problems and sum(p.amount for p in tx.postings) != 0:
        problems.append(f"postings sum to {sum(p.amount for p in tx.postings)} mcr, not 0")
    if (tx.kind == "reversal") != (tx.reverses is not None):
        problems.append("a reversal, and only a reversal, names the transaction it reverses")
    if not _is_int(tx.id) or not _is_int(tx.ts_ms):
        problems.append("id and ts_ms are integers")
    return problems


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def canonical_json(doc: Any) -> bytes:
    """Deterministic JSON: sorted keys, no spaces, UTF-8, integers only (a float is refused).

    For documents of strings, integers, null, lists and objects with ASCII keys (all the
    ledger writes) this is the same as RFC 8785 (JSON Canonicalization Scheme), so an
    auditor can recompute it with any JCS library.
    """
    _refuse_floats(doc)
    return _dumps(doc)


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _refuse_floats(value: Any) -> None:
    if isinstance(value, float):
        raise LedgerError(f"a float ({value!r}) in a ledger document: money and energy are integers")
    if isinstance(value, dict):
        for item in value.values():
            _refuse_floats(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _refuse_floats(item)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def chain_next(prev_chain: bytes, canonical: bytes) -> bytes:
    """chain_hash = SHA-256(prev_chain_hash || SHA-256(canonical)); the first one follows 32 zero bytes."""
    return sha256(prev_chain + sha256(canonical))


def negated(postings: Sequence[Posting]) -> tuple[Posting, ...]:
    return tuple(Posting(p.account, -p.amount) for p in postings)
