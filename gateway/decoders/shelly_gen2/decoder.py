"""Shelly Gen2+ (Plus, Pro, Gen3, Gen4) over MQTT: status topics, RPC notifications, online.

Topics, for a device whose MQTT topic prefix is `<prefix>` (the device id by
default; users may set any prefix, slashes included):

- `<prefix>/status/<type>:<id>`: the full status of one component ("Generic
  status update over MQTT"). Every field present becomes a reading at receive time.
- `<prefix>/events/rpc`: JSON-RPC notifications ("RPC status notifications").
  `NotifyStatus` carries only what changed since the last one; its changed fields
  become readings at the device's `params.ts`. Unchanged fields are not new
  readings, so none are emitted for them. The delta is overlaid on the last known
  status of the component, which `status()` returns. `NotifyFullStatus` is
  handled like a full status; `NotifyEvent` and other methods carry no readings.
- `<prefix>/online`: `true`, or `false` as the retained last will.

Device keys: channel 0 of a device is the bare prefix; channel N > 0 is
`<prefix>/<channel>:<N>` (`shellyplus2pm-.../switch:1`, `shellypro3em-.../em1:2`).
"""

from __future__ import annotations

import copy
import json
import math
import re
from typing import Any, ClassVar

from gateway.decoders.base import DecodeError, MqttDecoder
from gateway.decoders.shelly_gen2.fields import COMPONENTS, Component, Field
from gateway.model import Reading, Record

_TOPIC = re.compile(r"(?P<prefix>.+)/(?:status/(?P<component>[^/]+)|(?P<kind>events/rpc|online))")
#: Topics of the device's RPC and control channels: requests, responses and
#: commands (some published by the gateway itself). Known, and carry no readings.
_SILENT = re.compile(r".+/(?:rpc|command(?:/[^/]+)?)")
_COMPONENT = re.compile(r"(?P<type>[a-z0-9_]+):(?P<id>\d{1,3})")
#: The channel part of a configured prefix like `shellyplus2pm-.../switch:1`.
_CHANNEL_SUFFIX = re.compile(r"/(?:switch|em|em1):\d{1,3}$")
#: Notification methods that carry component status; True when it is complete.
_STATUS_METHODS = {"NotifyStatus": False, "NotifyFullStatus": True}
#: Device times outside these bounds (UTC 2000-01-01 .. 2100-01-01) come from a
#: clock that has not synchronised yet; the receive time is used instead.
_PLAUSIBLE_TS = (946_684_800.0, 4_102_444_800.0)
#: Status objects are two levels deep; deeper overlays just replace.
_MAX_OVERLAY_DEPTH = 4

Status = dict[str, Any]


class ShellyGen2Decoder(MqttDecoder):
    name: ClassVar[str] = "shelly_gen2"
    default_topics: ClassVar[tuple[str, ...]] = ("+/status/#", "+/events/rpc", "+/online")

    def __init__(self) -> None:
        self._status: dict[tuple[str, str], Status] = {}

    def topics(self, prefix: str | None = None) -> list[str]:
        """Filters for one device; a channel key (`<prefix>/switch:1`) subscribes to its device."""
        if prefix is None:
            return list(self.default_topics)
        base = _CHANNEL_SUFFIX.sub("", prefix)
        return [f"{base}/status/#", f"{base}/events/rpc", f"{base}/online"]

    def status(self, prefix: str, component: str) -> Status | None:
        """The last known full status of a component (`switch:0`), deltas overlaid."""
        found = self._status.get((prefix, component))
        return copy.deepcopy(found)

    def decode(self, topic: str, payload: bytes, ts: float) -> list[Record]:
        match = _TOPIC.fullmatch(topic)
        if match is None:
            if _SILENT.fullmatch(topic):
                return []
            raise DecodeError("unknown_topic", topic)
        prefix = match["prefix"]
        if match["component"] is not None:
            return self._status_topic(prefix, match["component"], payload, ts)
        if match["kind"] == "online":
            return [Reading(ts, prefix, "online", _online(payload))]
        return self._notification(prefix, _json(payload), ts)

    def _status_topic(self, prefix: str, component: str, payload: bytes, ts: float) -> list[Record]:
        found = _component(prefix, component)
        if found is None:
            return []  # sys, wifi, input:0 ...: nothing we keep
        key, spec = found
        status = _json(payload)
        if not isinstance(status, dict):
            raise DecodeError("unexpected_shape", f"{component} status is not an object")
        readings = _readings(spec, status, key, ts)
        self._status[(prefix, component)] = status
        return readings

    def _notification(self, prefix: str, frame: object, ts: float) -> list[Record]:
        if not isinstance(frame, dict) or not isinstance(frame.get("method"), str):
            raise DecodeError("unexpected_shape", "not a JSON-RPC notification")
        if frame["method"] not in _STATUS_METHODS:
            return []  # NotifyEvent (button pushes, scripts ...) carries no readings
        full = _STATUS_METHODS[frame["method"]]
        params = frame.get("params")
        if not isinstance(params, dict):
            raise DecodeError("unexpected_shape", "params is not an object")
        ts = _device_ts(params.get("ts"), ts)
        readings: list[Record] = []
        updates: list[tuple[str, Status]] = []
        for component, status in params.items():
            found = _component(prefix, component)
            if found is None:
                continue
            if not isinstance(status, dict):
                raise DecodeError("unexpected_shape", f"{component} is not an object")
            readings += _readings(found[1], status, found[0], ts)
            updates.append((component, status))
        for component, status in updates:  # only once the whole frame has been read
            self._remember(prefix, component, status, full)
        return readings

    def _remember(self, prefix: str, component: str, status: Status, full: bool) -> None:
        known = self._status.get((prefix, component))
        self._status[(prefix, component)] = status if full or known is None else _overlay(known, status)


