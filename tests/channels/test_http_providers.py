"""What every HTTP provider does with the same answers — the webhook, SendGrid, Twilio and
FCM, each against its double as a real server on 127.0.0.1, through the real `deliver`:

- 503 twice, then accepted: two retryable failures, one message, one row, three attempts;
- 429 with Retry-After: retryable, and Temporal is told when to try again;
- 400: final, recorded `failed`, never tried again.

What only one provider does (Twilio's error codes, FCM's unregistered tokens, SendGrid's
payload) is tested beside that provider."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.channels.base import BODY_CHARS, OutgoingMessage, ProviderError
from activities.channels.registry import build_providers
from activities.channels.webhook import WebhookProvider
from activities.journey import PROVIDER_UNAVAILABLE, JourneyActivities
from core.config import DEV_WEBHOOK_SECRET, Settings
from core.definition import parse_campaign
from core.journey import DeliverRequest, DeliveryStatus
from store import deliveries
from store.campaigns import save_campaign
from store.profiles import merge_traits
from tests.fixtures.providers import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    FCM_PROJECT,
    FCM_TOKEN,
    SENDER,
    FcmResponder,
    SendGridResponder,
    TwilioResponder,
    taken,
)
from tests.fixtures.sends import deliver_request
from tests.fixtures.servers import Fault, ProviderDouble, Responder, ok_json


@dataclass(frozen=True)
class HttpProvider:
    channel: str
    accepted: int
    """The status the provider answers a message it takes."""
    respond: Callable[[], Responder]
    settings: Callable[[ProviderDouble], dict[str, Any]]
    """NUDGE_* settings that point the provider at its double."""
    key_header: str = "idempotency-key"
    """The header that carries our idempotency key."""
    dedupes: bool = False
    """Whether the provider drops a request whose key it has already processed: only the
    webhook's receiver (Standard Webhooks asks it to); SendGrid, Twilio and FCM do not."""


PROVIDERS = {
    "webhook": HttpProvider(
        channel="webhook",
        accepted=200,
        respond=lambda: ok_json,
        settings=lambda double: {"webhook_url": double.url},
        key_header="webhook-id",
        dedupes=True,
    ),
    "sendgrid": HttpProvider(
        channel="email",
        accepted=202,
        respond=SendGridResponder,
        settings=lambda double: {
            "email_provider": "sendgrid",
            "email_from": "Shop <hello@shop.example>",
            "sendgrid_url": double.url,
            "sendgrid_api_key": "SG.test-key",
        },
    ),
    "twilio": HttpProvider(
        channel="sms",
        accepted=201,
        respond=TwilioResponder,
        settings=lambda double: {
            "sms_provider": "twilio",
            "sms_from": SENDER,
            "twilio_url": double.base_url,
            "twilio_account_sid": ACCOUNT_SID,
            "twilio_auth_token": AUTH_TOKEN,
        },
    ),
    "fcm": HttpProvider(
        channel="push",
        accepted=200,
        respond=FcmResponder,
        settings=lambda double: {
            "push_provider": "fcm",
            "fcm_url": double.base_url,
            "fcm_project_id": FCM_PROJECT,
            "fcm_access_token": FCM_TOKEN,
        },
    ),
}

DEFINITION = parse_campaign(
    {
        "id": "reach",
        "name": "One message, every channel",
        "entry": {"event": "Product Added"},
        "steps": [
            {"id": channel, "type": "send", "channel": channel, "template": "t", "next": nxt}
            for channel, nxt in (
                ("webhook", "email"),
                ("email", "sms"),
                ("sms", "push"),
                ("push", None),
            )
        ],
        "templates": {"t": {"subject": "Still there?", "body": "Your umbrella waits"}},
    }
)


@dataclass
class Case:
    provider: HttpProvider
    double: ProviderDouble
    activities: JourneyActivities
    sessions: Any

    def request(self) -> DeliverRequest:
        step = self.provider.channel
        return deliver_request(campaign_id="reach", step_id=step, channel=step, template="t")

    async def row(self, request: DeliverRequest) -> Any:
        async with self.sessions() as session:
            found = await deliveries.get_delivery(
                session=session, idempotency_key=request.idempotency_key
            )
        assert found is not None
        return found


@pytest.fixture(params=sorted(PROVIDERS))
async def case(request: pytest.FixtureRequest, sessions) -> AsyncIterator[Case]:
    provider = PROVIDERS[request.param]
    async with sessions() as session, session.begin():
        await save_campaign(session=session, definition=DEFINITION)
        await merge_traits(
            session=session,
            user_id="ada",
            traits={"email": "ada@example.com", "phone": "+4915112345678", "push_token": "tok-a"},
        )
    # A double dedupes only where its provider does: elsewhere each message it takes counts.
    key_header = provider.key_header if provider.dedupes else None
    double = ProviderDouble(provider.respond(), key_header=key_header).start()
    settings = Settings(_env_file=None, **provider.settings(double))
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            providers = build_providers(settings, http=http, sessions=sessions)
            activities = JourneyActivities(sessions=sessions, providers=providers)
            yield Case(provider, double, activities, sessions)
    finally:
        double.close()


