"""api: bulk exit of a campaign's journeys, running journeys re-asking the send policy,
retrying a failed send."""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, Generic, TypeVar

from fastapi import APIRouter, Body, HTTPException, Path, Query, Response, status
from pydantic import BaseModel
from temporalio.client import (
    Client,
    RPCTimeoutOrCancelledError,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowHistoryEventFilterType,
    WorkflowQueryFailedError,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, FailureError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from api.deps import AdminDep, SessionDep, SettingsDep, TemporalDep
from api.routes.journeys import DeliveryPublic, delivery_public, temporal_error
from api.schemas import CampaignId, Message, ProblemsResponse
from core.journey import DeliveryStatus
from core.operations import (
    QUERY_PROGRESS,
    REQUEST_ID,
    RETRY_REFUSED,
    WORKFLOW_BULK_EXIT,
    WORKFLOW_POLICY_RECHECK,
    WORKFLOW_RETRY_DELIVERY,
    BulkExitInput,
    BulkExitRequest,
    ExitProgress,
    RecheckInput,
    RecheckProgress,
    RecheckRequest,
    RetryInput,
    RetryOutcome,
    bulk_exit_id,
    policy_recheck_id,
    retry_workflow_id,
)
from store.campaigns import get_campaign, step_ids
from store.deliveries import (
    MAX_RETRIES,
    delivery_by_id,
    get_delivery,
    original_of,
    retries_of,
    retry_key,
)

router = APIRouter(prefix="/v1", tags=["operations"], dependencies=[AdminDep])

RPC_TIMEOUT = timedelta(seconds=15)
RETRY_WAIT_SECONDS = 15.0
"""How long `POST .../retry` waits for the new send's outcome before answering 202."""

PEEK_TIMEOUT = timedelta(seconds=2)
"""Starting an operation reads its progress this long at most (its worker may be busy)."""
DeliveryId = Annotated[int, Path(ge=1, le=2**63 - 1, description="a delivery's id")]

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Message, "description": "missing or wrong admin token"},
    502: {"model": Message, "description": "Temporal refused the call"},
    503: {"model": Message, "description": "Temporal is unreachable"},
    504: {"model": Message, "description": "no worker answered in time"},
}


class OperationPublic(BaseModel):
    """An operator's operation as the API answers it (each adds its scope and progress)."""

    operation_id: str
    """Name it to read the operation again."""
    workflow_id: str
    status: str
    """`running`, `completed`, or how the operation's workflow ended otherwise (`failed`,
    `terminated`, `canceled`, `timed_out`)."""
    failure: str | None = None
    """Why it stopped otherwise than `completed`; its `progress` then holds the pages it
    completed."""


class BulkExitPublic(OperationPublic):
    """`GET /v1/campaigns/{id}/exit/{operation_id}` reads it again."""

    campaign_id: str
    progress: ExitProgress


