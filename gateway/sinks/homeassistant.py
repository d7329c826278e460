"""Home Assistant MQTT discovery for the gateway's own entities.

A Home Assistant on the same broker finds, without any YAML: each machine's state, power
and energy, the battery, the solar production and the grid connection, each with the
device_class, state_class and unit its energy dashboard needs (FORMATS.md §8).

What is published:

- one retained config per entity on `homeassistant/sensor/<unique_id>/config` (per-entity
  discovery: it works with every Home Assistant version, where device-based discovery needs
  2024.11 or later). Entities are grouped into HA devices: one per machine, one each for the
  battery, solar and grid, all attached (`via_device`) to the gateway's own device;
- the states, one JSON object per group on `commonwatt/<site>/state/<group>`, each entity
  picking its value with a `value_template`. A value the gateway does not know is `null`:
  the template renders `None`, which Home Assistant shows as "unknown";
- availability on `commonwatt/<site>/status`: `online` (retained) once connected, and the
  MQTT last will `offline` (retained) when the gateway goes away. `will` gives the last will
  to set on the client before it connects.

When Home Assistant starts it publishes `online` on `homeassistant/status`; `handle` answers
with every config again, then the last states, so a restarted HA never waits for the next round.

Adding entities (the site's energy flows, for instance) is adding a table: an `EntityGroup`
with its `SensorDescription`s and a function giving its values, passed as `extra_groups`.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.config import Config, Machine

DISCOVERY_PREFIX = "homeassistant"
HA_STATUS_TOPIC = f"{DISCOVERY_PREFIX}/status"
ONLINE, OFFLINE = "online", "offline"
#: The machine states the floor reports (gateway.domain.floor: `in_use` or an operator state).
MACHINE_STATES = ("free", "in_use", "to_check", "blocked", "disabled")

Value = float | str | None
Publish = Callable[..., None]


@dataclass(frozen=True, slots=True)
class SensorDescription:
    """One sensor, in the way of Home Assistant's `SensorEntityDescription`."""

    key: str  # its key in the group's state JSON, and the last part of its unique_id
    name: str
    device_class: str | None = None
    state_class: str | None = None
    unit: str | None = None
    precision: int | None = None
    options: tuple[str, ...] = ()  # device_class enum: the possible states
    #: Journal metrics that give the value, first found wins (summed over the group's devices).
    metrics: tuple[str, ...] = ()


def _power(key: str, name: str, *metrics: str) -> SensorDescription:
    return SensorDescription(key, name, "power", "measurement", "W", 0, metrics=metrics or ("power_w",))


def _energy(key: str, name: str, *metrics: str) -> SensorDescription:
    # total_increasing: a device's counter reset (a reboot) starts a new cycle in HA, nothing is lost.
    return SensorDescription(key, name, "energy", "total_increasing", "Wh", 0, metrics=metrics)


MACHINE_SENSORS: tuple[SensorDescription, ...] = (
    SensorDescription("state", "State", "enum", options=MACHINE_STATES),
    _power("power_w", "Power"),
    _energy("energy_wh", "Energy", "energy_wh"),
)
BATTERY_SENSORS: tuple[SensorDescription, ...] = (
    SensorDescription("soc_pct", "State of charge", "battery", "measurement", "%", 0, metrics=("soc_pct",)),
    _power("power_w", "Power (+ charging)"),
    _energy("energy_charged_wh", "Energy charged", "energy_charged_wh"),
    _energy("energy_discharged_wh", "Energy discharged", "energy_discharged_wh"),
)
PV_SENSORS: tuple[SensorDescription, ...] = (
    _power("power_w", "Power", "power_w", "pv_power_w"),
    _energy("energy_wh", "Energy", "energy_wh"),
)
GRID_SENSORS: tuple[SensorDescription, ...] = (
    _power("power_w", "Power (+ import)"),
    _energy("import_wh", "Energy imported", "energy_wh"),
    _energy("export_wh", "Energy exported", "energy_returned_wh"),
)
#: role -> (group key, HA device name, sensors): the site's energy system, summed over its devices.
ROLE_GROUPS: dict[str, tuple[str, str, tuple[SensorDescription, ...]]] = {
    "battery": ("battery", "Battery", BATTERY_SENSORS),
    "pv": ("pv", "Solar", PV_SENSORS),
    "grid": ("grid", "Grid", GRID_SENSORS),
}


class LiveView(Protocol):
    """What the publisher reads from `gateway.live.LiveState`."""

    @property
    def devices(self) -> Mapping[str, Any]: ...


