"""Monthly statements: what a member used and paid, and the community's month, in figures anyone can check.

A month is cut at local midnight in the site's time zone (`site.timezone`): a session
charged at 00:30 on the 1st, local time, belongs to the new month even when that is still
the previous month in UTC. A transaction belongs to the month of its `ts_ms` (when the
ledger posted it), so for every member and every month, exactly:

    opening + sum of the month's postings = closing
    closing = opening - charged + allowance - allowance_expired + contributions + other

where `other` is reversals and operators' adjustments. All money is integer milli-credits
(mcr), energy integer mWh, CO2 integer mg; the JSON carries the integers and the same
figures as exact decimal text (credits, kWh, g). Nothing is rounded on the way.

Member statement (`member_statement`): one row per session charged in the month (from the
charge's own detail: machine, busy and idle seconds, mWh by source as priced, CO2, the
credits charged; start and end from the floor's `event.session_closed` row), every
posting to the member's account with the balance after it, the credit totals above, and,
when the site keeps an audit log, an inclusion proof of each of the member's transactions
under the latest signed checkpoint (the files `commonwatt audit check-proof` reads).

Community report (`community_report`): the month's energy balance (terms, flows, load by
source, residual between the site meter and the derived consumption, CO2), what went to
machines with nobody badged in and to the site's base load, credits issued (allowances,
contributions) and spent (by machine, by energy source, the commons), and every member's
opening and closing balance, under the member's pseudonym unless an operator asks for names.
The energy's quality: `quality`, the worst flag of any interval of the month, and how many
intervals have each quality (`quality_counts`, each interval under its worst flag: `ok`,
`estimated`, `integrated`, `missing`; they add up to `intervals`), with their share of the
month's intervals as text (`quality_percent`: "0.3", "<0.1"; null without intervals).

CSV layout (both documents): a header row and one row per session (member statement) or
per member (community report), an empty line, then a totals block of `item,value,text`
rows: `value` is the integer (mcr, mWh, mg), `text` the same figure as credits, kWh or g;
the community report's block starts with `intervals` (text: the worst quality) and
`quality.<flag>_intervals` (text: the share, "0.3 %").
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import re
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from gateway.audit import AuditError
from gateway.audit.log import AuditLog, key_path_of
from gateway.config import Config
from gateway.energy_report import COLOURS, period_balance, quality_summary, share_text
from gateway.energy_report import SOURCES as ENERGY_SOURCES
from gateway.energy_store import EnergyStore, pseudonym
from gateway.journal import Journal
from gateway.ledger import SOURCES, Transaction, member_account
from gateway.ledger_service import SESSION_CLOSED, format_credits, format_kwh
from gateway.people import People

FORMATS = ("csv", "json", "html")
STATEMENT_TYPE = "commonwatt/statement/v1"
COMMUNITY_TYPE = "commonwatt/community-report/v1"
_MONTH = re.compile(r"(\d{4})-(0[1-9]|1[0-2])")
#: How far before the month a charged session may have ended (charges wait for final energy).
SESSION_LOOKBACK_S = 7 * 86_400
#: The statement's credit lines: ledger kind -> (line, sign as seen from the member).
CREDIT_LINES: dict[str, tuple[str, int]] = {
    "charge": ("charged", -1),
    "allowance": ("allowance", 1),
    "allowance_expiry": ("allowance_expired", -1),
    "contribution": ("contributions", 1),
    "reversal": ("other", 1),
    "adjustment": ("other", 1),
}
#: Issuance lines of the community report: ledger kind -> (line, sign of the source account's posting).
ISSUED_LINES: dict[str, tuple[str, int]] = {
    "allowance": ("allowance", -1),
    "allowance_expiry": ("allowance_expired", 1),
    "contribution": ("contributions", -1),
}
SOURCE_ACCOUNTS = frozenset({"issuance:allowance", "contributions"})
LINE_ORDER = ("opening", "charged", "allowance", "allowance_expired", "contributions", "other", "closing")
#: Colours of the ledger's three sources, from the energy report's palette.
SOURCE_COLOURS = {"sun": COLOURS["sun"], "battery": COLOURS["battery_grid"], "grid": COLOURS["grid"]}

#: Gives the inclusion bundle of a transaction, or raises AuditError saying why not yet.
Inclusion = Callable[[int], dict[str, Any]]


class StatementError(Exception):
    """A statement cannot be made: a bad month, an unknown member, a database without a ledger."""


# -- months and figures as text ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Month:
    """A calendar month in the site's time zone, as UTC seconds [since, until)."""

    name: str
    timezone: str
    since: float
    until: float

    @property
    def since_ms(self) -> int:
        return round(self.since * 1000)

    @property
    def until_ms(self) -> int:
        return round(self.until * 1000)

    def local(self, ts: float) -> str:
        return datetime.fromtimestamp(ts, ZoneInfo(self.timezone)).isoformat(timespec="seconds")


