"""The credit ledger at run time: sessions charged, receipts sent, allowances issued, credit checked.

A journal consumer like the machine floor, with a cursor of its own (consumer `ledger`):

- every `event.session_closed` row the floor journals becomes a *pending* session. It is
  charged once the energy intervals covering it are final, so the charge uses the same
  numbers a replay of the journal gives (see "Waiting for the energy" below). The charge
  is `Ledger.charge_session` with the key `charge:<session>`: a restart, a replay or a
  crash between the charge and our checkpoint never charges twice;
- after the charge, a receipt (kWh by source, CO₂, credits charged, balance after) is
  journaled as an `event.receipt` row in the same SQLite transaction as our checkpoint,
  then published on `commonwatt/<site>/machine/<machine>/receipt` (QoS 1, not retained).
  A gateway killed between the charge and the checkpoint charges nothing on restart
  (the key exists), journals the receipt then, and may publish it a second time: the
  journal has exactly one receipt per session, MQTT subscribers may see one again;
- once a day, at start and whenever members change, the month's allowance is issued to
  every active member when `pricing.allowance.day` has come (idempotent per member and
  month, so a restart or a second call issues nothing more);
- `credit_ok(member)` answers the access decision's "insufficient credit" question from a
  read connection of its own, so a badge never waits behind a charge being written.

Waiting for the energy. A session's energy is the member's attributed share of the
energy tables (sun, battery, grid), which the energy service makes final `energy.grace_s`
after each interval ends once every meter has reported past it (at the latest
`energy.meter_wait_s` later). The service charges a session when the interval holding its
end is final, or, if that never comes (the energy service is behind or stopped), when
the session ended more than one interval plus the grace plus `meter_wait_s` plus a minute
ago, with what the tables hold then. A site without source meters (no `pv`, `battery` or `grid`
device), or a machine whose meter is not a counter the energy service reads, has no
source mix to wait for: its sessions are charged at once from the meter's energy
recorded with the session.

Energy of unknown source. Energy the attribution could not give a source (a site
without source meters, or a share the site's meters do not explain) is priced at the
grid price and its CO₂ counted at the grid's intensity: commonwatt never claims sun it
did not see. It is posted to `energy:grid` and reported as `unknown_mwh` on the receipt.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from gateway.config import Config
from gateway.consumer import JournalConsumerService
from gateway.domain.energy import Intensity, co2_mg
from gateway.domain.energy.meters import COUNTER_CHANNELS
from gateway.energy_store import EnergyStore
from gateway.journal import Journal, NewRow
from gateway.ledger import Ledger, LedgerError, PricingPolicy, Transaction, allowance_due, member_account
from gateway.ledger.pricing import MCR_PER_CREDIT
from gateway.people import People

log = logging.getLogger(__name__)

CONSUMER = "ledger"
SESSION_CLOSED = "event.session_closed"
RECEIPT_EVENT = "event.receipt"
#: Device roles whose meters give the energy its source.
SOURCE_ROLES = frozenset({"pv", "battery", "grid"})
TICK_S = 2.0
READ_PAGE = 1000
#: How long past the interval's grace a session waits for final energy before it is charged anyway.
WAIT_MARGIN_S = 60.0
MWH_PER_KWH = 1_000_000

Publish = Callable[..., None]


# -- money and energy as text -----------------------------------------------------------------


def format_credits(mcr: int) -> str:
    """Milli-credits as a decimal string of credits: 3349 -> "3.349", -500 -> "-0.500"."""
    sign = "-" if mcr < 0 else ""
    whole, frac = divmod(abs(mcr), MCR_PER_CREDIT)
    return f"{sign}{whole}.{frac:03d}"


def format_kwh(mwh: int) -> str:
    """Integer mWh as exact kWh text: 123456 -> "0.123456"."""
    sign = "-" if mwh < 0 else ""
    whole, frac = divmod(abs(mwh), MWH_PER_KWH)
    return f"{sign}{whole}.{frac:06d}"


def pricing_active(policy: PricingPolicy) -> bool:
    """Whether anything costs credits. A site that prices nothing refuses nobody for credit."""
    rates = [policy.default_rate, *policy.machines.values()]
    amounts = [r.busy_per_hour for r in rates] + [r.idle_per_hour for r in rates]
    amounts += [policy.energy.sun, policy.energy.battery, policy.energy.grid, policy.minimum_charge]
    return any(Decimal(a) > 0 for a in amounts)


# -- sessions and their energy ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClosedSession:
    """What the ledger needs of a finished session (an `event.session_closed` row)."""

    session_id: str
    machine_id: str
    member_id: str
    start: float
    end: float
    busy_s: int
    idle_s: int
    energy_wh: float

    @classmethod
    def from_event(cls, data: Mapping[str, Any]) -> ClosedSession:
        """From the floor's event; busy and idle time rounded to whole seconds (halves to even)."""
        return cls(
            session_id=str(data["session_id"]),
            machine_id=str(data["machine_id"]),
            member_id=str(data["member_id"]),
            start=float(data["start"]),
            end=float(data["end"]),
            busy_s=max(0, round(float(data.get("busy_s", 0.0)))),
            idle_s=max(0, round(float(data.get("idle_s", 0.0)))),
            energy_wh=max(0.0, float(data.get("energy_wh", 0.0))),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "machine_id": self.machine_id,
            "member_id": self.member_id,
            "start": self.start,
            "end": self.end,
            "busy_s": self.busy_s,
            "idle_s": self.idle_s,
            "energy_wh": self.energy_wh,
        }