async def test_503_twice_then_sent_once(case: Case) -> None:
    case.double.faults.append(Fault(503, times=2))
    env = ActivityEnvironment()
    req = case.request()
    for _ in range(2):
        with pytest.raises(ApplicationError, match="503") as err:
            await env.run(case.activities.deliver, req)
        assert err.value.type == PROVIDER_UNAVAILABLE and not err.value.non_retryable
    waiting = await case.row(req)
    assert waiting.status == "pending" and "503" in (waiting.error or "")

    result = await env.run(case.activities.deliver, req)
    again = await env.run(case.activities.deliver, req)  # a retry after the send completed
    assert result.status is DeliveryStatus.sent and again.duplicate
    assert [r.status for r in case.double.received] == [503, 503, case.provider.accepted]
    assert len(taken(case.double)) == 1  # one message reached the provider, once
    [key] = {r.headers[case.provider.key_header] for r in case.double.received}
    assert key.startswith(req.idempotency_key)  # the same key on every attempt
    sent = await case.row(req)
    assert (sent.status, sent.attempts) == ("sent", 3)


async def test_429_retry_after_tells_temporal_when_to_try_again(case: Case) -> None:
    case.double.faults.append(Fault(429, headers={"Retry-After": "7"}, body="{}"))
    with pytest.raises(ApplicationError, match="429") as err:
        await ActivityEnvironment().run(case.activities.deliver, case.request())
    assert err.value.type == PROVIDER_UNAVAILABLE and not err.value.non_retryable
    assert err.value.next_retry_delay == timedelta(seconds=7)
    assert taken(case.double) == []


async def test_400_is_final_recorded_and_never_tried_again(case: Case) -> None:
    case.double.faults.append(Fault(400, body='{"error": "bad request"}'))
    env = ActivityEnvironment()
    req = case.request()
    result = await env.run(case.activities.deliver, req)
    again = await env.run(case.activities.deliver, req)
    assert result.status is DeliveryStatus.failed and again.duplicate
    assert "400" in (result.reason or "")
    assert len(case.double.received) == 1 and taken(case.double) == []
    assert (await case.row(req)).status == "failed"


async def test_an_answer_lost_after_the_provider_took_the_message(case: Case) -> None:
    """The README's window: the provider took the message, its answer never arrived. The
    retry sends again with the same key, and only a receiver that honours keys (the
    webhook's) shows one message; SendGrid, Twilio and FCM take it twice."""
    case.double.faults.append(Fault(drop=True, after_processing=True))
    env = ActivityEnvironment()
    req = case.request()
    with pytest.raises(ApplicationError, match="unreachable") as err:
        await env.run(case.activities.deliver, req)
    assert err.value.type == PROVIDER_UNAVAILABLE and not err.value.non_retryable
    result = await env.run(case.activities.deliver, req)

    assert result.status is DeliveryStatus.sent
    assert len(case.double.received) == 2
    assert len(taken(case.double)) == (1 if case.provider.dedupes else 2)
    sent = await case.row(req)
    assert (sent.status, sent.attempts) == ("sent", 2)


def test_the_double_never_takes_a_message_cut_off_mid_body() -> None:
    # What a worker killed while sending leaves behind: headers, half a body, a closed socket.
    double = ProviderDouble(key_header="webhook-id").start()
    try:
        host, port = double.server.server_address[:2]
        with socket.create_connection((str(host), int(port))) as conn:
            conn.sendall(
                b"POST /hooks/nudge HTTP/1.1\r\nHost: x\r\nwebhook-id: k-1\r\n"
                b'content-type: application/json\r\ncontent-length: 100\r\n\r\n{"half": '
            )
            conn.shutdown(socket.SHUT_WR)
            conn.recv(1024)  # the double hangs up without an answer
        [cut] = double.received
        assert (cut.status, cut.headers["webhook-id"]) == (0, "k-1")
        assert double.processed == {}
    finally:
        double.close()


async def test_a_1_mb_error_page_makes_a_short_error_and_a_bounded_answer() -> None:
    """A proxy's error page in front of a down provider: the error names the status, the
    URL and the start of the page, in a few hundred characters, as Temporal's failure and
    the delivery row will carry it; the answer kept for operators is as bounded."""
    page = "<html><body><h1>503 Service Unavailable</h1>" + "x" * 1_000_000 + "</body></html>"
    double = ProviderDouble(key_header="webhook-id").start()
    double.faults.append(Fault(503, body=page, headers={"content-type": "text/html"}))
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            provider = WebhookProvider(http, double.url + "?token=secret", [DEV_WEBHOOK_SECRET])
            with pytest.raises(ProviderError) as err:
                await provider.send(outgoing())
    finally:
        double.close()
    message = str(err.value)
    assert message.startswith(
        f"webhook answered 503 from {double.url}: <html><body><h1>503 Service Unavailable</h1>x"
    )
    assert message.endswith(" more characters)") and len(message) <= 400
    assert "secret" not in message  # the URL's query stays out
    assert err.value.retryable and err.value.status == 503 and err.value.body is None
    answer = err.value.answer
    assert answer is not None and answer["status"] == 503 and answer["url"] == double.url
    assert BODY_CHARS - 10 <= len(answer["body"]) <= BODY_CHARS


def outgoing() -> OutgoingMessage:
    return OutgoingMessage(
        idempotency_key="nudge_k",
        delivery_id=1,
        user_id="ada",
        campaign_id="reach",
        campaign_version=1,
        step_id="webhook",
        channel="webhook",
        subject=None,
        body="Your umbrella waits",
    )
