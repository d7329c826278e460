"""`People`: members, badges, trainings and API tokens in the gateway's database file.

Every change runs in one SQLite transaction that also appends an `event.people` row to
the journal (`{"action": ..., "who": <actor>, "what": {...}}`) and bumps the store's
version, so the audit trail can never disagree with the tables. Refused changes raise
`PeopleError` with the reason and change nothing.

The access decision never queries the database: it reads a `PeopleSnapshot` (plain
dicts), and the gateway rebuilds that snapshot when `version()` moves, which also
catches changes made by a `commonwatt` command in another process.

One connection per `People`; a lock makes it safe to share between threads (the API's
worker threads and the gateway loop), each call holding it for microseconds.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import Any

from gateway.journal import Journal, NewRow
from gateway.journal.schema import INSERT_ROWS, UPDATE_SERIES
from gateway.people.csvfile import CsvRow, parse_members_csv
from gateway.people.model import (
    Badge,
    ImportReport,
    Member,
    PeopleError,
    PeopleImportError,
    PeopleSnapshot,
    Principal,
    TokenInfo,
    Training,
    check_member_id,
    check_name,
    check_role,
    check_roles,
    check_status,
    check_training_id,
    check_uid,
    roles_from_text,
    roles_text,
)
from gateway.people.schema import DDL, EVENT_DEVICE, EVENT_METRIC, PEOPLE_SCHEMA_VERSION
from gateway.people.tokens import new_token, parse_token, secret_matches
from gateway.sqlite import immediate, open_store

#: `last_used` of a token is written at most this often: an API client polling every
#: second must not turn every read into a database write.
LAST_USED_EVERY_S = 60.0

_MEMBER_COLS = "id, name, status, roles"
_TRAINING_COLS = "member_id, training, granted_by, granted_at, expires_at"


class _Tx:
    """One write transaction: its time, its actor, and the journal events it will append."""

    def __init__(self, conn: sqlite3.Connection, now: float, actor: str) -> None:
        self.conn = conn
        self.now = now
        self.actor = actor
        self.events: list[NewRow] = []

    def event(self, action: str, what: dict[str, Any]) -> None:
        text = json.dumps({"action": action, "who": self.actor, "what": what}, sort_keys=True, separators=(",", ":"))
        self.events.append((self.now, EVENT_DEVICE, EVENT_METRIC, None, text))


def _member(row: tuple[str, str, str, str]) -> Member:
    return Member(row[0], row[1], row[2], roles_from_text(row[3]))


def _training(row: tuple[str, str, str, float, float | None]) -> Training:
    return Training(*row)


def _member_json(m: Member) -> dict[str, Any]:
    return {"id": m.id, "name": m.name, "status": m.status, "roles": sorted(m.roles)}


class People:
    """The people store of one gateway database file."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.RLock()
        # The journal's own tables (and its schema check) first: people changes are journaled.
        Journal(self.path, busy_timeout=busy_timeout).close()
        self._conn = open_store(
            self.path,
            name="people",
            ddl=DDL,
            reads=PEOPLE_SCHEMA_VERSION,
            error=PeopleError,
            busy_timeout=busy_timeout,
            foreign_keys=True,
        )

    # -- transactions ------------------------------------------------------------------------

    @contextmanager
    def _write(self, actor: str) -> Iterator[_Tx]:
        with self._lock, immediate(self._conn) as conn:
            tx = _Tx(conn, self._clock(), actor)
            yield tx
            if tx.events:
                self._journal(tx.events)

    def _journal(self, events: list[NewRow]) -> None:
        """Append the events as `Journal.append_rows` does (rows, then the `series` summary)."""
        conn = self._conn
        before: int = conn.execute("SELECT coalesce(max(seq), 0) FROM records").fetchone()[0]
        conn.executemany(INSERT_ROWS, events)
        conn.execute(UPDATE_SERIES, (before,))
        conn.execute("UPDATE people_meta SET value = value + 1 WHERE key = 'version'")

    def _all(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def _one(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        with self._lock:
            return self._conn.execute(sql, params).fetchone()

    def version(self) -> int:
        """A number that grows with every change, whichever process made it."""
        value: int = self._one("SELECT value FROM people_meta WHERE key = 'version'")[0]
        return value

    # -- members -----------------------------------------------------------------------------

    def member(self, id: str) -> Member | None:
        row = self._one(f"SELECT {_MEMBER_COLS} FROM members WHERE id = ?", (id,))
        return None if row is None else _member(row)

    def members(self, *, status: str | None = None) -> list[Member]:
        if status is None:
            rows = self._all(f"SELECT {_MEMBER_COLS} FROM members ORDER BY id")
        else:
            rows = self._all(
                f"SELECT {_MEMBER_COLS} FROM members WHERE status = ? ORDER BY id", (check_status(status),)
            )
        return [_member(r) for r in rows]

    def _require_member(self, id: str) -> Member:
        member = self.member(id)
        if member is None:
            raise PeopleError(f"no member {id!r}")
        return member

    def add_member(self, id: str, name: str, *, roles: Iterable[str] = ("member",), actor: str = "cli") -> Member:
        member = Member(check_member_id(id), check_name(name), "active", check_roles(roles))
        with self._write(actor) as tx:
            if self.member(member.id) is not None:
                raise PeopleError(f"member {member.id!r} already exists")
            self._insert_member(tx, member)
        return member

    def _insert_member(self, tx: _Tx, m: Member) -> None:
        tx.conn.execute(
            "INSERT INTO members (id, name, status, roles, created, updated) VALUES (?, ?, ?, ?, ?, ?)",
            (m.id, m.name, m.status, roles_text(m.roles), tx.now, tx.now),
        )
        tx.event("member.add", _member_json(m))

    def update_member(
        self,
        id: str,
        *,
        name: str | None = None,
        roles: Iterable[str] | None = None,
        status: str | None = None,
        actor: str = "cli",
    ) -> Member:
        """Change a member's name, roles or status; only what is given changes."""
        name = None if name is None else check_name(name)
        new_roles = None if roles is None else check_roles(roles)
        status = None if status is None else check_status(status)
        with self._write(actor) as tx:
            old = self._require_member(id)
            new = Member(old.id, name or old.name, status or old.status, new_roles or old.roles)
            self._update_member_row(tx, old, new)
        return new

    def disable_member(self, id: str, *, actor: str = "cli") -> Member:
        """Inactive: the member's badges stay assigned, but every access is denied."""
        return self.update_member(id, status="inactive", actor=actor)

    def _update_member_row(self, tx: _Tx, old: Member, new: Member) -> bool:
        if old == new:
            return False
        tx.conn.execute(
            "UPDATE members SET name = ?, status = ?, roles = ?, updated = ? WHERE id = ?",
            (new.name, new.status, roles_text(new.roles), tx.now, new.id),
        )
        changed = {k: v for k, v in _member_json(new).items() if v != _member_json(old)[k]}
        tx.event("member.update", {"id": new.id, **changed})
        return True

    # -- badges ------------------------------------------------------------------------------

    def badge(self, uid: str) -> Badge | None:
        row = self._one("SELECT uid, member_id, status FROM badges WHERE uid = ?", (check_uid(uid),))
        return None if row is None else Badge(*row)

    def badges(self, member_id: str | None = None) -> list[Badge]:
        sql = "SELECT uid, member_id, status FROM badges"
        rows = (
            self._all(f"{sql} ORDER BY member_id, uid")
            if member_id is None
            else self._all(f"{sql} WHERE member_id = ? ORDER BY uid", (member_id,))
        )
        return [Badge(*r) for r in rows]

    def assign_badge(self, uid: str, member_id: str, *, actor: str = "cli") -> Badge:
        """Give a badge to a member. A badge still active for someone else is refused: revoke it first."""
        uid = check_uid(uid)
        with self._write(actor) as tx:
            self._require_member(member_id)
            return self._assign(tx, uid, member_id)

    def _assign(self, tx: _Tx, uid: str, member_id: str) -> Badge:
        current = self.badge(uid)
        if current is not None and current.status == "active":
            if current.member_id == member_id:
                return current
            raise PeopleError(
                f"badge {uid} is active for member {current.member_id!r}; "
                f"revoke it first (commonwatt badges revoke {uid})"
            )
        tx.conn.execute(
            "INSERT INTO badges (uid, member_id, status, assigned_at, changed_at) VALUES (?, ?, 'active', ?, ?) "
            "ON CONFLICT (uid) DO UPDATE SET member_id = excluded.member_id, status = 'active', "
            "assigned_at = excluded.assigned_at, changed_at = excluded.changed_at",
            (uid, member_id, tx.now, tx.now),
        )
        tx.event("badge.assign", {"uid": uid, "member": member_id})
        return Badge(uid, member_id, "active")

    def revoke_badge(self, uid: str, *, lost: bool = False, actor: str = "cli") -> Badge:
        """Mark a badge lost (by its holder) or revoked (by the space); either way it opens nothing."""
        uid = check_uid(uid)
        status = "lost" if lost else "revoked"
        with self._write(actor) as tx:
            current = self.badge(uid)
            if current is None:
                raise PeopleError(f"no badge {uid}")
            if current.status == status:
                return current
            tx.conn.execute("UPDATE badges SET status = ?, changed_at = ? WHERE uid = ?", (status, tx.now, uid))
            tx.event("badge.revoke", {"uid": uid, "member": current.member_id, "status": status})
        return Badge(uid, current.member_id, status)

    # -- trainings ---------------------------------------------------------------------------

    def trainings(self, member_id: str | None = None) -> list[Training]:
        """Grants not revoked (expired ones included: their expiry says so)."""
        sql = f"SELECT {_TRAINING_COLS} FROM trainings WHERE revoked_at IS NULL"
        rows = (
            self._all(f"{sql} ORDER BY member_id, training")
            if member_id is None
            else self._all(f"{sql} AND member_id = ? ORDER BY training", (member_id,))
        )
        return [_training(r) for r in rows]

    def grant_training(
        self, member_id: str, training: str, *, granted_by: str, at: float, expires_at: float | None = None
    ) -> Training:
        """Grant (or renew) a training; `granted_by` is the trainer or operator, and the actor journaled."""
        training = check_training_id(training)
        if not granted_by.strip():
            raise PeopleError("granted_by is empty: say who grants the training")
        if expires_at is not None and expires_at <= at:
            raise PeopleError("the training would expire before it is granted")
        with self._write(granted_by.strip()) as tx:
            self._require_member(member_id)
            return self._grant(tx, Training(member_id, training, granted_by.strip(), at, expires_at))

    def _grant(self, tx: _Tx, t: Training) -> Training:
        tx.conn.execute(
            f"INSERT INTO trainings ({_TRAINING_COLS}, revoked_at) VALUES (?, ?, ?, ?, ?, NULL) "
            "ON CONFLICT (member_id, training) DO UPDATE SET granted_by = excluded.granted_by, "
            "granted_at = excluded.granted_at, expires_at = excluded.expires_at, revoked_at = NULL",
            (t.member_id, t.training, t.granted_by, t.granted_at, t.expires_at),
        )
        what = {"member": t.member_id, "training": t.training, "granted_at": t.granted_at, "expires_at": t.expires_at}
        tx.event("training.grant", what)
        return t

    def revoke_training(self, member_id: str, training: str, *, actor: str = "cli") -> None:
        with self._write(actor) as tx:
            held = self._one(
                "SELECT 1 FROM trainings WHERE member_id = ? AND training = ? AND revoked_at IS NULL",
                (member_id, training),
            )
            if held is None:
                raise PeopleError(f"member {member_id!r} does not hold training {training!r}")
            tx.conn.execute(
                "UPDATE trainings SET revoked_at = ? WHERE member_id = ? AND training = ?",
                (tx.now, member_id, training),
            )
            tx.event("training.revoke", {"member": member_id, "training": training})

    # -- CSV import ------------------------------------------------------------------------

    def import_csv(self, text: str, *, actor: str = "cli") -> ImportReport:
        """Add and update members from a CSV (see `gateway.people.csvfile`), all or nothing.

        Every line is checked first, against the file and the database; any problem and
        `PeopleImportError` lists them all, with line numbers, and nothing changes. The
        import adds and updates; it never disables or removes a member, and never brings
        back a badge or training that was revoked (that takes an explicit command).
        Importing the same file again changes nothing.
        """
        rows, problems = parse_members_csv(text)
        with self._write(actor) as tx:
            problems += self._import_conflicts(rows)
            if problems:
                raise PeopleImportError(sorted(problems, key=_line_number))
            return self._apply_import(tx, rows)

    def _import_conflicts(self, rows: list[CsvRow]) -> list[str]:
        problems: list[str] = []
        for row in rows:
            badge = None if row.badge is None else self.badge(row.badge)
            if badge is not None and badge.status == "active" and badge.member_id != row.id:
                problems.append(f"line {row.line}: badge {badge.uid} is active for member {badge.member_id!r}")
            elif badge is not None and badge.status != "active":
                problems.append(
                    f"line {row.line}: badge {badge.uid} is {badge.status}; "
                    "assign it with `commonwatt badges assign` if it is back in use, or remove it from the file"
                )
            for training in row.trainings:
                if self._one(
                    "SELECT 1 FROM trainings WHERE member_id = ? AND training = ? AND revoked_at IS NOT NULL",
                    (row.id, training),
                ):
                    problems.append(
                        f"line {row.line}: training {training!r} of {row.id!r} was revoked; "
                        "grant it with `commonwatt trainings grant`, or remove it from the file"
                    )
        return problems

    def _apply_import(self, tx: _Tx, rows: list[CsvRow]) -> ImportReport:
        added: list[str] = []
        updated: list[str] = []
        unchanged: list[str] = []
        badges: list[str] = []
        granted: list[tuple[str, str]] = []
        for row in rows:
            old = self.member(row.id)
            changed = False
            if old is None:
                self._insert_member(tx, Member(row.id, row.name, "active", row.roles))
            else:
                changed = self._update_member_row(tx, old, Member(old.id, row.name, old.status, row.roles))
            if row.badge is not None and self.badge(row.badge) is None:
                badges.append(self._assign(tx, row.badge, row.id).uid)
                changed = True
            held = {t.training for t in self.trainings(row.id)}
            for training in row.trainings:
                if training not in held:
                    self._grant(tx, Training(row.id, training, tx.actor, tx.now, None))
                    granted.append((row.id, training))
                    changed = True
            (added if old is None else updated if changed else unchanged).append(row.id)
        return ImportReport(tuple(added), tuple(updated), tuple(unchanged), tuple(badges), tuple(granted))

    # -- API tokens --------------------------------------------------------------------------

    def create_token(self, role: str, member_id: str | None = None, *, actor: str = "cli") -> str:
        """A new bearer token `cw_<id>_<secret>`: returned once, only its hash is stored."""
        role = check_role(role)
        if role == "member" and member_id is None:
            raise PeopleError("a member token belongs to a member: give the member id")
        with self._write(actor) as tx:
            if member_id is not None:
                self._require_member(member_id)
            token_id, token, secret_hash = new_token()
            while self._one("SELECT 1 FROM tokens WHERE id = ?", (token_id,)):
                token_id, token, secret_hash = new_token()
            tx.conn.execute(
                "INSERT INTO tokens (id, secret_hash, role, member_id, created) VALUES (?, ?, ?, ?, ?)",
                (token_id, secret_hash, role, member_id, tx.now),
            )
            tx.event("token.create", {"id": token_id, "role": role, "member": member_id})
        return token

    def revoke_token(self, token_id: str, *, actor: str = "cli") -> None:
        with self._write(actor) as tx:
            row = self._one("SELECT revoked_at FROM tokens WHERE id = ?", (token_id,))
            if row is None:
                raise PeopleError(f"no token {token_id!r}")
            if row[0] is None:
                tx.conn.execute("UPDATE tokens SET revoked_at = ? WHERE id = ?", (tx.now, token_id))
                tx.event("token.revoke", {"id": token_id})

    def tokens(self) -> list[TokenInfo]:
        rows = self._all("SELECT id, role, member_id, created, revoked_at, last_used FROM tokens ORDER BY created, id")
        return [TokenInfo(*r) for r in rows]

    def authenticate(self, bearer: str) -> Principal | None:
        """The principal of a valid token; None for a malformed, unknown, wrong or revoked one.

        A member token stops working while its member is inactive. The secret's hash is
        compared in constant time, and an unknown id is compared against a dummy hash, so
        response times tell an attacker nothing about which ids exist.
        """
        parsed = parse_token(bearer)
        if parsed is None:
            return None
        token_id, secret = parsed
        row = self._one(
            "SELECT t.secret_hash, t.role, t.member_id, t.revoked_at, t.last_used, m.status "
            "FROM tokens t LEFT JOIN members m ON m.id = t.member_id WHERE t.id = ?",
            (token_id,),
        )
        if not secret_matches(secret, None if row is None else row[0]):
            return None
        _hash, role, member_id, revoked_at, last_used, member_status = row
        if revoked_at is not None or (member_id is not None and member_status != "active"):
            return None
        self._touch(token_id, last_used)
        return Principal(token_id, role, member_id)

    def _touch(self, token_id: str, last_used: float | None) -> None:
        now = self._clock()
        if last_used is not None and now - last_used < LAST_USED_EVERY_S:
            return
        try:
            with self._lock:
                self._conn.execute("UPDATE tokens SET last_used = ? WHERE id = ?", (now, token_id))
        except sqlite3.OperationalError:
            pass  # the database is busy: last_used is a hint, the request goes on

    # -- the access decision's view ----------------------------------------------------------

    def snapshot(self) -> PeopleSnapshot:
        """Everything the access decision reads, as immutable dicts, consistent with one version."""
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                version = self.version()
                members = {m.id: m for m in self.members()}
                badge_rows = self._all("SELECT uid, member_id, status FROM badges")
                trainings = self.trainings()
            finally:
                self._conn.execute("COMMIT")
        held: dict[str, dict[str, tuple[float, float | None]]] = {}
        for t in trainings:
            held.setdefault(t.member_id, {})[t.training] = (t.granted_at, t.expires_at)
        return PeopleSnapshot(
            version=version,
            members=MappingProxyType(members),
            badges=MappingProxyType({r[0]: (Badge(*r), members[r[1]]) for r in badge_rows}),
            trainings=MappingProxyType({k: MappingProxyType(v) for k, v in held.items()}),
        )

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> People:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _line_number(problem: str) -> int:
    head = problem.split(":", 1)[0]
    return int(head.removeprefix("line ")) if head.startswith("line ") else 0
