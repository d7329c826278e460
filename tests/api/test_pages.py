"""The gateway's pages and their live feed, over HTTP: what is served, and what the stream says to whom."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from gateway.api.routes import pages
from gateway.api.routes.pages import supply_shares, visible
from gateway.people import Principal
from tests.api.conftest import Lab, lab_at

STREAM = "/api/v1/events/stream"


def with_pages(app: FastAPI) -> FastAPI:
    """The app with the pages' router, whether or not `create_app` includes it already."""
    if not any(getattr(r, "path", None) == STREAM for r in app.routes):
        app.include_router(pages.router)
    return app


@pytest.fixture(scope="module")
def plab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with lab_at(tmp_path_factory.mktemp("pages")) as lab:
        with_pages(lab.app)
        yield lab


class Events:
    """The events of an open stream, read as they come."""

    def __init__(self, lines: Iterator[str]) -> None:
        self.lines = lines

    def next(self) -> tuple[str, dict[str, Any]]:
        event = ""
        for line in self.lines:
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event:
                return event, json.loads(line.removeprefix("data: "))
        raise AssertionError("the stream ended")

    def until(self, want: str, match: dict[str, Any] | None = None, timeout: float = 5.0) -> list[tuple[str, Any]]:
        """Every event up to and including the first `want` whose data has `match`'s values."""
        seen = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # `now` arrives every 2 s, so this loop turns
            event, data = self.next()
            seen.append((event, data))
            if event == want and all(data.get(k) == v for k, v in (match or {}).items()):
                return seen
        raise AssertionError(f"no {want} {match} within {timeout} s; saw {[e for e, _ in seen]}")


# -- pages ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/kiosk/laser", "/me"])
def test_pages_are_html_that_loads_nothing_from_elsewhere(plab: Lab, path: str) -> None:
    response = plab.client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'self'" in response.headers["content-security-policy"]
    assert '<script src="/pages/common.js"' in response.text
    assert "http://" not in response.text and "https://" not in response.text


def test_every_file_a_page_names_is_served_with_its_type(plab: Lab) -> None:
    for name, kind in pages.ASSETS.items():
        response = plab.client.get(f"/pages/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"] == kind
        assert "https://" not in response.text and "http://" not in response.text
    assert plab.client.get("/pages/__init__.py").status_code == 404
    assert plab.client.get("/pages/..%2Froutes%2Fpages.py").status_code == 404


def test_a_kiosk_for_a_machine_the_config_does_not_name_is_404(plab: Lab) -> None:
    assert plab.client.get("/kiosk/toaster").status_code == 404


