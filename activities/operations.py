"""activities: what the operator workflows ask for — a page of a campaign's running journeys
sent the `exit` update, a page of one version's journeys migrated to a newer one (and
recorded), a page of running journeys told to ask the send policy again, and a failed send
rebuilt for its retry."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.client import (
    Client,
    RPCTimeoutOrCancelledError,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import ApplicationError, FailureError
from temporalio.service import RPCError, RPCStatusCode

from activities.channels.base import bounded
from core.definition import CampaignDefinition, Priority, SendStep
from core.events import JourneyEvent
from core.journey import (
    NOT_AT_STEP,
    QUERY_STATE,
    SIGNAL_RECHECK,
    UPDATE_EXIT,
    DeliverRequest,
    DeliveryStatus,
    ExitRequest,
    JourneyState,
    JourneyStatus,
    idempotency_key,
)
from core.operations import (
    ACTIVITY_EXIT_PAGE,
    ACTIVITY_MIGRATE_PAGE,
    ACTIVITY_MIGRATE_PAGE_DRY_RUN,
    ACTIVITY_PREPARE_RETRY,
    ACTIVITY_RECHECK_PAGE,
    MAX_ERRORS_KEPT,
    MIGRATION_REFUSED,
    RETRY_REFUSED,
    ExitPage,
    ExitProgress,
    JourneysTold,
    MigratePage,
    MigrationProgress,
    MigrationReport,
    RecheckPage,
    RecheckProgress,
    RetryInput,
)
from store.campaigns import VersionUnavailable, load_definition
from store.deliveries import delivery_by_id, retry_key
from store.entries import entry_of_send, running_page, running_page_of_every_campaign
from store.identities import canonical_user
from store.journey_versions import move_to_version, running_on_version_page
from store.models import Event, JourneyEntry
from store.subscriptions import get_suppression, unsubscribed_from
from temporal.migrate import CONCURRENCY as CONCURRENT_MIGRATIONS
from temporal.migrate import migrate_journeys

CONCURRENT_EXITS = 16
"""Journeys asked at once (each a round trip to Temporal and a workflow task)."""
JOURNEY_RPC_TIMEOUT = timedelta(seconds=10)
"""An update or query needs the journey's worker; one that does not answer in this time
counts as failed (the operator sees it and may run the exit again)."""


class OperationsActivities:
    """Holds the database sessions and the worker's Temporal client."""

    def __init__(self, *, sessions: async_sessionmaker[AsyncSession], client: Client):
        self._sessions = sessions
        self._client = client

    @activity.defn(name=ACTIVITY_EXIT_PAGE)
    async def exit_page(self, page: ExitPage) -> ExitProgress:
        """Send `exit` to the next page of the campaign's running journeys (membership
        index, keyset by user id). Heartbeats its cursor and counts after each batch, so a
        retry resumes where the last one stopped and counts nobody twice."""
        details = activity.info().heartbeat_details
        if details:
            done = ExitProgress.model_validate(details[0])
        else:
            done = ExitProgress(after_user=page.after_user, after_id=page.after_id)
        handled = done.seen
        after = None
        if done.after_user is not None and done.after_id is not None:
            after = (done.after_user, done.after_id)
        async with self._sessions() as session:
            rows = await running_page(
                session=session,
                campaign_id=page.campaign_id,
                after=after,
                limit=page.page_size - handled,
            )

        def count(outcome: str) -> None:
            if outcome == "exited":
                done.exited += 1
            else:
                done.skipped += 1
                if outcome == "not_at_step":
                    done.not_at_step += 1

        def cursor(last: JourneyEntry) -> None:
            done.after_user, done.after_id = last.user_id, last.id

        await _in_batches(rows, lambda row: self._exit_one(row, page), done, count, cursor)
        done.done = done.seen < page.page_size
        return done

    async def _exit_one(self, row: JourneyEntry, page: ExitPage) -> tuple[str, str | None]:
        """`exited`, `skipped` (already ended), `not_at_step`, or `failed` with why."""
        handle = self._client.get_workflow_handle(row.workflow_id)
        try:
            if page.step is not None:
                state: JourneyState = await handle.query(
                    QUERY_STATE, result_type=JourneyState, rpc_timeout=JOURNEY_RPC_TIMEOUT
                )
                if state.status is not JourneyStatus.running:
                    return "skipped", None
                if state.current_step != page.step:
                    return "not_at_step", None
            await handle.execute_update(
                UPDATE_EXIT,
                # The step again: the journey's validator refuses one that moved on since.
                ExitRequest(reason=page.reason, step=page.step),
                result_type=JourneyState,
                rpc_timeout=JOURNEY_RPC_TIMEOUT,
            )
        except WorkflowUpdateFailedError as exc:
            # The validator: the journey ended, or left the step, since it was looked at.
            cause = exc.cause
            if isinstance(cause, FailureError) and cause.message.startswith(NOT_AT_STEP):
                return "not_at_step", None
            return "skipped", None
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return "skipped", None  # ended (updates reach running journeys only)
            return "failed", bounded(str(exc), 200)
        except (RPCTimeoutOrCancelledError, WorkflowQueryFailedError) as exc:
            return "failed", bounded(str(exc) or type(exc).__name__, 200)
        return "exited", None

    @activity.defn(name=ACTIVITY_RECHECK_PAGE)
    async def recheck_page(self, page: RecheckPage) -> RecheckProgress:
        """Send `recheck-policy` to the next page of running journeys — the campaign's, or
        every campaign's — from the membership index (keyset by campaign, user id, row id).
        Heartbeats its cursor and counts after each batch, so a retry resumes where the last
        one stopped and counts nobody twice (a journey told twice asks the policy twice:
        harmless, a deferred send is asked again either way)."""
        details = activity.info().heartbeat_details
        if details:
            done = RecheckProgress.model_validate(details[0])
        else:
            done = RecheckProgress(
                after_campaign=page.after_campaign,
                after_user=page.after_user,
                after_id=page.after_id,
            )
        after = None
        if done.after_user is not None and done.after_id is not None:
            after = (done.after_user, done.after_id)
        limit = page.page_size - done.seen
        async with self._sessions() as session:
            if page.campaign_id is not None:
                rows = await running_page(
                    session=session, campaign_id=page.campaign_id, after=after, limit=limit
                )
            else:
                rows = await running_page_of_every_campaign(
                    session=session,
                    after_campaign=done.after_campaign,
                    after=after,
                    limit=limit,
                    # Alive while walking past campaigns with none running (a heartbeat of
                    # the progress as it stands: a retry resumes where the last batch ended).
                    walked=lambda _: activity.heartbeat(done.model_dump(mode="json")),
                )

        def count(outcome: str) -> None:
            if outcome == "told":
                done.told += 1
            else:
                done.skipped += 1

        def cursor(last: JourneyEntry) -> None:
            done.after_campaign, done.after_user, done.after_id = (
                last.campaign_id,
                last.user_id,
                last.id,
            )

        await _in_batches(rows, self._tell_one, done, count, cursor)
        done.done = done.seen < page.page_size
        return done

    async def _tell_one(self, row: JourneyEntry) -> tuple[str, str | None]:
        """`told`, `skipped` (ended, or never started), or `failed` with why."""
        try:
            # The latest run of the id: the journey may have continued as new since.
            await self._client.get_workflow_handle(row.workflow_id).signal(
                SIGNAL_RECHECK, rpc_timeout=JOURNEY_RPC_TIMEOUT
            )
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return "skipped", None  # signals reach running journeys only
            return "failed", bounded(str(exc), 200)
        except RPCTimeoutOrCancelledError as exc:
            return "failed", bounded(str(exc) or type(exc).__name__, 200)
        return "told", None

    @activity.defn(name=ACTIVITY_MIGRATE_PAGE_DRY_RUN)
    async def migrate_page_dry_run(self, page: MigratePage) -> MigrationProgress:
        """A dry run's page: `migrate_page` told so, whatever the page says."""
        return await self.migrate_page(page.model_copy(update={"dry_run": True}))

    @activity.defn(name=ACTIVITY_MIGRATE_PAGE)
    async def migrate_page(self, page: MigratePage) -> MigrationProgress:
        """Migrate the next page of the journeys recorded on `from_version` (keyset by
        workflow id), a batch at a time: each batch's moved journeys are recorded on the
        new version before the next is asked, and the cursor and report heartbeated, so a
        retry resumes after the last batch and a worker lost mid-page loses no record.
        `dry_run`: the same pages, each journey only asked where it would land — none
        moved, none recorded (not even one found on the new version already)."""
        details = activity.info().heartbeat_details
        if details:
            done = MigrationProgress.model_validate(details[0])
        else:
            done = MigrationProgress(
                report=MigrationReport(
                    campaign_id=page.campaign_id,
                    from_version=page.from_version,
                    to_version=page.to_version,
                    dry_run=page.dry_run,
                ),
                after=page.after,
            )
        async with self._sessions() as session:
            try:
                definition = await load_definition(
                    session=session, campaign_id=page.campaign_id, version=page.to_version
                )
            except VersionUnavailable as exc:
                raise ApplicationError(
                    bounded(str(exc), 500), type=MIGRATION_REFUSED, non_retryable=True
                ) from None
            workflow_ids = await running_on_version_page(
                session=session,
                campaign_id=page.campaign_id,
                version=page.from_version,
                after=done.after,
                limit=page.page_size - done.seen,
            )
        plan = definition.plan()
        for start in range(0, len(workflow_ids), CONCURRENT_MIGRATIONS):
            batch = workflow_ids[start : start + CONCURRENT_MIGRATIONS]
            report = await migrate_journeys(
                self._client,
                workflow_ids=batch,
                campaign_id=page.campaign_id,
                from_version=page.from_version,
                to_version=page.to_version,
                plan=plan,
                steps=page.steps,
                dry_run=page.dry_run,
                by=page.by,
                reason=page.reason,
            )
            if report.moved_ids and not page.dry_run:
                async with self._sessions() as session:
                    await move_to_version(
                        session=session,
                        campaign_id=page.campaign_id,
                        workflow_ids=report.moved_ids,
                        from_version=page.from_version,
                        to_version=page.to_version,
                    )
                    await session.commit()
            done.seen += len(batch)
            done.after = batch[-1]
            done.report.add(report)
            activity.heartbeat(done.model_dump(mode="json"))
        done.done = done.seen < page.page_size
        return done

    @activity.defn(name=ACTIVITY_PREPARE_RETRY)
    async def prepare_retry(self, retry: RetryInput) -> DeliverRequest:
        """The send a failed delivery was, rebuilt for its `retry.retry`-th retry: same
        journey, campaign version, step, channel and entry event (read back from the events
        table), under a key of its own. Refused (final) when the row is not failed or the
        person may not be sent this any more (suppressed, unsubscribed)."""
        async with self._sessions() as session:
            row = await delivery_by_id(session=session, delivery_id=retry.delivery_id)
            if row is None:
                raise _refused(f"no delivery {retry.delivery_id}")
            if row.status != DeliveryStatus.failed.value:
                raise _refused(f"delivery {row.id} is {row.status}, not failed")
            try:
                definition = await load_definition(
                    session=session, campaign_id=row.campaign_id, version=row.campaign_version
                )
            except VersionUnavailable as exc:
                raise _refused(str(exc)) from None
            step = definition.step(row.step_id)
            if not isinstance(step, SendStep):
                raise _refused(
                    f"step {row.step_id!r} of version {row.campaign_version} sends nothing"
                )

            def made_it(message_id: str) -> bool:
                key = idempotency_key(row.workflow_id, message_id, row.step_id, row.visit)
                return key == row.idempotency_key

            entry = await entry_of_send(
                session=session,
                campaign_id=row.campaign_id,
                workflow_id=row.workflow_id,
                matches=made_it,
            )
            if entry is None:
                raise _refused(f"delivery {row.id} belongs to no journey Nudge knows of")
            event = await session.scalar(
                select(Event).where(Event.message_id == entry.entry_message_id)
            )
            if event is None:
                raise _refused(
                    f"the journey's entry event {entry.entry_message_id!r} is no longer stored"
                )
            person = await canonical_user(session, row.user_id)
            await self._check_consent(session, person, row.channel, definition, row.id)
        properties = event.payload.get("properties")
        return DeliverRequest(
            idempotency_key=retry_key(row.idempotency_key, retry.retry),
            workflow_id=row.workflow_id,
            campaign_id=row.campaign_id,
            campaign_version=row.campaign_version,
            step_id=row.step_id,
            visit=row.visit,
            channel=row.channel,
            user_id=row.user_id,
            variant=row.variant,
            template=step.template,
            entry_event=JourneyEvent(
                message_id=event.message_id,
                name=event.name or "",
                timestamp=event.timestamp,
                properties=properties if isinstance(properties, dict) else {},
            ),
        )

    @staticmethod
    async def _check_consent(
        session: AsyncSession,
        person: str,
        channel: str,
        definition: CampaignDefinition,
        delivery_id: int,
    ) -> None:
        """An operator's retry skips caps and quiet hours (the operator chose the moment),
        never consent: a bounced address or an unsubscribe since the failure refuses it."""
        suppressed = await get_suppression(session=session, user_id=person, channel=channel)
        if suppressed is not None:
            raise _refused(
                f"delivery {delivery_id}: {channel} is suppressed for {person!r} "
                f"({suppressed.reason})"
            )
        if definition.priority is Priority.transactional:
            return
        unsubscribed = await unsubscribed_from(
            session=session,
            user_id=person,
            channel=channel,
            group=definition.subscription_group,
        )
        if unsubscribed is not None:
            raise _refused(
                f"delivery {delivery_id}: {person!r} unsubscribed from "
                f"{unsubscribed.subscription_group} on {channel}"
            )

    def all(self) -> list[Any]:
        return [
            self.exit_page,
            self.recheck_page,
            self.migrate_page,
            self.migrate_page_dry_run,
            self.prepare_retry,
        ]


