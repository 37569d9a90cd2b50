"""workflows: AudienceClock — one run per minute, started by a Temporal Schedule
(temporal/schedules.py), for what changes as time passes: date entries coming due,
segment memberships whose window moved, segments being built. No timer per user: each
job reads only what is due as of the run's time (core/clock.py)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, FailureError

with workflow.unsafe.imports_passed_through():
    from core.clock import (
        ACTIVITY_BUILD_SEGMENTS,
        ACTIVITY_DUE_DATES,
        ACTIVITY_RECHECK_SEGMENTS,
        WORKFLOW_CLOCK,
        ClockRequest,
        ClockTicked,
        DatesSwept,
        SegmentsBuilt,
        SegmentsRechecked,
    )
    from core.fanout import ACTIVITY_DUE_BROADCASTS, BroadcastsDue

JOB_TIMEOUT = timedelta(minutes=2)
JOB_HEARTBEAT = timedelta(seconds=30)
JOB_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=3,
)
"""A job that keeps failing fails this minute's run (shown in the Temporal UI); the next
firing tries anew, and each job catches up on what it missed (dates look back, rechecks
and builds resume)."""


@workflow.defn(name=WORKFLOW_CLOCK)
class AudienceClock:
    """Runs each minute's jobs in turn as of the schedule's time; one failing job does not
    keep the others from running, and the run fails at the end naming it."""

    @workflow.run
    async def run(self) -> ClockTicked:
        request = ClockRequest(now=workflow.now())
        ticked = ClockTicked()
        ticked.dates = await self._job(
            ACTIVITY_DUE_DATES, request, DatesSwept, "date entries due", ticked
        )
        ticked.segments_rechecked = await self._job(
            ACTIVITY_RECHECK_SEGMENTS, request, SegmentsRechecked, "segment windows", ticked
        )
        ticked.segments_built = await self._job(
            ACTIVITY_BUILD_SEGMENTS, request, SegmentsBuilt, "segments building", ticked
        )
        ticked.broadcasts = await self._job(
            ACTIVITY_DUE_BROADCASTS, request, BroadcastsDue, "scheduled broadcasts due", ticked
        )
        workflow.set_current_details(_details(ticked))
        if ticked.failed:
            raise ApplicationError("; ".join(ticked.failed), type="ClockJobFailed")
        return ticked

    async def _job(
        self,
        name: str,
        request: ClockRequest,
        result_type: type[Any],
        summary: str,
        ticked: ClockTicked,
    ) -> Any:
        try:
            return await workflow.execute_activity(
                name,
                request,
                result_type=result_type,
                start_to_close_timeout=JOB_TIMEOUT,
                heartbeat_timeout=JOB_HEARTBEAT,
                retry_policy=JOB_RETRY,
                summary=summary,
            )
        except ActivityError as err:
            cause = err.cause
            reason = (
                cause.message if isinstance(cause, FailureError) and cause.message else str(err)
            )
            ticked.failed.append(f"{name}: {reason}")
            return None


def _details(ticked: ClockTicked) -> str:
    parts = []
    if ticked.dates is not None:
        parts.append(f"{ticked.dates.written} date events ({ticked.dates.campaigns} campaigns)")
    if ticked.segments_rechecked is not None:
        parts.append(f"{ticked.segments_rechecked.evaluated} memberships rechecked")
    if ticked.segments_built is not None:
        parts.append(f"{ticked.segments_built.users} users built into segments")
    if ticked.broadcasts is not None and ticked.broadcasts.started:
        parts.append(f"broadcasts fanning out: {', '.join(ticked.broadcasts.started)}")
    parts.extend(f"failed: {f}" for f in ticked.failed)
    return "; ".join(parts)