# -- the stream: who may listen -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        ({}, ""),
        ({}, "?token=cw_0000000000_" + "0" * 64),
        ({}, "?token=nonsense"),
        ({"Authorization": "Bearer cw_0000000000_" + "0" * 64}, ""),
        ({"Authorization": "Basic YTpi"}, ""),
    ],
)
def test_the_stream_refuses_a_missing_or_bad_token(plab: Lab, headers: dict[str, str], query: str) -> None:
    response = plab.client.get(STREAM + query, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json()["detail"]


def test_the_stream_for_an_unknown_machine_is_404(plab: Lab) -> None:
    response = plab.client.get(f"{STREAM}?machine=toaster", headers=plab.headers("operator"))
    assert response.status_code == 404


# -- the stream: what it says ---------------------------------------------------------------------


def test_a_badge_reaches_the_operators_stream_as_it_happens(plab: Lab) -> None:
    url = f"{STREAM}?token={plab.tokens['operator']}"
    with plab.client.stream("GET", url) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = Events(response.iter_lines())
        first = events.until("now")
        assert {d["id"] for e, d in first if e == "machine"} == {"laser", "cnc"}
        now = first[-1][1]
        assert set(now) == {"ts", "power_w", "soc_pct", "supply"}
        started = time.monotonic()
        plab.badge("laser", "ada")
        seen = events.until("machine", {"id": "laser", "state": "in_use"})
        assert time.monotonic() - started < 2.0
        access = [d for e, d in seen if e == "access"]
        assert access and access[0]["member_id"] == "ada" and access[0]["outcome"] == "session_opened"
        assert access[0]["badge_uid"] == "0A0A0A0A"  # operators see the badge (to enroll an unknown one)
        opened = next(d for e, d in seen if e == "session_opened")  # journal events come before the machine
        assert opened["member_id"] == "ada" and opened["start"].endswith("Z")
        plab.badge("laser", "ada")
        closed = events.until("session_closed")[-1][1]
        assert closed["session_id"] == opened["session_id"] and closed["end_reason"] == "badge_out"


def test_a_member_hears_only_its_own_badges_and_no_alerts(plab: Lab) -> None:
    with plab.client.stream("GET", STREAM, headers=plab.headers("bob")) as response:
        events = Events(response.iter_lines())
        events.until("now")
        plab.badge("laser", "ada")  # ada's: not for bob
        plab.badge("cnc", "bob")
        seen = events.until("access")
        access = [d for e, d in seen if e == "access"]
        assert [a["member_id"] for a in access] == ["bob"]
        assert "badge_uid" not in access[0]
        laser = [d for e, d in seen if e == "machine" and d["id"] == "laser"]
        assert all(d["session"] is None or d["session"]["member_id"] is None for d in laser)
        seen = events.until("machine", {"id": "cnc", "state": "in_use"})
        assert "alert" not in {e for e, _ in seen}
        plab.badge("cnc", "bob")
        plab.badge("laser", "ada")


def test_a_kiosk_stream_carries_only_its_machine(plab: Lab) -> None:
    url = f"{STREAM}?machine=cnc"
    with plab.client.stream("GET", url, headers=plab.headers("auditor")) as response:
        events = Events(response.iter_lines())
        first = events.until("now")
        assert [d["id"] for e, d in first if e == "machine"] == ["cnc"]
        plab.badge("laser", "ada")
        plab.badge("cnc", "bob")
        seen = events.until("machine", {"id": "cnc", "state": "in_use"})
        assert {d["machine_id"] for e, d in seen if "machine_id" in d} <= {"cnc"}
        plab.badge("cnc", "bob")
        plab.badge("laser", "ada")


# -- the pure parts -------------------------------------------------------------------------------


def test_supply_shares_count_discharge_and_import_only() -> None:
    assert supply_shares({"pv": 3000.0, "battery": -1000.0, "grid": 0.0}) == {"sun": 0.75, "battery": 0.25, "grid": 0.0}
    assert supply_shares({"pv": 1000.0, "battery": 800.0, "grid": -200.0}) == {"sun": 1.0, "battery": 0.0, "grid": 0.0}
    assert supply_shares({"site_load": 500.0}) is None


@pytest.mark.parametrize(
    ("role", "member", "kind", "data", "shown"),
    [
        ("operator", None, "alert", {"machine_id": "cnc", "alert": "unauthorized_use", "ts": 0}, True),
        ("member", "ada", "alert", {"machine_id": "cnc", "alert": "unauthorized_use", "ts": 0}, False),
        ("member", "ada", "access", {"member_id": "ada", "badge_uid": "0A", "ts": 0}, True),
        ("member", "ada", "access", {"member_id": "bob", "badge_uid": "0B", "ts": 0}, False),
        ("member", "ada", "access", {"member_id": None, "badge_uid": "FF", "ts": 0}, False),
        ("auditor", None, "session_closed", {"member_id": "bob", "ts": 0, "start": 0, "end": 1}, True),
        ("trainer", "tess", "machine_state", {"machine_id": "cnc", "state": "blocked", "ts": 0}, False),
    ],
)
def test_what_each_role_sees_of_an_event(
    role: str, member: str | None, kind: str, data: dict[str, Any], shown: bool
) -> None:
    out = visible(Principal("t", role, member), kind, data)
    assert (out is not None) == shown
    if out is not None:
        assert out["ts"] == "1970-01-01T00:00:00Z" or out["ts"].startswith("1970-01-01T00:00:00")
        assert ("badge_uid" in out) == (kind == "access" and role in ("operator", "auditor", "admin"))


def test_pages_folder_holds_only_small_plain_files() -> None:
    folder = Path(pages.PAGES)
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix in (".html", ".js", ".css")]
    assert {p.name for p in files} == {"operator.html", "kiosk.html", "me.html", *pages.ASSETS}
    assert sum(p.stat().st_size for p in files) < 40_000
