"""VE.Direct TEXT: the fixture corpus, framing across feed() boundaries, and stream properties."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.decoders.base import DecodeError
from gateway.decoders.vedirect import VEDirectDecoder
from gateway.decoders.vedirect.framer import MAX_BLOCK
from gateway.model import Reading
from tests.decoders.test_corpus import FIXTURES


def block(*fields: tuple[str, str]) -> bytes:
    """A TEXT block with its checksum byte."""
    body = b"".join(b"\r\n%s\t%s" % (label.encode(), value.encode()) for label, value in fields)
    body += b"\r\nChecksum\t"
    return body + bytes([-sum(body) % 256])


def feed_all(decoder: VEDirectDecoder, chunks: list[bytes]) -> tuple[list[Reading], Counter[str]]:
    readings: list[Reading] = []
    rejected: Counter[str] = Counter()
    for chunk in chunks:
        for frame in decoder.feed(chunk, 1.0):
            if isinstance(frame, DecodeError):
                rejected[frame.reason] += 1
            else:
                readings.extend(r for r in frame if isinstance(r, Reading))
    return readings, rejected


def test_serial_settings() -> None:
    assert (VEDirectDecoder.baudrate, VEDirectDecoder.bytesize, VEDirectDecoder.parity) == (19200, 8, "N")
    assert VEDirectDecoder.stopbits == 1


def test_every_split_of_the_hex_interleaved_case_decodes_the_same() -> None:
    data = (FIXTURES / "vedirect" / "hex_interleaved" / "input.bin").read_bytes()
    whole = feed_all(VEDirectDecoder(), [data])
    assert len(whole[0]) == 24
    for cut in range(1, len(data)):
        assert feed_all(VEDirectDecoder(), [data[:cut], data[cut:]]) == whole, cut


def test_byte_at_a_time() -> None:
    data = (FIXTURES / "vedirect" / "checksum_byte_colon" / "input.bin").read_bytes()
    readings, rejected = feed_all(VEDirectDecoder(), [data[i : i + 1] for i in range(len(data))])
    assert len(readings) == 32 and not rejected


def test_device_key_is_the_serial_number_and_sticks_to_the_stream() -> None:
    main = block(("SER#", "HQ0001"), ("V", "12000"))
    history = block(("H17", "5"), ("H18", "6"))
    readings, _ = feed_all(VEDirectDecoder(device="shunt"), [history + main + history])
    assert [r.device for r in readings] == ["shunt", "shunt", "HQ0001", "HQ0001", "HQ0001"]


def test_options_are_keyword_only_and_checked() -> None:
    with pytest.raises(TypeError):
        VEDirectDecoder("x")  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        VEDirectDecoder(device="")


def test_a_block_without_checksum_is_dropped_once_and_the_stream_recovers() -> None:
    good = block(("V", "12000"))
    runaway = b"\r\nX\t" + b"9" * (3 * MAX_BLOCK)
    readings, rejected = feed_all(VEDirectDecoder(), [good, runaway[:1000], runaway[1000:], good, good])
    # The rest of the runaway line is a headless tail, dropped without a count until the next CR LF.
    assert rejected == Counter({"frame_too_long": 1})
    assert len(readings) == 3


# --- property: any valid stream, cut anywhere, with noise and HEX lines, decodes exactly -----------------

#: label -> (metric, oracle from the integer Victron sends to the vocabulary's unit), written out again
#: here on purpose: the table in fields.py is what is under test.
ORACLE: dict[str, tuple[str, Callable[[int], float]]] = {
    "V": ("voltage_v", lambda n: n / 1000),
    "I": ("current_a", lambda n: n / 1000),
    "P": ("power_w", float),
    "VPV": ("pv_voltage_v", lambda n: n / 1000),
    "PPV": ("pv_power_w", float),
    "SOC": ("soc_pct", lambda n: n / 10),
    "CE": ("consumed_ah", lambda n: -n / 1000),
    "TTG": ("time_to_go_s", lambda n: n * 60.0),
    "H17": ("energy_discharged_wh", lambda n: n * 10.0),
    "H18": ("energy_charged_wh", lambda n: n * 10.0),
    "H19": ("energy_wh", lambda n: n * 10.0),
    "H20": ("energy_today_wh", lambda n: n * 10.0),
    "CS": ("device_state", float),
    "ERR": ("error_code", float),
    "T": ("temperature_c", float),
}
OTHER_LABELS = ["PID", "FW", "MPPT", "LOAD", "Alarm", "BMV", "H21", "HSDS"]


@dataclass
class Block:
    fields: list[tuple[str, str]]
    serial: str | None
    corrupt_at: int | None  # index of a digit changed after the checksum was computed
    hex_at: list[int]  # positions before which a HEX message is inserted


@st.composite
def blocks(draw: st.DrawFn) -> Block:
    labels = draw(st.lists(st.sampled_from([*ORACLE, "Relay", *OTHER_LABELS]), unique=True, max_size=12))
    if "PID" in labels:  # as on every Victron product: PID opens the block (the framer relies on it)
        labels.remove("PID")
        labels.insert(0, "PID")
    fields = [(label, draw(values(label))) for label in labels]
    serial = draw(st.none() | st.from_regex(r"HQ[0-9A-Z]{4,9}", fullmatch=True))
    if serial is not None:
        fields.insert(draw(st.integers(1 if labels[:1] == ["PID"] else 0, len(fields))), ("SER#", serial))
    corrupt = draw(st.none() | st.integers(0, 10_000))
    hex_at = draw(st.lists(st.integers(0, 10_000), max_size=3))
    return Block(fields, serial, corrupt, hex_at)


def values(label: str) -> st.SearchStrategy[str]:
    if label == "Relay":
        return st.sampled_from(["ON", "OFF"])
    if label in ORACLE:
        return st.integers(-(10**7), 10**7).map(str) | st.just("---")
    return st.from_regex(r"[0-9A-Za-z ./x]{1,12}", fullmatch=True)


def expected(fields: list[tuple[str, str]]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for label, value in fields:
        if label == "Relay":
            out.append(("relay_on", 1.0 if value == "ON" else 0.0))
        elif label in ORACLE and value != "---" and not (label == "TTG" and value == "-1"):
            metric, convert = ORACLE[label]
            out.append((metric, convert(int(value))))
    return out


def wire(b: Block, hex_line: bytes) -> tuple[bytes, bool]:
    """The block's bytes as sent (corruption and HEX messages applied) and whether it was corrupted."""
    raw = bytearray(block(*b.fields))
    digits = [i for i in range(len(raw) - 1) if 0x30 <= raw[i] <= 0x39]
    corrupted = b.corrupt_at is not None and bool(digits)
    if corrupted:
        assert b.corrupt_at is not None
        i = digits[b.corrupt_at % len(digits)]
        raw[i] = 0x30 + (raw[i] - 0x30 + 1) % 10
    # Anywhere but between `Checksum\t` and the checksum byte, which is the byte after it, always.
    for at in sorted((a % (len(raw) - 1) for a in b.hex_at), reverse=True):
        raw[at:at] = hex_line
    return bytes(raw), corrupted


