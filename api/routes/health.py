"""api: liveness (`/healthz`) and readiness (`/readyz`: the database and Temporal answer)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import ServicesDep
from api.schemas import Readiness

router = APIRouter(tags=["health"])

CHECK_TIMEOUT = 2.0
OK = "ok"


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": OK}


async def database_problem(services: ServicesDep) -> str | None:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            async with services.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return None


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "what is down"}},
    summary="Ready to serve: the database answers and Temporal is connected",
)
async def readyz(services: ServicesDep) -> Any:
    database, temporal = await asyncio.gather(
        database_problem(services), services.temporal.healthy(CHECK_TIMEOUT)
    )
    body = Readiness(database=database or OK, temporal=temporal or OK)
    # Ingestion works without Temporal, but a load balancer should prefer an instance that
    # can route now; the outbox keeps what this one accepts meanwhile either way.
    return JSONResponse(body.model_dump(), status_code=503 if database or temporal else 200)