class FloorView(Protocol):
    """What the publisher reads from `gateway.floor_service.FloorService`."""

    def machine_view(self, machine_id: str) -> Any: ...


@dataclass(frozen=True, slots=True)
class EntityGroup:
    """Sensors sharing one state topic and one HA device. `values` gives their values by key."""

    key: str
    name: str
    sensors: tuple[SensorDescription, ...]
    values: Callable[[LiveView, FloorView | None], dict[str, Value]]
    model: str = ""


def latest(live: LiveView, devices: Sequence[str], metrics: Sequence[str]) -> float | None:
    """The sum over devices of each one's latest value of the first metric it has; None if none has."""
    total, found = 0.0, False
    for device in devices:
        entry = live.devices.get(device)
        values = getattr(entry, "latest", {}) if entry is not None else {}
        for metric in metrics:
            if metric in values:
                total += values[metric][1]
                found = True
                break
    return round(total, 3) if found else None


def _from_readings(sensors: Iterable[SensorDescription], devices: list[str], live: LiveView) -> dict[str, Value]:
    return {s.key: latest(live, devices, s.metrics) for s in sensors if s.metrics}


def machine_group(machine: Machine) -> EntityGroup:
    def values(live: LiveView, floor: FloorView | None) -> dict[str, Value]:
        out: dict[str, Value] = _from_readings(MACHINE_SENSORS, [machine.meter], live)
        out["state"] = _machine_state(floor, machine.id)
        return out

    return EntityGroup(f"machine_{machine.id}", machine.name or machine.id, MACHINE_SENSORS, values, "Machine")


def _machine_state(floor: FloorView | None, machine_id: str) -> str | None:
    if floor is None:
        return None
    try:
        state = str(floor.machine_view(machine_id).state)
    except (ValueError, AssertionError):  # the floor not started yet, or a machine it does not know
        return None
    return state if state in MACHINE_STATES else None


def role_group(role: str, devices: list[str]) -> EntityGroup:
    key, name, sensors = ROLE_GROUPS[role]

    def values(live: LiveView, _floor: FloorView | None) -> dict[str, Value]:
        return _from_readings(sensors, devices, live)

    return EntityGroup(key, name, sensors, values, "Energy system")


def default_groups(config: Config) -> list[EntityGroup]:
    """Each machine, then the battery, solar and grid groups of the roles that have devices."""
    groups = [machine_group(m) for m in config.machines]
    for role in ROLE_GROUPS:
        devices = [d.id for d in config.devices if d.role == role]
        if devices:
            groups.append(role_group(role, devices))
    return groups


_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")


def object_id(*parts: str) -> str:
    """A discovery object id: only [a-zA-Z0-9_-] is allowed there."""
    return _UNSAFE.sub("_", "_".join(parts))


