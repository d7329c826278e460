"""Policies, clocks and ledgers for the ledger tests, on real SQLite files."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from gateway.ledger import PricingPolicy

POLICY = PricingPolicy.model_validate(
    {
        "machines": {"laser": {"busy_per_hour": "6", "idle_per_hour": "1.5"}},
        "energy": {"sun": "0.1", "battery": "0.2", "grid": "0.4"},
        "minimum_charge": "0.5",
        "allowance": {"amount": "20", "day": 1, "expire_after_months": 2},
        "contribution_approval_above": "50",
        "credit_limit": "5",
        "member_credit_limits": {"carol": "0"},
    }
)


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def ledger_events(db: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT device, text FROM records WHERE metric = 'event.ledger' ORDER BY seq").fetchall()
    assert all(r[0] == "ledger" for r in rows)
    return [json.loads(r[1]) for r in rows]
