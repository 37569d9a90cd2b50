"""tests.store: the date-trait index and the date entries' sweep, on SQLite and PostgreSQL,
with an injected now: DST, Feb 29, offsets, a user who gets the trait later, no double
greeting across sweeps or a changed trait, the audience."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.definition import CampaignStatus, DateEntry, parse_campaign
from core.events import DATE_REACHED
from store.campaigns import save_campaign, set_status
from store.dates import DateCampaign, active_date_campaigns, date_message_id, due_dates
from store.events import NewEvent, record_events
from store.models import DateTrait, Identity, Segment, SegmentMembership
from store.profiles import merge_traits
from tests.fixtures.dst import us_spring_forward

Sessions = async_sessionmaker[AsyncSession]
DAY = timedelta(days=1)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def birthday(**options: Any) -> DateCampaign:
    entry = {"date": "birthday", "time": "09:00", **options}
    return DateCampaign("bday", 1, DateEntry.model_validate(entry))


async def identify(sessions: Sessions, user: str, traits: dict[str, Any]) -> None:
    async with sessions() as session, session.begin():
        await merge_traits(session=session, user_id=user, traits=traits)


async def sweep(
    sessions: Sessions, now: datetime, *campaigns: DateCampaign, lookback: timedelta = DAY
) -> list[NewEvent]:
    """One sweep as the clock runs it: what is due, written to the outbox."""
    async with sessions() as session, session.begin():
        due = await due_dates(
            session,
            campaigns=campaigns or (birthday(),),
            now=now,
            lookback=lookback,
            default_timezone="UTC",
        )
        await record_events(session=session, events=due)
    return due


async def test_date_traits_are_indexed_as_profiles_are_written(sessions: Sessions) -> None:
    await identify(
        sessions,
        "u1",
        {"birthday": "1992-02-29", "renewal_date": "2026-12-01T10:00:00Z", "plan": "pro"},
    )
    await identify(sessions, "u2", {"birthday": "17/05/1990", "since": 19900517})
    async with sessions() as session:
        rows = (await session.scalars(select(DateTrait).order_by(DateTrait.trait))).all()
    assert [(r.user_id, r.trait, r.month_day, r.value) for r in rows] == [
        ("u1", "birthday", "02-29", date(1992, 2, 29)),
        ("u1", "renewal_date", "12-01", date(2026, 12, 1)),
    ]
    # A changed date moves its row; a value that is no date any more removes it.
    await identify(sessions, "u1", {"birthday": "1991-03-01", "renewal_date": None})
    async with sessions() as session:
        rows = (await session.scalars(select(DateTrait))).all()
    assert [(r.trait, r.month_day, r.value) for r in rows] == [
        ("birthday", "03-01", date(1991, 3, 1))
    ]


async def test_a_birthday_is_due_at_nine_local_once_whatever_the_sweeps(
    sessions: Sessions,
) -> None:
    await identify(sessions, "ada", {"birthday": "1990-05-17", "timezone": "Europe/Paris"})
    await identify(sessions, "bob", {"birthday": "1985-05-18"})  # tomorrow: not yet
    assert await sweep(sessions, utc("2026-05-17T06:59")) == []
    [event] = await sweep(sessions, utc("2026-05-17T07:00"))  # 09:00 CEST
    assert event.message_id == date_message_id("bday", "2026", "ada")
    assert event.message_id.startswith("nudge:date:bday:2026:") and "ada" not in event.message_id
    assert (event.type, event.name, event.user_id) == ("internal", DATE_REACHED, "ada")
    assert event.timestamp == utc("2026-05-17T07:00")
    assert event.payload["properties"] == {
        "campaign": "bday",
        "trait": "birthday",
        "date": "1990-05-17",
        "occurrence": "2026-05-17",
    }
    # Every later sweep within the lookback finds it written: nothing more.
    for minutes in (1, 2, 60, 60 * 23):
        assert await sweep(sessions, utc("2026-05-17T07:00") + timedelta(minutes=minutes)) == []
    # The same again next year.
    [again] = await sweep(sessions, utc("2027-05-17T07:00"))
    assert again.message_id == date_message_id("bday", "2027", "ada")


async def test_a_trait_changed_within_the_year_is_not_greeted_twice(sessions: Sessions) -> None:
    await identify(sessions, "ada", {"birthday": "1990-03-10"})
    [first] = await sweep(sessions, utc("2026-03-10T09:00"))
    # A typo fixed: the birthday moves to later this year. This year's greeting went out.
    await identify(sessions, "ada", {"birthday": "1990-03-20"})
    assert await sweep(sessions, utc("2026-03-20T09:00")) == []
    [following] = await sweep(sessions, utc("2027-03-20T09:00"))
    assert following.payload["properties"]["date"] == "1990-03-20"
    assert first.message_id != following.message_id


async def test_a_user_who_gets_the_trait_later_is_greeted_by_the_next_sweep(
    sessions: Sessions,
) -> None:
    await identify(sessions, "ada", {"plan": "pro"})
    assert await sweep(sessions, utc("2026-05-17T10:00")) == []  # the campaign is running
    await identify(sessions, "ada", {"birthday": "1990-05-17"})  # told after 09:00
    [late] = await sweep(sessions, utc("2026-05-17T10:01"))
    assert late.user_id == "ada" and late.timestamp == utc("2026-05-17T09:00")
    # Beyond the lookback a moment is not greeted any more.
    await identify(sessions, "bob", {"birthday": "1990-05-16"})
    assert await sweep(sessions, utc("2026-05-17T10:02"), lookback=timedelta(hours=12)) == []


async def test_across_a_dst_change_in_new_york(sessions: Sessions) -> None:
    day = us_spring_forward(2027)
    await identify(
        sessions,
        "ny",
        {"birthday": f"1990-{day:%m-%d}", "timezone": "America/New_York"},
    )
    nine_edt = datetime(day.year, day.month, day.day, 13, tzinfo=UTC)  # 09:00 EDT (-4)
    assert await sweep(sessions, nine_edt - timedelta(minutes=1)) == []
    [event] = await sweep(sessions, nine_edt)
    assert event.timestamp == nine_edt


async def test_feb_29_is_greeted_on_feb_28_in_other_years(sessions: Sessions) -> None:
    await identify(sessions, "leap", {"birthday": "2000-02-29"})
    [common] = await sweep(sessions, utc("2027-02-28T09:00"))
    assert common.payload["properties"]["occurrence"] == "2027-02-28"
    assert await sweep(sessions, utc("2027-03-01T09:00")) == []
    assert await sweep(sessions, utc("2028-02-28T09:00")) == []  # a leap year: not yet
    [leap] = await sweep(sessions, utc("2028-02-29T09:00"))
    assert leap.payload["properties"]["occurrence"] == "2028-02-29"


async def test_an_offset_of_three_days_before(sessions: Sessions) -> None:
    campaign = birthday(offset="-3d")
    await identify(sessions, "ada", {"birthday": "1990-01-02"})
    # Three days before Jan 2, 2027 is Dec 30, 2026: keyed by the anniversary's year.
    [event] = await sweep(sessions, utc("2026-12-30T09:00"), campaign)
    assert event.message_id == date_message_id("bday", "2027", "ada")
    assert event.payload["properties"]["occurrence"] == "2027-01-02"
    assert await sweep(sessions, utc("2027-01-02T09:00"), campaign) == []


async def test_once_is_greeted_on_the_date_and_again_for_a_new_date(sessions: Sessions) -> None:
    renewal = DateCampaign(
        "renewal", 1, DateEntry(date="renewal_date", repeat="once", offset="-3d", time="10:00")
    )
    await identify(sessions, "ada", {"renewal_date": "2026-06-04"})
    [event] = await sweep(sessions, utc("2026-06-01T10:00"), renewal)
    assert event.message_id == date_message_id("renewal", "2026-06-04", "ada")
    assert await sweep(sessions, utc("2027-06-01T10:00"), renewal) == []  # once
    await identify(sessions, "ada", {"renewal_date": "2027-06-04"})  # renewed: a new date
    [renewed] = await sweep(sessions, utc("2027-06-01T10:00"), renewal)
    assert renewed.payload["properties"]["occurrence"] == "2027-06-04"


async def test_the_audience_keeps_segment_members_meeting_its_conditions(
    sessions: Sessions,
) -> None:
    campaign = birthday(
        audience={
            "segment": "vip",
            "conditions": [{"path": "traits.country", "op": "eq", "value": "FR"}],
        }
    )
    for user, country in [("in-fr", "FR"), ("in-de", "DE"), ("out-fr", "FR"), ("gone", "FR")]:
        await identify(sessions, user, {"birthday": "1990-05-17", "country": country})
    async with sessions() as session, session.begin():
        session.add(Segment(id="vip", name="VIP", definition={}, definition_hash="x"))
        await session.flush()
        for user, member in [("in-fr", True), ("in-de", True), ("gone", False)]:
            session.add(SegmentMembership(segment_id="vip", user_id=user, member=member, version=1))
    due = await sweep(sessions, utc("2026-05-17T09:00"), campaign)
    assert [e.user_id for e in due] == ["in-fr"]


async def test_the_audience_keeps_users_meeting_its_event_history(sessions: Sessions) -> None:
    """Greet only who bought in the last 30 days: read from the stored events."""
    campaign = birthday(
        audience={"events": [{"event": "Order Completed", "at_least": 1, "within": "30d"}]}
    )
    for user in ("bought", "bought-long-ago", "never"):
        await identify(sessions, user, {"birthday": "1990-05-17"})
    orders = [("bought", "2026-05-10T12:00"), ("bought-long-ago", "2026-01-10T12:00")]
    async with sessions() as session, session.begin():
        await record_events(
            session=session,
            events=[
                NewEvent(
                    message_id=f"order-{user}",
                    type="track",
                    name="Order Completed",
                    user_id=user,
                    timestamp=utc(at),
                    payload={"type": "track", "event": "Order Completed", "properties": {}},
                )
                for user, at in orders
            ],
        )
    due = await sweep(sessions, utc("2026-05-17T09:00"), campaign)
    assert [e.user_id for e in due] == ["bought"]


async def test_an_anonymous_id_linked_to_a_user_is_not_greeted_apart(sessions: Sessions) -> None:
    await identify(sessions, "anon:x", {"birthday": "1990-05-17"})
    await identify(sessions, "real-9", {"birthday": "1990-05-17"})
    async with sessions() as session, session.begin():
        session.add(Identity(anonymous_id="anon:x", user_id="real-9", message_id="m"))
    due = await sweep(sessions, utc("2026-05-17T09:00"))
    assert [e.user_id for e in due] == ["real-9"]


async def test_the_sweep_reads_only_the_candidate_days(sessions: Sessions) -> None:
    # 400 users, one birthday a day of the year: a day's sweep reads the few days around
    # it and greets exactly the users whose moment came.
    start = date(1990, 1, 1)
    for i in range(400):
        await identify(sessions, f"u{i:03}", {"birthday": (start + timedelta(days=i)).isoformat()})
    due = await sweep(sessions, utc("2026-07-01T09:00"))
    assert sorted(e.user_id for e in due) == ["u181"]  # 1990-07-01 is day 181


async def test_active_date_campaigns_are_read_from_the_store(sessions: Sessions) -> None:
    greet = parse_campaign(
        {
            "id": "greet",
            "name": "Birthday",
            "entry": {"date": "birthday", "time": "08:30"},
            "steps": [{"id": "s", "type": "send", "channel": "sandbox", "template": "t"}],
            "templates": {"t": {"body": "Happy birthday"}},
        }
    )
    cart = parse_campaign(
        {
            "id": "cart",
            "name": "Cart",
            "entry": {"event": "Product Added"},
            "steps": [{"id": "s", "type": "send", "channel": "sandbox", "template": "t"}],
            "templates": {"t": {"body": "x"}},
        }
    )
    async with sessions() as session, session.begin():
        for definition in (greet, cart):
            await save_campaign(session=session, definition=definition)
    async with sessions() as session:
        assert await active_date_campaigns(session=session) == []  # drafts
    async with sessions() as session, session.begin():
        for campaign_id in ("greet", "cart"):
            await set_status(session=session, campaign_id=campaign_id, status=CampaignStatus.active)
    async with sessions() as session:
        [found] = await active_date_campaigns(session=session)
    assert (found.campaign_id, found.version, found.entry.time) == ("greet", 1, "08:30")
