"""The machine floor end to end (issue 4's acceptance): badges, sessions, relays and alerts.

Every scenario goes through a real Mosquitto: a simulated ESPHome node (tests/floor_helpers.py)
publishes badges, power and energy in the contract's format and answers the relay commands
it receives; the gateway decodes, journals, decides and switches. The assertions read what
the floor journaled (`event.access`, `event.session_opened` ...) and what the node received.
Each scenario has a machine of its own, so the scenarios do not see each other's timers.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.app import Gateway
from gateway.domain.floor_events import OperatorCommand, Override, Reserve, SetState
from gateway.floor_service import operator_row
from gateway.journal import Journal
from gateway.people import People
from tests.floor_helpers import (
    ALICE,
    BOB,
    CAROL,
    DAVE,
    ERIN,
    FRANK,
    OLGA,
    SAFETY,
    SITE,
    TINA,
    TOM,
    UNKNOWN,
    Events,
    Node,
    RunningGateway,
    gateway_config,
    machine,
    prepare_people,
    wait_for,
)
from tests.gateway_process import GatewayProcess as BaseGatewayProcess
from tests.services import Mosquitto

MACHINES = [
    machine("basic"),
    machine("takeover"),
    machine("deny"),
    machine("states"),
    machine("idle", idle_timeout_s=0.5, spin_down_s=0.5),
    machine("maxdur", max_duration_s=2.0),
    machine("mute"),
    machine("unauth", unauthorized_after_s=0.5),
    machine("trainer"),
    machine("override"),
    machine("override-edge"),
]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    mq = Mosquitto(tmp_path_factory.mktemp("mqtt")).start()
    yield mq
    mq.stop()


@pytest.fixture(scope="module")
def journal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("floor") / "journal.sqlite"
    prepare_people(path)
    return path


@pytest.fixture(scope="module")
def gateway(broker: Mosquitto, journal: Path) -> Iterator[Gateway]:
    config = gateway_config(journal, broker.port, MACHINES, client_id="gw-floor")
    with RunningGateway(config) as gw:
        yield gw


@pytest.fixture(scope="module")
def events(journal: Path, gateway: Gateway) -> Events:
    return Events(journal)


@pytest.fixture
def node_factory(broker: Mosquitto) -> Iterator[Any]:
    nodes: list[Node] = []

    def make(machine_id: str, *, answers: bool = True) -> Node:
        node = Node(broker.port, machine_id, answers=answers)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.close()


def operator(gw: Gateway, command: OperatorCommand) -> None:
    """What the API does with an operator's command: journal it, urgently."""
    gw.writer.put_rows([operator_row(time.time(), command)], urgent=True)


def badge_and_wait(node: Node, events: Events, uid: str) -> dict[str, Any]:
    """Present a card and return the floor's access event for it."""
    mark = events.mark()
    node.badge(uid)
    [access] = events.wait("access", mark, badge_uid=uid, machine_id=node.prefix.rsplit("/", 1)[1])
    return access


# -- sessions -------------------------------------------------------------------------------------


def test_badge_in_switches_on_and_the_same_badge_switches_off(
    gateway: Gateway, events: Events, node_factory: Any
) -> None:
    node = node_factory("basic")
    mark = events.mark()
    sent = node.badge(ALICE)
    [(received, payload)] = node.wait_commands(1, timeout=1.0)
    assert payload == "ON"
    assert received - sent < 1.0
    [access] = events.wait("access", mark, machine_id="basic")
    assert (access["allowed"], access["reason"], access["outcome"], access["member_id"]) == (
        True,
        None,
        "session_opened",
        "alice",
    )
    [opened] = events.wait("session_opened", mark, machine_id="basic")
    assert opened["member_id"] == "alice"

    node.badge(ALICE)
    assert node.wait_commands(2)[1][1] == "OFF"
    [closed] = events.wait("session_closed", mark, machine_id="basic")
    assert closed["session_id"] == opened["session_id"]
    assert closed["end_reason"] == "badge_out"
    assert closed["relay_unconfirmed"] is False
    assert closed["busy_s"] + closed["idle_s"] == pytest.approx(closed["end"] - closed["start"])


