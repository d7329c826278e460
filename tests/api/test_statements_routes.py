"""/api/v1/members/{id}/statements/{month} and /api/v1/reports/community/{month}, on a running gateway.

The lab of `conftest.py`, whose ledger is written through the real `Ledger` in November
2023 (UTC, the lab's time zone): allowances for ada and bob, a session charged to each,
a contribution to ada, then a signed checkpoint, then one more charge for ada that no
checkpoint covers yet. The route's JSON must be exactly what `member_statement` makes
(the document `commonwatt statement` writes), with the proofs of the audit log.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.audit import check_bundle
from gateway.audit.checkpoints import Verifier
from gateway.audit.log import AuditLog
from gateway.energy_store import EnergyStore, pseudonym
from gateway.ledger import Ledger, member_account
from gateway.statements import community_report, member_statement, render
from tests.api.conftest import Lab, lab_at
from tests.ledger.factories import POLICY, Clock

T0 = 1_700_000_000.0  # 2023-11-14 22:13 UTC
MONTH = "2023-11"
LASER = {"busy_s": 1800, "idle_s": 600, "mwh_by_source": {"sun": 500_000, "grid": 123_456}, "co2_mg": 37_037}


@pytest.fixture(scope="module")
def stated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with lab_at(tmp_path_factory.mktemp("statements")) as lab:
        config = lab.gateway.config
        with Ledger(config.journal.path, POLICY, clock=Clock(T0)) as ledger, AuditLog.for_config(config) as log:
            ledger.issue_allowances(MONTH, ["ada", "bob"])
            ledger.charge_session("laser-1700000010000", "bob", "laser", **LASER)  # type: ignore[arg-type]
            ledger.charge_session("laser-1700000020000", "ada", "laser", **LASER)  # type: ignore[arg-type]
            ledger.grant_contribution("ada", 5_000, "cleaning", "laser bed", by="olga")
            log.sync()
            log.checkpoint(T0 + 900)
            ledger.charge_session("laser-1700000030000", "ada", "laser", **LASER)  # type: ignore[arg-type]
        yield lab


def get(lab: Lab, path: str, token: str, **params: Any) -> Any:
    return lab.client.get(path, headers=lab.headers(token), params=params)


def expected(lab: Lab, member: str, month: str = MONTH) -> dict[str, Any]:
    """The statement as `commonwatt statement` makes it, proofs included."""
    with AuditLog.for_config(lab.gateway.config) as log:
        return member_statement(lab.gateway.config, member, month, inclusion=log.inclusion)


def secret(lab: Lab) -> bytes:
    with EnergyStore(lab.gateway.config.journal.path) as store:
        return store.secret()


def test_a_member_gets_the_statement_the_cli_makes(stated: Lab) -> None:
    response = get(stated, f"/api/v1/members/ada/statements/{MONTH}", "ada")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    doc = response.json()
    assert doc == expected(stated, "ada")
    assert doc["member"] == {"id": "ada", "name": "Ada"}
    assert [s["session_id"] for s in doc["sessions"]] == ["laser-1700000020000", "laser-1700000030000"]
    assert [p["kind"] for p in doc["postings"]] == ["allowance", "charge", "contribution", "charge"]
    credits = {k: v["mcr"] for k, v in doc["credits"].items()}
    with Ledger(stated.gateway.config.journal.path, POLICY) as ledger:
        assert credits["closing"] == ledger.running_balance(member_account("ada"))
    assert credits["opening"] == 0 and credits["allowance"] == 20_000 and credits["contributions"] == 5_000
    # Three of ada's four transactions are under the checkpoint; the last waits for the next one.
    bundles, waiting = doc["proofs"]["bundles"], doc["proofs"]["not_yet_provable"]
    assert len(bundles) == 3 and [w["tx_id"] for w in waiting] == [doc["postings"][-1]["tx_id"]]
    key = Verifier.parse(get(stated, "/api/v1/audit/key", "ada").json()["log_key"])
    for bundle in bundles:
        check_bundle(bundle, [key])


@pytest.mark.parametrize(("fmt", "media"), [("csv", "text/csv"), ("html", "text/html")])
def test_csv_and_html_are_files_with_a_name(stated: Lab, fmt: str, media: str) -> None:
    response = get(stated, f"/api/v1/members/ada/statements/{MONTH}", "ada", format=fmt)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == f"{media}; charset=utf-8"
    assert response.headers["content-disposition"] == f'attachment; filename="statement-ada-{MONTH}.{fmt}"'
    assert response.text == render(expected(stated, "ada"), fmt)
    report = get(stated, f"/api/v1/reports/community/{MONTH}", "operator", format=fmt)
    assert report.headers["content-type"] == f"{media}; charset=utf-8"
    assert report.headers["content-disposition"] == f'attachment; filename="community-{MONTH}.{fmt}"'
    assert report.text == render(community_report(stated.gateway.config, MONTH, names=True), fmt)


def test_a_member_reads_only_its_own_statement(stated: Lab) -> None:
    others = get(stated, f"/api/v1/members/ada/statements/{MONTH}", "bob")
    nobody = get(stated, f"/api/v1/members/nobody/statements/{MONTH}", "bob")
    assert others.status_code == nobody.status_code == 404
    assert get(stated, f"/api/v1/members/ada/statements/{MONTH}", "trainer").status_code == 404
    assert get(stated, f"/api/v1/members/nobody/statements/{MONTH}", "admin").status_code == 404
    bob = get(stated, f"/api/v1/members/bob/statements/{MONTH}", "bob").json()
    assert bob == expected(stated, "bob") and bob["member"]["id"] == "bob"
    for reader in ("operator", "admin"):
        assert get(stated, f"/api/v1/members/ada/statements/{MONTH}", reader).json() == expected(stated, "ada")


def test_an_auditor_reads_any_statement_under_a_pseudonym(stated: Lab) -> None:
    alias = pseudonym(secret(stated), "ada")
    response = get(stated, f"/api/v1/members/ada/statements/{MONTH}", "auditor")
    assert response.status_code == 200, response.text
    doc, named = response.json(), expected(stated, "ada")
    assert doc["member"] == {"id": alias, "name": alias}
    assert doc["postings"][0]["key"] == f"allowance:{alias}:{MONTH}"
    # Apart from the member, the figures are the statement's own.
    for part in ("sessions", "totals", "credits", "month", "from", "to"):
        assert doc[part] == named[part], part
    # The proofs stay checkable without the transaction's bytes, which name the member.
    key = Verifier.parse(get(stated, "/api/v1/audit/key", "auditor").json()["log_key"])
    assert len(doc["proofs"]["bundles"]) == 3
    for bundle, full in zip(doc["proofs"]["bundles"], named["proofs"]["bundles"], strict=True):
        assert "leaf" not in bundle and bundle["leaf_hash"] == full["leaf_hash"]
        check_bundle(bundle, [key])
    without_proofs = json.dumps({k: v for k, v in doc.items() if k != "proofs"}).replace(alias, "")
    assert not re.search(r"\bada\b", without_proofs.lower())  # as a word: hashes are hex
    csv = get(stated, f"/api/v1/members/ada/statements/{MONTH}", "auditor", format="csv")
    assert csv.headers["content-disposition"] == f'attachment; filename="statement-{alias}-{MONTH}.csv"'
    html = get(stated, f"/api/v1/members/ada/statements/{MONTH}", "auditor", format="html").text
    readable = re.sub(r"base64,[A-Za-z0-9+/=]+", "", html).replace(alias, "")  # the proofs' file, as base64
    assert "base64," in html and not re.search(r"\bada\b", readable.lower())


def test_the_community_report_names_members_for_operators_only(stated: Lab) -> None:
    path = f"/api/v1/reports/community/{MONTH}"
    for refused in ("ada", "trainer"):
        response = get(stated, path, refused)
        assert response.status_code == 403 and "community report" in response.json()["detail"]
    named = get(stated, path, "admin").json()
    assert named == community_report(stated.gateway.config, MONTH, names=True)
    assert {b["member"] for b in named["balances"]} == {"Ada (ada)", "Bob (bob)"}
    audited = get(stated, path, "auditor").json()
    assert audited == community_report(stated.gateway.config, MONTH)
    s = secret(stated)
    assert {b["member"] for b in audited["balances"]} == {pseudonym(s, "ada"), pseudonym(s, "bob")}
    assert audited["members_named"] is False


def test_a_month_without_transactions_is_an_empty_statement(stated: Lab) -> None:
    before = get(stated, "/api/v1/members/ada/statements/2023-10", "ada").json()
    assert before["sessions"] == before["postings"] == [] and before["proofs"]["bundles"] == []
    assert before["credits"]["opening"] == before["credits"]["closing"] == {"mcr": 0, "credits": "0.000"}
    november = get(stated, f"/api/v1/members/ada/statements/{MONTH}", "ada").json()
    after = get(stated, "/api/v1/members/ada/statements/2023-12", "ada").json()
    assert after["postings"] == [] and after["credits"]["opening"] == november["credits"]["closing"]
    assert get(stated, "/api/v1/reports/community/2023-10", "admin").json()["balances"] == []


@pytest.mark.parametrize(
    ("path", "params", "status", "reason"),
    [
        (f"/api/v1/members/ada/statements/{MONTH}", {"format": "pdf"}, 422, "format"),
        ("/api/v1/members/ada/statements/2023-13", {}, 422, "month"),
        ("/api/v1/members/ada/statements/2023-1", {}, 422, "month"),
        ("/api/v1/members/ada/statements/november", {}, 422, "month"),
        ("/api/v1/members/ada/statements/0000-01", {}, 422, "year 0 is out of range"),
        ("/api/v1/members/ada/statements/9999-12", {}, 422, "year 10000 is out of range"),
        ("/api/v1/reports/community/0000-06", {}, 422, "out of range"),
        ("/api/v1/reports/community/2023-00", {}, 422, "month"),
        (f"/api/v1/reports/community/{MONTH}", {"format": "xml"}, 422, "format"),
    ],
)
def test_bad_input_is_a_4xx_with_a_reason(
    stated: Lab, path: str, params: dict[str, str], status: int, reason: str
) -> None:
    response = get(stated, path, "admin", **params)
    assert response.status_code == status
    assert reason in json.dumps(response.json()["detail"])


def test_both_routes_want_a_token(stated: Lab) -> None:
    for path in (f"/api/v1/members/ada/statements/{MONTH}", f"/api/v1/reports/community/{MONTH}"):
        response = stated.client.get(path)
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
