"""api: reading a fan-out (an external trigger's occurrence, a scheduled broadcast's
firing) from Temporal — its status and counts, the campaigns it reaches — for the trigger
and broadcast views alike."""

from __future__ import annotations

from pydantic import BaseModel
from temporalio.client import Client, RPCTimeoutOrCancelledError
from temporalio.service import RPCError

from api.routes.journeys import temporal_error
from api.routes.operations import RPC_TIMEOUT, OperationRead, read_operation
from core.fanout import FanOutCursor, FanOutInput


class FanOutTargetState(BaseModel):
    campaign_id: str
    version: int
    """The campaign version its journeys start on (before the fan-out started: the
    current one)."""
    state: str
    """`not_started`; then `waiting` (a campaign before it is still being paged),
    `paging`, `done` (paged to its audience's end) or `halted` (see `halted`); `unknown`
    when the fan-out ended otherwise than completed."""
    halted: str | None = None
    """The status its campaign was found in when the fan-out stopped entering its users
    (`paused`, `archived`)."""


class FanOutState(BaseModel):
    workflow_id: str
    status: str
    """`not_started` while the outbox has not routed it, then `running`, `completed`, or
    how its workflow ended otherwise (`failed`, `terminated`, `canceled`, `timed_out`);
    `unknown` when Temporal (or a worker) did not answer (the note says why)."""
    progress: FanOutCursor | None
    """Its counts: the progress query while it runs or once it stopped, its result once
    completed; None before it started, or when it could not be read."""


async def read_fan_out(
    client: Client, workflow_id: str, *, missing: str
) -> OperationRead[FanOutCursor]:
    """The fan-out's status and counts (`read_operation`): 404 (`missing`) when there is no
    such workflow, 504 when a running one's progress query is not answered in time."""
    handle = client.get_workflow_handle(workflow_id)
    return await read_operation(client, handle, FanOutCursor, FanOutCursor(), missing=missing)


async def fan_out_input(client: Client, workflow_id: str) -> FanOutInput | None:
    """The input of the fan-out's latest run (each run carries every target): the first
    event of its history."""
    handle = client.get_workflow_handle(workflow_id)
    try:
        async for event in handle.fetch_history_events(page_size=1, rpc_timeout=RPC_TIMEOUT):
            started = event.workflow_execution_started_event_attributes
            if not started.input.payloads:
                return None
            [fired] = await client.data_converter.decode(started.input.payloads[:1], [FanOutInput])
            return fired if isinstance(fired, FanOutInput) else None
    except (RPCError, RPCTimeoutOrCancelledError) as exc:
        raise temporal_error(exc, workflow_id) from exc
    return None


def target_states(
    fired: FanOutInput | None, cursor: FanOutCursor | None
) -> list[FanOutTargetState]:
    """Where the fan-out is with each campaign it reaches, from its input and its cursor."""
    if fired is None:
        return []
    states = []
    for index, target in enumerate(fired.targets):
        halted = cursor.halted.get(target.campaign_id) if cursor is not None else None
        if cursor is None:
            state = "unknown"
        elif halted is not None:
            state = "halted"
        elif index < cursor.target:
            state = "done"
        elif index == cursor.target:
            state = "paging"
        else:
            state = "waiting"
        states.append(
            FanOutTargetState(
                campaign_id=target.campaign_id,
                version=target.campaign_version,
                state=state,
                halted=halted,
            )
        )
    return states
