"""workflows: operator tools that outlive an HTTP request — the bulk exit of a campaign's
journeys, the migration of one version's waiting journeys to a newer one and the re-check of
the send policy by running journeys (each one per request, paging by cursor, with a
`progress` query), and the retry of one failed send (exactly once per retry number, through
the real `deliver` activity)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from core.journey import (
        ACTIVITY_DELIVER,
        ACTIVITY_FAIL_DELIVERY,
        DeliverRequest,
        DeliverResult,
        DeliveryFailure,
    )
    from core.operations import (
        ACTIVITY_EXIT_PAGE,
        ACTIVITY_MIGRATE_PAGE,
        ACTIVITY_MIGRATE_PAGE_DRY_RUN,
        ACTIVITY_PREPARE_RETRY,
        ACTIVITY_RECHECK_PAGE,
        QUERY_PROGRESS,
        RETRY_REFUSED,
        WORKFLOW_BULK_EXIT,
        WORKFLOW_MIGRATION,
        WORKFLOW_MIGRATION_DRY_RUN,
        WORKFLOW_POLICY_RECHECK,
        WORKFLOW_RETRY_DELIVERY,
        BulkExitInput,
        ExitPage,
        ExitProgress,
        MigratePage,
        MigrationInput,
        MigrationProgress,
        MigrationReport,
        RecheckInput,
        RecheckPage,
        RecheckProgress,
        RetryInput,
        RetryOutcome,
    )
    from workflows.journey import delivering, failure_reason

PAGE_TIMEOUT = timedelta(minutes=10)
PAGE_HEARTBEAT = timedelta(seconds=30)
"""A worker that dies mid-page is noticed after this; the retry resumes from the cursor
the page heartbeated (journeys exited before it count once)."""
PAGE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
)


async def page_activity(
    name: str,
    page: Any,
    result_type: type[Any],
    summary: str,
    *,
    heartbeat: timedelta = PAGE_HEARTBEAT,
) -> Any:
    """One page of an operator's operation, as an activity: the same timeout, heartbeat
    and retry for every operation (a migration's page heartbeats less often)."""
    return await workflow.execute_activity(
        name,
        page,
        result_type=result_type,
        start_to_close_timeout=PAGE_TIMEOUT,
        heartbeat_timeout=heartbeat,
        retry_policy=PAGE_RETRY,
        summary=summary,
    )


async def page_through(
    input: Any,
    progress: Any,
    next_page: Callable[[], Awaitable[Any]],
    show: Callable[[], None],
) -> None:
    """The loop of an operation that pages through journeys: ask for the next page until
    one says it was the last, adding each to `progress` (its `pages`, `add()`, `done`), and
    continue as new with the progress so far every `input.pages_per_run` pages (or when
    Temporal suggests it), so the history stays short whatever the count."""
    pages_this_run = 0
    while not progress.done:
        suggested = workflow.info().is_continue_as_new_suggested()
        if pages_this_run >= input.pages_per_run or suggested:
            workflow.continue_as_new(input.model_copy(update={"progress": progress}))
        show()
        page = await next_page()
        pages_this_run += 1
        progress.pages += 1
        progress.add(page)
        progress.done = page.done


@workflow.defn(name=WORKFLOW_BULK_EXIT)
class BulkExitWorkflow:
    """Ends every running journey of a campaign (optionally only those at one step), a
    page of the membership index at a time; never holds the list, only a cursor."""

    @workflow.init
    def __init__(self, input: BulkExitInput) -> None:
        self.progress = input.progress.model_copy(deep=True)

    @workflow.query(name=QUERY_PROGRESS)
    def query_progress(self) -> ExitProgress:
        return self.progress

    @workflow.run
    async def run(self, input: BulkExitInput) -> ExitProgress:
        progress = self.progress

        async def next_page() -> ExitProgress:
            page: ExitProgress = await page_activity(
                ACTIVITY_EXIT_PAGE,
                ExitPage(
                    campaign_id=input.campaign_id,
                    reason=input.reason,
                    step=input.step,
                    after_user=progress.after_user,
                    after_id=progress.after_id,
                    page_size=input.page_size,
                ),
                ExitProgress,
                f"{input.campaign_id}: journeys after {progress.after_user or 'the first'}",
            )
            return page

        await page_through(input, progress, next_page, lambda: self._show(input, "exiting"))
        self._show(input, "done")
        return progress

    def _show(self, input: BulkExitInput, state: str) -> None:
        p = self.progress
        at = f" at step {input.step}" if input.step else ""
        workflow.set_current_details(
            f"**{state}** {input.campaign_id}{at}: {p.seen} seen, {p.exited} exited, "
            f"{p.skipped} skipped, {p.failed} failed (page {p.pages})"
        )


@workflow.defn(name=WORKFLOW_POLICY_RECHECK)
class PolicyRecheckWorkflow:
    """Tells running journeys — of one campaign, or of every campaign — that the send
    policy's settings may have changed (the `recheck-policy` signal: a send deferred by
    quiet hours asks again now), a page of the membership index at a time; never holds the
    list, only a cursor."""

    @workflow.init
    def __init__(self, input: RecheckInput) -> None:
        self.progress = input.progress.model_copy(deep=True)

    @workflow.query(name=QUERY_PROGRESS)
    def query_progress(self) -> RecheckProgress:
        return self.progress

    @workflow.run
    async def run(self, input: RecheckInput) -> RecheckProgress:
        progress = self.progress

        async def next_page() -> RecheckProgress:
            where = progress.after_user or "the first"
            if input.campaign_id is None:
                where = f"{progress.after_campaign or 'the first campaign'}/{where}"
            page: RecheckProgress = await page_activity(
                ACTIVITY_RECHECK_PAGE,
                RecheckPage(
                    campaign_id=input.campaign_id,
                    after_campaign=progress.after_campaign,
                    after_user=progress.after_user,
                    after_id=progress.after_id,
                    page_size=input.page_size,
                ),
                RecheckProgress,
                f"{input.campaign_id or 'every campaign'}: journeys after {where}",
            )
            return page

        await page_through(input, progress, next_page, lambda: self._show(input, "telling"))
        self._show(input, "done")
        return progress

    def _show(self, input: RecheckInput, state: str) -> None:
        p = self.progress
        workflow.set_current_details(
            f"**{state}** {input.campaign_id or 'every campaign'}: {p.seen} seen, "
            f"{p.told} told, {p.skipped} skipped, {p.failed} failed (page {p.pages})"
        )


MIGRATE_HEARTBEAT = timedelta(minutes=2)
"""A page heartbeats after each batch of journeys, and a batch may wait a query's and an
update's RPC timeout (15 s each) on a journey whose worker does not answer."""


@workflow.defn(name=WORKFLOW_MIGRATION)
class MigrationWorkflow:
    """Migrates the journeys recorded on one version of a campaign to a newer one, a page
    of the membership index at a time (each page's moves recorded by its activity); holds
    only a cursor and the report so far, never the list of journeys."""

    @workflow.init
    def __init__(self, input: MigrationInput) -> None:
        progress = input.progress or MigrationProgress(
            report=MigrationReport(
                campaign_id=input.campaign_id,
                from_version=input.from_version,
                to_version=input.to_version,
                dry_run=input.dry_run,
                operation_id=input.request_id,
            )
        )
        self.progress = progress.model_copy(deep=True)

    @workflow.query(name=QUERY_PROGRESS)
    def query_progress(self) -> MigrationProgress:
        return self.progress

    @workflow.run
    async def run(self, input: MigrationInput) -> MigrationProgress:
        progress = self.progress

        async def next_page() -> MigrationProgress:
            page: MigrationProgress = await page_activity(
                ACTIVITY_MIGRATE_PAGE_DRY_RUN if input.dry_run else ACTIVITY_MIGRATE_PAGE,
                MigratePage(
                    campaign_id=input.campaign_id,
                    from_version=input.from_version,
                    to_version=input.to_version,
                    steps=input.steps,
                    by=input.by,
                    reason=input.reason,
                    after=progress.after,
                    page_size=input.page_size,
                    dry_run=input.dry_run,
                ),
                MigrationProgress,
                f"{input.campaign_id} v{input.from_version}: journeys after "
                f"{progress.after or 'the first'}",
                heartbeat=MIGRATE_HEARTBEAT,
            )
            return page

        await page_through(input, progress, next_page, lambda: self._show(input, "migrating"))
        self._show(input, "done")
        return progress

    def _show(self, input: MigrationInput, state: str) -> None:
        p = self.progress
        what = "dry run of " if input.dry_run else ""
        counted = f"{p.report.movable} would move" if input.dry_run else f"{p.report.moved} moved"
        workflow.set_current_details(
            f"**{state}** {what}{input.campaign_id} v{input.from_version} → "
            f"v{input.to_version}: {p.seen} seen, {counted} (page {p.pages})"
        )


@workflow.defn(name=WORKFLOW_MIGRATION_DRY_RUN)
class MigrationDryRunWorkflow(MigrationWorkflow):
    """A migration's dry run: the same pages, each journey only asked where it would land,
    under names of its own (see `WORKFLOW_MIGRATION_DRY_RUN`)."""

    @workflow.run
    async def run(self, input: MigrationInput) -> MigrationProgress:
        return await super().run(input)


PREPARE_TIMEOUT = timedelta(seconds=30)
PREPARE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=5,
    non_retryable_error_types=[RETRY_REFUSED],
)
RETRY_GAVE_UP = "RetryGaveUp"
RETRY_GIVE_UP = timedelta(minutes=10)
"""An operator's retry that keeps meeting a provider outage is recorded failed after this:
the operator asked now and wants an answer, not a send a day later."""
DELIVER_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
)


