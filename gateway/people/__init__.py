"""People: members, their badges and trainings, and the API's bearer tokens.

- `People`: the store, in the gateway's database file; every change is journaled;
- `PeopleSnapshot`: the immutable view the access decision reads (dict look-ups only);
- `Member`, `Badge`, `Training`, `Principal`, `TokenInfo`, `ImportReport`: what it returns;
- `PeopleError` (and `PeopleImportError`, listing every problem of a CSV): what it refuses.
"""

from gateway.people.model import (
    BADGE_STATUSES,
    MEMBER_STATUSES,
    ROLES,
    Badge,
    ImportReport,
    Member,
    PeopleError,
    PeopleImportError,
    PeopleSnapshot,
    Principal,
    TokenInfo,
    Training,
)
from gateway.people.store import People

__all__ = [
    "BADGE_STATUSES",
    "MEMBER_STATUSES",
    "ROLES",
    "Badge",
    "ImportReport",
    "Member",
    "People",
    "PeopleError",
    "PeopleImportError",
    "PeopleSnapshot",
    "Principal",
    "TokenInfo",
    "Training",
]