@dataclass(frozen=True, slots=True)
class SessionEnergy:
    """A session's energy in mWh by source, what had no source, its CO₂ and where it came from."""

    sun: int = 0
    battery: int = 0
    grid: int = 0
    unknown: int = 0
    co2_mg: int = 0
    basis: str = "attributed"  # attributed: the energy tables; meter: the session's own counter

    def priced(self) -> dict[str, int]:
        """mWh by the ledger's sources: energy of unknown source is priced as grid."""
        return {"sun": self.sun, "battery": self.battery, "grid": self.grid + self.unknown}


def energy_from_shares(
    shares: Iterable[Sequence[object]], session: ClosedSession, intensity: Intensity
) -> SessionEnergy:
    """Sum a session's shares of the energy tables (rows of `energy_store.SHARE_COLUMNS`). Pure.

    Battery energy of either origin is `battery`; CO₂ is the grid-origin part (grid and
    battery charged from the grid) plus the unknown part, at the intensity of each interval.
    """
    sun = battery = grid = unknown = co2 = 0
    for start, kind, machine, _member, sid, energy, s, b_sun, b_grid, g, _flags in shares:
        if kind != "member" or machine != session.machine_id or sid != session.session_id:
            continue
        parts = (int(str(s)), int(str(b_sun)), int(str(b_grid)), int(str(g)))
        lost = max(0, int(str(energy)) - sum(parts))
        sun, battery, grid, unknown = sun + parts[0], battery + parts[1] + parts[2], grid + parts[3], unknown + lost
        co2 += co2_mg(parts[2] + parts[3] + lost, intensity.at(float(str(start))))
    return SessionEnergy(sun, battery, grid, unknown, co2, "attributed")


def energy_from_meter(session: ClosedSession, intensity: Intensity) -> SessionEnergy:
    """The session's own meter energy, all of unknown source (priced and counted as grid)."""
    mwh = round(session.energy_wh * 1000)
    return SessionEnergy(unknown=mwh, co2_mg=co2_mg(mwh, intensity.at(session.end)), basis="meter")


def receipt_document(
    session: ClosedSession, tx: Transaction, energy: SessionEnergy, balance_after: int
) -> dict[str, Any]:
    """The receipt a member gets: integers (mWh, mg, mcr) and the same as text (kWh, g, credits)."""
    total = -tx.amount_for(member_account(session.member_id))
    by_source = {"sun": energy.sun, "battery": energy.battery, "grid": energy.grid, "unknown": energy.unknown}
    return {
        "session_id": session.session_id,
        "member_id": session.member_id,
        "machine_id": session.machine_id,
        "start": session.start,
        "end": session.end,
        "busy_s": session.busy_s,
        "idle_s": session.idle_s,
        "energy_mwh": by_source,
        "energy_kwh": {k: format_kwh(v) for k, v in by_source.items()},
        "energy_basis": energy.basis,
        "co2_mg": energy.co2_mg,
        "co2_g": f"{energy.co2_mg // 1000}.{energy.co2_mg % 1000:03d}",
        "charged_mcr": total,
        "charged": format_credits(total),
        "items_mcr": dict(tx.detail.get("items_mcr", {})),
        "balance_after_mcr": balance_after,
        "balance_after": format_credits(balance_after),
        "tx_id": tx.id,
        "policy": tx.policy,
    }


