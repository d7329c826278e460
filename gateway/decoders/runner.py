"""Run a decoder over a capture: the engine of `commonwatt decode` and of the corpus tests.

MQTT captures are JSON lines `{"topic": "...", "payload": "..."}` (optionally
`"ts"`: UTC seconds or ISO 8601, the receive time; `"payload_b64"` for binary
payloads). Serial captures are the raw bytes as they came off the wire.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

from gateway.decoders.base import DecodeError, MqttDecoder, SerialDecoder
from gateway.model import BadgeEvent, Reading, Record, iso

#: Receive time given to records of a capture line that has no "ts" of its own.
#: A fixed time keeps `decode` output reproducible; captures with times use theirs.
DEFAULT_TS = 1_700_000_000.0
#: Bytes handed to a serial decoder per call when replaying a capture.
SERIAL_CHUNK = 64 * 1024


@dataclass
class DecodeStats:
    frames: int = 0
    records: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        parts = [
            f"frames {self.frames}",
            f"records {self.records}",
            f"rejected {sum(self.rejected.values())}",
        ]
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(self.rejected.items()))
        return "; ".join(parts) + (f" ({reasons})" if reasons else "")


#: The records of one frame share their time: format each time once (a day of VE.Direct is 475k records).
_iso = lru_cache(maxsize=4096)(iso)


def record_json(record: Record) -> dict[str, Any]:
    """The one JSON shape of a record on every human-facing output."""
    if isinstance(record, Reading):
        return {"ts": _iso(record.ts), "device": record.device, "metric": record.metric, "value": record.value}
    assert isinstance(record, BadgeEvent)
    return {"ts": _iso(record.ts), "device": record.reader, "uid": record.badge_uid}


def _line_ts(raw: object, default: float) -> float:
    if raw is None:
        return default
    if isinstance(raw, int | float):
        return float(raw)
    if isinstance(raw, str):
        return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
    raise DecodeError("bad_capture_line", f"ts {raw!r}")


def parse_capture_line(line: str) -> tuple[str, bytes, float | None]:
    """One capture line -> (topic, payload bytes, ts or None). DecodeError when unreadable."""
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise DecodeError("bad_capture_line", str(exc)) from None
    if not isinstance(obj, dict) or not isinstance(obj.get("topic"), str):
        raise DecodeError("bad_capture_line", "expected an object with a string 'topic'")
    if "payload_b64" in obj:
        payload = base64.b64decode(obj["payload_b64"])
    else:
        raw = obj.get("payload", "")
        payload = (raw if isinstance(raw, str) else json.dumps(raw)).encode()
    ts = obj.get("ts")
    return obj["topic"], payload, None if ts is None else _line_ts(ts, DEFAULT_TS)


def decode_mqtt_lines(decoder: MqttDecoder, lines: Iterable[str], stats: DecodeStats) -> Iterator[Record]:
    ts = DEFAULT_TS
    for line in lines:
        if not line.strip():
            continue
        stats.frames += 1
        try:
            topic, payload, line_ts = parse_capture_line(line)
            ts = line_ts if line_ts is not None else ts
            records = decoder.decode(topic, payload, ts)
        except DecodeError as exc:
            stats.rejected[exc.reason] += 1
            continue
        stats.records += len(records)
        yield from records


def decode_serial_chunks(
    decoder: SerialDecoder, chunks: Iterable[bytes], stats: DecodeStats, ts: float = DEFAULT_TS
) -> Iterator[Record]:
    for chunk in chunks:
        for frame in decoder.feed(chunk, ts):
            stats.frames += 1
            if isinstance(frame, DecodeError):
                stats.rejected[frame.reason] += 1
                continue
            stats.records += len(frame)
            yield from frame
