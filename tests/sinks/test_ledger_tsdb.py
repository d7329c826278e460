"""LedgerTsdbWriter against a real VictoriaMetrics, a real ledger and journal in one SQLite file.

The ledger's history here has every kind of transaction (allowances issued to every member
in one write, charges on three machines with the three energy sources and a minimum charge,
contributions posted at once and after a second operator's approval, allowance expiries, a
reversal, an adjustment), transactions sharing a millisecond, and readings between them in
the journal. What VictoriaMetrics holds is compared with sums computed here from the
ledger's own postings and balances, to the milli-credit.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.energy_store import EnergyStore, pseudonym
from gateway.journal import Journal
from gateway.ledger import Ledger, Posting, PricingPolicy, Transaction
from gateway.model import Reading
from gateway.sinks.ledger_tsdb import CONSUMER, LedgerTsdbWriter
from tests.services import VictoriaMetrics

SITE = "lab"
MEMBERS = ("ada", "bruno", "chloe")
POLICY = PricingPolicy.model_validate(
    {
        "machines": {"laser": {"busy_per_hour": "6", "idle_per_hour": "1.5"}},
        "default_rate": {"busy_per_hour": "2", "idle_per_hour": "0.5"},
        "energy": {"sun": "0.1", "battery": "0.2", "grid": "0.4"},
        "minimum_charge": "0.5",
        "allowance": {"amount": "20", "day": 1, "expire_after_months": 1},
        "contribution_approval_above": "50",
    }
)
#: Two hours ago, so that every point is in the past and one query window holds them all.
T0 = float(int(time.time()) - 7200)
#: Every series the writer writes.
LEDGER = "{__name__=~'commonwatt_ledger_.*'}"


class Clock:
    """The ledger's clock: `step` seconds per write; 0 puts transactions in one millisecond."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.step = 1.0

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "commonwatt.sqlite"


@pytest.fixture
def ledger(path: Path) -> Iterator[tuple[Ledger, Clock]]:
    clock = Clock(T0)
    with Ledger(path, POLICY, clock=clock) as store:
        yield store, clock


def writer(path: Path, vm: VictoriaMetrics, **kw: Any) -> LedgerTsdbWriter:
    return LedgerTsdbWriter(journal_path=path, site=SITE, url=vm.url, max_backoff_s=0.4, poll_s=0.1, **kw)


def readings(path: Path, n: int, at: float) -> int:
    """Rows that are not the ledger's, between its rows in the journal; the journal's last seq."""
    with Journal(path) as journal:
        return journal.append([Reading(at + i / 10, "grid", "power_w", float(i)) for i in range(n)])


def last_seq(path: Path) -> int:
    with Journal(path) as journal:
        return journal.last_seq()


def stored_cursor(path: Path) -> int:
    with Journal(path) as journal:
        return journal.cursor(CONSUMER)


# -- the ledger's history, in three parts ------------------------------------------------------------


def first_part(ledger: Ledger, clock: Clock, path: Path) -> None:
    """January's allowance, a charge on each machine, contributions (one waits for approval, one is rejected)."""
    clock.step = 0.0  # the allowance and the first charge in the same millisecond
    ledger.issue_allowances("2025-01", MEMBERS)
    mwh = {"sun": 500_000, "battery": 20_001, "grid": 123_456}
    ledger.charge_session("s1", "ada", "laser", busy_s=1800, idle_s=600, mwh_by_source=mwh)
    clock.step = 1.0
    readings(path, 50, clock.now)
    ledger.charge_session("s2", "bruno", "printer", busy_s=60, idle_s=0, mwh_by_source={"grid": 1_000})  # minimum
    ledger.charge_session("s3", "chloe", "cnc", busy_s=2700, idle_s=300, mwh_by_source={"sun": 800_000})
    ledger.grant_contribution("chloe", 12_500, "cleaning", "the workshop", by="elif")
    big = ledger.grant_contribution("ada", 150_000, "teaching", "a course", by="elif")
    ledger.approve_contribution(big.id, by="admin")
    refused = ledger.grant_contribution("bruno", 90_000, "teaching", "not given", by="elif")
    ledger.reject_contribution(refused.id, by="admin", reason="the course did not happen")
    readings(path, 30, clock.now)