@workflow.defn(name=WORKFLOW_RETRY_DELIVERY)
class RetryDeliveryWorkflow:
    """Sends a failed message again: `prepare_retry` rebuilds the send from the store (its
    campaign version, step and the journey's entry event) under the retry's own key, and
    the journey's own `deliver` activity sends it — at most once, whatever retries."""

    @workflow.run
    async def run(self, input: RetryInput) -> RetryOutcome:
        request: DeliverRequest = await workflow.execute_activity(
            ACTIVITY_PREPARE_RETRY,
            input,
            result_type=DeliverRequest,
            start_to_close_timeout=PREPARE_TIMEOUT,
            retry_policy=PREPARE_RETRY,
            summary=f"delivery {input.delivery_id}: retry {input.retry}",
        )
        workflow.set_current_details(
            f"sending delivery {input.delivery_id} again via {request.channel}"
        )
        try:
            result = await delivering(
                ACTIVITY_DELIVER,
                request,
                DeliverResult,
                f"{request.channel}: {request.template} (retry {input.retry})",
                give_up=RETRY_GIVE_UP,
                retry=DELIVER_RETRY,
            )
        except ActivityError as exc:
            reason = failure_reason(exc)
            await workflow.execute_activity(
                ACTIVITY_FAIL_DELIVERY,
                DeliveryFailure(idempotency_key=request.idempotency_key, reason=reason),
                start_to_close_timeout=PREPARE_TIMEOUT,
                retry_policy=PAGE_RETRY,
            )
            # Failed, not completed: the send may never have written its row, and only a
            # failed run lets the operator's next retry start again under the same id.
            raise ApplicationError(
                f"the retry gave up: {reason}",
                type=RETRY_GAVE_UP,
                non_retryable=True,
            ) from None
        return RetryOutcome(delivery_id=input.delivery_id, retry=input.retry, result=result)
