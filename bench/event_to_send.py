"""bench: one journey's event → send latency, against the bare Temporal floor of that path.

Nudge: `POST /v1/track` (a new user each time) until the webhook double receives the
signed message of the campaign's `send` step. Baseline: a signal-with-start from a plain
client call until the double receives the one POST of `bench/floor.py`'s activity. Both
run on the same dev server, in the same process, sequentially and then `concurrency` at a
time; afterwards each journey's Temporal history splits its latency into stages.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy

from activities.channels.webhook import verify
from bench.floor import SIGNAL_NAME, FloorWorkflow, Ping
from bench.recorder import Arrival, WebhookRecorder
from bench.report import Delivery, Figures, PhaseFigures, latency_figures, machine
from bench.stack import (
    CAMPAIGN_ID,
    ENTRY_EVENT,
    SEND_STEP,
    UNTHROTTLED,
    Stack,
    running_stack,
)
from core.journey import idempotency_key, journey_id
from temporal.servers import DevServer

NUDGE, BASELINE = "nudge", "baseline"
SEQUENTIAL, CONCURRENT = "sequential", "concurrent"
STAGES = (
    "to_workflow_start",
    "workflow_task_wait",
    "workflow_task_run",
    "activity_dispatch",
    "activity_to_arrival",
)
"""Consecutive slices of one journey, from its Temporal history; they add up to its latency."""


@dataclass(frozen=True)
class Config:
    journeys: int = 50
    concurrency: int = 10
    warmup: int = 3
    """Journeys per system run first and not counted: connections, caches, first imports."""
    journey_timeout: float = 30.0
    stock_dev_server: bool = False
    """Keep the dev server's transfer-queue throttle (see `bench.stack.UNTHROTTLED`)."""


@dataclass
class Sample:
    system: str
    workflow_id: str
    webhook_id: str
    started: float
    """`time.monotonic()` just before the call that causes the journey."""
    started_wall: float
    accepted: float | None = None
    """Nudge: when the API answered 200 (the event is stored)."""
    arrival: Arrival | None = None

    @property
    def latency(self) -> float | None:
        return None if self.arrival is None else self.arrival.monotonic - self.started


class Driver:
    """Causes one journey and waits for its message at the double."""

    system: str

    def __init__(self, stack: Stack, timeout: float):
        self.stack = stack
        self.timeout = timeout

    async def journey(self, name: str) -> Sample:
        raise NotImplementedError

    async def settle(self, sample: Sample) -> None:
        """Wait until the journey has finished (its work after the send included), so the
        next sequential journey runs on a quiet stack."""
        handle = self.stack.client.get_workflow_handle(sample.workflow_id)
        with suppress(Exception):  # a failed or slow journey shows as missing, not here
            await asyncio.wait_for(handle.result(), self.timeout)

    async def _arrive(self, sample: Sample, arrived: asyncio.Future[Arrival]) -> Sample:
        with suppress(TimeoutError):
            sample.arrival = await asyncio.wait_for(arrived, self.timeout)
        return sample


class NudgeDriver(Driver):
    system = NUDGE

    async def journey(self, name: str) -> Sample:
        user = f"user-{name}"
        message_id = f"m-{name}"
        workflow_id = journey_id(CAMPAIGN_ID, user)
        # The `webhook-id` is the send's idempotency key: known before the event is sent.
        webhook_id = idempotency_key(workflow_id, message_id, SEND_STEP, 1)
        arrived = self.stack.recorder.expect(webhook_id)
        sample = Sample(NUDGE, workflow_id, webhook_id, time.monotonic(), time.time())
        await self.stack.nudge.track(
            user_id=user, event=ENTRY_EVENT, properties={"item": "Umbrella"}, message_id=message_id
        )
        sample.accepted = time.monotonic()
        return await self._arrive(sample, arrived)


class BaselineDriver(Driver):
    system = BASELINE

    async def journey(self, name: str) -> Sample:
        workflow_id = f"bench-floor/{name}"
        ping = Ping(webhook_id=f"floor_{name}")
        arrived = self.stack.recorder.expect(ping.webhook_id)
        sample = Sample(BASELINE, workflow_id, ping.webhook_id, time.monotonic(), time.time())
        await self.stack.client.start_workflow(
            FloorWorkflow.run,
            ping,
            id=workflow_id,
            task_queue=self.stack.floor_task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            start_signal=SIGNAL_NAME,
            start_signal_args=[ping],
        )
        return await self._arrive(sample, arrived)


@dataclass
class Phase:
    system: str
    phase: str
    concurrency: int
    samples: list[Sample]
    elapsed: float
    """From the first call to the last arrival, seconds."""
    cpu: float
    """CPU seconds this process (API, workers, driver, double) spent on the phase, the
    journeys' work after their send included."""


async def run_phase(driver: Driver, *, phase: str, tag: str, n: int, concurrency: int) -> Phase:
    """`n` journeys, at most `concurrency` waiting for their message at a time. One at a
    time means alone: each journey finishes before the next starts. Otherwise a slot is
    freed as soon as the message arrives, and journeys overlap with earlier ones' tails."""
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> Sample:
        async with gate:
            sample = await driver.journey(f"{tag}-{phase}-{i}")
            if concurrency == 1:
                await driver.settle(sample)
            return sample

    begin, cpu = time.monotonic(), time.process_time()
    samples = await asyncio.gather(*(one(i) for i in range(n)))
    arrivals = [s.arrival.monotonic for s in samples if s.arrival is not None]
    elapsed = (max(arrivals) if arrivals else time.monotonic()) - begin
    # The next phase starts on a quiet stack, not beside this one's last journeys' tails.
    await asyncio.gather(*(driver.settle(s) for s in samples))
    cpu = time.process_time() - cpu
    return Phase(driver.system, phase, concurrency, list(samples), elapsed, cpu)


