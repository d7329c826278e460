"""/api/v1/audit/...: signed checkpoints, the proofs members download, and the log's key.

What is served here is what `commonwatt audit check-proof` checks offline (formats in
gateway/audit/README.md):

- `checkpoints`, `checkpoints/latest`: every signed checkpoint, or the newest. They name
  no member: any token reads them.
- `proof/{tx_id}`: the inclusion proof of one transaction under the latest checkpoint.
  Operators, auditors and admins get any; any other token only transactions that post to
  its own member's account. Another's is a 404, the same answer as for a transaction that
  does not exist, so a member cannot probe who was charged what.
- `consistency?from=&to=`: that the checkpoint of size `to` (default: the latest) only
  appended to the one of size `from`.
- `key`: the verifier key. Handy, but a member should check proofs against the key the
  lab publishes elsewhere (notice board, website), not one fetched with the proof.

The log is the audit service's when the gateway runs one; otherwise the app opens its
own on the database file on first use.
"""

from __future__ import annotations

import threading
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel

from gateway.api.auth import CONFLICT, ERRORS, CurrentPrincipal, sees_everyone
from gateway.api.deps import get_gateway
from gateway.audit.log import AuditLog, NotFound, StoredCheckpoint
from gateway.audit.merkle import AuditError
from gateway.ledger.model import member_account

router = APIRouter(prefix="/api/v1/audit", tags=["audit"], responses=ERRORS)

_open_lock = threading.Lock()


class CheckpointOut(BaseModel):
    """A signed checkpoint and what it says (root in hex, time in UTC)."""

    size: int
    root: str
    time: str
    checkpoint: str


class InclusionProof(BaseModel):
    """A `commonwatt/inclusion-proof/v1` bundle: save it as JSON and check it with `audit check-proof`."""

    type: str
    log_key: str
    checkpoint: str
    tree_size: int
    leaf_index: int
    leaf: str
    leaf_hash: str
    audit_path: list[str]
    label: str = ""


class ConsistencyProof(BaseModel):
    """A `commonwatt/consistency-proof/v1` bundle."""

    type: str
    log_key: str
    old_checkpoint: str
    new_checkpoint: str
    consistency_path: list[str]


class LogKey(BaseModel):
    """The verifier key the checkpoints are signed with, and the log's name."""

    origin: str
    log_key: str


def get_audit_log(request: Request) -> AuditLog:
    """The audit service's log, or one the app opens on first use."""
    state = request.app.state
    log: AuditLog | None = getattr(state, "audit_log", None)
    if log is None:
        with _open_lock:
            log = getattr(state, "audit_log", None)
            if log is None:
                gateway = get_gateway(request)
                service = getattr(gateway, "audit", None)
                log = service.log if service is not None else AuditLog.for_config(gateway.config)
                state.audit_log = log
    return log


AuditLogDep = Annotated[AuditLog, Depends(get_audit_log)]


def _out(stored: StoredCheckpoint) -> CheckpointOut:
    return CheckpointOut.model_validate(stored.as_json())


@router.get("/checkpoints", response_model=list[CheckpointOut])
def list_checkpoints(_principal: CurrentPrincipal, log: AuditLogDep) -> list[CheckpointOut]:
    """Every signed checkpoint, smallest first."""
    return [_out(c) for c in log.checkpoints()]


@router.get("/checkpoints/latest", response_model=CheckpointOut)
def latest_checkpoint(_principal: CurrentPrincipal, log: AuditLogDep) -> CheckpointOut:
    """The newest signed checkpoint; 404 before the first."""
    latest = log.latest()
    if latest is None:
        raise HTTPException(404, "no checkpoint signed yet")
    return _out(latest)


@router.get("/proof/{tx_id}", response_model=InclusionProof, responses=CONFLICT)
def inclusion_proof(
    tx_id: Annotated[int, Path(ge=1, le=2**63 - 1, description="the transaction's id")],
    principal: CurrentPrincipal,
    log: AuditLogDep,
) -> InclusionProof:
    """The inclusion proof of transaction `tx_id` under the latest checkpoint."""
    hidden = HTTPException(404, f"no transaction {tx_id} under a signed checkpoint, visible to this token")
    if not sees_everyone(principal) and (
        principal.member_id is None or member_account(principal.member_id) not in log.accounts_of(tx_id)
    ):
        raise hidden
    try:
        return InclusionProof.model_validate(log.inclusion(tx_id))
    except NotFound:
        raise hidden from None
    except AuditError as exc:
        raise HTTPException(409, str(exc)) from None


@router.get("/consistency", response_model=ConsistencyProof)
def consistency_proof(
    _principal: CurrentPrincipal,
    log: AuditLogDep,
    from_: Annotated[int, Query(alias="from", ge=0, le=2**63 - 1, description="size of the older checkpoint")],
    to: Annotated[
        int | None, Query(ge=0, le=2**63 - 1, description="size of the newer checkpoint; default: the latest")
    ] = None,
) -> ConsistencyProof:
    """That the checkpoint of size `to` extends the one of size `from`, only appending."""
    if to is not None and to < from_:
        raise HTTPException(422, f"`to` ({to}) is smaller than `from` ({from_}): a log never shrinks")
    try:
        return ConsistencyProof.model_validate(log.consistency(from_, to))
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None


@router.get("/key", response_model=LogKey)
def log_key(_principal: CurrentPrincipal, log: AuditLogDep) -> LogKey:
    """The verifier key of the log (compare it with the one your lab publishes)."""
    return LogKey(origin=log.verifier.name, log_key=str(log.verifier))
