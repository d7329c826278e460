"""Transactions on their own: the rules they obey and their canonical bytes."""

from __future__ import annotations

import hashlib
import json

import pytest

from gateway.ledger import LedgerError, Posting, Transaction, canonical_json, chain_next


def tx(**changes: object) -> Transaction:
    fields: dict[str, object] = {
        "id": 1,
        "ts_ms": 1_700_000_000_000,
        "kind": "allowance",
        "key": "allowance:ann:2024-01",
        "memo": "allowance 2024-01 — été",
        "policy": "ab" * 32,
        "postings": (Posting("issuance:allowance", -1000), Posting("member:ann", 1000)),
    }
    fields.update(changes)
    return Transaction(**fields)  # type: ignore[arg-type]


def test_canonical_bytes_are_sorted_compact_utf8() -> None:
    data = tx().canonical()
    assert data.startswith(b'{"detail":{},"id":1,"key":"allowance:ann:2024-01","kind":"allowance",')
    assert b" " not in data.replace(b"allowance 2024-01 \xe2\x80\x94 \xc3\xa9t\xc3\xa9", b"")
    assert "été".encode() in data
    assert Transaction.from_canonical(data) == tx()


def test_canonical_refuses_floats_anywhere() -> None:
    with pytest.raises(LedgerError, match="float"):
        canonical_json({"a": [1, {"b": 0.5}]})
    with pytest.raises(LedgerError, match="float"):
        tx(detail={"kwh": 1.0}).canonical()


def test_non_canonical_bytes_are_refused() -> None:
    doc = json.loads(tx().canonical())
    with pytest.raises(LedgerError, match="canonical"):
        Transaction.from_canonical(json.dumps(doc).encode())  # with spaces
    with pytest.raises(LedgerError):
        Transaction.from_canonical(b"not json")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"postings": (Posting("member:ann", 1000), Posting("issuance:allowance", -999))}, "sum to 1"),
        ({"postings": (Posting("member:Ann!", 1), Posting("commons", -1))}, "unknown account"),
        ({"postings": (Posting("member:ann", 1), Posting("member:ann", -1))}, "twice"),
        ({"postings": (Posting("member:ann", 2**60), Posting("commons", -(2**60)))}, "2\\^53"),
        ({"postings": (Posting("member:ann", 1.0), Posting("commons", -1.0))}, "integer"),  # type: ignore[arg-type]
        ({"key": "charge:s1"}, "not a allowance key"),
        ({"kind": "gift"}, "unknown kind"),
        ({"reverses": 3}, "reversal"),
        ({"kind": "reversal", "key": "reversal:3"}, "reversal"),
    ],
)
def test_rules(changes: dict[str, object], message: str) -> None:
    with pytest.raises(LedgerError, match=message):
        tx(**changes)


def test_an_empty_transaction_is_balanced() -> None:
    assert tx(kind="allowance_expiry", key="allowance_expiry:ann:2024-01", postings=()).postings == ()


def test_chain() -> None:
    data = tx().canonical()
    first = chain_next(bytes(32), data)
    assert first == hashlib.sha256(bytes(32) + hashlib.sha256(data).digest()).digest()
    assert chain_next(first, data) != first
