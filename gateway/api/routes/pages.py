"""The gateway's own pages, and the live feed they listen to.

For labs without Grafana, the gateway serves three plain pages (HTML, CSS and a little
JavaScript in `gateway/api/pages/`, no build step, nothing fetched from elsewhere):

| page                   | for                        | shows                                                     |
| ---------------------- | -------------------------- | --------------------------------------------------------- |
| `/`                    | operators                  | machines and their state, site power now, badges, alerts  |
| `/kiosk/{machine_id}`  | a display at the machine   | who is on it, session time and kWh, the receipt at the end |
| `/me`                  | a member                   | my sessions; statement and proofs when the ledger is on   |

The pages themselves are public: they hold no data. Each asks once for a token (kept in
the browser's localStorage) and reads the API with it, so a page shows exactly what that
token may read (see `gateway.api.auth`).

The kiosk and privacy. A kiosk shows the first name of the member whose session is open
on *its* machine (the person standing at it, whom everyone in the room sees anyway; the
display confirms their badge worked), the session's time and kWh, and at the end the
receipt, for two minutes or until the next session. It never shows a badge number, nor
anything about another machine or another member. Give the display an `auditor` token:
it only reads, and a member or trainer token would show only "in use" for other members'
sessions. The browser keeps that token, so put kiosk displays where only the lab reaches
their settings, and revoke the token when a display is retired.

The member page offers the statement and proofs only when the gateway keeps the credit
ledger (it then answers `/api/v1/audit/checkpoints`); otherwise it says plainly that the
ledger is not enabled on this gateway.

The live feed, `GET /api/v1/events/stream`, is Server-Sent Events (`text/event-stream`):

| event            | data                                                           | who gets it                 |
| ---------------- | -------------------------------------------------------------- | --------------------------- |
| `machine`        | a machine as `/api/v1/machines/{id}` shows it to this token:   | any token                   |
|                  | every machine on connect, then each one whenever it changes    |                             |
| `now`            | site power per device role, battery charge, where the supply   | any token                   |
|                  | comes from (sun, battery, grid); every `NOW_S`                 |                             |
| `access`         | a badge at a machine and what came of it                       | readers; a member: its own  |
| `session_opened` | a session begins                                               | readers; a member: its own  |
| `session_closed` | a session ends: the receipt                                    | readers; a member: its own  |
| `alert`          | unauthorized use, a relay that did not confirm, a silent device | operators, auditors, admins |
| `machine_state`  | an operator or an override changed a machine's state           | operators, auditors, admins |

"Readers" are the roles that read every member's data (operator, auditor, admin); only
they get the badge UID of an access event (to enroll an unknown badge).

`?machine=ID` keeps only that machine's events (what a kiosk needs). After a reconnect
the stream starts again with every machine, so a page never shows a stale state; the
operator page reloads its alert list then.

The token: a browser's `EventSource` cannot send an `Authorization` header, so this one
route also accepts the token as `?token=`. A query string can end up in a proxy's access
log, which is why no other route takes it; the stream only reads, and a token is revoked
with `commonwatt tokens revoke`. The header works here too (curl, scripts).

Each open stream follows the floor's event rows in the journal on a thread of its own
(a sqlite3 connection stays in the thread that opened it), every `POLL_S`: a badge shows
on the pages a fraction of a second after the floor decided it. Routes of this module
are left out of the OpenAPI schema: pages are not API operations, and a stream that
never ends cannot be exercised by a schema-driven test.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.aio import wait_event
from gateway.api.auth import PeopleDep, may_see, sees_everyone, unauthorized
from gateway.api.deps import GatewayDep
from gateway.api.routes.machines import machine_out
from gateway.app import Gateway
from gateway.journal import Journal, Row
from gateway.model import iso
from gateway.people import Principal

router = APIRouter(include_in_schema=False)

PAGES = Path(__file__).resolve().parent.parent / "pages"
#: The files under /pages/, with their content types; nothing else is served from the folder.
ASSETS = {
    "style.css": "text/css; charset=utf-8",
    "common.js": "text/javascript; charset=utf-8",
    "operator.js": "text/javascript; charset=utf-8",
    "kiosk.js": "text/javascript; charset=utf-8",
    "me.js": "text/javascript; charset=utf-8",
}
#: Pages load nothing from elsewhere, and run no inline script.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

#: How often a stream looks for new events and machine changes.
POLL_S = 0.2
#: How often a stream sends the `now` snapshot of site power.
NOW_S = 2.0
#: A comment line this often keeps proxies from closing a quiet stream.
KEEPALIVE_S = 15.0
#: The floor's journal events a stream forwards (others, like training grants, stay in the API).
EVENT_KINDS = ("access", "session_opened", "session_closed", "alert", "machine_state")
#: Roles whose devices' `power_w` make up the `now` snapshot.
POWER_ROLES = ("pv", "battery", "grid", "site_load", "machine")

_bearer = HTTPBearer(auto_error=False)


# -- pages ------------------------------------------------------------------------------------


@cache
def _file(name: str) -> bytes:
    return (PAGES / name).read_bytes()


def _page(name: str) -> HTMLResponse:
    return HTMLResponse(_file(name), headers=HEADERS)


@router.get("/", response_class=HTMLResponse)
def operator_page() -> HTMLResponse:
    """Machines, site power now, badges and alerts, live."""
    return _page("operator.html")


@router.get("/kiosk/{machine_id}", response_class=HTMLResponse)
def kiosk_page(machine_id: str, gateway: GatewayDep) -> HTMLResponse:
    """The display at one machine; 404 for a machine commonwatt.toml does not name."""
    if machine_id not in {m.id for m in gateway.config.machines}:
        raise HTTPException(404, f"no machine {machine_id!r}")
    return _page("kiosk.html")


@router.get("/me", response_class=HTMLResponse)
def member_page() -> HTMLResponse:
    """A member's own sessions, statement and proofs."""
    return _page("me.html")


