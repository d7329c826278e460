"""Badge readers on a serial line -> BadgeEvents: RDM6300 modules and keyboard-wedge readers."""

from __future__ import annotations

from typing import ClassVar, get_args

from gateway.decoders.base import DecodeError, SerialDecoder
from gateway.decoders.rdm6300.fields import Mode, WedgeFormat
from gateway.decoders.rdm6300.framer import Framer, RDM6300Framer, WedgeFramer
from gateway.model import BadgeEvent, Record


class RDM6300Decoder(SerialDecoder):
    """One event per presentation of a card at one reader.

    A reader repeats its frame while the card is held. A read of the same UID
    within `holdoff_s` seconds of the previous read of it is the same
    presentation: it gives no entry at all (it is neither a frame nor a
    rejection), and it extends the hold. The same card read again after a pause
    longer than `holdoff_s`, or another card at any time, is a new event. Time is
    the `ts` given to `feed` (the receive time): the decoder has no clock.

    UIDs are upper-case hex: the five data bytes of an RDM6300 frame (10
    characters, version byte first), or the four tag bytes with `tag_only`; a
    decimal number typed by a wedge reader becomes the hex of that number, at
    least 8 characters, so `0010744513` and an RDM6300 with `tag_only` agree on
    `00A3F2C1`.
    """

    name: ClassVar[str] = "rdm6300"
    baudrate = 9600

    def __init__(
        self,
        *,
        device: str = "rdm6300",
        holdoff_s: float = 1.5,
        mode: Mode = "rdm6300",
        tag_only: bool = False,
        wedge_format: WedgeFormat = "decimal",
    ) -> None:
        if not device:
            raise ValueError("device must not be empty")
        if not holdoff_s >= 0:
            raise ValueError(f"holdoff_s must be 0 or more, not {holdoff_s!r}")
        if mode not in get_args(Mode):
            raise ValueError(f"mode must be one of {get_args(Mode)}, not {mode!r}")
        if wedge_format not in get_args(WedgeFormat):
            raise ValueError(f"wedge_format must be one of {get_args(WedgeFormat)}, not {wedge_format!r}")
        self.device = device
        self.holdoff_s = float(holdoff_s)
        self._framer: Framer = (
            RDM6300Framer(tag_only=tag_only) if mode == "rdm6300" else WedgeFramer(wedge_format=wedge_format)
        )
        self._last_uid: str | None = None
        self._last_ts = 0.0

    def feed(self, data: bytes, ts: float) -> list[list[Record] | DecodeError]:
        out: list[list[Record] | DecodeError] = []
        for framed in self._framer.feed(data):
            if isinstance(framed, DecodeError):
                out.append(framed)
            elif self._presented(framed, ts):
                out.append([BadgeEvent(ts, self.device, framed)])
        return out

    def _presented(self, uid: str, ts: float) -> bool:
        """True for a new presentation; False for a repeat within the hold-off (which extends it)."""
        repeat = uid == self._last_uid and ts - self._last_ts <= self.holdoff_s
        self._last_uid, self._last_ts = uid, ts
        return not repeat
