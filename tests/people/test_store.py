"""The people store on a real SQLite file shared with the journal."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.journal import Journal
from gateway.model import Reading
from gateway.people import (
    Badge,
    Member,
    People,
    PeopleError,
    PeopleImportError,
    Principal,
    Training,
)
from gateway.people.tokens import hash_secret


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "commonwatt.sqlite"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def people(db: Path, clock: Clock) -> Iterator[People]:
    with People(db, clock=clock) as store:
        yield store


def events(db: Path) -> list[dict[str, object]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT device, metric, value, text FROM records WHERE metric = 'event.people' ORDER BY seq"
        ).fetchall()
    assert all(r[0] == "people" and r[2] is None for r in rows)
    return [json.loads(r[3]) for r in rows]


def actions(db: Path) -> list[str]:
    return [str(e["action"]) for e in events(db)]


# -- members -------------------------------------------------------------------------------------


def test_add_member_normalizes_and_reads_back(people: People) -> None:
    m = people.add_member("ada", "  Ada   Lovelace ", roles=["Member", " trainer ", "member"])
    assert m == Member("ada", "Ada Lovelace", "active", frozenset({"member", "trainer"}))
    assert people.member("ada") == m
    assert people.member("nobody") is None
    assert people.add_member("grace", "Grace Hopper").roles == frozenset({"member"})
    assert [x.id for x in people.members()] == ["ada", "grace"]


@pytest.mark.parametrize(
    ("member_id", "name", "roles", "reason"),
    [
        ("Ada", "Ada", ["member"], "member id"),
        ("-ada", "Ada", ["member"], "member id"),
        ("a" * 64, "Ada", ["member"], "member id"),
        ("ada", "   ", ["member"], "name is empty"),
        ("ada", "Ada", ["wizard"], "unknown role"),
        ("ada", "Ada", [], "no role"),
    ],
)
def test_add_member_refuses_bad_fields(
    people: People, member_id: str, name: str, roles: list[str], reason: str
) -> None:
    with pytest.raises(PeopleError, match=reason):
        people.add_member(member_id, name, roles=roles)
    assert people.members() == []


def test_add_member_refuses_a_duplicate_id(people: People) -> None:
    people.add_member("ada", "Ada")
    with pytest.raises(PeopleError, match="already exists"):
        people.add_member("ada", "Someone Else")
    assert people.member("ada") == Member("ada", "Ada", "active", frozenset({"member"}))


def test_update_disable_and_filter_by_status(people: People, db: Path) -> None:
    people.add_member("ada", "Ada")
    people.add_member("bob.k", "Bob")
    assert people.update_member("ada", name="Ada L.", roles=["member", "operator"]) == Member(
        "ada", "Ada L.", "active", frozenset({"member", "operator"})
    )
    assert people.disable_member("bob.k").status == "inactive"
    assert [m.id for m in people.members(status="active")] == ["ada"]
    assert [m.id for m in people.members(status="inactive")] == ["bob.k"]
    with pytest.raises(PeopleError, match="no member"):
        people.update_member("carol", name="Carol")
    with pytest.raises(PeopleError, match="status"):
        people.update_member("ada", status="gone")
    with pytest.raises(PeopleError, match="status"):
        people.members(status="gone")
    last = events(db)[-1]
    assert last == {"action": "member.update", "who": "cli", "what": {"id": "bob.k", "status": "inactive"}}


def test_an_update_that_changes_nothing_writes_nothing(people: People, db: Path) -> None:
    people.add_member("ada", "Ada")
    version = people.version()
    people.update_member("ada", name="Ada", roles=["member"])
    assert people.version() == version
    assert actions(db) == ["member.add"]


# -- badges --------------------------------------------------------------------------------------


def test_badges_are_normalized_and_conflicts_refused(people: People) -> None:
    people.add_member("ada", "Ada")
    people.add_member("bob", "Bob")
    assert people.assign_badge("04:a1:b2:c3", "ada") == Badge("04A1B2C3", "ada", "active")
    assert people.badge("04-A1-B2-C3") == Badge("04A1B2C3", "ada", "active")
    assert people.assign_badge("04a1b2c3", "ada") == Badge("04A1B2C3", "ada", "active")  # idempotent
    with pytest.raises(PeopleError, match="active for member 'ada'"):
        people.assign_badge("04A1B2C3", "bob")
    with pytest.raises(PeopleError, match="no member"):
        people.assign_badge("0A0B", "carol")
    with pytest.raises(PeopleError, match="badge UID"):
        people.assign_badge("not-hex!", "ada")
    assert people.badge("FFFF") is None


def test_a_revoked_or_lost_badge_can_go_to_someone_else(people: People, db: Path) -> None:
    people.add_member("ada", "Ada")
    people.add_member("bob", "Bob")
    people.assign_badge("04A1B2C3", "ada")
    people.assign_badge("0A0B0C0D", "ada")
    assert people.revoke_badge("04a1b2c3", lost=True) == Badge("04A1B2C3", "ada", "lost")
    assert people.revoke_badge("04A1B2C3", lost=True) == Badge("04A1B2C3", "ada", "lost")
    assert people.revoke_badge("04A1B2C3") == Badge("04A1B2C3", "ada", "revoked")
    assert people.assign_badge("04A1B2C3", "bob") == Badge("04A1B2C3", "bob", "active")
    assert people.badges("ada") == [Badge("0A0B0C0D", "ada", "active")]
    assert [b.uid for b in people.badges()] == ["0A0B0C0D", "04A1B2C3"]  # by member, then uid
    with pytest.raises(PeopleError, match="no badge"):
        people.revoke_badge("FFFF")
    assert actions(db)[2:] == ["badge.assign", "badge.assign", "badge.revoke", "badge.revoke", "badge.assign"]


# -- trainings -----------------------------------------------------------------------------------


def test_grant_renew_and_revoke_trainings(people: People, db: Path) -> None:
    people.add_member("ada", "Ada")
    t = people.grant_training("ada", "laser", granted_by="bob", at=100.0, expires_at=200.0)
    assert t == Training("ada", "laser", "bob", 100.0, 200.0)
    people.grant_training("ada", "cnc", granted_by="bob", at=100.0)
    assert people.trainings("ada") == [Training("ada", "cnc", "bob", 100.0, None), t]
    renewed = people.grant_training("ada", "laser", granted_by="carol", at=300.0)
    assert people.trainings("ada")[1] == renewed
    people.revoke_training("ada", "cnc", actor="op")
    assert people.trainings() == [renewed]
    with pytest.raises(PeopleError, match="does not hold"):
        people.revoke_training("ada", "cnc")
    grant = events(db)[1]
    assert grant["who"] == "bob" and grant["what"] == {
        "member": "ada",
        "training": "laser",
        "granted_at": 100.0,
        "expires_at": 200.0,
    }
    assert events(db)[-1] == {"action": "training.revoke", "who": "op", "what": {"member": "ada", "training": "cnc"}}


def test_grant_training_refuses_bad_input(people: People) -> None:
    people.add_member("ada", "Ada")
    with pytest.raises(PeopleError, match="no member"):
        people.grant_training("zoe", "laser", granted_by="bob", at=1.0)
    with pytest.raises(PeopleError, match="training id"):
        people.grant_training("ada", "Laser Cutter", granted_by="bob", at=1.0)
    with pytest.raises(PeopleError, match="expire before"):
        people.grant_training("ada", "laser", granted_by="bob", at=10.0, expires_at=5.0)
    with pytest.raises(PeopleError, match="granted_by"):
        people.grant_training("ada", "laser", granted_by=" ", at=1.0)
    assert people.trainings() == []


# -- CSV import ----------------------------------------------------------------------------------

CSV = """id,name,roles,badge,trainings
ada,Ada Lovelace,member;trainer,04:a1:b2:c3,laser;cnc
grace,Grace Hopper,,,
# a comment line