def month_of(name: str, timezone: str) -> Month:
    """`YYYY-MM` cut at local midnight in `timezone`."""
    m = _MONTH.fullmatch(name)
    if m is None:
        raise StatementError(f"month {name!r}: use YYYY-MM")
    year, month = int(m[1]), int(m[2])
    tz = ZoneInfo(timezone)
    nxt = (year + month // 12, month % 12 + 1)
    since = datetime(year, month, 1, tzinfo=tz).timestamp()
    return Month(name, timezone, since, datetime(*nxt, 1, tzinfo=tz).timestamp())


def format_g(mg: int) -> str:
    sign = "-" if mg < 0 else ""
    return f"{sign}{abs(mg) // 1000}.{abs(mg) % 1000:03d}"


def money(mcr: int) -> dict[str, Any]:
    return {"mcr": mcr, "credits": format_credits(mcr)}


def energy(mwh: Mapping[str, int]) -> dict[str, Any]:
    return {"mwh": dict(mwh), "kwh": {k: format_kwh(v) for k, v in mwh.items()}}


# -- reading the ledger's tables ----------------------------------------------------------------


class LedgerReader:
    """Read-only queries by time over the ledger's tables (the statement never writes)."""

    def __init__(self, path: Path) -> None:
        if not path.exists():
            raise StatementError(f"{path}: no such database")
        self._conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            self._conn.execute("SELECT 1 FROM ledger_transactions LIMIT 1")
        except sqlite3.Error as exc:
            self._conn.close()
            raise StatementError(f"{path}: no ledger ({exc})") from None

    def transactions(self, since_ms: int, until_ms: int) -> list[Transaction]:
        rows = self._conn.execute(
            "SELECT canonical FROM ledger_transactions WHERE ts_ms >= ? AND ts_ms < ? ORDER BY id",
            (since_ms, until_ms),
        ).fetchall()
        return [Transaction.from_canonical(bytes(r[0])) for r in rows]

    def balances_before(self, ts_ms: int, account: str | None = None) -> dict[str, int]:
        """Each account's balance from the postings of transactions before `ts_ms` (one account, or all)."""
        sql = (
            "SELECT p.account, sum(p.amount) FROM ledger_postings p JOIN ledger_transactions t ON t.id = p.tx_id "
            "WHERE t.ts_ms < ?"
        )
        args: tuple[Any, ...] = (ts_ms,)
        if account is not None:
            sql, args = sql + " AND p.account = ?", (ts_ms, account)
        return {str(a): int(n) for a, n in self._conn.execute(sql + " GROUP BY p.account", args)}

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> LedgerReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def session_times(path: Path, month: Month) -> dict[str, tuple[float, float]]:
    """Start and end of the sessions the floor closed in (or a week before) the month, by session id."""
    out: dict[str, tuple[float, float]] = {}
    after = 0
    with Journal(path) as journal:
        while True:
            rows = journal.events(
                SESSION_CLOSED, after=after, since=month.since - SESSION_LOOKBACK_S, until=month.until
            )
            for row in rows:
                body = json.loads(str(row[5]))
                out[str(body["session_id"])] = (float(body["start"]), float(body["end"]))
            if len(rows) < 1000:
                return out
            after = int(str(rows[-1][0]))


# -- the member statement -------------------------------------------------------------------------


def concerns(tx: Transaction, member: str) -> bool:
    """A member's transaction: it posts to their account, or it is their (possibly free) charge."""
    if any(p.account == member_account(member) for p in tx.postings):
        return True
    return tx.kind == "charge" and tx.detail.get("member") == member


def session_row(tx: Transaction, member: str, month: Month, times: Mapping[str, tuple[float, float]]) -> dict[str, Any]:
    d = tx.detail
    mwh = {s: int(d["mwh"].get(s, 0)) for s in SOURCES}
    start, end = times.get(str(d["session"]), (None, None))
    charged = -tx.amount_for(member_account(member))
    return {
        "tx_id": tx.id,
        "session_id": d["session"],
        "machine": d["machine"],
        "start": None if start is None else month.local(start),
        "end": None if end is None else month.local(end),
        "busy_s": int(d["busy_s"]),
        "idle_s": int(d["idle_s"]),
        **energy(mwh),
        "co2_mg": int(d.get("co2_mg", 0)),
        "co2_g": format_g(int(d.get("co2_mg", 0))),
        "charged_mcr": charged,
        "charged": format_credits(charged),
    }


def posting_rows(txs: Iterable[Transaction], member: str, opening: int, month: Month) -> list[dict[str, Any]]:
    """Every transaction of the member in the month with its amount and the balance after it."""
    out, balance = [], opening
    for tx in txs:
        amount = tx.amount_for(member_account(member))
        balance += amount
        out.append(
            {
                "tx_id": tx.id,
                "time": month.local(tx.ts_ms / 1000),
                "kind": tx.kind,
                "key": tx.key,
                "memo": tx.memo,
                "reverses": tx.reverses,
                "amount_mcr": amount,
                "amount": format_credits(amount),
                "balance_after_mcr": balance,
                "balance_after": format_credits(balance),
            }
        )
    return out


def credit_lines(txs: Iterable[Transaction], member: str, opening: int) -> dict[str, int]:
    """opening, charged, allowance, allowance_expired, contributions, other, closing (mcr)."""
    lines = dict.fromkeys(LINE_ORDER, 0)
    lines["opening"] = opening
    for tx in txs:
        line, sign = CREDIT_LINES[tx.kind]
        lines[line] += sign * tx.amount_for(member_account(member))
    lines["closing"] = (
        opening
        - lines["charged"]
        + lines["allowance"]
        - lines["allowance_expired"]
        + lines["contributions"]
        + lines["other"]
    )
    return lines


def session_totals(sessions: list[dict[str, Any]]) -> dict[str, Any]:
    mwh = {s: sum(int(r["mwh"][s]) for r in sessions) for s in SOURCES}
    co2 = sum(int(r["co2_mg"]) for r in sessions)
    charged = sum(int(r["charged_mcr"]) for r in sessions)
    return {
        "sessions": len(sessions),
        "busy_s": sum(int(r["busy_s"]) for r in sessions),
        "idle_s": sum(int(r["idle_s"]) for r in sessions),
        **energy(mwh),
        "co2_mg": co2,
        "co2_g": format_g(co2),
        "charged_mcr": charged,
        "charged": format_credits(charged),
    }


def member_statement(
    config: Config, member: str, month_name: str, *, inclusion: Inclusion | None = None
) -> dict[str, Any]:
    """The member's statement for a month as one JSON-ready document (see the module docstring)."""
    path = Path(config.journal.path)
    month = month_of(month_name, config.site.timezone)
    with People(path) as people:
        who = people.member(member)
    if who is None:
        raise StatementError(f"no member {member!r}")
    with LedgerReader(path) as reader:
        opening = reader.balances_before(month.since_ms, member_account(member)).get(member_account(member), 0)
        txs = [tx for tx in reader.transactions(month.since_ms, month.until_ms) if concerns(tx, member)]
    times = session_times(path, month)
    sessions = [session_row(tx, member, month, times) for tx in txs if tx.kind == "charge"]
    lines = credit_lines(txs, member, opening)
    return {
        "type": STATEMENT_TYPE,
        "site": config.site.id,
        "member": {"id": who.id, "name": who.name},
        "month": month.name,
        "timezone": month.timezone,
        "from": month.local(month.since),
        "to": month.local(month.until),
        "sessions": sessions,
        "totals": session_totals(sessions),
        "credits": {k: money(v) for k, v in lines.items()},
        "postings": posting_rows(txs, member, opening, month),
        "proofs": None if inclusion is None else proofs([tx.id for tx in txs], inclusion),
    }


# -- proofs ------------------------------------------------------------------------------------------


def proofs(tx_ids: Iterable[int], inclusion: Inclusion) -> dict[str, Any]:
    """Inclusion bundles of these transactions; those no signed checkpoint covers yet, with the reason."""
    bundles: list[dict[str, Any]] = []
    waiting: list[dict[str, Any]] = []
    for tx_id in tx_ids:
        try:
            bundles.append(inclusion(tx_id))
        except AuditError as exc:
            waiting.append({"tx_id": tx_id, "reason": str(exc)})
    return {"bundles": bundles, "not_yet_provable": waiting}


def open_audit_log(config: Config) -> AuditLog | None:
    """The site's audit log, if it keeps one (its signing key exists); a statement never creates the key."""
    if not key_path_of(config).exists():
        return None
    return AuditLog.for_config(config)


# -- the community report ---------------------------------------------------------------------------


def ledger_month(txs: Iterable[Transaction]) -> dict[str, Any]:
    """Credits issued and spent in the month, from the postings (mcr).

    Issued: allowances, expired allowance and contributions, by the kind of transaction;
    a reversal of any of them is `issued.reversed` (what it gave back to the source
    accounts). Spent: the spending accounts' postings, net of reversed charges.
    """
    issued = {"allowance": 0, "allowance_expired": 0, "contributions": 0, "reversed": 0}
    spent: dict[str, int] = {}
    adjustments = 0
    for tx in txs:
        for p in tx.postings:
            if p.account in SOURCE_ACCOUNTS:
                line, sign = ISSUED_LINES.get(tx.kind, ("reversed", 1))
                issued[line] += sign * p.amount
            elif p.account == "adjustments":
                adjustments += p.amount
            elif not p.account.startswith("member:"):
                spent[p.account] = spent.get(p.account, 0) + p.amount
    machines = {a.split(":", 1)[1]: n for a, n in sorted(spent.items()) if a.startswith("machine-time:")}
    return {
        "issued": {k: money(v) for k, v in issued.items()},
        "spent_by_machine": {k: money(v) for k, v in machines.items()},
        "spent_by_source": {s: money(spent.get(f"energy:{s}", 0)) for s in SOURCES},
        "spent_commons": money(spent.get("commons", 0)),
        "spent_total": money(sum(spent.values())),
        "adjustments": money(adjustments),
    }


def member_balances(
    reader: LedgerReader, month: Month, label: Callable[[str], str]
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Every member account's opening and closing balance; and the totals of both."""
    before = reader.balances_before(month.since_ms)
    after = reader.balances_before(month.until_ms)
    members = sorted({a for a in (*before, *after) if a.startswith("member:")}, key=lambda a: label(a[7:]))
    rows = [
        {"member": label(a[7:]), "opening": money(before.get(a, 0)), "closing": money(after.get(a, 0))} for a in members
    ]
    totals = {"opening": sum(before.get(a, 0) for a in members), "closing": sum(after.get(a, 0) for a in members)}
    return rows, totals


def energy_month(store: EnergyStore, month: Month, label: Callable[[str], str]) -> dict[str, Any]:
    """The month's energy balance, residual and consumers, from the energy tables (mWh)."""
    p = period_balance(store.intervals(month.since, month.until))
    consumers = []
    for kind, machine, member, total, *parts in store.consumer_totals(month.since, month.until):
        by_source = {s: int(str(v)) for s, v in zip(ENERGY_SOURCES, parts, strict=True)}
        who = label(str(member)) if kind == "member" else None
        consumers.append(
            {
                "kind": kind,
                "machine": machine or None,
                "member": who,
                "energy_mwh": int(str(total)),
                **energy(by_source),
            }
        )

    def sum_of(kind: str) -> int:
        return sum(int(c["energy_mwh"]) for c in consumers if c["kind"] == kind)

    return {
        "intervals": p.intervals,
        "quality": p.quality,
        "quality_counts": dict(p.quality_counts),
        "quality_percent": {q: share_text(n, p.intervals) for q, n in p.quality_counts.items()},
        "convention": p.convention,
        "terms": energy(p.terms),
        "flows": energy(p.flows),
        "load_by_source": energy(p.mix),
        "residual_mwh": p.residual,
        "residual_kwh": None if p.residual is None else format_kwh(p.residual),
        "co2_mg": p.co2_mg,
        "co2_g": format_g(p.co2_mg),
        "attributed_mwh": sum_of("member"),
        "unattributed_mwh": sum_of("unattributed"),
        "base_mwh": sum_of("base"),
        "consumers": consumers,
    }


def community_report(config: Config, month_name: str, *, names: bool = False) -> dict[str, Any]:
    """The community's month as one JSON-ready document; members by pseudonym unless `names`."""
    path = Path(config.journal.path)
    month = month_of(month_name, config.site.timezone)
    with EnergyStore(path) as store:
        secret = store.secret()
        if names:
            with People(path) as people:
                known = {m.id: m.name for m in people.members()}

        def label(member: str) -> str:
            return f"{known.get(member, member)} ({member})" if names else pseudonym(secret, member)

        energy_doc = energy_month(store, month, label)
    with LedgerReader(path) as reader:
        credits = ledger_month(reader.transactions(month.since_ms, month.until_ms))
        balances, totals = member_balances(reader, month, label)
    return {
        "type": COMMUNITY_TYPE,
        "site": config.site.id,
        "month": month.name,
        "timezone": month.timezone,
        "from": month.local(month.since),
        "to": month.local(month.until),
        "members_named": names,
        "energy": energy_doc,
        "credits": credits,
        "balances": balances,
        "balances_total": {k: money(v) for k, v in totals.items()},
    }


# -- CSV -----------------------------------------------------------------------------------------------

STATEMENT_COLUMNS = (
    "tx_id",
    "session_id",
    "machine",
    "start",
    "end",
    "busy_s",
    "idle_s",
    "sun_mwh",
    "battery_mwh",
    "grid_mwh",
    "co2_mg",
    "charged_mcr",
    "charged",
)


def statement_csv(doc: Mapping[str, Any]) -> str:
    """Sessions (STATEMENT_COLUMNS), an empty line, then the totals block (`item,value,text`)."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(STATEMENT_COLUMNS)
    for r in doc["sessions"]:
        w.writerow(
            [
                *(r[k] for k in STATEMENT_COLUMNS[:7]),
                *(r["mwh"][s] for s in SOURCES),
                r["co2_mg"],
                r["charged_mcr"],
                r["charged"],
            ]
        )
    w.writerow([])
    w.writerow(("item", "value", "text"))
    t = doc["totals"]
    for s in SOURCES:
        w.writerow((f"{s}_mwh", t["mwh"][s], t["kwh"][s]))
    w.writerow(("co2_mg", t["co2_mg"], t["co2_g"]))
    for line in LINE_ORDER:
        w.writerow((f"{line}_mcr", doc["credits"][line]["mcr"], doc["credits"][line]["credits"]))
    return out.getvalue()


def community_csv(doc: Mapping[str, Any]) -> str:
    """Members' balances (`member,opening_mcr,closing_mcr`), an empty line, the totals block."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(("member", "opening_mcr", "closing_mcr"))
    for b in doc["balances"]:
        w.writerow((b["member"], b["opening"]["mcr"], b["closing"]["mcr"]))
    w.writerow([])
    w.writerow(("item", "value", "text"))
    for item, value, text in community_items(doc):
        w.writerow((item, value, text))
    return out.getvalue()


def community_items(doc: Mapping[str, Any]) -> list[tuple[str, int | None, str]]:
    """The report's figures as (item, integer, text) rows: what the CSV totals block and the HTML show."""
    e, c = doc["energy"], doc["credits"]
    items: list[tuple[str, int | None, str]] = [("intervals", e["intervals"], f"quality {e['quality']}")]
    for q, n in e["quality_counts"].items():
        share = e["quality_percent"][q]
        items.append((f"quality.{q}_intervals", n, "" if share is None else f"{share} %"))
    for group in ("terms", "flows", "load_by_source"):
        items += [(f"{group}.{k}_mwh", v, e[group]["kwh"][k]) for k, v in e[group]["mwh"].items()]
    items.append(("residual_mwh", e["residual_mwh"], e["residual_kwh"] or ""))
    for k in ("attributed", "unattributed", "base"):
        items.append((f"{k}_mwh", e[f"{k}_mwh"], format_kwh(e[f"{k}_mwh"])))
    items.append(("co2_mg", e["co2_mg"], e["co2_g"]))
    items += [(f"issued.{k}_mcr", v["mcr"], v["credits"]) for k, v in c["issued"].items()]
    items += [(f"spent.machine.{k}_mcr", v["mcr"], v["credits"]) for k, v in c["spent_by_machine"].items()]
    items += [(f"spent.energy.{k}_mcr", v["mcr"], v["credits"]) for k, v in c["spent_by_source"].items()]
    for k in ("spent_commons", "spent_total", "adjustments"):
        items.append((f"{k}_mcr", c[k]["mcr"], c[k]["credits"]))
    items += [(f"balances.{k}_mcr", v["mcr"], v["credits"]) for k, v in doc["balances_total"].items()]
    return items


# -- HTML ----------------------------------------------------------------------------------------------

_LOCAL_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d")
_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:75rem;margin:2rem auto;padding:0 1rem;color:#222}"
    "table{border-collapse:collapse;margin:1rem 0}td,th{border-bottom:1px solid #ddd;padding:.25rem .6rem}"
    "td.n{text-align:right;font-variant-numeric:tabular-nums}details pre{white-space:pre-wrap;font-size:.8rem}"
)


def _cell(value: Any) -> str:
    """Table text: nothing for a missing value, local times with a space instead of the ISO `T`."""
    text = "" if value is None else str(value)
    return html.escape(text.replace("T", " ", 1) if _LOCAL_TIME.fullmatch(text) else text)


def _table(head: Iterable[str], rows: Iterable[Iterable[Any]], numeric_from: int = 1) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{' class=n' if i >= numeric_from else ''}>{html.escape('' if v is None else str(v))}</td>"
            for i, v in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{th}</tr>{body}</table>"


def _page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n"
    )


