"""OpenDTU (Hoymiles micro-inverters) over MQTT: one plain-text value per topic.

Topics are `<base>/<serial>/<channel>/<field>` (channel 0 = AC side, 1..n = DC
inputs), `<base>/<serial>/status/reachable`, and totals over all inverters at
`<base>/ac/...` and `<base>/dc/...`. The device key is the inverter's serial;
the totals have the key `total`. Values carry no time of their own: readings
take the receive time.
"""

from __future__ import annotations

import math
import re
from typing import ClassVar

from gateway.decoders.base import DecodeError, MqttDecoder
from gateway.decoders.opendtu.fields import AC, DC, MAX_INPUTS, STATUS, TOTAL_KEY, TOTALS, Field
from gateway.model import Reading, Record

_NUMBER = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_CHANNEL = re.compile(r"0|[1-9][0-9]{0,2}")
#: Top-level groups under the base that are not inverters and carry nothing per inverter.
_NOT_INVERTERS = frozenset({"dtu", "ac", "dc"})


def _number(payload: bytes) -> float | None:
    """A plain-text number; None for an empty payload (a retained topic being cleared)."""
    text = payload.strip()
    if not text:
        return None
    try:
        word = text.decode("ascii")
    except UnicodeDecodeError:
        raise DecodeError("bad_value", "not text") from None
    if not _NUMBER.fullmatch(word):
        raise DecodeError("bad_value", repr(word[:40]))
    value = float(word)
    if not math.isfinite(value):
        raise DecodeError("bad_value", repr(word[:40]))
    return value


def _inverter_field(channel: str, name: str) -> tuple[Field, str] | None:
    """(field, metric suffix) of `<serial>/<channel>/<name>`, None when it is not read."""
    if channel == "status":
        field = STATUS.get(name)
        return None if field is None else (field, "")
    if not _CHANNEL.fullmatch(channel):
        return None
    if channel == "0":
        field = AC.get(name)
        return None if field is None else (field, "")
    field = DC.get(name)
    if field is None:
        return None
    if int(channel) > MAX_INPUTS:
        raise DecodeError("unexpected_shape", f"DC input {channel}; inputs 1..{MAX_INPUTS} are read")
    return field, f"_in{channel}"


class OpenDTUDecoder(MqttDecoder):
    """OpenDTU's per-inverter values (AC, DC inputs, reachability) and its totals."""

    name: ClassVar[str] = "opendtu"
    default_topics: ClassVar[tuple[str, ...]] = ("solar/#",)

    def __init__(self, *, base: str = "solar") -> None:
        trimmed = base.strip("/")
        if not trimmed or "+" in trimmed or "#" in trimmed:
            raise ValueError(f"opendtu base {base!r}: needs a topic without wildcards, like 'solar'")
        self._base = trimmed + "/"

    def topics(self, prefix: str | None = None) -> list[str]:
        if prefix is None:
            return [self._base + "#"]
        if prefix == TOTAL_KEY:
            return [self._base + "ac/#", self._base + "dc/#"]
        return [f"{self._base}{prefix}/#", f"{self._base}+/inverters/{prefix}/#"]

    def decode(self, topic: str, payload: bytes, ts: float) -> list[Record]:
        if not topic.startswith(self._base):
            raise DecodeError("unknown_topic", topic)
        levels = topic[len(self._base) :].split("/")
        if len(levels) > 2 and levels[1] == "inverters":
            levels = levels[2:]  # a fork's layout: <dtuserial>/inverters/<serial>/...
        found = _locate(levels)
        if found is None:
            return []
        key, field, suffix = found
        value = _number(payload)
        if value is None:
            return []
        scaled = value if field.scale == 1.0 else round(value * field.scale, 6)
        return [Reading(ts, key, field.metric + suffix, scaled)]


def _locate(levels: list[str]) -> tuple[str, Field, str] | None:
    """(device key, field, suffix) of a topic below the base; None for topics we do not read."""
    if len(levels) == 2:
        field = TOTALS.get((levels[0], levels[1]))
        return None if field is None else (TOTAL_KEY, field, "")
    if len(levels) != 3 or levels[0] in _NOT_INVERTERS:
        return None
    serial, channel, name = levels
    found = _inverter_field(channel, name)
    return None if found is None else (serial, found[0], found[1])