@router.post(
    "/campaigns/{campaign_id}/exit",
    response_model=BulkExitPublic,
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        **ERRORS,
        404: {"model": Message, "description": "no such campaign"},
        422: {"model": ProblemsResponse, "description": "a step no version of it has"},
    },
    summary="End every running journey of a campaign (optionally only those at one step)",
)
async def start_bulk_exit(
    campaign_id: CampaignId,
    request: BulkExitRequest,
    client: TemporalDep,
    session: SessionDep,
    settings: SettingsDep,
) -> BulkExitPublic:
    """Runs as a Temporal workflow (`campaign_exit`) that pages the campaign's running
    journeys from the membership index and sends each the `exit` update; journeys that
    already ended count as skipped. The same `request_id` again finds the same operation."""
    if await get_campaign(session=session, campaign_id=campaign_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no campaign {campaign_id!r}")
    if request.step is not None:
        steps = await step_ids(session=session, campaign_id=campaign_id)
        if request.step not in steps:
            # A mistyped step would exit nobody and say so only in its counts.
            raise HTTPException(
                422,
                {
                    "problems": [
                        f"step: no version of campaign {campaign_id!r} has a step "
                        f"{request.step!r} (its steps: {', '.join(sorted(steps))})"
                    ]
                },
            )
    operation_id = request.request_id or uuid.uuid4().hex[:16]
    handle = await start_operation(
        client,
        WORKFLOW_BULK_EXIT,
        BulkExitInput(
            campaign_id=campaign_id,
            reason=request.reason,
            step=request.step,
            request_id=operation_id,
            page_size=request.page_size,
        ),
        workflow_id=bulk_exit_id(campaign_id, operation_id),
        task_queue=settings.task_queue,
        summary=f"exit {campaign_id}" + (f" at {request.step}" if request.step else ""),
    )
    return await _bulk_exit(client, handle, campaign_id, operation_id, peek=True)


@router.get(
    "/campaigns/{campaign_id}/exit/{operation_id}",
    response_model=BulkExitPublic,
    responses={**ERRORS, 404: {"model": Message, "description": "no such operation"}},
    summary="A bulk exit's progress: journeys seen, exited, skipped, failed; done",
)
async def get_bulk_exit(
    campaign_id: CampaignId, operation_id: str, client: TemporalDep
) -> BulkExitPublic:
    if not _is_request_id(operation_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no operation {operation_id!r}")
    handle = client.get_workflow_handle(bulk_exit_id(campaign_id, operation_id))
    return await _bulk_exit(client, handle, campaign_id, operation_id)


async def start_operation(
    client: Client,
    workflow: str,
    input: BaseModel,
    *,
    workflow_id: str,
    task_queue: str,
    summary: str,
    memo: dict[str, Any] | None = None,
) -> WorkflowHandle[Any, Any]:
    """Start an operator's workflow once per id: a request again (the same `request_id`)
    finds the operation running, or the one that ended, whose result stands. 502/503/504
    when Temporal does not take it."""
    try:
        return await client.start_workflow(
            workflow,
            input,
            id=workflow_id,
            task_queue=task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            memo=memo,
            static_summary=summary,
            rpc_timeout=RPC_TIMEOUT,
        )
    except WorkflowAlreadyStartedError:
        return client.get_workflow_handle(workflow_id)
    except (RPCError, RPCTimeoutOrCancelledError) as exc:
        raise temporal_error(exc, workflow_id) from exc


def _is_request_id(value: str) -> bool:
    return re.fullmatch(REQUEST_ID, value) is not None


async def _bulk_exit(
    client: Client,
    handle: WorkflowHandle[Any, Any],
    campaign_id: str,
    operation_id: str,
    *,
    peek: bool = False,
) -> BulkExitPublic:
    read = await read_operation(
        client,
        handle,
        ExitProgress,
        ExitProgress(),
        missing=f"no exit operation {operation_id!r} of campaign {campaign_id!r}",
        peek=peek,
    )
    return BulkExitPublic(
        operation_id=operation_id, campaign_id=campaign_id, workflow_id=handle.id, **read.answer()
    )


MEMO_SCOPE = "campaign_id"
"""The memo key of a re-check's scope: its campaign, or None for every campaign."""


class RecheckPublic(OperationPublic):
    """`GET /v1/journeys/recheck?operation_id=...` reads it again."""

    campaign_id: str | None
    """The campaign whose journeys are told; None: every campaign's."""
    progress: RecheckProgress


@router.post(
    "/journeys/recheck",
    response_model=RecheckPublic,
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        **ERRORS,
        404: {"model": Message, "description": "no such campaign"},
        409: {"model": Message, "description": "the request id names a re-check of another scope"},
    },
    summary="Running journeys ask the send policy again (after quiet hours changed)",
)
async def start_policy_recheck(
    client: TemporalDep,
    session: SessionDep,
    settings: SettingsDep,
    request: Annotated[RecheckRequest | None, Body()] = None,
) -> RecheckPublic:
    """Runs as a Temporal workflow (`policy_recheck`) that pages the running journeys — of
    `campaign_id`, or of every campaign — from the membership index and sends each the
    `recheck-policy` signal: a send deferred by quiet hours asks the policy again at once
    (and goes if the workers' settings now allow it — caps and consent checked as for any
    send — or is deferred again, spending none of its deferral tries); journeys not
    deferring ignore it, and those that ended count as skipped. Run it after restarting the
    workers with changed quiet hours (or default time zone): only quiet hours defer a send.
    The same `request_id` again finds the same operation."""
    request = request or RecheckRequest()
    if request.campaign_id is not None:
        if await get_campaign(session=session, campaign_id=request.campaign_id) is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no campaign {request.campaign_id!r}")
    await session.rollback()  # no transaction held open while Temporal is asked
    operation_id = request.request_id or uuid.uuid4().hex[:16]
    handle = await start_operation(
        client,
        WORKFLOW_POLICY_RECHECK,
        RecheckInput(
            campaign_id=request.campaign_id,
            request_id=operation_id,
            page_size=request.page_size,
        ),
        workflow_id=policy_recheck_id(operation_id),
        task_queue=settings.task_queue,
        summary=f"policy re-check: {request.campaign_id or 'every campaign'}",
        memo={MEMO_SCOPE: request.campaign_id},
    )
    answer = await _policy_recheck(client, handle, operation_id, peek=True)
    if answer.campaign_id != request.campaign_id:
        # A request id reused for another scope would otherwise answer for the first one.
        was = repr(answer.campaign_id) if answer.campaign_id else "every campaign"
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"request_id {operation_id!r} names a re-check of {was}: choose another request_id",
        )
    return answer


