"""One test walks every decoder's corpus: tests/fixtures/<protocol>/<case>/.

A case folder holds
- `input.jsonl` (MQTT: one `{"topic", "payload"[, "ts"]}` per line) or `input.bin` (serial bytes);
- `expected.jsonl`: the records, one per line, in `commonwatt decode`'s output shape;
- `rejected.json` (optional): `{"reason": count}` of the frames that must be rejected; none when absent;
- `options.json` (optional): keyword arguments for the decoder's constructor.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from gateway.decoders import PROTOCOLS, decoder_class
from gateway.decoders.base import MqttDecoder, SerialDecoder
from gateway.decoders.runner import DecodeStats, decode_mqtt_lines, decode_serial_chunks, record_json

FIXTURES = Path(__file__).parent.parent / "fixtures"


def _cases() -> list[Path]:
    return sorted(p for proto in PROTOCOLS for p in (FIXTURES / proto).glob("*/") if p.is_dir())


def _same(got: dict[str, Any], want: dict[str, Any]) -> bool:
    if got.keys() != want.keys():
        return False
    for key, value in want.items():
        if isinstance(value, float) or isinstance(got[key], float):
            if not math.isclose(float(got[key]), float(value), rel_tol=1e-9, abs_tol=1e-9):
                return False
        elif got[key] != value:
            return False
    return True


def run_case(case: Path) -> tuple[list[dict[str, Any]], DecodeStats]:
    options = json.loads((case / "options.json").read_text()) if (case / "options.json").exists() else {}
    decoder = decoder_class(case.parent.name)(**options)
    stats = DecodeStats()
    if isinstance(decoder, MqttDecoder):
        lines = (case / "input.jsonl").read_text().splitlines()
        records = list(decode_mqtt_lines(decoder, lines, stats))
    else:
        assert isinstance(decoder, SerialDecoder)
        records = list(decode_serial_chunks(decoder, [(case / "input.bin").read_bytes()], stats))
    return [record_json(r) for r in records], stats


def test_every_protocol_has_a_corpus_with_failure_cases() -> None:
    for proto in PROTOCOLS:
        cases = [p for p in (FIXTURES / proto).glob("*/") if p.is_dir()]
        assert cases, f"{proto} has no fixture corpus"
        assert any((c / "rejected.json").exists() for c in cases), f"{proto} has no failure case"


@pytest.mark.parametrize("case", _cases(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_corpus_case(case: Path) -> None:
    got, stats = run_case(case)
    want = [json.loads(line) for line in (case / "expected.jsonl").read_text().splitlines() if line.strip()]
    assert len(got) == len(want), f"{len(got)} records, expected {len(want)}:\n" + "\n".join(map(str, got))
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert _same(g, w), f"record {i}: got {g}, expected {w}"
    rejected = json.loads((case / "rejected.json").read_text()) if (case / "rejected.json").exists() else {}
    assert stats.rejected == Counter(rejected)