def machine_chart_svg(sessions: Iterable[Mapping[str, Any]]) -> str:
    """Inline SVG: one bar per machine, the member's kWh stacked by source (sun, battery, grid)."""
    per: dict[str, dict[str, int]] = {}
    for r in sessions:
        m = per.setdefault(str(r["machine"]), dict.fromkeys(SOURCES, 0))
        for s in SOURCES:
            m[s] += int(r["mwh"][s])
    top = max((sum(v.values()) for v in per.values()), default=0) or 1
    width, bar, label_w = 560, 26, 120
    parts = []
    for i, (machine, mwh) in enumerate(sorted(per.items())):
        y, x = 10 + i * (bar + 10), float(label_w)
        parts.append(f'<text x="0" y="{y + 18}" font-size="13">{html.escape(machine)}</text>')
        for s in SOURCES:
            w = mwh[s] * (width - label_w - 120) / top
            parts.append(
                f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar}" fill="{SOURCE_COLOURS[s]}">'
                f"<title>{s}: {format_kwh(mwh[s])} kWh</title></rect>"
            )
            x += w
        parts.append(f'<text x="{x + 6:.1f}" y="{y + 18}" font-size="12">{format_kwh(sum(mwh.values()))} kWh</text>')
    legend_y = 20 + len(per) * (bar + 10)
    for j, s in enumerate(SOURCES):
        parts.append(
            f'<rect x="{label_w + j * 110}" y="{legend_y}" width="12" height="12" fill="{SOURCE_COLOURS[s]}"/>'
        )
        parts.append(f'<text x="{label_w + j * 110 + 16}" y="{legend_y + 11}" font-size="12">{s}</text>')
    height = legend_y + 24
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}"><title>kWh by machine and source</title>{"".join(parts)}</svg>'
    )


