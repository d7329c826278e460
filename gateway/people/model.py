"""Members, badges, trainings and API principals: the records, and the rules their fields follow.

Every check on a field lives here, once, so the store, the CSV import, the CLI and the
API refuse the same things with the same words.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

#: What a member may do. `member` uses machines; `trainer` grants trainings; `operator` runs
#: the space (machine states, people admin); `auditor` reads everything; `admin` manages tokens.
ROLES = frozenset({"member", "trainer", "operator", "auditor", "admin"})
MEMBER_STATUSES = frozenset({"active", "inactive"})
#: `lost`: reported lost by its holder; `revoked`: taken back by the space. Both deny access.
BADGE_STATUSES = frozenset({"active", "lost", "revoked"})

_MEMBER_ID = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
#: Training ids are the ids machines name in commonwatt.toml (`machines[].trainings`).
_TRAINING_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
#: Badge UIDs as readers send them: hex (4-10 bytes for MIFARE and EM4100 tags), up to 64 digits.
_UID = re.compile(r"[0-9A-F]{2,64}")
_NAME_MAX = 200


class PeopleError(ValueError):
    """A change the people store refuses; the message says why, in words for the operator."""


class PeopleImportError(PeopleError):
    """A CSV import was refused; nothing was imported. `problems`: one line each, with its line number."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(f"{len(problems)} problem(s) in the CSV; nothing was imported")
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Member:
    id: str
    name: str
    status: str
    roles: frozenset[str]


@dataclass(frozen=True, slots=True)
class Badge:
    uid: str
    member_id: str
    status: str


@dataclass(frozen=True, slots=True)
class Training:
    member_id: str
    training: str
    granted_by: str
    granted_at: float
    expires_at: float | None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling the API: the token's role and, for a member token, whose data it may read."""

    token_id: str
    role: str
    member_id: str | None


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token as `tokens list` shows it: never its secret, which the store does not have."""

    id: str
    role: str
    member_id: str | None
    created: float
    revoked_at: float | None
    last_used: float | None


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What a CSV import changed. Member ids in file order."""

    added: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    badges_assigned: tuple[str, ...] = ()
    trainings_granted: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class PeopleSnapshot:
    """An immutable, in-memory view of the store for the access decision (dict look-ups only).

    `badges`: every known badge UID (of any status: a lost badge must be refused as such,
    not as unknown) -> the badge and its member. `trainings`: member id -> training ->
    (granted_at, expires_at), current grants only. `version`: the store's version it shows.
    """

    version: int
    members: Mapping[str, Member] = field(default_factory=dict)
    badges: Mapping[str, tuple[Badge, Member]] = field(default_factory=dict)
    trainings: Mapping[str, Mapping[str, tuple[float, float | None]]] = field(default_factory=dict)

    def holds(self, member_id: str, training: str, at: float) -> bool:
        """Whether the member holds the training at time `at` (granted, not expired)."""
        grant = self.trainings.get(member_id, {}).get(training)
        return grant is not None and (grant[1] is None or at < grant[1])


# -- field checks: each returns the normalized value or raises PeopleError ----------------------


def check_member_id(value: str) -> str:
    if not _MEMBER_ID.fullmatch(value):
        raise PeopleError(
            f"member id {value!r}: use 1-63 lower-case letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def check_training_id(value: str) -> str:
    if not _TRAINING_ID.fullmatch(value):
        raise PeopleError(
            f"training id {value!r}: use 1-63 lower-case letters, digits, '_' or '-' (as in commonwatt.toml)"
        )
    return value


def check_name(value: str) -> str:
    name = " ".join(value.split())
    if not name:
        raise PeopleError("the name is empty")
    if len(name) > _NAME_MAX:
        raise PeopleError(f"the name is longer than {_NAME_MAX} characters")
    return name


def check_roles(values: Iterable[str]) -> frozenset[str]:
    roles = frozenset(r.strip().lower() for r in values if r.strip())
    unknown = sorted(roles - ROLES)
    if unknown:
        raise PeopleError(f"unknown role(s) {', '.join(unknown)}; roles are {', '.join(sorted(ROLES))}")
    if not roles:
        raise PeopleError(f"no role given; roles are {', '.join(sorted(ROLES))}")
    return roles


def check_role(value: str) -> str:
    (role,) = check_roles([value])
    return role


def check_status(value: str) -> str:
    if value not in MEMBER_STATUSES:
        raise PeopleError(f"status {value!r}: use active or inactive")
    return value


def check_uid(raw: str) -> str:
    """The UID normalized as the readers report it: upper-case hex, no separators."""
    from gateway.model import normalize_uid

    uid = normalize_uid(raw)
    if not _UID.fullmatch(uid):
        raise PeopleError(f"badge UID {raw!r}: expected hex bytes like 04A1B2C3 or 04:a1:b2:c3")
    return uid


def roles_text(roles: frozenset[str]) -> str:
    """Roles as stored: sorted, comma-separated."""
    return ",".join(sorted(roles))


def roles_from_text(text: str) -> frozenset[str]:
    return frozenset(r for r in text.split(",") if r)
