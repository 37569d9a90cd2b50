"""Record the histories in tests/histories/ from today's JourneyWorkflow and operator
workflows (the bulk exit, the migration, the retry of a failed send).

Run once per behaviour worth guarding, then commit the JSON; never re-record a history to
make a replay test pass — that is the bug the test exists to catch:

    .venv/bin/python -m tests.workflows.record_histories

Every scenario runs each time; only histories not yet in tests/histories/ are written.
A journey's activities are the doubles of tests/workflows/test_journey.py, but for
`resolve_wait`, the real activity on a throwaway SQLite profile store. The operator
workflows' are the doubles below (and the migration's page double of
tests/workflows/test_migration_workflow.py), registered under the real activities' names.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.client import WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.journey import PROVIDER_UNAVAILABLE
from core.fanout import WORKFLOW_FANOUT, FanOutCursor, FanOutInput
from core.journey import (
    ACTIVITY_DELIVER,
    ACTIVITY_LOAD_PROFILE,
    SIGNAL_EVENT,
    UPDATE_EXIT,
    UPDATE_MIGRATE,
    DeliverRequest,
    DeliverResult,
    DeliveryStatus,
    ExitRequest,
    MigrateRequest,
    PolicyAction,
    PolicyDecision,
    idempotency_key,
    journey_id,
)
from core.operations import (
    ACTIVITY_EXIT_PAGE,
    ACTIVITY_PREPARE_RETRY,
    ACTIVITY_RECHECK_PAGE,
    WORKFLOW_BULK_EXIT,
    WORKFLOW_MIGRATION,
    WORKFLOW_POLICY_RECHECK,
    WORKFLOW_RETRY_DELIVERY,
    BulkExitInput,
    ExitPage,
    ExitProgress,
    MigrationInput,
    MigrationProgress,
    RecheckInput,
    RecheckPage,
    RecheckProgress,
    RetryInput,
    RetryOutcome,
    bulk_exit_id,
    migration_id,
    policy_recheck_id,
    retry_workflow_id,
)
from store.db import create_engine, migrate, session_factory
from store.deliveries import retry_key
from temporal.servers import time_skipping_server
from tests.fixtures.dst import eu_spring_forward, next_year
from tests.workflows.test_experiments import AB, users_for
from tests.workflows.test_fanout import HaltingPages
from tests.workflows.test_fanout import target as fan_out_target
from tests.workflows.test_journey import (
    BRANCHY,
    CART,
    RENEWAL,
    WAIT_FOR,
    ActivityDoubles,
    event,
    real_wait_resolver,
    save_traits,
    start,
)
from tests.workflows.test_migrate import CART_V2
from tests.workflows.test_migration_workflow import Pages
from workflows.fanout import FanOutWorkflow
from workflows.journey import JourneyWorkflow
from workflows.operations import (
    BulkExitWorkflow,
    MigrationWorkflow,
    PolicyRecheckWorkflow,
    RetryDeliveryWorkflow,
)

HISTORIES = Path(__file__).parent.parent / "histories"


async def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        url = f"sqlite+aiosqlite:///{Path(directory) / 'profiles.db'}"
        await migrate(url)
        engine = create_engine(url)
        try:
            await record(session_factory(engine))
        finally:
            await engine.dispose()


async def record(sessions) -> None:
    async with time_skipping_server() as env:
        doubles = ActivityDoubles(traits={"plan": "pro"})
        doubles.env = env
        queue = f"record-{uuid.uuid4()}"
        async with Worker(
            env.client,
            task_queue=queue,
            workflows=[JourneyWorkflow],
            activities=doubles.all(resolve_wait=real_wait_resolver(sessions)),
        ):
            runs: dict[str, WorkflowHandle] = {}
            # Cart abandoned: 24 h wait, then the reminder.
            h = await start(env.client, queue, CART, user="replay-cart-reminder")
            await h.result()
            runs["cart_reminder"] = h
            # Cart converted: the order arrives during the wait.
            h = await start(env.client, queue, CART, user="replay-cart-converted")
            await env.sleep(timedelta(hours=3))
            await h.signal(SIGNAL_EVENT, event("Order Completed", order_id="o-1"))
            await h.result()
            runs["cart_converted"] = h
            # wait_for: a non-matching, a duplicate and a matching event.
            h = await start(env.client, queue, WAIT_FOR, user="replay-wait-for")
            low = event("Review Submitted", stars=1)
            await h.signal(SIGNAL_EVENT, low)
            await h.signal(SIGNAL_EVENT, low)
            await h.signal(SIGNAL_EVENT, event("Review Submitted", stars=5))
            await h.result()
            runs["wait_for_matched"] = h
            # wait_for: nothing arrives, the timeout leads on.
            h = await start(env.client, queue, WAIT_FOR, user="replay-wait-for-timeout")
            await h.result()
            runs["wait_for_timeout"] = h
            # Branch on a trait, then an operator's exit during the wait.
            h = await start(env.client, queue, BRANCHY, user="replay-branch-exit")
            await h.result()
            h2 = await start(env.client, queue, CART, user="replay-operator-exit")
            await env.sleep(timedelta(hours=1))
            await h2.execute_update(UPDATE_EXIT, ExitRequest(reason="support ticket"))
            await h2.result()
            runs["branch_pro"] = h
            runs["operator_exit"] = h2
            # The send policy (patch send-policy-v1): one deferral, then the send.
            began = await env.get_current_time()
            doubles.policy = [
                PolicyDecision(
                    action=PolicyAction.defer,
                    reason="quiet hours",
                    defer_until=began + timedelta(hours=9),
                )
            ]
            h = await start(env.client, queue, CART, user="replay-policy-deferred")
            await h.result()
            runs["policy_deferred"] = h
            # The send policy says no: recorded, and the journey goes on.
            doubles.policy = [
                PolicyDecision(action=PolicyAction.suppress, reason="unsubscribed from marketing")
            ]
            h = await start(env.client, queue, BRANCHY, user="replay-policy-suppressed")
            await h.result()
            runs["policy_suppressed"] = h
            # Continue-as-new: a 24 h wait whose runs turn over every 60 history events as
            # events pour in; the first run (ending in continue-as-new) and the last.
            h = await start(env.client, queue, CART, user="replay-continued", history_limit=60)
            latest = env.client.get_workflow_handle(h.id)
            for i in range(100):
                await latest.signal(SIGNAL_EVENT, event("Page Viewed", n=i))
            await h.result()
            # A handle from start_workflow fetches the latest run's history: pin the first.
            runs["continued_as_new"] = env.client.get_workflow_handle(h.id, run_id=h.result_run_id)
            runs["continued_as_new_last_run"] = latest
            # wait until a local time, from a date trait (next year's Paris DST change, so
            # ahead of the server's clock).
            user = "replay-wait-until"
            renewal = eu_spring_forward(next_year(began)) + timedelta(days=3)
            traits = {"timezone": "Europe/Paris", "renewal_date": renewal.isoformat()}
            await save_traits(sessions, user, traits)
            h = await start(env.client, queue, RENEWAL, user=user)
            await h.result()
            runs["wait_until"] = h
            # A wait until a date trait the user does not have (patch
            # wait-until-missing-v1): the journey exits instead of moving on at once.
            h = await start(env.client, queue, RENEWAL, user="replay-wait-until-missing")
            await h.result()
            runs["wait_until_missing"] = h
            # An activity that fails for good (patch activity-failure-v1): the journey ends
            # failed and records its outcome.
            doubles.broken[ACTIVITY_LOAD_PROFILE] = "campaign 'branchy' version 1 is broken"
            h = await start(env.client, queue, BRANCHY, user="replay-profile-failed")
            await h.result()
            runs["profile_failed"] = h
            doubles.broken.clear()
            # A split: the hashed variant is recorded, then its message sent.
            [user] = users_for(holdout=False, variant="coupon")
            h = await start(env.client, queue, AB, user=user)
            await h.result()
            runs["split_variant"] = h
            # The holdout: the send is held out (recorded, not delivered), the goal counted.
            [user] = users_for(holdout=True, variant="plain")
            h = await start(env.client, queue, AB, user=user)
            await h.result()
            runs["holdout"] = h
            # One `send` activity for the policy and the delivery, the outcome a local
            # activity (patch lean-journey-v1): a reminder; a deferral past the 24 h wait,
            # asked again by `send`; a suppression, and the journey goes on.
            h = await start(env.client, queue, CART, user="replay-lean-reminder")
            await h.result()
            runs["lean_reminder"] = h
            began = await env.get_current_time()
            doubles.policy = [
                PolicyDecision(
                    action=PolicyAction.defer,
                    reason="quiet hours",
                    defer_until=began + timedelta(hours=33),
                )
            ]
            h = await start(env.client, queue, CART, user="replay-lean-deferred")
            await h.result()
            runs["lean_deferred"] = h
            doubles.policy = [
                PolicyDecision(action=PolicyAction.suppress, reason="unsubscribed from marketing")
            ]
            h = await start(env.client, queue, BRANCHY, user="replay-lean-suppressed")
            await h.result()
            runs["lean_suppressed"] = h
            # An operator migrates a journey 10 h into its 24 h wait to version 2 (patch
            # migrate-v1): the wait is interrupted, the move applied, v2's 36 h wait goes
            # on from where the journey began, then v2's coupon is sent.
            h = await start(env.client, queue, CART, user="replay-migrated")
            await env.sleep(timedelta(hours=10))
            await h.execute_update(
                UPDATE_MIGRATE,
                MigrateRequest(
                    from_version=1, to_version=2, plan=CART_V2.plan(), steps={"wait": "pause"}
                ),
            )
            await h.result()
            runs["migrated"] = h
            # An exit step ends the journey `exited` (patch exit-step-exited-v1).
            h = await start(env.client, queue, BRANCHY, user="replay-exit-step")
            await h.result()
            runs["exit_step_exited"] = h
            runs.update(await record_operators(env))
            for name, handle in runs.items():
                path = HISTORIES / f"{name}.json"
                if path.exists():
                    # A history guards what older code did: never overwrite one.
                    print("kept", name)
                    continue
                history = await handle.fetch_history()
                path.write_text(history.to_json())
                print("recorded", name, len(history.events), "events")


class OperatorDoubles:
    """The operator workflows' activities, under their real names: pages of a campaign's
    running journeys exited, a failed send rebuilt, and its delivery failing once as the
    real `deliver` does on a provider outage (retryable), then sent."""

    JOURNEYS = [f"u{i}" for i in range(5)]

    def __init__(self) -> None:
        self.delivered: list[tuple[int, DeliverRequest]] = []

    @activity.defn(name=ACTIVITY_EXIT_PAGE)
    async def exit_page(self, page: ExitPage) -> ExitProgress:
        users = [u for u in self.JOURNEYS if page.after_user is None or u > page.after_user]
        users = users[: page.page_size]
        return ExitProgress(
            seen=len(users),
            exited=len(users),
            after_user=users[-1] if users else page.after_user,
            after_id=self.JOURNEYS.index(users[-1]) + 1 if users else page.after_id,
            done=len(users) < page.page_size,
        )

    RUNNING = [("cart", "u1"), ("cart", "u2"), ("cart", "u3"), ("welcome", "u1"), ("welcome", "u4")]
    """Every campaign's running journeys, in the membership index's order."""

    @activity.defn(name=ACTIVITY_RECHECK_PAGE)
    async def recheck_page(self, page: RecheckPage) -> RecheckProgress:
        cursor = (page.after_campaign or "", page.after_user or "")
        rows = [r for r in self.RUNNING if page.after_campaign is None or r > cursor]
        rows = rows[: page.page_size]
        last = rows[-1] if rows else None
        return RecheckProgress(
            seen=len(rows),
            told=len(rows) - (1 if ("welcome", "u4") in rows else 0),
            skipped=1 if ("welcome", "u4") in rows else 0,
            after_campaign=last[0] if last else page.after_campaign,
            after_user=last[1] if last else page.after_user,
            after_id=self.RUNNING.index(last) + 1 if last else page.after_id,
            done=len(rows) < page.page_size,
        )

    @activity.defn(name=ACTIVITY_PREPARE_RETRY)
    async def prepare_retry(self, retry: RetryInput) -> DeliverRequest:
        workflow_id = journey_id(CART.id, "replay-retried")
        entry = event("Product Added", sku="SKU-1")
        failed_key = idempotency_key(workflow_id, entry.message_id, "remind", 1)
        return DeliverRequest(
            idempotency_key=retry_key(failed_key, retry.retry),
            workflow_id=workflow_id,
            campaign_id=CART.id,
            campaign_version=1,
            step_id="remind",
            visit=1,
            channel="sandbox",
            user_id="replay-retried",
            template="reminder",
            entry_event=entry,
        )

    @activity.defn(name=ACTIVITY_DELIVER)
    async def deliver(self, request: DeliverRequest) -> DeliverResult:
        attempt = activity.info().attempt
        self.delivered.append((attempt, request))
        if attempt == 1:
            raise ApplicationError(
                "provider down (the double's first attempt)", type=PROVIDER_UNAVAILABLE
            )
        return DeliverResult(
            status=DeliveryStatus.sent,
            delivery_id=2,
            idempotency_key=request.idempotency_key,
            provider_message_id="msg-retried",
        )


async def record_operators(env: WorkflowEnvironment) -> dict[str, WorkflowHandle[Any, Any]]:
    """The operator workflows, each run once: a bulk exit of 5 journeys 2 a page (3 pages);
    a migration of 7 journeys 2 a page, continued as new every 2 pages (its first run: 2
    pages, then continue-as-new); a retry whose delivery fails once, then is sent; a
    policy re-check of every campaign's 5 running journeys 2 a page (3 pages); a trigger's
    fan-out to two campaigns, the first paused on its third page."""
    doubles, pages = OperatorDoubles(), Pages()
    audiences = HaltingPages({"rain": ("u09", "paused")})
    queue = f"record-operators-{uuid.uuid4()}"
    runs: dict[str, WorkflowHandle[Any, Any]] = {}
    async with Worker(
        env.client,
        task_queue=queue,
        workflows=[
            BulkExitWorkflow,
            MigrationWorkflow,
            PolicyRecheckWorkflow,
            RetryDeliveryWorkflow,
            FanOutWorkflow,
        ],
        activities=[
            audiences.page,
            doubles.exit_page,
            doubles.recheck_page,
            doubles.prepare_retry,
            doubles.deliver,
            pages.migrate_page,
        ],
    ):
        h = await env.client.start_workflow(
            WORKFLOW_BULK_EXIT,
            BulkExitInput(
                campaign_id=CART.id, reason="campaign withdrawn", request_id="r-1", page_size=2
            ),
            id=bulk_exit_id(CART.id, "r-1"),
            task_queue=queue,
            result_type=ExitProgress,
        )
        done = await h.result()
        assert (done.pages, done.exited, done.done) == (3, 5, True), done
        runs["operator_bulk_exit"] = h
        h = await env.client.start_workflow(
            WORKFLOW_MIGRATION,
            MigrationInput(
                campaign_id=CART.id,
                from_version=1,
                to_version=2,
                steps={"wait": "pause"},
                by="ops",
                request_id="r-1",
                page_size=2,
                pages_per_run=2,
            ),
            id=migration_id(CART.id, "r-1"),
            task_queue=queue,
            result_type=MigrationProgress,
        )
        migrated = await h.result()
        assert (migrated.pages, migrated.seen, migrated.done) == (4, 7, True), migrated
        # The first run: two pages, then continue-as-new with the cursor and report.
        runs["operator_migration"] = env.client.get_workflow_handle(
            h.id, run_id=h.first_execution_run_id
        )
        h = await env.client.start_workflow(
            WORKFLOW_RETRY_DELIVERY,
            RetryInput(delivery_id=1, retry=1),
            id=retry_workflow_id(1, 1),
            task_queue=queue,
            result_type=RetryOutcome,
        )
        outcome = await h.result()
        assert outcome.result.status is DeliveryStatus.sent, outcome
        assert [attempt for attempt, _ in doubles.delivered] == [1, 2]
        runs["operator_retry"] = h
        h = await env.client.start_workflow(
            WORKFLOW_POLICY_RECHECK,
            RecheckInput(request_id="r-1", page_size=2),
            id=policy_recheck_id("r-1"),
            task_queue=queue,
            result_type=RecheckProgress,
        )
        told = await h.result()
        assert (told.pages, told.seen, told.told, told.skipped) == (3, 5, 4, 1), told
        runs["operator_recheck"] = h
        h = await env.client.start_workflow(
            WORKFLOW_FANOUT,
            FanOutInput(
                occurrence="trigger/rain/r-1",
                entry_name="rain",
                fired_at=datetime(2026, 11, 30, 9, tzinfo=UTC),
                targets=[fan_out_target("rain"), fan_out_target("storm")],
            ),
            id="fanout/trigger/rain/r-1",
            task_queue=queue,
            result_type=FanOutCursor,
        )
        fanned = await h.result()
        assert (fanned.pages, fanned.halted) == (5, {"rain": "paused"}), fanned
        runs["fanout_halted"] = h
    return runs


if __name__ == "__main__":
    asyncio.run(main())
