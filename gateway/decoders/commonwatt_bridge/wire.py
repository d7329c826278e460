"""The bridge's wire format, version 1: what `commonwatt bridge` publishes, in one place.

The bridge encodes journal rows with `encode_rows`; the gateway reads them back with
`BridgeDecoder`. README.md documents the format for people; this module is its
definition for code. A change that an older gateway would misread bumps `VERSION`.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.journal.schema import BADGE, Row

#: First two levels of every topic the bridge publishes.
TOPIC_ROOT = "commonwatt/bridge"
#: Version of the payload format (`"v"`). The decoder refuses payloads of any other version.
VERSION = 1
#: Last level of the bridge's own online/offline topic (retained, and its last will).
STATUS = "status"
ONLINE = b"online"
OFFLINE = b"offline"
#: Records per message: large enough to amortize MQTT's per-message cost (about 15 kB of JSON).
MAX_RECORDS = 500
#: Integral floats up to this are written as integers (`1718195712`, not `1718195712.0`): exact.
_EXACT_INT = 2.0**53


def device_topic(site: str, device: str) -> str:
    return f"{TOPIC_ROOT}/{site}/{device}"


def status_topic(site: str) -> str:
    return f"{TOPIC_ROOT}/{site}/{STATUS}"


@dataclass
class Encoded:
    """Messages (topic, payload) of a run of journal rows, and the rows not sent, by reason."""

    messages: list[tuple[str, bytes]] = field(default_factory=list)
    records: int = 0
    skipped: Counter[str] = field(default_factory=Counter)


def _num(x: float) -> float | int:
    return int(x) if x.is_integer() and abs(x) < _EXACT_INT else x


def _entry(row: Row) -> list[object] | str:
    """The wire entry of one row, or why it is not sent."""
    _seq, ts, _device, metric, value, text = row
    if metric == BADGE and text is not None:
        return [_num(ts), BADGE, text]
    if text is not None or metric.startswith("event."):
        return "event"  # later parts of a gateway journal; a bridge journal has none
    if value is None or not math.isfinite(value):
        return "non_finite"  # a NaN reading carries nothing, and JSON cannot carry it
    return [_num(ts), metric, _num(value)]


def payload(entries: Sequence[list[object]]) -> bytes:
    return json.dumps({"v": VERSION, "records": entries}, separators=(",", ":"), allow_nan=False).encode()


def encode_rows(rows: Sequence[Row], site: str, max_records: int = MAX_RECORDS) -> Encoded:
    """Rows in journal order -> one or more messages per device, each device's rows in order."""
    out = Encoded()
    by_device: dict[str, list[list[object]]] = {}
    for row in rows:
        entry = _entry(row)
        if isinstance(entry, str):
            out.skipped[entry] += 1
        else:
            by_device.setdefault(row[2], []).append(entry)
    for device, entries in by_device.items():
        topic = device_topic(site, device)
        for start in range(0, len(entries), max_records):
            out.messages.append((topic, payload(entries[start : start + max_records])))
        out.records += len(entries)
    return out
