"""Opening hours: is the lab open at a given instant?

The table is the `[access] opening_hours` of commonwatt.toml, in the site's time zone:
weekday (`mon`..`sun`) -> `"HH:MM-HH:MM"`. The rules, all on the local wall clock:

- a span includes its start and excludes its end: `"09:00-22:00"` is open at 09:00, closed at 22:00;
- `"24:00"` as an end means the end of the day: `"18:00-24:00"` is open until midnight;
- an end earlier than the start runs past midnight into the next day: `"20:00-02:00"` on `fri`
  is open Friday 20:00 to Saturday 02:00, whatever Saturday's own span says;
- a span whose end equals its start is empty (use `"00:00-24:00"` for a whole day);
- a day absent from the table is closed; no table at all (`None`) is always open.

Because the instant is first turned into local wall-clock time, a daylight-saving change
needs no special case: on the night the clocks go forward, 02:30 never happens, and on the
night they go back, 02:30 happens twice and is judged the same way both times.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_MIN = 24 * 60


@lru_cache(maxsize=256)
def parse_span(span: str) -> tuple[int, int]:
    """`"09:00-22:00"` -> (540, 1320), minutes since local midnight; ValueError otherwise."""
    try:
        start, end = (_minutes(part) for part in span.split("-"))
    except ValueError:
        raise ValueError(f"{span!r} is not HH:MM-HH:MM") from None
    if start >= _DAY_MIN:
        raise ValueError(f"{span!r}: a span cannot start at 24:00")
    return start, end


def _minutes(text: str) -> int:
    hh, mm = text.strip().split(":")
    hours, minutes = int(hh), int(mm)
    if not (0 <= minutes < 60 and 0 <= hours <= 24) or (hours == 24 and minutes):
        raise ValueError(text)
    return hours * 60 + minutes


def _end_today(start: int, end: int) -> int:
    """Where a span stops on its own day: its end, midnight if it runs past it, nothing if empty."""
    if end < start:
        return _DAY_MIN
    return end


@lru_cache(maxsize=32)
def _zone(tz_name: str) -> ZoneInfo:
    return ZoneInfo(tz_name)


def is_open(ts: float, tz_name: str, hours: Mapping[str, str] | None) -> bool:
    """Whether the lab is open at `ts` (UTC seconds) under `hours` in time zone `tz_name`."""
    if hours is None:
        return True
    local = datetime.fromtimestamp(ts, _zone(tz_name))
    minute = local.hour * 60 + local.minute
    today = DAYS[local.weekday()]
    yesterday = DAYS[(local.weekday() - 1) % 7]
    if today in hours:
        start, end = parse_span(hours[today])
        if start <= minute < _end_today(start, end):
            return True
    if yesterday in hours:
        start, end = parse_span(hours[yesterday])
        if end < start and minute < end:
            return True
    return False
