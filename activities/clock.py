"""activities: what the audience clock does each minute — write the date entries that
came due, recheck segment memberships whose window moved, build new segments a page at a
time. Each commits in batches and heartbeats between them."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity

from core.clock import (
    ACTIVITY_BUILD_SEGMENTS,
    ACTIVITY_DUE_DATES,
    ACTIVITY_RECHECK_SEGMENTS,
    ClockRequest,
    DatesSwept,
    SegmentsBuilt,
    SegmentsRechecked,
)
from core.config import Settings
from store.dates import active_date_campaigns, due_dates
from store.events import record_events
from store.segments import build_step, recheck_due

BATCH = 500
"""Rows one transaction writes or evaluates: short transactions, so ingestion (which
needs SQLite's one write lock) never waits long behind the clock."""
BUDGET_SECONDS = 40.0
"""How long one job works per minute; what is left waits for the next firing (rechecks
and builds are resumable, dates are found again by the next sweep's lookback)."""


def _beat(**details: Any) -> None:
    if activity.in_activity():
        activity.heartbeat(details)


class ClockActivities:
    def __init__(self, *, sessions: async_sessionmaker[AsyncSession], settings: Settings):
        self._sessions = sessions
        self._settings = settings

    @activity.defn(name=ACTIVITY_DUE_DATES)
    async def due_dates(self, request: ClockRequest) -> DatesSwept:
        """Write a `Date Reached` event for each (date campaign, user, occurrence) whose
        moment came in the lookback before `request.now` and is not written yet
        (store.dates). The outbox's unique message id makes a repeat write nothing."""
        async with self._sessions() as session:
            campaigns = await active_date_campaigns(session=session)
            if not campaigns:
                return DatesSwept(campaigns=0, written=0)
            due = await due_dates(
                session,
                campaigns=campaigns,
                now=request.now,
                lookback=timedelta(hours=self._settings.date_lookback_hours),
                default_timezone=self._settings.default_timezone,
            )
        written = 0
        for start in range(0, len(due), BATCH):
            async with self._sessions() as session, session.begin():
                stored = await record_events(session=session, events=due[start : start + BATCH])
            written += sum(1 for _, new in stored if new)
            _beat(written=written)
        if written:
            activity.logger.info("date entries: %d events written", written)
        return DatesSwept(campaigns=len(campaigns), written=written)

    @activity.defn(name=ACTIVITY_RECHECK_SEGMENTS)
    async def recheck_segments(self, request: ClockRequest) -> SegmentsRechecked:
        """Evaluate again the memberships due to change by themselves (a counted day left
        a window), a batch per transaction, until none is due or the minute's budget is
        spent."""
        evaluated = 0
        deadline = time.monotonic() + BUDGET_SECONDS
        while time.monotonic() < deadline:
            async with self._sessions() as session, session.begin():
                n = await recheck_due(session, now=request.now, limit=BATCH)
            evaluated += n
            _beat(evaluated=evaluated)
            if n < BATCH:
                break
        return SegmentsRechecked(evaluated=evaluated)

    @activity.defn(name=ACTIVITY_BUILD_SEGMENTS)
    async def build_segments(self, request: ClockRequest) -> SegmentsBuilt:
        """Evaluate existing users for new or changed segments, a page per transaction,
        until every segment is ready or the minute's budget is spent."""
        users = 0
        building: set[str] = set()
        deadline = time.monotonic() + BUDGET_SECONDS
        while time.monotonic() < deadline:
            async with self._sessions() as session, session.begin():
                progress = await build_step(session, now=request.now, limit=BATCH)
            if progress.segment_id is None:
                break
            users += progress.evaluated
            if progress.done:
                building.discard(progress.segment_id)
            else:
                building.add(progress.segment_id)
            _beat(users=users)
        return SegmentsBuilt(users=users, building=sorted(building))

    def all(self) -> list[Any]:
        return [self.due_dates, self.recheck_segments, self.build_segments]
