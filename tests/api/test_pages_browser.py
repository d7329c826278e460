"""The pages in a real browser: Debian's headless Chromium, driven by Playwright, against a real gateway.

The gateway runs as `commonwatt run` runs it: its API served by uvicorn on a loopback
port. Readings and badges enter through its journal writer, the way its sources put
them. The test sees a badge-in appear on the operator page within 2 s without a reload,
the session and then the receipt on the machine's kiosk, and the session on the member's
page. Screenshots go to `test-artifacts/` (not committed) for a person to look at.

Playwright is used only as a driver of the Chromium Debian installs (`apt-get install
chromium`); `playwright install`, which downloads a browser of its own, is never needed.
Without Chromium this test fails, saying how to install it: a browser test that skips
quietly would let the pages break unnoticed.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import gateway.api.app as api_app_module
from gateway.app import Gateway
from gateway.config import ApiSettings, Config, parse_config
from gateway.model import BadgeEvent, Reading
from tests.api.conftest import MEMBERS, lab_config, pty_ports, running_gateway, seed_people
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
    names = ["laser_meter", "laser_reader", "cnc_meter", "cnc_reader", *SITE_DEVICES]
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
            assert "signed checkpoints" in member.inner_text("#ledger")
            assert "bob" not in member.inner_text("#content")
            member.screenshot(path=str(ARTIFACTS / "member.png"), full_page=True)
            assert errors == []
        finally:
            browser.close()
