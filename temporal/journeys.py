"""temporal: starting a journey — one way for every starter: the router (an entry event
from the outbox) and the fan-out activity (a trigger's or a schedule's audience)."""

from __future__ import annotations

import logging
from datetime import timedelta

from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.service import RPCError, RPCStatusCode

from core.definition import JourneyPlan
from core.events import JourneyEvent
from core.journey import (
    SIGNAL_EVENT,
    SIGNAL_RECHECK,
    WORKFLOW_NAME,
    JourneyInput,
    journey_id,
    user_key,
)
from temporal.search_attributes import journey_search_attributes

log = logging.getLogger("nudge.journeys")

MEMO_ENTRY = "entry"
"""The memo key holding a journey's entry message id: how a fan-out that was interrupted
between starting a journey and recording it tells its own journey from an older one."""


async def start_journey(
    client: Client,
    *,
    task_queue: str,
    secret: bytes | None,
    campaign_id: str,
    campaign_version: int,
    campaign_name: str,
    plan: JourneyPlan,
    user_id: str,
    entry_event: JourneyEvent,
    signal: bool = True,
    start_delay: timedelta | None = None,
) -> str:
    """Start `journey/{campaign}/{user}` and return the first run id of the journey that
    now runs: a new one, or — one journey at a time — the one already running (which,
    with `signal`, receives the entry event: signal-with-start).

    ALLOW_DUPLICATE lets a user whose journey ended enter again (the re-entry rules are
    the caller's). `start_delay` holds a new journey back (a broadcast at each user's
    local time); it cannot be combined with `signal`.
    """
    workflow_id = journey_id(campaign_id, user_id, secret)
    shown = user_key(user_id, secret)
    handle = await client.start_workflow(
        WORKFLOW_NAME,
        JourneyInput(
            campaign_id=campaign_id,
            campaign_version=campaign_version,
            user_id=user_id,
            plan=plan,
            entry_event=entry_event,
        ),
        id=workflow_id,
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        start_signal=SIGNAL_EVENT if signal else None,
        start_signal_args=[entry_event] if signal else [],
        start_delay=start_delay,
        memo={MEMO_ENTRY: entry_event.message_id},
        search_attributes=journey_search_attributes(
            campaign_id=campaign_id,
            user_id=shown,
            campaign_version=campaign_version,
            step_id=plan.start_step,
        ),
        static_summary=f"{campaign_name} for {shown}",
    )
    # The first run of the chain identifies a journey: a start that joined a running
    # journey (even one that continued-as-new since) names the run recorded when it began.
    run_id = handle.first_execution_run_id or handle.result_run_id or handle.run_id
    assert run_id is not None
    return run_id


async def recheck_running_journeys(client: Client) -> int:
    """Tell every running journey the send policy's settings may have changed (the
    `recheck-policy` signal): a send deferred by quiet hours is asked again now, so a stack
    restarted with quiet hours off releases it. Journeys not deferring ignore it. One
    signal per running journey, listed by Temporal's visibility: for a development stack,
    not for an audience of millions. Returns how many were told.

    Never fails: a journey that ended (or continued as new) between the listing and its
    signal, or any error Temporal answers, leaves that journey as it was — logged, not
    raised, since a start must not fail over a courtesy."""
    told = 0
    query = f"WorkflowType = '{WORKFLOW_NAME}' AND ExecutionStatus = 'Running'"
    try:
        async for execution in client.list_workflows(query):
            try:
                # The latest run of the id: the listed one may have continued as new.
                await client.get_workflow_handle(execution.id).signal(SIGNAL_RECHECK)
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    log.warning("could not ask journey %s to recheck: %s", execution.id, exc)
                continue
            told += 1
    except RPCError as exc:
        log.warning("could not list the running journeys to recheck: %s", exc)
    return told
