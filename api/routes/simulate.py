"""api: rehearse a campaign on the time-skipping server."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import AdminDep

router = APIRouter(prefix="/v1/campaigns", tags=["simulate"], dependencies=[AdminDep])
