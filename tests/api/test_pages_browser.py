"""The pages in a real browser: Debian's headless Chromium, driven by Playwright, against a real gateway.

The gateway runs as `commonwatt run` runs it: its API served by uvicorn on a loopback
port. Readings and badges enter through its journal writer, the way its sources put
them. The test sees a badge-in appear on the operator page within 2 s without a reload,
the session and then the receipt on the machine's kiosk, and the session on the member's
page. On a gateway with a price list, a member downloads their statement and the proofs
of their transactions by clicking in their page, and `commonwatt audit check-proof`
accepts those files and rejects one altered by a byte. Screenshots go to
`test-artifacts/` (not committed) for a person to look at.

Playwright is used only as a driver of the Chromium Debian installs (`apt-get install
chromium`); `playwright install`, which downloads a browser of its own, is never needed.
Without Chromium this test fails, saying how to install it: a browser test that skips
quietly would let the pages break unnoticed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import gateway.api.app as api_app_module
from gateway.app import Gateway
from gateway.config import ApiSettings, Config, parse_config
from gateway.model import BadgeEvent, Reading
from tests.api.conftest import MEMBERS, lab_config, pty_ports, running_gateway, seed_people, wait_for
from tests.api.test_ledger_routes import PRICING  # a minimum charge of 0.5 credits, an allowance of 0.3 a month
from tests.api.test_pages import with_pages

CHROMIUM = "/usr/bin/chromium"
#: Headless, and nothing that reaches for the network beyond the page under test.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
SITE_DEVICES = ["pv", "battery", "grid"]
LAB_DEVICES = ["laser_meter", "laser_reader", "cnc_meter", "cnc_reader"]
#: The command a member runs on the files they downloaded.
COMMONWATT = Path(sys.executable).with_name("commonwatt")


def chromium() -> Any:
    """Playwright's sync API, or a failure that says what to install."""
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.fail("Chromium is missing: apt-get install -y chromium (Debian's package; never `playwright install`)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the Playwright driver is missing: .venv/bin/pip install playwright (the package only)")
    return sync_playwright


def site_config(tmp_path: Path, ports: dict[str, str]) -> Config:
    """The API tests' lab, plus a solar charger, a battery and a grid meter, with its API on a free port."""
    lab = lab_config(tmp_path, ports).model_dump()
    lab["api"] = ApiSettings(enabled=True, host="127.0.0.1", port=0).model_dump()
    lab["devices"] += [{"id": d, "protocol": "vedirect", "port": ports[d], "role": d} for d in SITE_DEVICES]
    return parse_config(lab)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Gateway, dict[str, str]]]:
    create = api_app_module.create_app
    monkeypatch.setattr(api_app_module, "create_app", lambda gw: with_pages(create(gw)))
    names = [*LAB_DEVICES, *SITE_DEVICES]
    with pty_ports(names) as ports:
        config = site_config(tmp_path, ports)
        tokens = seed_people(config.journal.path)
        with running_gateway(config) as gateway:
            yield gateway, tokens


def readings(gateway: Gateway) -> None:
    """Sun, a battery discharging a little, some import, the CNC drawing power with nobody on it."""
    now = time.time()
    values = [
        ("pv", "power_w", 2400.0), ("battery", "power_w", -300.0), ("battery", "soc_pct", 76.0),
        ("grid", "power_w", 500.0), ("laser_meter", "power_w", 12.0), ("cnc_meter", "power_w", 180.0),
    ]  # fmt: skip
    gateway.writer.put([Reading(now, device, metric, value) for device, metric, value in values])
    gateway.writer.flush(5.0)


def badge(gateway: Gateway, machine: str, member: str) -> None:
    gateway.writer.put([BadgeEvent(time.time(), f"{machine}_reader", MEMBERS[member][1])])
    gateway.writer.flush(5.0)


def sign_in(page: Any, url: str, token: str) -> None:
    page.goto(url)
    page.fill("#token-input", token)
    page.click("#login button[type=submit]")
    page.wait_for_selector("#status[data-live=yes]", timeout=5000)