def second_part(ledger: Ledger, clock: Clock) -> None:
    """February: January's unused allowance expires; a reversal, an adjustment, two charges in one ms."""
    ledger.issue_allowances("2025-02", MEMBERS)
    s2 = ledger.by_key("charge:s2")
    assert s2 is not None
    ledger.reverse(s2.id, by="admin", memo="the printer jammed")
    ledger.adjust("fix-1", [Posting("member:chloe", 1_500), Posting("adjustments", -1_500)], by="admin", memo="cnc bit")
    clock.step = 0.0
    ledger.charge_session("s4", "ada", "laser", busy_s=600, idle_s=60, mwh_by_source={"grid": 90_000})
    ledger.charge_session("s5", "ada", "printer", busy_s=3600, idle_s=0, mwh_by_source={"battery": 40_000})
    clock.step = 1.0


def third_part(ledger: Ledger, clock: Clock) -> None:
    ledger.charge_session("s6", "bruno", "laser", busy_s=120, idle_s=30, mwh_by_source={"sun": 7_000})
    ledger.charge_session("s7", "chloe", "printer", busy_s=7200, idle_s=0, mwh_by_source={"sun": 1, "grid": 3})


# -- what the ledger says -----------------------------------------------------------------------------


def all_transactions(ledger: Ledger) -> list[Transaction]:
    return ledger.transactions(0, 100_000)


def expected(ledger: Ledger, secret: bytes) -> dict[tuple[str, str], int]:
    """(VictoriaMetrics metric name, the series' labels) -> the sum its samples must have, from the ledger.

    Member amounts by kind, from the postings to each member's account; the community's from
    the balances of the other accounts (a spending account's balance is what was spent on it).
    """
    member_field = {
        "charge": ("charged_mcr", -1),
        "allowance": ("allowance_mcr", 1),
        "allowance_expiry": ("allowance_expired_mcr", -1),
        "contribution": ("contribution_mcr", 1),
        "reversal": ("reversal_mcr", 1),
        "adjustment": ("adjustment_mcr", 1),
    }
    sums: dict[tuple[str, str], int] = defaultdict(int)
    for tx in all_transactions(ledger):
        name, sign = member_field[tx.kind]
        for p in tx.postings:
            if p.account.startswith("member:"):
                who = pseudonym(secret, p.account.removeprefix("member:"))
                sums[(f"commonwatt_ledger_{name}", f"member={who}")] += sign * p.amount
    community: dict[tuple[str, str], int] = defaultdict(int)
    for account, balance in ledger.balances().items():
        if account.startswith("machine-time:"):
            community[("commonwatt_ledger_spent_mcr", f"machine={account.split(':')[1]}")] += balance
        elif account.startswith("energy:"):
            community[("commonwatt_ledger_spent_mcr", f"source={account.split(':')[1]}")] += balance
        elif account == "commons":
            community[("commonwatt_ledger_spent_mcr", "account=commons")] += balance
        elif account in ("issuance:allowance", "contributions"):
            community[("commonwatt_ledger_issued_mcr", f"account={account}")] -= balance
        elif account == "adjustments":
            community[("commonwatt_ledger_adjusted_mcr", "account=adjustments")] -= balance
    return {**sums, **community}


def member_balances(ledger: Ledger, secret: bytes) -> dict[str, int]:
    return {pseudonym(secret, m): ledger.running_balance(f"member:{m}") for m in MEMBERS}


def points_of(txs: list[Transaction]) -> int:
    """Fields a writer sends for these transactions: two per member posting, one per other posting."""
    return sum(2 if p.account.startswith("member:") else 1 for tx in txs for p in tx.postings)


