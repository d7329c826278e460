"""What a `commonwatt bridge` publishes, read back on the gateway: see README.md.

The device key is `<bridge site id>/<device id on the bridge>`, taken from the topic;
the bridge's own status topic gives `online` under the key `<bridge site id>`.
The records keep the bridge's timestamps (the device's time, or the bridge's
receive time), so a message delivered twice gives the same readings twice.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any, ClassVar

from gateway.decoders.base import DecodeError, MqttDecoder
from gateway.decoders.commonwatt_bridge.wire import OFFLINE, ONLINE, STATUS, TOPIC_ROOT, VERSION
from gateway.journal.schema import BADGE
from gateway.model import BadgeEvent, Reading, Record, normalize_uid
from gateway.quantities import is_known

_TOPIC = re.compile(re.escape(TOPIC_ROOT) + r"/([^/]+)/([^/]+)")
_HEX = re.compile(r"[0-9A-F]{2,40}")
_STATUS_WORDS = {ONLINE: 1.0, OFFLINE: 0.0}


def _finite(raw: Any, what: str) -> float:
    """A JSON number that is finite; booleans are not numbers here."""
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        try:
            value = float(raw)
        except OverflowError:
            value = math.inf
        if math.isfinite(value):
            return value
    raise DecodeError("bad_record", f"{what} {raw!r}"[:60])


def _badge(ts: float, key: str, raw: Any) -> Record:
    uid = normalize_uid(raw) if isinstance(raw, str) else ""
    if not _HEX.fullmatch(uid):
        raise DecodeError("bad_badge", repr(raw)[:40])
    return BadgeEvent(ts, key, uid)


def _reading(metric: str) -> Callable[[float, str, Any], Record]:
    if not is_known(metric):
        raise DecodeError("unknown_metric", metric[:40])
    return lambda ts, key, raw: Reading(ts, key, metric, _finite(raw, metric))


#: How the third element of an entry is read, by its metric; every other metric is a Reading.
_SPECIAL: dict[str, Callable[[float, str, Any], Record]] = {BADGE: _badge}


def _record(entry: Any, key: str) -> Record:
    if not isinstance(entry, list) or len(entry) != 3 or not isinstance(entry[1], str):
        raise DecodeError("bad_record", repr(entry)[:60])
    ts = _finite(entry[0], "ts")
    metric: str = entry[1]
    make = _SPECIAL.get(metric) or _reading(metric)
    return make(ts, key, entry[2])


def _document(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except (ValueError, RecursionError):
        raise DecodeError("bad_json") from None


def _entries(doc: Any) -> list[Any]:
    """The record entries of a version-1 payload."""
    if not isinstance(doc, dict):
        raise DecodeError("bad_payload", "not a JSON object")
    version = doc.get("v")
    if not isinstance(version, int) or isinstance(version, bool):
        raise DecodeError("bad_payload", "no integer `v`")
    if version != VERSION:
        raise DecodeError("unsupported_version", f"v {version}; this gateway reads v {VERSION}")
    entries = doc.get("records")
    if not isinstance(entries, list):
        raise DecodeError("bad_payload", "`records` is not a list")
    return entries


class BridgeDecoder(MqttDecoder):
    """Batches of records published by `commonwatt bridge`, and the bridge's online status."""

    name: ClassVar[str] = "commonwatt_bridge"
    default_topics: ClassVar[tuple[str, ...]] = (f"{TOPIC_ROOT}/#",)

    def topics(self, prefix: str | None = None) -> list[str]:
        """`<site>/<device>` subscribes to that device; a bare `<site>` to the bridge's status."""
        if prefix is None:
            return list(self.default_topics)
        if "/" in prefix:
            return [f"{TOPIC_ROOT}/{prefix}"]
        return [f"{TOPIC_ROOT}/{prefix}/{STATUS}"]

    def decode(self, topic: str, payload: bytes, ts: float) -> list[Record]:
        match = _TOPIC.fullmatch(topic)
        if match is None:
            raise DecodeError("unknown_topic", topic)
        site, device = match.groups()
        if not payload.strip():
            return []  # a retained message being cleared
        if device == STATUS:
            return [self._status(site, payload, ts)]
        key = f"{site}/{device}"
        return [_record(entry, key) for entry in _entries(_document(payload))]

    @staticmethod
    def _status(site: str, payload: bytes, ts: float) -> Record:
        value = _STATUS_WORDS.get(payload.strip())
        if value is None:
            raise DecodeError("bad_value", f"status {payload[:20]!r}")
        return Reading(ts, site, "online", value)
