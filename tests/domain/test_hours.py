"""Opening hours on the local wall clock, across midnight and daylight-saving changes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.domain.hours import is_open, parse_span

BRUSSELS = "Europe/Brussels"


def utc(year: int, month: int, day: int, hour: int, minute: int, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


def test_no_table_is_always_open() -> None:
    assert is_open(utc(2024, 1, 1, 3, 0), BRUSSELS, None)


def test_absent_day_is_closed() -> None:
    # 2024-01-01 is a Monday.
    assert not is_open(utc(2024, 1, 1, 12, 0), BRUSSELS, {"tue": "00:00-24:00"})


def test_span_includes_start_excludes_end() -> None:
    hours = {"mon": "09:00-22:00"}
    assert not is_open(utc(2024, 1, 1, 7, 59, 59), BRUSSELS, hours)  # 08:59:59 CET
    assert is_open(utc(2024, 1, 1, 8, 0), BRUSSELS, hours)
    assert is_open(utc(2024, 1, 1, 20, 59, 59), BRUSSELS, hours)
    assert not is_open(utc(2024, 1, 1, 21, 0), BRUSSELS, hours)


def test_end_of_day_24_00() -> None:
    hours = {"mon": "18:00-24:00"}
    assert is_open(utc(2024, 1, 1, 22, 59, 59), BRUSSELS, hours)  # Mon 23:59:59 local
    assert not is_open(utc(2024, 1, 1, 23, 0), BRUSSELS, hours)  # Tue 00:00 local


def test_span_past_midnight_runs_into_the_next_day() -> None:
    hours = {"fri": "20:00-02:00"}  # 2024-01-05 is a Friday
    assert is_open(utc(2024, 1, 5, 19, 0), BRUSSELS, hours)
    assert is_open(utc(2024, 1, 6, 0, 59), BRUSSELS, hours)  # Sat 01:59 local
    assert not is_open(utc(2024, 1, 6, 1, 0), BRUSSELS, hours)
    assert not is_open(utc(2024, 1, 5, 0, 30), BRUSSELS, hours)  # Fri 01:30: Thursday had no span


def test_empty_span_is_closed() -> None:
    assert not is_open(utc(2024, 1, 1, 12, 0), BRUSSELS, {"mon": "10:00-10:00"})


def test_spring_forward_moves_opening_by_an_hour_in_utc() -> None:
    hours = {"sun": "09:00-18:00"}
    # Sunday before the change: CET, UTC+1.
    assert not is_open(utc(2024, 3, 24, 7, 59), BRUSSELS, hours)
    assert is_open(utc(2024, 3, 24, 8, 0), BRUSSELS, hours)
    # 2024-03-31, the clocks go forward at 02:00: CEST, UTC+2.
    assert not is_open(utc(2024, 3, 31, 6, 59), BRUSSELS, hours)
    assert is_open(utc(2024, 3, 31, 7, 0), BRUSSELS, hours)
    assert not is_open(utc(2024, 3, 31, 16, 0), BRUSSELS, hours)


def test_night_spans_over_the_changes() -> None:
    hours = {"sun": "01:00-03:00"}
    # Spring: 01:00 CET = 00:00 UTC; 03:00 CEST = 01:00 UTC: one real hour.
    assert is_open(utc(2024, 3, 31, 0, 30), BRUSSELS, hours)
    assert not is_open(utc(2024, 3, 31, 1, 0), BRUSSELS, hours)
    # Autumn (2024-10-27): 01:00 CEST = 23:00 UTC Sat; 03:00 CET = 02:00 UTC: three real hours,
    # and 02:30 local, which happens twice, is open both times.
    assert is_open(utc(2024, 10, 26, 23, 0), BRUSSELS, hours)
    assert is_open(utc(2024, 10, 27, 0, 30), BRUSSELS, hours)
    assert is_open(utc(2024, 10, 27, 1, 30), BRUSSELS, hours)
    assert not is_open(utc(2024, 10, 27, 2, 0), BRUSSELS, hours)


def test_utc_site() -> None:
    assert is_open(utc(2024, 1, 1, 9, 0), "UTC", {"mon": "09:00-10:00"})


@pytest.mark.parametrize("span", ["9-10", "24:00-24:00", "10:60-11:00", "10:00-24:30", "10:00"])
def test_bad_spans(span: str) -> None:
    with pytest.raises(ValueError):
        parse_span(span)