# -- what VictoriaMetrics holds -----------------------------------------------------------------------


def searchable(vm: VictoriaMetrics, points: int, timeout: float = 15.0) -> None:
    """Wait until VictoriaMetrics finds `points` samples of the ledger's series, and no more.

    It makes a new series searchable up to about a second after it was written, flushed or not.
    """
    deadline = time.monotonic() + timeout
    while (found := vm.sample_count(LEDGER)) != points:
        assert found < points, f"{found} samples in VictoriaMetrics, {points} written: a point stored twice"
        assert time.monotonic() < deadline, f"{found} of {points} samples searchable after {timeout}s"
        time.sleep(0.2)


def exported(vm: VictoriaMetrics) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = vm.export(LEDGER)
    for series in found:
        ts = series["timestamps"]
        assert len(set(ts)) == len(ts), f"{series['metric']} has a millisecond twice"
    return found


def sums_in_vm(vm: VictoriaMetrics) -> dict[tuple[str, str], int]:
    """The same keys as `expected`, summed from VictoriaMetrics by `sum_over_time`, as the dashboards do."""
    at = f"{time.time() + 60:.3f}"
    queries = {
        "member": "sum by (__name__, member) (sum_over_time({__name__=~'commonwatt_ledger_(charged|allowance|allowance_expired|contribution|reversal|adjustment)_mcr', site='lab'}[1d]) keep_metric_names)",  # noqa: E501
        "machine": "sum by (__name__, machine) (sum_over_time(commonwatt_ledger_spent_mcr{site='lab', account='machine-time'}[1d]) keep_metric_names)",  # noqa: E501
        "source": "sum by (__name__, source) (sum_over_time(commonwatt_ledger_spent_mcr{site='lab', account='energy'}[1d]) keep_metric_names)",  # noqa: E501
        "account": "sum by (__name__, account) (sum_over_time({__name__=~'commonwatt_ledger_(issued|adjusted)_mcr|commonwatt_ledger_spent_mcr', site='lab', account=~'commons|issuance:allowance|contributions|adjustments'}[1d]) keep_metric_names)",  # noqa: E501
    }
    vm.flush()
    out: dict[tuple[str, str], int] = {}
    for label, expr in queries.items():
        body = json.loads(vm.get("/api/v1/query", query=expr, time=at))
        assert body["status"] == "success", body
        for r in body["data"]["result"]:
            value = float(r["value"][1])
            assert value == round(value), f"{r['metric']}: {value} is not a whole number of mcr"
            out[(r["metric"]["__name__"], f"{label}={r['metric'][label]}")] = round(value)
    return out


def balances_in_vm(vm: VictoriaMetrics) -> dict[str, int]:
    vm.flush()
    expr = "last_over_time(commonwatt_ledger_balance_mcr{site='lab', account='member'}[1d])"
    body = json.loads(vm.get("/api/v1/query", query=expr, time=f"{time.time() + 60:.3f}"))
    return {r["metric"]["member"]: round(float(r["value"][1])) for r in body["data"]["result"]}


