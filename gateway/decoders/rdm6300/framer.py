"""Cut badge-reader byte streams into card numbers: RDM6300 frames and keyboard-wedge lines.

Both framers hand back the UID of every frame read (repeats included: the
decoder's hold-off decides what is a new presentation) or why bytes were dropped.
"""

from __future__ import annotations

from functools import reduce
from operator import xor
from typing import Protocol

from gateway.decoders.base import ChecksumError, DecodeError
from gateway.decoders.rdm6300.fields import (
    CHECKSUM_CHARS,
    DATA_CHARS,
    ETX,
    FRAME_LEN,
    HEX_DIGITS,
    STX,
    WEDGE_DIGITS,
    WEDGE_ENDS,
    WEDGE_MAX,
)
from gateway.model import normalize_uid

#: Separators some readers type inside a number (`00:A3:F2:C1`); dropped, as `normalize_uid` does.
SEPARATORS = b" :-\t"

Framed = str | DecodeError


class Framer(Protocol):
    def feed(self, data: bytes) -> list[Framed]: ...


def frame_uid(chars: bytes, *, tag_only: bool = False) -> Framed:
    """The UID in the 12 characters between STX and ETX, or why they are not a frame."""
    if len(chars) != DATA_CHARS + CHECKSUM_CHARS or not set(chars) <= HEX_DIGITS:
        return DecodeError("bad_frame", f"not {DATA_CHARS + CHECKSUM_CHARS} hex characters: {chars!r}")
    raw = bytes.fromhex(chars.decode("ascii"))
    data, check = raw[:-1], raw[-1]
    if reduce(xor, data) != check:
        return ChecksumError(f"xor of {data.hex().upper()} is {reduce(xor, data):02X}, frame says {check:02X}")
    return (data[1:] if tag_only else data).hex().upper()


class RDM6300Framer:
    """STX, 12 characters, ETX. Stray bytes outside frames count as `noise`, once per run."""

    def __init__(self, *, tag_only: bool = False) -> None:
        self._tag_only = tag_only
        self._rest = b""
        self._in_junk = False

    def feed(self, data: bytes) -> list[Framed]:
        buf = self._rest + data if self._rest else data
        out: list[Framed] = []
        pos = 0
        while True:
            start = buf.find(STX, pos)
            self._junk(start > pos if start >= 0 else pos < len(buf), out)
            if start < 0:
                pos = len(buf)
                break
            end = self._frame(buf, start, out)
            if end is None:
                pos = start
                break
            pos = end
        self._rest = buf[pos:]
        return out

    def _junk(self, seen: bool, out: list[Framed]) -> None:
        if seen and not self._in_junk:
            out.append(DecodeError("noise", "bytes outside a frame"))
        self._in_junk = self._in_junk or seen

    def _frame(self, buf: bytes, start: int, out: list[Framed]) -> int | None:
        """Where reading goes on after the frame at `start`; None when it is not all here yet."""
        last = start + FRAME_LEN - 1
        etx = buf.find(ETX, start + 1, last + 1)
        stx = buf.find(STX, start + 1, last + 1)
        self._in_junk = False
        if etx == last and stx < 0:
            out.append(frame_uid(buf[start + 1 : last], tag_only=self._tag_only))
            return last + 1
        if stx >= 0 and (etx < 0 or stx < etx):
            out.append(DecodeError("bad_frame", "cut off by the next frame"))
            return stx
        if etx >= 0:
            out.append(DecodeError("bad_frame", f"{etx - start + 1} bytes, expected {FRAME_LEN}"))
            return etx + 1
        if len(buf) <= last:
            return None
        out.append(DecodeError("bad_frame", f"no end byte after {FRAME_LEN - 1} bytes"))
        self._in_junk = True  # the rest of this run belongs to the same bad frame
        return last + 1


class WedgeFramer:
    """Lines typed by a keyboard-wedge reader: digits (or hex), then CR and/or LF."""

    def __init__(self, *, wedge_format: str = "decimal") -> None:
        self._digits = WEDGE_DIGITS[wedge_format]
        self._decimal = wedge_format == "decimal"
        self._line = bytearray()
        self._overflow = False

    def feed(self, data: bytes) -> list[Framed]:
        out: list[Framed] = []
        pos = 0
        for end, byte in enumerate(data):
            if byte in WEDGE_ENDS:
                self._take(data[pos:end], out)
                if self._line and not self._overflow:
                    out.append(self._uid(bytes(self._line)))
                self._line.clear()
                self._overflow = False
                pos = end + 1
        self._take(data[pos:], out)
        return out

    def _take(self, chunk: bytes, out: list[Framed]) -> None:
        if self._overflow:
            return
        self._line += chunk
        if len(self._line) > WEDGE_MAX:
            out.append(DecodeError("bad_frame", f"line longer than {WEDGE_MAX} characters"))
            self._line.clear()
            self._overflow = True

    def _uid(self, line: bytes) -> Framed:
        typed = line.translate(None, SEPARATORS)
        if not typed or not set(typed) <= self._digits:
            return DecodeError("bad_frame", f"not a card number: {line!r}")
        text = typed.decode("ascii")
        if not self._decimal:
            return normalize_uid(text)
        digits = f"{int(text):X}"
        return digits.zfill(max(8, len(digits) + len(digits) % 2))