NOISE = st.binary(max_size=20).map(lambda b: bytes(c for c in b if c not in b"\r\n:"))
HEX_LINES = st.from_regex(r":[0-9A-F]{1,20}\n", fullmatch=True).map(str.encode)


@settings(max_examples=100, deadline=None)
@given(
    stream=st.lists(st.tuples(blocks(), NOISE, st.booleans()), min_size=1, max_size=8),
    hex_line=HEX_LINES,
    seed=st.integers(0, 2**32),
)
def test_any_stream_cut_anywhere_decodes_exactly(
    stream: list[tuple[Block, bytes, bool]], hex_line: bytes, seed: int
) -> None:
    data = b""
    want: list[tuple[str, str, float]] = []
    rejected: Counter[str] = Counter()
    key = "vedirect"
    for n, (b, noise, hex_between) in enumerate(stream):
        raw, corrupted = wire(b, hex_line)
        data += noise + (hex_line if hex_between else b"") + noise + raw
        if noise and n > 0:
            rejected["noise"] += 1
        if corrupted:
            rejected["partial_block" if n == 0 else "bad_checksum"] += 1
            continue
        key = b.serial or key
        want += [(key, metric, value) for metric, value in expected(b.fields)]
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 12))))
    chunks = [data[i:j] for i, j in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    readings, got_rejected = feed_all(VEDirectDecoder(), chunks)
    assert [(r.device, r.metric) for r in readings] == [(k, m) for k, m, _ in want]
    assert [r.value for r in readings] == pytest.approx([v for _, _, v in want])
    assert got_rejected == rejected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=10))
def test_random_bytes_never_raise(chunks: list[bytes]) -> None:
    decoder = VEDirectDecoder()
    for chunk in chunks:
        for frame in decoder.feed(chunk, 0.0):
            assert isinstance(frame, DecodeError | list)
