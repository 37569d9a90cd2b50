"""The worker process SIGKILLed again and again while journeys send — some kills land after
the provider took a message and before the worker heard back. Every journey's message still
arrives, once: the deliveries row and the idempotency key (`webhook-id`) see to it.

Real parts: the dev server, the API over HTTP, `nudge worker` as its own process, SQLite or
PostgreSQL, a webhook provider double that dedupes by `webhook-id` as real receivers do.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select
from temporalio.client import WorkflowExecutionStatus

from core.journey import DeliveryStatus, JourneyState, JourneyStatus, idempotency_key, journey_id
from store.models import Delivery
from temporal.servers import DevServer
from tests.fixtures.api import ADMIN, WRITE_KEY, RunningApi, eventually, make_settings, running_api
from tests.fixtures.processes import WorkerProcess
from tests.fixtures.servers import Fault, ProviderDouble, Received, ok_json

SEED = int(os.environ.get("NUDGE_FAULT_SEED", "1729"))
USERS = 64
BATCHES = 8
MAX_KILLS = 10
MIN_KILLS_AFTER_ACCEPT = 3
KILL_PHASE_SECONDS = 40.0
CAMPAIGN_ID = "kill-test"
CAMPAIGN = {
    "id": CAMPAIGN_ID,
    "name": "Sent once, whatever happens to the worker",
    "entry": {"event": "Signed Up"},
    "steps": [
        {"id": "hello", "type": "send", "channel": "webhook", "template": "hello", "next": "bye"},
        {"id": "bye", "type": "exit"},
    ],
    "templates": {"hello": {"subject": "Welcome", "body": "Hi {{ user_id }}"}},
}


class SlowProvider:
    """The double's answer after a seeded 0-50 ms, so kills land mid-send; when armed, the
    next request holds its answer until the test has killed the worker: the provider took
    the message, the worker never heard."""

    def __init__(self, seed: int):
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._armed = False
        self.accepted = threading.Event()
        self.released = threading.Event()
        self.caught: str | None = None
        self.last_request_at = 0.0

    def arm(self) -> None:
        with self._lock:
            self.caught = None
            self.accepted.clear()
            self.released.clear()
            self._armed = True

    def disarm(self) -> None:
        with self._lock:
            self._armed = False
        self.released.set()

    def __call__(self, req: Received) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            delay = self._rng.uniform(0.0, 0.05)
            catch, self._armed = self._armed, False
        time.sleep(delay)
        self.last_request_at = time.monotonic()
        if catch:
            self.caught = req.headers["webhook-id"]
            self.accepted.set()
            self.released.wait(timeout=30)
        return ok_json(req)


def expected_key(user: str) -> str:
    return idempotency_key(journey_id(CAMPAIGN_ID, user), f"{user}-signup", "hello", 1)


async def send_batch(api: RunningApi, users: list[str]) -> None:
    body = {
        "batch": [
            {"type": "track", "userId": u, "messageId": f"{u}-signup", "event": "Signed Up"}
            for u in users
        ]
    }
    response = await api.http.post("/v1/batch", json=body, auth=(WRITE_KEY, ""))
    assert response.status_code == 200, response.text


async def delivery_rows(api: RunningApi) -> list[Delivery]:
    async with api.services.sessions() as session:
        statement = select(Delivery).where(Delivery.campaign_id == CAMPAIGN_ID)
        return list((await session.scalars(statement)).all())


async def test_worker_killed_mid_send_every_message_arrives_once(
    database_url: str,
    dev_server: DevServer,
    worker_process: type[WorkerProcess],
    tmp_path: Path,
    record_property: Any,
):
    started = time.monotonic()
    rng = random.Random(SEED)
    provider = SlowProvider(SEED)
    double = ProviderDouble(provider, key_header="webhook-id").start()
    # A worker killed mid-answer leaves the double writing to a dead socket: expected here.
    double.server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
    settings = make_settings(
        database_url,
        dev_server.address,
        webhook_url=double.url,
    )
    users = [f"user-{i:03d}" for i in range(USERS)]
    batches = [users[i::BATCHES] for i in range(BATCHES)]
    worker = worker_process(settings, tmp_path)
    loop = asyncio.get_running_loop()
    kills_after_accept = 0
    try:
        async with running_api(settings) as api:
            await api.campaign(CAMPAIGN)
            await worker.start()

            # Kill phase: a batch of new journeys, then a kill — on every other round at
            # the moment the provider took a message, else at a random moment.
            deadline = loop.time() + KILL_PHASE_SECONDS
            for round_ in range(MAX_KILLS):
                if loop.time() > deadline:
                    break
                aim_at_accept = round_ % 2 == 0
                if aim_at_accept:
                    provider.arm()
                if round_ < len(batches):
                    if round_ % 3 == 1:
                        # The provider takes the message and drops the connection unanswered.
                        double.faults.append(Fault(drop=True, after_processing=True))
                    await send_batch(api, batches[round_])
                if aim_at_accept:
                    await asyncio.to_thread(provider.accepted.wait, 5.0)
                else:
                    await asyncio.sleep(rng.uniform(0.2, 1.0))
                worker.kill()
                caught = provider.caught if aim_at_accept else None
                provider.disarm()
                if caught is not None:
                    # The worker is dead; what it left in the store is final for this attempt.
                    [row] = [r for r in await delivery_rows(api) if r.idempotency_key == caught]
                    if row.status == DeliveryStatus.pending.value:
                        kills_after_accept += 1
                await worker.start()
            killing_took = time.monotonic() - started
            for rest in batches[round_ + 1 :]:
                await send_batch(api, rest)

            # The last worker lives: every journey must finish.
            client = dev_server.client
            ids = [journey_id(CAMPAIGN_ID, u) for u in users]

            async def all_completed() -> bool:
                descriptions = await asyncio.gather(
                    *(client.get_workflow_handle(i).describe() for i in ids)
                )
                running = [
                    d.id for d in descriptions if d.status != WorkflowExecutionStatus.COMPLETED
                ]
                assert not running, f"{len(running)} journeys not completed: {running[:5]}"
                return True

            try:
                await eventually(all_completed, timeout=90, interval=0.5)
            except AssertionError:
                print(worker.tail(60))
                raise
            recovered = time.monotonic() - started

            keys = {u: expected_key(u) for u in users}
            received = collections.Counter(r.headers.get("webhook-id") for r in double.received)
            answered_2xx = collections.Counter(
                r.headers.get("webhook-id") for r in double.accepted()
            )
            rows = await delivery_rows(api)
            counts = {
                "seed": SEED,
                "database": settings.database_url.split(":", 1)[0],
                "kills": worker.kills,
                "kills_after_provider_accepted": kills_after_accept,
                "journeys": len(users),
                "requests_received": sum(received.values()),
                "messages_processed": len(double.processed),
                "duplicates_suppressed_by_key": sum(n - 1 for n in received.values()),
                "losses": sum(1 for k in keys.values() if k not in double.processed),
                "kill_phase_s": round(killing_took, 1),
                "last_provider_request_s": round(provider.last_request_at - started, 1),
                "all_completed_s": round(recovered, 1),
            }
            print(f"\nworker-killed counts: {counts}")
            for name, value in counts.items():
                record_property(name, value)

            # Exactly once per journey, nothing lost, nothing under a second key.
            assert set(double.processed) == set(keys.values())
            assert set(received) == set(keys.values())
            assert len(received) == len(users)
            for user, key in keys.items():
                assert double.processed[key].json()["data"]["user_id"] == user
                assert answered_2xx[key] >= 1
            # The store agrees: one sent row per journey.
            assert sorted(r.idempotency_key for r in rows) == sorted(keys.values())
            assert {r.status for r in rows} == {DeliveryStatus.sent.value}
            # Every journey says it completed, through the API.
            for user in users:
                r = await api.http.get(f"/v1/journeys/{CAMPAIGN_ID}/{user}", headers=ADMIN)
                assert r.status_code == 200, r.text
                state = JourneyState.model_validate(r.json())
                assert state.status is JourneyStatus.completed and state.sends == 1, state

            async def counted() -> dict[str, Any]:
                r = await api.http.get(f"/v1/campaigns/{CAMPAIGN_ID}/stats", headers=ADMIN)
                stats: dict[str, Any] = r.json()
                assert stats["journeys"] == {"completed": len(users)}, stats
                return stats

            stats = await eventually(counted)
            assert stats["deliveries"] == {"sent": len(users)}
            # The faults happened as designed.
            assert worker.kills >= MAX_KILLS // 2
            assert kills_after_accept >= MIN_KILLS_AFTER_ACCEPT, counts
            assert counts["duplicates_suppressed_by_key"] >= MIN_KILLS_AFTER_ACCEPT
    finally:
        provider.disarm()
        worker.stop()
        double.close()
    assert time.monotonic() - started < 150
