"""The payload codec: what Nudge hands Temporal is sealed under the configured keys, opens
under any of them (rotation), and a history read without the keys shows no PII — while the
codec endpoint lets the `temporal` CLI (and the UI) show it to an operator."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import uuid
from collections.abc import AsyncIterator

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from core.config import DEV_PAYLOAD_KEYS, Settings, parse_payload_keys
from core.journey import journey_id, user_key
from temporal import search_attributes
from temporal.codec import (
    ENCODING,
    KEY_ID,
    EncryptionCodec,
    PayloadKeyMissing,
    PayloadTampered,
)
from temporal.servers import DEV_SERVER_BINARY, DevServer, binary
from tests.fixtures.api import (
    ADMIN,
    WRITE_KEY,
    RunningApi,
    Stack,
    eventually,
    make_settings,
    running_api,
    webhook_stack,
)
from tests.fixtures.servers import WebhookReceiver


def key(key_id: str, fill: bytes) -> str:
    return f"{key_id}:{base64.b64encode(fill * 32).decode()}"


OLD = key("2026-01", b"o")
NEW = key("2026-11", b"n")
PLAIN = Payload(metadata={"encoding": b"json/plain"}, data=b'{"email": "ada@example.com"}')


async def test_sealed_payload_holds_nothing_readable_and_opens_again():
    codec = EncryptionCodec(parse_payload_keys(NEW))
    [sealed] = await codec.encode([PLAIN])
    assert sealed.metadata["encoding"] == ENCODING
    assert sealed.metadata[KEY_ID] == b"2026-11"
    assert b"ada@example.com" not in sealed.SerializeToString()
    assert await codec.decode([sealed]) == [PLAIN]
    # Same input, fresh nonce: two seals never match (nothing to correlate).
    [again] = await codec.encode([PLAIN])
    assert again.data != sealed.data


async def test_rotation_new_key_seals_old_key_still_opens():
    before = EncryptionCodec(parse_payload_keys(OLD))
    [under_old] = await before.encode([PLAIN])
    rotated = EncryptionCodec(parse_payload_keys(f"{NEW},{OLD}"))
    assert await rotated.decode([under_old]) == [PLAIN]
    [under_new] = await rotated.encode([PLAIN])
    assert under_new.metadata[KEY_ID] == b"2026-11"
    # Once the old key is dropped, what was sealed under it says which key is missing.
    dropped = EncryptionCodec(parse_payload_keys(NEW))
    with pytest.raises(PayloadKeyMissing, match=r"key '2026-01'.*have: 2026-11"):
        await dropped.decode([under_old])


async def test_tampered_payload_or_relabelled_key_does_not_open():
    codec = EncryptionCodec(parse_payload_keys(f"{NEW},{key('other', b'n')}"))
    [sealed] = await codec.encode([PLAIN])
    flipped = Payload(metadata=dict(sealed.metadata), data=sealed.data[:-1] + b"\x00")
    with pytest.raises(PayloadTampered, match="does not authenticate"):
        await codec.decode([flipped])
    # The same secret under another id: the id is authenticated data, so it fails too.
    relabelled = Payload(metadata={**sealed.metadata, KEY_ID: b"other"}, data=sealed.data)
    with pytest.raises(PayloadTampered):
        await codec.decode([relabelled])


async def test_payloads_never_encrypted_pass_through():
    """Histories recorded before the codec (tests/histories) still replay."""
    codec = EncryptionCodec(parse_payload_keys(NEW))
    assert await codec.decode([PLAIN]) == [PLAIN]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "at least one payload key"),
        ("nokey", "<id>:<base64 key>"),
        ("a b:AAAA", "<id>:<base64 key>"),
        ("k:not base64!", "not base64"),
        (f"k:{base64.b64encode(b'short').decode()}", "16, 24 or 32 bytes, not 5"),
        (f"{NEW},{NEW}", "listed twice"),
    ],
)
def test_bad_payload_keys_are_refused_naming_the_problem(value: str, problem: str):
    with pytest.raises(ValueError, match=problem):
        Settings(_env_file=None, payload_keys=value)


def test_production_refuses_the_dev_keys():
    secrets = {
        "environment": "production",
        "write_key": "w" * 20,
        "admin_token": "a" * 20,
        "webhook_secret": "whsec_" + base64.b64encode(b"s" * 24).decode(),
        "link_secret": "l" * 20,
    }
    with pytest.raises(ValueError, match="NUDGE_PAYLOAD_KEYS"):
        Settings(_env_file=None, **secrets)
    assert Settings(_env_file=None, payload_keys=NEW, **secrets).codec_requires_token


# -- a real journey, its history, and the codec endpoint -------------------------------------

PII = {
    "email": "ada.lovelace@example.com",
    "phone": "+447700900123",
    "plan": "pro",
    "street": "12 Analytical Row",
}
CAMPAIGN = {
    "id": "codec-welcome",
    "name": "Welcome (codec)",
    "entry": {"event": "Signed Up"},
    "steps": [
        {
            "id": "route",
            "type": "branch",
            "branches": [
                {
                    "conditions": [{"path": "traits.plan", "op": "eq", "value": "pro"}],
                    "next": "hello",
                }
            ],
            "else": "hello",
        },
        {"id": "hello", "type": "send", "channel": "webhook", "template": "hello"},
    ],
    "templates": {"hello": {"body": "Hi {{ traits.email }} at {{ event.properties.card }}"}},
}


@pytest.fixture
async def stack(
    database_url: str, dev_server: DevServer, webhook_receiver: WebhookReceiver
) -> AsyncIterator[Stack]:
    # The dev server fixture's client carries the dev keys, as the settings do.
    assert Settings(_env_file=None).payload_keys == DEV_PAYLOAD_KEYS
    async with webhook_stack(database_url, dev_server, webhook_receiver, CAMPAIGN) as stack:
        yield stack


async def test_history_without_the_keys_shows_no_pii_and_the_cli_with_the_codec_does(stack):
    api, receiver = stack.api, stack.receiver
    user = f"u-{uuid.uuid4().hex[:10]}"
    card = "4111-1111-1111-1111"
    response = await api.post(
        "/v1/identify", {"userId": user, "traits": PII, "messageId": f"{user}-id"}
    )
    assert response.status_code == 200, response.text
    await api.track(user, "Signed Up", properties={"card": card})

    async def sent() -> bool:
        return any(hit.json()["data"]["user_id"] == user for hit in receiver.received)

    await eventually(sent, timeout=30)
    workflow_id = journey_id(CAMPAIGN["id"], user)

    # A client without the keys sees only ciphertext: no trait, no property, no message.
    raw = await Client.connect(stack.temporal.address, data_converter=pydantic_data_converter)
    history = await raw.get_workflow_handle(workflow_id).fetch_history()
    blob = b"".join(e.SerializeToString() for e in history.events) + history.to_json().encode()
    for secret in (PII["email"], PII["phone"], PII["street"], card):
        assert secret.encode() not in blob, f"{secret!r} is readable in the history"
    assert ENCODING in blob  # the payloads are there, sealed

    # The CLI, given the codec endpoint, shows the decrypted history to an operator.
    cli = [
        binary(DEV_SERVER_BINARY),
        "workflow",
        "show",
        "--address",
        stack.temporal.address,
        "--workflow-id",
        workflow_id,
        "--output",
        "json",
    ]
    plain = _payload_text(await _run(cli))
    assert PII["email"] not in plain and card not in plain
    decoded = _payload_text(await _run([*cli, "--codec-endpoint", f"{api.url}/codec"]))
    assert card in decoded  # the entry event's properties, in the workflow input
    assert f"Hi {PII['email']}" not in decoded  # the rendered message never enters Temporal
    # The profile load returned the one trait the branch reads, not the whole profile.
    assert '"plan":"pro"' in decoded.replace(" ", "")
    assert PII["street"] not in decoded and PII["phone"] not in decoded


def _payload_text(cli_json: str) -> str:
    """Every payload's data in `temporal workflow show -o json` (base64 there), as text."""
    texts: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("data"), str) and "metadata" in node:
                texts.append(base64.b64decode(node["data"]).decode("utf-8", "replace"))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(cli_json))
    assert texts, "no payloads in the history"
    return "\n".join(texts)