bob,"Bob, the Builder",member,0A0B0C0D,laser
"""


def test_import_applies_a_good_file(people: People, db: Path) -> None:
    report = people.import_csv(CSV, actor="op")
    assert report.added == ("ada", "grace", "bob")
    assert report.badges_assigned == ("04A1B2C3", "0A0B0C0D")
    assert report.trainings_granted == (("ada", "laser"), ("ada", "cnc"), ("bob", "laser"))
    assert people.member("bob") == Member("bob", "Bob, the Builder", "active", frozenset({"member"}))
    assert people.member("ada") == Member("ada", "Ada Lovelace", "active", frozenset({"member", "trainer"}))
    assert people.badge("04A1B2C3") == Badge("04A1B2C3", "ada", "active")
    assert {t.granted_by for t in people.trainings()} == {"op"}
    assert len(events(db)) == 3 + 2 + 3


def test_reimporting_is_idempotent_and_updates_changes(people: People, db: Path) -> None:
    people.import_csv(CSV)
    version, count = people.version(), len(events(db))
    again = people.import_csv(CSV)
    assert again.unchanged == ("ada", "grace", "bob") and again.added == again.updated == ()
    assert people.version() == version and len(events(db)) == count
    changed = CSV.replace("Grace Hopper,,", "Grace B. Hopper,member;operator,").replace("laser\n", "laser;cnc\n")
    report = people.import_csv(changed)
    assert report.updated == ("grace", "bob") and report.unchanged == ("ada",)
    assert people.member("grace") == Member("grace", "Grace B. Hopper", "active", frozenset({"member", "operator"}))
    assert report.trainings_granted == (("bob", "cnc"),)


def test_import_is_all_or_nothing_and_names_every_line(people: People, db: Path) -> None:
    people.add_member("zoe", "Zoe")
    people.assign_badge("FFFF", "zoe")
    bad = (
        "id,name,roles,badge,trainings\n"
        "ok,Fine Member,member,,\n"
        "Bad Id,Someone,member,,\n"
        "carl,,member,,\n"
        "dan,Dan,wizard,,\n"
        "eve,Eve,member,zz-top,\n"
        "fay,Fay,member,,Laser Cutter\n"
        "ok,Again,member,,\n"
        "gus,Gus,member,ffff,\n"
        "hal,Hal,member,,,extra\n"
    )
    with pytest.raises(PeopleImportError) as caught:
        people.import_csv(bad)
    problems = caught.value.problems
    assert [p.split(":")[0] for p in problems] == [f"line {n}" for n in range(3, 11)], problems
    assert "already on line 2" in problems[5] and "active for member 'zoe'" in problems[6]
    assert [m.id for m in people.members()] == ["zoe"]
    assert actions(db) == ["member.add", "badge.assign"]


def test_import_refuses_a_bad_header_and_revived_badges(people: People) -> None:
    with pytest.raises(PeopleImportError) as caught:
        people.import_csv("name,email\nAda,ada@example.org\n")
    assert caught.value.problems == [
        "line 1: unknown column 'email'; columns are id, name, roles, badge, trainings",
        "line 1: the header has no 'id' column",
    ]
    with pytest.raises(PeopleImportError) as caught:
        people.import_csv("\n\n")
    assert "the file is empty" in caught.value.problems[0]
    people.import_csv(CSV)
    people.revoke_badge("04A1B2C3", lost=True)
    people.revoke_training("bob", "laser")
    with pytest.raises(PeopleImportError) as caught:
        people.import_csv(CSV)
    assert "badge 04A1B2C3 is lost" in caught.value.problems[0]
    assert "training 'laser' of 'bob' was revoked" in caught.value.problems[1]


def test_import_reads_an_excel_export(people: People) -> None:
    report = people.import_csv("\ufeffID,Name\r\nada,Ada\r\n")
    assert report.added == ("ada",)


# -- tokens --------------------------------------------------------------------------------------


def test_tokens_are_stored_hashed_and_authenticate(people: People, db: Path) -> None:
    people.add_member("ada", "Ada")
    token = people.create_token("member", "ada")
    _cw, token_id, secret = token.split("_")
    assert len(secret) == 64
    assert people.authenticate(token) == Principal(token_id, "member", "ada")
    assert people.authenticate(f"  {token} ") == Principal(token_id, "member", "ada")
    raw = db.read_bytes() + (
        db.with_name(db.name + "-wal").read_bytes() if db.with_name(db.name + "-wal").exists() else b""
    )
    assert secret.encode() not in raw
    with sqlite3.connect(db) as conn:
        stored = conn.execute("SELECT secret_hash FROM tokens WHERE id = ?", (token_id,)).fetchone()[0]
    assert stored == hash_secret(secret) and secret not in json.dumps(events(db))
    admin = people.create_token("admin")
    assert people.authenticate(admin) == Principal(admin.split("_")[1], "admin", None)


def test_wrong_malformed_unknown_and_revoked_tokens_are_refused(people: People) -> None:
    people.add_member("ada", "Ada")
    token = people.create_token("member", "ada")
    _cw, token_id, secret = token.split("_")
    flipped = secret[:-1] + ("0" if secret[-1] != "0" else "1")
    assert people.authenticate(f"cw_{token_id}_{flipped}") is None
    assert people.authenticate(f"cw_ffffffffff_{secret}") is None
    assert people.authenticate("Bearer " + token) is None
    assert people.authenticate("") is None
    people.disable_member("ada")
    assert people.authenticate(token) is None  # a disabled member's token stops working ...
    people.update_member("ada", status="active")
    assert people.authenticate(token) is not None  # ... until they are active again
    people.revoke_token(token_id)
    people.revoke_token(token_id)  # twice: no error, one event
    assert people.authenticate(token) is None
    with pytest.raises(PeopleError, match="no token"):
        people.revoke_token("0000000000")


def test_create_token_checks_role_and_member(people: People) -> None:
    with pytest.raises(PeopleError, match="belongs to a member"):
        people.create_token("member")
    with pytest.raises(PeopleError, match="unknown role"):
        people.create_token("root")
    with pytest.raises(PeopleError, match="no member"):
        people.create_token("member", "ghost")
    assert people.tokens() == []


def test_last_used_is_written_at_most_once_a_minute(people: People, clock: Clock) -> None:
    token = people.create_token("operator")
    assert people.tokens()[0].last_used is None
    people.authenticate(token)
    assert people.tokens()[0].last_used == clock.now
    first = clock.now
    clock.now += 30
    people.authenticate(token)
    assert people.tokens()[0].last_used == first
    clock.now += 31
    people.authenticate(token)
    assert people.tokens()[0].last_used == clock.now


def test_authenticate_is_fast(people: People) -> None:
    token = people.create_token("operator")
    people.authenticate(token)
    start = time.perf_counter()
    for _ in range(200):
        people.authenticate(token)
    assert (time.perf_counter() - start) / 200 < 0.002


# -- snapshot, version, journal ------------------------------------------------------------------


def test_snapshot_is_an_immutable_view_for_the_access_decision(people: People) -> None:
    people.import_csv(CSV)
    people.revoke_badge("0A0B0C0D", lost=True)
    people.grant_training("grace", "laser", granted_by="ada", at=100.0, expires_at=200.0)
    snap = people.snapshot()
    assert snap.version == people.version()
    badge, member = snap.badges["04A1B2C3"]
    assert badge.status == "active" and member.id == "ada"
    assert snap.badges["0A0B0C0D"][0].status == "lost"
    assert snap.holds("grace", "laser", 150.0) and not snap.holds("grace", "laser", 200.0)
    assert not snap.holds("grace", "cnc", 150.0) and not snap.holds("nobody", "laser", 150.0)
    assert snap.trainings["ada"]["cnc"][1] is None
    with pytest.raises(TypeError):
        snap.badges["FFFF"] = snap.badges["04A1B2C3"]  # type: ignore[index]
    people.disable_member("ada")
    assert snap.members["ada"].status == "active"  # the old snapshot does not move
    assert people.snapshot().badges["04A1B2C3"][1].status == "inactive"


def test_version_moves_across_two_stores_on_one_file(db: Path) -> None:
    with People(db) as gateway, People(db) as cli:
        seen = gateway.version()
        cli.add_member("ada", "Ada")
        assert gateway.version() > seen
        seen = gateway.version()
        with pytest.raises(PeopleError):
            cli.add_member("ada", "Ada")  # refused: no change, no bump
        assert gateway.version() == seen
        assert gateway.snapshot().members["ada"].name == "Ada"


def test_events_share_the_journal_and_keep_its_summary_exact(db: Path, people: People) -> None:
    with Journal(db) as journal:
        journal.append([Reading(1.0, "meter", "power_w", 5.0)])
        people.add_member("ada", "Ada")
        people.assign_badge("04A1B2C3", "ada")
        people.create_token("member", "ada")
        journal.append([Reading(2.0, "meter", "power_w", 6.0)])
        stats = journal.stats()
        assert stats.records == stats.last_seq == 5
        people_series = stats.series[("people", "event.people")]
        assert people_series.count == 3 and people_series.last_seq == 4
        assert stats.series[("meter", "power_w")].count == 2
        assert [r for _seq, r in journal.records(0, 10)] == [
            Reading(1.0, "meter", "power_w", 5.0),
            Reading(2.0, "meter", "power_w", 6.0),
        ]
    assert events(db)[0] == {
        "action": "member.add",
        "who": "cli",
        "what": {"id": "ada", "name": "Ada", "roles": ["member"], "status": "active"},
    }
    assert events(db)[2]["what"] == {"id": events(db)[2]["what"]["id"], "member": "ada", "role": "member"}  # type: ignore[index]


def test_a_refused_change_leaves_no_event(people: People, db: Path) -> None:
    people.add_member("ada", "Ada")
    with pytest.raises(PeopleError):
        people.assign_badge("04A1B2C3", "nobody")
    assert actions(db) == ["member.add"]
    with Journal(db) as journal:
        assert journal.stats().records == 1


def test_unknown_ids_take_the_same_comparison_path(people: People, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown token id is compared (against a dummy hash) just like a wrong secret."""
    import hmac

    compared: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr("gateway.people.tokens.hmac.compare_digest", spy)
    token = people.create_token("operator")
    _cw, token_id, secret = token.split("_")
    assert people.authenticate(f"cw_ffffffffff_{secret}") is None
    assert people.authenticate(f"cw_{token_id}_{'0' * 64}") is None
    assert people.authenticate(token) is not None
    assert len(compared) == 3 and all(len(a) == len(b) == 64 for a, b in compared)


def test_a_database_from_a_newer_commonwatt_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    People(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE people_meta SET value = '7' WHERE key = 'schema_version'")
    db.close()
    with pytest.raises(PeopleError, match=r"people schema 7, this commonwatt reads 1"):
        People(path)