def nonzero(sums: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    return {k: v for k, v in sums.items() if v}


# -- the tests ----------------------------------------------------------------------------------------


def test_values_in_victoriametrics_are_the_ledgers_sums(
    victoria: VictoriaMetrics, path: Path, ledger: tuple[Ledger, Clock]
) -> None:
    store, clock = ledger
    first_part(store, clock, path)
    second_part(store, clock)
    third_part(store, clock)
    last = readings(path, 20, clock.now)
    with writer(path, victoria) as w:
        assert w.wait_delivered(last, 15)
        health = w.health.as_json()
    with EnergyStore(path) as energy:
        secret = energy.secret()
    txs = all_transactions(store)
    searchable(victoria, points_of(txs))

    assert nonzero(sums_in_vm(victoria)) == nonzero(expected(store, secret))
    assert balances_in_vm(victoria) == member_balances(store, secret)
    assert health["points_written"] == points_of(txs)
    assert health["connected"] and health["lag"] == 0 and health["rejected"] == {}
    assert health["skipped"] == {"contribution.request": 3, "contribution.reject": 1}

    series = exported(victoria)
    # Every transaction has a millisecond of its own (those of one write are spread a ms apart),
    # in the order of the ledger, never before the transaction's own time.
    stamps = sorted({ts for s in series for ts in s["timestamps"]})
    with_postings = [tx for tx in txs if tx.postings]
    assert len(stamps) == len(with_postings) and len({tx.ts_ms for tx in with_postings}) < len(with_postings)
    assert all(ms >= tx.ts_ms for ms, tx in zip(stamps, with_postings, strict=True))
    # Member ids never leave the gateway: only pseudonyms, and the labels the writer documents.
    labels = {k for s in series for k in s["metric"]}
    assert labels <= {"__name__", "site", "account", "member", "kind", "machine", "source"}
    values = {v for s in series for v in s["metric"].values()}
    assert not values & set(MEMBERS)
    assert {v for s in series for k, v in s["metric"].items() if k == "member"} == set(member_balances(store, secret))


def test_balance_moves_by_the_members_amounts(
    victoria: VictoriaMetrics, path: Path, ledger: tuple[Ledger, Clock]
) -> None:
    store, clock = ledger
    first_part(store, clock, path)
    second_part(store, clock)
    with writer(path, victoria) as w:
        assert w.wait_delivered(last_seq(path), 15)
    searchable(victoria, points_of(all_transactions(store)))
    by_member: dict[str, dict[int, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for s in exported(victoria):
        labels = s["metric"]
        if labels.get("account") == "member":
            for ts, v in zip(s["timestamps"], s["values"], strict=True):
                by_member[labels["member"]][ts][labels["__name__"].removeprefix("commonwatt_ledger_")] = v
    sign = {"charged_mcr": -1, "allowance_expired_mcr": -1}
    assert len(by_member) == len(MEMBERS)
    for points in by_member.values():
        balance = 0.0
        for ts in sorted(points):
            fields = dict(points[ts])
            after = fields.pop("balance_mcr")
            (name, amount), *more = fields.items()  # one amount per member and transaction
            assert not more
            balance += sign.get(name, 1) * amount
            assert after == balance, (ts, fields)


def test_an_outage_and_restarts_lose_nothing_and_duplicate_nothing(
    victoria: VictoriaMetrics, path: Path, ledger: tuple[Ledger, Clock]
) -> None:
    store, clock = ledger
    with EnergyStore(path) as energy:
        secret = energy.secret()
    first_part(store, clock, path)
    with writer(path, victoria) as w:
        assert w.wait_delivered(last_seq(path), 15)
        before_outage = stored_cursor(path)
        assert before_outage == last_seq(path)
        victoria.stop()
        second_part(store, clock)  # posted while VictoriaMetrics is away
        readings(path, 10, clock.now)
        time.sleep(1.5)
        health = w.health.as_json()
        assert not health["connected"] and health["retries"] > 0 and health["lag"] > 0
        assert stored_cursor(path) == before_outage, "the cursor waits for the server"
        victoria.start()
        assert w.wait_delivered(last_seq(path), 20)
        assert w.health.connected
    delivered = len(all_transactions(store))
    searchable(victoria, points_of(all_transactions(store)))
    assert nonzero(sums_in_vm(victoria)) == nonzero(expected(store, secret))

    # A restart goes on from the cursor: only what came after is sent.
    third_part(store, clock)
    with writer(path, victoria) as w:
        assert w.wait_delivered(last_seq(path), 15)
        assert w.health.points_written == points_of(all_transactions(store)[delivered:])
    searchable(victoria, points_of(all_transactions(store)))
    totals = nonzero(expected(store, secret))
    assert nonzero(sums_in_vm(victoria)) == totals

    # A gateway killed between a write and the cursor update sends again what it had sent:
    # here, all of it. The same points at the same milliseconds: no sum changes.
    with Journal(path) as journal:
        journal.set_cursor(CONSUMER, 0, force=True)
    with writer(path, victoria) as w:
        assert w.wait_delivered(last_seq(path), 15)
        assert w.health.points_written == points_of(all_transactions(store))
    time.sleep(1.5)  # long enough for a second copy of any point to become searchable
    searchable(victoria, points_of(all_transactions(store)))
    assert nonzero(sums_in_vm(victoria)) == totals
    assert balances_in_vm(victoria) == member_balances(store, secret)


def test_a_writer_with_nothing_to_write_keeps_up_with_the_journal(
    victoria: VictoriaMetrics, path: Path, ledger: tuple[Ledger, Clock]
) -> None:
    store, clock = ledger
    store.issue_allowances("2025-01", MEMBERS)
    with writer(path, victoria) as w:
        assert w.wait_delivered(last_seq(path), 10)
        stored = stored_cursor(path)
        last = readings(path, 100, clock.now)
        w.notify()
        assert w.wait_delivered(last, 10), "readings only: delivered as soon as looked at"
        assert w.health.lag == 0 and w.health.points_written == points_of(all_transactions(store))
        # Not stored on every commit (that would compete with the ingest for the database) ...
        assert stored_cursor(path) == stored
    # ... and a restart only looks at the rows since the stored cursor again: nothing is sent twice.
    with writer(path, victoria) as w:
        assert w.wait_delivered(last, 10)
        assert w.health.points_written == 0


def written_points(txs: list[Transaction], skipped: set[int], secret: bytes) -> dict[tuple[str, int], int]:
    """(member pseudonym, ms) -> `balance_mcr`, for every member posting of the transactions not skipped.

    Milliseconds and balances count every transaction of the ledger, skipped or not: they are
    what a writer that could read them all would have written.
    """
    out: dict[tuple[str, int], int] = {}
    peak: int | None = None
    balances: dict[str, int] = defaultdict(int)
    for tx in txs:
        peak = tx.ts_ms - tx.id if peak is None else max(peak, tx.ts_ms - tx.id)
        for p in tx.postings:
            if p.account.startswith("member:"):
                balances[p.account] += p.amount
                if tx.id not in skipped:
                    out[(pseudonym(secret, p.account.removeprefix("member:")), tx.id + peak)] = balances[p.account]
    return out


def sums_of(txs: list[Transaction], secret: bytes) -> dict[tuple[str, str], int]:
    """The keys of `expected`, summed from the postings of these transactions only."""
    member_field = {"charge": -1, "allowance_expiry": -1}
    names = {
        "charge": "charged_mcr",
        "allowance": "allowance_mcr",
        "allowance_expiry": "allowance_expired_mcr",
        "contribution": "contribution_mcr",
        "reversal": "reversal_mcr",
        "adjustment": "adjustment_mcr",
    }
    sums: dict[tuple[str, str], int] = defaultdict(int)
    for tx in txs:
        for p in tx.postings:
            prefix, _, rest = p.account.partition(":")
            if prefix == "member":
                key = (f"commonwatt_ledger_{names[tx.kind]}", f"member={pseudonym(secret, rest)}")
                sums[key] += member_field.get(tx.kind, 1) * p.amount
            elif prefix == "machine-time":
                sums[("commonwatt_ledger_spent_mcr", f"machine={rest}")] += p.amount
            elif prefix == "energy":
                sums[("commonwatt_ledger_spent_mcr", f"source={rest}")] += p.amount
            elif p.account == "commons":
                sums[("commonwatt_ledger_spent_mcr", "account=commons")] += p.amount
            elif p.account == "adjustments":
                sums[("commonwatt_ledger_adjusted_mcr", "account=adjustments")] -= p.amount
            else:
                sums[("commonwatt_ledger_issued_mcr", f"account={p.account}")] -= p.amount
    return sums


def test_a_transaction_changed_by_hand_is_counted_and_skipped_and_the_others_arrive(
    victoria: VictoriaMetrics, path: Path, ledger: tuple[Ledger, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    store, clock = ledger
    with EnergyStore(path) as energy:
        secret = energy.secret()
    first_part(store, clock, path)
    second_part(store, clock)
    before = all_transactions(store)
    by_key = {tx.key: tx for tx in before}
    bad_charge = by_key["charge:s3"]  # chloe, who has transactions after it in the same batch and later
    bad_expiry = by_key["allowance_expiry:ada:2025-01"]  # the first of its second: it moves the later milliseconds
    # Chloe's again. With its row gone its time is unknown to any writer; the next transaction
    # is a second later, so the milliseconds after it are the same as with its row.
    gone = by_key["contribution:1"]
    assert bad_expiry.ts_ms - bad_expiry.id > max(tx.ts_ms - tx.id for tx in before if tx.id < bad_expiry.id)
    # What a forger with file access can do (as in tests/audit): bytes that are no transaction,
    # the bytes of another transaction, a transaction's row deleted (its postings left).
    conn = sqlite3.connect(path, isolation_level=None)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {name}")
    conn.execute(
        "UPDATE ledger_transactions SET canonical = ? WHERE id = ?",
        (bad_charge.canonical().replace(b'"charge:s3"', b'"charge:s3\xff"'), bad_charge.id),
    )
    conn.execute(
        "UPDATE ledger_transactions SET canonical = ? WHERE id = ?",
        (by_key["contribution:2"].canonical(), bad_expiry.id),
    )
    conn.execute("DELETE FROM ledger_transactions WHERE id = ?", (gone.id,))
    conn.close()
    skipped = {bad_charge.id, bad_expiry.id, gone.id}

    caplog.set_level(logging.WARNING, logger="gateway.sinks.ledger_tsdb")
    # Three ledger rows a batch: the skipped transactions sit in batches of their own and of others.
    with writer(path, victoria, batch_size=3) as w:
        assert w.wait_delivered(last_seq(path), 15)
        # The writer still runs: a transaction posted now arrives.
        store.charge_session("s6", "bruno", "laser", busy_s=120, idle_s=30, mwh_by_source={"sun": 7_000})
        w.notify()
        assert w.wait_delivered(last_seq(path), 15)
        health = w.health.as_json()
    assert health["rejected"] == {"unreadable_transaction": 2, "missing_transaction": 1}
    assert health["connected"] and health["last_error"] is None and health["lag"] == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for tx_id in skipped:
        assert sum(f"ledger transaction {tx_id} skipped" in m for m in warnings) == 1, warnings

    # A restart: the state before the next transaction comes from the ledger, skipped ones included.
    store.charge_session("s7", "chloe", "printer", busy_s=7200, idle_s=0, mwh_by_source={"sun": 1, "grid": 3})
    with writer(path, victoria) as w:
        assert w.wait_delivered(last_seq(path), 15)
        assert w.health.rejected == {}

    txs = [*before, *store.transactions(len(before), 100)]
    assert [tx.id for tx in txs] == list(range(1, len(before) + 3))
    written = [tx for tx in txs if tx.id not in skipped]
    searchable(victoria, points_of(written))
    assert nonzero(sums_in_vm(victoria)) == nonzero(sums_of(written, secret))
    # Every balance, and every millisecond, is the one a writer that could read every transaction writes.
    balances = {
        (s["metric"]["member"], ts): round(v)
        for s in exported(victoria)
        if s["metric"]["__name__"] == "commonwatt_ledger_balance_mcr"
        for ts, v in zip(s["timestamps"], s["values"], strict=True)
    }
    assert balances == written_points(txs, skipped, secret)
    assert balances_in_vm(victoria) == member_balances(store, secret)