def _component(prefix: str, component: str) -> tuple[str, Component] | None:
    """Device key and table of a component name like `switch:1`; None for ones we don't read."""
    match = _COMPONENT.fullmatch(component)
    spec = COMPONENTS.get(match["type"]) if match else None
    if match is None or spec is None:
        return None
    channel = int(match["id"])
    return (prefix if channel == 0 else f"{prefix}/{spec.channel}:{channel}"), spec


def _readings(spec: Component, status: Status, key: str, ts: float) -> list[Record]:
    """One reading per table field present (and not null) in the status object."""
    out: list[Record] = []
    for field in spec.fields:
        raw = _lookup(status, field.path)
        if raw is not None:
            out.append(Reading(ts, key, field.metric, _convert(field, raw)))
    return out


def _lookup(status: Status, path: tuple[str, ...]) -> object:
    node: object = status
    for step in path:
        if node is None:
            return None
        if not isinstance(node, dict):
            raise DecodeError("unexpected_shape", f"{'.'.join(path)}: not an object at {step!r}")
        node = node.get(step)
    return node


def _convert(field: Field, raw: object) -> float:
    if field.conversion == "bool":
        if not isinstance(raw, bool):
            raise DecodeError("bad_value", f"{'.'.join(field.path)}: {raw!r} is not true/false")
        return 1.0 if raw else 0.0
    value = _number(raw, ".".join(field.path))
    return abs(value) if field.conversion == "magnitude" else value


def _number(raw: object, what: str) -> float:
    """JSON int or float, finite. A bool is not a number here."""
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise DecodeError("bad_value", f"{what}: {raw!r} is not a number")
    try:
        value = float(raw)
    except OverflowError:
        raise DecodeError("bad_value", f"{what}: out of range") from None
    if not math.isfinite(value):
        raise DecodeError("bad_value", f"{what}: {raw!r}")
    return value


def _device_ts(raw: object, received: float) -> float:
    if raw is None:
        return received
    value = _number(raw, "params.ts")
    low, high = _PLAUSIBLE_TS
    return value if low <= value < high else received


def _json(payload: bytes) -> object:
    try:
        return json.loads(payload)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise DecodeError("bad_json", str(exc)[:80]) from None


def _online(payload: bytes) -> float:
    text = payload.strip()
    if text == b"true":
        return 1.0
    if text == b"false":
        return 0.0
    raise DecodeError("bad_value", f"online: {payload[:20]!r}")


def _overlay(known: Status, delta: Status, depth: int = 0) -> Status:
    """`known` with `delta` laid over it; nested objects are merged, not replaced."""
    merged = dict(known)
    for name, value in delta.items():
        below = merged.get(name)
        if isinstance(value, dict) and isinstance(below, dict) and depth < _MAX_OVERLAY_DEPTH:
            merged[name] = _overlay(below, value, depth + 1)
        else:
            merged[name] = value
    return merged
