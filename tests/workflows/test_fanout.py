"""FanOutWorkflow on the time-skipping server with a page double: it pages every target's
audience in turn from where it stands, adds up what each page did, shows its progress,
and continues as new every few pages carrying its cursor — the audience is never in its
history; a target whose page says it was halted (its campaign paused or archived) is
recorded as halted, and the next target is still paged."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import Client, WorkflowHandle, WorkflowHistory
from temporalio.worker import Replayer, Worker

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

    def __init__(self, audiences: dict[str, list[str]] = AUDIENCES) -> None:
        self.audiences = audiences
        self.asked: list[tuple[str, str | None]] = []

    @activity.defn(name=ACTIVITY_START_PAGE)
    async def page(self, request: PageRequest) -> PageResult:
        self.asked.append((request.target.campaign_id, request.after))
        users = [
            u
            for u in self.audiences[request.target.campaign_id]
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


class HaltingPages(Pages):
    """Pages as above, but the campaigns in `halt` are found not active when their page
    after a given user is asked: that page started 2 journeys and returns `halted`."""

    def __init__(
        self, halt: dict[str, tuple[str | None, str]], audiences: dict[str, list[str]] = AUDIENCES
    ) -> None:
        super().__init__(audiences)
        self.halt = halt

    @activity.defn(name=ACTIVITY_START_PAGE)
    async def page(self, request: PageRequest) -> PageResult:
        campaign_id = request.target.campaign_id
        if campaign_id in self.halt and request.after == self.halt[campaign_id][0]:
            self.asked.append((campaign_id, request.after))
            return PageResult(after=None, started=2, halted=self.halt[campaign_id][1])
        return await super().page(request)


@asynccontextmanager
async def _fan_out(
    client: Client, task_queue: str, pages: Pages, targets: list[str]
) -> AsyncIterator[tuple[WorkflowHandle[Any, FanOutCursor], FanOutCursor]]:
    """Run a fan-out to its end; its handle and result, its worker still up (a query)."""
    async with Worker(
        client, task_queue=task_queue, workflows=[FanOutWorkflow], activities=[pages.page]
    ):
        handle = await client.start_workflow(
            WORKFLOW_FANOUT,
            FanOutInput(
                occurrence="trigger/rain/r-2",
                entry_name="rain",
                fired_at=datetime(2026, 11, 30, 9, tzinfo=UTC),
                targets=[target(t) for t in targets],
                pages_per_run=2,
            ),
            id=f"fanout/{uuid.uuid4()}",
            task_queue=task_queue,
            result_type=FanOutCursor,
        )
        yield handle, await handle.result()


async def _runs(client: Client, handle: WorkflowHandle[Any, Any]) -> list[WorkflowHistory]:
    """The history of each run of the workflow, first to last."""
    runs = []
    run_id: str | None = handle.first_execution_run_id
    while run_id:
        runs.append(await client.get_workflow_handle(handle.id, run_id=run_id).fetch_history())
        last = runs[-1].events[-1].workflow_execution_continued_as_new_event_attributes
        run_id = last.new_execution_run_id or None
    return runs


def _event_types(runs: list[WorkflowHistory]) -> list[list[str]]:
    return [[EventType.Name(e.event_type) for e in run.events] for run in runs]


async def test_a_halted_target_is_recorded_and_the_next_target_still_paged(
    time_skipping_env, task_queue
) -> None:
    """`rain` is found paused on its third page: the fan-out records it, moves on to
    `storm` and pages it to its end; the halt survives continuing as new (every two pages)
    and shows in the progress query, the result and the current details. Its runs' events
    are those of a fan-out whose `rain` audience simply ended there — a halt adds no
    command — and they replay against today's code."""
    client = time_skipping_env.client
    pages = HaltingPages({"rain": ("u09", "paused")})
    async with _fan_out(client, task_queue, pages, ["rain", "storm"]) as (handle, done):
        progress = await handle.query("progress", result_type=FanOutCursor)
        metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    assert pages.asked == [
        ("rain", None),
        ("rain", "u04"),
        ("rain", "u09"),  # halted: 2 started, then no more of rain
        ("storm", None),
        ("storm", "s3"),
    ]
    assert done.halted == {"rain": "paused"}
    assert (done.target, done.after, done.pages) == (2, None, 5)
    # rain: 4 + 4 on its first pages (u03, u07 left out) and 2 on the halted one; storm: 3.
    assert (done.started, done.skipped) == (4 + 4 + 2 + 3, 2 + 1)
    assert progress == done
    details = metadata.current_details
    assert details.startswith("**done** trigger/rain/r-2 → rain, storm: 13 journeys started")
    assert details.endswith("; **halted** rain (paused): no more of its audience entered")

    cut = Pages({**AUDIENCES, "rain": AUDIENCES["rain"][:10]})  # rain ends at u09
    async with _fan_out(client, task_queue, cut, ["rain", "storm"]) as (cut_handle, cut_done):
        pass
    assert cut.asked == pages.asked and cut_done.halted == {}
    runs = await _runs(client, handle)
    assert len(runs) == 3
    assert _event_types(runs) == _event_types(await _runs(client, cut_handle))

    replayer = Replayer(workflows=[FanOutWorkflow], data_converter=client.data_converter)
    for run in runs:
        replayed = await replayer.replay_workflow(run, raise_on_replay_failure=False)
        assert replayed.replay_failure is None, replayed.replay_failure


async def test_every_target_halted_ends_the_fan_out_with_each_status(
    time_skipping_env, task_queue
) -> None:
    """Halted at their first page, paused and archived: nothing more is asked of either."""
    pages = HaltingPages({"rain": (None, "paused"), "storm": (None, "archived")})
    async with _fan_out(time_skipping_env.client, task_queue, pages, ["rain", "storm"]) as (
        _,
        done,
    ):
        pass
    assert pages.asked == [("rain", None), ("storm", None)]
    assert done.halted == {"rain": "paused", "storm": "archived"}
    assert (done.target, done.pages, done.started) == (2, 2, 4)


def test_a_cursor_recorded_before_halts_existed_still_parses() -> None:
    old = {"target": 1, "after": "u09", "pages": 3, "started": 9, "already": 0, "skipped": 2}
    assert FanOutCursor.model_validate(old).halted == {}
    assert PageResult.model_validate({"after": "u09", "started": 4}).halted is None