async def _in_batches(
    rows: list[JourneyEntry],
    one: Callable[[JourneyEntry], Awaitable[tuple[str, str | None]]],
    done: JourneysTold,
    count: Callable[[str], None],
    cursor: Callable[[JourneyEntry], None],
) -> None:
    """Ask `one` about each row, CONCURRENT_EXITS at a time. After each batch: every row
    `seen`, a `failed` one counted with its error kept, any other outcome given to `count`;
    the cursor moved to the batch's last row and `done` heartbeated, so a retried page
    resumes after it and counts nobody twice."""
    for start in range(0, len(rows), CONCURRENT_EXITS):
        batch = rows[start : start + CONCURRENT_EXITS]
        outcomes = await asyncio.gather(*(one(row) for row in batch))
        for row, (outcome, error) in zip(batch, outcomes, strict=True):
            done.seen += 1
            if outcome == "failed":
                done.failed += 1
                done.errors = [*done.errors, f"{row.workflow_id}: {error}"][-MAX_ERRORS_KEPT:]
            else:
                count(outcome)
        cursor(batch[-1])
        activity.heartbeat(done.model_dump(mode="json"))


def _refused(message: str) -> ApplicationError:
    return ApplicationError(bounded(message, 500), type=RETRY_REFUSED, non_retryable=True)
