"""The two badge-reader formats, as data.

RDM6300 / RDM630 (125 kHz EM4100 cards, FORMATS.md §3.1), 14 bytes per frame:

    0x02 | 10 ASCII hex: 2 version/customer + 8 tag | 2 ASCII hex checksum | 0x03

The checksum is the XOR of the five data bytes (the ten hex characters read as
five byte values). The reader repeats the frame for as long as the card is held.

Keyboard-wedge readers (§3.3) type the card number and Enter: ASCII characters,
then CR and/or LF. Most 125 kHz ones type the 10-digit decimal of the 32-bit tag
(the number printed on the card, `0010744513`); some type hex.
"""

from __future__ import annotations

from typing import Literal

STX = 0x02
ETX = 0x03
#: Characters between STX and ETX: 10 of data, 2 of checksum.
DATA_CHARS = 10
CHECKSUM_CHARS = 2
FRAME_LEN = 1 + DATA_CHARS + CHECKSUM_CHARS + 1

HEX_DIGITS = frozenset(b"0123456789ABCDEFabcdef")
DECIMAL_DIGITS = frozenset(b"0123456789")

Mode = Literal["rdm6300", "wedge"]
WedgeFormat = Literal["decimal", "hex"]

#: What a wedge reader may type for each format. A decimal number is the 32-bit
#: tag id and becomes 8 upper-case hex characters, the same UID an RDM6300 gives
#: with `tag_only = true`; hex is kept as typed, upper-cased.
WEDGE_DIGITS: dict[str, frozenset[int]] = {"decimal": DECIMAL_DIGITS, "hex": HEX_DIGITS}
#: Line terminators of a wedge reader (Enter is CR, LF or both).
WEDGE_ENDS = b"\r\n"
#: No card number is this long; a longer line is a stuck key or noise.
WEDGE_MAX = 32
