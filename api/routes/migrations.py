"""api: move waiting journeys to a newer version."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import AdminDep

router = APIRouter(prefix="/v1/campaigns", tags=["migrations"], dependencies=[AdminDep])
