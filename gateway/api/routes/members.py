"""/api/v1/members: members, their badges and their trainings.

Operators, auditors and admins read every member; any other token reads only its own
member. Asking for another member answers 404, exactly as for a member who does not
exist, so a member token cannot probe which ids exist. Operators and admins add and
change members and badges; trainers, operators and admins grant and revoke trainings.
Every change is journaled by the people store with the token that made it.

A change the store refuses for the current state (the member exists already, the badge
is active for someone else, the training is not held) is a 409 with the store's reason;
a malformed field is a 422.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Literal, TypeVar

from fastapi import APIRouter, HTTPException, Path, Query
from pydantic import BaseModel, Field

from gateway.api.auth import (
    CONFLICT,
    ERRORS,
    CurrentPrincipal,
    Manager,
    PeopleDep,
    Trainer,
    actor,
    may_see,
    sees_everyone,
)
from gateway.model import iso
from gateway.people import Badge, Member, People, PeopleError, Principal, Training
from gateway.people.model import check_member_id, check_name, check_training_id, check_uid

router = APIRouter(prefix="/api/v1/members", tags=["members"], responses={**ERRORS, **CONFLICT})

T = TypeVar("T")
MemberId = Annotated[str, Path(min_length=1, max_length=63, description="the member's id")]
Role = Literal["member", "trainer", "operator", "auditor", "admin"]


class MemberOut(BaseModel):
    id: str
    name: str
    status: str
    roles: list[str]


class BadgeOut(BaseModel):
    uid: str
    member_id: str
    status: str


class TrainingOut(BaseModel):
    member_id: str
    training: str
    granted_by: str
    granted_at: str
    expires_at: str | None


class MemberDetail(MemberOut):
    badges: list[BadgeOut]
    trainings: list[TrainingOut]


class NewMember(BaseModel):
    id: str = Field(min_length=1, max_length=63)
    name: str = Field(min_length=1, max_length=200)
    roles: list[Role] = Field(default=["member"], min_length=1, max_length=5)


class MemberPatch(BaseModel):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    status: Literal["active", "inactive"] | None = None
    roles: list[Role] | None = Field(default=None, min_length=1, max_length=5)


class NewBadge(BaseModel):
    uid: str = Field(min_length=2, max_length=200, description="hex, separators allowed: 04:A1:B2:C3")


class NewTraining(BaseModel):
    training: str = Field(min_length=1, max_length=63)
    expires_at: float | None = Field(default=None, description="unix seconds; none: never expires")


def member_out(m: Member) -> MemberOut:
    return MemberOut(id=m.id, name=m.name, status=m.status, roles=sorted(m.roles))


def training_out(t: Training) -> TrainingOut:
    expires = None if t.expires_at is None else iso(t.expires_at)
    return TrainingOut(
        member_id=t.member_id,
        training=t.training,
        granted_by=t.granted_by,
        granted_at=iso(t.granted_at),
        expires_at=expires,
    )


def badge_out(b: Badge) -> BadgeOut:
    return BadgeOut(uid=b.uid, member_id=b.member_id, status=b.status)


def checked(check: Callable[[str], T], value: str) -> T:
    """A field through the people model's own check; 422 with its reason."""
    try:
        return check(value)
    except PeopleError as exc:
        raise HTTPException(422, [str(exc)]) from None


def refused(change: Callable[[], T]) -> T:
    """Run a store change; its refusal (a conflict with the current state) is a 409."""
    try:
        return change()
    except PeopleError as exc:
        raise HTTPException(409, str(exc)) from None


def visible_member(people: People, principal: Principal, member_id: str) -> Member:
    """The member, if it exists and the caller may see it; 404 otherwise, in both cases alike."""
    member = people.member(member_id) if may_see(principal, member_id) else None
    if member is None:
        raise HTTPException(404, f"no member {member_id!r}")
    return member


@router.get("")
def list_members(
    people: PeopleDep,
    principal: CurrentPrincipal,
    status: Annotated[Literal["active", "inactive"] | None, Query(description="only members in this status")] = None,
) -> list[MemberOut]:
    """Every member (operator, auditor, admin); any other token: its own member only."""
    if sees_everyone(principal):
        return [member_out(m) for m in people.members(status=status)]
    own = None if principal.member_id is None else people.member(principal.member_id)
    return [member_out(own)] if own is not None and status in (None, own.status) else []