# -- the core (one thread) ----------------------------------------------------------------------


@dataclass(slots=True)
class Receipt:
    machine_id: str
    document: dict[str, Any]


@dataclass(slots=True)
class LedgerCore:
    """Charges, receipts and allowances, fed from the journal. Not thread-safe: one thread drives it."""

    config: Config
    ledger: Ledger
    journal: Journal
    energy: EnergyStore
    people: People
    position: int = 0
    pending: dict[str, ClosedSession] = field(default_factory=dict)
    charged: int = 0
    _allowance_mark: tuple[str, int] | None = None

    @classmethod
    def open(cls, config: Config, *, clock: Callable[[], float] = time.time) -> LedgerCore:
        """`clock`: the time transactions are recorded with (a simulation's clock in the demo)."""
        path = Path(config.journal.path)
        ledger = Ledger(path, config.pricing, clock=clock)
        core = cls(config, ledger, Journal(path), EnergyStore(path), People(path, clock=clock))
        saved = core.journal.checkpoint(CONSUMER)
        if saved is None:  # a new ledger charges the sessions that end from now on
            core.position = core.journal.last_seq()
            core.journal.append_with_checkpoint([], CONSUMER, core.position, json.dumps({"pending": []}))
        else:
            core.position = saved[0]
            core.pending = {s["session_id"]: ClosedSession(**s) for s in json.loads(saved[1])["pending"]}
        return core

    def close(self) -> None:
        for closable in (self.people, self.energy, self.journal, self.ledger):
            closable.close()

    # -- what the configuration says -------------------------------------------------------------

    def attributed(self, machine_id: str) -> bool:
        """Whether the energy tables give this machine's sessions a source mix worth waiting for."""
        roles = {d.id: d.role for d in self.config.devices}
        if not SOURCE_ROLES & set(roles.values()):
            return False
        meters = {m.id: m.meter for m in self.config.machines}
        return roles.get(meters.get(machine_id, ""), "") in COUNTER_CHANNELS

    def ready(self, session: ClosedSession, now: float) -> bool:
        """Whether the energy covering the session is final (or waited for long enough)."""
        if not self.attributed(session.machine_id):
            return True
        cfg = self.config.energy
        if now >= session.end + cfg.interval_s + cfg.grace_s + cfg.meter_wait_s + WAIT_MARGIN_S:
            return True
        last = (math.ceil(session.end / cfg.interval_s) - 1) * cfg.interval_s
        rows = self.energy.intervals(last, last + 1)
        return bool(rows) and int(rows[0]["final"]) == 1

    # -- one step -----------------------------------------------------------------------------

    def step(self, now: float) -> list[Receipt]:
        """Read new sessions, charge those whose energy is ready, checkpoint; the receipts to publish."""
        self.issue_allowances(now)
        position, read = self._read_sessions()
        ready = [s for s in self.pending.values() if self.ready(s, now)]
        receipts = [r for r in (self.charge(s) for s in ready) if r is not None]
        for s in ready:
            del self.pending[s.session_id]
        if read or receipts:
            rows: list[NewRow] = [
                (now, r.machine_id, RECEIPT_EVENT, None, json.dumps(r.document, sort_keys=True)) for r in receipts
            ]
            state = json.dumps({"pending": [s.to_json() for s in self.pending.values()]})
            self.journal.append_with_checkpoint(rows, CONSUMER, position, state)
        self.position = position
        return receipts

    def _read_sessions(self) -> tuple[int, int]:
        """Closed sessions after our position into `pending`; the new position and how many rows were read."""
        position, read = self.position, 0
        while True:
            last = self.journal.last_seq()
            rows = self.journal.events(SESSION_CLOSED, after=position, limit=READ_PAGE)
            read += len(rows)
            for row in rows:
                try:
                    session = ClosedSession.from_event(json.loads(str(row[5])))
                except (KeyError, TypeError, ValueError) as exc:  # written by the floor; a bad row is logged
                    log.error("ledger: session row %s not charged: %s", row[0], exc)
                    continue
                self.pending.setdefault(session.session_id, session)
            if len(rows) < READ_PAGE:
                return max(last, rows[-1][0] if rows else position), read
            position = rows[-1][0]

    def session_energy(self, session: ClosedSession) -> SessionEnergy:
        intensity = self.config.energy.intensity()
        if self.attributed(session.machine_id):
            step = self.config.energy.interval_s
            since = math.floor(session.start / step) * step
            shares = self.energy.member_shares(session.member_id, since, session.end)
            energy = energy_from_shares(shares, session, intensity)
            if energy.sun or energy.battery or energy.grid or energy.unknown:
                return energy
        return energy_from_meter(session, intensity)

    def charge(self, session: ClosedSession) -> Receipt | None:
        """Charge one session (once, whatever happens) and make its receipt; None if the ledger refuses it."""
        energy = self.session_energy(session)
        try:
            tx = self.ledger.charge_session(
                session.session_id,
                session.member_id,
                session.machine_id,
                busy_s=session.busy_s,
                idle_s=session.idle_s,
                mwh_by_source=energy.priced(),
                co2_mg=energy.co2_mg,
            )
        except LedgerError as exc:  # it would be refused again on every try: logged, then dropped
            log.error("ledger: session %s not charged: %s", session.session_id, exc)
            return None
        self.charged += 1
        balance = balance_after(self.ledger, member_account(session.member_id), tx.id)
        return Receipt(session.machine_id, receipt_document(session, tx, energy, balance))

    # -- allowances ---------------------------------------------------------------------------------

    def issue_allowances(self, now: float) -> list[Transaction]:
        """The month's allowance to every active member, once a day and when members change."""
        today = datetime.fromtimestamp(now, ZoneInfo(self.config.site.timezone)).date()
        mark = (today.isoformat(), self.people.version())
        if mark == self._allowance_mark:
            return []
        self._allowance_mark = mark
        month = allowance_due(self.config.pricing, today)
        if month is None:
            return []
        members = [m.id for m in self.people.members(status="active")]
        try:
            return self.ledger.issue_allowances(month, members)
        except LedgerError as exc:
            log.error("ledger: allowances of %s not issued: %s", month, exc)
            return []


