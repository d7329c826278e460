"""DSMR P1 smart-meter telegrams (NL DSMR 2.2 to 5, Belgian e-MUCS, Luxembourg unencrypted).

A telegram becomes readings of the grid connection: import and export counters,
signed power (+ import) in total and per phase, voltage and current per phase.
Which OBIS codes are read is the table in `obis.py`; the framing is `framer.py`.
Readings carry the meter's own clock (0-0:1.0.0) as their time, and the meter's
equipment identifier (0-0:96.1.1) as device key.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import ClassVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.decoders.base import ChecksumError, DecodeError, SerialDecoder
from gateway.decoders.dsmr.framer import MAX_TELEGRAM, TelegramFramer
from gateway.decoders.dsmr.obis import CRC_REQUIRED_BY, EQUIPMENT_ID, FIELDS, METRICS, TIMESTAMP, UNITS, Field
from gateway.model import Reading, Record

#: `1-0:1.8.1(001581.123*kWh)`; EasyMeter writes the code as `1-0:1.8.0*255`.
_LINE = re.compile(r"(\d+-\d+:\d+\.\d+\.\d+)(?:\*\d+)?((?:\([^()]*\))+)")
_GROUP = re.compile(r"\(([^()]*)\)")
_VALUE = re.compile(r"(\d+(?:\.\d+)?)\*(\w+)")
_CLOCK = re.compile(r"(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)([SW])")
_HEX_ID = re.compile(r"(?:[0-9A-Fa-f]{2})+")
_CRC = re.compile(rb"[0-9A-Fa-f]{4}")
#: A meter clock before this year has not been set: the receive time is used instead.
_CLOCK_SET_YEAR = 2010
#: Serial line settings by name (`framing` option).
_FRAMINGS: dict[str, tuple[int, str, float]] = {"8N1": (8, "N", 1), "7E1": (7, "E", 1)}
#: Every P1 character is 7-bit ASCII. Clearing bit 7 lets an 8N1 port read a 7E1
#: meter (the parity bit lands there) and keeps stray high bytes out of the text.
_SEVEN_BITS = bytes(b & 0x7F for b in range(256))


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """CRC-16/ARC (poly 0x8005 reflected, init 0, no final XOR), as the P1 companion standard specifies."""
    crc = 0
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def check_crc(telegram: bytes) -> bool:
    """True when the telegram carries a CRC and it matches, False when it has none (DSMR 2.2/3.0).

    The CRC covers the bytes from `/` through `!`. ChecksumError when it does not match.
    """
    bang = telegram.rindex(b"!")
    given = telegram[bang + 1 :].strip()
    if not given:
        return False
    if not _CRC.fullmatch(given):
        raise ChecksumError(f"unreadable CRC {given[:8]!r}")
    computed = crc16(telegram[: bang + 1])
    if computed != int(given, 16):
        raise ChecksumError(f"CRC {given.decode()} given, {computed:04X} computed")
    return True


def parse_lines(text: str) -> dict[str, list[str]]:
    """OBIS code -> the values in its parentheses. Lines that are not `code(value)...` are skipped."""
    objects: dict[str, list[str]] = {}
    for line in text.splitlines():
        match = _LINE.fullmatch(line.strip())
        if match is not None:
            objects[match[1]] = _GROUP.findall(match[2])
    return objects


def _quantity(obis: str, field: Field, values: list[str]) -> Decimal:
    """The value of one register in the metric's unit (the last group holds it on multi-value lines)."""
    match = _VALUE.fullmatch(values[-1])
    unit = UNITS.get(match[2]) if match is not None else None
    if match is None or unit is None or unit[0] != field.dimension:
        raise DecodeError("bad_value", f"{obis}({values[-1][:40]})")
    return Decimal(match[1]) * unit[1] * field.sign


def readings_by_metric(objects: dict[str, list[str]]) -> dict[str, Decimal]:
    """Metric -> value, registers of one metric added, total registers preferred (see obis.py)."""
    parts: dict[str, Decimal] = {}
    totals: dict[str, Decimal] = {}
    for obis, field in FIELDS.items():
        values = objects.get(obis)
        if values:
            into = totals if field.total else parts
            into[field.metric] = into.get(field.metric, Decimal(0)) + _quantity(obis, field, values)
    merged = parts | totals
    return {metric: merged[metric] for metric in METRICS if metric in merged}


