"""RDM6300 and keyboard-wedge badge readers: corpus, hold-off in time, framing properties."""

from __future__ import annotations

import random
from collections import Counter
from functools import reduce
from operator import xor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.decoders.base import DecodeError
from gateway.decoders.rdm6300 import RDM6300Decoder
from gateway.model import BadgeEvent


def frame(data: bytes, check: int | None = None) -> bytes:
    """An RDM6300 frame of 5 data bytes, its checksum recomputed here (XOR of the data bytes)."""
    c = reduce(xor, data) if check is None else check
    return b"\x02" + data.hex().upper().encode() + b"%02X" % c + b"\x03"


CARD_A = frame(bytes.fromhex("0D00A3F2C1"))
CARD_B = frame(bytes.fromhex("1A00B4E817"))


def uids(decoder: RDM6300Decoder, data: bytes, ts: float) -> list[str]:
    out = []
    for entry in decoder.feed(data, ts):
        assert not isinstance(entry, DecodeError), entry
        out += [r.badge_uid for r in entry if isinstance(r, BadgeEvent)]
    return out


def test_serial_settings() -> None:
    assert (RDM6300Decoder.baudrate, RDM6300Decoder.bytesize, RDM6300Decoder.parity) == (9600, 8, "N")


def test_the_example_frame_is_byte_exact() -> None:
    assert bytes.fromhex("0230443030413346324331394403") == CARD_A


def test_holdoff_is_extended_by_repeats_and_ends_after_a_pause() -> None:
    reader = RDM6300Decoder(holdoff_s=1.5)
    assert uids(reader, CARD_A, 100.0) == ["0D00A3F2C1"]
    # Held for 5 s, a frame every 0.25 s: still one presentation, the hold-off restarts at each frame.
    for i in range(1, 21):
        assert reader.feed(CARD_A, 100.0 + i * 0.25) == []
    assert uids(reader, CARD_A, 105.0 + 1.5) == []  # 1.5 s after the last frame: the same hold
    assert uids(reader, CARD_A, 106.5 + 1.6) == ["0D00A3F2C1"]  # taken away and presented again


def test_another_card_at_once_is_a_new_event_and_so_is_the_first_one_again() -> None:
    reader = RDM6300Decoder()
    assert uids(reader, CARD_A + CARD_B + CARD_A, 10.0) == ["0D00A3F2C1", "1A00B4E817", "0D00A3F2C1"]


def test_holdoff_zero_reports_every_frame_of_a_new_time() -> None:
    reader = RDM6300Decoder(holdoff_s=0)
    assert uids(reader, CARD_A, 1.0) + uids(reader, CARD_A, 1.1) == ["0D00A3F2C1"] * 2


def test_rejected_frames_do_not_break_the_hold() -> None:
    reader = RDM6300Decoder()
    assert uids(reader, CARD_A, 1.0) == ["0D00A3F2C1"]
    bad = reader.feed(frame(bytes.fromhex("0D00A3F2C1"), 0x00), 1.2)
    assert [e.reason for e in bad if isinstance(e, DecodeError)] == ["bad_checksum"]
    assert uids(reader, CARD_A, 1.4) == []


def test_the_same_card_gives_the_same_uid_on_rdm6300_with_tag_only_and_a_decimal_wedge() -> None:
    rdm = uids(RDM6300Decoder(tag_only=True), CARD_A, 0.0)
    wedge = uids(RDM6300Decoder(mode="wedge"), b"0010744513\r\n", 0.0)
    assert rdm == wedge == ["00A3F2C1"]


def test_wedge_lines_split_across_feeds() -> None:
    reader = RDM6300Decoder(mode="wedge")
    assert uids(reader, b"00107", 0.0) == []
    assert uids(reader, b"44513\r", 0.0) == ["00A3F2C1"]
    assert uids(reader, b"\n", 0.0) == []


@pytest.mark.parametrize(
    "options",
    [{"mode": "pn532"}, {"wedge_format": "octal"}, {"holdoff_s": -1}, {"device": ""}],
)
def test_bad_options_are_refused(options: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RDM6300Decoder(**options)  # type: ignore[arg-type]


# --- property: frames cut anywhere, with noise and bad frames between them ------------------------------

NOISE = st.binary(max_size=12).map(lambda b: bytes(c for c in b if c != 0x02))


@settings(max_examples=100, deadline=None)
@given(
    items=st.lists(
        st.tuples(st.binary(min_size=5, max_size=5), st.sampled_from(["ok", "checksum", "hex"]), NOISE),
        max_size=10,
    ),
    seed=st.integers(0, 2**32),
)
def test_any_stream_cut_anywhere_decodes_exactly(items: list[tuple[bytes, str, bytes]], seed: int) -> None:
    data = b""
    want: list[str] = []
    rejected: Counter[str] = Counter()
    for card, kind, noise in items:
        if kind == "ok":
            data += frame(card)
            if not want or want[-1] != card.hex().upper():
                want.append(card.hex().upper())  # a repeat of the card before it is the same presentation
        elif kind == "checksum":
            data += frame(card, reduce(xor, card) ^ 0x5A)
            rejected["bad_checksum"] += 1
        else:
            data += frame(card)[:5] + b"G" + frame(card)[6:]
            rejected["bad_frame"] += 1
        data += noise
        rejected["noise"] += bool(noise)
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(data)), min(max(len(data) - 1, 0), rng.randint(0, 12))))
    reader = RDM6300Decoder(holdoff_s=60)
    got: list[str] = []
    got_rejected: Counter[str] = Counter()
    for i, j in zip([0, *cuts], [*cuts, len(data)], strict=True):
        for entry in reader.feed(data[i:j], 0.0):
            if isinstance(entry, DecodeError):
                got_rejected[entry.reason] += 1
            else:
                got += [r.badge_uid for r in entry if isinstance(r, BadgeEvent)]
    assert got == want
    assert got_rejected == +rejected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=100), max_size=10), st.sampled_from(["rdm6300", "wedge"]))
def test_random_bytes_never_raise(chunks: list[bytes], mode: str) -> None:
    reader = RDM6300Decoder(mode=mode)  # type: ignore[arg-type]
    for chunk in chunks:
        for entry in reader.feed(chunk, 0.0):
            assert isinstance(entry, DecodeError | list)
