"""`LedgerTsdbWriter`: the credit ledger's transactions as time series, each written exactly once.

The ledger lives in the gateway's database file; Grafana's Members dashboard needs it in the
TSDB. This writer is a journal consumer with a cursor of its own (consumer `ledger_tsdb`):
every ledger transaction is journaled as an `event.ledger` row in the same SQLite
transaction that stores it (`{"action": "transaction", "what": {"id": ..., "kind": ...}}`,
see `gateway.ledger.store`). The row names the transaction, the ledger tables hold its
postings. The writer reads those rows after its cursor, loads the transactions they name,
and writes one line per posting, with the TSDB sink's retries, backoff and bisection
(`gateway.sinks.tsdb.TsdbSink`); the cursor moves only once the server has accepted them.

Measurement `commonwatt_ledger`, tags sorted by key, amounts in milli-credits (integers,
sent as floats like every commonwatt field: exact up to 2^53):

    commonwatt_ledger,account=member,member=3f9c0a1b2d,site=lab balance_mcr=16651.0,charged_mcr=3349.0 1732614745123
    commonwatt_ledger,account=machine-time,kind=charge,machine=laser,site=lab spent_mcr=3250.0 1732614745123
    commonwatt_ledger,account=energy,kind=charge,site=lab,source=sun spent_mcr=50.0 1732614745123

- a member's posting (`account=member`, `member` = the member's pseudonym, the same HMAC
  the energy series use, `gateway.energy_store.pseudonym`; ids and names never leave the
  gateway): the amount under the transaction's kind, and `balance_mcr`, the member's
  balance right after the transaction. One of `charged_mcr` (what a charge took: positive),
  `allowance_mcr` (received), `allowance_expired_mcr` (what expired: positive),
  `contribution_mcr` (received), `reversal_mcr` and `adjustment_mcr` (the change to the
  balance, either sign). So a member's balance moves by allowance + contribution + reversal
  + adjustment − charged − allowance_expired;
- every other posting, the community's side (`account` is the ledger's account:
  `issuance:allowance`, `contributions`, `machine-time` with `machine`, `energy` with
  `source`, `commons`, `adjustments`; `kind` is the transaction's kind):
  `issued_mcr` on the sources (credit handed out: an allowance, a contribution; negative
  when an expiry or a reversal takes it back), `spent_mcr` on the spending accounts (what
  was spent on machine time, energy by source, minimum charges; a reversed charge is
  negative), `adjusted_mcr` on `adjustments` (credit operators' corrections handed out).
  For every transaction, the members' balances move by issued − spent + adjusted.

In the TSDB a period's amounts are `sum_over_time(...[period])`, a balance is
`last_over_time(commonwatt_ledger_balance_mcr[...])`.

Exactly once. A point's identity is its series and its millisecond, and VictoriaMetrics
(with `-dedup.minScrapeInterval=1ms`) and InfluxDB keep one point per identity; so a batch
sent again after a crash between the write and the cursor update, or replayed from an
earlier cursor, changes no sum, provided it is sent with the same timestamps and values.
Both are functions of the ledger alone, which is append-only: the balance after a
transaction is the sum of the account's postings up to it, and the timestamp of
transaction n is `ms(n) = max(ts_ms(n), ms(n-1) + 1)`, its own time moved later by a
millisecond for each transaction before it in the same millisecond (a month's allowances
are issued to every member in one write). Every transaction has a millisecond of its own,
so two transactions never share a point, whatever series they write to. `ms(n)` is
`n + max(ts_ms(k) - k for k <= n)`: the writer computes it from the ledger after a restart
and carries it in memory from batch to batch.

A transaction the writer cannot read (its stored canonical bytes are not a transaction, or
name another id: the database was changed by hand; or its row is gone) is skipped, never
stops the writer: counted in the health's `rejected` under `unreadable_transaction` (or
`missing_transaction`), with one warning naming it. Saying what was changed is the work of
`commonwatt audit verify`. The transactions after it are written as usual, with the same
balances and milliseconds as if it had been read (see `Unreadable`).

    async with LedgerTsdbWriter(journal_path=cfg.journal.path, site=cfg.site.id, url=cfg.tsdb.url) as writer:
        journal_writer.add_listener(lambda seq: writer.notify())
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from influxdb_client.client.write_api import WriteApi

from gateway.energy_store import EnergyStore, pseudonym
from gateway.journal import Journal
from gateway.ledger.model import Kind, LedgerError, Posting, Transaction, account_kind
from gateway.ledger.schema import EVENT_METRIC
from gateway.sinks.lineprotocol import Formatted, escape_key, escape_measurement
from gateway.sinks.tsdb import TsdbSink

log = logging.getLogger(__name__)

CONSUMER = "ledger_tsdb"
MEASUREMENT = "commonwatt_ledger"
MEMBER_PREFIX = "member:"
#: A member's amount, by the transaction's kind, and its sign relative to the posting:
#: what a charge takes and what expires are shown as positive amounts.
MEMBER_FIELDS: Mapping[Kind, tuple[str, int]] = {
    "charge": ("charged_mcr", -1),
    "allowance": ("allowance_mcr", 1),
    "allowance_expiry": ("allowance_expired_mcr", -1),
    "contribution": ("contribution_mcr", 1),
    "reversal": ("reversal_mcr", 1),
    "adjustment": ("adjustment_mcr", 1),
}
#: The field of a community account, by the account's role (`gateway.ledger.model.account_kind`),
#: and its sign: sources and `adjustments` hand credit out as they go negative.
COMMUNITY_FIELDS: Mapping[str, tuple[str, int]] = {
    "source": ("issued_mcr", -1),
    "spending": ("spent_mcr", 1),
    "adjustment": ("adjusted_mcr", -1),
}
#: Ledger rows read per batch; each becomes a few lines (a charge: up to six).
ROWS_PER_BATCH = 2000
#: With nothing to write, the cursor is still moved past the journal's other rows, at most this often.
IDLE_CURSOR_S = 30.0


def account_tags(account: str) -> dict[str, str]:
    """The tags of a community account: `machine-time:laser` -> account=machine-time, machine=laser."""
    prefix, _, rest = account.partition(":")
    if prefix == "machine-time":
        return {"account": prefix, "machine": rest}
    if prefix == "energy":
        return {"account": prefix, "source": rest}
    return {"account": account}


def _prefix(site: str, tags: Mapping[str, str]) -> str:
    pairs = [f"{escape_key(k)}={escape_key(v)}" for k, v in sorted({**tags, "site": site}.items())]
    return ",".join([escape_measurement(MEASUREMENT), *pairs])


def _value(mcr: int) -> str:
    return repr(float(mcr))


@dataclass(frozen=True)
class Unreadable:
    """A transaction the writer skips: no line of its own, yet the ones after it stay right.

    `ts_ms` is the row's `ts_ms` column (None when the row is missing) and `postings` are its
    rows in `ledger_postings`: the two copies the ledger keeps for queries, and what
    `LedgerReader.peak_before` and `LedgerReader.balances_before` read after a restart. Moving
    the carried state by the same copies gives the transactions after a skipped one the
    milliseconds and balances a restart would give them, so a replay still changes no sum;
    leaving the skipped postings out would shift every later balance of its members instead.
    (`ledger_accounts` keeps only the balance of now, not the one after each transaction.)
    """

    id: int
    ts_ms: int | None
    postings: tuple[Posting, ...]
    #: The health's reason: `unreadable_transaction` or `missing_transaction`.
    reason: str
    #: What was wrong, for the warning.
    error: str


@dataclass
class LineState:
    """What the lines of the next transaction depend on, besides the transaction itself.

    `peak`: max(ts_ms(k) - k) over the transactions before it (None before the first), so its
    point is at `id + max(peak, ts_ms - id)`; `balances`: member accounts' balances before it
    (only those the batch touches need to be there).
    """

    peak: int | None
    balances: dict[str, int]


def ledger_lines(site: str, secret: bytes, txs: Iterable[Transaction | Unreadable], state: LineState) -> Formatted:
    """Line protocol of consecutive transactions (pure; `state` moves past them).

    Members are written under their pseudonyms (`pseudonym(secret, member id)`). An
    `Unreadable` one writes nothing but moves `state` as a restart would see it.
    """
    out = Formatted()
    names: dict[str, str] = {}
    for tx in txs:
        if isinstance(tx, Unreadable):
            if tx.ts_ms is not None:
                offset = tx.ts_ms - tx.id
                state.peak = offset if state.peak is None else max(state.peak, offset)
            for p in tx.postings:
                if p.account.startswith(MEMBER_PREFIX):
                    state.balances[p.account] = state.balances.get(p.account, 0) + p.amount
            continue
        offset = tx.ts_ms - tx.id
        state.peak = offset if state.peak is None else max(state.peak, offset)
        ms = tx.id + state.peak
        member_field, member_sign = MEMBER_FIELDS[tx.kind]
        for p in tx.postings:
            if p.account.startswith(MEMBER_PREFIX):
                balance = state.balances.get(p.account, 0) + p.amount
                state.balances[p.account] = balance
                member = p.account[len(MEMBER_PREFIX) :]
                who = names.get(member) or names.setdefault(member, pseudonym(secret, member))
                prefix = _prefix(site, {"account": "member", "member": who})
                body = f"balance_mcr={_value(balance)},{member_field}={_value(member_sign * p.amount)}"
                fields = 2
            else:
                role = account_kind(p.account) or ""
                if role not in COMMUNITY_FIELDS:  # Transaction refuses unknown accounts; a member's is above
                    raise ValueError(f"transaction {tx.id}: account {p.account!r} has no series")
                name, sign = COMMUNITY_FIELDS[role]
                prefix = _prefix(site, {**account_tags(p.account), "kind": tx.kind})
                body = f"{name}={_value(sign * p.amount)}"
                fields = 1
            out.lines.append(f"{prefix} {body} {ms}")
            out.points.append(fields)
    return out


class LedgerReader:
    """The ledger tables, read on a connection of the writer's thread."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=True)
        self.conn.execute("PRAGMA busy_timeout = 10000")

    def close(self) -> None:
        self.conn.close()

    def transactions(self, first: int, last: int) -> list[Transaction | Unreadable]:
        """Transactions `first`..`last`, in order, from their canonical bytes; `Unreadable` for
        those whose bytes are not the transaction of their row, or whose row is missing."""
        rows = self.conn.execute(
            "SELECT id, ts_ms, canonical FROM ledger_transactions WHERE id BETWEEN ? AND ? ORDER BY id",
            (first, last),
        ).fetchall()
        found: dict[int, tuple[int, bytes]] = {int(r[0]): (int(r[1]), bytes(r[2])) for r in rows}
        out: list[Transaction | Unreadable] = []
        bad: list[tuple[int, int | None, str, str]] = []
        for tx_id in range(first, last + 1):
            if tx_id not in found:
                bad.append((tx_id, None, "missing_transaction", "not in the ledger"))
                continue
            ts_ms, canonical = found[tx_id]
            try:
                tx = Transaction.from_canonical(canonical)
            except LedgerError as exc:
                bad.append((tx_id, ts_ms, "unreadable_transaction", str(exc)))
                continue
            if tx.id != tx_id:
                bad.append((tx_id, ts_ms, "unreadable_transaction", f"its bytes are transaction {tx.id}"))
                continue
            out.append(tx)
        if not bad:
            return out
        postings = self.postings([b[0] for b in bad])
        skipped = [Unreadable(i, ts, postings.get(i, ()), reason, error) for i, ts, reason, error in bad]
        return sorted([*out, *skipped], key=lambda t: t.id)

    def postings(self, tx_ids: Sequence[int]) -> dict[int, tuple[Posting, ...]]:
        """The rows of `ledger_postings` of these transactions, in their order."""
        out: dict[int, tuple[Posting, ...]] = {}
        for tx_id in tx_ids:
            rows = self.conn.execute(
                "SELECT account, amount FROM ledger_postings WHERE tx_id = ? ORDER BY n", (tx_id,)
            ).fetchall()
            out[tx_id] = tuple(Posting(str(account), int(amount)) for account, amount in rows)
        return out

    def peak_before(self, tx_id: int) -> int | None:
        """max(ts_ms - id) over the transactions before `tx_id`; None before the first."""
        row = self.conn.execute("SELECT max(ts_ms - id) FROM ledger_transactions WHERE id < ?", (tx_id,)).fetchone()
        return None if row[0] is None else int(row[0])

    def balances_before(self, tx_id: int, accounts: Sequence[str]) -> dict[str, int]:
        """Each account's balance just before transaction `tx_id` (the sum of its earlier postings)."""
        out: dict[str, int] = {}
        for account in accounts:
            row = self.conn.execute(
                "SELECT coalesce(sum(amount), 0) FROM ledger_postings WHERE account = ? AND tx_id < ?",
                (account, tx_id),
            ).fetchone()
            out[account] = int(row[0])
        return out


