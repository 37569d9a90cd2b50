"""tests.api: Segment's HTTP Tracking API — auth, gzip, limits, validation, the outbox, traits."""

from __future__ import annotations

import base64
import gzip
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.fixtures.api import ADMIN, WRITE_KEY, RunningApi, eventually


async def test_track_identify_page_and_batch_are_stored_before_the_answer(
    api_db: RunningApi,
) -> None:
    sent = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    answers = [
        await api_db.post(
            "/v1/track",
            {
                "userId": "ada",
                "event": "Product Added",
                "properties": {"sku": "U-1", "price": 19.5},
                "messageId": "t-1",
                "timestamp": sent.isoformat(),
            },
        ),
        await api_db.post(
            "/v1/identify", {"userId": "ada", "traits": {"plan": "pro"}, "messageId": "i-1"}
        ),
        await api_db.post(
            "/v1/page", {"anonymousId": "a-9", "name": "Pricing", "messageId": "p-1"}
        ),
        await api_db.post(
            "/v1/batch",
            {
                "batch": [
                    {"type": "track", "userId": "bob", "event": "Signed Up", "messageId": "b-1"},
                    {"type": "identify", "userId": 42, "traits": {"x": 1}, "messageId": "b-2"},
                ]
            },
        ),
    ]
    for answer in answers[:3]:
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"success": True}
    assert answers[3].status_code == 200, answers[3].text
    assert answers[3].json() == {"success": True, "accepted": 2, "rejected": []}

    # Read right after the answers: accepted means committed.
    events = {e.message_id: e for e in await api_db.events()}
    assert set(events) == {"t-1", "i-1", "p-1", "b-1", "b-2"}
    track = events["t-1"]
    assert (track.type, track.name, track.user_id) == ("track", "Product Added", "ada")
    assert track.timestamp == sent
    assert track.payload["properties"] == {"sku": "U-1", "price": 19.5}
    assert (events["i-1"].type, events["i-1"].name) == ("identify", None)
    assert (events["p-1"].type, events["p-1"].name, events["p-1"].user_id) == (
        "page",
        "Pricing",
        "anon:a-9",
    )
    assert events["b-2"].user_id == "42"  # numeric ids are kept as strings
    assert events["t-1"].id < events["i-1"].id < events["p-1"].id < events["b-1"].id


async def test_segment_short_paths(api: RunningApi) -> None:
    for path, body in [
        ("/v1/t", {"userId": "u", "event": "E", "messageId": "s-t"}),
        ("/v1/i", {"userId": "u", "messageId": "s-i"}),
        ("/v1/p", {"userId": "u", "messageId": "s-p"}),
        ("/v1/b", {"batch": [{"type": "track", "userId": "u", "event": "E", "messageId": "s-b"}]}),
    ]:
        answer = await api.post(path, body)
        assert answer.status_code == 200, (path, answer.text)
    assert {e.message_id for e in await api.events()} == {"s-t", "s-i", "s-p", "s-b"}


async def test_missing_message_id_and_timestamp_are_filled_in(api: RunningApi) -> None:
    before = datetime.now(UTC)
    answer = await api.post("/v1/track", {"userId": "u", "event": "E"})
    assert answer.status_code == 200
    [event] = await api.events()
    assert event.message_id
    assert before - timedelta(seconds=1) <= event.timestamp <= datetime.now(UTC)
    assert event.payload["messageId"] == event.message_id


async def test_gzip_body(api: RunningApi) -> None:
    body = {"batch": [{"type": "track", "userId": "u", "event": "E", "messageId": "gz-1"}]}
    answer = await api.http.post(
        "/v1/batch",
        content=gzip.compress(json.dumps(body).encode()),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        auth=(WRITE_KEY, ""),
    )
    assert answer.status_code == 200, answer.text
    assert [e.message_id for e in await api.events()] == ["gz-1"]


