"""/api/v1/ledger: balances, a member's account, transactions, contributions; a session's receipt.

Money is integer milli-credits (`*_mcr`), with the same amount beside it as a decimal
string of credits (`"3.349"`) for people to read.

Who sees what:

- operators and admins read every account and transaction under the members' ids;
- auditors read them all too, with every member under a pseudonym (the site's energy
  pseudonym, `gateway.energy_store.pseudonym`, so a member is the same pseudonym here
  as in the TSDB);
- any other token reads only its own member's account and receipts; asking for another
  member is a 404, the same as for a member who does not exist;
- operators and admins grant contributions; one above `pricing.contribution_approval_above`
  waits for a second, different operator to approve it (409 for the same one).

The writes go through the ledger service's store when the gateway runs one, else through
a store the app opens on first use.
"""

from __future__ import annotations

import collections
import json
import threading
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field

from gateway.api.auth import CONFLICT, ERRORS, CurrentPrincipal, Manager, PeopleDep, Reader, may_see
from gateway.api.deps import get_gateway
from gateway.energy_store import EnergyStore, pseudonym
from gateway.journal import Journal
from gateway.ledger import Contribution, Ledger, LedgerError, Transaction, member_account
from gateway.ledger_service import RECEIPT_EVENT, format_credits
from gateway.people import Principal

router = APIRouter(prefix="/api/v1", tags=["ledger"], responses={**ERRORS, **CONFLICT})

MAX_LIMIT = 1000
RECENT = 50
_lock = threading.Lock()
MemberId = Annotated[str, Path(min_length=1, max_length=63, description="the member's id")]


def get_ledger(request: Request) -> Ledger:
    """The ledger service's store, or one the app opens on first use."""
    service = getattr(get_gateway(request), "ledger", None)
    if service is not None and getattr(service, "core", None) is not None:
        found: Ledger = service.ledger
        return found
    state = request.app.state
    with _lock:
        ledger: Ledger | None = getattr(state, "ledger", None)
        if ledger is None:
            config = get_gateway(request).config
            ledger = Ledger(config.journal.path, config.pricing)
            state.ledger = ledger
    return ledger


LedgerDep = Annotated[Ledger, Depends(get_ledger)]


def _secret(request: Request) -> bytes:
    state = request.app.state
    with _lock:
        secret: bytes | None = getattr(state, "pseudonym_secret", None)
        if secret is None:
            with EnergyStore(get_gateway(request).config.journal.path) as store:
                secret = store.secret()
            state.pseudonym_secret = secret
    return secret


class Naming:
    """How member ids appear to the caller: as they are, or under pseudonyms (auditors)."""

    def __init__(self, secret: bytes | None) -> None:
        self.secret = secret

    def member(self, member_id: str) -> str:
        return member_id if self.secret is None else pseudonym(self.secret, member_id)

    def account(self, name: str) -> str:
        if self.secret is not None and name.startswith("member:"):
            return member_account(self.member(name[len("member:") :]))
        return name

    def text(self, text: str, member_id: str | None) -> str:
        return text if self.secret is None or not member_id else text.replace(member_id, self.member(member_id))


def naming(request: Request, principal: CurrentPrincipal) -> Naming:
    return Naming(_secret(request) if principal.role == "auditor" else None)


NamingDep = Annotated[Naming, Depends(naming)]


# -- response models ------------------------------------------------------------------------------


class Money(BaseModel):
    mcr: int = Field(description="milli-credits")
    credits: str = Field(description="the same, as a decimal string of credits")


def money(mcr: int) -> Money:
    return Money(mcr=mcr, credits=format_credits(mcr))


class AccountBalance(BaseModel):
    account: str
    balance: Money


class PostingOut(BaseModel):
    account: str
    amount: Money


class TransactionOut(BaseModel):
    id: int
    ts_ms: int
    kind: str
    key: str
    memo: str
    policy: str
    postings: list[PostingOut]
    detail: dict[str, Any]
    reverses: int | None


class MemberAccount(BaseModel):
    member_id: str
    balance: Money
    credit_limit: Money
    may_start_session: bool
    transactions: list[TransactionOut] = Field(description=f"the latest {RECENT}, oldest first")


class NewContribution(BaseModel):
    member: str = Field(min_length=1, max_length=63)
    amount_mcr: int = Field(gt=0, le=10**12, description="milli-credits (1 credit = 1000)")
    category: str = Field(min_length=1, max_length=64)
    note: str = Field(default="", max_length=500)


class ContributionOut(BaseModel):
    id: int
    member: str
    amount: Money
    category: str
    note: str
    requested_by: str
    status: str
    decided_by: str | None
    tx_id: int | None


def _tx_out(tx: Transaction, names: Naming) -> TransactionOut:
    who = tx.detail.get("member")
    member = who if isinstance(who, str) else None
    detail = dict(tx.detail)
    if member is not None:
        detail["member"] = names.member(member)
    return TransactionOut(
        id=tx.id,
        ts_ms=tx.ts_ms,
        kind=tx.kind,
        key=names.text(tx.key, member),
        memo=names.text(tx.memo, member),
        policy=tx.policy,
        postings=[PostingOut(account=names.account(p.account), amount=money(p.amount)) for p in tx.postings],
        detail=detail,
        reverses=tx.reverses,
    )


