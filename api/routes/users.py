"""api: one user's profile, consent and journeys."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import AdminDep

router = APIRouter(prefix="/v1/users", tags=["users"], dependencies=[AdminDep])
