from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from gateway.api.deps import GatewayDep
from gateway.model import iso
from gateway.quantities import quantity

router = APIRouter(prefix="/api/v1", tags=["readings"])


@router.get("/readings/latest")
def latest_readings(
    gateway: GatewayDep,
    device: Annotated[str | None, Query(max_length=64, description="only this device")] = None,
    metric: Annotated[str | None, Query(max_length=64, description="only this metric")] = None,
) -> list[dict[str, Any]]:
    """The latest journaled value of every series, with its unit."""
    devices = gateway.live.devices
    if device is not None and device not in devices:
        known = {d.id for d in gateway.config.devices}
        if device not in known:
            raise HTTPException(404, f"unknown device {device!r}")
    out = []
    for dev_id in sorted(devices if device is None else [device]):
        live = devices.get(dev_id)
        if live is None:
            continue
        for name, (ts, value) in sorted(live.latest.items()):
            if metric is not None and name != metric:
                continue
            try:
                unit = quantity(name).unit
            except KeyError:
                unit = ""
            out.append({"device": dev_id, "metric": name, "value": value, "unit": unit, "ts": iso(ts)})
    return out
