"""/api/v1/alerts: what the machine floor raised (unauthorized use, a relay that did not
confirm, a silent device), from the journal's `event.alert` rows.

For operators, auditors and admins: an alert may point at a session, and a session at
a member. Without `since`, the last 24 hours; oldest first.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel

from gateway.api.auth import ERRORS, Reader
from gateway.api.deps import GatewayDep
from gateway.api.routes.sessions import MAX_LIMIT, parse_instant
from gateway.journal import Journal
from gateway.model import iso

router = APIRouter(prefix="/api/v1", tags=["alerts"], responses=ERRORS)

ALERT = "event.alert"
DEFAULT_WINDOW_S = 24 * 3600.0
AlertKind = Literal["unauthorized_use", "relay_unconfirmed", "device_silent"]


class AlertOut(BaseModel):
    ts: str
    alert: str
    machine_id: str
    detail: str
    session_id: str | None


@router.get("/alerts")
def list_alerts(
    gateway: GatewayDep,
    _principal: Reader,
    since: Annotated[
        str | None, Query(max_length=40, description="ISO 8601 or unix seconds; default: 24 hours ago")
    ] = None,
    kind: Annotated[AlertKind | None, Query(description="only alerts of this kind")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
) -> list[AlertOut]:
    """Alerts raised since `since`, oldest first (operator, auditor, admin)."""
    start = parse_instant("since", since)
    start = time.time() - DEFAULT_WINDOW_S if start is None else start
    out: list[AlertOut] = []
    after = 0
    with Journal(gateway.config.journal.path, readonly=True) as journal:
        while len(out) < limit:
            rows = journal.events(ALERT, after=after, limit=MAX_LIMIT, since=start)
            for row in rows:
                data = json.loads(str(row[5]))
                if kind is None or data.get("alert") == kind:
                    out.append(_alert(data))
            if len(rows) < MAX_LIMIT:
                break
            after = rows[-1][0]
    return out[:limit]


def _alert(d: dict[str, Any]) -> AlertOut:
    return AlertOut(
        ts=iso(float(d["ts"])),
        alert=str(d["alert"]),
        machine_id=str(d["machine_id"]),
        detail=str(d["detail"]),
        session_id=None if d.get("session_id") is None else str(d["session_id"]),
    )