def balance_after(ledger: Ledger, account: str, tx_id: int) -> int:
    """An account's balance right after transaction `tx_id` (the same on a replay as at the time)."""
    total = 0
    after = 0
    while True:
        txs = ledger.of_account(account, after=after, limit=1000)
        for tx in txs:
            if tx.id > tx_id:
                return total
            total += tx.amount_for(account)
        if len(txs) < 1000:
            return total
        after = txs[-1].id


# -- the service -------------------------------------------------------------------------------


class LedgerService(JournalConsumerService):
    """Runs the ledger on its own thread: `async with LedgerService(config, publish=...) as ledger:`."""

    def __init__(self, config: Config, *, publish: Publish | None, clock: Callable[[], float] = time.time) -> None:
        super().__init__("ledger", tick_s=TICK_S, log=log)
        self.config = config
        self.publish = publish
        self.clock = clock
        self.core: LedgerCore | None = None
        self.position = 0
        self._credit_active = pricing_active(config.pricing)
        #: A connection of its own for `credit_ok` (called on the floor's thread).
        self._reader: Ledger | None = None

    @property
    def ledger(self) -> Ledger:
        """The store the service writes with; the API posts contributions through it too."""
        assert self.core is not None, "the ledger service is not running"
        return self.core.ledger

    def open(self) -> None:
        """Open the ledger and restore the pending sessions (`async with` does it on its thread)."""
        self.core = LedgerCore.open(self.config, clock=self.clock)
        self.position = self.core.position
        self._reader = Ledger(self.config.journal.path, self.config.pricing)

    def close(self) -> None:
        for closable in (self.core, self._reader):
            if closable is not None:
                closable.close()

    def step(self, now: float) -> None:
        assert self.core is not None
        receipts = self.core.step(now)
        self.position = self.core.position
        for r in receipts:
            self._publish_receipt(r)

    def _publish_receipt(self, receipt: Receipt) -> None:
        if self.publish is None:
            return
        topic = f"commonwatt/{self.config.site.id}/machine/{receipt.machine_id}/receipt"
        self.publish(topic, json.dumps(receipt.document, sort_keys=True), qos=1, retain=False)

    def credit_ok(self, member_id: str) -> bool:
        """The access decision's credit check: may this member start a session now?

        Always yes while nothing is priced. Otherwise `Ledger.can_start_session`, read from a
        connection of its own: one primary-key lookup, a few microseconds.
        """
        if not self._credit_active or self._reader is None:
            return True
        return self._reader.can_start_session(member_id)

    def health(self) -> dict[str, Any]:
        core = self.core
        pending = 0 if core is None else len(core.pending)
        return {"position": self.position, "pending": pending, "error": self.last_error}
