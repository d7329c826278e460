"""/api/v1/machines: the live state of every machine, and the operators' commands.

Reading takes any valid token. Who uses or reserved a machine, and the open session's
id, times and energy, are shown to operators, auditors and admins and to that member's
own token; anyone else sees them as null. That the machine is in use (since when) or
reserved stays visible to all: the machine's own display shows it anyway.

Commands (operators and admins) never touch the floor directly. Like a badge, a command
is journaled first, as an `event.operator` row, and the machine floor applies it when
it reads that row, so a command and its effects survive a restart and an audit sees who
gave it. The route waits (up to `APPLY_WAIT_S`) until the floor has read past the row
and answers 200 with the machine as it is then; if the floor is slower than that (a
gateway under heavy load) it answers 202: the command is journaled and will be applied.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Response
from pydantic import BaseModel, Field

from gateway.api.auth import CONFLICT, ERRORS, CurrentPrincipal, Manager, PeopleDep, actor, may_see, shown
from gateway.api.deps import GatewayDep
from gateway.app import Gateway
from gateway.domain.floor import FloorError, MachineState
from gateway.domain.floor_events import EndSession, OperatorCommand, Override, Reserve, SetState
from gateway.floor_service import FloorService, operator_row
from gateway.model import iso
from gateway.people import Principal

router = APIRouter(prefix="/api/v1/machines", tags=["machines"], responses=ERRORS)

#: How long a command waits for the floor to apply it before answering 202.
APPLY_WAIT_S = 2.0
#: How often the waiting command looks at the floor's position (it has no event to wait on).
_POLL_S = 0.005
#: The longest override or reservation the API accepts: 30 days, in minutes.
MAX_MINUTES = 30 * 24 * 60

MachineId = Annotated[str, Path(min_length=1, max_length=64, description="the machine's id in commonwatt.toml")]
AdminState = Literal["free", "to_check", "blocked", "disabled"]


class SessionOut(BaseModel):
    """The open session. Someone else's shows only since when the machine is in use."""

    start: str
    session_id: str | None = Field(description="null unless the token may see this member's data")
    member_id: str | None = Field(description="null unless the token may see this member's data")
    busy_s: float | None
    idle_s: float | None
    energy_wh: float | None
    relay_unconfirmed: bool | None


class MachineOut(BaseModel):
    id: str
    name: str
    state: str = Field(description="in_use while a session is open, else the state in force")
    set_state: str
    override_state: str | None
    override_until: str | None
    reserved: bool
    reserved_for: str | None = Field(description="null unless the token may see this member")
    reserved_until: str | None
    session: SessionOut | None
    relay_on: bool | None
    relay_pending: bool | None = Field(description="the state a relay command waits to see confirmed")
    power_w: float | None
    power_ts: str | None
    online: bool


_COMMAND_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"model": MachineOut, "description": "journaled; the floor has not applied it yet"},
    409: {**CONFLICT[409], "description": "no machine floor (no [[machines]] in commonwatt.toml), or nothing to end"},
}


class StateIn(BaseModel):
    state: AdminState


class OverrideIn(BaseModel):
    state: AdminState
    minutes: float = Field(gt=0, le=MAX_MINUTES, description="the override ends by itself after this long")


class ReservationIn(BaseModel):
    member_id: str = Field(min_length=1, max_length=63)
    minutes: float | None = Field(default=None, gt=0, le=MAX_MINUTES, description="none: until released")


def _iso(ts: float | None) -> str | None:
    return None if ts is None else iso(ts)


def machine_out(gateway: Gateway, view: MachineState, principal: Principal) -> MachineOut:
    s = view.session
    session = None
    if s is not None and may_see(principal, s.member_id):
        session = SessionOut(
            start=iso(s.start), session_id=s.session_id, member_id=s.member_id, busy_s=s.busy_s,
            idle_s=s.idle_s, energy_wh=s.energy_wh, relay_unconfirmed=s.relay_unconfirmed,
        )  # fmt: skip
    elif s is not None:
        session = SessionOut(
            start=iso(s.start), session_id=None, member_id=None, busy_s=None, idle_s=None, energy_wh=None,
            relay_unconfirmed=None,
        )  # fmt: skip
    names = {m.id: m.name for m in gateway.config.machines}
    return MachineOut(
        id=view.machine_id, name=names.get(view.machine_id, ""), state=view.state, set_state=view.set_state,
        override_state=view.override_state, override_until=_iso(view.override_until),
        reserved=view.reserved_for is not None, reserved_for=shown(principal, view.reserved_for),
        reserved_until=_iso(view.reserved_until), session=session, relay_on=view.relay_on,
        relay_pending=view.relay_pending, power_w=view.last_power_w, power_ts=_iso(view.last_power_ts),
        online=view.online,
    )  # fmt: skip