def statement_html(doc: Mapping[str, Any]) -> str:
    """A self-contained page: the chart, sessions, credits, postings, and the proofs to download."""
    t, c = doc["totals"], doc["credits"]
    sessions = _table(
        ("machine", "start", "end", "busy s", "idle s", "sun kWh", "battery kWh", "grid kWh", "CO₂ g", "credits"),
        (
            [
                r["machine"],
                r["start"],
                r["end"],
                r["busy_s"],
                r["idle_s"],
                *(r["kwh"][s] for s in SOURCES),
                r["co2_g"],
                r["charged"],
            ]
            for r in doc["sessions"]
        ),
        numeric_from=3,
    )
    totals = _table(("", "kWh"), [*((s, t["kwh"][s]) for s in SOURCES), ("CO₂ (g)", t["co2_g"])])
    credits = _table(("", "credits"), ((line.replace("_", " "), c[line]["credits"]) for line in LINE_ORDER))
    postings = _table(
        ("transaction", "time", "kind", "memo", "amount", "balance"),
        ((p["tx_id"], p["time"], p["kind"], p["memo"], p["amount"], p["balance_after"]) for p in doc["postings"]),
        numeric_from=4,
    )
    body = (
        f"<p>{html.escape(doc['member']['name'])} ({html.escape(doc['member']['id'])}), site "
        f"{html.escape(doc['site'])}, from {doc['from']} to {doc['to']}.</p>"
        f"<h2>Energy by machine and source</h2>{machine_chart_svg(doc['sessions'])}"
        f"<h2>Sessions</h2>{sessions}<h2>Totals</h2>{totals}<h2>Credits</h2>{credits}"
        f"<h2>Transactions</h2>{postings}{_proofs_html(doc['proofs'])}"
    )
    return _page(f"Statement {doc['month']}", body)