async def test_a_zip_bomb_is_refused_without_inflating_it(api: RunningApi) -> None:
    # 50 MB of spaces (valid JSON padding) compresses to ~50 KB.
    bomb = gzip.compress(b'{"userId": "u", "event": "E"' + b" " * 50_000_000 + b"}")
    assert len(bomb) < 500 * 1024
    answer = await api.http.post(
        "/v1/track",
        content=bomb,
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        auth=(WRITE_KEY, ""),
    )
    assert answer.status_code == 400
    [problem] = answer.json()["detail"]["problems"]
    assert "500 KB" in problem and "decompressed" in problem
    assert await api.events() == []


async def test_broken_gzip_is_a_400(api: RunningApi) -> None:
    answer = await api.http.post(
        "/v1/track",
        content=b"not gzip at all",
        headers={"Content-Encoding": "gzip"},
        auth=(WRITE_KEY, ""),
    )
    assert answer.status_code == 400
    assert "gzip" in answer.json()["detail"]["problems"][0]


async def test_write_key_is_required(api: RunningApi) -> None:
    body = {"userId": "u", "event": "E", "messageId": "k-1"}
    wrong = await api.http.post("/v1/track", json=body, auth=("not-the-key", ""))
    missing = await api.http.post("/v1/track", json=body)
    garbled = await api.http.post(
        "/v1/track", json=body, headers={"Authorization": "Basic !!!not-base64"}
    )
    bearer = await api.http.post(
        "/v1/track", json=body, headers={"Authorization": f"Bearer {WRITE_KEY}"}
    )
    for answer in (wrong, missing, garbled, bearer):
        assert answer.status_code == 401, answer.text
        assert answer.headers["www-authenticate"].startswith("Basic")
    assert "wrong write key" in wrong.json()["detail"]["problems"][0]
    assert "missing write key" in missing.json()["detail"]["problems"][0]
    # Without a key, even an unreadable body is only told to authenticate.
    unreadable = await api.http.post("/v1/track", content=b"{nope")
    assert unreadable.status_code == 401
    assert await api.events() == []


async def test_write_key_in_the_body_and_never_stored(api: RunningApi) -> None:
    single = await api.http.post(
        "/v1/track", json={"writeKey": WRITE_KEY, "userId": "u", "event": "E", "messageId": "w-1"}
    )
    batch = await api.http.post(
        "/v1/batch",
        json={
            "writeKey": WRITE_KEY,
            "batch": [{"type": "track", "userId": "u", "event": "E", "messageId": "w-2"}],
        },
    )
    wrong = await api.http.post(
        "/v1/track", json={"writeKey": "nope", "userId": "u", "event": "E", "messageId": "w-3"}
    )
    assert (single.status_code, batch.status_code, wrong.status_code) == (200, 200, 401)
    events = await api.events()
    assert [e.message_id for e in events] == ["w-1", "w-2"]
    assert all(
        "writeKey" not in e.payload and WRITE_KEY not in json.dumps(e.payload) for e in events
    )
    # Basic auth with an empty password, spelled out by hand as curl -u key: sends it.
    token = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    by_hand = await api.http.post(
        "/v1/track",
        json={"userId": "u", "event": "E", "messageId": "w-4"},
        headers={"Authorization": f"Basic {token}"},
    )
    assert by_hand.status_code == 200


