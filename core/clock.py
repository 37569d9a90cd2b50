"""core: the audience clock — the workflow a Temporal Schedule starts every minute for
what changes as time passes, without a timer per user: date entries coming due (store.dates),
segment memberships whose time window moved (store.segments.recheck_due) and segments
being built for the users who were there before them (store.segments.build_step)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from core.fanout import BroadcastsDue

WORKFLOW_CLOCK = "audience-clock"
ACTIVITY_DUE_DATES = "due_dates"
ACTIVITY_RECHECK_SEGMENTS = "recheck_segments"
ACTIVITY_BUILD_SEGMENTS = "build_segments"


class ClockRequest(BaseModel):
    now: datetime
    """The schedule's time (the run's `workflow.now()`): what is due is due as of it, so a
    retried activity answers the same."""


class DatesSwept(BaseModel):
    campaigns: int
    """Active date campaigns looked at."""
    written: int
    """`Date Reached` events written to the outbox (the relay starts their journeys)."""


class SegmentsRechecked(BaseModel):
    evaluated: int
    """Memberships evaluated again because their `recheck_at` came."""


class SegmentsBuilt(BaseModel):
    users: int
    """Existing users evaluated for segments that are building."""
    building: list[str] = Field(default_factory=list)
    """Segments still building after this run (the next minute goes on)."""


class ClockTicked(BaseModel):
    dates: DatesSwept | None = None
    segments_rechecked: SegmentsRechecked | None = None
    segments_built: SegmentsBuilt | None = None
    broadcasts: BroadcastsDue | None = None
    failed: list[str] = Field(default_factory=list)
    """The jobs that failed this minute, with why; the others ran."""