def test_takeover_closes_the_old_session_and_keeps_the_relay_on(
    gateway: Gateway, events: Events, node_factory: Any
) -> None:
    node = node_factory("takeover")
    mark = events.mark()
    node.badge(ALICE)
    node.wait_commands(1)
    [first] = events.wait("session_opened", mark, machine_id="takeover")

    access = badge_and_wait(node, events, BOB)
    assert (access["allowed"], access["outcome"]) == (True, "takeover")
    [closed] = events.wait("session_closed", mark, machine_id="takeover")
    assert (closed["session_id"], closed["member_id"], closed["end_reason"]) == (
        first["session_id"],
        "alice",
        "takeover",
    )
    second = events.wait("session_opened", mark, count=2, machine_id="takeover")[1]
    assert second["member_id"] == "bob" and second["session_id"] != first["session_id"]

    node.badge(BOB)
    events.wait("session_closed", mark, count=2, machine_id="takeover")
    node.wait_commands(2)
    assert node.payloads() == ["ON", "OFF"], "the relay must stay on across a takeover"


# -- every deny reason the floor can give without the ledger ---------------------------------------


@pytest.mark.parametrize(
    ("uid", "reason"),
    [
        (UNKNOWN, "unknown_badge"),
        (ERIN, "badge_revoked"),
        (FRANK, "member_inactive"),
        (CAROL, "training_missing"),
        (DAVE, "training_expired"),
    ],
)
def test_badge_and_member_denials(gateway: Gateway, events: Events, node_factory: Any, uid: str, reason: str) -> None:
    node = node_factory("deny")
    access = badge_and_wait(node, events, uid)
    assert (access["allowed"], access["reason"], access["outcome"]) == (False, reason, "denied")
    if reason.startswith("training"):
        assert access["missing"] == [SAFETY]
    time.sleep(0.1)
    assert node.payloads() == [], "a denied badge switches nothing"


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        (SetState("states", "blocked"), "machine_blocked"),
        (SetState("states", "disabled"), "machine_disabled"),
        (SetState("states", "to_check"), "machine_to_check"),
        (Reserve("states", "bob", until=time.time() + 3600), "machine_reserved"),
    ],
)
def test_machine_denials(
    gateway: Gateway, events: Events, node_factory: Any, command: OperatorCommand, reason: str
) -> None:
    node = node_factory("states")
    mark = events.mark()
    operator(gateway, command)
    kind = "reservation" if isinstance(command, Reserve) else "machine_state"
    events.wait(kind, mark, machine_id="states")
    try:
        access = badge_and_wait(node, events, ALICE)
        assert (access["allowed"], access["reason"], access["outcome"]) == (False, reason, "denied")
        time.sleep(0.1)
        assert node.payloads() == []
    finally:
        mark = events.mark()
        operator(gateway, Reserve("states", None) if isinstance(command, Reserve) else SetState("states", "free"))
        events.wait(kind, mark, machine_id="states")


def test_an_operator_may_use_a_machine_to_check(gateway: Gateway, events: Events, node_factory: Any) -> None:
    node = node_factory("states")
    mark = events.mark()
    operator(gateway, SetState("states", "to_check"))
    events.wait("machine_state", mark, machine_id="states")
    try:
        assert badge_and_wait(node, events, OLGA)["outcome"] == "session_opened"
        assert badge_and_wait(node, events, OLGA)["outcome"] == "session_closed"
    finally:
        mark = events.mark()
        operator(gateway, SetState("states", "free"))
        events.wait("machine_state", mark, machine_id="states")


