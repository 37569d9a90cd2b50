"""FanOutWorkflow on the time-skipping server with a page double: it pages every target's
audience in turn from where it stands, adds up what each page did, shows its progress,
and continues as new every few pages carrying its cursor — the audience is never in its
history."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.worker import Worker

from core.definition import JourneyPlan
from core.fanout import (
    ACTIVITY_START_PAGE,
    WORKFLOW_FANOUT,
    FanOutCursor,
    FanOutInput,
    FanOutTarget,
    PageRequest,
    PageResult,
)
from workflows.fanout import FanOutWorkflow

PLAN = JourneyPlan.model_validate(
    {"id": "rain", "entry": {"trigger": "rain"}, "steps": [{"id": "done", "type": "exit"}]}
)
AUDIENCES = {"rain": [f"u{i:02d}" for i in range(23)], "storm": [f"s{i}" for i in range(4)]}
PAGE = 5


class Pages:
    """Pages of AUDIENCES in id order; every fourth user is left out, as an audience would."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str | None]] = []

    @activity.defn(name=ACTIVITY_START_PAGE)
    async def page(self, request: PageRequest) -> PageResult:
        self.asked.append((request.target.campaign_id, request.after))
        users = [
            u
            for u in AUDIENCES[request.target.campaign_id]
            if request.after is None or u > request.after
        ][:PAGE]
        if not users:
            return PageResult(after=None)
        skipped = sum(1 for u in users if int(u[1:]) % 4 == 3)
        return PageResult(after=users[-1], started=len(users) - skipped, skipped=skipped)


def target(campaign_id: str) -> FanOutTarget:
    return FanOutTarget(
        campaign_id=campaign_id, campaign_version=1, campaign_name=campaign_id, plan=PLAN
    )


async def test_pages_every_target_and_continues_as_new_with_its_cursor(
    time_skipping_env, task_queue
) -> None:
    pages = Pages()
    client = time_skipping_env.client
    async with Worker(
        client, task_queue=task_queue, workflows=[FanOutWorkflow], activities=[pages.page]
    ):
        handle = await client.start_workflow(
            WORKFLOW_FANOUT,
            FanOutInput(
                occurrence="trigger/rain/r-1",
                entry_name="rain",
                properties={"city": "Shanghai"},
                fired_at=datetime(2026, 11, 30, 9, tzinfo=UTC),
                targets=[target("rain"), target("storm")],
                pages_per_run=2,
            ),
            id=f"fanout/{uuid.uuid4()}",
            task_queue=task_queue,
            result_type=FanOutCursor,
        )
        done = await handle.result()
        # 23 users in 5 pages and an empty one, then 4 in one page and an empty one.
        assert pages.asked == [
            ("rain", None),
            ("rain", "u04"),
            ("rain", "u09"),
            ("rain", "u14"),
            ("rain", "u19"),
            ("rain", "u22"),
            ("storm", None),
            ("storm", "s3"),
        ]
        assert (done.target, done.after, done.pages) == (2, None, 8)
        assert done.skipped == 5 + 1  # u03, u07, u11, u15, u19 and s3
        assert done.started == 23 + 4 - done.skipped
        # Every two pages a new run, each carrying the cursor: four runs, the last completed.
        run_id = handle.first_execution_run_id
        ends = []
        while run_id:
            run = client.get_workflow_handle(handle.id, run_id=run_id)
            last = (await run.fetch_history()).events[-1]
            ends.append(EventType.Name(last.event_type))
            attributes = last.workflow_execution_continued_as_new_event_attributes
            run_id = attributes.new_execution_run_id if attributes.new_execution_run_id else None
        assert ends == [
            "EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW",
            "EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW",
            "EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW",
            "EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED",
        ]
        # What the Temporal UI shows as the fan-out's current details.
        metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
        assert metadata.current_details.startswith("**done** trigger/rain/r-1 → rain, storm:")
        assert f"{done.started} journeys started" in metadata.current_details
