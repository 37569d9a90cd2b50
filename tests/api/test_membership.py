"""tests.api: the router signals only the journeys the membership index (journey entries)
says run — a user in no journey costs no Temporal call, and is settled as `ignored` even
while Temporal is out of reach; a user in one, whoever started it (an entry event, a
trigger's fan-out) and under whichever of the person's ids, is heard.

Real parts: the session's dev server, the real worker in this process, the API over HTTP,
SQLite and PostgreSQL. The router's Temporal calls are counted by a temporalio client
interceptor on the router's own client, not by a double.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client, Interceptor, OutboundInterceptor
from temporalio.testing import ActivityEnvironment

from activities.fanout import FanOutActivities
from core.definition import CampaignDefinition
from core.fanout import FanOutTarget, PageRequest, entry_event
from core.journey import JourneyInput, JourneyState, journey_id
from core.stats import ENTERED
from store.entries import confirm_entries, record_entry, reserve_entries, running_journeys
from store.models import CampaignCount, JourneyEntry, Profile, now
from temporal.client import TemporalConnection
from temporal.journeys import start_journey
from temporal.servers import DevServer
from tests.api.conftest import end_journeys_left
from tests.fixtures.api import ADMIN, RunningApi, eventually, make_settings, running_api
from tests.fixtures.temporal import AtJourneyStart
from worker.build import create_worker, worker_activities

CART: dict[str, Any] = {
    "id": "member-cart",
    "name": "Cart",
    "entry": {"event": "Product Added"},
    "goals": [{"event": "Order Completed"}],
    "exits": [{"event": "Account Deleted"}],
    "steps": [{"id": "later", "type": "wait", "duration": "24h"}],
}
STORM: dict[str, Any] = {
    "id": "member-storm",
    "name": "Storm warning",
    "entry": {
        "trigger": "storm",
        "audience": {"conditions": [{"path": "traits.city", "value": "Bergen"}]},
    },
    "goals": [{"event": "Order Completed"}],
    "steps": [{"id": "later", "type": "wait", "duration": "24h"}],
}


class CountingInterceptor(Interceptor):
    """Every call the client makes to Temporal, by name, in `calls`."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        return _Counting(next, self.calls)


def _counted(name: str) -> Callable[..., Any]:
    def call(self: _Counting, input: Any) -> Any:
        self.calls.append(name)
        return getattr(self.next, name)(input)

    return call


class _Counting(OutboundInterceptor):
    def __init__(self, next: OutboundInterceptor, calls: list[str]):
        super().__init__(next)
        self.calls = calls


for _name in (
    "start_workflow",
    "signal_workflow",
    "describe_workflow",
    "fetch_workflow_history_events",
    "query_workflow",
    "start_workflow_update",
    "terminate_workflow",
):
    setattr(_Counting, _name, _counted(_name))


class CountedConnection(TemporalConnection):
    """The API's own connection, its client seen through a `CountingInterceptor`."""

    def __init__(self, real: TemporalConnection, counter: CountingInterceptor):
        super().__init__(real.address, real.namespace, converter=real.converter)
        config = real.require().config()
        config["interceptors"] = [*config["interceptors"], counter]
        self._counted = Client(**config)

    def require(self) -> Client:
        return self._counted


@dataclass
class Members:
    api: RunningApi
    calls: list[str]
    run: str


@asynccontextmanager
async def members(database_url: str, dev_server: DevServer) -> AsyncIterator[Members]:
    """The API and the real worker on the dev server, both campaigns active, and the
    router's Temporal calls counted."""
    settings = make_settings(database_url, dev_server.address)
    client = dev_server.client
    try:
        async with (
            running_api(settings) as api,
            worker_activities(settings, client) as activities,
            create_worker(client, activities, task_queue=settings.task_queue),
        ):
            await api.campaign(CART)
            await api.campaign(STORM)
            counter = CountingInterceptor()
            router = api.services.router
            router.temporal = CountedConnection(router.temporal, counter)
            yield Members(api, counter.calls, uuid.uuid4().hex[:8])
    finally:
        await end_journeys_left(client, settings.task_queue)