async def test_an_event_over_32_kb_is_refused_naming_it(api: RunningApi) -> None:
    big: dict[str, Any] = {"userId": "u", "event": "E", "properties": {"blob": "x" * 40_000}}
    single = await api.post("/v1/track", {**big, "messageId": "big-1"})
    assert single.status_code == 400
    [problem] = single.json()["detail"]["problems"]
    assert problem.startswith("event is ") and problem.endswith("the limit is 32 KB per event")

    items: list[dict[str, Any]] = [
        {"type": "track", "userId": "u", "event": "E", "messageId": f"ok-{i}"} for i in range(3)
    ]
    items.append({"type": "track", **big, "messageId": "big-2"})
    batch = await api.post("/v1/batch", {"batch": items})
    assert batch.status_code == 200, batch.text
    size = len(json.dumps(items[3], separators=(",", ":")).encode())
    assert batch.json() == {
        "success": True,
        "accepted": 3,
        "rejected": [
            {
                "index": 3,
                "messageId": "big-2",
                "reason": f"event is {size} bytes; the limit is 32 KB per event",
            }
        ],
    }
    # The good ones are kept; the big ones are on the operator's list.
    assert [e.message_id for e in await api.events()] == ["ok-0", "ok-1", "ok-2"]
    assert [(r["endpoint"], r["message_id"]) for r in await rejected_events(api)] == [
        ("batch", "big-2"),
        ("track", "big-1"),
    ]


async def test_a_batch_over_500_kb_is_refused(api: RunningApi) -> None:
    items: list[dict[str, Any]] = [
        {"type": "track", "userId": "u", "event": "E", "properties": {"pad": "x" * 20_000}}
        for _ in range(30)
    ]
    answer = await api.post("/v1/batch", {"batch": items})
    assert answer.status_code == 400
    assert "500 KB" in answer.json()["detail"]["problems"][0]
    assert await api.events() == []


async def test_a_bad_body_gets_400_naming_the_field(api: RunningApi) -> None:
    batch = await api.post(
        "/v1/batch",
        {
            "batch": [
                {"type": "track", "userId": "u", "event": "E", "messageId": "ok"},
                {"type": "identify", "userId": "u"},
                {"type": "track", "userId": ["not", "a", "string"], "event": "E"},
                {"type": "track", "userId": "u", "messageId": "no-event"},
                {"type": "alias", "userId": "u"},
                {"type": "track", "event": "E"},
            ]
        },
    )
    assert batch.status_code == 200, batch.text
    answer = batch.json()
    assert answer["accepted"] == 2
    rejected = [(r["index"], r["messageId"], r["reason"]) for r in answer["rejected"]]
    assert rejected[0][:2] == (2, None) and rejected[0][2].startswith("userId: ")
    assert rejected[1:] == [
        (3, "no-event", "event: Field required"),
        (4, None, "previousId: Field required"),
        (5, None, "userId or anonymousId is required"),
    ]

    single = await api.post("/v1/track", {"userId": "u", "event": ""})
    assert single.status_code == 400
    assert single.json()["detail"]["problems"][0].startswith("event: ")

    for content in (b"{not json", b"[1, 2]"):
        answer = await api.http.post("/v1/track", content=content, auth=(WRITE_KEY, ""))
        assert answer.status_code == 400
        assert "JSON" in answer.json()["detail"]["problems"][0]

    empty = await api.post("/v1/batch", {"batch": []})
    assert empty.status_code == 400
    assert empty.json()["detail"]["problems"] == ["batch: must be a non-empty list of messages"]
    assert [e.user_id for e in await api.events()] == ["u", "u"]


async def test_the_same_batch_twice_is_stored_once(api_db: RunningApi) -> None:
    body = {
        "batch": [
            {"type": "identify", "userId": "ada", "traits": {"n": 1}, "messageId": "d-1"},
            {"type": "track", "userId": "ada", "event": "E", "messageId": "d-2"},
            {"type": "track", "userId": "ada", "event": "E", "messageId": "d-2"},
        ]
    }
    first = await api_db.post("/v1/batch", body)
    second = await api_db.post("/v1/batch", body)
    assert first.status_code == second.status_code == 200
    assert [e.message_id for e in await api_db.events()] == ["d-1", "d-2"]


