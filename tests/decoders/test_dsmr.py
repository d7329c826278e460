"""DSMR P1: CRCs recomputed, the corpus walked (also split at every boundary), options and edge cases."""

from __future__ import annotations

import json
import random
import re
import tomllib
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import Device
from gateway.decoders import PROTOCOLS
from gateway.decoders.base import DecodeError
from gateway.decoders.dsmr import DSMRDecoder
from gateway.decoders.dsmr.decoder import crc16, equipment_key
from gateway.decoders.dsmr.obis import FIELDS
from gateway.decoders.runner import DecodeStats, decode_serial_chunks, record_json
from gateway.model import Reading, Record
from gateway.quantities import is_known
from tests.decoders.test_corpus import _same

CORPUS = Path(__file__).parent.parent / "fixtures" / "dsmr"
CASES = sorted(p for p in CORPUS.iterdir() if p.is_dir())

#: Single valid telegrams of the corpus, by short name: FORMATS.md §2.4 and ndokter's Sagemcom capture.
TELEGRAMS: dict[str, bytes] = {
    name: (CORPUS / case / "input.bin").read_bytes()
    for name, case in {
        "v42_kaifa": "v42_kaifa_captured",
        "v50_1ph": "v50_single_phase_exporting_summer",
        "v50_3ph": "v50_three_phase_importing_winter",
        "be_fluvius": "be_fluvius_single_phase_exporting",
        "sagemcom_wh": "sagemcom_t210_wh_units",
    }.items()
}

Frames = list[list[Record] | DecodeError]


def seal(body: bytes) -> bytes:
    """A telegram from `/` through `!`, with its CRC line."""
    return body + b"%04X\r\n" % crc16(body)


def options(case: Path) -> dict[str, Any]:
    path = case / "options.json"
    return json.loads(path.read_text()) if path.exists() else {}


def summary(frames: Frames) -> list[object]:
    return [f.reason if isinstance(f, DecodeError) else f for f in frames]


def test_crc16_is_crc16_arc() -> None:
    assert crc16(b"123456789") == 0xBB3D


@pytest.mark.parametrize("name", sorted(TELEGRAMS))
def test_crc_of_every_reference_telegram_recomputed(name: str) -> None:
    telegram = TELEGRAMS[name]
    bang = telegram.rindex(b"!")
    assert telegram.endswith(b"\r\n") and b"\r\n" in telegram and b"\n\n" not in telegram
    assert f"{crc16(telegram[: bang + 1]):04X}" == telegram[bang + 1 : -2].decode()


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.name)
def test_corpus_case(case: Path) -> None:
    """What tests/decoders/test_corpus.py does once `dsmr` is registered, run on the class directly."""
    stats = DecodeStats()
    records = decode_serial_chunks(DSMRDecoder(**options(case)), [(case / "input.bin").read_bytes()], stats)
    got = [record_json(r) for r in records]
    want = [json.loads(line) for line in (case / "expected.jsonl").read_text().splitlines() if line]
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert _same(g, w), f"got {g}, expected {w}"
    rejected = case / "rejected.json"
    assert stats.rejected == Counter(json.loads(rejected.read_text()) if rejected.exists() else {})


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.name)
def test_splitting_the_stream_changes_nothing(case: Path) -> None:
    data = (case / "input.bin").read_bytes()
    whole = summary(DSMRDecoder(**options(case)).feed(data, 0.0))
    byte_by_byte = DSMRDecoder(**options(case))
    assert summary([f for i in range(len(data)) for f in byte_by_byte.feed(data[i : i + 1], 0.0)]) == whole
    rng = random.Random(case.name)
    cuts = sorted(rng.sample(range(1, len(data)), min(40, len(data) - 1)))
    split = DSMRDecoder(**options(case))
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    assert summary([f for piece in pieces for f in split.feed(piece, 0.0)]) == whole


def test_kaifa_v42_readings() -> None:
    (frame,) = DSMRDecoder().feed(TELEGRAMS["v42_kaifa"], 0.0)
    assert isinstance(frame, list)
    values = {r.metric: r.value for r in frame if isinstance(r, Reading)}
    assert values["energy_wh"] == 1581123 + 1435706  # tariff 1 + tariff 2, kWh -> Wh
    assert values["power_w"] == 2027.0
    # 2016-11-13 20:57:57 winter time (UTC+1)
    assert {r.ts for r in frame} == {datetime(2016, 11, 13, 19, 57, 57, tzinfo=UTC).timestamp()}


def test_wh_meter_total_register_wins_over_tariffs() -> None:
    (frame,) = DSMRDecoder().feed(TELEGRAMS["sagemcom_wh"], 0.0)
    assert isinstance(frame, list)
    values = {r.metric: r.value for r in frame if isinstance(r, Reading)}
    assert values == {"energy_wh": 6545766, "energy_returned_wh": 58, "power_w": 286, "reactive_power_var": -166}