def test_outside_opening_hours(broker: Mosquitto, tmp_path: Path, node_factory: Any) -> None:
    path = tmp_path / "journal.sqlite"
    prepare_people(path)
    # Open one day of the week only, and not today (UTC is the site's time zone).
    other_day = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[(dt.datetime.now(dt.UTC).weekday() + 3) % 7]
    hours = {other_day: "00:00-24:00"}
    config = gateway_config(path, broker.port, [machine("hours")], client_id="gw-hours", opening_hours=hours)
    events = Events(path)
    with RunningGateway(config):
        node = node_factory("hours")
        access = badge_and_wait(node, events, ALICE)
        assert (access["allowed"], access["reason"]) == (False, "outside_opening_hours")
        # An operator may work outside the opening hours.
        assert badge_and_wait(node, events, OLGA)["outcome"] == "session_opened"


# -- timers ---------------------------------------------------------------------------------------


def power_row_ts(journal: Path, machine_id: str, after: int) -> list[float]:
    with Journal(journal, readonly=True) as j:
        return [r[1] for r in j.read(after, 100_000) if r[2] == machine_id and r[3] == "power_w"]


def test_idle_timeout_waits_for_the_spin_down(
    gateway: Gateway, events: Events, journal: Path, node_factory: Any
) -> None:
    node = node_factory("idle")
    mark = events.mark()
    node.badge(ALICE)
    events.wait("session_opened", mark, machine_id="idle")
    node.power(250.0)
    time.sleep(0.3)
    node.power(2.0)  # idle from here: 0.5 s timeout, then 0.5 s spin-down
    time.sleep(0.7)  # in the spin-down ...
    node.power(180.0)  # ... the spindle still draws: busy again, the count starts over
    time.sleep(0.1)
    node.power(3.0)
    t_low = time.monotonic()
    time.sleep(0.6)
    assert events.after("session_closed", mark, machine_id="idle") == [], "cut while idle for less than 1 s"
    [closed] = events.wait("session_closed", mark, machine_id="idle", timeout=3.0)
    assert time.monotonic() - t_low >= 1.0
    assert closed["end_reason"] == "idle_timeout"
    high, low, spike, last_low = power_row_ts(journal, "idle", mark)
    assert 0.5 < spike - low < 1.0, "the spike came after the idle timeout, in the spin-down"
    # The session ends when the timeout ran out (idle_timeout_s + spin_down_s after the last
    # sample under the threshold), not when the gateway noticed.
    assert closed["end"] == pytest.approx(last_low + 1.0, abs=1e-6)
    assert closed["busy_s"] == pytest.approx((low - high) + (last_low - spike), abs=1e-6)
    assert node.wait_commands(2)[1][1] == "OFF"


def test_max_duration(gateway: Gateway, events: Events, node_factory: Any) -> None:
    node = node_factory("maxdur")
    mark = events.mark()
    node.badge(ALICE)
    [opened] = events.wait("session_opened", mark, machine_id="maxdur")
    node.power(500.0)  # busy all along: only the maximum duration ends it
    [closed] = events.wait("session_closed", mark, machine_id="maxdur", timeout=4.0)
    assert closed["end_reason"] == "max_duration"
    assert closed["end"] == pytest.approx(opened["start"] + 2.0, abs=1e-6)
    assert node.wait_commands(2)[1][1] == "OFF"


