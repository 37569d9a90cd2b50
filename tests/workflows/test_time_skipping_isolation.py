"""A test's time-skipping server is its own: what one test leaves behind cannot stop the
clock of the next.

The server skips time only while no workflow task is outstanding. A journey test that fails
midway leaves its workflow behind with no worker; the moment a timer fires or a signal
reaches it, it has a task nobody will take, and on a shared server every later timer then
waits in real time — a 24 h wait until the test's timeout, test after test: the late-run
hang of issue 8. The two tests below run in this order (pytest keeps a module's order): the
first leaves exactly that behind, the second must still see a day pass in moments.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from temporalio import workflow
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from tests.fixtures.api import eventually

A_DAY_PASSES_WITHIN = 30.0
"""Wall-clock seconds for a 24 h timer on a time-skipping server: milliseconds when time
skips, however busy the machine; a stopped clock would take the day."""


@workflow.defn(name="sleeper")
class Sleeper:
    """A timer and a signal: the least a journey does."""

    def __init__(self) -> None:
        self.poked = 0

    @workflow.signal
    def poke(self) -> None:
        self.poked += 1

    @workflow.run
    async def run(self, hours: float) -> str:
        await workflow.sleep(timedelta(hours=hours))
        return "woke"


@asynccontextmanager
async def sleeper_worker(client: Client, task_queue: str) -> AsyncIterator[None]:
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[Sleeper],
        # The workflow lives in this test module: no sandbox to re-import it in.
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        yield


async def start_sleeper(client: Client, task_queue: str, hours: float) -> WorkflowHandle:
    return await client.start_workflow(
        Sleeper.run, hours, id=f"sleeper-{uuid.uuid4()}", task_queue=task_queue
    )


async def timer_started(handle: WorkflowHandle) -> bool:
    history = await handle.fetch_history()
    return any(e.HasField("timer_started_event_attributes") for e in history.events)


async def test_a_test_leaves_a_workflow_with_a_task_nobody_takes(
    time_skipping_env: WorkflowEnvironment, task_queue: str
):
    client = time_skipping_env.client
    async with sleeper_worker(client, task_queue):
        handle = await start_sleeper(client, task_queue, hours=1)
        await eventually(lambda: timer_started(handle))
    # The worker is gone, as when a test fails midway; an event still reaches the journey.
    await handle.signal(Sleeper.poke)
    assert (await handle.describe()).status is WorkflowExecutionStatus.RUNNING
    last = (await handle.fetch_history()).events[-1]
    # Scheduled, or handed to a long poll the closing worker still had open on the server
    # (which the server only notices when the task times out): either way, never completed.
    assert last.HasField("workflow_task_scheduled_event_attributes") or last.HasField(
        "workflow_task_started_event_attributes"
    ), last


async def test_the_next_test_still_sees_a_day_pass_in_moments(
    time_skipping_env: WorkflowEnvironment, task_queue: str
):
    client = time_skipping_env.client
    async with sleeper_worker(client, task_queue):
        handle = await start_sleeper(client, task_queue, hours=24)
        began = await time_skipping_env.get_current_time()
        try:
            woke = await asyncio.wait_for(handle.result(), A_DAY_PASSES_WITHIN)
        except TimeoutError:
            raise AssertionError(
                f"a 24 h timer did not fire within {A_DAY_PASSES_WITHIN:.0f} s: the server's "
                "clock is stopped by a workflow task nobody takes"
            ) from None
        assert woke == "woke"
        assert await time_skipping_env.get_current_time() - began >= timedelta(hours=24)
