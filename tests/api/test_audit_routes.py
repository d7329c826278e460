"""/api/v1/audit/...: checkpoints for any token, proofs a member downloads and checks offline."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from gateway.api.routes.audit import router
from gateway.audit import check_bundle, check_proof_files
from gateway.audit.checkpoints import Verifier
from gateway.audit.log import AuditLog
from gateway.ledger import Ledger
from tests.api.conftest import Lab, lab_at
from tests.ledger.factories import POLICY, Clock

LASER = {"busy_s": 1800, "idle_s": 600, "mwh_by_source": {"sun": 500_000, "grid": 123_456}}
T0 = 1_700_000_000.0


def with_audit_routes(app: FastAPI) -> None:
    """Include the audit routes if the app does not yet (until gateway/api/app.py does)."""
    if not any(getattr(r, "path", "").startswith("/api/v1/audit") for r in app.routes):
        app.include_router(router)


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A lab whose ledger holds 1 ada's allowance, 2 bob's, 3 bob's charge, 4 ada's charge; checkpoints 3 and 4."""
    with lab_at(tmp_path_factory.mktemp("audit")) as lab:
        with_audit_routes(lab.app)
        config = lab.gateway.config
        with Ledger(config.journal.path, POLICY, clock=Clock(T0)) as ledger, AuditLog.for_config(config) as log:
            ledger.issue_allowances("2024-01", ["ada", "bob"])
            ledger.charge_session("s-bob", "bob", "laser", **LASER)  # type: ignore[arg-type]
            log.sync()
            log.checkpoint(T0)
            ledger.charge_session("s-ada", "ada", "laser", **LASER)  # type: ignore[arg-type]
            log.sync()
            log.checkpoint(T0 + 900)
        yield lab


def get(lab: Lab, path: str, token: str, **params: Any) -> Any:
    return lab.client.get(path, headers=lab.headers(token), params=params)


def test_any_token_lists_the_checkpoints(audited: Lab) -> None:
    listed = get(audited, "/api/v1/audit/checkpoints", "ada")
    assert listed.status_code == 200
    assert [c["size"] for c in listed.json()] == [3, 4]
    latest = get(audited, "/api/v1/audit/checkpoints/latest", "trainer").json()
    assert latest == listed.json()[-1]
    key = Verifier.parse(get(audited, "/api/v1/audit/key", "bob").json()["log_key"])
    assert key.verify(latest["checkpoint"]).root.hex() == latest["root"]


def test_a_member_downloads_the_proof_of_its_own_transaction(audited: Lab, tmp_path: Path) -> None:
    key = get(audited, "/api/v1/audit/key", "bob").json()["log_key"]
    response = get(audited, "/api/v1/audit/proof/3", "bob")
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert bundle["tree_size"] == 4 and bundle["leaf_index"] == 2
    assert b"s-bob" in base64.b64decode(bundle["leaf"])
    check_bundle(bundle, [Verifier.parse(key)])
    path = tmp_path / "proof.json"
    path.write_text(json.dumps(bundle))
    ok, lines = check_proof_files([path], [key])
    assert ok, lines


def test_a_member_asking_for_anothers_proof_gets_the_same_404_as_for_none(audited: Lab) -> None:
    others = get(audited, "/api/v1/audit/proof/3", "ada")
    missing = get(audited, "/api/v1/audit/proof/999", "ada")
    assert others.status_code == missing.status_code == 404
    assert "bob" not in others.text
    assert get(audited, "/api/v1/audit/proof/3", "admin").json()["leaf_index"] == 2  # readers see all
    assert get(audited, "/api/v1/audit/proof/4", "auditor").status_code == 200
    assert get(audited, "/api/v1/audit/proof/3", "ada").status_code == 404


def test_consistency_between_two_checkpoints(audited: Lab) -> None:
    response = get(audited, "/api/v1/audit/consistency", "ada", **{"from": 3, "to": 4})
    assert response.status_code == 200, response.text
    key = Verifier.parse(response.json()["log_key"])
    assert "extends size 3" in check_bundle(response.json(), [key]).summary
    assert get(audited, "/api/v1/audit/consistency", "ada", **{"from": 3}).json() == response.json()
    assert get(audited, "/api/v1/audit/consistency", "ada", **{"from": 2}).status_code == 404
    assert get(audited, "/api/v1/audit/consistency", "ada", **{"from": 4, "to": 3}).status_code == 422
    assert get(audited, "/api/v1/audit/consistency", "ada").status_code == 422


def test_every_audit_route_wants_a_token(audited: Lab) -> None:
    for path in ("checkpoints", "checkpoints/latest", "proof/3", "consistency?from=3", "key"):
        assert audited.client.get(f"/api/v1/audit/{path}").status_code == 401


def test_no_checkpoint_yet_is_a_404(tmp_path: Path) -> None:
    with lab_at(tmp_path) as lab:
        with_audit_routes(lab.app)
        assert get(lab, "/api/v1/audit/checkpoints", "ada").json() == []
        assert get(lab, "/api/v1/audit/checkpoints/latest", "ada").status_code == 404