async def test_identify_merges_traits_and_a_duplicate_does_not(api_db: RunningApi) -> None:
    async def identify(message_id: str, traits: dict[str, object]) -> None:
        answer = await api_db.post(
            "/v1/identify", {"userId": "ada", "traits": traits, "messageId": message_id}
        )
        assert answer.status_code == 200, answer.text

    await identify("i-1", {"plan": "free", "email": "ada@example.com"})
    await identify("i-2", {"plan": "pro"})
    assert await api_db.traits("ada") == {"plan": "pro", "email": "ada@example.com"}

    # A retried old identify must not undo the newer plan.
    await identify("i-1", {"plan": "free", "email": "ada@example.com"})
    assert await api_db.traits("ada") == {"plan": "pro", "email": "ada@example.com"}

    # A track's context.traits merge too.
    await api_db.track("ada", "E", context={"traits": {"city": "Lyon"}})
    assert await api_db.traits("ada") == {
        "plan": "pro",
        "email": "ada@example.com",
        "city": "Lyon",
    }


async def test_a_batch_context_applies_to_its_items(api: RunningApi) -> None:
    answer = await api.post(
        "/v1/batch",
        {
            "context": {"library": {"name": "analytics-python"}, "traits": {"tier": "gold"}},
            "batch": [
                {"type": "track", "userId": "cy", "event": "E", "messageId": "c-1"},
                {
                    "type": "track",
                    "userId": "cy",
                    "event": "E",
                    "messageId": "c-2",
                    "context": {"library": {"version": "2.0"}, "ip": "10.0.0.1"},
                },
            ],
        },
    )
    assert answer.status_code == 200, answer.text
    first, second = await api.events()
    assert first.payload["context"] == {
        "library": {"name": "analytics-python"},
        "traits": {"tier": "gold"},
    }
    assert second.payload["context"] == {
        "library": {"name": "analytics-python", "version": "2.0"},
        "traits": {"tier": "gold"},
        "ip": "10.0.0.1",
    }
    assert await api.traits("cy") == {"tier": "gold"}


async def test_docs_and_openapi(api: RunningApi) -> None:
    docs = await api.http.get("/docs")
    assert docs.status_code == 200
    schema = (await api.http.get("/openapi.json")).json()
    assert "/v1/batch" in schema["paths"]
    assert "Track" in schema["components"]["schemas"]
    assert "/v1/t" not in schema["paths"]


async def test_healthz_alive_and_readyz_names_what_is_down(api: RunningApi) -> None:
    assert (await api.http.get("/healthz")).status_code == 200
    ready = await api.http.get("/readyz")
    assert ready.status_code == 503
    body = ready.json()
    assert body["database"] == "ok"
    assert body["temporal"].startswith("not connected to 127.0.0.1:")


async def test_requests_are_plain_http(api: RunningApi) -> None:
    # The fixture really serves over TCP: a fresh client with no shared state works too.
    async with httpx.AsyncClient() as other:
        answer = await other.get(f"{api.url}/healthz")
    assert answer.json() == {"status": "ok"}


async def test_screen_group_and_alias_are_stored_not_routed_and_never_merge_traits(
    api: RunningApi,
) -> None:
    singles = [
        ("/v1/screen", {"userId": "ada", "name": "Home", "messageId": "s-1"}),
        (
            "/v1/group",
            {"userId": "ada", "groupId": 7, "traits": {"plan": "team"}, "messageId": "g-1"},
        ),
        ("/v1/alias", {"userId": "ada", "previousId": "anon-1", "messageId": "a-1"}),
    ]
    for path, body in singles:
        answer = await api.post(path, body)
        assert answer.status_code == 200, answer.text
    batch = await api.post(
        "/v1/batch",
        {"batch": [{"type": "screen", "anonymousId": "x", "name": "Cart", "messageId": "s-2"}]},
    )
    assert batch.status_code == 200, batch.text
    events = {e.message_id: e for e in await api.events()}
    assert {k: (e.type, e.name) for k, e in events.items()} == {
        "s-1": ("screen", "Home"),
        "g-1": ("group", None),
        "a-1": ("alias", None),
        "s-2": ("screen", "Cart"),
    }
    assert events["g-1"].payload["groupId"] == "7"
    assert await api.traits("ada") is None  # group traits describe the group, not the user

    async def settled() -> bool:
        assert {e.status for e in await api.events()} == {"ignored"}
        return True

    await eventually(settled)

    bad = await api.post("/v1/group", {"userId": "ada"})
    assert bad.status_code == 400
    assert bad.json()["detail"]["problems"] == ["groupId: Field required"]