def equipment_key(raw: str) -> str:
    """The meter's identifier: hex-encoded ASCII decoded (`4530...` -> `E0...`), anything else as sent."""
    if _HEX_ID.fullmatch(raw):
        text = bytes.fromhex(raw).decode("ascii", errors="replace")
        if text.isascii() and text.isprintable() and text.strip():
            return text.strip()
    return raw


class DSMRDecoder(SerialDecoder):
    """P1 telegrams. The serial settings are per instance: see `baudrate` and `framing`."""

    name: ClassVar[str] = "dsmr"
    baudrate = 115200

    def __init__(
        self,
        *,
        device: str = "dsmr",
        timezone: str = "Europe/Amsterdam",
        baudrate: int = 115200,
        framing: str = "8N1",
        max_telegram_bytes: int = MAX_TELEGRAM,
    ) -> None:
        try:
            self._tz = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"dsmr timezone {timezone!r} is not a known zone name") from None
        if framing not in _FRAMINGS:
            raise ValueError(f"dsmr framing {framing!r}: expected one of {', '.join(_FRAMINGS)}")
        if baudrate <= 0:
            raise ValueError(f"dsmr baudrate {baudrate!r} must be positive")
        self._device = device
        self._framer = TelegramFramer(max_telegram_bytes)
        # The base class declares the serial settings as class attributes; a P1 port's
        # settings depend on the meter's DSMR version, so this decoder sets them per
        # instance. The serial source reads them from the instance.
        self.baudrate = baudrate
        self.bytesize, self.parity, self.stopbits = _FRAMINGS[framing]

    def feed(self, data: bytes, ts: float) -> list[list[Record] | DecodeError]:
        frames = self._framer.feed(data.translate(_SEVEN_BITS))
        return [self._decode(frame, ts) if isinstance(frame, bytes) else frame for frame in frames]

    def _decode(self, telegram: bytes, ts: float) -> list[Record] | DecodeError:
        try:
            return self.decode_telegram(telegram, ts)
        except DecodeError as exc:
            return exc

    def decode_telegram(self, telegram: bytes, ts: float) -> list[Record]:
        """The readings of one whole telegram (`/` through the `!` line). DecodeError when unusable."""
        has_crc = check_crc(telegram)
        objects = parse_lines(telegram.decode("ascii", errors="replace"))
        if not has_crc and any(code in objects for code in CRC_REQUIRED_BY):
            raise ChecksumError("CRC missing on a DSMR 4+ telegram")
        when = self._meter_time(objects.get(TIMESTAMP), ts)
        raw_id = objects.get(EQUIPMENT_ID, [""])[-1]
        # Old meters send an all-zero identifier: no identifier at all.
        device = equipment_key(raw_id) if raw_id.strip("0") else self._device
        return [Reading(when, device, m, float(v)) for m, v in readings_by_metric(objects).items()]

    def _meter_time(self, values: list[str] | None, ts: float) -> float:
        """The meter's clock as UTC seconds; the receive time when the telegram has none."""
        if not values:
            return ts
        match = _CLOCK.fullmatch(values[-1])
        if match is None:
            raise DecodeError("bad_value", f"{TIMESTAMP}({values[-1][:20]})")
        yy, mo, dd, hh, mi, ss = (int(g) for g in match.groups()[:6])
        try:
            local = datetime(2000 + yy, mo, dd, hh, mi, ss)
        except ValueError:
            raise DecodeError("bad_value", f"{TIMESTAMP}({values[-1]})") from None
        if local.year < _CLOCK_SET_YEAR:
            return ts
        return self._utc(local, summer=match[7] == "S")

    def _utc(self, local: datetime, *, summer: bool) -> float:
        """Local meter time -> UTC. The S/W flag picks the hour that occurs twice when clocks go back."""
        for fold in (0, 1):
            aware = local.replace(tzinfo=self._tz, fold=fold)
            if bool(aware.dst()) == summer:
                return aware.timestamp()
        return local.replace(tzinfo=self._tz).timestamp()
