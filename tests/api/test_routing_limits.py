"""tests.api: what is accepted can always be routed — the longest ids and names the API
accepts still start a journey on a real Temporal server (its ids are limited in bytes)."""

from __future__ import annotations

from typing import Any

from core.events import MAX_USER_ID_BYTES
from core.journey import journey_id
from tests.api.doubles import FINISH_EVENT
from tests.api.test_routing import received, settled
from tests.fixtures.api import RoutingApi

EMOJI = "\U0001f600"  # four bytes of UTF-8
LONGEST_CAMPAIGN_ID = "c" * 63
"""The longest slug a campaign id may be."""


def campaign(name: str) -> dict[str, Any]:
    return {
        "id": LONGEST_CAMPAIGN_ID,
        "name": name,
        "entry": {"event": "Signed Up"},
        "exits": [{"event": FINISH_EVENT}],
        "steps": [{"id": "hello", "type": "send", "channel": "sandbox", "template": "hello"}],
        "templates": {"hello": {"body": "Welcome!"}},
    }


async def test_every_accepted_id_starts_a_journey(routing_api: RoutingApi) -> None:
    api, client = routing_api, routing_api.temporal()
    # The longest name too: the journey's summary in the Temporal UI is made from it.
    await api.campaign(campaign(EMOJI * 200))
    longest = EMOJI * (MAX_USER_ID_BYTES // 4)
    candidates = {
        "emoji-512-bytes": {"userId": longest},
        "anon-emoji-512-bytes": {"anonymousId": longest},
        "ascii-512-bytes": {"userId": "u" * MAX_USER_ID_BYTES},
        # Once accepted (512 characters), never routable: Temporal's ids are 1,000 bytes.
        "emoji-512-characters": {"userId": EMOJI * 512},
        "anon-accented-512-characters": {"anonymousId": "é" * 512},
    }
    accepted = []
    for message_id, ids in candidates.items():
        body = {**ids, "event": "Signed Up", "messageId": message_id}
        answer = await api.post("/v1/track", body)
        assert answer.status_code in (200, 400), answer.text
        if answer.status_code == 200:
            accepted.append(message_id)
    assert sorted(accepted) == ["anon-emoji-512-bytes", "ascii-512-bytes", "emoji-512-bytes"]
    assert await settled(api, *accepted) == dict.fromkeys(accepted, "routed")
    for user in (longest, f"anon:{longest}", "u" * MAX_USER_ID_BYTES):
        workflow_id = journey_id(LONGEST_CAMPAIGN_ID, user)
        assert len(workflow_id.encode()) < 1000
        [event] = await received(client, LONGEST_CAMPAIGN_ID, user)
        assert event.name == "Signed Up"
        await client.get_workflow_handle(workflow_id).signal("finish")
