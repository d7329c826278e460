"""Tasmota over MQTT: energy telemetry, relay state and last will of plugs and meters.

Topics follow the device's FullTopic (default `%prefix%/%topic%/`) with the
command name as the last level. The device key is `%topic%`. Which messages
are read, and what they give, is the `_HANDLERS` table at the bottom.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, ClassVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.decoders.base import DecodeError, MqttDecoder
from gateway.decoders.tasmota.fields import ENERGY, LWT_STATES, PHASES, RELAY_KEYS, RELAY_STATES, Field
from gateway.model import Reading, Record
from gateway.quantities import is_known

#: FullTopic tokens -> regular expression. `%prefix%` and `%topic%` are required.
_TOKENS = {
    "%prefix%": r"(?P<prefix>cmnd|stat|tele)",
    "%topic%": r"(?P<topic>[^/+#]+)",
    "%hostname%": r"[^/]+",
    "%id%": r"[^/]+",
}
#: Before this year the device's clock has not been set (Tasmota counts from 1970 until NTP answers).
_CLOCK_SET_YEAR = 2016


def _normalize_full_topic(full_topic: str) -> str:
    """Tasmota ends every FullTopic with `/` (it adds one when the user leaves it out)."""
    return full_topic if full_topic.endswith("/") else full_topic + "/"


def compile_full_topic(full_topic: str) -> re.Pattern[str]:
    """A FullTopic pattern -> a regex with groups prefix, topic, command. ValueError when unusable."""
    full = _normalize_full_topic(full_topic)
    problems = [f"needs {tok} exactly once" for tok in ("%prefix%", "%topic%") if full.count(tok) != 1]
    if "+" in full or "#" in full:
        problems.append("must not contain the MQTT wildcards + or #")
    pieces = re.split(r"(%[a-z]+%)", full)
    problems += [f"unknown token {p}" for p in pieces[1::2] if p not in _TOKENS]
    if problems:
        raise ValueError(f"tasmota full_topic {full_topic!r}: " + "; ".join(problems))
    regex = "".join(_TOKENS[p] if i % 2 else re.escape(p) for i, p in enumerate(pieces))
    return re.compile(regex + r"(?P<command>[^/]+)")


def _number(raw: Any, name: str) -> float:
    """A JSON number as float; booleans, strings and non-finite values are bad values."""
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise DecodeError("bad_value", f"{name}={raw!r}")
    try:
        value = float(raw)
    except OverflowError:
        raise DecodeError("bad_value", f"{name} out of range") from None
    if not math.isfinite(value):
        raise DecodeError("bad_value", f"{name}={raw!r}")
    return value


def _scaled(value: float, scale: float) -> float:
    # kWh -> Wh leaves binary noise (1.1 * 1000 = 1100.0000000000002); mWh is plenty.
    return value if scale == 1.0 else round(value * scale, 6)


def _json_object(payload: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        raise DecodeError("bad_json") from None
    if not isinstance(obj, dict):
        raise DecodeError("unexpected_shape", "expected a JSON object")
    return obj


def _word(payload: bytes, states: dict[str, float]) -> float:
    """A plain-text state payload (`ON`, `Offline`) -> its value, case-insensitive."""
    try:
        word = payload.decode().strip().lower()
    except UnicodeDecodeError:
        raise DecodeError("bad_value", "not text") from None
    if word not in states:
        raise DecodeError("bad_value", f"{word[:40]!r}")
    return states[word]


class TasmotaDecoder(MqttDecoder):
    """Tasmota telemetry (SENSOR, STATE, LWT) and command replies (POWER, RESULT, STATUS8/10/11)."""

    name: ClassVar[str] = "tasmota"
    default_topics: ClassVar[tuple[str, ...]] = ("tele/+/+", "stat/+/+")

    def __init__(self, *, full_topic: str = "%prefix%/%topic%/", timezone: str = "UTC") -> None:
        self._full_topic = _normalize_full_topic(full_topic)
        self._pattern = compile_full_topic(full_topic)
        try:
            self._tz = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"tasmota timezone {timezone!r} is not a known zone name") from None

    def topics(self, prefix: str | None = None) -> list[str]:
        base = self._full_topic.replace("%topic%", prefix or "+")
        base = base.replace("%hostname%", "+").replace("%id%", "+")
        return [base.replace("%prefix%", p) + "+" for p in ("tele", "stat")]

    def decode(self, topic: str, payload: bytes, ts: float) -> list[Record]:
        match = self._pattern.fullmatch(topic)
        if match is None:
            raise DecodeError("unknown_topic", topic)
        handler = _HANDLERS.get((match["prefix"], match["command"]))
        if handler is None:
            return []
        return handler(self, match["topic"], payload, ts)

    def _time(self, obj: dict[str, Any], ts: float) -> float:
        """The message's `Time` (local wall time in the configured zone) as UTC seconds."""
        raw = obj.get("Time")
        if raw is None:
            return ts
        try:
            when = datetime.fromisoformat(raw)
        except (TypeError, ValueError):
            raise DecodeError("bad_time", f"{raw!r}"[:60]) from None
        if when.year < _CLOCK_SET_YEAR:
            return ts
        if when.tzinfo is None:
            when = when.replace(tzinfo=self._tz)
        return when.timestamp()

    def _sensor(self, key: str, obj: dict[str, Any], ts: float) -> list[Record]:
        energy = obj.get("ENERGY")
        if energy is None:
            return []
        if not isinstance(energy, dict):
            raise DecodeError("unexpected_shape", "ENERGY is not an object")
        when = self._time(obj, ts)
        out: list[Record] = []
        for name, field in ENERGY.items():
            raw = energy.get(name)
            if isinstance(raw, list):
                out += _phases(key, name, field, raw, when)
            elif raw is not None:
                out.append(Reading(when, key, field.metric, _scaled(_number(raw, name), field.scale)))
        return out

    def _relay(self, key: str, obj: dict[str, Any], ts: float) -> list[Record]:
        for name in RELAY_KEYS:
            raw = obj.get(name)
            if raw is None:
                continue
            if not isinstance(raw, str) or raw.lower() not in RELAY_STATES:
                raise DecodeError("bad_value", f"{name}={raw!r}"[:60])
            return [Reading(self._time(obj, ts), key, "relay_on", RELAY_STATES[raw.lower()])]
        return []