def view_of(gateway: Gateway, machine_id: str) -> MachineState:
    """The machine's state now; 404 for a machine the configuration does not name."""
    floor = gateway.floor
    if floor is None or machine_id not in {m.id for m in gateway.config.machines}:
        raise HTTPException(404, f"no machine {machine_id!r}")
    try:
        return floor.machine_view(machine_id)
    except FloorError:
        raise HTTPException(404, f"no machine {machine_id!r}") from None


def command_floor(gateway: Gateway, machine_id: str) -> FloorService:
    """The floor a command goes to: 409 without one, 404 for an unknown machine."""
    if gateway.floor is None:
        raise HTTPException(409, "this gateway runs no machine floor: commonwatt.toml has no [[machines]]")
    view_of(gateway, machine_id)
    return gateway.floor


async def apply(gateway: Gateway, command: OperatorCommand, principal: Principal, response: Response) -> MachineOut:
    """Journal the command, wait for the floor to read it, and return the machine as it is then."""
    floor = command_floor(gateway, command.machine_id)
    gateway.writer.put_rows([operator_row(time.time(), command)], urgent=True)
    try:
        seq = await asyncio.to_thread(gateway.writer.flush, APPLY_WAIT_S)
    except TimeoutError:
        seq = None
    deadline = time.monotonic() + APPLY_WAIT_S
    while seq is None or floor.position < seq:
        if time.monotonic() > deadline:
            response.status_code = 202
            break
        await asyncio.sleep(_POLL_S)
    return machine_out(gateway, view_of(gateway, command.machine_id), principal)


@router.get("")
def list_machines(gateway: GatewayDep, principal: CurrentPrincipal) -> list[MachineOut]:
    """Every configured machine, live (any token); empty when the gateway runs no machine floor."""
    if gateway.floor is None:
        return []
    return [machine_out(gateway, view_of(gateway, m.id), principal) for m in gateway.config.machines]


@router.get("/{machine_id}")
def get_machine(machine_id: MachineId, gateway: GatewayDep, principal: CurrentPrincipal) -> MachineOut:
    """One machine, live (any token)."""
    return machine_out(gateway, view_of(gateway, machine_id), principal)


@router.post("/{machine_id}/state", responses=_COMMAND_RESPONSES)
async def set_state(
    machine_id: MachineId, body: StateIn, gateway: GatewayDep, principal: Manager, response: Response
) -> MachineOut:
    """Set the machine's state; clears any override. A state other than free ends the session."""
    return await apply(gateway, SetState(machine_id, body.state, by=actor(principal)), principal, response)


@router.post("/{machine_id}/override", responses=_COMMAND_RESPONSES)
async def override(
    machine_id: MachineId, body: OverrideIn, gateway: GatewayDep, principal: Manager, response: Response
) -> MachineOut:
    """Put the machine in a state for some minutes; then it goes back to its set state by itself."""
    until = time.time() + body.minutes * 60
    command = Override(machine_id, body.state, until, by=actor(principal))
    return await apply(gateway, command, principal, response)


@router.delete("/{machine_id}/session", responses=_COMMAND_RESPONSES)
async def end_session(machine_id: MachineId, gateway: GatewayDep, principal: Manager, response: Response) -> MachineOut:
    """End the open session (end reason `operator`) and switch the relay off; 409 when none is open."""
    command_floor(gateway, machine_id)
    if view_of(gateway, machine_id).session is None:
        raise HTTPException(409, f"no session is open on {machine_id!r}")
    return await apply(gateway, EndSession(machine_id, by=actor(principal)), principal, response)


@router.post("/{machine_id}/reservation", responses=_COMMAND_RESPONSES)
async def reserve(
    machine_id: MachineId,
    body: ReservationIn,
    gateway: GatewayDep,
    people: PeopleDep,
    principal: Manager,
    response: Response,
) -> MachineOut:
    """Reserve the machine for a member: other members' badges are refused until it ends or is released."""
    if people.member(body.member_id) is None:
        raise HTTPException(422, [f"member_id: no member {body.member_id!r}"])
    until = None if body.minutes is None else time.time() + body.minutes * 60
    command = Reserve(machine_id, body.member_id, until, by=actor(principal))
    return await apply(gateway, command, principal, response)


@router.delete("/{machine_id}/reservation", responses=_COMMAND_RESPONSES)
async def release(machine_id: MachineId, gateway: GatewayDep, principal: Manager, response: Response) -> MachineOut:
    """Release the machine's reservation (nothing changes when there is none)."""
    return await apply(gateway, Reserve(machine_id, None, by=actor(principal)), principal, response)
