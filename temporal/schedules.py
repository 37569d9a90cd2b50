"""temporal: the Temporal Schedules Nudge keeps, declared here and put in place (created,
or brought up to date) whenever a worker starts.

A schedule belongs to the deployment whose workers poll its task queue (and so use its
database): its id names the task queue, so two deployments sharing a namespace each prune
their own send ledger."""

from __future__ import annotations

import dataclasses
import logging
from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
)

from core.clock import WORKFLOW_CLOCK
from core.housekeeping import WORKFLOW_PRUNE_LEDGER

log = logging.getLogger("nudge.schedules")

PRUNE_EVERY = timedelta(hours=1)
CLOCK_EVERY = timedelta(minutes=1)


def prune_ledger_id(task_queue: str) -> str:
    return f"nudge-prune-send-ledger/{task_queue}"


def audience_clock_id(task_queue: str) -> str:
    return f"nudge-audience-clock/{task_queue}"


def schedules(task_queue: str) -> dict[str, Schedule]:
    """Every schedule, by id: the send ledger pruned hourly; the audience clock every
    minute (date entries due, segment windows, segment builds)."""
    schedule_id = prune_ledger_id(task_queue)
    clock_id = audience_clock_id(task_queue)
    return {
        clock_id: Schedule(
            action=ScheduleActionStartWorkflow(
                WORKFLOW_CLOCK,
                id=clock_id,
                task_queue=task_queue,
                # A run nobody picks up (no worker) is dropped; the next minute's takes over.
                execution_timeout=CLOCK_EVERY * 5,
            ),
            spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=CLOCK_EVERY)]),
            # A slow minute is not doubled; missed minutes are not replayed one by one — the
            # next run catches up (date entries look back NUDGE_DATE_LOOKBACK_HOURS).
            policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP, catchup_window=CLOCK_EVERY),
        ),
        schedule_id: Schedule(
            action=ScheduleActionStartWorkflow(
                WORKFLOW_PRUNE_LEDGER,
                id=schedule_id,
                task_queue=task_queue,
                execution_timeout=timedelta(minutes=30),
            ),
            spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=PRUNE_EVERY)]),
            # A slow run is not doubled, and a worker that was away catches up once.
            policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP, catchup_window=PRUNE_EVERY),
        ),
    }


async def ensure_schedules(client: Client, *, task_queue: str) -> None:
    """Create each schedule, or bring one that exists up to today's declaration (a new
    release may change the interval or the action), keeping its state: a schedule an
    operator paused stays paused."""
    for schedule_id, schedule in schedules(task_queue).items():
        try:
            await client.create_schedule(schedule_id, schedule)
            log.info("schedule %s created", schedule_id)
        except ScheduleAlreadyRunningError:

            def update(current: ScheduleUpdateInput, wanted: Schedule = schedule) -> ScheduleUpdate:
                kept = current.description.schedule.state
                return ScheduleUpdate(schedule=dataclasses.replace(wanted, state=kept))

            await client.get_schedule_handle(schedule_id).update(update)