def _phases(key: str, name: str, field: Field, raw: list[Any], ts: float) -> list[Record]:
    """An array value of a multi-phase meter -> one reading per phase (`power_w_l1` ...).

    A quantity without per-phase names in the vocabulary (frequency: one grid, one
    frequency) takes the first element under its plain name.
    """
    if len(raw) > len(PHASES):
        raise DecodeError("unexpected_shape", f"{name} has {len(raw)} channels; at most 3 are read")
    if not is_known(field.metric + PHASES[0]):
        raw = raw[:1]
        suffixes: tuple[str, ...] = ("",)
    else:
        suffixes = PHASES
    return [
        Reading(ts, key, field.metric + suffix, _scaled(_number(value, name), field.scale))
        for suffix, value in zip(suffixes, raw, strict=False)
        if value is not None
    ]


def _on_sensor(dec: TasmotaDecoder, key: str, payload: bytes, ts: float) -> list[Record]:
    return dec._sensor(key, _json_object(payload), ts)


def _on_status_sns(dec: TasmotaDecoder, key: str, payload: bytes, ts: float) -> list[Record]:
    return dec._sensor(key, _member(_json_object(payload), "StatusSNS"), ts)


def _on_state(dec: TasmotaDecoder, key: str, payload: bytes, ts: float) -> list[Record]:
    return dec._relay(key, _json_object(payload), ts)


def _on_status_sts(dec: TasmotaDecoder, key: str, payload: bytes, ts: float) -> list[Record]:
    return dec._relay(key, _member(_json_object(payload), "StatusSTS"), ts)


def _on_power(dec: TasmotaDecoder, key: str, payload: bytes, ts: float) -> list[Record]:
    return [Reading(ts, key, "relay_on", _word(payload, RELAY_STATES))]


def _on_lwt(dec: TasmotaDecoder, key: str, payload: bytes, ts: float) -> list[Record]:
    return [Reading(ts, key, "online", _word(payload, LWT_STATES))]


def _member(obj: dict[str, Any], name: str) -> dict[str, Any]:
    inner = obj.get(name)
    if not isinstance(inner, dict):
        raise DecodeError("unexpected_shape", f"expected an object {name}")
    return inner


Handler = Callable[[TasmotaDecoder, str, bytes, float], list[Record]]

#: (prefix, command) -> handler. Everything else (cmnd/..., INFO1, UPGRADE ...) carries nothing we keep.
_HANDLERS: dict[tuple[str, str], Handler] = {
    ("tele", "SENSOR"): _on_sensor,
    ("tele", "STATE"): _on_state,
    ("tele", "LWT"): _on_lwt,
    ("stat", "RESULT"): _on_state,
    ("stat", "POWER"): _on_power,
    ("stat", "POWER1"): _on_power,
    ("stat", "STATUS8"): _on_status_sns,
    ("stat", "STATUS10"): _on_status_sns,
    ("stat", "STATUS11"): _on_status_sts,
}