@router.get(
    "/journeys/recheck",
    response_model=RecheckPublic,
    responses={**ERRORS, 404: {"model": Message, "description": "no such operation"}},
    summary="A policy re-check's progress: journeys seen, told, skipped, failed; done",
)
async def get_policy_recheck(
    client: TemporalDep,
    operation_id: Annotated[
        str, Query(pattern=REQUEST_ID, description="the `operation_id` its start answered")
    ],
) -> RecheckPublic:
    """A query parameter, not a path segment: `/v1/journeys/{campaign}/{user}` is a
    journey's view, and `recheck/{operation_id}` would read as campaign `recheck`."""
    handle = client.get_workflow_handle(policy_recheck_id(operation_id))
    return await _policy_recheck(client, handle, operation_id)


async def _policy_recheck(
    client: Client,
    handle: WorkflowHandle[Any, Any],
    operation_id: str,
    *,
    peek: bool = False,
) -> RecheckPublic:
    missing = f"no policy re-check {operation_id!r}"
    try:
        described = await handle.describe(rpc_timeout=RPC_TIMEOUT)
        memo = await described.memo()
    except (RPCError, RPCTimeoutOrCancelledError) as exc:
        if isinstance(exc, RPCError) and exc.status == RPCStatusCode.NOT_FOUND:
            raise HTTPException(status.HTTP_404_NOT_FOUND, missing) from exc
        raise temporal_error(exc, handle.id) from exc
    read = await read_operation(
        client, handle, RecheckProgress, RecheckProgress(), missing=missing, peek=peek
    )
    scope = memo.get(MEMO_SCOPE)
    return RecheckPublic(
        operation_id=operation_id,
        campaign_id=scope if isinstance(scope, str) else None,
        workflow_id=handle.id,
        **read.answer(),
    )


Progress = TypeVar("Progress", bound=BaseModel)


@dataclass(frozen=True)
class OperationRead(Generic[Progress]):
    status: str
    """`running`, `completed`, or how the workflow ended otherwise (`failed`, `terminated`,
    `canceled`, `timed_out`)."""
    progress: Progress
    failure: str | None = None
    """Why it ended otherwise than `completed`: its failure's words, or the reason it was
    terminated with."""
    counted: bool = True
    """False when `progress` is the empty one: not read (`peek`, or no worker answered)."""

    def answer(self) -> dict[str, Any]:
        """The fields an `OperationPublic` takes from it."""
        return {"status": self.status, "progress": self.progress, "failure": self.failure}