def _time(event: HistoryEvent) -> float:
    return event.event_time.seconds + event.event_time.nanos / 1e9


async def stages_of(client: Client, sample: Sample, timeout: float) -> dict[str, float] | None:
    """Where one journey's latency went, in seconds, from its history's event times (the
    dev server runs on this machine: one wall clock)."""
    if sample.arrival is None:
        return None
    handle = client.get_workflow_handle(sample.workflow_id)
    # Finished, so the activity's start is in the history (it is written at completion).
    with suppress(Exception):
        await asyncio.wait_for(handle.result(), timeout)
    events = (await handle.fetch_history()).events
    by_id = {e.event_id: e for e in events}
    started = next(
        e for e in events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED
    )
    scheduled = next(
        (e for e in events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED), None
    )
    if scheduled is None:
        return None
    task_done = by_id[
        scheduled.activity_task_scheduled_event_attributes.workflow_task_completed_event_id
    ]
    task_started = by_id[task_done.workflow_task_completed_event_attributes.started_event_id]
    activity_started = next(
        (
            e
            for e in events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
            and e.activity_task_started_event_attributes.scheduled_event_id == scheduled.event_id
        ),
        None,
    )
    if activity_started is None:
        return None
    return {
        "to_workflow_start": _time(started) - sample.started_wall,
        "workflow_task_wait": _time(task_started) - _time(started),
        "workflow_task_run": _time(task_done) - _time(task_started),
        "activity_dispatch": _time(activity_started) - _time(task_done),
        "activity_to_arrival": sample.arrival.wall - _time(activity_started),
    }


async def median_stages(
    client: Client, samples: list[Sample], timeout: float
) -> dict[str, float | None]:
    gate = asyncio.Semaphore(8)

    async def one(sample: Sample) -> dict[str, float] | None:
        async with gate:
            return await stages_of(client, sample, timeout)

    found = [s for s in await asyncio.gather(*(one(s) for s in samples)) if s is not None]
    medians: dict[str, float | None] = {
        stage: statistics.median(s[stage] for s in found) * 1000 if found else None
        for stage in STAGES
    }
    accepted = [s.accepted - s.started for s in samples if s.accepted is not None]
    if accepted:
        medians["api_answered"] = statistics.median(accepted) * 1000
    return medians


def check_delivery(recorder: WebhookRecorder, samples: list[Sample], secret: str) -> Delivery:
    """Every journey's message arrived exactly once, nothing else arrived, and Nudge's
    messages carry a valid signature."""
    expected = {s.webhook_id: s for s in samples}
    counts = {webhook_id: recorder.count(webhook_id) for webhook_id in expected}
    signed = sum(
        1
        for s in samples
        if s.system == NUDGE
        and any(verify(secret, a.headers, a.body) for a in recorder.arrivals.get(s.webhook_id, ()))
    )
    return Delivery(
        expected=len(expected),
        missing=sorted(k for k, c in counts.items() if c == 0),
        duplicated=sorted(k for k, c in counts.items() if c > 1),
        unexpected=sorted(recorder.ids() - set(expected)),
        nudge_signed=signed,
        nudge_expected=sum(1 for s in samples if s.system == NUDGE),
    )


async def measure(config: Config, *, server: DevServer | None = None) -> Figures:
    """Start everything (reusing `server` when given), measure both systems, shut down."""
    begin = time.monotonic()
    tag = uuid.uuid4().hex[:8]
    dynamic_config = () if config.stock_dev_server else UNTHROTTLED
    async with running_stack(server, dynamic_config=dynamic_config) as stack:
        drivers: dict[str, Driver] = {
            NUDGE: NudgeDriver(stack, config.journey_timeout),
            BASELINE: BaselineDriver(stack, config.journey_timeout),
        }
        all_samples: list[Sample] = []
        for driver in drivers.values():
            warm = await run_phase(driver, phase="warmup", tag=tag, n=config.warmup, concurrency=1)
            all_samples += warm.samples

        phases: list[Phase] = []
        plan: list[tuple[str, int]] = [(SEQUENTIAL, 1), (CONCURRENT, config.concurrency)]
        for phase, concurrency in plan:
            for driver in drivers.values():
                measured = await run_phase(
                    driver, phase=phase, tag=tag, n=config.journeys, concurrency=concurrency
                )
                phases.append(measured)
                all_samples += measured.samples

        figures: list[PhaseFigures] = []
        for p in phases:
            latencies = [s.latency for s in p.samples if s.latency is not None]
            figures.append(
                PhaseFigures(
                    system=p.system,
                    phase=p.phase,
                    concurrency=p.concurrency,
                    latency=latency_figures(
                        latencies, n=len(p.samples), elapsed=p.elapsed, throughput=p.concurrency > 1
                    ),
                    stages_ms=await median_stages(stack.client, p.samples, config.journey_timeout),
                    cpu_ms_per_journey=p.cpu * 1000 / len(p.samples),
                )
            )
        delivery = check_delivery(stack.recorder, all_samples, stack.settings.webhook_secret)
    return Figures(
        machine=machine(),
        config=_config_dict(config, server, dynamic_config),
        phases=figures,
        delivery=delivery,
        duration_s=time.monotonic() - begin,
    )


def _config_dict(
    config: Config, server: DevServer | None, dynamic_config: tuple[str, ...]
) -> dict[str, Any]:
    if server is not None:
        dev_server = "provided by the caller"
    else:
        dev_server = "in-memory, " + (", ".join(dynamic_config) or "stock configuration")
    return {
        "journeys": config.journeys,
        "concurrency": config.concurrency,
        "warmup": config.warmup,
        "journey_timeout_s": config.journey_timeout,
        "dev_server": dev_server,
    }
