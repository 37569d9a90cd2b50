"""temporal: migrating waiting journeys to a newer campaign version — the dry run (where each
journey stands and where it would land) and the migration (the `migrate` update, journey by
journey), from outside the workflows.

Which journeys to look at is the caller's (the `migrate_page` activity: a batch of a page of
the store's membership index at a time, for a dry run as for the migration); whether one
moves is the rule `core.journey.migration_target`, the same one each journey's update
validator applies, so a dry run's promise is what the migration does, bar journeys that
moved on between the two.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import timedelta

from temporalio.client import (
    Client,
    RPCTimeoutOrCancelledError,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import FailureError
from temporalio.service import RPCError, RPCStatusCode

from core.definition import JourneyPlan
from core.journey import (
    QUERY_POSITION,
    UPDATE_MIGRATE,
    JourneyPosition,
    MigrateRequest,
    MigrateResult,
    MigrationRefused,
    migration_target,
)
from core.operations import (
    MAX_LISTED,
    JourneyMoved,
    JourneyStays,
    MigrationReport,
    StepReport,
)

CONCURRENCY = 16
"""Journeys asked (queried, updated) at once: each needs a worker to answer, and the
workers still run every other journey meanwhile."""
RPC_TIMEOUT = timedelta(seconds=15)
"""A query or update needs a worker; without one, the journey is reported as not moved."""
ALREADY = object()
"""A journey found on the target version already: its membership row is recorded again
(by the migration; a dry run records nothing)."""


async def migrate_journeys(
    client: Client,
    *,
    workflow_ids: Iterable[str],
    campaign_id: str,
    from_version: int,
    to_version: int,
    plan: JourneyPlan,
    steps: dict[str, str],
    dry_run: bool,
    by: str | None = None,
    reason: str | None = None,
    concurrency: int = CONCURRENCY,
    rpc_timeout: timedelta = RPC_TIMEOUT,
) -> MigrationReport:
    """Ask each journey where it stands (`position` query); with `dry_run`, report where
    each would land or why it stays; otherwise send each movable one the `migrate` update
    and report what moved and what was refused, with the journey's own reason."""
    gate = asyncio.Semaphore(concurrency)
    request = MigrateRequest(
        from_version=from_version,
        to_version=to_version,
        plan=plan,
        steps=steps,
        by=by,
        reason=reason,
    )

    async def one(workflow_id: str) -> tuple[str, JourneyPosition | None, str | None, object]:
        """(id, position, landing step, result: MigrateResult | str reason | None)."""
        async with gate:
            handle = client.get_workflow_handle(workflow_id)
            try:
                position: JourneyPosition = await handle.query(
                    QUERY_POSITION, result_type=JourneyPosition, rpc_timeout=rpc_timeout
                )
            except (WorkflowQueryFailedError, RPCError, RPCTimeoutOrCancelledError) as exc:
                return workflow_id, None, None, _unreachable(exc)
            if position.campaign_version == to_version:
                # Moved by an earlier migration whose caller never recorded it (its request
                # ended first, or its update's answer came too late): record it now.
                return workflow_id, position, None, ALREADY
            try:
                target = migration_target(
                    position,
                    from_version=from_version,
                    to_version=to_version,
                    plan=plan,
                    steps=steps,
                )
            except MigrationRefused as refused:
                return workflow_id, position, None, str(refused)
            if dry_run:
                return workflow_id, position, target, None
            try:
                result: MigrateResult = await handle.execute_update(
                    UPDATE_MIGRATE, request, result_type=MigrateResult, rpc_timeout=rpc_timeout
                )
            except WorkflowUpdateFailedError as exc:
                return workflow_id, position, target, _cause(exc)
            except (RPCError, RPCTimeoutOrCancelledError) as exc:
                return workflow_id, position, target, _unreachable(exc)
            return workflow_id, position, target, result

    answers = await asyncio.gather(*(one(i) for i in dict.fromkeys(workflow_ids)))
    report = MigrationReport(
        campaign_id=campaign_id, from_version=from_version, to_version=to_version, dry_run=dry_run
    )
    by_step: dict[str | None, StepReport] = {}
    stays: dict[str | None, Counter[str]] = defaultdict(Counter)
    for workflow_id, position, target, result in answers:
        step = position.current_step if position else None
        row = by_step.setdefault(
            step, StepReport(step=step, type=position.step_type if position else None)
        )
        row.journeys += 1
        report.journeys += 1
        if target is not None:
            row.movable += 1
            report.movable += 1
            row.lands_on = target
        if isinstance(result, MigrateResult):
            row.moved += 1
            report.moved += 1
            report.moved_ids.append(workflow_id)
            if len(report.moved_journeys) < MAX_LISTED:
                report.moved_journeys.append(
                    JourneyMoved(
                        workflow_id=workflow_id, from_step=result.from_step, to_step=result.to_step
                    )
                )
        elif result is ALREADY:
            stays[step][f"already on version {to_version}"] += 1
            report.moved_ids.append(workflow_id)
        elif isinstance(result, str):
            stays[step][result] += 1
            if len(report.staying_journeys) < MAX_LISTED:
                report.staying_journeys.append(
                    JourneyStays(workflow_id=workflow_id, step=step, reason=result)
                )
    for step, reasons in stays.items():
        by_step[step].stays = dict(reasons.most_common())
    report.steps = sorted(by_step.values(), key=lambda r: (r.step is None, r.step or ""))
    return report


def _cause(exc: WorkflowUpdateFailedError) -> str:
    """The journey's own words: the validator's refusal or the handler's failure."""
    cause = exc.cause
    if isinstance(cause, FailureError) and cause.message:
        return cause.message
    return str(exc)


def _unreachable(exc: BaseException) -> str:
    if isinstance(exc, RPCError) and exc.status == RPCStatusCode.NOT_FOUND:
        return "no such journey in Temporal"
    if isinstance(exc, RPCTimeoutOrCancelledError) or (
        isinstance(exc, RPCError) and exc.status == RPCStatusCode.DEADLINE_EXCEEDED
    ):
        return "the journey did not answer in time: is a worker running?"
    return f"the journey could not be asked: {exc}"
