"""activities: a fan-out's pages — who of a campaign's audience a trigger or a broadcast
reaches, and starting their journeys, rate-limited, exactly once per (campaign,
occurrence, user), until the campaign is paused or archived; and which scheduled
broadcasts are due."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from core.clock import ClockRequest
from core.conditions import evaluate_all
from core.config import Settings
from core.definition import ReEntry, ScheduleEntry
from core.events import SCHEDULED
from core.fanout import (
    ACTIVITY_DUE_BROADCASTS,
    ACTIVITY_START_PAGE,
    BROADCAST_LOOKBACK_MINUTES,
    WORKFLOW_FANOUT,
    BroadcastsDue,
    FanOutInput,
    FanOutTarget,
    PageRequest,
    PageResult,
    entry_event,
    fanout_workflow_id,
    halt_reason,
)
from core.journey import journey_id
from core.schedule import EARLIEST_ZONE, cron_fires, user_zone, wall_time, zone_named
from store.audiences import audience_page, criterion_holds, traits_of
from store.campaigns import active_definitions, get_campaign
from store.entries import confirm_entries, release_entries, reserve_entries
from store.models import JourneyEntry
from temporal.journeys import MEMO_ENTRY, start_journey

CONCURRENT_STARTS = 16
"""Journeys being started at once by one page (each a round trip to Temporal)."""
RECORD_EVERY = 100
"""Journeys whose entries are written in one transaction before they start, and confirmed
in one after (between two heartbeats)."""


class Pacer:
    """At most `rate` starts per second, spread evenly (no bursts after a pause)."""

    def __init__(self, rate: float):
        self.interval = 1.0 / rate
        self.next_at = time.monotonic()
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self._lock:
            now = time.monotonic()
            delay = self.next_at - now
            self.next_at = max(self.next_at, now) + self.interval
        if delay > 0:
            await asyncio.sleep(delay)


class FanOutActivities:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        client: Client,
        settings: Settings,
        record_every: int = RECORD_EVERY,
    ):
        self._sessions = sessions
        self._client = client
        self._settings = settings
        self._record_every = record_every
        """RECORD_EVERY; smaller in tests, to see a page stop between two chunks."""

    def all(self) -> list[Any]:
        return [self.start_audience_page, self.due_broadcasts]

    @activity.defn(name=ACTIVITY_DUE_BROADCASTS)
    async def due_broadcasts(self, request: ClockRequest) -> BroadcastsDue:
        """Start the fan-out of every scheduled broadcast that fired in the lookback before
        `request.now` (the clock's minute). One workflow per (campaign, firing), its id
        from both: a firing seen by two clock runs, or a retried activity, is started
        once. A broadcast at each user's local time fires in the earliest zone; each
        journey is then held until that wall time in the user's own zone."""
        async with self._sessions() as session:
            campaigns = await active_definitions(session=session, entry_key="schedule")
        due = BroadcastsDue()
        start = request.now - timedelta(minutes=BROADCAST_LOOKBACK_MINUTES)
        for campaign_id, version, definition in campaigns:
            entry = definition.entry
            assert isinstance(entry, ScheduleEntry)
            local = entry.timezone == "user"
            zone = zone_named(EARLIEST_ZONE if local else entry.timezone)
            for fired in cron_fires(entry.schedule, zone, start, request.now):
                wall = fired.astimezone(zone).replace(tzinfo=None)
                occurrence = f"schedule/{campaign_id}/{wall.isoformat(timespec='minutes')}"
                fan_out = FanOutInput(
                    occurrence=occurrence,
                    entry_name=SCHEDULED,
                    properties={"occurrence": wall.isoformat(timespec="minutes")},
                    fired_at=fired,
                    targets=[
                        FanOutTarget(
                            campaign_id=campaign_id,
                            campaign_version=version,
                            campaign_name=definition.name,
                            plan=definition.plan(),
                            audience=entry.audience,
                            local_time=wall if local else None,
                        )
                    ],
                )
                workflow_id = fanout_workflow_id(occurrence)
                try:
                    await self._client.start_workflow(
                        WORKFLOW_FANOUT,
                        fan_out,
                        id=workflow_id,
                        task_queue=self._settings.task_queue,
                        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                        static_summary=f"{definition.name}: {entry.schedule} ({wall:%Y-%m-%d %H:%M})",
                    )
                except WorkflowAlreadyStartedError:
                    pass  # fanned out by an earlier minute's run, and finished
                due.started.append(workflow_id)
        return due

    @activity.defn(name=ACTIVITY_START_PAGE)
    async def start_audience_page(self, request: PageRequest) -> PageResult:
        """Start the journeys of one page of the target's audience, a chunk at a time:
        write the chunk's entry rows, start its journeys, confirm the rows (run ids, the
        entrant counts) — see `store.entries.reserve_entries`.

        The rows come first because they are the router's membership index: it signals a
        user's goal, exit or `wait_for` event only to the journeys whose row says they
        run. Were a journey started first and recorded after, an event of its user routed
        in between would miss it (a chunk takes up to RECORD_EVERY paced starts). Written
        first, in their own committed transaction, a row is visible before its journey
        exists, so any event routed once the journey runs reaches it.

        A retried page (the worker died, Temporal hiccupped) skips the journeys it finds
        confirmed for this occurrence, and asks Temporal about the rest before starting
        them again: a journey started but not yet confirmed carries its entry id in its
        memo.

        **Halting.** The campaign's status is read at the start of the page and again
        before each chunk: once it is not active (an operator paused or archived it — "stop
        that broadcast, the coupon is wrong") the page starts no more journeys, writes no
        more rows, and returns what it did so far with `halted` (the status) and `after`
        None, so the fan-out goes on to its next target. That is final: a broadcast is a
        moment, and resuming the campaign does not resume it (`core.fanout.halt_reason`).
        At most the chunk under way when the status changed still starts (up to
        RECORD_EVERY journeys: its rows are written before its starts). A halted retry
        still records the journeys its dead attempt started (by their memo), starting none.
        A new version published meanwhile changes nothing: the campaign is still active,
        and the target carries the plan it fired with."""
        target = request.target
        audience = target.audience
        now = datetime.now(UTC)
        trigger = entry_event(request, "").as_context()
        halted = await self._halted(target.campaign_id)
        if halted is not None and activity.info().attempt == 1:
            # An earlier attempt may have started journeys it did not record: only a retry
            # reads the page to settle them.
            return PageResult(after=None, halted=halted)
        async with self._sessions() as session:
            users = await audience_page(
                session, audience, after=request.after, limit=self._settings.fanout_page_size
            )
            if not users:
                return PageResult(after=None, halted=halted)
            traits = await traits_of(session, users)
            chosen = [
                u
                for u in users
                if audience is None
                or evaluate_all(
                    audience.conditions, {"traits": traits.get(u, {}), "trigger": trigger}
                )
            ]
            for criterion in audience.events if audience is not None and chosen else ():
                holding = await criterion_holds(session, criterion, chosen, trigger, now)
                chosen = [u for u in chosen if u in holding]
            ids = {u: entry_event(request, u).message_id for u in chosen}
            rows = await session.execute(
                select(JourneyEntry.entry_message_id, JourneyEntry.run_id).where(
                    JourneyEntry.campaign_id == target.campaign_id,
                    JourneyEntry.entry_message_id.in_(list(ids.values())),
                )
            )
            recorded: set[str] = set()
            reserved: set[str] = set()  # written by an attempt that died before confirming
            for message_id, run_id in rows.all():
                (recorded if run_id is not None else reserved).add(message_id)
            entered: set[str] = set()
            if target.plan.re_entry is ReEntry.once:
                entered = set(
                    await session.scalars(
                        select(JourneyEntry.user_id).where(
                            JourneyEntry.campaign_id == target.campaign_id,
                            JourneyEntry.user_id.in_(chosen),
                        )
                    )
                )
        result = PageResult(after=users[-1], skipped=len(users) - len(chosen))
        todo = []
        for user in chosen:
            if ids[user] in recorded:
                result.already += 1
            elif ids[user] in reserved:
                todo.append(user)  # its own row, not an earlier entry
            elif user in entered:
                result.skipped += 1
            else:
                todo.append(user)
        retried = activity.info().attempt > 1 or bool(reserved)
        pacer = Pacer(self._settings.fanout_rate_per_second)
        gate = asyncio.Semaphore(CONCURRENT_STARTS)

        async def one(user: str) -> tuple[str, str] | None:
            async with gate:
                if retried and await self._started_before(request, user, ids[user]):
                    result.already += 1
                    return None
                await pacer.wait()
                return user, await self._start(request, user, traits.get(user, {}), now)

        async def settle(user: str) -> str | None:
            """The user's journey recorded if an earlier attempt started it; else the
            user's entry id, whose reserved row goes."""
            async with gate:
                if await self._started_before(request, user, ids[user]):
                    result.already += 1
                    return None
                return ids[user]

        # Written, started, confirmed a chunk at a time: a worker that dies in between
        # leaves rows unconfirmed (journeys started or not), which the retry sorts out by
        # the journeys' memo (`_started_before`).
        reached = 0
        while reached < len(todo) and halted is None:
            halted = await self._halted(target.campaign_id)
            if halted is not None:
                break
            chunk = todo[reached : reached + self._record_every]
            await self._reserve(request, chunk)
            started = [s for s in await asyncio.gather(*(one(u) for u in chunk)) if s]
            newcomers = await self._record(request, started)
            reached += len(chunk)
            # A start that joined the user's journey already running (another occurrence's)
            # entered nobody: the re-entry rule left the user out.
            result.started += newcomers
            result.skipped += len(started) - newcomers
            activity.heartbeat(result.started)
        if halted is None:
            return result
        # The rest of the page is not reached: no rows, no starts — but rows an earlier
        # attempt wrote are settled: their journeys recorded if it started them, else the
        # rows deleted (left, they would read as running journeys, and keep their users
        # out of a `re_entry: once` campaign they never entered). An earlier attempt still
        # alive that starts one after all writes its row again when it records it.
        unstarted = await asyncio.gather(*(settle(u) for u in todo[reached:] if ids[u] in reserved))
        async with self._sessions() as session:
            await release_entries(
                session=session,
                campaign_id=target.campaign_id,
                message_ids=[m for m in unstarted if m is not None],
            )
            await session.commit()
        result.after = None
        result.halted = halted
        return result

    async def _halted(self, campaign_id: str) -> str | None:
        """Why the fan-out stops entering this campaign's audience, read now; None: go on."""
        async with self._sessions() as session:
            campaign = await get_campaign(session=session, campaign_id=campaign_id)
            return halt_reason(campaign.status if campaign is not None else None)

    async def _start(
        self, request: PageRequest, user: str, traits: dict[str, Any], now: datetime
    ) -> str:
        """Start one user's journey; its first run id."""
        target = request.target
        settings = self._settings
        delay = None
        if target.local_time is not None:
            zone = user_zone(traits.get("timezone"), settings.default_timezone)
            at = wall_time(target.local_time, zone)
            delay = at - now if at > now else None
        event = entry_event(request, user)
        run_id = await start_journey(
            self._client,
            task_queue=settings.task_queue,
            secret=settings.user_secret,
            campaign_id=target.campaign_id,
            campaign_version=target.campaign_version,
            campaign_name=target.campaign_name,
            plan=target.plan,
            user_id=user,
            entry_event=event,
            signal=False,
            start_delay=delay,
        )
        return run_id

    async def _reserve(self, request: PageRequest, users: list[str]) -> None:
        """Write the entry rows of journeys about to start, in one committed transaction
        (`store.entries.reserve_entries`)."""
        if users:
            async with self._sessions() as session:
                await self._write_rows(session, request, users)
                await session.commit()

    async def _record(self, request: PageRequest, started: list[tuple[str, str]]) -> int:
        """Confirm journeys started, (user, run id) each, in one transaction: their rows
        get their run ids and their entrants are counted (`store.entries.confirm_entries`).
        Returns how many entered: not a start that joined a journey already running."""
        if not started:
            return 0
        async with self._sessions() as session:
            # A no-op for the rows `_reserve` wrote; writes those it did not (a journey
            # started by a worker of the version that recorded after starting).
            await self._write_rows(session, request, [user for user, _ in started])
            entered = await confirm_entries(
                session=session,
                campaign_id=request.target.campaign_id,
                started=[(entry_event(request, u).message_id, run_id) for u, run_id in started],
            )
            await session.commit()
            return entered

    async def _write_rows(
        self, session: AsyncSession, request: PageRequest, users: list[str]
    ) -> None:
        target = request.target
        secret = self._settings.user_secret
        await reserve_entries(
            session=session,
            campaign_id=target.campaign_id,
            campaign_version=target.campaign_version,
            entries=[
                (
                    user,
                    journey_id(target.campaign_id, user, secret),
                    entry_event(request, user).message_id,
                )
                for user in users
            ],
            holdout=target.plan.holdout,
        )

    async def _started_before(self, request: PageRequest, user: str, message_id: str) -> bool:
        """Whether the user's journey (running or ended) is this occurrence's: started by
        an earlier attempt of this page that died before recording it. Recorded now."""
        workflow_id = journey_id(request.target.campaign_id, user, self._settings.user_secret)
        try:
            description = await self._client.get_workflow_handle(workflow_id).describe()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return False
            raise
        if await description.memo_value(MEMO_ENTRY, default=None) != message_id:
            return False
        await self._record(
            request, [(user, description.raw_info.first_run_id or description.run_id)]
        )
        return True
