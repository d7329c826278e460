"""Home Assistant discovery against a real Mosquitto: retained configs, availability, states, HA's birth."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import Config, parse_config
from gateway.domain.floor import Floor
from gateway.journal import Row
from gateway.live import LiveState
from gateway.sinks.homeassistant import (
    HA_STATUS_TOPIC,
    MACHINE_STATES,
    EntityGroup,
    HomeAssistantPublisher,
    SensorDescription,
)
from tests.services import Mosquitto

CONFIG: dict[str, Any] = {
    "site": {"id": "lab", "name": "Lab"},
    "mqtt": {},
    "devices": [
        {"id": "laser-plug", "protocol": "shelly_gen2", "prefix": "shellyplusplugs-aaa", "role": "machine"},
        {"id": "grid", "protocol": "shelly_gen2", "prefix": "shellypro3em-bbb", "role": "grid"},
        {"id": "roof", "protocol": "opendtu", "prefix": "114182912345", "role": "pv"},
        {"id": "mppt", "protocol": "vedirect", "port": "/dev/ttyUSB0", "role": "pv"},
        {"id": "battery", "protocol": "victron_venus", "prefix": "c0619ab1b2c3/battery/512", "role": "battery"},
    ],
    "machines": [{"id": "laser", "name": "Laser cutter", "meter": "laser-plug", "relay": "laser-plug"}],
}
ROWS: list[Row] = [
    (1, 100.0, "laser-plug", "power_w", 412.6, None),
    (2, 100.0, "laser-plug", "energy_wh", 15872.0, None),
    (3, 100.0, "grid", "power_w", -250.0, None),
    (4, 100.0, "grid", "energy_wh", 1_000_000.0, None),
    (5, 100.0, "roof", "power_w", 600.0, None),
    (6, 100.0, "mppt", "pv_power_w", 150.0, None),
    (7, 100.0, "roof", "energy_wh", 5000.0, None),
    (8, 100.0, "battery", "soc_pct", 81.0, None),
]


def config() -> Config:
    return parse_config(CONFIG)


def live_state() -> LiveState:
    live = LiveState(Path("/nonexistent/journal.sqlite"))  # filled by hand, never follows a journal
    live.apply(ROWS)
    return live


def floor(cfg: Config) -> Floor:
    return Floor(cfg.machines, cfg.access, timezone="UTC")


class Recorder:
    def __init__(self, port: int, topics: list[str]) -> None:
        self.messages: list[paho.MQTTMessage] = []
        self.cond = threading.Condition()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"ha-{time.monotonic_ns()}")
        self.client.on_message = self._message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.on_connect = lambda c, *_a: c.subscribe([(t, 1) for t in topics])
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(5)

    def _message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        with self.cond:
            self.messages.append(msg)
            self.cond.notify_all()

    def wait(self, count: int, pattern: str, timeout: float = 5.0) -> list[paho.MQTTMessage]:
        def found() -> list[paho.MQTTMessage]:
            return [m for m in self.messages if re.fullmatch(pattern, m.topic)]

        with self.cond:
            assert self.cond.wait_for(lambda: len(found()) >= count, timeout), [m.topic for m in self.messages]
            return found()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class GatewayClient:
    """The wiring MqttSource does: last will, HA's status subscription, `on_connected`, `handle`."""

    def __init__(self, port: int, publisher_factory: Any) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="commonwatt-lab")
        self.sent: list[paho.MQTTMessageInfo] = []
        self.connected = threading.Event()
        self.publisher: HomeAssistantPublisher = publisher_factory(self._publish)
        self.client.will_set(*self.publisher.will)
        self.client.on_connect = self._connected
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _publish(self, topic: str, payload: str | bytes, *, qos: int, retain: bool) -> None:
        self.sent.append(self.client.publish(topic, payload, qos=qos, retain=retain))

    def _connected(self, client: paho.Client, *_a: Any) -> None:
        client.subscribe(HA_STATUS_TOPIC, qos=1)
        self.publisher.on_connected()
        self.connected.set()

    def wait_sent(self) -> None:
        """Until the broker has taken everything published so far (so it is retained there)."""
        assert self.connected.wait(5)
        for info in list(self.sent):
            info.wait_for_publish(5)

    def _message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        self.publisher.handle(msg.topic, bytes(msg.payload))

    def crash(self) -> None:
        """Lose the connection without a DISCONNECT, as a killed gateway does."""
        self.client.loop_stop()
        sock = self.client.socket()
        assert isinstance(sock, socket.socket)
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def gateway(mosquitto: Mosquitto) -> Iterator[GatewayClient]:
    gw = GatewayClient(mosquitto.port, lambda publish: HomeAssistantPublisher(config(), publish, sw_version="0.1"))
    gw.wait_sent()
    yield gw
    gw.close()


# -- the configs, as data ------------------------------------------------------------------------