STOPPED = (
    WorkflowExecutionStatus.FAILED,
    WorkflowExecutionStatus.TERMINATED,
    WorkflowExecutionStatus.CANCELED,
    WorkflowExecutionStatus.TIMED_OUT,
)


async def read_operation(
    client: Client,
    handle: WorkflowHandle[Any, Any],
    result_type: type[Progress],
    empty: Progress,
    *,
    missing: str,
    peek: bool = False,
) -> OperationRead[Progress]:
    """An operator's operation (a bulk exit, a migration, a policy re-check, a fan-out): its
    status and progress — its result once completed, else its `progress` query: while it
    runs, and once it stopped otherwise (a worker replays the history of a closed workflow
    to answer: the pages it completed), with why it stopped. `empty` when there is nothing
    to read: `peek` (one just started answers at once rather than wait for its worker), or
    a stopped one no worker answered for. 404 (`missing`) when there is no such operation."""
    failure = None
    counted = True
    try:
        described = await handle.describe(rpc_timeout=RPC_TIMEOUT)
        state = described.status or WorkflowExecutionStatus.RUNNING
        if state is WorkflowExecutionStatus.COMPLETED:
            typed = client.get_workflow_handle(handle.id, result_type=result_type)
            progress = await typed.result(rpc_timeout=RPC_TIMEOUT)
        elif state in STOPPED:
            failure = await _why_stopped(client, handle)
            progress, counted = empty, False
            if not peek:
                # Briefly: with no worker up, nobody replays it, and the reason still shows.
                try:
                    progress = await handle.query(
                        QUERY_PROGRESS, result_type=result_type, rpc_timeout=PEEK_TIMEOUT
                    )
                    counted = True
                except (RPCError, RPCTimeoutOrCancelledError, WorkflowQueryFailedError):
                    failure += " (how far it got is not known now: no worker answered)"
        else:
            try:
                progress = await handle.query(
                    QUERY_PROGRESS,
                    result_type=result_type,
                    rpc_timeout=PEEK_TIMEOUT if peek else RPC_TIMEOUT,
                )
            except (RPCError, RPCTimeoutOrCancelledError, WorkflowQueryFailedError):
                if not peek:
                    raise
                progress, counted = empty, False
    except WorkflowQueryFailedError as exc:
        raise HTTPException(
            status.HTTP_502_BAD_GATEWAY, f"the progress query failed: {exc}"
        ) from exc
    except (RPCError, RPCTimeoutOrCancelledError) as exc:
        if isinstance(exc, RPCError) and exc.status == RPCStatusCode.NOT_FOUND:
            raise HTTPException(status.HTTP_404_NOT_FOUND, missing) from exc
        raise temporal_error(exc, handle.id) from exc
    return OperationRead(state.name.lower(), progress, failure, counted)


async def _why_stopped(client: Client, handle: WorkflowHandle[Any, Any]) -> str:
    """Why a workflow ended otherwise than completed, from its close event: the innermost
    failure's words (an operation fails with its page's activity error), or the reason it
    was terminated with."""
    async for event in handle.fetch_history_events(
        event_filter_type=WorkflowHistoryEventFilterType.CLOSE_EVENT, rpc_timeout=RPC_TIMEOUT
    ):
        if event.HasField("workflow_execution_failed_event_attributes"):
            failure = event.workflow_execution_failed_event_attributes.failure
            error: BaseException = await client.data_converter.decode_failure(failure)
            while isinstance(error, FailureError) and error.cause is not None:
                error = error.cause
            return error.message if isinstance(error, FailureError) else str(error)
        if event.HasField("workflow_execution_terminated_event_attributes"):
            return event.workflow_execution_terminated_event_attributes.reason or "terminated"
        if event.HasField("workflow_execution_timed_out_event_attributes"):
            return "timed out"
        if event.HasField("workflow_execution_canceled_event_attributes"):
            return "canceled"
    return "stopped"


class RetryPublic(BaseModel):
    delivery_id: int
    """The failed send retried (the original, when a retry's row was named)."""
    retry: int
    """Which retry of it this is (1 for the first)."""
    workflow_id: str
    status: str
    """The new send's status: `sent`, `failed`, or `pending` while it is still tried."""
    reason: str | None = None
    delivery: DeliveryPublic | None = None
    """The new send's own delivery row, once written."""