def test_relay_that_does_not_confirm(gateway: Gateway, events: Events, broker: Mosquitto, node_factory: Any) -> None:
    alerts: list[tuple[str, dict[str, Any]]] = []
    watcher = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"alerts-{time.time_ns()}")
    watcher.on_message = lambda _c, _u, msg: alerts.append((msg.topic, json.loads(msg.payload)))
    watcher.connect("127.0.0.1", broker.port)
    watcher.subscribe(f"commonwatt/{SITE}/alert/#", qos=1)
    watcher.loop_start()
    try:
        time.sleep(0.2)
        node = node_factory("mute", answers=False)
        mark = events.mark()
        node.badge(ALICE)
        [opened] = events.wait("session_opened", mark, machine_id="mute")
        [alert] = events.wait("alert", mark, machine_id="mute", alert="relay_unconfirmed", timeout=5.0)
        assert alert["session_id"] == opened["session_id"]
        assert node.payloads() == ["ON", "ON"], "sent once, retried once (relay_retries = 1)"
        wait_for(lambda: alerts, 3.0, "the alert on MQTT")
        topic, body = alerts[0]
        assert topic == f"commonwatt/{SITE}/alert/relay_unconfirmed"
        assert (body["machine_id"], body["session_id"]) == ("mute", opened["session_id"])

        node.badge(ALICE)
        [closed] = events.wait("session_closed", mark, machine_id="mute")
        assert closed["relay_unconfirmed"] is True
    finally:
        watcher.disconnect()
        watcher.loop_stop()


def test_unauthorized_use(gateway: Gateway, events: Events, broker: Mosquitto, node_factory: Any) -> None:
    node = node_factory("unauth")
    mark = events.mark()
    node.power(800.0)  # someone bypassed the relay
    [alert] = events.wait("alert", mark, machine_id="unauth", alert="unauthorized_use", timeout=4.0)
    assert alert["session_id"] is None
    time.sleep(1.2)
    assert len(events.after("alert", mark, machine_id="unauth")) == 1, "one alert per episode"
    node.power(0.0)


# -- the trainer at the machine ------------------------------------------------------------------------


def test_trainer_grants_a_training_at_the_machine(
    gateway: Gateway, events: Events, journal: Path, node_factory: Any
) -> None:
    node = node_factory("trainer")
    mark = events.mark()
    assert badge_and_wait(node, events, TINA)["reason"] == "training_missing"
    assert badge_and_wait(node, events, TOM)["outcome"] == "session_opened"
    trainee = badge_and_wait(node, events, TINA)
    assert trainee["outcome"] == "trainee"
    [granted] = events.wait("training_granted", mark, machine_id="trainer")
    assert (granted["member_id"], granted["training"], granted["granted_by"]) == ("tina", SAFETY, "tom")
    with People(journal) as people:
        [training] = people.trainings("tina")
    assert (training.training, training.granted_by, training.expires_at) == (SAFETY, "tom", None)

    assert badge_and_wait(node, events, TOM)["outcome"] == "session_closed"
    assert badge_and_wait(node, events, TINA)["outcome"] == "session_opened"
    assert badge_and_wait(node, events, TINA)["outcome"] == "session_closed"


# -- operator overrides ------------------------------------------------------------------------------


def test_override_expires_by_itself(gateway: Gateway, events: Events, node_factory: Any) -> None:
    node = node_factory("override")
    mark = events.mark()
    until = time.time() + 1.0
    operator(gateway, Override("override", "blocked", until=until))
    events.wait("machine_state", mark, machine_id="override", state="blocked")
    assert badge_and_wait(node, events, ALICE)["reason"] == "machine_blocked"

    [back] = events.wait("machine_state", mark, machine_id="override", by="override_expired", timeout=3.0)
    assert (back["state"], back["ts"]) == ("free", until)
    assert badge_and_wait(node, events, ALICE)["outcome"] == "session_opened"
    assert badge_and_wait(node, events, ALICE)["outcome"] == "session_closed"


def test_a_badge_just_after_an_override_ran_out_is_allowed(gateway: Gateway, events: Events, node_factory: Any) -> None:
    """The decision sees the machine as it is at the badge's time, not at the floor's last tick."""
    node = node_factory("override-edge")
    other = node_factory("basic")
    mark = events.mark()
    until = time.time() + 1.0
    operator(gateway, Override("override-edge", "blocked", until=until))
    events.wait("machine_state", mark, machine_id="override-edge", state="blocked")
    time.sleep(max(0.0, until - 0.5 - time.time()))
    other.power(0.0)  # a commit wakes the floor: its next tick without new rows is about 1 s away
    time.sleep(max(0.0, until + 0.05 - time.time()))
    access = badge_and_wait(node, events, ALICE)
    assert (access["allowed"], access["outcome"]) == (True, "session_opened")


