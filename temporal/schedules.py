"""temporal: the Temporal Schedules Nudge keeps, declared here and put in place (created,
or brought up to date) whenever a worker starts."""

from __future__ import annotations

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

from core.housekeeping import WORKFLOW_PRUNE_LEDGER

log = logging.getLogger("nudge.schedules")

PRUNE_LEDGER = "nudge-prune-send-ledger"
PRUNE_EVERY = timedelta(hours=1)


def schedules(task_queue: str) -> dict[str, Schedule]:
    """Every schedule, by id: the send ledger pruned hourly."""
    return {
        PRUNE_LEDGER: Schedule(
            action=ScheduleActionStartWorkflow(
                WORKFLOW_PRUNE_LEDGER,
                id=PRUNE_LEDGER,
                task_queue=task_queue,
                execution_timeout=timedelta(minutes=30),
            ),
            spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=PRUNE_EVERY)]),
            # A slow run is not doubled, and a worker that was away catches up once.
            policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP, catchup_window=PRUNE_EVERY),
        )
    }


async def ensure_schedules(client: Client, *, task_queue: str) -> None:
    """Create each schedule, or update one that exists to today's declaration (workers of
    a new release may use another task queue or interval)."""
    for schedule_id, schedule in schedules(task_queue).items():
        try:
            await client.create_schedule(schedule_id, schedule)
            log.info("schedule %s created", schedule_id)
        except ScheduleAlreadyRunningError:

            def update(_: ScheduleUpdateInput, wanted: Schedule = schedule) -> ScheduleUpdate:
                return ScheduleUpdate(schedule=wanted)

            await client.get_schedule_handle(schedule_id).update(update)
