"""The shared vocabulary: every record that enters the gateway is one of these.

Times are UTC seconds since the epoch (floats): the device's own clock where the
protocol carries one, the receive time otherwise. Records are frozen and slotted:
they are created by the hundred thousand per second on the ingest path.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True, slots=True)
class Reading:
    """One measured value. `metric` is a name from `gateway.quantities`, unit in the name."""

    ts: float
    device: str
    metric: str
    value: float


@dataclass(frozen=True, slots=True)
class BadgeEvent:
    """A badge presented at a reader. `badge_uid` is upper-case hex."""

    ts: float
    reader: str
    badge_uid: str


Record = Reading | BadgeEvent


def normalize_uid(raw: str) -> str:
    """Badge UIDs are compared as upper-case hex without separators."""
    return "".join(ch for ch in raw.strip() if ch not in ": -").upper()


def iso(ts: float) -> str:
    """UTC ISO 8601 with milliseconds, the form every human-facing output uses."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
