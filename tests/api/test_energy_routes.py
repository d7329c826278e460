"""/api/v1/energy/balance and /api/v1/members/{id}/energy over tables replayed from a recorded day."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.api.routes import energy
from gateway.energy_service import replay_journal
from tests.api.conftest import Lab, lab_at
from tests.energy_helpers import DAY0, energy_config, record_day

DAY = {"from": str(DAY0), "to": str(DAY0 + 86_400)}


@pytest.fixture(scope="module")
def energy_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with lab_at(tmp_path_factory.mktemp("lab")) as lab:
        if not any(getattr(r, "path", "").startswith("/api/v1/energy") for r in lab.app.routes):
            lab.app.include_router(energy.router)  # until api/app.py includes it
        folder = Path(tmp_path_factory.mktemp("cfg"))
        config = energy_config(folder)
        config = config.model_copy(update={"journal": lab.gateway.config.journal})
        record_day(config.journal.path, hours=12)
        replay_journal(config)
        yield lab


def test_hourly_balance_sums_the_intervals_and_closes(energy_lab: Lab) -> None:
    rows = energy_lab.get("/api/v1/energy/balance", "ada", params={**DAY, "step": 3600}).json()
    assert len(rows) == 12
    assert [r["intervals"] for r in rows[:11]] == [60] * 11  # the last, still being read, is left out
    for r in rows:
        assert (
            r["pv_mwh"]
            + r["battery_discharge_mwh"]
            + r["grid_import_mwh"]
            - r["battery_charge_mwh"]
            - r["grid_export_mwh"]
            == r["consumption_mwh"]
        )
        assert sum(r["mix_mwh"].values()) == r["consumption_mwh"]
        assert r["convention"] == "proportional"
    assert rows[10]["self_consumption"] is not None and 0 <= rows[10]["self_consumption"] <= 1
    # The day's first interval has no reading before it: its hour is `missing`, and says how much.
    assert rows[0]["quality"] == "missing"
    assert rows[0]["quality_counts"] == {"ok": 59, "estimated": 0, "integrated": 0, "missing": 1}
    assert rows[0]["quality_percent"] == {"ok": 98.33, "estimated": 0.0, "integrated": 0.0, "missing": 1.67}
    for r in rows[1:]:
        assert r["quality"] == "ok" and r["quality_percent"]["ok"] == 100.0
    for r in rows:
        assert sum(r["quality_counts"].values()) == r["intervals"]
    per_minute = energy_lab.get("/api/v1/energy/balance", "ada", params={**DAY}).json()
    assert sum(r["consumption_mwh"] for r in per_minute) == sum(r["consumption_mwh"] for r in rows)
    assert [r["quality"] for r in per_minute].count("missing") == 1
    assert all(r["quality_counts"][r["quality"]] == r["intervals"] == 1 for r in per_minute)


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({**DAY, "step": 90}, "not a multiple"),
        ({"from": "yesterday"}, "is not a time"),
        ({"from": str(DAY0 + 10), "to": str(DAY0)}, "ends before it starts"),
        ({"from": "0", "to": str(DAY0), "step": 60}, "more than"),
    ],
)
def test_a_bad_balance_request_is_a_422_with_the_reason(energy_lab: Lab, params: dict[str, str], reason: str) -> None:
    response = energy_lab.get("/api/v1/energy/balance", "ada", params=params)
    assert response.status_code == 422
    assert reason in " ".join(response.json()["detail"])


def test_a_member_sees_its_energy_by_machine_and_session(energy_lab: Lab) -> None:
    mine = energy_lab.get("/api/v1/members/ada/energy", "ada", params=DAY).json()
    total = mine["total"]
    assert total["energy_mwh"] > 0
    assert sum(total[f"{s}_mwh"] for s in ("sun", "battery_sun", "battery_grid", "grid")) == total["energy_mwh"]
    assert sum(m["energy_mwh"] for m in mine["machines"].values()) == total["energy_mwh"]
    assert sum(s["energy_mwh"] for s in mine["sessions"]) == total["energy_mwh"]
    assert energy_lab.get("/api/v1/members/ada/energy", "auditor", params=DAY).json() == mine


def test_a_member_token_gets_404_for_another_member(energy_lab: Lab) -> None:
    bob = energy_lab.get("/api/v1/members/bob/energy", "ada", params=DAY)
    nobody = energy_lab.get("/api/v1/members/nobody/energy", "admin", params=DAY)
    assert bob.status_code == nobody.status_code == 404
    assert bob.json()["detail"] == "no member 'bob'"
