"""The gateway's HTTP API. Routes live in `routes/`, one module per resource."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from gateway import __version__
from gateway.api.auth import ERRORS
from gateway.api.routes import (
    alerts,
    audit,
    energy,
    health,
    ledger,
    machines,
    members,
    metrics,
    pages,
    readings,
    sessions,
    statements,
)

if TYPE_CHECKING:
    from gateway.app import Gateway


async def _bad_request(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    reasons = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
    return JSONResponse(status_code=422, content={"detail": reasons})


def create_app(gateway: Gateway) -> FastAPI:
    app = FastAPI(
        title="commonwatt gateway", version=__version__, docs_url="/api/docs", openapi_url="/api/openapi.json"
    )
    app.state.gateway = gateway
    app.add_exception_handler(RequestValidationError, _bad_request)
    # Open without a token: health, the device readings and /metrics name no member.
    app.include_router(health.router)
    app.include_router(readings.router, responses=ERRORS)
    app.include_router(metrics.router)
    app.include_router(members.router)
    app.include_router(machines.router)
    app.include_router(sessions.router)
    app.include_router(alerts.router)
    app.include_router(energy.router)
    app.include_router(ledger.router)
    app.include_router(audit.router)
    app.include_router(statements.router)
    # The embedded dashboards (HTML, no token) and their live feed (token): left out of OpenAPI.
    app.include_router(pages.router)
    return app