def test_the_pages_follow_the_floor_live(site: tuple[Gateway, dict[str, str]]) -> None:
    gateway, tokens = site
    base = f"http://127.0.0.1:{gateway.api_port}"
    ARTIFACTS.mkdir(exist_ok=True)
    readings(gateway)
    with chromium()() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            operator = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            errors: list[str] = []
            operator.on("pageerror", lambda e: errors.append(str(e)))
            sign_in(operator, base + "/", tokens["operator"])
            operator.wait_for_selector('#machines [data-id="laser"][data-state="free"]')
            operator.wait_for_selector('#energy [data-role="pv"]', timeout=5000)
            operator.evaluate("window.stillTheSamePage = true")

            kiosk = browser.new_context(viewport={"width": 900, "height": 700}).new_page()
            sign_in(kiosk, base + "/kiosk/laser", tokens["auditor"])

            started = time.monotonic()
            badge(gateway, "laser", "ada")
            operator.wait_for_selector('#machines [data-id="laser"][data-state="in_use"]', timeout=2000)
            operator.wait_for_selector("#badges li.access >> text=ada", timeout=2000)
            assert time.monotonic() - started < 2.0
            assert operator.evaluate("window.stillTheSamePage") is True  # updated in place, not reloaded
            operator.wait_for_selector("#alerts li.alert >> text=unauthorized use", timeout=5000)
            assert "Solar" in operator.inner_text("#energy")
            operator.screenshot(path=str(ARTIFACTS / "operator.png"), full_page=True)

            kiosk.wait_for_selector("#hello >> text=Hello Ada", timeout=2000)
            assert kiosk.inner_text("#state") == "in use"
            kiosk.screenshot(path=str(ARTIFACTS / "kiosk-session.png"))
            badge(gateway, "laser", "ada")
            kiosk.wait_for_selector("#receipt >> text=Thank you, Ada.", timeout=2000)
            assert "badged out" in kiosk.inner_text("#receipt")
            kiosk.screenshot(path=str(ARTIFACTS / "kiosk-receipt.png"))

            member = browser.new_context(viewport={"width": 1100, "height": 600}).new_page()
            sign_in(member, base + "/me", tokens["ada"])
            member.wait_for_selector("#sessions tr >> text=laser")
            assert "signed checkpoint" in member.inner_text("#ledger")
            assert "bob" not in member.inner_text("#content")
            member.screenshot(path=str(ARTIFACTS / "member.png"), full_page=True)
            assert errors == []
        finally:
            browser.close()


# -- the member's statement and proofs ---------------------------------------------------------


@pytest.fixture
def priced_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Gateway, dict[str, str]]]:
    """The API tests' lab with a price list and its API on a free port. No source meters: the
    ledger charges a session as soon as it closes, from the machine meter's energy."""
    create = api_app_module.create_app
    monkeypatch.setattr(api_app_module, "create_app", lambda gw: with_pages(create(gw)))
    with pty_ports(LAB_DEVICES) as ports:
        lab = lab_config(tmp_path, ports).model_dump()
        lab["api"] = ApiSettings(enabled=True, host="127.0.0.1", port=0).model_dump()
        lab["pricing"] = PRICING
        config = parse_config(lab)
        tokens = seed_people(config.journal.path)
        with running_gateway(config) as gateway:
            yield gateway, tokens


