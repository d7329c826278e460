"""A simulated ESPHome machine node speaks the contract through a real Mosquitto into the gateway."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gateway.app import Gateway
from gateway.config import parse_config
from gateway.journal import Journal
from tests.services import Mosquitto

PREFIX = "commonwatt/lasercutter"


def node(broker: Mosquitto) -> paho.Client:
    """A node as ESPHome runs it: birth `online`, last will `offline`, both retained."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="lasercutter-node")
    client.will_set(f"{PREFIX}/status", "offline", qos=1, retain=True)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    client.publish(f"{PREFIX}/status", "online", qos=1, retain=True).wait_for_publish(5)
    client.publish(f"{PREFIX}/text_sensor/contract_version/state", "1", qos=1, retain=True).wait_for_publish(5)
    return client


def test_badge_power_and_last_will_reach_the_gateway(tmp_path: Path, mosquitto: Mosquitto) -> None:
    config = parse_config(
        {
            "site": {"id": "lab"},
            "journal": {"path": str(tmp_path / "journal.sqlite"), "max_delay_ms": 5},
            "mqtt": {"port": mosquitto.port},
            "api": {"enabled": False},
            "devices": [{"id": "laser", "protocol": "esphome", "prefix": PREFIX, "role": "machine"}],
        }
    )

    async def scenario() -> dict[str, Any]:
        async with Gateway(config) as gw:
            assert gw.mqtt is not None
            await gw.mqtt.wait_connected()
            await asyncio.sleep(0.2)
            client = await asyncio.to_thread(node, mosquitto)
            badge = {"v": 1, "uid": "00a3f2c1", "reader": "rdm6300"}
            for topic, payload in [
                (f"{PREFIX}/badge", json.dumps(badge)),
                (f"{PREFIX}/sensor/power/state", "412.6"),
                (f"{PREFIX}/sensor/energy/state", "15872.3"),
                (f"{PREFIX}/switch/relay/state", "ON"),
            ]:
                await asyncio.to_thread(lambda t=topic, p=payload: client.publish(t, p, qos=1).wait_for_publish(5))
            devices = gw.live.devices
            await _until(lambda: "relay_on" in getattr(devices.get("laser"), "latest", {}))
            online_before = gw.device_health()["laser"]["online"]
            client._sock_close()  # the node drops off the network: the broker publishes its last will
            await _until(lambda: gw.device_health()["laser"]["online"] is False)
            client.loop_stop()
            return {"online_before": online_before, "health": gw.health()["devices"]["laser"]}

    out = asyncio.run(scenario())
    assert out["online_before"] is True
    assert out["health"]["online"] is False
    with Journal(config.journal.path, readonly=True) as journal:
        rows = journal.read(0, 1000)
    by_metric = {r[3]: r for r in rows}
    assert by_metric["badge"][2] == "laser" and by_metric["badge"][5] == "00A3F2C1"
    assert by_metric["power_w"][4] == 412.6
    assert by_metric["energy_wh"][4] == 15872.3
    assert by_metric["relay_on"][4] == 1.0
    assert [r[4] for r in rows if r[3] == "online"][-1] == 0.0


async def _until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)
