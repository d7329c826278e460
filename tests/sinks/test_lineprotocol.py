"""Journal rows -> line protocol: layout, escaping, merging, what is skipped and why."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from gateway.journal import Row
from gateway.sinks.lineprotocol import LineFormatter, escape_key, escape_measurement, to_ms

T0 = 1_700_000_000.0


def row(seq: int, device: str, metric: str, value: float | None, ts: float = T0, text: str | None = None) -> Row:
    return (seq, ts, device, metric, value, text)


# -- a tiny line-protocol parser, written from the spec, to check what we write -------------------


def split_unescaped(text: str, sep: str, maxsplit: int = -1) -> list[str]:
    """Split on `sep` where it is not escaped by a backslash; escapes are kept."""
    parts: list[str] = []
    current, i = "", 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            current += text[i : i + 2]
            i += 2
            continue
        if ch == sep and (maxsplit < 0 or len(parts) < maxsplit):
            parts.append(current)
            current = ""
        else:
            current += ch
        i += 1
    return [*parts, current]


def unescape(text: str) -> str:
    out, i = "", 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            i += 1
        out += text[i]
        i += 1
    return out


def parse_line(line: str) -> tuple[str, dict[str, str], dict[str, float], int]:
    head, fields, ts = split_unescaped(line, " ")
    measurement, *tags = split_unescaped(head, ",")
    pairs = [split_unescaped(t, "=", 1) for t in tags]
    values = [split_unescaped(f, "=", 1) for f in split_unescaped(fields, ",")]
    return (
        unescape(measurement),
        {unescape(k): unescape(v) for k, v in pairs},
        {unescape(k): float(v) for k, v in values},
        int(ts),
    )


# -- units ------------------------------------------------------------------------------------------


def test_one_reading_is_one_line_in_milliseconds() -> None:
    f = LineFormatter(site="lab", device_tags={"grid": {"role": "grid"}})
    out = f.format([row(1, "grid", "power_w", 12.5, ts=T0 + 0.25)])
    assert out.lines == ["commonwatt,device=grid,role=grid,site=lab power_w=12.5 1700000000250"]
    assert out.points == [1]


def test_escaping_per_spec() -> None:
    assert escape_key(r"a b,c=d\e") == r"a\ b\,c\=d\\e"
    assert escape_measurement(r"m a,b=c\d") == r"m\ a\,b=c\\d"


def test_escaped_device_and_tags() -> None:
    f = LineFormatter(site="fab lab", device_tags={"pv,1": {"role": "pv", "roof": "south=1"}})
    (line,) = f.format([row(1, "pv,1", "power_w", 1.0)]).lines
    assert line == r"commonwatt,device=pv\,1,role=pv,roof=south\=1,site=fab\ lab power_w=1.0 1700000000000"


def test_same_device_and_millisecond_share_a_line() -> None:
    rows = [
        row(1, "grid", "power_w", 10.0),
        row(2, "pv", "power_w", 5.0),
        row(3, "grid", "voltage_v", 230.0, ts=T0 + 0.0001),  # rounds to the same millisecond
        row(4, "grid", "power_w", 11.0, ts=T0 + 1),
    ]
    out = LineFormatter(site="lab").format(rows)
    assert out.lines == [
        "commonwatt,device=grid,site=lab power_w=10.0,voltage_v=230.0 1700000000000",
        "commonwatt,device=pv,site=lab power_w=5.0 1700000000000",
        "commonwatt,device=grid,site=lab power_w=11.0 1700000001000",
    ]
    assert out.points == [2, 1, 1]
    assert out.point_count == 4


def test_milliseconds_round_to_nearest() -> None:
    assert to_ms(1_700_000_000.1234) == 1_700_000_000_123
    assert to_ms(1_700_000_000.0006) == 1_700_000_000_001
    assert to_ms(0.1 + 0.2) == 300


def test_events_skipped_non_finite_rejected() -> None:
    rows = [
        row(1, "reader1", "badge", None, text="04A1B2C3"),
        row(2, "gw", "event.access", None, text='{"ok": true}'),
        row(3, "gw", "event.session", 1.0, text=None),
        row(4, "grid", "power_w", None),  # NaN comes back from SQLite as NULL
        row(5, "grid", "power_w", math.inf, ts=T0 + 1),
        row(6, "grid", "power_w", -math.inf, ts=T0 + 2),
        row(7, "grid", "power_w", 3.0, ts=T0 + 3),
    ]
    out = LineFormatter(site="lab").format(rows)
    assert out.skipped == {"event": 3}
    assert out.rejected == {"non_finite": 3}
    assert out.lines == ["commonwatt,device=grid,site=lab power_w=3.0 1700000003000"]


def test_unwritable_names_rejected_rest_kept() -> None:
    rows = [
        row(1, "bad\ndevice", "power_w", 1.0),
        row(2, "grid", "power\nw", 2.0),
        row(3, "grid", "power_w", 3.0),
    ]
    out = LineFormatter(site="lab").format(rows)
    assert out.rejected == {"invalid_device": 1, "invalid_metric": 1}
    assert out.lines == ["commonwatt,device=grid,site=lab power_w=3.0 1700000000000"]


def test_duplicate_point_later_row_wins() -> None:
    out = LineFormatter(site="lab").format([row(1, "grid", "power_w", 1.0), row(2, "grid", "power_w", 2.0)])
    assert out.lines == ["commonwatt,device=grid,site=lab power_w=2.0 1700000000000"]
    assert out.rejected == {"duplicate": 1}


def test_empty_tag_value_left_out() -> None:
    f = LineFormatter(site="lab", device_tags={"grid": {"role": "grid", "room": ""}})
    assert f.format([row(1, "grid", "power_w", 1.0)]).lines[0].startswith("commonwatt,device=grid,role=grid,site=lab ")


def test_values_are_always_floats() -> None:
    (line,) = LineFormatter(site="lab").format([row(1, "relay", "relay_on", 1)]).lines
    assert " relay_on=1.0 " in line


# -- round trip through the parser --------------------------------------------------------------

names = st.text(st.characters(blacklist_characters="\n\r", blacklist_categories=["Cs"]), min_size=1, max_size=12)
values = st.floats(allow_nan=False, allow_infinity=False)
readings = st.lists(
    st.tuples(names, st.sampled_from(["power_w", "voltage_v", "a b,c=d\\"]), values, st.integers(0, 3)),
    max_size=30,
)


@given(readings, names, names)
def test_round_trip(readings: list[tuple[str, str, float, int]], site: str, role: str) -> None:
    rows = [row(i, d, m, v, ts=T0 + dt / 1000) for i, (d, m, v, dt) in enumerate(readings, 1)]
    expected = {(d, to_ms(T0 + dt / 1000), m): v for d, m, v, dt in readings}
    out = LineFormatter(site=site, device_tags={d: {"role": role} for d, *_ in readings}).format(rows)
    got: dict[tuple[str, int, str], float] = {}
    for line in out.lines:
        measurement, tags, fields, ms = parse_line(line)
        assert measurement == "commonwatt"
        assert tags == {"site": site, "device": tags["device"], "role": role}
        for metric, value in fields.items():
            got[(tags["device"], ms, metric)] = value
    assert got == expected
    assert out.point_count == len(expected)
    assert out.rejected.get("duplicate", 0) == len(readings) - len(expected)
