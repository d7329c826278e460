from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gateway.api.deps import GatewayDep

router = APIRouter(prefix="/api/v1", tags=["health"])


@router.get("/health")
def get_health(gateway: GatewayDep) -> dict[str, Any]:
    """Per source and sink: connected, since when, lag, last message; per device: last seen, online."""
    return gateway.health()
