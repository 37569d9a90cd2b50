"""AudienceClock on the time-skipping server with activity doubles: the jobs run in turn as
of the run's time, and one failing job neither stops the others nor goes unsaid."""

from __future__ import annotations

import uuid

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

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
from workflows.clock import AudienceClock


class Jobs:
    def __init__(self, broken: str | None = None):
        self.broken = broken
        self.asked: list[tuple[str, ClockRequest]] = []

    def _ask(self, name: str, request: ClockRequest) -> None:
        self.asked.append((name, request))
        if name == self.broken:
            raise ApplicationError("database down", non_retryable=True)

    @activity.defn(name=ACTIVITY_DUE_DATES)
    async def due_dates(self, request: ClockRequest) -> DatesSwept:
        self._ask(ACTIVITY_DUE_DATES, request)
        return DatesSwept(campaigns=1, written=2)

    @activity.defn(name=ACTIVITY_RECHECK_SEGMENTS)
    async def recheck(self, request: ClockRequest) -> SegmentsRechecked:
        self._ask(ACTIVITY_RECHECK_SEGMENTS, request)
        return SegmentsRechecked(evaluated=3)

    @activity.defn(name=ACTIVITY_DUE_BROADCASTS)
    async def broadcasts(self, request: ClockRequest) -> BroadcastsDue:
        self._ask(ACTIVITY_DUE_BROADCASTS, request)
        return BroadcastsDue(started=["fanout/schedule/digest/2026-11-30T10:00"])

    @activity.defn(name=ACTIVITY_BUILD_SEGMENTS)
    async def build(self, request: ClockRequest) -> SegmentsBuilt:
        self._ask(ACTIVITY_BUILD_SEGMENTS, request)
        return SegmentsBuilt(users=4)


async def run(env, task_queue: str, jobs: Jobs) -> ClockTicked:
    async with Worker(
        env.client,
        task_queue=task_queue,
        workflows=[AudienceClock],
        activities=[jobs.due_dates, jobs.recheck, jobs.build, jobs.broadcasts],
    ):
        return await env.client.execute_workflow(
            WORKFLOW_CLOCK,
            id=f"clock-{uuid.uuid4()}",
            task_queue=task_queue,
            result_type=ClockTicked,
        )


async def test_each_minute_runs_every_job_as_of_the_run_time(time_skipping_env, task_queue):
    jobs = Jobs()
    ticked = await run(time_skipping_env, task_queue, jobs)
    assert [name for name, _ in jobs.asked] == [
        ACTIVITY_DUE_DATES,
        ACTIVITY_RECHECK_SEGMENTS,
        ACTIVITY_BUILD_SEGMENTS,
        ACTIVITY_DUE_BROADCASTS,
    ]
    assert len({request.now for _, request in jobs.asked}) == 1  # one time for all
    assert ticked.dates == DatesSwept(campaigns=1, written=2)
    assert ticked.segments_rechecked == SegmentsRechecked(evaluated=3)
    assert ticked.segments_built == SegmentsBuilt(users=4)
    assert ticked.broadcasts == BroadcastsDue(started=["fanout/schedule/digest/2026-11-30T10:00"])


async def test_a_failing_job_does_not_stop_the_others_and_fails_the_run(
    time_skipping_env, task_queue
):
    jobs = Jobs(broken=ACTIVITY_DUE_DATES)
    with pytest.raises(WorkflowFailureError) as failure:
        await run(time_skipping_env, task_queue, jobs)
    assert [name for name, _ in jobs.asked] == [
        ACTIVITY_DUE_DATES,
        ACTIVITY_RECHECK_SEGMENTS,
        ACTIVITY_BUILD_SEGMENTS,
        ACTIVITY_DUE_BROADCASTS,
    ]
    assert "due_dates: database down" in str(failure.value.cause)