@dataclass
class HomeAssistantPublisher:
    """Discovery configs, availability and states of one site, through a `publish` function.

    `publish(topic, payload, qos=..., retain=...)` is the gateway's MQTT client's (thread-safe).
    The client must set `will` before connecting, subscribe to `HA_STATUS_TOPIC`, call
    `on_connected()` after each (re)connection and `handle(topic, payload)` for what arrives there.
    """

    config: Config
    publish: Publish
    extra_groups: Sequence[EntityGroup] = ()
    sw_version: str = ""
    groups: list[EntityGroup] = field(init=False)
    _states: dict[str, str] = field(init=False, default_factory=dict)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.groups = [*default_groups(self.config), *self.extra_groups]

    @property
    def site(self) -> str:
        return self.config.site.id

    @property
    def availability_topic(self) -> str:
        return f"commonwatt/{self.site}/status"

    @property
    def will(self) -> tuple[str, str, int, bool]:
        """(topic, payload, qos, retain) of the MQTT last will: `client.will_set(*publisher.will)`."""
        return self.availability_topic, OFFLINE, 1, True

    def state_topic(self, group: EntityGroup) -> str:
        return f"commonwatt/{self.site}/state/{group.key}"

    def config_topic(self, unique_id: str) -> str:
        return f"{DISCOVERY_PREFIX}/sensor/{unique_id}/config"

    # -- discovery -----------------------------------------------------------------------------

    def _hub(self) -> dict[str, Any]:
        hub = {"identifiers": [object_id("commonwatt", self.site)], "manufacturer": "commonwatt", "model": "Gateway"}
        hub["name"] = self.config.site.name or f"commonwatt {self.site}"
        if self.sw_version:
            hub["sw_version"] = self.sw_version
        return hub

    def _device(self, group: EntityGroup) -> dict[str, Any]:
        return {
            "identifiers": [object_id("commonwatt", self.site, group.key)],
            "name": group.name,
            "manufacturer": "commonwatt",
            "model": group.model,
            "via_device": object_id("commonwatt", self.site),
        }

    def discovery(self, group: EntityGroup, sensor: SensorDescription) -> tuple[str, dict[str, Any]]:
        """(unique_id, config payload) of one sensor."""
        unique_id = object_id("commonwatt", self.site, group.key, sensor.key)
        payload: dict[str, Any] = {
            "name": sensor.name,
            "unique_id": unique_id,
            "state_topic": self.state_topic(group),
            "value_template": f"{{{{ value_json.{sensor.key} }}}}",
            "availability_topic": self.availability_topic,
            "payload_available": ONLINE,
            "payload_not_available": OFFLINE,
            "device": self._device(group),
            "origin": {"name": "commonwatt", "support_url": "https://github.com/commonwatt/commonwatt"},
        }
        optional = {
            "device_class": sensor.device_class,
            "state_class": sensor.state_class,
            "unit_of_measurement": sensor.unit,
            "suggested_display_precision": sensor.precision,
            "options": list(sensor.options) or None,
        }
        payload.update({k: v for k, v in optional.items() if v is not None})
        return unique_id, payload

    def configs(self) -> list[tuple[str, dict[str, Any]]]:
        """(config topic, payload) of every entity."""
        out = []
        for group in self.groups:
            for sensor in group.sensors:
                unique_id, payload = self.discovery(group, sensor)
                out.append((self.config_topic(unique_id), payload))
        # The gateway's own device first: the other devices name it as their `via_device`.
        return [self._hub_entity(), *out]

    def _hub_entity(self) -> tuple[str, dict[str, Any]]:
        unique_id = object_id("commonwatt", self.site, "gateway", "status")
        payload = {
            "name": "Gateway",
            "unique_id": unique_id,
            "state_topic": self.availability_topic,
            "device_class": "enum",
            "options": [ONLINE, OFFLINE],
            "device": self._hub(),
            "origin": {"name": "commonwatt"},
        }
        return self.config_topic(unique_id), payload

    def publish_configs(self) -> int:
        configs = self.configs()
        for topic, payload in configs:
            self.publish(topic, json.dumps(payload, separators=(",", ":")), qos=1, retain=True)
        return len(configs)

    def remove(self) -> None:
        """Delete every entity from Home Assistant (an empty retained config)."""
        for topic, _payload in self.configs():
            self.publish(topic, b"", qos=1, retain=True)

    # -- connection, HA's birth, states --------------------------------------------------------

    def on_connected(self) -> None:
        """After each (re)connection: `online`, every config, and the last states again."""
        self.publish(self.availability_topic, ONLINE, qos=1, retain=True)
        self.publish_configs()
        self._republish_states()

    def handle(self, topic: str, payload: bytes) -> bool:
        """A message on `homeassistant/status`: on `online` (HA started), publish everything again."""
        if topic != HA_STATUS_TOPIC:
            return False
        if payload.strip() == ONLINE.encode():
            self.publish_configs()
            self._republish_states()
        return True

    def state_payloads(self, live: LiveView, floor: FloorView | None) -> dict[str, str]:
        """Each group's state topic -> its JSON: every sensor's key, `null` where unknown."""
        out = {}
        for group in self.groups:
            values = group.values(live, floor)
            out[self.state_topic(group)] = json.dumps({s.key: values.get(s.key) for s in group.sensors})
        return out

    def publish_states(self, live: LiveView, floor: FloorView | None) -> int:
        """Publish every group's state (call it periodically, every 10 s is plenty). Returns how many."""
        payloads = self.state_payloads(live, floor)
        with self._lock:
            self._states = payloads
        for topic, payload in payloads.items():
            self.publish(topic, payload, qos=0, retain=False)
        return len(payloads)

    def _republish_states(self) -> None:
        with self._lock:
            states = dict(self._states)
        for topic, payload in states.items():
            self.publish(topic, payload, qos=0, retain=False)


__all__ = [
    "HA_STATUS_TOPIC",
    "MACHINE_STATES",
    "ROLE_GROUPS",
    "EntityGroup",
    "HomeAssistantPublisher",
    "SensorDescription",
    "default_groups",
    "latest",
]
