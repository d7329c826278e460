"""/api/v1/.../statements and /api/v1/reports: the monthly documents of `commonwatt statement` and `report community`.

The same documents as the CLI (`gateway.statements`), made from the gateway's database
on each request, in `?format=json` (the default), `csv` or `html`. CSV and HTML come with
a `Content-Disposition` file name, so a browser saves them as a file.

- `GET /api/v1/members/{member_id}/statements/{month}`: a member's month. A member (or
  trainer) token reads only its own member's; another's is a 404, the same answer as for
  a member who does not exist. Operators and admins read anyone's. Auditors read anyone's
  with the member under its pseudonym (the site's energy pseudonym, as in the ledger
  routes and the community report): the id and name, the ledger keys and memos that name
  the member, and the file name. The proofs in an auditor's copy keep only the leaf
  hash, not the transaction's bytes (which name the member); `audit check-proof`
  verifies a bundle from its leaf hash alone.
- `GET /api/v1/reports/community/{month}`: the community's month. Operators and admins
  get members by name, auditors by pseudonym; member and trainer tokens are refused (403).

A month is `YYYY-MM`, cut at local midnight in `site.timezone`; one the calendar cannot
hold (year 0, December 9999) is a 422 with the reason. A month without transactions is
an empty statement (opening = closing, no sessions), as the CLI writes it; a database
without a ledger is a 404 saying so.

A statement carries, when the site keeps an audit log, the inclusion proof of each of the
member's transactions under the latest signed checkpoint (the bundles
`/api/v1/audit/proof/{tx}` serves). The log is the audit service's when the gateway runs
one; asking for a statement never creates the log's signing key.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import Response

from gateway.api.auth import ERRORS, MANAGE, READ_ALL, CurrentPrincipal, PeopleDep, require
from gateway.api.deps import get_gateway
from gateway.api.routes.audit import get_audit_log
from gateway.api.routes.ledger import Naming, NamingDep
from gateway.api.routes.members import MemberId, visible_member
from gateway.audit.log import key_path_of
from gateway.people import Principal
from gateway.statements import (
    Inclusion,
    StatementError,
    community_report,
    member_statement,
    month_of,
    render,
)

router = APIRouter(prefix="/api/v1", tags=["statements"], responses=ERRORS)

Format = Literal["json", "csv", "html"]
MEDIA = {"json": "application/json", "csv": "text/csv; charset=utf-8", "html": "text/html; charset=utf-8"}
MonthName = Annotated[
    str,
    Path(pattern=r"^\d{4}-(0[1-9]|1[0-2])$", description="YYYY-MM, cut at local midnight in the site's time zone"),
]
FormatQuery = Annotated[Format, Query(alias="format", description="json (default), csv or html")]
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")

Community = Annotated[Principal, Depends(require(READ_ALL, "read the community report"))]


def _document(kind: str, required: list[str]) -> dict[int | str, dict[str, Any]]:
    """The 200 answer in its three formats, for the OpenAPI schema."""
    return {
        200: {
            "description": f"the {kind} as JSON, or as a CSV or HTML file",
            "content": {
                "application/json": {"schema": {"type": "object", "required": required}},
                "text/csv": {"schema": {"type": "string"}},
                "text/html": {"schema": {"type": "string"}},
            },
        },
        503: {"description": "the database could not be read now (locked); try again"},
    }


STATEMENT_DOC = _document(
    "member statement", ["type", "site", "member", "month", "sessions", "totals", "credits", "postings", "proofs"]
)
COMMUNITY_DOC = _document("community report", ["type", "site", "month", "energy", "credits", "balances"])


def checked_month(name: str, timezone: str) -> None:
    """422 with the reason for a month the calendar cannot hold in the site's time zone."""
    try:
        month = month_of(name, timezone)
        for edge in (month.since, month.until):  # the calendar's ends: year 0, year 10000
            month.local(edge)
    except (StatementError, ValueError, OverflowError, OSError) as exc:
        raise HTTPException(422, f"month {name!r}: {exc}") from None


def statement_inclusion(request: Request) -> Inclusion | None:
    """The audit log's proof maker, when the site keeps one (never creates its key)."""
    gateway = get_gateway(request)
    opened = getattr(gateway, "audit", None) is not None or getattr(request.app.state, "audit_log", None) is not None
    if not opened and not key_path_of(gateway.config).exists():
        return None
    return get_audit_log(request).inclusion


def pseudonymized(doc: Mapping[str, Any], member_id: str, names: Naming) -> dict[str, Any]:
    """An auditor's copy of a member statement: the member under its pseudonym, proofs by leaf hash only."""
    alias = names.member(member_id)
    out = dict(doc)
    out["member"] = {"id": alias, "name": alias}
    out["postings"] = [
        {**p, "key": names.text(p["key"], member_id), "memo": names.text(p["memo"], member_id)} for p in doc["postings"]
    ]
    proofs = doc["proofs"]
    if proofs is not None:
        bundles = [{k: v for k, v in b.items() if k != "leaf"} for b in proofs["bundles"]]
        out["proofs"] = {**proofs, "bundles": bundles}
    return out


def as_file(doc: Mapping[str, Any], fmt: Format, stem: str) -> Response:
    """The document in `fmt`; CSV and HTML with a file name to save it under."""
    headers = {}
    if fmt != "json":
        headers["Content-Disposition"] = f'attachment; filename="{_UNSAFE.sub("_", stem)}.{fmt}"'
    return Response(render(doc, fmt), media_type=MEDIA[fmt], headers=headers)


@contextlib.contextmanager
def _answered() -> Iterator[None]:
    """A database without a ledger (or a member gone meanwhile) is a 404; one that cannot be read now, a 503."""
    try:
        yield
    except StatementError as exc:
        raise HTTPException(404, str(exc)) from None
    except sqlite3.OperationalError as exc:
        raise HTTPException(503, f"the database could not be read ({exc}); try again") from None


@router.get("/members/{member_id}/statements/{month}", response_class=Response, responses=STATEMENT_DOC)
def statement(
    member_id: MemberId,
    month: MonthName,
    request: Request,
    principal: CurrentPrincipal,
    people: PeopleDep,
    names: NamingDep,
    fmt: FormatQuery = "json",
) -> Response:
    """A member's month: sessions, kWh by source, CO₂, credits, every posting, and the proofs."""
    visible_member(people, principal, member_id)
    config = get_gateway(request).config
    checked_month(month, config.site.timezone)
    with _answered():
        doc = member_statement(config, member_id, month, inclusion=statement_inclusion(request))
    if names.secret is not None:
        doc = pseudonymized(doc, member_id, names)
    return as_file(doc, fmt, f"statement-{doc['member']['id']}-{month}")


@router.get("/reports/community/{month}", response_class=Response, responses=COMMUNITY_DOC)
def community(
    month: MonthName,
    request: Request,
    principal: Community,
    fmt: FormatQuery = "json",
) -> Response:
    """The community's month: energy balance and residual, base load, credits issued and spent, balances."""
    config = get_gateway(request).config
    checked_month(month, config.site.timezone)
    with _answered():
        doc = community_report(config, month, names=principal.role in MANAGE)
    return as_file(doc, fmt, f"community-{month}")
