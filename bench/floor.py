"""bench: the bare Temporal floor of one journey — signal-with-start, one activity, one POST.

What is left of Nudge's event → send path without Nudge: no API, no outbox, no relay, no
database, no template, no signature. It runs on the same dev server, its own task queue,
and posts to the same HTTP double, so the difference to a journey is what Nudge adds.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    import httpx
    from pydantic import BaseModel

WORKFLOW_NAME = "bench_floor"
SIGNAL_NAME = "event"
ACTIVITY_POST = "bench_floor_post"
POST_TIMEOUT = timedelta(seconds=10)
POST_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1))


class Ping(BaseModel):
    """The one input, signal and activity argument: the id the double records."""

    webhook_id: str


@workflow.defn(name=WORKFLOW_NAME)
class FloorWorkflow:
    @workflow.init
    def __init__(self, ping: Ping) -> None:
        self.signals = 0

    @workflow.signal(name=SIGNAL_NAME)
    def event(self, ping: Ping) -> None:
        self.signals += 1

    @workflow.run
    async def run(self, ping: Ping) -> None:
        await workflow.execute_activity(
            ACTIVITY_POST,
            ping,
            start_to_close_timeout=POST_TIMEOUT,
            retry_policy=POST_RETRY,
            summary="webhook: ping",
        )


class FloorActivities:
    def __init__(self, http: httpx.AsyncClient, url: str):
        self._http = http
        self._url = url

    @activity.defn(name=ACTIVITY_POST)
    async def post(self, ping: Ping) -> None:
        response = await self._http.post(
            self._url,
            content=ping.model_dump_json().encode(),
            headers={"content-type": "application/json", "webhook-id": ping.webhook_id},
        )
        response.raise_for_status()
