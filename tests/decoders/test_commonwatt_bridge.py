"""The bridge's wire format: the corpus, a round trip from journal rows, topics, fuzzing."""

from __future__ import annotations

import json
import math
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import parse_config
from gateway.decoders import PROTOCOLS
from gateway.decoders.base import DecodeError
from gateway.decoders.commonwatt_bridge import BridgeDecoder
from gateway.decoders.commonwatt_bridge.wire import MAX_RECORDS, encode_rows
from gateway.decoders.runner import DecodeStats, decode_mqtt_lines, record_json
from gateway.journal.schema import Row
from gateway.model import BadgeEvent, Reading
from gateway.quantities import QUANTITIES
from tests.decoders.test_corpus import _same

CORPUS = Path(__file__).parent.parent / "fixtures" / "commonwatt_bridge"
CASES = sorted(p for p in CORPUS.iterdir() if p.is_dir())
PACKAGE = Path(__file__).parent.parent.parent / "gateway" / "decoders" / "commonwatt_bridge"


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.name)
def test_corpus_case(case: Path) -> None:
    """As tests/decoders/test_corpus.py walks it once the protocol is registered."""
    stats = DecodeStats()
    lines = (case / "input.jsonl").read_text().splitlines()
    got = [record_json(r) for r in decode_mqtt_lines(BridgeDecoder(), lines, stats)]
    want = [json.loads(line) for line in (case / "expected.jsonl").read_text().splitlines() if line.strip()]
    assert len(got) == len(want), "\n".join(map(str, got))
    for g, w in zip(got, want, strict=True):
        assert _same(g, w), f"got {g}, expected {w}"
    rejected = json.loads((case / "rejected.json").read_text()) if (case / "rejected.json").exists() else {}
    assert stats.rejected == Counter(rejected)


def test_the_corpus_has_failure_cases() -> None:
    assert any((c / "rejected.json").exists() for c in CASES)


def rows_of(n: int, devices: tuple[str, ...] = ("p1", "mppt")) -> list[Row]:
    return [
        (seq, 1_718_192_712 + seq * 0.125, devices[seq % len(devices)], "power_w", seq * 1.5 - 40, None)
        for seq in range(1, n + 1)
    ]


def test_rows_round_trip_through_the_wire_per_device_in_order() -> None:
    rows = [
        *rows_of(1203),
        (1204, 1_718_193_000.5, "door", "badge", None, "00A3F2C1E4"),
        (1205, 1_718_193_001.0, "p1", "energy_wh", math.nan, None),
        (1206, 1_718_193_002.0, "p1", "event.access", None, '{"allowed": true}'),
    ]
    encoded = encode_rows(rows, "workshop-pi")
    assert encoded.skipped == {"non_finite": 1, "event": 1}
    assert encoded.records == 1204
    assert [t for t, _ in encoded.messages] == ["commonwatt/bridge/workshop-pi/mppt"] * 2 + [
        "commonwatt/bridge/workshop-pi/p1"
    ] * 2 + ["commonwatt/bridge/workshop-pi/door"]
    decoder = BridgeDecoder()
    got = [r for topic, body in encoded.messages for r in decoder.decode(topic, body, 0.0)]
    want = (
        [
            Reading(ts, f"workshop-pi/{dev}", metric, value)
            for dev in ("mppt", "p1")  # devices in order of their first row
            for _seq, ts, d, metric, value, _t in rows[:1203]
            if d == dev and value is not None
        ]
        + [BadgeEvent(1_718_193_000.5, "workshop-pi/door", "00A3F2C1E4")]
    )
    assert got == want  # exact floats: JSON carries the shortest repr that reads back the same
    assert all(len(json.loads(body)["records"]) <= MAX_RECORDS for _, body in encoded.messages)


def test_payload_is_compact() -> None:
    (_, body), *_ = encode_rows([(1, 1_718_192_712.0, "p1", "energy_wh", 8_508_985.0, None)], "s").messages
    assert body == b'{"v":1,"records":[[1718192712,"energy_wh",8508985]]}'


def test_topics() -> None:
    d = BridgeDecoder()
    assert d.topics() == ["commonwatt/bridge/#"]
    assert d.topics("workshop-pi/mppt") == ["commonwatt/bridge/workshop-pi/mppt"]
    assert d.topics("workshop-pi") == ["commonwatt/bridge/workshop-pi/status"]


def test_sample_config_parses_and_readme_lists_every_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PROTOCOLS, "commonwatt_bridge", "gateway.decoders.commonwatt_bridge:BridgeDecoder")
    sample = tomllib.loads((PACKAGE / "sample.toml").read_text())
    config = parse_config({"site": {"id": "lab"}, "mqtt": {}, **sample})
    assert {d.protocol for d in config.devices} == {"commonwatt_bridge"}
    readme = (PACKAGE / "README.md").read_text()
    reasons = set().union(
        *(json.loads((c / "rejected.json").read_text()) for c in CASES if (c / "rejected.json").exists())
    )
    assert all(f"`{reason}`" in readme for reason in reasons)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_entry = st.lists(
    st.one_of(st.floats(), st.integers(), st.sampled_from([*QUANTITIES, "badge", "power_w_l1", "x"]), _json),
    min_size=0,
    max_size=4,
)
_doc: Any = st.fixed_dictionaries(
    {"v": st.one_of(st.just(1), _json), "records": st.one_of(st.lists(_entry, max_size=5), _json)}
)
_topic = st.sampled_from(
    ["commonwatt/bridge/lab/p1", "commonwatt/bridge/lab/status", "commonwatt/bridge/x", "commonwatt/bridge/a/b/c"]
)


def check_decode(topic: str, payload: bytes) -> None:
    """Records or a DecodeError, nothing else."""
    try:
        records = BridgeDecoder().decode(topic, payload, 0.0)
    except DecodeError:
        return
    assert all(isinstance(r, Reading | BadgeEvent) for r in records)


@settings(max_examples=300, deadline=None)
@given(topic=_topic, doc=_doc)
def test_random_documents_give_records_or_decode_error(topic: str, doc: Any) -> None:
    try:
        body = json.dumps(doc).encode()
    except ValueError:
        return
    check_decode(topic, body)


@settings(max_examples=300, deadline=None)
@given(topic=_topic, payload=st.binary(max_size=64))
def test_random_bytes_give_records_or_decode_error(topic: str, payload: bytes) -> None:
    check_decode(topic, payload)
