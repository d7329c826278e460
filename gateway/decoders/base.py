"""What every decoder is: bytes or payloads in, records out. No ports, sockets or clocks.

Two kinds:
- `MqttDecoder` decodes one MQTT message (topic and payload) at a time;
- `SerialDecoder` is fed raw bytes as they arrive and frames them itself
  (frames may be split anywhere, noise may sit between them).

Records carry as `device` (`Reading.device`, `BadgeEvent.reader`) the *device key*
the protocol itself carries: a topic prefix, a serial number. The sources map keys
to the configured device ids; `commonwatt decode` prints the keys as they are.

Decoders may keep state between calls (a framing buffer, the last full status a
delta is overlaid on) but never read a clock: the receive time is passed in.

Errors: a rejected message or frame is a `DecodeError` with a short, stable
`reason` (it becomes a label in /metrics and a line in decode's summary).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from gateway.model import Record


class DecodeError(ValueError):
    """A message or frame that cannot be used. `reason` is a stable snake_case label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class ChecksumError(DecodeError):
    """The frame is complete but its checksum or CRC does not match."""

    def __init__(self, detail: str = "") -> None:
        super().__init__("bad_checksum", detail)


class MqttDecoder(ABC):
    """Decodes MQTT messages of one protocol."""

    name: ClassVar[str]
    #: Topic filters to subscribe to when the user gives no prefix of their own.
    default_topics: ClassVar[tuple[str, ...]]

    def topics(self, prefix: str | None = None) -> list[str]:
        """Topic filters for one configured device (its prefix), or the protocol's defaults."""
        return list(self.default_topics)

    @abstractmethod
    def decode(self, topic: str, payload: bytes, ts: float) -> list[Record]:
        """Records of one message; `[]` for a message that carries nothing we keep.

        Raises DecodeError for a message that should have carried data but cannot be read.
        """

    def keepalive(self, device_key: str) -> list[tuple[str, bytes]]:
        """Messages the gateway must publish periodically to keep the device talking."""
        return []


class SerialDecoder(ABC):
    """Frames and decodes a byte stream of one protocol."""

    name: ClassVar[str]
    # Serial settings of the protocol; a decoder may set them per instance (old DSMR meters).
    baudrate: int
    bytesize: int = 8
    parity: str = "N"
    stopbits: float = 1

    @abstractmethod
    def feed(self, data: bytes, ts: float) -> list[list[Record] | DecodeError]:
        """Bytes as they arrived; one entry per completed frame: its records, or why it was rejected."""
