"""api: reading a fan-out (an external trigger's occurrence, a scheduled broadcast's
firing) from Temporal — its status and counts, the campaigns it reaches — for the trigger
and broadcast views alike."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import HTTPException, status
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


UNKNOWN = "unknown"
"""A fan-out's status when Temporal (or a worker) does not answer."""


@dataclass
class FanOutView:
    fan_out: FanOutState
    campaigns: list[FanOutTargetState]
    note: str | None = None
    """Why there are no counts, or how it ended, in words."""


async def view_fan_out(client: Client, workflow_id: str, *, missing: str) -> FanOutView:
    """The fan-out as an operator sees it: status, counts, each campaign's state, and a note.
    404 (`missing`) when there is no such workflow; Temporal or a worker not answering is
    status `unknown` with a note, not an error (what was stored is still worth showing)."""
    try:
        read = await read_fan_out(client, workflow_id, missing=missing)
        fired = await fan_out_input(client, workflow_id)
    except HTTPException as exc:
        if exc.status_code == status.HTTP_404_NOT_FOUND:
            raise
        state = FanOutState(workflow_id=workflow_id, status=UNKNOWN, progress=None)
        return FanOutView(state, [], f"the fan-out could not be read: {exc.detail}")
    # A stopped one's cursor says how far it got, not what it is doing.
    going = read.status in ("running", "completed", "continued_as_new")
    progress = read.progress if read.counted else None
    state = FanOutState(workflow_id=workflow_id, status=read.status, progress=progress)
    note = f"its fan-out ended {read.status}: {read.failure}" if read.failure else None
    return FanOutView(state, target_states(fired, read.progress if going else None), note)


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