@pytest.mark.parametrize(("flag", "hour_utc"), [("S", 0), ("W", 1)])
def test_summer_winter_flag_resolves_the_repeated_hour(flag: str, hour_utc: int) -> None:
    """27 Oct 2024, clocks go back at 03:00 CEST: 02:30 happens twice in Amsterdam."""
    body = f"/XMX5LGF0010453012345\r\n\r\n1-3:0.2.8(50)\r\n0-0:1.0.0(241027023000{flag})\r\n"
    body += "1-0:1.7.0(00.100*kW)\r\n!"
    (frame,) = DSMRDecoder().feed(seal(body.encode()), 0.0)
    assert isinstance(frame, list)
    assert frame[0].ts == datetime(2024, 10, 27, hour_utc, 30, tzinfo=UTC).timestamp()


def test_unset_meter_clock_falls_back_to_receive_time() -> None:
    body = b"/ISk5\\2MT382-1000\r\n\r\n1-3:0.2.8(50)\r\n0-0:1.0.0(000101000012W)\r\n1-0:1.7.0(00.100*kW)\r\n!"
    (frame,) = DSMRDecoder().feed(seal(body), 1234.5)
    assert isinstance(frame, list) and frame[0].ts == 1234.5


def test_device_key_is_the_equipment_id_else_the_option() -> None:
    assert equipment_key("4530303434303037313331363530323132") == "E0044007131650212"
    assert equipment_key("3960221976967177082151037881335713") == "3960221976967177082151037881335713"
    body = b"/ISk5\\2MT382-1000\r\n\r\n1-3:0.2.8(50)\r\n1-0:1.7.0(00.100*kW)\r\n!"
    (frame,) = DSMRDecoder(device="meter").feed(seal(body), 0.0)
    assert isinstance(frame, list) and frame[0] == Reading(0.0, "meter", "power_w", 100.0)


def test_seven_e_one_bytes_read_on_an_eight_n_one_port() -> None:
    """A 7E1 meter read at 8N1 delivers the parity bit as bit 7; it is cleared before framing."""
    telegram = TELEGRAMS["v50_3ph"]
    with_parity = bytes(b | (bin(b).count("1") % 2) << 7 for b in telegram)
    assert with_parity != telegram
    assert DSMRDecoder().feed(with_parity, 0.0) == DSMRDecoder().feed(telegram, 0.0)


def test_serial_settings_per_instance() -> None:
    modern = DSMRDecoder()
    assert (modern.baudrate, modern.bytesize, modern.parity, modern.stopbits) == (115200, 8, "N", 1)
    legacy = DSMRDecoder(baudrate=9600, framing="7E1")
    assert (legacy.baudrate, legacy.bytesize, legacy.parity, legacy.stopbits) == (9600, 7, "E", 1)
    assert DSMRDecoder.baudrate == 115200 and DSMRDecoder.name == "dsmr"


@pytest.mark.parametrize(
    "bad", [{"timezone": "Mars/Olympus"}, {"framing": "8E2"}, {"baudrate": 0}], ids=lambda d: next(iter(d))
)
def test_bad_options_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="dsmr"):
        DSMRDecoder(**bad)


def test_every_metric_is_in_the_vocabulary() -> None:
    assert all(is_known(field.metric) for field in FIELDS.values())


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=300) | st.sampled_from([b"/", b"!", b"\r\n", b"!ADE2\r\n"]), max_size=20))
def test_arbitrary_bytes_never_raise(chunks: list[bytes]) -> None:
    decoder = DSMRDecoder(max_telegram_bytes=1024)
    for chunk in chunks:
        for frame in decoder.feed(chunk, 0.0):
            assert isinstance(frame, list | DecodeError)
    # ...and a good telegram after any of it is read (at worst after one rejection for the junk).
    frames = decoder.feed(b"\r\n" + TELEGRAMS["v50_1ph"], 0.0)
    assert isinstance(frames[-1], list) and len(frames[-1]) == 6


def test_sample_config_is_a_valid_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sample as written, and with every commented default switched on, passes config validation."""
    monkeypatch.setitem(PROTOCOLS, "dsmr", "gateway.decoders.dsmr:DSMRDecoder")  # until registered
    text = (Path(__file__).parents[2] / "gateway" / "decoders" / "dsmr" / "sample.toml").read_text()
    for variant in (text, re.sub(r"^# (\w+ = .*)$", r"\1", text, flags=re.M)):
        (device,) = tomllib.loads(variant)["devices"]
        assert Device.model_validate(device).protocol == "dsmr"