# -- a gateway killed with a session open -------------------------------------------------------------


class GatewayProcess(BaseGatewayProcess):
    """`python -m gateway run` with one machine, as tests/test_faults.py runs it."""

    def __init__(self, folder: Path, broker: Mosquitto) -> None:
        self.journal = folder / "journal.sqlite"
        super().__init__(
            folder,
            f'[site]\nid = "{SITE}"\n[journal]\npath = "{self.journal}"\nmax_delay_ms = 5\n'
            f'[mqtt]\nport = {broker.port}\nclient_id = "gw-killed"\n'
            '[[devices]]\nid = "cnc"\nprotocol = "esphome"\nprefix = "commonwatt/cnc"\nrole = "machine"\n'
            '[[machines]]\nid = "cnc"\nmeter = "cnc"\nrelay = "cnc"\nreaders = ["cnc"]\n'
            f'trainings = ["{SAFETY}"]\nidle_timeout_s = 600\n'
            "[access]\nrelay_confirm_s = 0.3\nrelay_retries = 1\n",
        )

    def start(self) -> None:  # type: ignore[override]
        # The gateway connected with its floor running.
        super().start(lambda health: bool(health["sources"][0]["connected"] and health["floor"] is not None))


@pytest.fixture
def gateway_process(tmp_path: Path, broker: Mosquitto) -> Iterator[GatewayProcess]:
    folder = tmp_path / "gateway"
    folder.mkdir()
    prepare_people(folder / "journal.sqlite")
    gw = GatewayProcess(folder, broker)
    yield gw
    if gw.proc is not None and gw.proc.poll() is None:
        gw.kill()


def energy_rows(path: Path) -> list[float]:
    with Journal(path, readonly=True) as journal:
        return [r[4] for r in journal.read(0, 100_000) if r[2] == "cnc" and r[3] == "energy_wh" and r[4] is not None]


def test_sigkill_with_a_session_open_keeps_the_session_and_its_energy(
    gateway_process: GatewayProcess, node_factory: Any
) -> None:
    gw = gateway_process
    events = Events(gw.journal)
    gw.start()
    node = node_factory("cnc")
    node.energy(100.0)  # the counter's baseline, before the session
    time.sleep(0.2)
    node.badge(ALICE)
    [opened] = events.wait("session_opened", machine_id="cnc")
    node.wait_commands(1)
    node.power(400.0)
    node.energy(100.4)
    wait_for(lambda: energy_rows(gw.journal) == [100.0, 100.4], 5, "the energy readings journaled")

    gw.kill()
    # What the restarted floor starts from: its last checkpoint, then the rows after it again.
    station = events.checkpoint("cnc")
    assert station is not None and station["session"]["id"] == opened["session_id"]
    node.energy(101.0)  # drawn while the gateway is down (QoS 0, as the contract's nodes send it: lost)
    time.sleep(0.3)
    gw.start()
    node.energy(101.5)  # the counter kept counting across the restart
    wait_for(lambda: energy_rows(gw.journal)[-1] == 101.5, 5, "the reading after the restart journaled")

    mark = events.mark()
    node.badge(ALICE)
    [closed] = events.wait("session_closed", mark, machine_id="cnc")
    assert (closed["session_id"], closed["end_reason"]) == (opened["session_id"], "badge_out")
    assert closed["energy_wh"] == pytest.approx(1.5)
    assert closed["start"] == opened["start"]
    assert len(events.after("session_opened", machine_id="cnc")) == 1, "nothing decided twice"
    assert len(events.after("access", machine_id="cnc")) == 2
    assert node.wait_commands(2)[-1][1] == "OFF"
    assert gw.stop() == 0