def call(base: str, token: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """The API over HTTP, as any client reads it: the answer's bytes."""
    request = urllib.request.Request(
        base + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        data: bytes = response.read()
    return data


def check_proof(files: list[Path], key: str) -> subprocess.CompletedProcess[str]:
    command = [str(COMMONWATT), "audit", "check-proof", *map(str, files), "--key", key]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def altered(path: Path, value: str, out: Path) -> Path:
    """A copy of the proof file with one character in the middle of `value` changed (still hex and base64)."""
    raw = path.read_text(encoding="utf-8")
    i = raw.index(value) + len(value) // 2
    out.write_text(raw[:i] + ("1" if raw[i] == "0" else "0") + raw[i + 1 :], encoding="utf-8")
    return out


def test_a_member_downloads_proofs_that_check_proof_accepts(
    priced_lab: tuple[Gateway, dict[str, str]], tmp_path: Path
) -> None:
    gateway, tokens = priced_lab
    base = f"http://127.0.0.1:{gateway.api_port}"
    assert gateway.audit is not None

    def transactions() -> list[dict[str, Any]]:
        txs: list[dict[str, Any]] = json.loads(call(base, tokens["ada"], "/api/v1/ledger/members/ada"))["transactions"]
        return txs

    # ada's month: the allowance, a session charged, a checkpoint signed over both, then a
    # contribution that no checkpoint covers yet.
    wait_for(lambda: [t["kind"] for t in transactions()] == ["allowance"], timeout=10)
    badge(gateway, "laser", "ada")
    badge(gateway, "laser", "ada")
    wait_for(lambda: [t["kind"] for t in transactions()] == ["allowance", "charge"], timeout=15)
    assert gateway.audit.round() is not None
    grant = {"member": "ada", "amount_mcr": 2000, "category": "cleaning", "note": "laser bed"}
    assert json.loads(call(base, tokens["admin"], "/api/v1/ledger/contributions", grant))["status"] == "posted"
    allowance, charge, contribution = (t["id"] for t in transactions())
    account = json.loads(call(base, tokens["ada"], "/api/v1/ledger/members/ada"))

    downloads = tmp_path / "downloads"
    saved = tmp_path / "saved"
    saved.mkdir()
    ARTIFACTS.mkdir(exist_ok=True)
    with chromium()() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True, downloads_path=str(downloads))
        try:
            context = browser.new_context(
                viewport={"width": 1100, "height": 900}, accept_downloads=True, timezone_id="UTC"
            )
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            sign_in(page, base + "/me", tokens["ada"])
            page.wait_for_selector(f'#transactions tr[data-tx="{contribution}"]')

            def click_download(selector: str) -> Path:
                with page.expect_download(timeout=10_000) as info:
                    page.click(selector)
                download = info.value
                target: Path = saved / str(download.suggested_filename)
                download.save_as(str(target))
                return target

            # The statement of this month: its figures on the page, and its CSV as the API gives it.
            card = page.locator(".statement").first
            month = card.get_attribute("data-month")
            closing = page.inner_text(f'.statement[data-month="{month}"] dd[data-line="closing"]')
            assert closing == account["balance"]["credits"]
            statement_csv = click_download(f'.statement[data-month="{month}"] button[data-format="csv"]')
            assert statement_csv.name == f"statement-ada-{month}.csv"
            api_csv = call(base, tokens["ada"], f"/api/v1/members/ada/statements/{month}?format=csv")
            assert statement_csv.read_bytes() == api_csv

            # The proofs: one per transaction under the checkpoint, and all in one file.
            assert "after the next signed checkpoint" in page.inner_text(f'#transactions tr[data-tx="{contribution}"]')
            singles = [click_download(f'#transactions button[data-proof="{tx}"]') for tx in (allowance, charge)]
            assert [f.name for f in singles] == [
                f"commonwatt-proof-{allowance}.json",
                f"commonwatt-proof-{charge}.json",
            ]
            everything = click_download("#all-proofs")
            page.wait_for_selector("#proof-msg >> text=Saved 2 proofs in one file")
            assert f"Not under a signed checkpoint yet: {contribution}." in page.inner_text("#proof-msg")
            assert len(list(downloads.iterdir())) == 4  # the browser filed them where it was told
            page.screenshot(path=str(ARTIFACTS / "member-proofs.png"), full_page=True)
            assert errors == []
        finally:
            browser.close()

    # What the member runs at home, against the key the lab publishes.
    key = str(gateway.audit.log.verifier)
    files = [*singles, everything]
    accepted = check_proof(files, key)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert accepted.stdout.count("ok    ") == 4
    assert len(json.loads(everything.read_text())) == 2

    # One byte changed anywhere that matters, and the proof is refused.
    bundle = json.loads(singles[1].read_text())
    root_line = bundle["checkpoint"].split("\n")[2]
    tampered = [
        altered(singles[1], value, tmp_path / f"tampered-{name}.json")
        for name, value in (
            ("leaf", bundle["leaf"]),
            ("leaf_hash", bundle["leaf_hash"]),
            ("audit_path", bundle["audit_path"][0]),
            ("checkpoint", root_line),
        )
    ]
    for path in tampered:
        assert len(path.read_bytes()) == len(singles[1].read_bytes())
        assert sum(a != b for a, b in zip(path.read_bytes(), singles[1].read_bytes(), strict=True)) == 1
    refused = check_proof(tampered, key)
    assert refused.returncode == 1, refused.stdout
    assert refused.stdout.count("FAIL  ") == 4 and "ok    " not in refused.stdout
