"""Reading a members CSV: every line checked, every problem reported with its line number.

The file has a header naming its columns, in any order:

    id,name,roles,badge,trainings
    ada,Ada Lovelace,member;trainer,04A1B2C3,laser;cnc
    grace,Grace Hopper,member,,

`id` and `name` are required; `roles` (`;`-separated, empty: `member`), `badge` (one UID)
and `trainings` (`;`-separated training ids) are optional. Blank lines and lines whose
first cell starts with `#` are skipped. This module only parses: the store checks the
rows against the database and applies them in one transaction.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from gateway.people.model import PeopleError, check_member_id, check_name, check_roles, check_training_id, check_uid

COLUMNS = ("id", "name", "roles", "badge", "trainings")
REQUIRED = ("id", "name")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class CsvRow:
    line: int
    id: str
    name: str
    roles: frozenset[str]
    badge: str | None
    trainings: tuple[str, ...]


def parse_members_csv(text: str) -> tuple[list[CsvRow], list[str]]:
    """The valid rows and the problems ("line 3: ..."); a file with problems must not be applied."""
    lines = _lines(text.removeprefix("\ufeff"))
    if not lines:
        return [], ["line 1: the file is empty; expected a header id,name[,roles,badge,trainings]"]
    header_line, header = lines[0]
    columns, problems = _header(header_line, header)
    if problems:
        return [], problems
    rows: list[CsvRow] = []
    for number, cells in lines[1:]:
        row = _row(number, cells, columns, problems)
        if row is not None:
            rows.append(row)
    problems.extend(_duplicates(rows))
    return rows, problems


def _lines(text: str) -> list[tuple[int, list[str]]]:
    reader = csv.reader(io.StringIO(text))
    out: list[tuple[int, list[str]]] = []
    start = 1
    for cells in reader:
        cells = [c.strip() for c in cells]
        if any(cells) and not cells[0].startswith("#"):
            out.append((start, cells))
        start = reader.line_num + 1
    return out


def _header(number: int, cells: list[str]) -> tuple[list[str], list[str]]:
    columns = [c.lower() for c in cells]
    problems = [
        f"line {number}: unknown column {c!r}; columns are {', '.join(COLUMNS)}" for c in columns if c not in COLUMNS
    ]
    problems += [f"line {number}: column {c!r} appears twice" for c in set(columns) if columns.count(c) > 1]
    problems += [f"line {number}: the header has no {c!r} column" for c in REQUIRED if c not in columns]
    return columns, problems


def _row(number: int, cells: list[str], columns: list[str], problems: list[str]) -> CsvRow | None:
    if len(cells) > len(columns):
        problems.append(f"line {number}: {len(cells)} fields, but the header names {len(columns)} columns")
        return None
    values = dict(zip(columns, cells, strict=False))
    before = len(problems)

    def field(check: Callable[[str], T], key: str) -> T | None:
        try:
            return check(values.get(key, ""))
        except PeopleError as exc:
            problems.append(f"line {number}: {exc}")
            return None

    member_id = field(check_member_id, "id")
    name = field(check_name, "name")
    roles = field(lambda v: check_roles(v.split(";") if v else ["member"]), "roles")
    badge = field(lambda v: check_uid(v) if v else None, "badge")
    trainings = field(
        lambda v: tuple(dict.fromkeys(check_training_id(t.strip()) for t in v.split(";") if t.strip())), "trainings"
    )
    if len(problems) > before or member_id is None or name is None or roles is None or trainings is None:
        return None
    return CsvRow(number, member_id, name, roles, badge, trainings)


def _duplicates(rows: list[CsvRow]) -> list[str]:
    problems: list[str] = []
    ids: dict[str, int] = {}
    badges: dict[str, int] = {}
    for row in rows:
        if row.id in ids:
            problems.append(f"line {row.line}: member {row.id!r} is already on line {ids[row.id]}")
        ids.setdefault(row.id, row.line)
        if row.badge is not None:
            if row.badge in badges:
                problems.append(f"line {row.line}: badge {row.badge} is already on line {badges[row.badge]}")
            badges.setdefault(row.badge, row.line)
    return problems
