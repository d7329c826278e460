"""Helpers for the machine floor's tests against a real Mosquitto.

- `RunningGateway`: a Gateway on an event loop of its own thread, driven from the test;
- `Node`: a simulated ESPHome machine node of firmware-bridge/CONTRACT.md: it publishes
  badges, power and energy, and answers each relay command by reporting the new relay
  state (or, with `answers=False`, never does, like a node whose relay is broken);
- `Events`: the floor's `event.<kind>` rows of the journal, read back as dicts, and
  waited for;
- `prepare_people`: the members, badges and trainings every scenario uses, written into
  the gateway's database file before the gateway starts;
- `machine` / `gateway_config`: configuration with timeouts small enough for tests.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gateway.app import Gateway
from gateway.config import parse_config
from gateway.journal import Journal
from gateway.people import People

SITE = "lab"
#: The training every test machine requires.
SAFETY = "safety"

#: Badge UIDs (hex, as the contract's nodes send them), by who holds them.
ALICE = "04A1A1A1"  # member, trained
BOB = "04B0B0B0"  # member, trained
CAROL = "04C0C0C0"  # member, never trained
DAVE = "04D0D0D0"  # member, training expired
ERIN = "04E0E0E0"  # member, badge reported lost
FRANK = "04F0F0F0"  # member, inactive
TOM = "0470A070"  # trainer, trained
TINA = "0471A071"  # member, untrained: the trainee
OLGA = "04010101"  # operator, trained
UNKNOWN = "04DEADBEEF"  # nobody's badge

MEMBER_OF = {
    ALICE: "alice",
    BOB: "bob",
    CAROL: "carol",
    DAVE: "dave",
    ERIN: "erin",
    FRANK: "frank",
    TOM: "tom",
    TINA: "tina",
    OLGA: "olga",
}


def prepare_people(path: Path) -> None:
    """The members, badges and trainings of the scenarios, in the gateway's database file."""
    now = time.time()
    roles = {"tom": ("member", "trainer"), "olga": ("member", "operator")}
    with People(path) as people:
        for uid, member in MEMBER_OF.items():
            people.add_member(member, member.title(), roles=roles.get(member, ("member",)))
            people.assign_badge(uid, member)
        for member in ("alice", "bob", "erin", "frank", "tom", "olga"):
            people.grant_training(member, SAFETY, granted_by="olga", at=now - 3600)
        people.grant_training("dave", SAFETY, granted_by="olga", at=now - 7200, expires_at=now - 60)
        people.revoke_badge(ERIN, lost=True)
        people.disable_member("frank")


def prefix(machine_id: str) -> str:
    return f"commonwatt/{machine_id}"


def machine(machine_id: str, **overrides: Any) -> dict[str, Any]:
    """A machine whose meter, relay and badge reader are one ESPHome node `commonwatt/<id>`.

    Defaults keep the timers out of the way (no idle timeout, no maximum, no alert) so a
    scenario lowers only the one it is about.
    """
    base: dict[str, Any] = {
        "id": machine_id,
        "meter": machine_id,
        "relay": machine_id,
        "readers": [machine_id],
        "trainings": [SAFETY],
        "idle_threshold_w": 10.0,
        "idle_timeout_s": 600.0,
        "spin_down_s": 0.5,
        "max_duration_s": 0.0,
        "unauthorized_after_s": 600.0,
    }
    return base | overrides


def gateway_config(
    journal: Path, broker_port: int, machines: list[dict[str, Any]], *, client_id: str, **access: Any
) -> dict[str, Any]:
    devices = [{"id": m["id"], "protocol": "esphome", "prefix": prefix(m["id"]), "role": "machine"} for m in machines]
    return {
        "site": {"id": SITE},
        "journal": {"path": str(journal), "max_delay_ms": 5},
        "mqtt": {"port": broker_port, "client_id": client_id},
        "api": {"enabled": False},
        "devices": devices,
        "machines": machines,
        "access": {"trainer_window_s": 2.0, "relay_confirm_s": 0.3, "relay_retries": 1, **access},
    }


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    """Poll until `predicate()` is truthy; return it."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(0.02)


class RunningGateway:
    """`with RunningGateway(config) as gw:` runs a Gateway on its own loop thread until the block exits."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.loop = asyncio.new_event_loop()
        self.gateway = Gateway(parse_config(config))
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Gateway:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.gateway.__aenter__(), self.loop).result(20)
        assert self.gateway.mqtt is not None
        asyncio.run_coroutine_threadsafe(self.gateway.mqtt.wait_connected(), self.loop).result(20)
        time.sleep(0.3)  # subscriptions acknowledged
        return self.gateway

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.gateway.__aexit__(None, None, None), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