@router.get("/pages/{name}")
def asset(name: str) -> Response:
    """The pages' scripts and style sheet."""
    if name not in ASSETS:
        raise HTTPException(404, f"no file {name!r}")
    return Response(_file(name), media_type=ASSETS[name], headers=HEADERS)


# -- who is listening -------------------------------------------------------------------------


def stream_principal(
    people: PeopleDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    token: Annotated[str | None, Query(max_length=200, description="for EventSource, which sends no header")] = None,
) -> Principal:
    """The caller, from the Authorization header or `?token=`; 401 without a valid one."""
    secret = credentials.credentials if credentials is not None else token
    if not secret:
        raise unauthorized("send a token: Authorization: Bearer cw_<id>_<secret>, or ?token= for EventSource")
    principal = people.authenticate(secret)
    if principal is None:
        raise unauthorized("the token is unknown, revoked, malformed, or its member is inactive")
    return principal


# -- what a stream sends ----------------------------------------------------------------------


def sse(event: str, data: Any, event_id: int | None = None) -> str:
    """One Server-Sent Event; `data` as JSON on one line."""
    head = "" if event_id is None else f"id: {event_id}\n"
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def visible(principal: Principal, kind: str, data: dict[str, Any]) -> dict[str, Any] | None:
    """A journal event as this token may see it, or None when it may not see it at all."""
    if kind in ("alert", "machine_state"):
        return _stamped(data) if sees_everyone(principal) else None
    member = data.get("member_id")
    if not sees_everyone(principal) and (member is None or not may_see(principal, member)):
        return None
    out = _stamped(data)
    if kind == "access" and not sees_everyone(principal):
        out.pop("badge_uid", None)
    return out


def _stamped(data: dict[str, Any]) -> dict[str, Any]:
    """The event with its instants as ISO 8601, as the API gives them."""
    out = dict(data)
    for key in ("ts", "start", "end", "until"):
        if isinstance(out.get(key), int | float):
            out[key] = iso(float(out[key]))
    return out


def power_now(gateway: Gateway, now: float) -> dict[str, Any]:
    """Site power per device role from the live view, leaving out devices silent too long."""
    roles: dict[str, float] = {}
    soc: list[float] = []
    for dev in gateway.config.devices:
        live = gateway.live.devices.get(dev.id)
        if live is None or dev.role not in POWER_ROLES:
            continue
        for metric, (ts, value) in live.latest.items():
            if now - ts > dev.silent_after_s:
                continue
            if metric == "power_w" or (metric == "pv_power_w" and dev.role == "pv" and "power_w" not in live.latest):
                roles[dev.role] = roles.get(dev.role, 0.0) + value
            elif metric == "soc_pct" and dev.role == "battery":
                soc.append(value)
    return {
        "ts": iso(now),
        "power_w": {role: round(w, 1) for role, w in roles.items()},
        "soc_pct": round(sum(soc) / len(soc), 1) if soc else None,
        "supply": supply_shares(roles),
    }


