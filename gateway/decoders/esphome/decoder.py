"""ESPHome nodes of firmware-bridge/CONTRACT.md over MQTT: badges, power, relay, last will.

The device key is the node's `topic_prefix`: everything before `/sensor/`,
`/switch/`, `/binary_sensor/`, `/text_sensor/`, `/status` or `/badge`. Which
entities give which metric is the table in `fields.py`, extended by the
`sensors` option; entities that are in neither (the Wi-Fi signal, anything a
lab adds for itself) give no records and are not errors.

A node that announces a contract version newer than this decoder knows is
refused as a whole (`unsupported_version`) until it announces one it knows:
reading its messages under the old meaning could put wrong numbers in the
ledger. Its `status` is still read, as ESPHome itself defines that topic.
"""

from __future__ import annotations

import json
import math
import re
from typing import ClassVar

from gateway.decoders.base import DecodeError, MqttDecoder
from gateway.decoders.esphome.fields import (
    COMPONENTS,
    CONTRACT_VERSION,
    ENTITIES,
    NO_VALUE,
    NUMERIC_COMPONENTS,
    ON_OFF,
    STATUS,
    UID_MAX_DIGITS,
    UID_MIN_DIGITS,
    VERSION_ENTITY,
)
from gateway.model import BadgeEvent, Reading, Record, normalize_uid
from gateway.quantities import is_known

#: The prefix is greedy: with a prefix that itself contains `/sensor/`, the last match wins.
_TOPIC = re.compile(
    r"(?P<prefix>.+)/(?:(?P<component>" + "|".join(COMPONENTS) + r")/(?P<object_id>[^/]+)/(?P<leaf>state|command)"
    r"|(?P<node_topic>status|badge))"
)
_HEX = re.compile(r"[0-9A-F]+")
_VERSION_TEXT = re.compile(r"[0-9]{1,6}")
#: Default prefix scheme of the firmware-bridge node files: `commonwatt/<machine>`.
_DEFAULT_PREFIX = "commonwatt/+"


def state_topics(prefix: str) -> list[str]:
    """The topic filters of one node (or, with `+` levels, of many): never its command topics."""
    entities = [f"{prefix}/{component}/+/state" for component in COMPONENTS]
    return [f"{prefix}/status", f"{prefix}/badge", *entities]


def relay_command(prefix: str, on: bool) -> tuple[str, bytes, bool]:
    """The message that switches a node's relay: (topic, payload, retain). Never retained.

    A retained command would be delivered again to a node that reconnects, hours
    later, and switch a machine on with nobody at it.
    """
    if not prefix or any(ch in prefix for ch in "+#\0") or prefix.endswith("/"):
        raise ValueError(f"esphome prefix {prefix!r} is not a topic prefix")
    return f"{prefix}/switch/relay/command", b"ON" if on else b"OFF", False


def parse_sensors(sensors: dict[str, str]) -> dict[tuple[str, str], str]:
    """The `sensors` option -> (component, object_id) -> metric. ValueError naming every problem.

    Keys are a sensor's object id (`spindle_power`) or `<component>/<object_id>`
    for a switch or binary_sensor (`binary_sensor/door`).
    """
    table: dict[tuple[str, str], str] = {}
    problems: list[str] = []
    for key, metric in sensors.items():
        component, _, object_id = key.rpartition("/")
        component = component or "sensor"
        if component not in NUMERIC_COMPONENTS:
            problems.append(f"{key!r}: component must be one of {', '.join(NUMERIC_COMPONENTS)}")
        elif not re.fullmatch(r"[a-z0-9_]+", object_id):
            problems.append(f"{key!r}: an object id is lower-case letters, digits and _")
        if not isinstance(metric, str) or not is_known(metric):
            problems.append(f"{key!r}: {metric!r} is not a metric of gateway.quantities")
        table[(component, object_id)] = metric
    if problems:
        raise ValueError("esphome sensors: " + "; ".join(problems))
    return table


def _text(payload: bytes) -> str:
    try:
        return payload.decode().strip()
    except UnicodeDecodeError:
        raise DecodeError("bad_value", "not text") from None


def _number(text: str) -> float | None:
    """A sensor state -> its value; None while the sensor has none (`nan`) or the retained state is cleared."""
    if not text or text.lower() in NO_VALUE:
        return None
    try:
        value = float(text)
    except ValueError:
        raise DecodeError("bad_value", repr(text[:40])) from None
    if not math.isfinite(value):
        raise DecodeError("bad_value", repr(text[:40]))
    return value


