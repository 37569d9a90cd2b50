"""Failures that fit: whatever an activity raises — an unexpected error with a 1 MB message and
a cause, an ApplicationError as long — the failure Temporal records is bounded and has no
chained cause (the worker's interceptor, activities.failures), on a real time-skipping
server; the type stays the exception's, so retry policies match as before."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from temporalio import activity, workflow
from temporalio.client import WorkflowFailureError
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from activities.channels.base import MAX_MESSAGE_CHARS
from activities.failures import BoundedFailures

HUGE = "y" * 1_000_000


@activity.defn(name="explode")
async def explode(kind: str) -> None:
    try:
        raise OSError(HUGE)
    except OSError as exc:
        if kind == "application":
            raise ApplicationError(HUGE, type="Huge", non_retryable=True) from exc
        raise LookupError(f"nothing found: {HUGE}") from exc


@workflow.defn(name="explode_once")
class ExplodeOnce:
    @workflow.run
    async def run(self, kind: str) -> None:
        await workflow.execute_activity(
            "explode",
            kind,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(maximum_attempts=1),
        )


@pytest.mark.parametrize(("kind", "type_name"), [("other", "LookupError"), ("application", "Huge")])
async def test_an_activity_failure_is_bounded_and_unchained(
    time_skipping_env: WorkflowEnvironment, kind: str, type_name: str
) -> None:
    client = time_skipping_env.client
    queue = f"tq-{uuid.uuid4()}"
    async with Worker(
        client,
        task_queue=queue,
        workflows=[ExplodeOnce],
        activities=[explode],
        interceptors=[BoundedFailures()],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        with pytest.raises(WorkflowFailureError) as err:
            await client.execute_workflow(
                ExplodeOnce.run, kind, id=f"explode-{uuid.uuid4()}", task_queue=queue
            )
    failed = err.value.cause
    assert isinstance(failed, ActivityError)
    cause = failed.cause
    assert isinstance(cause, ApplicationError) and cause.type == type_name
    assert len(cause.message) <= MAX_MESSAGE_CHARS and cause.message.endswith(" more characters)")
    assert cause.cause is None
    if kind == "other":
        assert cause.message.startswith("LookupError: nothing found: yyy")
    else:
        assert cause.non_retryable