def supply_shares(power_w: dict[str, float]) -> dict[str, float] | None:
    """Where the site's power comes from right now: sun, battery (discharging), grid (importing).

    Shares of 1; None when nothing is known to supply. (Battery power is + when charging,
    grid power + when importing: `gateway.quantities`.)
    """
    sources = {
        "sun": max(power_w.get("pv", 0.0), 0.0),
        "battery": max(-power_w.get("battery", 0.0), 0.0),
        "grid": max(power_w.get("grid", 0.0), 0.0),
    }
    total = sum(sources.values())
    return None if total <= 0 else {k: round(v / total, 3) for k, v in sources.items()}


class EventReader:
    """Follows the floor's event rows in the journal, from the moment it opens, on its own thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.position = 0
        self._journal: Journal | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="events")

    async def __aenter__(self) -> EventReader:
        await self._run(self._open)
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self._run(self._close)
        finally:
            self._executor.shutdown(wait=False)

    async def _run(self, fn: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def _open(self) -> None:
        self._journal = Journal(self.path, readonly=True)
        self.position = self._journal.last_seq()

    def _close(self) -> None:
        if self._journal is not None:
            self._journal.close()

    async def new_events(self) -> list[Row]:
        rows: list[Row] = await self._run(self._read)
        return rows

    def _read(self) -> list[Row]:
        assert self._journal is not None
        rows = [r for kind in EVENT_KINDS for r in self._journal.events(f"event.{kind}", after=self.position)]
        rows.sort(key=lambda r: r[0])
        if rows:
            self.position = rows[-1][0]
        return rows


class Stream:
    """One open stream: what this token sees, and the machines as it last sent them."""

    def __init__(self, gateway: Gateway, principal: Principal, machine: str | None) -> None:
        self.gateway = gateway
        self.principal = principal
        self.machine = machine
        self.sent: dict[str, dict[str, Any]] = {}

    def machine_changes(self) -> list[str]:
        gateway, floor = self.gateway, self.gateway.floor
        if floor is None:
            return []
        out = []
        for m in gateway.config.machines:
            if self.machine not in (None, m.id):
                continue
            now = machine_out(gateway, floor.machine_view(m.id), self.principal).model_dump()
            if self.sent.get(m.id) != now:
                self.sent[m.id] = now
                out.append(sse("machine", now))
        return out

    def events(self, rows: list[Row]) -> list[str]:
        out = []
        for seq, _ts, _device, metric, _value, text in rows:
            kind = metric.removeprefix("event.")
            data = json.loads(str(text))
            if self.machine not in (None, data.get("machine_id")):
                continue
            shown = visible(self.principal, kind, data)
            if shown is not None:
                out.append(sse(kind, shown, seq))
        return out

    def now(self) -> str:
        return sse("now", power_now(self.gateway, time.time()))


async def _feed(request: Request, stream: Stream) -> AsyncIterator[str]:
    async with EventReader(stream.gateway.config.journal.path) as reader:
        yield "retry: 2000\n\n"
        next_now = 0.0
        next_keepalive = time.monotonic() + KEEPALIVE_S
        while not await request.is_disconnected():
            chunks = stream.events(await reader.new_events()) + stream.machine_changes()
            if time.monotonic() >= next_now:
                chunks.append(stream.now())
                next_now = time.monotonic() + NOW_S
            if not chunks and time.monotonic() >= next_keepalive:
                chunks.append(": keepalive\n\n")
            if chunks:
                next_keepalive = time.monotonic() + KEEPALIVE_S
                yield "".join(chunks)
            if await _stopped(stream.gateway, POLL_S):
                return


async def _stopped(gateway: Gateway, wait_s: float) -> bool:
    """Wait `wait_s`; True at once when the gateway stops (its `stopping` event), so that open
    streams end cleanly rather than being cancelled with the event loop."""
    stopping: asyncio.Event | None = getattr(gateway, "stopping", None)
    if stopping is None:
        await asyncio.sleep(wait_s)
        return False
    return await wait_event(stopping, wait_s)


@router.get("/api/v1/events/stream")
async def event_stream(
    request: Request,
    gateway: GatewayDep,
    principal: Annotated[Principal, Depends(stream_principal)],
    machine: Annotated[str | None, Query(min_length=1, max_length=64, description="only this machine")] = None,
) -> StreamingResponse:
    """Server-Sent Events: machines as they change, badges, sessions, alerts, and site power now."""
    if machine is not None and machine not in {m.id for m in gateway.config.machines}:
        raise HTTPException(404, f"no machine {machine!r}")
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    feed = _feed(request, Stream(gateway, principal, machine))
    return StreamingResponse(feed, media_type="text/event-stream", headers=headers)
