"""core.routing: what one event means for each campaign, decided from plain values — no
database, no Temporal."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from core.definition import parse_campaign
from core.events import JourneyEvent
from core.routing import ActiveCampaign, CampaignIndex, Signal, Start, UserFacts, decide, needs


def campaign(campaign_id: str, entry: str, **fields: Any) -> ActiveCampaign:
    definition = parse_campaign(
        {
            "id": campaign_id,
            "name": campaign_id.title(),
            "entry": {"event": entry, "conditions": fields.pop("conditions", [])},
            "steps": [{"id": "wait", "type": "wait_for", "event": "Paid", "timeout": "1d"}],
            **fields,
        }
    )
    return ActiveCampaign(campaign_id, 3, definition, definition.plan())


CART = campaign(
    "cart", "Product Added", conditions=[{"path": "properties.price", "op": "gte", "value": 10}]
)
VIP = campaign(
    "vip", "Product Added", conditions=[{"path": "traits.tier", "op": "eq", "value": "vip"}]
)
ONCE = campaign("welcome", "Product Added", re_entry="once", goals=[{"event": "Order Completed"}])
INDEX = CampaignIndex.build(
    active=[CART, VIP, ONCE],
    versions=[(c.campaign_id, c.plan) for c in (CART, VIP, ONCE)]
    + [("paused-one", campaign("paused-one", "Signed Up", exits=[{"event": "Paid"}]).plan)],
)


def event(name: str, **properties: Any) -> JourneyEvent:
    return JourneyEvent(
        message_id="m-1",
        name=name,
        timestamp=datetime(2026, 11, 30, tzinfo=UTC),
        properties=properties,
    )


def test_the_index_enters_active_campaigns_and_reacts_for_every_version() -> None:
    assert [c.campaign_id for c in INDEX.entries[("track", "Product Added")]] == [
        "cart",
        "vip",
        "welcome",
    ]
    assert ("track", "Signed Up") not in INDEX.entries  # paused: no journey enters it
    assert INDEX.reactions["Paid"] == {"cart", "vip", "welcome", "paused-one"}
    assert INDEX.reactions["Order Completed"] == {"welcome"}
    assert INDEX.concerns("track", "Paid")
    assert not INDEX.concerns("identify", "Paid")
    assert not INDEX.concerns("track", "Newsletter Opened")
    assert not INDEX.concerns("track", None)


def test_what_to_gather_before_deciding() -> None:
    wanted = needs(INDEX, "track", "Product Added")
    assert wanted is not None
    assert wanted.traits  # the vip campaign's condition reads the profile
    assert wanted.entries == ("cart", "vip", "welcome")
    assert wanted.once == ("welcome",)
    paid = needs(INDEX, "track", "Paid")
    assert paid is not None and not paid.traits and paid.entries == () and paid.once == ()
    assert needs(INDEX, "track", "Newsletter Opened") is None
    assert needs(INDEX, "page", "Product Added") is None


def test_entry_conditions_on_properties_and_traits_decide_who_starts() -> None:
    cheap = decide(INDEX, "track", event("Product Added", price=5), UserFacts())
    assert cheap == [Start(ONCE)]
    vip = decide(
        INDEX, "track", event("Product Added", price=50), UserFacts(traits={"tier": "vip"})
    )
    assert vip == [Start(CART), Start(VIP), Start(ONCE)]


def test_a_once_campaign_never_starts_twice_but_still_hears_its_events() -> None:
    facts = UserFacts(entered=frozenset({"welcome"}))
    assert decide(INDEX, "track", event("Product Added", price=50), facts) == [Start(CART)]
    assert decide(INDEX, "track", event("Order Completed"), facts) == [Signal("welcome")]


def test_an_event_routed_again_only_signals_the_journey_it_started() -> None:
    facts = UserFacts(started_by_event=frozenset({"cart"}))
    assert decide(INDEX, "track", event("Product Added", price=50), facts) == [
        Signal("cart", entered=True),
        Start(ONCE),
    ]


def test_reactions_signal_each_campaign_once_in_order_after_the_starts() -> None:
    both = campaign("both", "Paid", goals=[{"event": "Paid"}])
    index = CampaignIndex.build(
        active=[both], versions=[("both", both.plan), ("cart", CART.plan), ("a", CART.plan)]
    )
    assert decide(index, "track", event("Paid"), UserFacts()) == [
        Start(both),
        Signal("a"),
        Signal("cart"),
    ]


def test_nothing_routes_what_no_campaign_cares_about() -> None:
    assert decide(INDEX, "track", event("Newsletter Opened"), UserFacts()) == []
    assert decide(INDEX, "identify", event("Product Added", price=50), UserFacts()) == []
