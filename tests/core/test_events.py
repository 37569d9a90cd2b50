"""tests.core: Segment messages (HTTP Tracking API shape) and the event a journey receives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from core.events import (
    MAX_BATCH_BYTES,
    MAX_EVENT_BYTES,
    Batch,
    BatchItem,
    Identify,
    JourneyEvent,
    Page,
    SegmentMessage,
    Track,
)

# Shaped as in Segment's HTTP Tracking API documentation.
TRACK: dict[str, Any] = {
    "userId": "019mr8mf4r",
    "event": "Product Added",
    "properties": {
        "product_id": "507f1f77bcf86cd799439011",
        "name": "Monopoly: 3rd Edition",
        "price": 18.99,
        "quantity": 1,
    },
    "context": {"ip": "24.5.68.47", "library": {"name": "analytics-python", "version": "1.2.3"}},
    "timestamp": "2012-12-02T00:30:08.276Z",
    "messageId": "022bb90c-bbac-11e4-8dfc-aa07a5b093db",
}
IDENTIFY: dict[str, Any] = {
    "type": "identify",
    "userId": "019mr8mf4r",
    "traits": {"email": "ada@example.com", "first_name": "Ada", "friends": 29},
}
PAGE: dict[str, Any] = {
    "type": "page",
    "anonymousId": "507f191e810c19729de860ea",
    "name": "Home",
    "category": "Docs",
    "properties": {"url": "https://example.com/", "title": "Welcome"},
}


def errors(model: Any, data: Any) -> list[ErrorDetails]:
    with pytest.raises(ValidationError) as err:
        model.model_validate(data)
    return err.value.errors()


# -- identity -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ids", "user_key"),
    [
        ({"userId": "u1"}, "u1"),
        ({"anonymousId": "a1"}, "anon:a1"),
        ({"userId": "u1", "anonymousId": "a1"}, "u1"),
        ({"userId": "", "anonymousId": "a1"}, "anon:a1"),
    ],
)
def test_a_user_id_or_an_anonymous_id_names_the_user(ids: dict[str, str], user_key: str) -> None:
    for model, data in ((Track, {"event": "E"}), (Identify, {}), (Page, {})):
        assert model.model_validate({**data, **ids}).user_key == user_key


@pytest.mark.parametrize("ids", [{}, {"userId": None}, {"userId": ""}, {"anonymousId": ""}])
@pytest.mark.parametrize("model", [Track, Identify, Page])
def test_a_message_without_identity_is_refused(model: Any, ids: dict[str, Any]) -> None:
    [error] = errors(model, {"event": "E", **ids} if model is Track else ids)
    assert "userId or anonymousId is required" in error["msg"]


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        (42, "42"),
        (0, "0"),
        (-7, "-7"),
        (12345678901234567890, "12345678901234567890"),
        (1.5, "1.5"),
    ],
)
def test_numeric_ids_are_kept_as_strings(sent: Any, kept: str) -> None:
    track = Track.model_validate({"userId": sent, "anonymousId": sent, "event": "E"})
    assert (track.user_id, track.anonymous_id) == (kept, kept)
    assert track.user_key == kept
    assert Identify.model_validate({"user_id": sent}).user_id == kept


@pytest.mark.parametrize("sent", [True, ["u1"], {"id": "u1"}])
def test_ids_that_are_neither_text_nor_numbers_are_refused(sent: Any) -> None:
    assert errors(Track, {"userId": sent, "event": "E"})[0]["loc"] == ("userId",)


def test_ids_have_a_length_limit() -> None:
    assert errors(Track, {"userId": "u" * 513, "event": "E"})[0]["loc"] == ("userId",)
    Track.model_validate({"userId": "u" * 512, "event": "E"})


# -- track, identify, page ------------------------------------------------------------------


def test_a_track_call() -> None:
    track = Track.model_validate(TRACK)
    assert track.type == "track"
    assert track.event == "Product Added"
    assert track.properties["price"] == 18.99
    assert track.message_id == "022bb90c-bbac-11e4-8dfc-aa07a5b093db"
    assert track.timestamp == datetime(2012, 12, 2, 0, 30, 8, 276000, tzinfo=UTC)
    assert track.context["library"]["name"] == "analytics-python"
    assert track.integrations == {} and track.sent_at is None


def test_a_track_call_needs_an_event_name() -> None:
    body = {k: v for k, v in TRACK.items() if k != "event"}
    assert [e["loc"] for e in errors(Track, body)] == [("event",)]
    assert [e["loc"] for e in errors(Track, {**TRACK, "event": ""})] == [("event",)]


def test_only_the_matching_type_is_accepted() -> None:
    assert errors(Track, {**TRACK, "type": "identify"})[0]["loc"] == ("type",)
    assert Track.model_validate({**TRACK, "type": "track"}).type == "track"


def test_an_identify_call() -> None:
    identify = Identify.model_validate(IDENTIFY)
    assert identify.traits["first_name"] == "Ada"
    assert Identify.model_validate({"userId": "u1"}).traits == {}


def test_a_page_call() -> None:
    page = Page.model_validate(PAGE)
    assert (page.name, page.category) == ("Home", "Docs")
    assert page.properties["title"] == "Welcome"
    assert page.user_key == "anon:507f191e810c19729de860ea"


@pytest.mark.parametrize(
    "timestamp",
    ["2012-12-02T00:30:08.276Z", "2012-12-02T01:30:08.276+01:00", 1354408208.276],
)
def test_timestamps_in_iso_8601_or_epoch_seconds(timestamp: Any) -> None:
    parsed = Track.model_validate({**TRACK, "timestamp": timestamp}).timestamp
    assert parsed is not None
    assert parsed.astimezone(UTC) == datetime(2012, 12, 2, 0, 30, 8, 276000, tzinfo=UTC)


def test_a_timestamp_that_is_not_a_time_is_refused() -> None:
    assert errors(Track, {**TRACK, "timestamp": "yesterday"})[0]["loc"] == ("timestamp",)


def test_an_empty_message_id_is_refused() -> None:
    assert errors(Track, {**TRACK, "messageId": ""})[0]["loc"] == ("messageId",)


def test_unknown_fields_are_kept() -> None:
    track = Track.model_validate(
        {**TRACK, "version": 2, "channel": "server", "receivedAt": "2012-12-02T00:30:09Z"}
    )
    dumped = track.model_dump(by_alias=True)
    assert dumped["version"] == 2
    assert dumped["channel"] == "server"
    assert dumped["receivedAt"] == "2012-12-02T00:30:09Z"


def test_fields_read_and_write_in_segment_spelling() -> None:
    track = Track.model_validate({**TRACK, "sentAt": "2012-12-02T00:30:09Z", "writeKey": "k"})
    dumped = track.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert {"userId", "messageId", "sentAt", "writeKey"} <= dumped.keys()
    assert "user_id" not in dumped
    assert Track.model_validate(dumped) == track
    # Python callers may use field names.
    assert Track(user_id="u1", event="E").user_id == "u1"


def test_every_message_kind_shares_the_common_fields() -> None:
    for model in (Track, Identify, Page):
        assert issubclass(model, SegmentMessage)


# -- batch ----------------------------------------------------------------------------------


def test_a_batch_holds_messages_of_each_type() -> None:
    batch = Batch.model_validate(
        {
            "batch": [{**TRACK, "type": "track"}, IDENTIFY, PAGE],
            "context": {"device": {"type": "phone"}},
            "sentAt": "2012-12-02T00:30:10Z",
        }
    )
    assert [type(m) for m in batch.batch] == [Track, Identify, Page]
    assert batch.context["device"]["type"] == "phone"
    assert batch.sent_at == datetime(2012, 12, 2, 0, 30, 10, tzinfo=UTC)


def test_each_message_of_a_batch_is_validated_as_its_type() -> None:
    body = {"batch": [IDENTIFY, {"type": "track", "anonymousId": 7}]}
    [error] = errors(Batch, body)
    assert error["loc"] == ("batch", 1, "track", "event")
    body = {"batch": [{"type": "track", "event": "E"}]}
    [error] = errors(Batch, body)
    assert error["loc"][:2] == ("batch", 0)
    assert "userId or anonymousId is required" in error["msg"]


def test_batch_items_coerce_numeric_ids_too() -> None:
    batch = Batch.model_validate({"batch": [{"type": "track", "userId": 42, "event": "E"}]})
    assert batch.batch[0].user_id == "42"


@pytest.mark.parametrize(
    "item", [{"userId": "u1", "event": "E"}, {"type": "bogus", "userId": "u1"}]
)
def test_a_batch_item_needs_a_known_type(item: dict[str, Any]) -> None:
    [error] = errors(Batch, {"batch": [item]})
    assert error["loc"] == ("batch", 0)


def test_an_empty_batch_is_refused() -> None:
    assert errors(Batch, {"batch": []})[0]["loc"] == ("batch",)
    assert errors(Batch, {})[0]["loc"] == ("batch",)


def test_batch_items_parse_on_their_own() -> None:
    adapter: TypeAdapter[Any] = TypeAdapter(BatchItem)
    assert isinstance(adapter.validate_python(PAGE), Page)


def test_segment_size_limits() -> None:
    assert MAX_EVENT_BYTES == 32 * 1024
    assert MAX_BATCH_BYTES == 500 * 1024


# -- the event a journey receives -----------------------------------------------------------


def test_a_journey_event_gives_conditions_and_templates_their_event_root() -> None:
    at = datetime(2024, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    event = JourneyEvent(message_id="m1", name="Order Completed", timestamp=at, properties={"x": 1})
    assert event.as_context() == {
        "name": "Order Completed",
        "message_id": "m1",
        "timestamp": "2024-05-01T12:00:00+02:00",
        "properties": {"x": 1},
    }
    assert JourneyEvent.model_validate_json(event.model_dump_json()) == event
    with pytest.raises(ValidationError, match="Instance is frozen"):
        event.name = "changed"  # type: ignore[misc]
