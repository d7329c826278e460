"""Cutting a P1 byte stream into telegrams: from `/` to the end of the `!` line.

The meter sends `/` + header, data lines, and `!` + CRC (4 hex digits, DSMR 4
and later) or a bare `!` (DSMR 2.2 / 3.0), each line ended by CR LF. Bytes may
arrive split anywhere. What the framer decides depends only on the bytes, never
on how they were split, so a capture replays exactly as it was received live.

Rejections (each a `DecodeError` in the output, in stream order):
- `noise`: a run of bytes outside any telegram (a partial telegram when the
  gateway starts mid-stream, line noise, a wrongly inverted signal), counted once
  per run when the next telegram starts. CR, LF, space, NUL and DEL are an idle
  line, not noise;
- `truncated`: a new `/` before the `!` of the telegram in progress (the meter
  restarted, bytes were lost); the new telegram is kept;
- `frame_too_long`: no `!` within `max_length` bytes; the rest, up to the next
  `/`, is dropped silently (it belongs to the rejected telegram);
- `bad_checksum`: the `!` line is not `!`, CR LF or `!XXXX` CR LF.
"""

from __future__ import annotations

from gateway.decoders.base import ChecksumError, DecodeError

#: Far above any real telegram (DSMR 5 about 1 kB, Belgian with the 13-month
#: demand history about 2 kB), small enough that garbage cannot eat memory.
MAX_TELEGRAM = 16 * 1024
#: `!` + 4 hex digits + CR LF: the `\n` ending a telegram must fall within these bytes.
_TRAILER = 7
#: Bytes an idle or freshly plugged line produces; not counted as noise.
_IDLE = b"\x00\t\n\r \x7f"


class TelegramFramer:
    """Stateful framing buffer. `feed` returns whole telegrams (bytes) and framing rejections."""

    def __init__(self, max_length: int = MAX_TELEGRAM) -> None:
        self._max = max_length
        self._buf = bytearray()
        self._in_telegram = False
        self._junk = False  # the current run outside telegrams has non-idle bytes
        self._quiet = False  # ... and they belong to an already rejected telegram

    def feed(self, data: bytes) -> list[bytes | DecodeError]:
        self._buf += data
        out: list[bytes | DecodeError] = []
        while self._in_telegram or self._seek_start(out):
            if not self._take_telegram(out):
                break
        return out

    def _seek_start(self, out: list[bytes | DecodeError]) -> bool:
        """Drop bytes before the next `/`; True when a telegram starts."""
        start = self._buf.find(b"/")
        junk = self._buf if start < 0 else self._buf[:start]
        self._junk = self._junk or bool(junk.translate(None, _IDLE))
        if start < 0:
            self._buf.clear()
            return False
        del self._buf[:start]
        if self._junk and not self._quiet:
            out.append(DecodeError("noise", "bytes outside a telegram"))
        self._junk = self._quiet = False
        self._in_telegram = True
        return True

    def _take_telegram(self, out: list[bytes | DecodeError]) -> bool:
        """Complete or reject the telegram at the start of the buffer; False when more bytes are needed."""
        buf = self._buf
        limit = min(len(buf), self._max + 1)
        bang = buf.find(b"!", 0, limit)
        restart = buf.find(b"/", 1, bang if bang >= 0 else limit)
        if restart >= 0:
            del buf[:restart]
            out.append(DecodeError("truncated", "a new telegram began before '!'"))
            return True
        if bang < 0:
            if len(buf) <= self._max:
                return False
            out.append(DecodeError("frame_too_long", f"no '!' within {self._max} bytes"))
            return self._drop(self._max + 1)
        end = buf.find(b"\n", bang, bang + _TRAILER)
        if end >= 0:
            out.append(bytes(buf[: end + 1]))
            del buf[: end + 1]
            self._in_telegram = False
            return True
        if len(buf) < bang + _TRAILER:
            return False
        out.append(ChecksumError("unreadable CRC line"))
        return self._drop(bang + 1)

    def _drop(self, n: int) -> bool:
        """Leave a rejected telegram; what follows it up to the next `/` is not noise."""
        del self._buf[:n]
        self._in_telegram = False
        self._junk = False
        self._quiet = True
        return True
