"""Who is calling the API, and what that caller may do.

Every route but two asks for `Authorization: Bearer cw_<id>_<secret>`, a token made with
`commonwatt tokens create --role ROLE [--member ID]` and checked against its hash in the
people store. A missing, malformed, unknown or revoked token is answered 401 with
`WWW-Authenticate: Bearer`; a valid token whose role may not do something, 403 with the
reason.

What each role may do:

| role     | reads                          | changes                                        |
| -------- | ------------------------------ | ---------------------------------------------- |
| member   | its own member's data only     | nothing                                        |
| trainer  | its own member's data only     | grants and revokes trainings                   |
| auditor  | everything                     | nothing                                        |
| operator | everything                     | members, badges, trainings, machines           |
| admin    | everything                     | everything an operator changes                 |

"Its own data" is the member named by the token (`--member`): that member's record,
badges, trainings and sessions, and its member id where a machine shows who uses or
reserved it. A token without a member and without a reading role sees no member data.

Open without a token, for monitoring: `/metrics` (counters and device last-seen times for
a scraper) and `/api/v1/health` (sources, sinks, devices). Neither names a member.

One `People` store per app, shared by the request threads (it holds a lock around its
one SQLite connection): checking a token on it takes about 0.04 ms. Opening a store per
request took about 2.7 ms here, and runs its schema check, a write transaction, on every
call, competing with the journal writer for the file.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from gateway.api.deps import get_gateway
from gateway.people import People, Principal

#: Roles that read every member's data.
READ_ALL = frozenset({"operator", "auditor", "admin"})
#: Roles that change members, badges and machines.
MANAGE = frozenset({"operator", "admin"})
#: Roles that grant and revoke trainings.
TRAIN = frozenset({"trainer", "operator", "admin"})

_bearer = HTTPBearer(auto_error=False, description="a token from `commonwatt tokens create`")
_people_lock = threading.Lock()


class Problem(BaseModel):
    """Every error: the reason, or the list of reasons for a request that failed validation."""

    detail: str | list[str]


#: The error responses every route documents (the app answers validation errors with a list of reasons).
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "description": text}
    for code, text in (
        (400, "the body is not valid JSON"),
        (401, "no valid bearer token"),
        (403, "the token's role may not do this"),
        (404, "no such resource (or not visible to this token)"),
        (422, "invalid input; `detail` lists the reasons"),
    )
}
#: Changes the current state refuses (a taken id, a badge in use, nothing to end).
CONFLICT: dict[int | str, dict[str, Any]] = {409: {"model": Problem, "description": "refused in the current state"}}


def get_people(request: Request) -> People:
    """The app's people store, opened on first use."""
    state = request.app.state
    people: People | None = getattr(state, "people", None)
    if people is None:
        with _people_lock:
            people = getattr(state, "people", None)
            if people is None:
                people = People(get_gateway(request).config.journal.path)
                state.people = people
    return people


PeopleDep = Annotated[People, Depends(get_people)]


def unauthorized(reason: str) -> HTTPException:
    return HTTPException(401, reason, headers={"WWW-Authenticate": "Bearer"})


def current_principal(
    people: PeopleDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller, from its bearer token; 401 without a valid one."""
    if credentials is None:
        raise unauthorized("send a token: Authorization: Bearer cw_<id>_<secret>")
    principal = people.authenticate(credentials.credentials)
    if principal is None:
        raise unauthorized("the token is unknown, revoked, malformed, or its member is inactive")
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def require(roles: frozenset[str], what: str) -> Callable[[Principal], Principal]:
    """A dependency admitting only tokens of `roles`; 403 naming `what` they may not do."""

    def check(principal: CurrentPrincipal) -> Principal:
        if principal.role not in roles:
            allowed = ", ".join(sorted(roles))
            raise HTTPException(403, f"a {principal.role} token may not {what}; this takes {allowed}")
        return principal

    return check


Manager = Annotated[Principal, Depends(require(MANAGE, "change members, badges or machines"))]
Trainer = Annotated[Principal, Depends(require(TRAIN, "grant or revoke trainings"))]
Reader = Annotated[Principal, Depends(require(READ_ALL, "read every member's data"))]


def sees_everyone(principal: Principal) -> bool:
    return principal.role in READ_ALL


def may_see(principal: Principal, member_id: str | None) -> bool:
    """Whether the caller may see data of `member_id` (None: data of nobody in particular)."""
    return member_id is None or sees_everyone(principal) or principal.member_id == member_id


def shown(principal: Principal, member_id: str | None) -> str | None:
    """`member_id` if the caller may see it, else None."""
    return member_id if may_see(principal, member_id) else None


def actor(principal: Principal) -> str:
    """How a change made through the API is journaled: the token, and its member if it has one."""
    who = f"api:{principal.token_id}"
    return who if principal.member_id is None else f"{who}:{principal.member_id}"
