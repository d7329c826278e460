"""VE.Direct TEXT blocks -> Readings (Victron MPPT chargers, BMV and SmartShunt monitors)."""

from __future__ import annotations

import re
from typing import ClassVar

from gateway.decoders.base import DecodeError, SerialDecoder
from gateway.decoders.vedirect.fields import FIELDS, NO_VALUE, ON_OFF, SERIAL_LABEL, Field
from gateway.decoders.vedirect.framer import MARKER, VEDirectFramer
from gateway.model import Reading, Record

_FIELDS: dict[bytes, Field] = {label.encode("ascii"): field for label, field in FIELDS.items()}
_CHECKSUM_LINE = len(MARKER) + 1
#: The fields we read: CR LF, a label of the table (or SER#), TAB, the value up to the next CR.
#: One regular expression finds them all in C; the other labels are never looked at.
_WANTED = re.compile(rb"\r\n(" + b"|".join(re.escape(label) for label in [*_FIELDS, SERIAL_LABEL]) + rb")\t([^\r]*)")


def field_value(field: Field, raw: bytes) -> float | None:
    """The metric value of one raw field; None for "no value" and for text that is not a number."""
    if raw == NO_VALUE or raw == field.absent:
        return None
    if field.on_off:
        return ON_OFF.get(raw)
    try:
        number: float = int(raw)
    except ValueError:
        try:
            number = float(raw)
        except ValueError:
            return None
    return number * field.mul / field.div


def parse_block(raw: bytes) -> tuple[str | None, list[tuple[str, float]]]:
    """(serial number or None, [(metric, value)]) of one checksum-verified block, in block order."""
    serial = None
    values: list[tuple[str, float]] = []
    for label, text in _WANTED.findall(raw, 0, len(raw) - _CHECKSUM_LINE):
        field = _FIELDS.get(label)
        if field is None:
            serial = text.decode("latin-1") or serial
            continue
        value = field_value(field, text)
        if value is not None:
            values.append((field.metric, value))
    return serial, values


class VEDirectDecoder(SerialDecoder):
    """Decodes the TEXT protocol of one VE.Direct port (19200 8N1).

    The device key is the block's `SER#`. Blocks without one (a BMV's history
    block, a BMV-70x which never sends it) take the last serial number seen on
    this stream, or `device` until one has been seen: one port is one device.

    A field whose value cannot be read (text where a number belongs) is skipped
    and the rest of the block kept: its checksum held, so it is what the device
    sent. `---` and TTG `-1` mean "no value" and give no record.
    """

    name: ClassVar[str] = "vedirect"
    baudrate = 19200

    def __init__(self, *, device: str = "vedirect") -> None:
        if not device:
            raise ValueError("device must not be empty")
        self.device = device
        self._serial: str | None = None
        self._framer = VEDirectFramer()

    def feed(self, data: bytes, ts: float) -> list[list[Record] | DecodeError]:
        out: list[list[Record] | DecodeError] = []
        for framed in self._framer.feed(data):
            if isinstance(framed, DecodeError):
                out.append(framed)
            else:
                out.append(self._records(framed, ts))
        return out

    def _records(self, raw: bytes, ts: float) -> list[Record]:
        serial, values = parse_block(raw)
        if serial is not None:
            self._serial = serial
        key = self._serial or self.device
        return [Reading(ts, key, metric, value) for metric, value in values]
