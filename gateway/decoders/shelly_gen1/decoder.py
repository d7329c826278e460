"""Shelly Gen1 (1PM, Plug S, 2.5, EM, 3EM ...) over MQTT: one plain-text value per topic.

Topics are `<base>/<device>/<path>`: `shellies/shellyplug-s-C45BBE/relay/0/power`.
The device key is `<device>` (the device's MQTT id, `<model>-<id>` by default).
Gen1 payloads carry no time: every reading is stamped with the receive time.

Channels: relay 0 and emeter 0 are the bare device key; relay N > 0 is
`<device>/relay/<N>` and emeter N > 0 is `<device>/emeter/<N>` (the two inputs of
a Shelly EM usually measure different circuits). On a 3EM the three emeter inputs
are the three phases of one connection: they become `_l1`, `_l2`, `_l3` metrics
of the bare device key.
"""

from __future__ import annotations

import math
import re
from typing import ClassVar

from gateway.decoders.base import DecodeError, MqttDecoder
from gateway.decoders.shelly_gen1.topics import BASE_TOPICS, THREE_PHASE_MODELS, TOPICS, Topic
from gateway.model import Reading, Record

_NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
_WORDS: dict[str, dict[bytes, float]] = {
    "on_off": {b"on": 1.0, b"off": 0.0, b"overpower": 0.0},
    "true_false": {b"true": 1.0, b"false": 0.0},
}
#: The channel part of a configured device key like `shellyswitch25-.../relay/1`.
_CHANNEL_SUFFIX = re.compile(r"/(?:relay|emeter)/\d{1,2}$")


class ShellyGen1Decoder(MqttDecoder):
    name: ClassVar[str] = "shelly_gen1"
    default_topics: ClassVar[tuple[str, ...]] = ("shellies/#",)

    def __init__(self, base: str = "shellies") -> None:
        """`base` is the topic level every device publishes under (`shellies` on the device)."""
        self._base = base.strip("/")
        if not self._base:
            raise ValueError("base must name a topic level, e.g. 'shellies'")
        self._lead = f"{self._base}/"

    def topics(self, prefix: str | None = None) -> list[str]:
        """Filters for one device id; a channel key (`<device>/relay/1`) subscribes to its device."""
        if prefix is None:
            return [f"{self._base}/#"]
        return [f"{self._base}/{_CHANNEL_SUFFIX.sub('', prefix)}/#"]

    def decode(self, topic: str, payload: bytes, ts: float) -> list[Record]:
        if not topic.startswith(self._lead):
            raise DecodeError("unknown_topic", topic)
        device, _, path = topic[len(self._lead) :].partition("/")
        if not path and device in BASE_TOPICS:
            return []
        found = _match(path) if device else None
        if found is None:
            raise DecodeError("unknown_topic", topic)
        spec, channel = found
        if spec.metric is None:
            return []
        key, metric = _key_and_metric(device, spec, channel)
        return [Reading(ts, key, metric, _value(spec, payload, path))]


def _match(path: str) -> tuple[Topic, int | None] | None:
    for spec in TOPICS:
        match = spec.pattern.fullmatch(path)
        if match is not None:
            return spec, int(match[1]) if spec.channel else None
    return None


def _key_and_metric(device: str, spec: Topic, channel: int | None) -> tuple[str, str]:
    assert spec.metric is not None
    if channel is None:
        return device, spec.metric
    if spec.channel == "emeter" and channel < 3 and device.partition("-")[0] in THREE_PHASE_MODELS:
        return device, f"{spec.metric}_l{channel + 1}"
    return (device if channel == 0 else f"{device}/{spec.channel}/{channel}"), spec.metric


def _value(spec: Topic, payload: bytes, path: str) -> float:
    text = payload.strip()
    words = _WORDS.get(spec.parse)
    if words is not None:
        if text not in words:
            raise DecodeError("bad_value", f"{path}: {payload[:20]!r}")
        return words[text]
    if not _NUMBER.fullmatch(text):
        raise DecodeError("bad_value", f"{path}: {payload[:20]!r} is not a number")
    value = float(text) * spec.scale
    if not math.isfinite(value):
        raise DecodeError("bad_value", f"{path}: out of range")
    return abs(value) if spec.parse == "magnitude" else value