def transaction_ids(rows: Iterable[Sequence[Any]]) -> tuple[list[int], dict[str, int]]:
    """The transaction ids `event.ledger` rows name, and the other actions (contribution requests ...) counted."""
    ids: list[int] = []
    others: dict[str, int] = {}
    for row in rows:
        doc = json.loads(str(row[5]))
        action = str(doc.get("action"))
        if action == "transaction":
            ids.append(int(doc["what"]["id"]))
        else:
            others[action] = others.get(action, 0) + 1
    return ids, others


class LedgerTsdbWriter(TsdbSink):
    """The ledger's transactions into the TSDB, exactly once (see the module docstring).

    Started by the gateway next to the ledger service when `[tsdb]` is configured; its health
    (`name` `ledger_tsdb`: cursor, lag in journal rows, retries) shows with the other sinks'.
    """

    def __init__(self, *, journal_path: str | Path, site: str, **kw: Any) -> None:
        kw.setdefault("consumer", CONSUMER)
        super().__init__(journal_path=journal_path, site=site, **kw)
        self.health.name = "ledger_tsdb"
        self.site = site
        self._reader: LedgerReader | None = None
        self._secret: bytes | None = None
        #: Carried from one batch to the next: valid for transaction `_next_id`.
        self._state: LineState | None = None
        self._next_id = 0
        #: When the journal's cursor was last stored (`health.cursor` may be ahead of it, see `_skip`).
        self._stored_at = time.monotonic()
        #: Transactions skipped as unreadable, counted and warned about once each (a batch read
        #: again after a busy journal, or a cursor set back, meets them again).
        self._unreadable: set[int] = set()

    def _step(self, journal: Journal, api: WriteApi) -> None:
        self._wake.clear()
        if self._reader is None:
            self._open()
        last = journal.last_seq()
        self.health.last_seq = last
        limit = min(self.batch_size, ROWS_PER_BATCH)
        rows = journal.events(EVENT_METRIC, after=self.health.cursor, limit=limit)
        if not rows:
            self._skip(journal, last)
            self._wake.wait(self.poll_s)
            return
        # Rows committed after `last` was read have higher seqs than any row of this read.
        upto = rows[-1][0] if len(rows) == limit else max(last, rows[-1][0])
        ids, others = transaction_ids(rows)
        self.health.skipped.update(others)
        if ids:
            self._deliver_transactions(api, min(ids), max(ids))
        self._advance(journal, upto)
        self._stored_at = time.monotonic()

    def _open(self) -> None:
        with EnergyStore(self.journal_path) as store:
            self._secret = store.secret()
        self._reader = LedgerReader(self.journal_path)

    def _deliver_transactions(self, api: WriteApi, first: int, last: int) -> None:
        reader = self._reader
        assert reader is not None and self._secret is not None
        txs = reader.transactions(first, last)
        for tx in txs:
            if isinstance(tx, Unreadable) and tx.id not in self._unreadable:
                self._unreadable.add(tx.id)
                self.health.rejected[tx.reason] += 1
                log.warning(
                    "ledger transaction %d skipped, not written to the TSDB: %s"
                    " (`commonwatt audit verify` says what changed)",
                    tx.id,
                    tx.error,
                )
        if self._state is None or self._next_id != first:
            # After a start (or a cursor set back by hand): the state before `first`, from the ledger.
            self._state = LineState(reader.peak_before(first), {})
        members = {p.account for t in txs for p in t.postings if p.account.startswith(MEMBER_PREFIX)}
        missing = sorted(members - set(self._state.balances))
        self._state.balances.update(reader.balances_before(first, missing))
        state = LineState(self._state.peak, dict(self._state.balances))
        batch = ledger_lines(self.site, self._secret, txs, state)
        if batch.lines:
            self._write_split(api, batch)
        # Only once written: a write cut short by close() leaves the state as it was before the batch.
        self._state, self._next_id = state, last + 1

    def _skip(self, journal: Journal, last: int) -> None:
        """No ledger row up to `last`: everything up to it is delivered; store that now and then.

        Storing the cursor on every journal commit would compete with the ingest for the
        database; after a restart, looking again at the rows since the stored cursor costs one
        look-up in the journal's index of event rows.
        """
        if last <= self.health.cursor:
            return
        if time.monotonic() - self._stored_at >= IDLE_CURSOR_S:
            journal.set_cursor(self.consumer, last)
            self._stored_at = time.monotonic()
        with self._progress:
            self.health.cursor = last
            self._progress.notify_all()

    def _run(self) -> None:
        try:
            super()._run()
        finally:  # the reader's connection belongs to this thread: close it here
            if self._reader is not None:
                self._reader.close()
                self._reader = None