def _contribution_out(c: Contribution) -> ContributionOut:
    return ContributionOut(
        id=c.id, member=c.member, amount=money(c.amount), category=c.category, note=c.note,
        requested_by=c.requested_by, status=c.status, decided_by=c.decided_by, tx_id=c.tx_id,
    )  # fmt: skip


def operator_name(principal: Principal) -> str:
    """Who grants or approves: the token's member, else the token (two tokens of one member are one operator)."""
    return principal.member_id or f"token:{principal.token_id}"


def _visible_member(principal: Principal, people: PeopleDep, member_id: str) -> None:
    if not may_see(principal, member_id) or people.member(member_id) is None:
        raise HTTPException(404, f"no member {member_id!r}")


# -- routes ------------------------------------------------------------------------------------------


@router.get("/ledger/balances")
def balances(ledger: LedgerDep, _reader: Reader, names: NamingDep) -> list[AccountBalance]:
    """Every account's balance (members under pseudonyms for auditors)."""
    rows = [AccountBalance(account=names.account(a), balance=money(n)) for a, n in ledger.balances().items()]
    return sorted(rows, key=lambda r: r.account)


@router.get("/ledger/members/{member_id}")
def member_ledger(
    member_id: MemberId, ledger: LedgerDep, principal: CurrentPrincipal, people: PeopleDep, names: NamingDep
) -> MemberAccount:
    """A member's balance, credit limit and latest transactions; a member token reads only its own."""
    _visible_member(principal, people, member_id)
    account = member_account(member_id)
    recent: collections.deque[Transaction] = collections.deque(maxlen=RECENT)
    after = 0
    while True:
        page = ledger.of_account(account, after=after, limit=MAX_LIMIT)
        recent.extend(page)
        if len(page) < MAX_LIMIT:
            break
        after = page[-1].id
    return MemberAccount(
        member_id=names.member(member_id),
        balance=money(ledger.running_balance(account)),
        credit_limit=money(ledger.policy.credit_limit_mcr(member_id)),
        may_start_session=ledger.can_start_session(member_id),
        transactions=[_tx_out(tx, names) for tx in recent],
    )


@router.get("/ledger/transactions")
def transactions(
    ledger: LedgerDep,
    _reader: Reader,
    names: NamingDep,
    after: Annotated[int, Query(ge=0, le=2**53, description="transactions with an id above this")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
) -> list[TransactionOut]:
    """Transactions in order (auditors: members under pseudonyms)."""
    return [_tx_out(tx, names) for tx in ledger.transactions(after, limit)]


@router.get("/ledger/contributions")
def contributions(ledger: LedgerDep, _reader: Reader) -> list[ContributionOut]:
    """Every contribution, pending, posted or rejected."""
    return [_contribution_out(c) for c in ledger.contributions()]


@router.post("/ledger/contributions", status_code=201)
def grant(body: NewContribution, ledger: LedgerDep, principal: Manager, people: PeopleDep) -> ContributionOut:
    """Credit a member for a contribution; above the policy's threshold it waits for a second operator."""
    if people.member(body.member) is None:
        raise HTTPException(404, f"no member {body.member!r}")
    try:
        found = ledger.grant_contribution(
            body.member, body.amount_mcr, body.category, body.note, by=operator_name(principal)
        )
    except LedgerError as exc:
        raise HTTPException(409, str(exc)) from None
    return _contribution_out(found)


@router.post("/ledger/contributions/{contribution_id}/approve")
def approve(
    contribution_id: Annotated[int, Path(ge=1, le=2**53)], ledger: LedgerDep, principal: Manager
) -> ContributionOut:
    """A second operator (not the one who granted it) approves a pending contribution."""
    try:
        ledger.contribution(contribution_id)
    except LedgerError:
        raise HTTPException(404, f"no contribution {contribution_id}") from None
    try:
        return _contribution_out(ledger.approve_contribution(contribution_id, by=operator_name(principal)))
    except LedgerError as exc:
        raise HTTPException(409, str(exc)) from None


@router.get("/sessions/{session_id}/receipt")
def receipt(
    session_id: Annotated[str, Path(min_length=1, max_length=200)],
    request: Request,
    ledger: LedgerDep,
    principal: CurrentPrincipal,
    names: NamingDep,
) -> dict[str, Any]:
    """The receipt of a charged session (as published on the machine's topic)."""
    tx = ledger.by_key(f"charge:{session_id}")
    member = tx.detail.get("member") if tx is not None else None
    if tx is None or not isinstance(member, str) or not may_see(principal, member):
        raise HTTPException(404, f"no receipt for session {session_id!r}")
    found = _receipt_row(get_gateway(request).config.journal.path, session_id, tx.ts_ms / 1000 - 1)
    if found is None:
        raise HTTPException(404, f"the receipt of session {session_id!r} is not written yet")
    return {**found, "member_id": names.member(member)}


def _receipt_row(path: FilePath, session_id: str, since: float) -> dict[str, Any] | None:
    with Journal(path, readonly=True) as journal:
        after = 0
        while True:
            rows = journal.events(RECEIPT_EVENT, after=after, limit=MAX_LIMIT, since=since)
            for row in rows:
                doc: dict[str, Any] = json.loads(str(row[5]))
                if doc.get("session_id") == session_id:
                    return doc
            if len(rows) < MAX_LIMIT:
                return None
            after = rows[-1][0]
