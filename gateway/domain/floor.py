"""The machine floor of a site: sessions, machine states and relays, as one pure state machine.

The runtime feeds it what the journal holds, in journal order: badge decisions, power and
energy readings, relay confirmations, devices going on- and offline, operator commands, and a
`tick` now and then. Each input returns the effects it caused (events to journal, relay
commands to send), in order. There is no clock, I/O or thread here; `ts` is the only time.

The clock. Every input first advances the floor's clock to its `ts` and fires every timer
that fell due (idle timeout, maximum duration, relay confirmation, override and reservation
expiry, unauthorized use, the trainer's window), on every machine, earliest first. An input
older than the clock is taken as happening at the clock's time. Call `tick(ts)` regularly
(every second is plenty) so that timers fire when no reading comes, and call it before
reading `machine_view` to decide on a badge.

The rules, per machine (details in `gateway.domain.station`):

- an allowed badge on a machine without session opens one and switches the relay on;
- the same member's badge again ends it (`badge_out`) and switches the relay off;
- another allowed member's badge ends it (`takeover`) and opens theirs; the relay stays on;
- a denied badge changes nothing (it is journaled as an `access` event like every badge);
- idle timeout with spin-down, maximum duration, an operator, or the device going offline
  end the session and switch the relay off;
- a relay command not confirmed within `relay_confirm_s` is sent again, up to `relay_retries`
  times; then a `relay_unconfirmed` alert is raised and the session (if it is still the one
  the command was for) is marked `relay_unconfirmed`;
- power at or above the idle threshold with no session for `unauthorized_after_s` raises one
  `unauthorized_use` alert, and another only after the machine has been idle or in a session;
- an operator state other than `free` (set, or an override while it lasts) ends the session;
  an override ends by itself and the machine goes back to the state it had.

The trainer at the machine. A member the runtime marks `trainer=True` whose allowed badge
opens (or takes over) a session opens a window of `trainer_window_s`. In that window, the
badge of any other member that is allowed or denied only for trainings is a trainee's badge:
it grants each training in `Decision.missing` (one `training_granted` event each, granted by
the trainer) and neither opens nor takes over a session. Several trainees can badge in one
window. The window closes when it runs out or when the trainer's session ends, so a trainer
who has left cannot grant anything.

Restart. `to_json()` holds everything: open sessions with their running totals, states,
overrides, reservations, pending relay commands with their attempt counts, the power verdicts
and each meter's counter baseline. `Floor.from_json` gives a floor that answers every future
input exactly as the original would have.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.config import AccessSettings, Machine
from gateway.domain.access import Decision
from gateway.domain.floor_events import Effect, OperatorCommand
from gateway.domain.hours import is_open
from gateway.domain.station import FloorError, Station

__all__ = ["Floor", "FloorError", "MachineState", "SessionView"]

_VERSION = 1


@dataclass(frozen=True, slots=True)
class SessionView:
    """An open session. busy_s and idle_s are counted up to the last power sample."""

    session_id: str
    member_id: str
    start: float
    busy_s: float
    idle_s: float
    energy_wh: float
    relay_unconfirmed: bool


@dataclass(frozen=True, slots=True)
class MachineState:
    """What the access decision and the API need to know about a machine right now.

    `state` is `in_use` while a session is open, else the state in force (`set_state`, or
    `override_state` while the override lasts). Pass `admin_state` to `decide`: a machine in
    use can still be taken over.
    """

    machine_id: str
    state: str
    admin_state: str
    set_state: str
    override_state: str | None
    override_until: float | None
    reserved_for: str | None
    reserved_until: float | None
    session: SessionView | None
    relay_on: bool | None
    relay_pending: bool | None
    last_power_w: float | None
    last_power_ts: float | None
    online: bool
    trainer_id: str | None
    trainer_until: float | None


class Floor:
    """Every machine of a site. Inputs return the effects they caused, in order."""

    def __init__(self, machines: Sequence[Machine], access: AccessSettings, *, timezone: str) -> None:
        self.access = access
        self.timezone = timezone
        hours = access.opening_hours
        self._hours = None if hours is None else {str(day): span for day, span in hours.items()}
        self._stations = {m.id: Station(m, access) for m in machines}
        #: The floor's clock: the latest `ts` seen (None before the first input).
        self.now: float | None = None

    # -- inputs ---------------------------------------------------------------------------

    def badge(self, ts: float, machine_id: str, decision: Decision, *, trainer: bool = False) -> list[Effect]:
        """A badge at the machine, with the decision taken on it; `trainer`: its member is a trainer."""
        station = self._station(machine_id)
        if decision.machine_id != machine_id:
            raise FloorError(f"a decision for {decision.machine_id!r} presented at {machine_id!r}")
        now, out = self._advance(ts)
        return out + station.badge(now, decision, trainer)

    def power(self, ts: float, machine_id: str, watts: float) -> list[Effect]:
        station = self._station(machine_id)
        now, out = self._advance(ts)
        return out + station.power(now, watts)

    def energy(self, ts: float, machine_id: str, counter_wh: float) -> list[Effect]:
        """A cumulative counter reading; its delta goes to the session open at this moment."""
        station = self._station(machine_id)
        _, out = self._advance(ts)
        return out + station.energy(ts, counter_wh)

    def relay_state(self, ts: float, machine_id: str, on: bool) -> list[Effect]:
        station = self._station(machine_id)
        now, out = self._advance(ts)
        return out + station.relay_state(now, on)

    def online(self, ts: float, machine_id: str, online: bool) -> list[Effect]:
        station = self._station(machine_id)
        now, out = self._advance(ts)
        return out + station.set_online(now, online)

    def tick(self, ts: float) -> list[Effect]:
        return self._advance(ts)[1]

    def operator(self, ts: float, command: OperatorCommand) -> list[Effect]:
        """Operator commands; FloorError (nothing changed) for an unknown machine or bad command."""
        station = self._station(command.machine_id)
        now, out = self._advance(ts)
        return out + station.operator(now, command)

    # -- views ----------------------------------------------------------------------------

    def open_now(self, ts: float) -> bool:
        """Whether the site's opening hours admit `ts` (for `decide`'s `open_now`)."""
        return is_open(ts, self.timezone, self._hours)

    @property
    def machine_ids(self) -> list[str]:
        return list(self._stations)

    def machine_view(self, machine_id: str) -> MachineState:
        st = self._station(machine_id)
        s = st.session
        session = None
        if s is not None:
            session = SessionView(s.id, s.member_id, s.start, s.busy_s, s.idle_s, s.energy_wh, s.relay_unconfirmed)
        return MachineState(
            machine_id, "in_use" if s is not None else st.admin_state, st.admin_state, st.state,
            st.override_state, st.override_until, st.reserved_for, st.reserved_until, session,
            st.relay_on, None if st.pending is None else st.pending.on, st.power_w, st.power_ts,
            st.online, st.trainer, st.trainer_until,
        )  # fmt: skip

    # -- persistence ----------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types only; `json.dumps` keeps every float exact."""
        machines = {mid: st.to_json() for mid, st in self._stations.items()}
        return {"version": _VERSION, "now": self.now, "machines": machines}

    @classmethod
    def from_json(
        cls, data: dict[str, Any], machines: Sequence[Machine], access: AccessSettings, timezone: str
    ) -> Floor:
        """The floor `to_json` described, with today's configuration.

        A machine no longer configured is dropped; a newly configured one starts free.
        """
        if data.get("version") != _VERSION:
            raise FloorError(f"floor state version {data.get('version')!r}, expected {_VERSION}")
        floor = cls(machines, access, timezone=timezone)
        floor.now = data["now"]
        for machine_id, state in data["machines"].items():
            if machine_id in floor._stations:
                floor._stations[machine_id].restore(state)
        return floor

    # -- internals ------------------------------------------------------------------------

    def _station(self, machine_id: str) -> Station:
        station = self._stations.get(machine_id)
        if station is None:
            raise FloorError(f"no machine {machine_id!r}")
        return station

    def _advance(self, ts: float) -> tuple[float, list[Effect]]:
        if not math.isfinite(ts):
            raise FloorError(f"time {ts!r} is not a number")
        now = ts if self.now is None else max(ts, self.now)
        self.now = now
        out: list[Effect] = []
        for station in self._stations.values():
            out += station.due(now)
        return now, out