async def _run(command: list[str]) -> str:
    process = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "TEMPORAL_CLI_SHOW_STACKS": "0"},
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def test_codec_endpoint_auth_cors_and_bad_bodies(stack):
    api = stack.api
    codec = EncryptionCodec(parse_payload_keys(DEV_PAYLOAD_KEYS))
    [sealed] = await codec.encode([PLAIN])
    body = {
        "payloads": [
            {
                "metadata": {k: base64.b64encode(v).decode() for k, v in sealed.metadata.items()},
                "data": base64.b64encode(sealed.data).decode(),
            }
        ]
    }
    origin = "http://127.0.0.1:8233"
    response = await api.http.post("/codec/decode", json=body, headers={"Origin": origin})
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == origin
    [payload] = response.json()["payloads"]
    assert base64.b64decode(payload["data"]) == PLAIN.data

    preflight = await api.http.options(
        "/codec/decode",
        headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 204
    assert "X-Namespace" in preflight.headers["access-control-allow-headers"]
    stranger = await api.http.post(
        "/codec/decode", json=body, headers={"Origin": "http://evil.example"}
    )
    assert "access-control-allow-origin" not in stranger.headers

    bad = await api.http.post("/codec/decode", content=b"{not json")
    assert bad.status_code == 400 and "payloads" in bad.json()["detail"]
    other_key = EncryptionCodec(parse_payload_keys(NEW))
    [foreign] = await other_key.encode([PLAIN])
    body["payloads"][0]["metadata"][KEY_ID] = base64.b64encode(foreign.metadata[KEY_ID]).decode()
    unknown = await api.http.post("/codec/decode", json=body)
    assert unknown.status_code == 422 and "2026-11" in unknown.json()["detail"]


@pytest.fixture
async def token_api(database_url: str, dev_server: DevServer) -> AsyncIterator[RunningApi]:
    settings = make_settings(database_url, dev_server.address, codec_auth="token")
    async with running_api(settings) as api:
        yield api


async def test_codec_endpoint_requires_the_admin_token_when_told(token_api: RunningApi):
    body = {"payloads": []}
    refused = await token_api.http.post("/codec/decode", json=body)
    assert refused.status_code == 401
    wrong = await token_api.http.post(
        "/codec/decode", json=body, headers={"Authorization": "Bearer nope"}
    )
    assert wrong.status_code == 401
    allowed = await token_api.http.post("/codec/decode", json=body, headers=ADMIN)
    assert allowed.status_code == 200 and allowed.json() == {"payloads": []}
    as_write_key = await token_api.http.post(
        "/codec/decode", json=body, headers={"Authorization": f"Bearer {WRITE_KEY}"}
    )
    assert as_write_key.status_code == 401


async def test_hashed_user_ids_keep_the_id_out_of_workflow_ids_and_search_attributes(
    database_url: str, dev_server: DevServer, webhook_receiver: WebhookReceiver
):
    user = f"ada.{uuid.uuid4().hex[:8]}@example.com"  # a user id that is itself PII
    campaign = {**CAMPAIGN, "id": f"codec-hashed-{uuid.uuid4().hex[:6]}"}
    async with webhook_stack(
        database_url, dev_server, webhook_receiver, campaign, user_id_hash_key="hash-key-for-tests"
    ) as stack:
        api, settings = stack.api, stack.api.settings
        await api.track(user, "Signed Up", properties={"card": "x"})

        async def delivered() -> bool:
            return any(h.json()["data"]["user_id"] == user for h in webhook_receiver.received)

        await eventually(delivered, timeout=30)
        hashed = user_key(user, b"hash-key-for-tests")
        assert hashed.startswith("h-") and user not in hashed
        assert journey_id(campaign["id"], user, settings.user_secret).endswith(hashed)

        async def listed() -> list[str]:
            query = f"NudgeCampaign = '{campaign['id']}'"
            return [w.id async for w in dev_server.client.list_workflows(query)]

        [workflow_id] = await eventually(listed)
        assert workflow_id == f"journey/{campaign['id']}/{hashed}"
        described = await dev_server.client.get_workflow_handle(workflow_id).describe()
        assert described.typed_search_attributes.get(search_attributes.USER) == hashed
        # Operators still ask by the user id: the API hashes for them.
        shown = await api.http.get(f"/v1/journeys/{campaign['id']}/{user}", headers=ADMIN)
        assert shown.status_code == 200, shown.text