async def test_sandbox_messages_need_the_admin_token(api: RunningApi) -> None:
    assert (await api.http.get("/v1/messages")).status_code == 401
    answer = await api.http.get("/v1/messages", headers=ADMIN)
    assert answer.status_code == 200 and answer.json() == {"data": [], "count": 0}


async def test_hostile_shapes_get_a_400_not_a_500(api: RunningApi) -> None:
    for levels in (5000, 100_000):
        deep = (
            b'{"userId": "u", "event": "E", "properties": ' + b"[" * levels + b"]" * levels + b"}"
        )
        answer = await api.http.post("/v1/track", content=deep, auth=(WRITE_KEY, ""))
        assert answer.status_code == 400
        assert "nests deeper" in answer.json()["detail"]["problems"][0]
    shared = await api.post(
        "/v1/batch",
        {
            "context": {"library": {"name": "x"}},
            "batch": [
                {"type": "track", "userId": "u", "event": "E", "context": ["not", "a", "map"]}
            ],
        },
    )
    assert shared.status_code == 200
    [rejected] = shared.json()["rejected"]
    assert rejected["index"] == 0 and rejected["reason"].startswith("context: ")
    assert await api.events() == []


# -- hostile input: a 4xx naming the field, the same on SQLite and PostgreSQL --------------


async def post_text(api: RunningApi, path: str, text: str) -> httpx.Response:
    """A body written by hand, with JSON escapes (a lone `\\ud800`, `NaN`) no encoder emits."""
    return await api.http.post(
        path,
        content=text.encode(),
        auth=(WRITE_KEY, ""),
        headers={"Content-Type": "application/json"},
    )


async def rejected_events(api: RunningApi, **params: Any) -> list[dict[str, Any]]:
    answer = await api.http.get("/v1/rejected-events", params=params, headers=ADMIN)
    assert answer.status_code == 200, answer.text
    data: list[dict[str, Any]] = answer.json()["data"]
    return data


def as_sent(text: str) -> str:
    """JSON text in one spelling, to compare what was sent with what was kept: integers as
    text (Python cannot hold 5000 digits), NaN and Infinity as Python writes them."""
    return json.dumps(json.loads(text, parse_int=str), sort_keys=True)


EMOJI = "\U0001f600"  # four bytes of UTF-8, one character
HUGE = "1" * 5000
TRACK = '"userId": "u", "event": "E"'