class Node:
    """An ESPHome machine node: one paho client on `commonwatt/<machine>`."""

    def __init__(self, broker_port: int, machine_id: str, *, answers: bool = True) -> None:
        self.prefix = prefix(machine_id)
        self.answers = answers
        #: Relay commands received: (time.monotonic(), payload).
        self.commands: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"node-{machine_id}-{time.time_ns()}")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.connect("127.0.0.1", broker_port)
        self.client.subscribe(f"{self.prefix}/switch/relay/command", qos=0)
        self.client.loop_start()
        if not self._subscribed.wait(5):
            raise AssertionError("the node's subscription was not acknowledged")

    def _on_message(self, client: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        payload = msg.payload.decode()
        with self._lock:
            self.commands.append((time.monotonic(), payload))
        if self.answers:  # the relay moved: its state is the confirmation
            client.publish(f"{self.prefix}/switch/relay/state", payload, qos=0, retain=False)

    def badge(self, uid: str) -> float:
        """Present a card; returns time.monotonic() just before the message left."""
        t = time.monotonic()
        body = json.dumps({"v": 1, "uid": uid, "reader": "rdm6300"})
        self.client.publish(f"{self.prefix}/badge", body, qos=1).wait_for_publish(5)
        return t

    def power(self, watts: float) -> None:
        self.client.publish(f"{self.prefix}/sensor/power/state", f"{watts:.1f}", qos=0).wait_for_publish(5)

    def energy(self, wh: float) -> None:
        self.client.publish(f"{self.prefix}/sensor/energy/state", f"{wh:.3f}", qos=0).wait_for_publish(5)

    def payloads(self) -> list[str]:
        with self._lock:
            return [p for _t, p in self.commands]

    def wait_commands(self, count: int, timeout: float = 5.0) -> list[tuple[float, str]]:
        def enough() -> list[tuple[float, str]] | None:
            with self._lock:
                return list(self.commands) if len(self.commands) >= count else None

        found: list[tuple[float, str]] = wait_for(enough, timeout, f"{count} relay command(s) at {self.prefix}")
        return found

    def close(self) -> None:
        self.client.disconnect()  # first: it wakes the network thread, which then exits at once
        self.client.loop_stop()


class Events:
    """The floor's event rows of one journal, as dicts with their `seq` and row `ts`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        """The journal's last seq: events after it are what the test caused."""
        with Journal(self.path, readonly=True) as journal:
            return journal.last_seq()

    def after(self, kind: str, mark: int = 0, **match: Any) -> list[dict[str, Any]]:
        """`event.<kind>` rows after `mark` whose fields equal `match`."""
        with Journal(self.path, readonly=True) as journal:
            rows = journal.events(f"event.{kind}", after=mark, limit=100_000)
        out = []
        for seq, _ts, _device, _metric, _value, text in rows:
            data = json.loads(text or "{}")
            if all(data.get(k) == v for k, v in match.items()):
                out.append({"seq": seq, **data})
        return out

    def wait(
        self, kind: str, mark: int = 0, count: int = 1, timeout: float = 5.0, **match: Any
    ) -> list[dict[str, Any]]:
        def found() -> list[dict[str, Any]] | None:
            rows = self.after(kind, mark, **match)
            return rows if len(rows) >= count else None

        rows: list[dict[str, Any]] = wait_for(found, timeout, f"{count} event.{kind} {match}")
        return rows

    def checkpoint(self, machine_id: str) -> dict[str, Any] | None:
        """The floor's saved state of one machine (None before the floor's first checkpoint)."""
        with Journal(self.path, readonly=True) as journal:
            saved = journal.checkpoint("floor")
        if saved is None:
            return None
        station: dict[str, Any] = json.loads(saved[1])["machines"][machine_id]
        return station