@router.post(
    "/deliveries/{delivery_id}/retry",
    response_model=RetryPublic,
    responses={
        **ERRORS,
        202: {"model": RetryPublic, "description": "the new send is still being tried"},
        404: {"model": Message, "description": "no such delivery"},
        409: {"model": Message, "description": "the delivery is not failed, or was retried"},
    },
    summary="Send a failed delivery again, exactly once",
)
async def retry_delivery(
    delivery_id: DeliveryId,
    response: Response,
    client: TemporalDep,
    session: SessionDep,
    settings: SettingsDep,
) -> RetryPublic:
    """Re-renders the message from the campaign version, the user's profile now and the
    journey's entry event, and sends it through the journey's `deliver` activity under a
    key of its own (one per retry number), in a workflow (`delivery_retry`) whose id names
    the delivery and the retry: two requests at once send it once. The send policy's caps
    and quiet hours do not apply (the operator chose the moment); consent does."""
    row = await delivery_by_id(session=session, delivery_id=delivery_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no delivery {delivery_id}")
    original = await original_of(session=session, delivery=row)
    if original.status != DeliveryStatus.failed.value:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"delivery {original.id} is {original.status}, not failed: only a failed send "
            "is sent again",
        )
    retries = await retries_of(session=session, delivery=original)
    if retries and retries[-1].status != DeliveryStatus.failed.value:
        last = retries[-1]
        doing = (
            "is being sent again" if last.status == "pending" else f"was retried ({last.status})"
        )
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"delivery {original.id} {doing}: retry {len(retries)} is delivery {last.id}",
        )
    number = len(retries) + 1
    if number > MAX_RETRIES:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"delivery {original.id} was retried {MAX_RETRIES} times: fix the cause first",
        )
    original_id, new_key = original.id, retry_key(original.idempotency_key, number)
    # No transaction held open while the send is made (the worker writes its row).
    await session.rollback()
    workflow_id = retry_workflow_id(original_id, number)
    try:
        handle: WorkflowHandle[Any, Any] = await client.start_workflow(
            WORKFLOW_RETRY_DELIVERY,
            RetryInput(delivery_id=original_id, retry=number),
            id=workflow_id,
            task_queue=settings.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
            static_summary=f"retry {number} of delivery {original_id}",
            rpc_timeout=RPC_TIMEOUT,
            result_type=RetryOutcome,
        )
    except WorkflowAlreadyStartedError:
        # This retry ran: its outcome stands.
        handle = client.get_workflow_handle(workflow_id, result_type=RetryOutcome)
    except (RPCError, RPCTimeoutOrCancelledError) as exc:
        raise temporal_error(exc, workflow_id) from exc
    answer = RetryPublic(
        delivery_id=original_id, retry=number, workflow_id=workflow_id, status="pending"
    )
    try:
        outcome: RetryOutcome = await asyncio.wait_for(handle.result(), timeout=RETRY_WAIT_SECONDS)
    except (TimeoutError, RPCError, RPCTimeoutOrCancelledError):
        # Started, not yet answered (or Temporal stopped answering since): it goes on.
        response.status_code = status.HTTP_202_ACCEPTED
    except WorkflowFailureError as exc:
        # The workflow failed on an activity (prepare_retry) whose error is the cause.
        cause = getattr(exc.cause, "cause", None)
        if isinstance(cause, ApplicationError) and cause.type == RETRY_REFUSED:
            raise HTTPException(status.HTTP_409_CONFLICT, cause.message) from exc
        raise HTTPException(
            status.HTTP_502_BAD_GATEWAY, f"the retry failed: {cause or exc.cause or exc}"
        ) from exc
    else:
        answer.status = outcome.result.status.value
        answer.reason = outcome.result.reason
    written = await get_delivery(session=session, idempotency_key=new_key)
    if written is not None:
        answer.delivery = delivery_public(written)
    return answer
