"""What sources hand on, and what they tell about themselves.

A source owns one transport (a serial port, an MQTT subscription), hands the
decoded records of each message or frame to the `Inbox` (which journals them
before anything acts on them) and keeps a `SourceHealth` that the API and
/metrics show. Sources never interpret bytes themselves: decoders do.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.model import Record


class Inbox(Protocol):
    """Where sources put records. Thread-safe and non-blocking: journaling happens behind it."""

    def put(self, records: Sequence[Record]) -> None: ...


@dataclass
class SourceHealth:
    """Live state of one source, shown by /api/v1/health and /metrics."""

    name: str
    kind: str
    connected: bool = False
    #: When `connected` last changed (UTC seconds): "gone since" for an unplugged adapter.
    since: float | None = None
    last_message: float | None = None
    messages: int = 0
    records: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    error: str | None = None

    def set_connected(self, connected: bool, error: str | None = None) -> None:
        if connected != self.connected or self.since is None:
            self.since = time.time()
        self.connected = connected
        self.error = error

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "connected": self.connected,
            "since": self.since,
            "last_message": self.last_message,
            "messages": self.messages,
            "records": self.records,
            "rejected": dict(self.rejected),
            "error": self.error,
        }