HOSTILE: list[tuple[str, str, str]] = [
    # (path, body as JSON text, the field the first problem names)
    ("/v1/track", r'{"userId": "a\ud800", "event": "E"}', "userId"),
    ("/v1/track", r'{"anonymousId": "a\udfff", "event": "E"}', "anonymousId"),
    ("/v1/track", r'{"userId": "u", "event": "a\ud800"}', "event"),
    ("/v1/track", TRACK.join(["{", r', "properties": {"p": ["a\ud800"]}}']), "properties.p[0]"),
    ("/v1/track", TRACK.join(["{", r', "properties": {"k\ud800": 1}}']), r"properties.k\ud800"),
    ("/v1/identify", r'{"userId": "u", "traits": {"name": "a\ud800"}}', "traits.name"),
    ("/v1/track", r'{"userId": "a\u0000", "event": "E"}', "userId"),
    ("/v1/track", r'{"userId": "u", "event": "a\u0000"}', "event"),
    ("/v1/track", TRACK.join(["{", r', "messageId": "m\u0000"}']), "messageId"),
    ("/v1/track", TRACK.join(["{", r', "properties": {"p": "a\u0000"}}']), "properties.p"),
    (
        "/v1/track",
        TRACK.join(["{", r', "context": {"traits": {"t": "\u0000"}}}']),
        "context.traits.t",
    ),
    ("/v1/identify", r'{"userId": "u", "traits": {"a\u0000": 1}}', r"traits.a\u0000"),
    ("/v1/track", TRACK.join(["{", ', "timestamp": "9999-12-31T23:00:00-05:00"}']), "timestamp"),
    ("/v1/track", TRACK.join(["{", ', "timestamp": "0001-01-01T00:00:00+05:00"}']), "timestamp"),
    ("/v1/track", TRACK.join(["{", ', "sentAt": "9999-12-31T23:00:00-05:00"}']), "sentAt"),
    ("/v1/track", TRACK.join(["{", f', "properties": {{"n": {HUGE}}}}}']), "properties.n"),
    ("/v1/track", TRACK.join(["{", f', "properties": {{"n": -{HUGE}}}}}']), "properties.n"),
    (
        "/v1/track",
        TRACK.join(["{", ', "properties": {"n": 18446744073709551616}}']),
        "properties.n",
    ),
    ("/v1/track", TRACK.join(["{", ', "properties": {"x": NaN}}']), "properties.x"),
    ("/v1/track", TRACK.join(["{", ', "properties": {"x": [Infinity]}}']), "properties.x[0]"),
    ("/v1/track", TRACK.join(["{", ', "properties": {"x": -Infinity}}']), "properties.x"),
    ("/v1/track", TRACK.join(["{", ', "properties": {"x": 1e999}}']), "properties.x"),
    ("/v1/track", TRACK.join(["{", ', "context": {"x": -1e999}}']), "context.x"),
    ("/v1/track", '{"userId": 123456789012345678901234567890, "event": "E"}', "userId"),
    ("/v1/track", json.dumps({"userId": EMOJI * 129, "event": "E"}), "userId"),
    ("/v1/track", json.dumps({"anonymousId": EMOJI * 129, "event": "E"}), "anonymousId"),
]


async def test_hostile_values_get_a_400_naming_the_field(api_db: RunningApi) -> None:
    for path, text, field in HOSTILE:
        answer = await post_text(api_db, path, text)
        assert answer.status_code == 400, (text[:80], answer.text)
        problem = answer.json()["detail"]["problems"][0]
        assert problem.startswith(f"{field}: "), (text[:80], problem)
    assert await api_db.events() == []
    # Each is on the operator's list, newest first, the item as received.
    rows = await rejected_events(api_db, limit=100)
    assert len(rows) == len(HOSTILE)
    for row, (path, text, field) in zip(rows, reversed(HOSTILE), strict=True):
        assert row["endpoint"] == path.removeprefix("/v1/")
        assert row["position"] is None
        assert row["reason"].startswith(f"{field}: ")
        assert row["item"].isascii()
        assert as_sent(row["item"]) == as_sent(text)


async def test_a_write_key_that_is_not_text_is_a_401(api: RunningApi) -> None:
    for key in (r"\ud800", r"\u0000", "1", "null"):
        text = f'{{"writeKey": "{key}", "userId": "u", "event": "E"}}'
        answer = await api.http.post("/v1/track", content=text.encode())
        assert answer.status_code == 401, (key, answer.text)
    assert await api.events() == []
    assert await rejected_events(api) == []  # nothing is kept for a sender we do not know


