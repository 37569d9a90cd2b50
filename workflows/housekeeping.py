"""workflows: housekeeping runs, one per Temporal Schedule firing (temporal/schedules.py)."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from core.housekeeping import (
        ACTIVITY_PRUNE_COUNTERS,
        ACTIVITY_PRUNE_LEDGER,
        ACTIVITY_PRUNE_REJECTED,
        PATCH_PRUNE_COUNTERS,
        PATCH_PRUNE_REJECTED,
        WORKFLOW_PRUNE_LEDGER,
        CountersPruned,
        LedgerPruned,
        PruneCountersRequest,
        PruneLedgerRequest,
        PruneRejectedRequest,
        RejectedPruned,
    )

PRUNE_TIMEOUT = timedelta(minutes=10)
PRUNE_RETRY = RetryPolicy(initial_interval=timedelta(seconds=5), maximum_attempts=5)
"""A run that keeps failing shows as failed in the Temporal UI; the next firing tries anew."""


@workflow.defn(name=WORKFLOW_PRUNE_LEDGER)
class PruneSendLedger:
    """Forget sends no frequency cap counts any more, as of the schedule's time — and the
    refused ingestion messages past their retention, and the segment counters no segment
    reads (the hourly housekeeping run)."""

    @workflow.run
    async def run(self) -> LedgerPruned:
        result: LedgerPruned = await workflow.execute_activity(
            ACTIVITY_PRUNE_LEDGER,
            PruneLedgerRequest(now=workflow.now()),
            result_type=LedgerPruned,
            start_to_close_timeout=PRUNE_TIMEOUT,
            retry_policy=PRUNE_RETRY,
            summary="forget sends older than every cap window",
        )
        if workflow.patched(PATCH_PRUNE_REJECTED):
            rejected: RejectedPruned = await workflow.execute_activity(
                ACTIVITY_PRUNE_REJECTED,
                PruneRejectedRequest(now=workflow.now()),
                result_type=RejectedPruned,
                start_to_close_timeout=PRUNE_TIMEOUT,
                retry_policy=PRUNE_RETRY,
                summary="forget refused messages past their retention",
            )
            result.rejected_deleted = rejected.deleted
        if workflow.patched(PATCH_PRUNE_COUNTERS):
            counters: CountersPruned = await workflow.execute_activity(
                ACTIVITY_PRUNE_COUNTERS,
                PruneCountersRequest(now=workflow.now()),
                result_type=CountersPruned,
                start_to_close_timeout=PRUNE_TIMEOUT,
                retry_policy=PRUNE_RETRY,
                summary="forget segment counters no segment reads",
            )
            result.counters_deleted = counters.deleted
        return result
