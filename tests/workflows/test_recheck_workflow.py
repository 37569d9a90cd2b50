"""PolicyRecheckWorkflow (`policy_recheck`) on the time-skipping server with a page double:
it pages every campaign's running journeys from its three-part cursor, adds each page's
counts to its own, and continues as new every few pages carrying them — the journeys are
never in its history."""

from __future__ import annotations

import uuid

from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.worker import Worker

from core.operations import (
    ACTIVITY_RECHECK_PAGE,
    QUERY_PROGRESS,
    WORKFLOW_POLICY_RECHECK,
    RecheckInput,
    RecheckPage,
    RecheckProgress,
    policy_recheck_id,
)
from workflows.operations import PolicyRecheckWorkflow

ROWS = [
    ("cart", "ann", 4),
    ("cart", "bob", 2),
    ("cart", "cy", 9),
    ("news", "ann", 7),
    ("w", "z", 1),
]
"""The membership index's running rows, (campaign, user, row id), in keyset order."""
ENDED = {("cart", "cy")}


class Pages:
    """Pages of ROWS after the cursor; the journeys in ENDED are skipped, one row fails."""

    def __init__(self) -> None:
        self.asked: list[tuple[str | None, str | None, int | None]] = []

    @activity.defn(name=ACTIVITY_RECHECK_PAGE)
    async def recheck_page(self, page: RecheckPage) -> RecheckProgress:
        assert page.campaign_id is None
        cursor = (page.after_campaign, page.after_user, page.after_id)
        self.asked.append(cursor)
        rows = [r for r in ROWS if cursor[0] is None or r > cursor][: page.page_size]
        done = RecheckProgress(seen=len(rows), done=len(rows) < page.page_size)
        for campaign, user, _ in rows:
            if (campaign, user) in ENDED:
                done.skipped += 1
            elif campaign == "w":
                done.failed += 1
                done.errors.append(f"journey/w/{user}: no worker answered")
            else:
                done.told += 1
        if rows:
            done.after_campaign, done.after_user, done.after_id = rows[-1]
        else:
            done.after_campaign, done.after_user, done.after_id = cursor
        return done


async def test_pages_every_campaign_and_continues_as_new_with_cursor_and_counts(
    time_skipping_env, task_queue
) -> None:
    pages = Pages()
    client = time_skipping_env.client
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[PolicyRecheckWorkflow],
        activities=[pages.recheck_page],
    ):
        handle = await client.start_workflow(
            WORKFLOW_POLICY_RECHECK,
            RecheckInput(request_id="r-1", page_size=2, pages_per_run=2),
            id=policy_recheck_id(f"r-{uuid.uuid4().hex[:8]}"),
            task_queue=task_queue,
            result_type=RecheckProgress,
        )
        done = await handle.result()
        # 5 rows, 2 a page: the third page has 1 and ends the re-check; the cursor crosses
        # from one campaign to the next, and survives the continue-as-new after page 2.
        assert pages.asked == [(None, None, None), ("cart", "bob", 2), ("news", "ann", 7)]
        assert (done.seen, done.told, done.skipped, done.failed) == (5, 3, 1, 1)
        assert (done.pages, done.done, done.errors) == (
            3,
            True,
            ["journey/w/z: no worker answered"],
        )
        assert (done.after_campaign, done.after_user, done.after_id) == ("w", "z", 1)
        assert await handle.query(QUERY_PROGRESS, result_type=RecheckProgress) == done
        first = client.get_workflow_handle(handle.id, run_id=handle.first_execution_run_id)
        last = (await first.fetch_history()).events[-1]
        assert EventType.Name(last.event_type) == "EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW"