def _word(text: str, states: dict[str, float]) -> float | None:
    """A plain-text state (`ON`, `offline`) -> its value; None for a cleared retained state."""
    if not text:
        return None
    try:
        return states[text.lower()]
    except KeyError:
        raise DecodeError("bad_value", repr(text[:40])) from None


def _check_version(version: int, bad_reason: str) -> None:
    """A contract version sent by a node: below 1 is `bad_reason`, above CONTRACT_VERSION unsupported."""
    if version < 1:
        raise DecodeError(bad_reason, f"contract version {version}")
    if version > CONTRACT_VERSION:
        raise DecodeError("unsupported_version", f"contract version {version}; this gateway reads {CONTRACT_VERSION}")


def _badge_uid(payload: bytes) -> str:
    """The normalized UID of a badge message; DecodeError `bad_badge` when it is not the contract's."""
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        raise DecodeError("bad_badge", "not JSON") from None
    if not isinstance(obj, dict):
        raise DecodeError("bad_badge", "expected an object with `v` and `uid`")
    version = obj.get("v")
    if isinstance(version, bool) or not isinstance(version, int):
        raise DecodeError("bad_badge", f"v={version!r}"[:60])
    _check_version(version, "bad_badge")
    uid, reader = obj.get("uid"), obj.get("reader", "")
    if not isinstance(uid, str) or not isinstance(reader, str):
        raise DecodeError("bad_badge", "uid and reader must be strings")
    uid = normalize_uid(uid)
    if not (_HEX.fullmatch(uid) and len(uid) % 2 == 0 and UID_MIN_DIGITS <= len(uid) <= UID_MAX_DIGITS):
        raise DecodeError("bad_badge", f"uid {uid[:40]!r} is not 4 to 10 bytes of hex")
    return uid


class ESPHomeDecoder(MqttDecoder):
    """The nodes of firmware-bridge/: one instance reads any number of them."""

    name: ClassVar[str] = "esphome"
    default_topics: ClassVar[tuple[str, ...]] = tuple(state_topics(_DEFAULT_PREFIX))

    def __init__(self, *, sensors: dict[str, str] | None = None) -> None:
        self._entities = {**ENTITIES, **parse_sensors(sensors or {})}
        #: Nodes that announced a contract version newer than CONTRACT_VERSION.
        self._too_new: set[str] = set()

    def topics(self, prefix: str | None = None) -> list[str]:
        return state_topics(prefix) if prefix else list(self.default_topics)

    def decode(self, topic: str, payload: bytes, ts: float) -> list[Record]:
        match = _TOPIC.fullmatch(topic)
        if match is None:
            raise DecodeError("unknown_topic", topic)
        prefix = match["prefix"]
        if match["node_topic"] == "status":
            return self._status(prefix, payload, ts)
        if match["leaf"] == "command":
            return []
        entity = (match["component"], match["object_id"])
        if entity == VERSION_ENTITY:
            return self._contract_version(prefix, payload)
        if prefix in self._too_new:
            raise DecodeError("unsupported_version", f"{prefix} announced a newer contract")
        if match["node_topic"] == "badge":
            return [BadgeEvent(ts, prefix, _badge_uid(payload))]
        return self._entity(prefix, entity, payload, ts)

    def _status(self, prefix: str, payload: bytes, ts: float) -> list[Record]:
        value = _word(_text(payload), STATUS)
        return [] if value is None else [Reading(ts, prefix, "online", value)]

    def _contract_version(self, prefix: str, payload: bytes) -> list[Record]:
        text = _text(payload)
        if not text:
            return []
        if not _VERSION_TEXT.fullmatch(text):
            raise DecodeError("bad_value", repr(text[:40]))
        try:
            _check_version(int(text), "bad_value")
        except DecodeError as exc:
            if exc.reason == "unsupported_version":
                self._too_new.add(prefix)
            raise
        self._too_new.discard(prefix)
        return []

    def _entity(self, prefix: str, entity: tuple[str, str], payload: bytes, ts: float) -> list[Record]:
        metric = self._entities.get(entity)
        if metric is None:
            return []
        text = _text(payload)
        value = _number(text) if entity[0] == "sensor" else _word(text, ON_OFF)
        return [] if value is None else [Reading(ts, prefix, metric, value)]