async def track(api: RunningApi, event: str, **fields: Any) -> str:
    """Post a `track` event (`userId=` or `anonymousId=`); its message id."""
    message_id = f"m-{uuid.uuid4()}"
    answer = await api.post("/v1/track", {"event": event, "messageId": message_id, **fields})
    assert answer.status_code == 200, answer.text
    return message_id


async def settled(api: RunningApi, message_id: str) -> str:
    async def check() -> str:
        event = await api.event(message_id)
        assert event.status != "pending", event.status
        return event.status

    return await eventually(check)


async def journey(api: RunningApi, campaign_id: str, user_id: str) -> JourneyState:
    response = await api.http.get(f"/v1/journeys/{campaign_id}/{user_id}", headers=ADMIN)
    assert response.status_code == 200, response.text
    return JourneyState.model_validate(response.json())


async def ended(api: RunningApi, campaign_id: str, user_id: str, status: str) -> bool:
    """The journey ended with `status` and recorded it (its entry row says so)."""
    assert (await journey(api, campaign_id, user_id)).status.value == status
    async with api.services.sessions() as session:
        rows = await session.scalars(
            select(JourneyEntry.status).where(
                JourneyEntry.campaign_id == campaign_id, JourneyEntry.user_id == user_id
            )
        )
        assert list(rows) == [status]
    return True


async def test_only_journeys_that_run_are_signalled(
    database_url: str, dev_server: DevServer
) -> None:
    async with members(database_url, dev_server) as m:
        api, calls = m.api, m.calls

        # No journey: a goal and an exit cost no Temporal call, and are ignored.
        nobody = f"{m.run}-nobody"
        goal = await track(api, "Order Completed", userId=nobody)
        leave = await track(api, "Account Deleted", userId=nobody)
        assert (await settled(api, goal), await settled(api, leave)) == ("ignored", "ignored")
        assert calls == []

        # Journeys of three kinds (side by side, for the suite's time): one started by its
        # entry event, a visitor's (whose person then logs in), one a trigger's fan-out
        # started.
        ada, visitor, user, bergen = (f"{m.run}-{name}" for name in ("ada", "v", "u", "bergen"))
        async with api.services.sessions() as session:
            session.add(Profile(user_id=bergen, traits={"city": "Bergen"}))
            await session.commit()
        posted = await api.http.post(
            "/v1/triggers/storm", json={"id": f"storm-{m.run}"}, headers=ADMIN
        )
        assert posted.status_code == 202, posted.text
        entries = [
            await track(api, "Product Added", userId=ada),
            await track(api, "Product Added", anonymousId=visitor),
        ]
        for message_id in entries:
            assert await settled(api, message_id) == "routed"
        identified = await api.post(
            "/v1/identify",
            {"userId": user, "anonymousId": visitor, "messageId": f"m-{uuid.uuid4()}"},
        )
        assert identified.status_code == 200, identified.text
        await eventually(lambda: journey(api, "member-storm", bergen), timeout=30)
        # The entry events' two journeys and the fan-out's workflow.
        assert calls == ["start_workflow"] * 3
        calls.clear()

        # Each hears its goal or exit: one signal each — the person's exit under their user
        # id goes to the visitor's journey only, the user id having none.
        ends = [
            await track(api, "Order Completed", userId=ada),
            await track(api, "Account Deleted", userId=user),
            await track(api, "Order Completed", userId=bergen),
        ]
        for message_id in ends:
            assert await settled(api, message_id) == "routed"
        assert calls == ["signal_workflow"] * 3
        await eventually(lambda: ended(api, "member-cart", ada, "converted"))
        await eventually(lambda: ended(api, "member-cart", f"anon:{visitor}", "exited"))
        await eventually(lambda: ended(api, "member-storm", bergen, "converted"))

        # Once its journey ended, a user is in none again: no call.
        calls.clear()
        assert await settled(api, await track(api, "Account Deleted", userId=ada)) == "ignored"
        assert calls == []