def _proofs_html(p: Mapping[str, Any] | None) -> str:
    if p is None:
        return ""
    data = base64.b64encode(json.dumps(p["bundles"], indent=1).encode()).decode()
    waiting = "".join(f"<li>transaction {w['tx_id']}: {html.escape(w['reason'])}</li>" for w in p["not_yet_provable"])
    return (
        f"<h2>Proofs</h2><p>{len(p['bundles'])} inclusion proof(s) under the latest signed checkpoint. "
        f'<a download="proofs.json" href="data:application/json;base64,{data}">Download them</a> and check them '
        "with <code>commonwatt audit check-proof proofs.json --key &lt;the lab's log key&gt;</code>.</p>"
        + (f"<p>Not under a signed checkpoint yet:</p><ul>{waiting}</ul>" if waiting else "")
    )


def community_html(doc: Mapping[str, Any]) -> str:
    e = doc["energy"]
    consumers = _table(
        ("consumer", "machine", "kWh", "sun", "battery (sun)", "battery (grid)", "grid"),
        (
            [
                c["member"] or c["kind"],
                c["machine"],
                format_kwh(c["energy_mwh"]),
                *(c["kwh"][s] for s in ENERGY_SOURCES),
            ]
            for c in e["consumers"]
        ),
        numeric_from=2,
    )
    figures = _table(("figure", "value", "text"), community_items(doc))
    balances = _table(
        ("member", "opening", "closing"),
        ((b["member"], b["opening"]["credits"], b["closing"]["credits"]) for b in doc["balances"]),
    )
    body = (
        f"<p>Site {html.escape(doc['site'])}, from {doc['from']} to {doc['to']}; "
        f"{e['intervals']} energy intervals ({html.escape(quality_summary(e['quality_counts']))}).</p>"
        f"<h2>Figures</h2>{figures}"
        f"<h2>Consumers</h2>{consumers}<h2>Balances</h2>{balances}"
    )
    return _page(f"Community report {doc['month']}", body)


def render(doc: Mapping[str, Any], fmt: str) -> str:
    """A statement or community report in `csv`, `json` or `html`."""
    statement = doc["type"] == STATEMENT_TYPE
    if fmt == "json":
        return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"
    if fmt == "csv":
        return statement_csv(doc) if statement else community_csv(doc)
    if fmt == "html":
        return statement_html(doc) if statement else community_html(doc)
    raise StatementError(f"format {fmt!r}: one of {', '.join(FORMATS)}")
