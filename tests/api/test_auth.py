"""Tokens and roles: who gets in, who may do what, and that a member token never reads another member's data."""

from __future__ import annotations

import re
import time
from typing import Any, cast

import pytest
from fastapi.routing import APIRoute
from starlette.routing import Route

from gateway.app import Gateway
from gateway.people import People
from tests.api.conftest import Lab, api_app

#: Routes anyone may call, for monitoring and for the API's own documentation.
OPEN = {
    "/metrics",
    "/api/v1/health",
    "/api/v1/readings/latest",
    "/api/openapi.json",
    "/api/docs",
    "/docs/oauth2-redirect",
    "/redoc",
}


def all_routes() -> list[tuple[str, str]]:
    """(method, path) of every route the app serves: its API routes as its OpenAPI schema lists
    them (included routers are not plain entries of `app.routes` in this FastAPI), and the
    documentation routes."""
    app = api_app(cast(Gateway, None))  # routes only; nothing is called
    out = [(m.upper(), path) for path, ops in app.openapi()["paths"].items() for m in ops]
    for route in app.routes:
        if isinstance(route, Route) and not isinstance(route, APIRoute):
            out += [(m, route.path) for m in sorted(route.methods or ()) if m != "HEAD"]
    return sorted(out)


ROUTES = all_routes()
PROTECTED = [(m, p) for m, p in ROUTES if p not in OPEN]

#: For each route, the request a member token (ada) makes to reach at bob's data:
#: path parameters, query and body. A route missing here fails the isolation test.
REACH_FOR_BOB: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/api/v1/audit/checkpoints"): {},
    ("GET", "/api/v1/audit/checkpoints/latest"): {},
    ("GET", "/api/v1/audit/proof/{tx_id}"): {},
    ("GET", "/api/v1/audit/consistency"): {"query": {"from": "0"}},
    ("GET", "/api/v1/audit/key"): {},
    ("GET", "/api/v1/ledger/balances"): {},
    ("GET", "/api/v1/ledger/members/{member_id}"): {},
    ("GET", "/api/v1/ledger/transactions"): {"query": {"after": 0, "limit": 1000}},
    ("GET", "/api/v1/ledger/contributions"): {},
    ("POST", "/api/v1/ledger/contributions"): {"json": {"member": "bob", "amount_mcr": 1000, "category": "help"}},
    ("POST", "/api/v1/ledger/contributions/{contribution_id}/approve"): {},
    ("GET", "/api/v1/sessions/{session_id}/receipt"): {},
    ("GET", "/api/v1/energy/balance"): {},
    ("GET", "/api/v1/members/{member_id}/energy"): {},
    ("GET", "/metrics"): {},
    ("GET", "/api/v1/health"): {},
    ("GET", "/api/openapi.json"): {},
    ("GET", "/api/docs"): {},
    ("GET", "/docs/oauth2-redirect"): {},
    ("GET", "/redoc"): {},
    ("GET", "/api/v1/readings/latest"): {},
    ("GET", "/api/v1/members"): {"query": {"status": "active"}},
    ("POST", "/api/v1/members"): {"json": {"id": "bob", "name": "Bob"}},
    ("GET", "/api/v1/members/{member_id}"): {},
    ("PATCH", "/api/v1/members/{member_id}"): {"json": {"name": "Robert"}},
    ("POST", "/api/v1/members/{member_id}/badges"): {"json": {"uid": "0B0B0B0C"}},
    ("DELETE", "/api/v1/members/{member_id}/badges/{uid}"): {},
    ("POST", "/api/v1/members/{member_id}/trainings"): {"json": {"training": "cnc"}},
    ("DELETE", "/api/v1/members/{member_id}/trainings/{training}"): {},
    ("GET", "/api/v1/machines"): {},
    ("GET", "/api/v1/machines/{machine_id}"): {},
    ("POST", "/api/v1/machines/{machine_id}/state"): {"json": {"state": "blocked"}},
    ("POST", "/api/v1/machines/{machine_id}/override"): {"json": {"state": "blocked", "minutes": 5}},
    ("DELETE", "/api/v1/machines/{machine_id}/session"): {},
    ("POST", "/api/v1/machines/{machine_id}/reservation"): {"json": {"member_id": "bob", "minutes": 5}},
    ("DELETE", "/api/v1/machines/{machine_id}/reservation"): {},
    ("GET", "/api/v1/sessions"): {"query": {"member": "bob"}},
    ("GET", "/api/v1/alerts"): {},
    ("GET", "/api/v1/members/{member_id}/statements/{month}"): {"query": {"format": "csv"}},
    ("GET", "/api/v1/reports/community/{month}"): {},
}
PATH_VALUES = {
    "member_id": "bob",
    "uid": "0B0B0B0B",
    "training": "laser",
    "machine_id": "cnc",
    "contribution_id": "1",
    "session_id": "cnc-1",
    "tx_id": "1",
    "month": time.strftime("%Y-%m", time.gmtime()),
}


