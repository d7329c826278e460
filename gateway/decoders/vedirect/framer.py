"""Cut a VE.Direct byte stream into TEXT blocks whose checksum holds.

Wire format (FORMATS.md §1.2): every field is *preceded* by CR LF; a block ends
with `\\r\\nChecksum\\t` and one raw byte chosen so that all bytes of the block,
from its first CR LF up to and including that byte, sum to 0 modulo 256. That
byte can be anything, CR, LF and `:` included, so the stream is never split
into lines: the framer looks for the checksum marker and takes exactly one byte
after it.

HEX protocol messages (`:` ... LF) may arrive between blocks or in the middle of
one; they are cut out and are not part of the checksum. A `:` is a HEX start
everywhere except in the checksum byte's place.

The framer scans with `bytes.find` rather than byte by byte: a day of blocks
(86,400) frames in well under a second.
"""

from __future__ import annotations

from gateway.decoders.base import ChecksumError, DecodeError

MARKER = b"\r\nChecksum\t"
_LEN = len(MARKER)
#: A field starts with CR LF: between blocks, this is where the next one begins.
FIELD_START = b"\r\n"
HEX_START = b":"
HEX_END = b"\n"
#: Labels that only ever open a block (main block: PID; BMV history block: H1).
#: Finding one inside a block that failed its checksum means the device restarted
#: its output mid-block; the block from there on is checked on its own.
BLOCK_OPENERS = (b"\r\nPID\t", b"\r\nH1\t")
#: Real blocks are 150-350 bytes; a "block" this long without a checksum is noise.
MAX_BLOCK = 2048

_BETWEEN, _BLOCK, _HEX = 0, 1, 2

Framed = bytes | DecodeError


class VEDirectFramer:
    """Feed bytes; get back whole blocks (checksum verified) and why others were dropped.

    Rejections: `partial_block` (the first block after start-up or resync, which
    began before we were listening), `bad_checksum`, `truncated` (a block cut off
    by the device starting a new one; the new one is kept when it checks out),
    `frame_too_long` (no checksum within MAX_BLOCK bytes), `noise` (once per run
    of stray bytes between blocks).
    """

    def __init__(self, max_block: int = MAX_BLOCK) -> None:
        self._max = max_block
        self._rest = b""  # bytes not looked at yet (a trailing CR waiting for its LF)
        self._block = bytearray()  # the block so far, HEX messages cut out
        self._state = _BETWEEN
        self._after_hex = _BETWEEN
        #: False until the first checksum byte: what comes before it is a block's tail.
        self._synced = False
        self._in_junk = False
        #: A CR came right before a HEX message between blocks: an LF after it starts a block.
        self._cr_before_hex = False

    def feed(self, data: bytes) -> list[Framed]:
        buf = self._rest + data if self._rest else data
        out: list[Framed] = []
        pos, n = 0, len(buf)
        while pos < n:
            if self._state == _BLOCK:
                new = self._in_block(buf, pos, n, out)
            elif self._state == _HEX:
                new = self._in_hex(buf, pos)
            else:
                new = self._between(buf, pos, n, out)
            if new == pos:
                break
            pos = new
        self._rest = buf[pos:]
        return out

    def _between(self, buf: bytes, pos: int, n: int, out: list[Framed]) -> int:
        if self._cr_before_hex and buf[pos] != 0x3A:  # a HEX message cut a CR LF in two
            self._cr_before_hex = False
            if buf[pos] == 0x0A:
                return self._start_block(pos - 1)
            self._junk(True, out)
        start = buf.find(FIELD_START, pos)
        colon = buf.find(HEX_START, pos, n if start < 0 else start)
        if colon >= 0:
            cr = colon > pos and buf[colon - 1] == 0x0D
            self._junk(colon - cr > pos, out)
            self._cr_before_hex = self._cr_before_hex or cr
            self._state, self._after_hex = _HEX, _BETWEEN
            return colon + 1
        if start >= 0:
            self._junk(start > pos, out)
            return self._start_block(start)
        end = n - 1 if buf[n - 1] == 0x0D else n  # a CR may be the first half of the next start
        self._junk(end > pos, out)
        return end

    def _start_block(self, start: int) -> int:
        self._state, self._in_junk = _BLOCK, False
        self._block += FIELD_START
        return start + 2

    def _junk(self, seen: bool, out: list[Framed]) -> None:
        """Stray bytes between blocks: counted once per run. Before sync they are a block's tail."""
        if seen and self._synced and not self._in_junk:
            out.append(DecodeError("noise", "bytes between blocks"))
        self._in_junk = self._in_junk or seen

    def _in_hex(self, buf: bytes, pos: int) -> int:
        end = buf.find(HEX_END, pos)
        if end < 0:
            return len(buf)
        self._state = self._after_hex
        return end + 1

    def _in_block(self, buf: bytes, pos: int, n: int, out: list[Framed]) -> int:
        block = self._block
        if block.endswith(MARKER):  # this byte is the checksum, whatever it is
            block.append(buf[pos])
            out.extend(self._complete())
            return pos + 1
        marker = buf.find(MARKER, pos, min(n, pos + self._max + _LEN))
        stop = marker + _LEN if marker >= 0 else min(n, pos + self._max + _LEN)
        colon = buf.find(HEX_START, pos, stop)
        seg_end = colon if colon >= 0 else stop
        tail = len(block)
        block += memoryview(buf)[pos:seg_end]
        # A marker split across two feeds or by a HEX message completes inside this segment.
        split = block.find(MARKER, max(0, tail - _LEN + 1))
        if split >= 0 and split + _LEN <= len(block):  # then the byte at seg_end is the checksum
            seg_end -= len(block) - (split + _LEN)
            del block[split + _LEN :]
            colon = -1
        if len(block) > self._max:
            return self._too_long(seg_end, out)
        if colon >= 0:
            self._state, self._after_hex = _HEX, _BLOCK
            return colon + 1
        return seg_end

    def _too_long(self, pos: int, out: list[Framed]) -> int:
        out.append(DecodeError("frame_too_long", f"no checksum within {self._max} bytes"))
        self._block.clear()
        self._state, self._synced = _BETWEEN, False
        return pos

    def _complete(self) -> list[Framed]:
        raw = bytes(self._block)
        self._block.clear()
        self._state = _BETWEEN
        synced, self._synced = self._synced, True
        if sum(raw) & 0xFF == 0:
            return [raw]
        restart = max(raw.rfind(opener) for opener in BLOCK_OPENERS)
        if restart > 0 and sum(memoryview(raw)[restart:]) & 0xFF == 0:
            cut = "truncated" if synced else "partial_block"
            return [DecodeError(cut, "block cut off by a new one"), raw[restart:]]
        if not synced:
            return [DecodeError("partial_block", "first block after start-up")]
        return [ChecksumError(f"block of {len(raw)} bytes sums to {sum(raw) & 0xFF}")]
