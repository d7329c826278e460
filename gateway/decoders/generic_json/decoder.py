"""Generic JSON over MQTT: readings from any device, described by a mapping of rules.

For devices without a decoder of their own (a DIY ESP32 meter, a heat-pump
bridge, a Zigbee2MQTT plug): each rule names a topic filter, a device key, a
metric and where the value sits in the payload. See mapping.py for the rules
and README.md for examples.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Any, ClassVar

from gateway.decoders.base import DecodeError, MqttDecoder
from gateway.decoders.generic_json.mapping import Path, Rule, compile_mapping, index_rules
from gateway.model import Reading, Record

#: Plain-text and string values of state metrics (case-insensitive).
STATE_WORDS = {"true": 1.0, "false": 0.0, "on": 1.0, "off": 0.0, "online": 1.0, "offline": 0.0}
_NUMBER = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
#: Epoch times above this are milliseconds (1e11 s is the year 5138).
_MS_THRESHOLD = 1e11
_MISSING = object()


def _parse(payload: bytes) -> tuple[Any, bool]:
    """(document, is_json). A payload that is not JSON is kept as text: `ON`, `online`."""
    try:
        text = payload.decode()
    except UnicodeDecodeError:
        raise DecodeError("bad_json", "not UTF-8") from None
    try:
        return json.loads(text), True
    except (ValueError, RecursionError):
        stripped = text.strip()
        if stripped.startswith(("{", "[")):
            raise DecodeError("bad_json") from None
        return stripped, False


def _resolve(doc: Any, path: Path) -> Any:
    for step in path:
        if isinstance(step, str):
            if not isinstance(doc, dict) or step not in doc:
                return _MISSING
        elif not isinstance(doc, list) or step >= len(doc):
            return _MISSING
        doc = doc[step]
    return doc


def _finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise DecodeError("bad_value", what)
    return value


def _value(raw: Any, rule: Rule) -> float | None:
    """A payload value -> the reading's value; None for null. Booleans and words only for states."""
    if raw is None:
        return None
    if isinstance(raw, bool):
        if rule.is_state:
            return float(raw)
    elif isinstance(raw, int | float):
        return _scaled(raw, rule)
    elif isinstance(raw, str):
        word = raw.strip()
        if rule.is_state and word.lower() in STATE_WORDS:
            return STATE_WORDS[word.lower()]
        if _NUMBER.fullmatch(word):
            return _scaled(float(word), rule)
    raise DecodeError("bad_value", f"{rule.metric}={raw!r}"[:80])


def _scaled(raw: float, rule: Rule) -> float:
    try:
        value = _finite(float(raw), rule.metric) * rule.scale
    except OverflowError:
        raise DecodeError("bad_value", f"{rule.metric} out of range") from None
    # 12 significant digits: drops binary noise (1.1 * 1000) and keeps every real digit.
    return value if rule.scale == 1.0 else float(f"{value:.12g}")


def _time(raw: Any, ts: float) -> float:
    """A timestamp value: epoch seconds (or milliseconds), or ISO 8601 (UTC when without offset)."""
    if raw is None or raw is _MISSING:
        return ts
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        try:
            seconds = _finite(float(raw), "time")
        except (OverflowError, DecodeError):
            raise DecodeError("bad_time", repr(raw)[:40]) from None
        return seconds / 1000.0 if abs(seconds) > _MS_THRESHOLD else seconds
    if isinstance(raw, str):
        try:
            when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise DecodeError("bad_time", repr(raw)[:40]) from None
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    raise DecodeError("bad_time", repr(raw)[:40])


class GenericJsonDecoder(MqttDecoder):
    """Readings from any JSON or plain-text MQTT payload, as the configured mapping says."""

    name: ClassVar[str] = "generic_json"
    default_topics: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *, mapping: list[dict[str, Any]]) -> None:
        self._rules = compile_mapping(mapping)
        self._by_first, self._wild = index_rules(self._rules)

    def topics(self, prefix: str | None = None) -> list[str]:
        """Every rule's topic filter, once each; the prefix plays no part (the rules name the topics)."""
        return list(dict.fromkeys(rule.topic for rule in self._rules))

    def _candidates(self, topic: str) -> tuple[Rule, ...]:
        first = topic.partition("/")[0]
        found = self._by_first.get(first)
        if found is not None:
            return found
        return () if topic.startswith("$") else self._wild  # wildcards never match $SYS/...

    def decode(self, topic: str, payload: bytes, ts: float) -> list[Record]:
        matched = [(rule, levels) for rule in self._candidates(topic) if (levels := rule.match(topic)) is not None]
        if not matched:
            raise DecodeError("unknown_topic", topic)
        if not payload.strip():
            return []  # a retained message being cleared
        doc, is_json = _parse(payload)
        records: list[Record] = []
        found = False
        for rule, levels in matched:
            if rule.path and not is_json:
                raise DecodeError("bad_json", f"{rule.metric} needs a JSON payload")
            raw = _resolve(doc, rule.path)
            if raw is _MISSING:
                continue
            found = True
            value = _value(raw, rule)
            if value is not None:
                when = ts if rule.ts_path is None else _time(_resolve(doc, rule.ts_path), ts)
                records.append(Reading(when, rule.device_key(levels), rule.metric, value))
        if not found:
            raise DecodeError("path_missing", ", ".join(_path_text(rule.path) for rule, _ in matched))
        return records


def _path_text(path: Path) -> str:
    return "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in path).lstrip(".")
