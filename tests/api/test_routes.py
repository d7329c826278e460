"""Each route with the tokens that use it: what it answers, and the 4xx with a reason for what it refuses."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.config import parse_config
from gateway.model import Reading
from tests.api.conftest import Lab, api_app, running_gateway, seed_people, wait_for


def post(lab: Lab, path: str, token: str, body: Any) -> Any:
    return lab.client.post(path, json=body, headers=lab.headers(token))


def delete(lab: Lab, path: str, token: str, **kw: Any) -> Any:
    return lab.client.delete(path, headers=lab.headers(token), **kw)


# -- members ---------------------------------------------------------------------------------


def test_operators_list_every_member_and_a_member_only_itself(shared_lab: Lab) -> None:
    everyone = shared_lab.get("/api/v1/members", "operator").json()
    assert [m["id"] for m in everyone] == ["ada", "bob", "olga", "tess"]
    assert shared_lab.get("/api/v1/members", "ada").json() == [
        {"id": "ada", "name": "Ada", "status": "active", "roles": ["member"]}
    ]
    assert shared_lab.get("/api/v1/members", "ada", params={"status": "inactive"}).json() == []
    assert shared_lab.get("/api/v1/members", "admin", params={"status": "gone"}).status_code == 422


def test_a_member_reads_its_own_record_and_gets_404_for_anyone_else(shared_lab: Lab) -> None:
    own = shared_lab.get("/api/v1/members/ada", "ada").json()
    assert own["badges"] == [{"uid": "0A0A0A0A", "member_id": "ada", "status": "active"}]
    assert [t["training"] for t in own["trainings"]] == ["laser"]
    other, missing = shared_lab.get("/api/v1/members/bob", "ada"), shared_lab.get("/api/v1/members/zed", "ada")
    assert other.status_code == missing.status_code == 404
    assert shared_lab.get("/api/v1/members/bob", "auditor").json()["id"] == "bob"


def test_operators_add_and_change_members(lab: Lab) -> None:
    added = post(lab, "/api/v1/members", "operator", {"id": "eve", "name": "  Eve   Smith ", "roles": ["member"]})
    assert added.status_code == 201
    assert added.json() == {"id": "eve", "name": "Eve Smith", "status": "active", "roles": ["member"]}
    again = post(lab, "/api/v1/members", "operator", {"id": "eve", "name": "Eve"})
    assert again.status_code == 409 and "already exists" in again.json()["detail"]
    bad = post(lab, "/api/v1/members", "admin", {"id": "Eve!", "name": "Eve"})
    assert bad.status_code == 422 and "member id" in bad.json()["detail"][0]
    bad_role = post(lab, "/api/v1/members", "admin", {"id": "eve2", "name": "Eve", "roles": ["boss"]})
    assert bad_role.status_code == 422
    patched = lab.client.patch("/api/v1/members/eve", json={"status": "inactive"}, headers=lab.headers("admin"))
    assert patched.json()["status"] == "inactive"
    assert lab.client.patch("/api/v1/members/zed", json={}, headers=lab.headers("admin")).status_code == 404


def test_badges_are_assigned_and_revoked(lab: Lab) -> None:
    assigned = post(lab, "/api/v1/members/ada/badges", "operator", {"uid": "04:a1:b2:c3"})
    assert assigned.status_code == 201 and assigned.json()["uid"] == "04A1B2C3"
    taken = post(lab, "/api/v1/members/bob/badges", "operator", {"uid": "04A1B2C3"})
    assert taken.status_code == 409 and "revoke it first" in taken.json()["detail"]
    assert post(lab, "/api/v1/members/ada/badges", "operator", {"uid": "xyz"}).status_code == 422
    lost = delete(lab, "/api/v1/members/ada/badges/04A1B2C3", "operator", params={"lost": True})
    assert lost.json() == {"uid": "04A1B2C3", "member_id": "ada", "status": "lost"}
    assert delete(lab, "/api/v1/members/bob/badges/0A0A0A0A", "operator").status_code == 404


def test_trainers_grant_and_revoke_trainings(lab: Lab) -> None:
    granted = post(lab, "/api/v1/members/ada/trainings", "trainer", {"training": "cnc"})
    assert granted.status_code == 201
    assert granted.json()["granted_by"] == "tess" and granted.json()["expires_at"] is None
    past = post(lab, "/api/v1/members/ada/trainings", "trainer", {"training": "cnc", "expires_at": 1.0})
    assert past.status_code == 422
    assert post(lab, "/api/v1/members/zed/trainings", "trainer", {"training": "cnc"}).status_code == 404
    assert delete(lab, "/api/v1/members/ada/trainings/cnc", "trainer").status_code == 204
    again = delete(lab, "/api/v1/members/ada/trainings/cnc", "trainer")
    assert again.status_code == 409 and "does not hold" in again.json()["detail"]


# -- machines --------------------------------------------------------------------------------


def test_machines_show_their_member_only_to_that_member_and_to_readers(shared_lab: Lab) -> None:
    def laser(token: str) -> dict[str, Any]:
        machines = shared_lab.get("/api/v1/machines", token).json()
        return next(m for m in machines if m["id"] == "laser")

    assert laser("ada")["state"] == "in_use" and laser("ada")["session"]["member_id"] == "ada"
    assert laser("bob")["session"]["member_id"] is None and laser("bob")["reserved_for"] == "bob"
    assert laser("ada")["reserved"] is True and laser("ada")["reserved_for"] is None
    assert laser("auditor")["session"]["member_id"] == "ada"
    assert shared_lab.get("/api/v1/machines/cnc", "trainer").json()["session"]["member_id"] is None
    missing = shared_lab.get("/api/v1/machines/lathe", "ada")
    assert missing.status_code == 404 and "lathe" in missing.json()["detail"]


def test_operators_set_states_and_overrides_through_the_journal(lab: Lab) -> None:
    lab.badge("laser", "ada")
    blocked = post(lab, "/api/v1/machines/laser/state", "operator", {"state": "blocked"})
    assert blocked.status_code == 200 and blocked.json()["state"] == "blocked"
    assert blocked.json()["session"] is None  # a blocked machine ends the session
    ended = lab.get("/api/v1/sessions", "operator").json()
    assert [(s["member_id"], s["end_reason"]) for s in ended] == [("ada", "operator")]
    override = post(lab, "/api/v1/machines/laser/override", "admin", {"state": "free", "minutes": 1})
    assert override.json()["state"] == "free" and override.json()["set_state"] == "blocked"
    assert override.json()["override_until"] is not None
    bad = post(lab, "/api/v1/machines/laser/override", "admin", {"state": "in_use", "minutes": 0})
    assert bad.status_code == 422 and len(bad.json()["detail"]) == 2


def test_operators_end_sessions_and_reserve_machines(lab: Lab) -> None:
    nothing = delete(lab, "/api/v1/machines/laser/session", "operator")
    assert nothing.status_code == 409 and "no session" in nothing.json()["detail"]
    lab.badge("laser", "ada")
    ended = delete(lab, "/api/v1/machines/laser/session", "operator")
    assert ended.status_code == 200 and ended.json()["state"] == "free"
    reserved = post(lab, "/api/v1/machines/laser/reservation", "operator", {"member_id": "bob"})
    assert reserved.json()["reserved_for"] == "bob" and reserved.json()["reserved_until"] is None
    nobody = post(lab, "/api/v1/machines/laser/reservation", "operator", {"member_id": "zed"})
    assert nobody.status_code == 422
    assert delete(lab, "/api/v1/machines/laser/reservation", "operator").json()["reserved"] is False
    assert post(lab, "/api/v1/machines/lathe/state", "operator", {"state": "free"}).status_code == 404


@pytest.fixture
def floorless(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    config = parse_config(
        {"site": {"id": "lab"}, "journal": {"path": str(tmp_path / "j.sqlite")}, "api": {"enabled": False}}
    )
    tokens = seed_people(config.journal.path)
    with running_gateway(config) as gateway, TestClient(api_app(gateway)) as client:
        yield client, {"Authorization": f"Bearer {tokens['operator']}"}


def test_a_gateway_without_machines_refuses_commands_with_409(floorless: tuple[TestClient, dict[str, str]]) -> None:
    client, headers = floorless
    assert client.get("/api/v1/machines", headers=headers).json() == []
    refused = client.post("/api/v1/machines/laser/state", json={"state": "free"}, headers=headers)
    assert refused.status_code == 409 and "[[machines]]" in refused.json()["detail"]
    assert client.get("/api/v1/sessions", headers=headers).json() == []


# -- sessions and alerts ---------------------------------------------------------------------


def test_sessions_filter_by_member_machine_and_period(shared_lab: Lab) -> None:
    def ids(token: str, **params: Any) -> list[tuple[str, str, bool]]:
        rows = shared_lab.get("/api/v1/sessions", token, params=params).json()
        return [(r["member_id"], r["machine_id"], r["open"]) for r in rows]

    assert ids("operator") == [("bob", "cnc", False), ("ada", "laser", True), ("bob", "cnc", True)]
    assert ids("operator", member="bob", machine="cnc") == [("bob", "cnc", False), ("bob", "cnc", True)]
    assert ids("ada") == ids("ada", member="ada") == [("ada", "laser", True)]
    assert ids("operator", to="2000-01-01") == []
    assert ids("operator", **{"from": str(time.time() + 3600)}) == [("ada", "laser", True), ("bob", "cnc", True)]
    assert ids("operator", **{"from": "2000-01-01T00:00:00+02:00"}, limit=1) == [("bob", "cnc", False)]


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"from": "yesterday"}, "from: 'yesterday' is not a time"),
        ({"to": "1e30"}, "outside"),
        ({"from": "2025-01-02", "to": "2025-01-01"}, "ends before it starts"),
        ({"limit": 0}, "limit"),
        ({"limit": 100_000}, "limit"),
    ],
)
def test_bad_session_queries_get_422_with_the_reason(shared_lab: Lab, params: dict[str, Any], reason: str) -> None:
    response = shared_lab.get("/api/v1/sessions", "operator", params=params)
    assert response.status_code == 422
    assert any(reason in r for r in response.json()["detail"])


def test_a_member_asking_for_someone_elses_sessions_gets_403(shared_lab: Lab) -> None:
    for member in ("bob", "zed"):
        response = shared_lab.get("/api/v1/sessions", "ada", params={"member": member})
        assert response.status_code == 403 and "own" in response.json()["detail"]


def test_alerts_list_what_the_floor_raised(lab: Lab) -> None:
    writer = lab.gateway.writer
    writer.put([Reading(time.time(), "cnc_meter", "power_w", 800.0)])
    seq = writer.flush(5.0)
    floor = lab.gateway.floor
    assert floor is not None
    wait_for(lambda: floor.position >= seq)

    def alerts(**params: Any) -> list[dict[str, Any]]:
        response = lab.get("/api/v1/alerts", "auditor", params=params)
        assert response.status_code == 200, response.text
        result: list[dict[str, Any]] = response.json()
        return result

    wait_for(lambda: alerts())
    assert [(a["alert"], a["machine_id"]) for a in alerts()] == [("unauthorized_use", "cnc")]
    assert alerts(kind="relay_unconfirmed") == []
    assert alerts(since=str(time.time() + 60)) == []
    assert lab.get("/api/v1/alerts", "auditor", params={"kind": "fire"}).status_code == 422
