"""tests.workflows: a worker running JourneyWorkflow with activity doubles, per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from tests.workflows.test_journey import ActivityDoubles
from workflows.journey import JourneyWorkflow


@pytest.fixture
async def doubles(time_skipping_env: WorkflowEnvironment) -> ActivityDoubles:
    d = ActivityDoubles()
    d.env = time_skipping_env
    return d


@pytest.fixture
async def worker(
    time_skipping_env: WorkflowEnvironment, task_queue: str, doubles: ActivityDoubles
) -> AsyncIterator[Worker]:
    """The test's own task queue (a fresh one each test), so no test's worker picks up
    another's journeys on the shared server."""
    async with Worker(
        time_skipping_env.client,
        task_queue=task_queue,
        workflows=[JourneyWorkflow],
        activities=doubles.all(),
    ) as w:
        yield w
