"""workflows: FanOutWorkflow — one per trigger occurrence or broadcast firing, paging
through each target campaign's audience and starting journeys in rate-limited pages.

It holds a cursor, never the audience: each page is one activity call (which starts the
page's journeys and heartbeats), and the workflow continues as new every PAGES_PER_RUN
pages, so 100,000 users make a few hundred history events per run, not 100,000 children.

A target whose campaign is paused or archived while it is paged is halted by the page
activity (`halted` in its result, `after` None): the cursor records it, campaign → status,
and the workflow goes on to the next target — the same commands as a target paged to its
end, so a halt changes state and details only.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from core.fanout import (
        ACTIVITY_START_PAGE,
        WORKFLOW_FANOUT,
        FanOutCursor,
        FanOutInput,
        PageRequest,
        PageResult,
    )

PAGE_TIMEOUT = timedelta(minutes=10)
PAGE_HEARTBEAT = timedelta(seconds=10)
"""A worker that dies mid-page is noticed after this; the page is retried from its start
(journeys it started are found recorded, or by their memo, and not started again)."""
PAGE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=2),
)


@workflow.defn(name=WORKFLOW_FANOUT)
class FanOutWorkflow:
    @workflow.init
    def __init__(self, input: FanOutInput) -> None:
        self.cursor = input.cursor.model_copy()

    @workflow.query(name="progress")
    def progress(self) -> FanOutCursor:
        return self.cursor

    @workflow.run
    async def run(self, input: FanOutInput) -> FanOutCursor:
        cursor = self.cursor
        pages_this_run = 0
        while cursor.target < len(input.targets):
            target = input.targets[cursor.target]
            self._show(input, "paging")
            suggested = workflow.info().is_continue_as_new_suggested()
            if pages_this_run >= input.pages_per_run or suggested:
                workflow.continue_as_new(input.model_copy(update={"cursor": cursor}))
            result: PageResult = await workflow.execute_activity(
                ACTIVITY_START_PAGE,
                PageRequest(
                    occurrence=input.occurrence,
                    entry_name=input.entry_name,
                    properties=input.properties,
                    fired_at=input.fired_at,
                    target=target,
                    after=cursor.after,
                ),
                result_type=PageResult,
                start_to_close_timeout=PAGE_TIMEOUT,
                heartbeat_timeout=PAGE_HEARTBEAT,
                retry_policy=PAGE_RETRY,
                summary=f"{target.campaign_id}: users after {cursor.after or 'the first'}",
            )
            pages_this_run += 1
            cursor.pages += 1
            cursor.started += result.started
            cursor.already += result.already
            cursor.skipped += result.skipped
            if result.halted is not None:
                cursor.halted[target.campaign_id] = result.halted
            if result.after is None:
                cursor.target += 1
                cursor.after = None
            else:
                cursor.after = result.after
        self._show(input, "done")
        return cursor

    def _show(self, input: FanOutInput, state: str) -> None:
        cursor = self.cursor
        campaigns = ", ".join(t.campaign_id for t in input.targets)
        halted = "".join(
            f"; **halted** {campaign_id} ({status}): no more of its audience entered"
            for campaign_id, status in cursor.halted.items()
        )
        workflow.set_current_details(
            f"**{state}** {input.occurrence} → {campaigns}: {cursor.started} journeys started, "
            f"{cursor.already} started before, {cursor.skipped} left out "
            f"(page {cursor.pages}, campaign {min(cursor.target + 1, len(input.targets))} "
            f"of {len(input.targets)}){halted}"
        )
