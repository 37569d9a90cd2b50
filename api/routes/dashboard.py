"""api: the dashboard — server-rendered pages for marketers, behind the admin login."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(include_in_schema=False)