async def test_the_longest_user_ids_are_counted_in_bytes(api_db: RunningApi) -> None:
    # 512 bytes is the limit whatever the script: 128 emoji, 256 'é', 512 ASCII letters.
    for user_id in (EMOJI * 128, "é" * 256, "u" * 512):
        await api_db.track(user_id, "E")
        answer = await api_db.post("/v1/track", {"anonymousId": user_id, "event": "E"})
        assert answer.status_code == 200, answer.text
    assert {e.user_id for e in await api_db.events()} >= {EMOJI * 128, f"anon:{'é' * 256}"}
    for user_id in (EMOJI * 127 + "é" * 3, "u" * 513):
        answer = await api_db.post("/v1/track", {"userId": user_id, "event": "E"})
        assert answer.status_code == 400
        [problem] = answer.json()["detail"]["problems"]
        size = len(user_id.encode())
        assert problem.startswith(f"userId: is {size} bytes of UTF-8; the limit is 512 bytes")


async def test_one_bad_item_does_not_cost_the_good_ones(api_db: RunningApi) -> None:
    items = [
        '{"type": "track", "userId": "ada", "event": "E", "messageId": "g-1"}',
        '{"type": {"a": 1}, "userId": "ada", "messageId": "type-object"}',
        '{"type": ["track"], "userId": "ada", "messageId": "type-list"}',
        r'{"type": "track", "userId": "a\ud800", "event": "E", "messageId": "surrogate"}',
        r'{"type": "track", "userId": "ada", "event": "E", "messageId": "m\u0000"}',
        '{"type": "track", "userId": "ada", "event": "E", "properties": {"x": NaN}}',
        '{"type": "identify", "userId": "ada", "traits": {"plan": "pro"}, "messageId": "g-2"}',
        '"not an object"',
        '{"type": "track", "userId": "ada", "event": "E", "timestamp": '
        '"0001-01-01T00:00:00+05:00", "messageId": "early"}',
    ]
    answer = await post_text(api_db, "/v1/batch", '{"batch": [' + ", ".join(items) + "]}")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["success"], body["accepted"]) == (True, 2)
    kinds = "must be one of 'track', 'identify', 'page', 'screen', 'group', 'alias'"
    expected = [
        (1, "type-object", f"type: {kinds}"),
        (2, "type-list", f"type: {kinds}"),
        (3, "surrogate", "userId: "),
        (4, r"m\u0000", "messageId: "),
        (5, None, "properties.x: "),
        (7, None, "must be a JSON object"),
        (8, "early", "timestamp: "),
    ]
    got = body["rejected"]
    assert [(r["index"], r["messageId"]) for r in got] == [(i, m) for i, m, _ in expected]
    for rejected, (_, _, reason) in zip(got, expected, strict=True):
        assert rejected["reason"].startswith(reason), rejected

    assert [e.message_id for e in await api_db.events()] == ["g-1", "g-2"]
    assert await api_db.traits("ada") == {"plan": "pro"}

    rows = await rejected_events(api_db)
    assert [(r["endpoint"], r["position"]) for r in rows] == [
        ("batch", i) for i, _, _ in reversed(expected)
    ]
    by_position = {r["position"]: r for r in rows}
    assert by_position[3]["user_id"] == r"a\ud800"  # escaped: both backends can store it
    assert by_position[4]["message_id"] == r"m\u0000"
    for position, text in enumerate(items):
        if position in by_position:
            assert as_sent(by_position[position]["item"]) == as_sent(text)
            assert by_position[position]["item"].isascii()


async def test_a_batch_of_only_bad_items_is_still_a_200(api: RunningApi) -> None:
    # Segment's SDKs drop a batch answered 4xx and retry one answered 5xx: a 200 with the
    # reasons is the only answer that neither loses good items nor retries bad ones forever.
    items = [{"type": "track", "userId": "u"} for _ in range(30)]
    answer = await api.post("/v1/batch", {"batch": items})
    assert answer.status_code == 200
    body = answer.json()
    assert body["accepted"] == 0
    assert [r["index"] for r in body["rejected"]] == list(range(20))  # the first 20 shown
    assert len(await rejected_events(api, limit=100)) == 30  # every one kept