def test_device_and_state_classes() -> None:
    publisher = HomeAssistantPublisher(config(), lambda *a, **k: None)
    configs = {payload["unique_id"]: payload for _topic, payload in publisher.configs()}
    assert len(configs) == len(publisher.configs())  # unique ids are unique
    for uid, payload in configs.items():
        assert re.fullmatch(r"[a-zA-Z0-9_-]+", uid)
        cls = payload.get("device_class")
        if cls == "energy":
            assert payload["state_class"] in {"total", "total_increasing"} and payload["unit_of_measurement"] == "Wh"
        elif cls == "power":
            assert payload["state_class"] == "measurement" and payload["unit_of_measurement"] == "W"
        elif cls == "battery":
            assert payload["unit_of_measurement"] == "%"
        elif cls == "enum":
            assert "state_class" not in payload and "unit_of_measurement" not in payload and payload["options"]
    machine = configs["commonwatt_lab_machine_laser_state"]
    assert machine["options"] == list(MACHINE_STATES)
    assert machine["device"]["name"] == "Laser cutter"
    assert configs["commonwatt_lab_grid_export_wh"]["value_template"] == "{{ value_json.export_wh }}"
    assert {"commonwatt_lab_pv_power_w", "commonwatt_lab_battery_soc_pct"} <= set(configs)


def test_state_payloads_from_live_values_and_the_floor() -> None:
    cfg = config()
    publisher = HomeAssistantPublisher(cfg, lambda *a, **k: None)
    states = {t: json.loads(p) for t, p in publisher.state_payloads(live_state(), floor(cfg)).items()}
    assert states["commonwatt/lab/state/machine_laser"] == {"state": "free", "power_w": 412.6, "energy_wh": 15872.0}
    assert states["commonwatt/lab/state/pv"] == {"power_w": 750.0, "energy_wh": 5000.0}  # OpenDTU + MPPT
    assert states["commonwatt/lab/state/grid"] == {"power_w": -250.0, "import_wh": 1_000_000.0, "export_wh": None}
    assert states["commonwatt/lab/state/battery"]["soc_pct"] == 81.0
    # Without a floor the machine's state is unknown, not invented.
    no_floor = json.loads(publisher.state_payloads(live_state(), None)["commonwatt/lab/state/machine_laser"])
    assert no_floor["state"] is None


def test_extra_groups_extend_the_tables() -> None:
    flows = EntityGroup(
        "site",
        "Site energy",
        (SensorDescription("pv_to_load_wh", "Solar to load", "energy", "total_increasing", "Wh"),),
        lambda _live, _floor: {"pv_to_load_wh": 12.0},
    )
    publisher = HomeAssistantPublisher(config(), lambda *a, **k: None, extra_groups=[flows])
    assert any(p["unique_id"] == "commonwatt_lab_site_pv_to_load_wh" for _t, p in publisher.configs())
    assert json.loads(publisher.state_payloads(live_state(), None)["commonwatt/lab/state/site"]) == {
        "pv_to_load_wh": 12.0
    }


# -- against a real broker -------------------------------------------------------------------------


def test_configs_are_retained_with_availability(gateway: GatewayClient, mosquitto: Mosquitto) -> None:
    expected = len(gateway.publisher.configs())
    ha = Recorder(mosquitto.port, ["homeassistant/sensor/+/config", "commonwatt/lab/status"])
    try:
        configs = ha.wait(expected, r"homeassistant/sensor/[^/]+/config")
        assert all(m.retain for m in configs)
        for msg in configs:
            payload = json.loads(msg.payload)
            assert msg.topic == f"homeassistant/sensor/{payload['unique_id']}/config"
            assert payload["device"]["identifiers"] and payload["state_topic"]
            if payload["unique_id"] != "commonwatt_lab_gateway_status":
                assert payload["availability_topic"] == "commonwatt/lab/status"
        status = ha.wait(1, r"commonwatt/lab/status")
        assert status[0].payload == b"online" and status[0].retain
        gateway.crash()
        offline = ha.wait(2, r"commonwatt/lab/status", timeout=10)
        assert offline[-1].payload == b"offline"
    finally:
        ha.close()


def test_states_reach_a_subscriber(gateway: GatewayClient, mosquitto: Mosquitto) -> None:
    ha = Recorder(mosquitto.port, ["commonwatt/lab/state/#"])
    try:
        assert gateway.publisher.publish_states(live_state(), floor(config())) == 4
        got = {m.topic: json.loads(m.payload) for m in ha.wait(4, r"commonwatt/lab/state/.+")}
        assert got["commonwatt/lab/state/machine_laser"]["power_w"] == 412.6
    finally:
        ha.close()


def test_home_assistant_birth_republishes(gateway: GatewayClient, mosquitto: Mosquitto) -> None:
    expected = len(gateway.publisher.configs())
    gateway.publisher.publish_states(live_state(), floor(config()))
    gateway.wait_sent()
    ha = Recorder(mosquitto.port, ["homeassistant/sensor/+/config", "commonwatt/lab/state/#"])
    try:
        ha.wait(expected, r"homeassistant/.+")  # the retained ones
        mosquitto.publish(HA_STATUS_TOPIC, "online")
        again = ha.wait(2 * expected, r"homeassistant/.+")
        assert not any(m.retain for m in again[expected:])  # sent live, after the birth message
        ha.wait(4, r"commonwatt/lab/state/.+")  # and the last states with them
    finally:
        ha.close()
