"""A running gateway with a machine floor, people and tokens, and a TestClient on its API.

The lightest honest setup: a real `Gateway` (journal writer, live view, machine floor)
whose devices are serial devices on pseudo-terminal pairs, so no broker is needed; the
machines have no relay. Badges enter the journal through the gateway's writer, the way
the serial source puts them, and the floor picks them up from there. The gateway runs on
an event loop of its own, in a thread; the TestClient runs the app on another, as
uvicorn would run it next to the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from gateway.api.app import create_app
from gateway.app import Gateway
from gateway.config import Config, parse_config
from gateway.model import BadgeEvent
from gateway.people import People

#: Member id -> (roles, badge UID, trainings).
MEMBERS: dict[str, tuple[tuple[str, ...], str, tuple[str, ...]]] = {
    "ada": (("member",), "0A0A0A0A", ("laser",)),
    "bob": (("member",), "0B0B0B0B", ("laser",)),
    "tess": (("member", "trainer"), "07E57E57", ("laser",)),
    "olga": (("member", "operator"), "0F0F0F0F", ()),
}
#: Token name -> (role, member).
TOKENS: dict[str, tuple[str, str | None]] = {
    "admin": ("admin", None),
    "operator": ("operator", "olga"),
    "auditor": ("auditor", None),
    "trainer": ("trainer", "tess"),
    "ada": ("member", "ada"),
    "bob": ("member", "bob"),
}


def wait_for(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def lab_config(tmp_path: Path, ports: dict[str, str]) -> Config:
    serial = [
        {"id": "laser_meter", "protocol": "vedirect", "port": ports["laser_meter"], "role": "machine"},
        {"id": "laser_reader", "protocol": "rdm6300", "port": ports["laser_reader"], "role": "machine"},
        {"id": "cnc_meter", "protocol": "vedirect", "port": ports["cnc_meter"], "role": "machine"},
        {"id": "cnc_reader", "protocol": "rdm6300", "port": ports["cnc_reader"], "role": "machine"},
    ]
    return parse_config(
        {
            "site": {"id": "lab"},
            "journal": {"path": str(tmp_path / "journal.sqlite"), "max_delay_ms": 5},
            "api": {"enabled": False},
            "devices": serial,
            "machines": [
                {"id": "laser", "name": "Laser cutter", "meter": "laser_meter", "readers": ["laser_reader"]},
                {
                    "id": "cnc",
                    "name": "CNC mill",
                    "meter": "cnc_meter",
                    "readers": ["cnc_reader"],
                    "unauthorized_after_s": 0,
                },
            ],
        }
    )


@dataclass
class Lab:
    gateway: Gateway
    app: FastAPI
    client: TestClient
    tokens: dict[str, str]

    def headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[token]}"}

    def get(self, path: str, token: str, **kw: Any) -> Any:
        return self.client.get(path, headers=self.headers(token), **kw)

    def badge(self, machine: str, member: str) -> None:
        """`member` badges at `machine`; returns once the floor has handled it."""
        writer = self.gateway.writer
        writer.put([BadgeEvent(time.time(), f"{machine}_reader", MEMBERS[member][1])])
        seq = writer.flush(5.0)
        floor = self.gateway.floor
        assert floor is not None
        wait_for(lambda: floor.position >= seq)


def api_app(gateway: Gateway) -> FastAPI:
    """The app the gateway serves."""
    return create_app(gateway)


def seed_people(path: Path) -> dict[str, str]:
    with People(path) as people:
        for member_id, (roles, uid, trainings) in MEMBERS.items():
            people.add_member(member_id, member_id.title(), roles=roles)
            people.assign_badge(uid, member_id)
            for training in trainings:
                people.grant_training(member_id, training, granted_by="tess", at=time.time())
        return {name: people.create_token(role, member) for name, (role, member) in TOKENS.items()}


@contextlib.contextmanager
def running_gateway(config: Config) -> Iterator[Gateway]:
    """The gateway running on an event loop in a thread of its own, until the block exits."""
    started = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        stop = asyncio.Event()
        box["stop"] = (asyncio.get_running_loop(), stop)
        try:
            async with Gateway(config) as gw:
                box["gateway"] = gw
                started.set()
                await stop.wait()
        finally:
            started.set()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # reported to the test below
            box["error"] = exc

    thread = threading.Thread(target=run, name="gateway", daemon=True)
    thread.start()
    started.wait(10)
    if "gateway" not in box:
        thread.join(5)
        raise RuntimeError(f"the gateway did not start: {box.get('error')!r}")
    try:
        yield box["gateway"]
    finally:
        loop, stop = box["stop"]
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)


@contextlib.contextmanager
def pty_ports(names: list[str]) -> Iterator[dict[str, str]]:
    """A pseudo-terminal per serial device: the gateway opens the far end, nobody writes."""
    pairs = {name: os.openpty() for name in names}
    try:
        yield {name: os.ttyname(slave) for name, (_master, slave) in pairs.items()}
    finally:
        for master, slave in pairs.values():
            os.close(master)
            os.close(slave)


@contextlib.contextmanager
def lab_at(tmp_path: Path) -> Iterator[Lab]:
    with pty_ports(["laser_meter", "laser_reader", "cnc_meter", "cnc_reader"]) as ports:
        config = lab_config(tmp_path, ports)
        tokens = seed_people(config.journal.path)
        with running_gateway(config) as gateway:
            app = api_app(gateway)
            with TestClient(app) as client:
                yield Lab(gateway, app, client, tokens)
            people = getattr(app.state, "people", None)
            if people is not None:
                people.close()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """A fresh lab per test: for tests that change members or machines."""
    with lab_at(tmp_path) as lab:
        yield lab


@pytest.fixture(scope="module")
def shared_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """One lab for a module's read-mostly tests: ada works at the laser; bob has had a session on the
    CNC, has one open there now, and the laser is reserved for him after ada."""
    with lab_at(tmp_path_factory.mktemp("lab")) as lab:
        lab.badge("cnc", "bob")
        lab.badge("cnc", "bob")
        lab.badge("laser", "ada")
        lab.badge("cnc", "bob")
        body = {"member_id": "bob", "minutes": 600}
        reserved = lab.client.post("/api/v1/machines/laser/reservation", json=body, headers=lab.headers("admin"))
        assert reserved.status_code == 200, reserved.text
        yield lab
