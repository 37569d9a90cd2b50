"""worker: the one place the Temporal worker and its activities' clients are built."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker, WorkflowRunner

from activities.channels.registry import build_providers
from activities.clock import ClockActivities
from activities.failures import BoundedFailures
from activities.fanout import FanOutActivities
from activities.housekeeping import Housekeeping
from activities.journey import JourneyActivities
from activities.operations import OperationsActivities
from core.config import Settings
from store.db import create_engine, session_factory
from temporal.client import connect_with
from temporal.schedules import ensure_schedules
from workflows.clock import AudienceClock
from workflows.fanout import FanOutWorkflow
from workflows.housekeeping import PruneSendLedger
from workflows.journey import JourneyWorkflow
from workflows.operations import (
    BulkExitWorkflow,
    MigrationDryRunWorkflow,
    MigrationWorkflow,
    PolicyRecheckWorkflow,
    RetryDeliveryWorkflow,
)

log = logging.getLogger("nudge.worker")

WORKFLOW_RUNNER: WorkflowRunner = UnsandboxedWorkflowRunner()
"""How Nudge's workers run workflow code: without Temporal's sandbox, which re-imports the
workflow's module for every workflow it creates and runs each activation through `exec` —
measured (bench/, py-spy) at about a third of a journey's CPU, more than all of Nudge's
own workflow code. Determinism does not rest on it: the workflow tests run JourneyWorkflow
in the sandbox with its default restrictions (tests/workflows build their own `Worker`), so
a clock, random or I/O call there fails in the tests, and every recorded history in
tests/histories/ replays. The workflows keep no module state to isolate."""


@dataclass(frozen=True)
class WorkerActivities:
    """Every activity a Nudge worker runs, with the clients they share."""

    journeys: JourneyActivities
    housekeeping: Housekeeping
    fanout: FanOutActivities
    clock: ClockActivities
    operations: OperationsActivities | None = None
    """The operator tools' (bulk exit, migration, policy re-check, retrying a failed send)."""

    def all(self) -> list[Any]:
        return [
            *self.journeys.all(),
            *self.housekeeping.all(),
            *self.fanout.all(),
            *self.clock.all(),
            *(self.operations.all() if self.operations else []),
        ]


@contextlib.asynccontextmanager
async def worker_activities(settings: Settings, client: Client) -> AsyncIterator[WorkerActivities]:
    """The activities with their database sessions and HTTP client, closed on exit; the
    Temporal client is the worker's own (fan-outs start journeys with it)."""
    engine = create_engine(settings.database_url)
    http = httpx.AsyncClient(timeout=httpx.Timeout(settings.provider_timeout_seconds))
    sessions = session_factory(engine)
    providers = build_providers(settings, http=http, sessions=sessions)
    try:
        yield WorkerActivities(
            journeys=JourneyActivities(sessions=sessions, providers=providers, settings=settings),
            housekeeping=Housekeeping(sessions=sessions, settings=settings),
            fanout=FanOutActivities(sessions=sessions, client=client, settings=settings),
            clock=ClockActivities(sessions=sessions, settings=settings),
            operations=OperationsActivities(sessions=sessions, client=client),
        )
    finally:
        for provider in providers.values():
            await provider.aclose()
        await http.aclose()
        await engine.dispose()


def create_worker(
    client: Client,
    activities: WorkerActivities,
    *,
    task_queue: str,
    workflow_cache_size: int | None = None,
) -> Worker:
    """The Nudge worker; `workflow_cache_size` is `Settings.workflow_cache_size` (None: its
    default), what bounds the worker's memory however many journeys wait."""
    if workflow_cache_size is None:
        workflow_cache_size = Settings.model_fields["workflow_cache_size"].default
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[
            JourneyWorkflow,
            PruneSendLedger,
            FanOutWorkflow,
            AudienceClock,
            BulkExitWorkflow,
            MigrationWorkflow,
            MigrationDryRunWorkflow,
            PolicyRecheckWorkflow,
            RetryDeliveryWorkflow,
        ],
        activities=activities.all(),
        # Activities are async; the executor only serves the SDK's sync fallbacks.
        activity_executor=ThreadPoolExecutor(max_workers=4),
        workflow_runner=WORKFLOW_RUNNER,
        max_cached_workflows=workflow_cache_size,
        # Activity failures that fit Temporal's limit, whatever raised them.
        interceptors=[BoundedFailures()],
    )


async def put_schedules_in_place(client: Client, settings: Settings) -> None:
    """The housekeeping schedules, for this worker's task queue. A server that refuses
    them must not stop journeys: said, and the worker goes on."""
    try:
        await ensure_schedules(client, task_queue=settings.task_queue)
    except Exception:
        log.exception("could not put Nudge's schedules in place; the send ledger is not pruned")


async def run_worker(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Run until `stop` is set (or SIGINT/SIGTERM), then shut down cleanly."""
    stop = stop or _stop_on_signals()
    client = await connect_with(settings)
    async with worker_activities(settings, client) as activities:
        worker = create_worker(
            client,
            activities,
            task_queue=settings.task_queue,
            workflow_cache_size=settings.workflow_cache_size,
        )
        async with worker:
            await put_schedules_in_place(client, settings)
            log.info(
                "worker polling task queue %r (workflow cache: %d)",
                settings.task_queue,
                settings.workflow_cache_size,
            )
            await stop.wait()
    log.info("worker stopped")


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    return stop