def bob_markers(lab: Lab) -> list[str]:
    """What would give bob's data away: his id, his badge, his sessions' ids."""
    sessions = lab.get("/api/v1/sessions", "admin", params={"member": "bob"}).json()
    assert sessions, "the lab gives bob sessions"
    return ["bob", "0B0B0B0B", *(s["session_id"] for s in sessions)]


def call(lab: Lab, method: str, path: str, token: str, who: str = "bob") -> Any:
    spec = REACH_FOR_BOB[(method, path)]
    values = {**PATH_VALUES, "member_id": who}
    url = re.sub(r"\{(\w+)\}", lambda m: values[m[1]], path)

    def subst(d: dict[str, Any]) -> dict[str, Any]:
        return {k: (who if v == "bob" else v) for k, v in d.items()}

    return lab.client.request(
        method,
        url,
        headers=lab.headers(token),
        params=subst(spec.get("query", {})),
        json=subst(spec["json"]) if "json" in spec else None,
    )


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_a_member_token_never_reads_another_members_data(shared_lab: Lab, method: str, path: str) -> None:
    assert (method, path) in REACH_FOR_BOB, f"new route {method} {path}: say how a member token reaches for bob"
    lab = shared_lab
    markers = bob_markers(lab)
    response = call(lab, method, path, "ada")
    assert response.status_code < 500
    if response.status_code >= 400:
        # Refused: the same answer as for a member who does not exist, nothing of bob's in it.
        nobody = call(lab, method, path, "ada", who="nobody")
        assert response.status_code == nobody.status_code
        assert response.json() == nobody.json() or "bob" not in response.text.replace("'bob'", "")
        assert not any(m in response.text for m in markers[1:])
    else:
        assert not any(m in response.text for m in markers), response.text
    assert lab.get("/api/v1/members/bob", "admin").json()["name"] == "Bob"  # and nothing of bob's changed


@pytest.mark.parametrize(("method", "path"), PROTECTED, ids=[f"{m} {p}" for m, p in PROTECTED])
def test_every_route_but_the_open_ones_wants_a_token(shared_lab: Lab, method: str, path: str) -> None:
    url = re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES[m[1]], path)
    for headers in ({}, {"Authorization": "Bearer cw_0000000000_" + "0" * 64}, {"Authorization": "Basic YTpi"}):
        response = shared_lab.client.request(method, url, headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert response.json()["detail"]


@pytest.mark.parametrize("path", ["/metrics", "/api/v1/health"])
def test_monitoring_needs_no_token(shared_lab: Lab, path: str) -> None:
    assert shared_lab.client.get(path).status_code == 200


def test_a_revoked_token_and_an_inactive_members_token_stop_working(lab: Lab) -> None:
    assert lab.get("/api/v1/members/bob", "bob").status_code == 200
    with People(lab.gateway.config.journal.path) as people:
        people.disable_member("bob")
        token_id = lab.tokens["auditor"].split("_")[1]
        people.revoke_token(token_id)
    for token in ("bob", "auditor"):
        response = lab.get("/api/v1/machines", token)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("token", "method", "path", "body"),
    [
        ("ada", "POST", "/api/v1/members", {"id": "eve", "name": "Eve"}),
        ("auditor", "POST", "/api/v1/members", {"id": "eve", "name": "Eve"}),
        ("trainer", "POST", "/api/v1/machines/laser/state", {"state": "blocked"}),
        ("auditor", "DELETE", "/api/v1/machines/laser/reservation", None),
        ("ada", "POST", "/api/v1/members/ada/trainings", {"training": "cnc"}),
        ("ada", "GET", "/api/v1/alerts", None),
        ("trainer", "GET", "/api/v1/alerts", None),
    ],
)
def test_a_role_that_may_not_gets_403_with_the_reason(
    shared_lab: Lab, token: str, method: str, path: str, body: Any
) -> None:
    response = shared_lab.client.request(method, path, headers=shared_lab.headers(token), json=body)
    assert response.status_code == 403
    assert "may not" in response.json()["detail"]


def test_one_people_store_serves_every_request(shared_lab: Lab) -> None:
    shared_lab.get("/api/v1/members", "ada")
    first = shared_lab.app.state.people
    shared_lab.get("/api/v1/members", "bob")
    assert shared_lab.app.state.people is first