async def test_a_user_in_no_journey_is_settled_while_temporal_is_down(api: RunningApi) -> None:
    """Temporal is unreachable here: a goal of a user in no journey is ignored at once; one
    of a user in a journey waits, and so do that user's later events. (SQLite only, for the
    suite's time: the test above reads the index on both backends.)"""
    await api.campaign(CART)
    async with api.services.sessions() as session:
        await record_entry(
            session=session,
            campaign_id="member-cart",
            campaign_version=1,
            user_id="in",
            workflow_id=journey_id("member-cart", "in"),
            run_id="run-in",
            entry_message_id="entry-in",
        )
        await session.commit()
    free = await track(api, "Order Completed", userId="out")
    held = await track(api, "Order Completed", userId="in")
    behind = await track(api, "Newsletter Opened", userId="in")
    assert await settled(api, free) == "ignored"
    assert (await api.event(free)).attempts == 0

    async def tried() -> bool:
        event = await api.event(held)
        assert event.attempts > 0 and event.status == "pending"
        assert "Temporal" in (event.last_error or "") or "connect" in (event.last_error or "")
        return True

    await eventually(tried)
    assert (await api.event(behind)).status == "pending"


async def test_the_fan_outs_rows_are_visible_before_its_journeys_start(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """The fan-out writes its rows before starting (`reserve_entries`): the router sees the
    users in their journeys from then on. Once started, a row gets its run id and its
    entrant is counted, once; a start that joined a running journey leaves no row of its
    own."""
    rows = [(user, journey_id("member-storm", user), f"storm/1/{user}") for user in ("a", "b", "c")]
    async with sessions() as session:
        await record_entry(  # c is in a journey already (another occurrence's)
            session=session,
            campaign_id="member-storm",
            campaign_version=1,
            user_id="c",
            workflow_id=journey_id("member-storm", "c"),
            run_id="run-c",
            entry_message_id="storm/0/c",
        )
        await reserve_entries(
            session=session, campaign_id="member-storm", campaign_version=1, entries=rows
        )
        await session.commit()
    async with sessions() as session:
        running = await running_journeys(
            session=session, campaign_ids=["member-storm", "member-cart"], user_ids=["a", "b", "d"]
        )
        assert running == {("member-storm", "a"), ("member-storm", "b")}
        # A retried page writes nothing twice.
        await reserve_entries(
            session=session, campaign_id="member-storm", campaign_version=1, entries=rows
        )
        counted = await confirm_entries(
            session=session,
            campaign_id="member-storm",
            started=[("storm/1/a", "run-a"), ("storm/1/b", "run-b"), ("storm/1/c", "run-c")],
        )
        assert counted == 2
        await session.commit()
    async with sessions() as session:
        # Confirmed again (a retry that found its journeys by their memo): nothing new.
        assert (
            await confirm_entries(
                session=session, campaign_id="member-storm", started=[("storm/1/a", "run-a")]
            )
            == 0
        )
        await session.commit()
    async with sessions() as session:
        stored = await session.execute(
            select(JourneyEntry.user_id, JourneyEntry.run_id, JourneyEntry.entry_message_id)
            .where(JourneyEntry.campaign_id == "member-storm")
            .order_by(JourneyEntry.user_id)
        )
        assert stored.all() == [
            ("a", "run-a", "storm/1/a"),
            ("b", "run-b", "storm/1/b"),
            ("c", "run-c", "storm/0/c"),
        ]
        entered = await session.scalars(
            select(CampaignCount.count).where(
                CampaignCount.campaign_id == "member-storm", CampaignCount.metric == ENTERED
            )
        )
        # c's first entry, a and b: each in its hour's row and the all-time row.
        assert sum(entered) == 2 * 3


class RowsAtStart:
    """At each journey start (an `AtJourneyStart`'s `before`), reads from the database
    whether the router would already see the user in the journey: the order the fan-out
    writes and starts in, observed."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]):
        self.sessions = sessions
        self.seen: dict[str, bool] = {}

    async def before(self, journey: JourneyInput) -> None:
        async with self.sessions() as session:
            found = await running_journeys(
                session=session, campaign_ids=[journey.campaign_id], user_ids=[journey.user_id]
            )
        self.seen[journey.user_id] = bool(found)


async def test_the_fan_out_writes_each_row_before_starting_its_journey(
    sessions: async_sessionmaker[AsyncSession], dev_server: DevServer
) -> None:
    """The real page activity, on the dev server: at each start, the router would already
    see the user in the journey. A user whose journey runs (started before, by another
    occurrence) is joined, and keeps only that journey's row."""
    settings = make_settings("sqlite://", dev_server.address)
    run = uuid.uuid4().hex[:8]
    users = [f"{run}-{i}" for i in range(3)]
    definition = CampaignDefinition.model_validate(STORM)
    target = FanOutTarget(
        campaign_id="member-storm",
        campaign_version=1,
        campaign_name="Storm warning",
        plan=definition.plan(),
        audience=definition.entry.audience,  # type: ignore[union-attr]
    )
    async with sessions() as session:
        session.add_all(Profile(user_id=u, traits={"city": "Bergen"}) for u in users)
        session.add(Profile(user_id=f"{run}-oslo", traits={"city": "Oslo"}))
        await session.commit()
    client = dev_server.client
    try:
        # The last user is in a journey of the campaign already.
        earlier = PageRequest(
            occurrence=f"trigger/storm/{run}-0", entry_name="storm", fired_at=now(), target=target
        )
        first_run = await start_journey(
            client,
            task_queue=settings.task_queue,
            secret=None,
            campaign_id="member-storm",
            campaign_version=1,
            campaign_name="Storm warning",
            plan=target.plan,
            user_id=users[2],
            entry_event=entry_event(earlier, users[2]),
            signal=False,
        )
        async with sessions() as session:
            await record_entry(
                session=session,
                campaign_id="member-storm",
                campaign_version=1,
                user_id=users[2],
                workflow_id=journey_id("member-storm", users[2]),
                run_id=first_run,
                entry_message_id=entry_event(earlier, users[2]).message_id,
            )
            await session.commit()

        watcher = RowsAtStart(sessions)
        fan_out = FanOutActivities(
            sessions=sessions, client=AtJourneyStart(watcher.before).wrap(client), settings=settings
        )
        request = PageRequest(
            occurrence=f"trigger/storm/{run}-1", entry_name="storm", fired_at=now(), target=target
        )
        result = await ActivityEnvironment().run(fan_out.start_audience_page, request)
        # Two entered; the last user's start joined the journey already running (no entry:
        # the re-entry rule left them out) and Oslo is outside the audience.
        assert (result.started, result.skipped) == (2, 2)
        assert watcher.seen == dict.fromkeys(users, True)
        async with sessions() as session:
            rows = await session.execute(
                select(JourneyEntry.user_id, JourneyEntry.entry_message_id, JourneyEntry.run_id)
                .where(JourneyEntry.campaign_id == "member-storm")
                .order_by(JourneyEntry.user_id)
            )
            stored = rows.all()
        assert [(u, m) for u, m, _ in stored] == [
            (users[0], entry_event(request, users[0]).message_id),
            (users[1], entry_event(request, users[1]).message_id),
            (users[2], entry_event(earlier, users[2]).message_id),
        ]
        assert stored[2][2] == first_run and None not in [r for _, _, r in stored]
    finally:
        await end_journeys_left(client, settings.task_queue)
