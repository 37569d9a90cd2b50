"""MigrationWorkflow (`campaign_migration`) on the time-skipping server with a page double:
it pages the version's journeys from its cursor, adds each page's report to its own, and
continues as new every few pages carrying cursor and report — the journeys are never in
its history."""

from __future__ import annotations

import uuid

from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.worker import Worker

from core.operations import (
    ACTIVITY_MIGRATE_PAGE,
    ACTIVITY_MIGRATE_PAGE_DRY_RUN,
    QUERY_PROGRESS,
    WORKFLOW_MIGRATION,
    WORKFLOW_MIGRATION_DRY_RUN,
    JourneyMoved,
    JourneyStays,
    MigratePage,
    MigrationInput,
    MigrationProgress,
    MigrationReport,
    StepReport,
)
from workflows.operations import MigrationDryRunWorkflow, MigrationWorkflow

JOURNEYS = [f"j{i}" for i in range(7)]
MID_SEND = "journey is mid-send (step 'remind')"


class Pages:
    """Pages of JOURNEYS after the cursor; every third journey stays (mid-send)."""

    def __init__(self) -> None:
        self.asked: list[str | None] = []
        self.dry: list[bool] = []
        self.names: list[str] = []

    @activity.defn(name=ACTIVITY_MIGRATE_PAGE)
    async def migrate_page(self, page: MigratePage) -> MigrationProgress:
        assert (page.steps, page.by) == ({"wait": "pause"}, "ops")
        self.asked.append(page.after)
        self.dry.append(page.dry_run)
        ids = [j for j in JOURNEYS if page.after is None or j > page.after][: page.page_size]
        stays = [j for j in ids if int(j[1:]) % 3 == 2]
        moved = [j for j in ids if j not in stays]
        steps = [StepReport(step="wait", type="wait", journeys=len(moved), lands_on="pause")]
        steps[0].movable = steps[0].moved = len(moved)
        if stays:
            steps.append(
                StepReport(step="remind", type="send", journeys=len(stays), stays={MID_SEND: 1})
            )
        report = MigrationReport(
            campaign_id=page.campaign_id,
            from_version=page.from_version,
            to_version=page.to_version,
            dry_run=False,
            journeys=len(ids),
            movable=len(moved),
            moved=len(moved),
            steps=steps,
            moved_journeys=[
                JourneyMoved(workflow_id=j, from_step="wait", to_step="pause") for j in moved
            ],
            staying_journeys=[
                JourneyStays(workflow_id=j, step="remind", reason=MID_SEND) for j in stays
            ],
        )
        return MigrationProgress(
            report=report,
            seen=len(ids),
            after=ids[-1] if ids else page.after,
            done=len(ids) < page.page_size,
        )

    @activity.defn(name=ACTIVITY_MIGRATE_PAGE_DRY_RUN)
    async def migrate_page_dry_run(self, page: MigratePage) -> MigrationProgress:
        self.names.append(ACTIVITY_MIGRATE_PAGE_DRY_RUN)
        return await self.migrate_page(page)


async def test_pages_the_version_and_continues_as_new_with_cursor_and_report(
    time_skipping_env, task_queue
) -> None:
    pages = Pages()
    client = time_skipping_env.client
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[MigrationWorkflow],
        activities=[pages.migrate_page],
    ):
        handle = await client.start_workflow(
            WORKFLOW_MIGRATION,
            MigrationInput(
                campaign_id="cart",
                from_version=1,
                to_version=2,
                steps={"wait": "pause"},
                by="ops",
                request_id="r-1",
                page_size=2,
                pages_per_run=2,
            ),
            id=f"campaign-migration/cart/{uuid.uuid4()}",
            task_queue=task_queue,
            result_type=MigrationProgress,
        )
        done = await handle.result()
        # 7 journeys, 2 a page: the last page has 1 and ends the migration.
        assert pages.asked == [None, "j1", "j3", "j5"]
        assert (done.seen, done.pages, done.after, done.done) == (7, 4, "j6", True)
        report = done.report
        assert (report.operation_id, report.journeys, report.moved) == ("r-1", 7, 5)
        assert [(s.step, s.journeys, s.moved, s.stays) for s in report.steps] == [
            ("remind", 2, 0, {MID_SEND: 2}),
            ("wait", 5, 5, {}),
        ]
        assert [m.workflow_id for m in report.moved_journeys] == ["j0", "j1", "j3", "j4", "j6"]
        assert [s.workflow_id for s in report.staying_journeys] == ["j2", "j5"]
        # The progress query answers the same report.
        progress = await handle.query(QUERY_PROGRESS, result_type=MigrationProgress)
        assert progress == done
        # Every two pages a new run: two runs, the first continued as new.
        first = client.get_workflow_handle(handle.id, run_id=handle.first_execution_run_id)
        last = (await first.fetch_history()).events[-1]
        assert EventType.Name(last.event_type) == "EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW"


async def test_a_dry_run_is_the_same_workflow_only_its_pages_told_so(
    time_skipping_env, task_queue
) -> None:
    """The dry run runs as a workflow type of its own, whose pages are an activity of its
    own (a worker from before paged dry runs refuses both rather than migrate for real);
    each page is told, and the workflow's events are the migration's, one for one."""
    client = time_skipping_env.client

    async def run(dry_run: bool) -> tuple[Pages, MigrationProgress, list[str]]:
        pages = Pages()
        async with Worker(
            client,
            task_queue=task_queue,
            workflows=[MigrationWorkflow, MigrationDryRunWorkflow],
            activities=[pages.migrate_page, pages.migrate_page_dry_run],
        ):
            handle = await client.start_workflow(
                WORKFLOW_MIGRATION_DRY_RUN if dry_run else WORKFLOW_MIGRATION,
                MigrationInput(
                    campaign_id="cart",
                    from_version=1,
                    to_version=2,
                    steps={"wait": "pause"},
                    by="ops",
                    request_id="dry-r" if dry_run else "r",
                    page_size=3,
                    dry_run=dry_run,
                ),
                id=f"campaign-migration/cart/{uuid.uuid4()}",
                task_queue=task_queue,
                result_type=MigrationProgress,
            )
            done = await handle.result()
            events = [EventType.Name(e.event_type) async for e in handle.fetch_history_events()]
        return pages, done, events

    dry_pages, dry, dry_events = await run(True)
    real_pages, real, real_events = await run(False)
    assert dry_pages.dry == [True, True, True] and real_pages.dry == [False] * 3
    assert dry_pages.names == [ACTIVITY_MIGRATE_PAGE_DRY_RUN] * 3 and real_pages.names == []
    assert dry_pages.asked == real_pages.asked == [None, "j2", "j5"]
    assert (dry.report.dry_run, dry.report.operation_id) == (True, "dry-r")
    assert (real.report.dry_run, real.report.operation_id) == (False, "r")
    assert dry_events == real_events