@router.get("/{member_id}")
def get_member(member_id: MemberId, people: PeopleDep, principal: CurrentPrincipal) -> MemberDetail:
    """A member with its badges and trainings."""
    m = visible_member(people, principal, member_id)
    return MemberDetail(
        **member_out(m).model_dump(),
        badges=[badge_out(b) for b in people.badges(m.id)],
        trainings=[training_out(t) for t in people.trainings(m.id)],
    )


@router.post("", status_code=201)
def add_member(body: NewMember, people: PeopleDep, principal: Manager) -> MemberOut:
    """Add an active member (operator, admin). 409 when the id is taken."""
    member_id = checked(check_member_id, body.id)
    name = checked(check_name, body.name)
    return member_out(refused(lambda: people.add_member(member_id, name, roles=body.roles, actor=actor(principal))))


@router.patch("/{member_id}")
def update_member(member_id: MemberId, body: MemberPatch, people: PeopleDep, principal: Manager) -> MemberOut:
    """Change a member's name, status or roles (operator, admin); only what is given changes."""
    visible_member(people, principal, member_id)
    name = None if body.name is None else checked(check_name, body.name)
    roles = body.roles

    def change() -> Member:
        return people.update_member(member_id, name=name, roles=roles, status=body.status, actor=actor(principal))

    return member_out(refused(change))


@router.post("/{member_id}/badges", status_code=201)
def assign_badge(member_id: MemberId, body: NewBadge, people: PeopleDep, principal: Manager) -> BadgeOut:
    """Give a badge to the member (operator, admin). 409 while it is active for someone else."""
    visible_member(people, principal, member_id)
    uid = checked(check_uid, body.uid)
    return badge_out(refused(lambda: people.assign_badge(uid, member_id, actor=actor(principal))))


@router.delete("/{member_id}/badges/{uid}")
def revoke_badge(
    member_id: MemberId,
    uid: Annotated[str, Path(min_length=2, max_length=200)],
    people: PeopleDep,
    principal: Manager,
    lost: Annotated[bool, Query(description="reported lost by its holder, rather than taken back")] = False,
) -> BadgeOut:
    """Mark the member's badge revoked (or lost): it opens nothing any more (operator, admin)."""
    visible_member(people, principal, member_id)
    badge = people.badge(checked(check_uid, uid))
    if badge is None or badge.member_id != member_id:
        raise HTTPException(404, f"member {member_id!r} has no badge {uid!r}")
    return badge_out(refused(lambda: people.revoke_badge(badge.uid, lost=lost, actor=actor(principal))))


@router.post("/{member_id}/trainings", status_code=201)
def grant_training(member_id: MemberId, body: NewTraining, people: PeopleDep, principal: Trainer) -> TrainingOut:
    """Grant or renew a training (trainer, operator, admin), granted by the token's member (else the token).

    A trainer grants to any member by id, so trainers learn which ids exist.
    """
    _exists(people, member_id)
    training = checked(check_training_id, body.training)
    by = principal.member_id or actor(principal)
    now = time.time()
    if body.expires_at is not None and body.expires_at <= now:
        raise HTTPException(422, ["expires_at: the training would expire before it is granted"])

    def grant() -> Training:
        return people.grant_training(member_id, training, granted_by=by, at=now, expires_at=body.expires_at)

    return training_out(refused(grant))


@router.delete("/{member_id}/trainings/{training}", status_code=204)
def revoke_training(
    member_id: MemberId,
    training: Annotated[str, Path(min_length=1, max_length=63)],
    people: PeopleDep,
    principal: Trainer,
) -> None:
    """Take a training back (trainer, operator, admin). 409 when the member does not hold it."""
    _exists(people, member_id)
    refused(lambda: people.revoke_training(member_id, training, actor=actor(principal)))


def _exists(people: People, member_id: str) -> Member:
    member = people.member(member_id)
    if member is None:
        raise HTTPException(404, f"no member {member_id!r}")
    return member
