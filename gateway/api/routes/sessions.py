"""/api/v1/sessions: who used which machine, when, for how long, and how much energy.

Finished sessions come from the journal (`event.session_closed` rows, written by the
machine floor); the sessions open right now come from the floor itself and have no end
yet. A period (`from`, `to`) selects the finished sessions that *ended* in it and the open
ones that started before its end: a session belongs to the period in which it was
settled, so consecutive periods never count one twice.

A token that does not read everyone's data (member, trainer) sees only its own member's
sessions: without `member` it gets those, and `member=` anyone else is a 403 (the same
answer whether that member exists or not).
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel

from gateway.api.auth import ERRORS, CurrentPrincipal, sees_everyone
from gateway.api.deps import GatewayDep
from gateway.app import Gateway
from gateway.journal import Journal
from gateway.model import iso

router = APIRouter(prefix="/api/v1", tags=["sessions"], responses=ERRORS)

SESSION_CLOSED = "event.session_closed"
#: Journal rows read per query while filtering.
_PAGE = 1000
MAX_LIMIT = 1000

_TIME_DOC = "ISO 8601 (2025-06-01T08:00:00Z, or a date: 2025-06-01, UTC) or unix seconds"


class SessionRow(BaseModel):
    session_id: str
    machine_id: str
    member_id: str
    start: str
    end: str | None
    end_reason: str | None
    busy_s: float
    idle_s: float
    energy_wh: float
    relay_unconfirmed: bool
    open: bool


def parse_instant(name: str, text: str | None) -> float | None:
    """Unix seconds from ISO 8601 (naive means UTC) or a number; 422 naming the parameter."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(text.strip())
        except ValueError:
            raise HTTPException(422, [f"{name}: {text!r} is not a time; use {_TIME_DOC}"]) from None
        value = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    if not math.isfinite(value) or not 0 <= value < 32_503_680_000:  # before the year 3000
        raise HTTPException(422, [f"{name}: {text!r} is outside 1970..2999"])
    return value


def period(start: str | None, end: str | None) -> tuple[float | None, float | None]:
    since, until = parse_instant("from", start), parse_instant("to", end)
    if since is not None and until is not None and until <= since:
        raise HTTPException(422, ["to: the period ends before it starts"])
    return since, until


def closed_sessions(
    gateway: Gateway, keep: dict[str, str | None], since: float | None, until: float | None, limit: int
) -> list[SessionRow]:
    """Finished sessions matching `keep` (field -> value, None: any), oldest first."""
    out: list[SessionRow] = []
    with Journal(gateway.config.journal.path, readonly=True) as journal:
        after = 0
        while len(out) < limit:
            rows = journal.events(SESSION_CLOSED, after=after, limit=_PAGE, since=since, until=until)
            for row in rows:
                data = json.loads(str(row[5]))
                if all(v is None or data.get(k) == v for k, v in keep.items()):
                    out.append(_closed(data))
            if len(rows) < _PAGE:
                break
            after = rows[-1][0]
    return out[:limit]


def _closed(d: dict[str, Any]) -> SessionRow:
    return SessionRow(
        session_id=d["session_id"], machine_id=d["machine_id"], member_id=d["member_id"], start=iso(d["start"]),
        end=iso(d["end"]), end_reason=d["end_reason"], busy_s=d["busy_s"], idle_s=d["idle_s"],
        energy_wh=d["energy_wh"], relay_unconfirmed=d["relay_unconfirmed"], open=False,
    )  # fmt: skip


def open_sessions(gateway: Gateway, keep: dict[str, str | None], until: float | None) -> list[SessionRow]:
    floor = gateway.floor
    if floor is None:
        return []
    out = []
    for m in gateway.config.machines:
        s = floor.machine_view(m.id).session
        if s is None or (until is not None and s.start >= until):
            continue
        row = SessionRow(
            session_id=s.session_id, machine_id=m.id, member_id=s.member_id, start=iso(s.start), end=None,
            end_reason=None, busy_s=s.busy_s, idle_s=s.idle_s, energy_wh=s.energy_wh,
            relay_unconfirmed=s.relay_unconfirmed, open=True,
        )  # fmt: skip
        if all(v is None or getattr(row, k) == v for k, v in keep.items()):
            out.append(row)
    return out


@router.get("/sessions")
def list_sessions(
    gateway: GatewayDep,
    principal: CurrentPrincipal,
    member: Annotated[str | None, Query(min_length=1, max_length=63, description="only this member's")] = None,
    machine: Annotated[str | None, Query(min_length=1, max_length=64, description="only on this machine")] = None,
    start: Annotated[str | None, Query(alias="from", max_length=40, description=f"period start: {_TIME_DOC}")] = None,
    end: Annotated[
        str | None, Query(alias="to", max_length=40, description=f"period end (excluded): {_TIME_DOC}")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
) -> list[SessionRow]:
    """Finished sessions (ended in the period, oldest first), then the open ones."""
    since, until = period(start, end)
    if not sees_everyone(principal):
        if member is not None and member != principal.member_id:
            raise HTTPException(403, "this token sees only its own member's sessions")
        if principal.member_id is None:
            return []
        member = principal.member_id
    keep = {"member_id": member, "machine_id": machine}
    rows = closed_sessions(gateway, keep, since, until, limit)
    return (rows + open_sessions(gateway, keep, until))[:limit]
