"""api: bulk exit of a campaign's journeys, retrying a failed send."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import AdminDep

router = APIRouter(prefix="/v1", tags=["operations"], dependencies=[AdminDep])
