"""api: provider status webhooks — SendGrid's signed Event Webhook and Twilio's status
callbacks, each verified, recorded as engagement of the delivery they report on
(store.engagement): the delivery's columns, the stats, the suppression list, and the user's
`Email Delivered`, `Email Bounced`, `SMS Delivered`, … events, routed like any other.

Signatures. SendGrid signs `timestamp + body` with ECDSA P-256 (its verification key is
NUDGE_SENDGRID_WEBHOOK_PUBLIC_KEY); Twilio signs the URL and the form with the auth token
(api.twilio). Without the key or the token a webhook is refused in production and taken
unsigned elsewhere, so a developer can try it with curl.

Replays. A signed SendGrid request is refused once its timestamp is MAX_SIGNATURE_AGE old —
days, not minutes: SendGrid retries a batch it could not hand over for up to 24 hours, and
whether a retry is signed anew is not documented, so a window of minutes could refuse every
batch retried after an outage, its bounces and spam reports lost for good. A replay within
the window changes little: recording is idempotent (a delivery is delivered, bounced and
suppressed once; each event keeps its messageId), except the `opens` and `clicks` totals,
which count every report.

Each report is recorded and committed on its own: a batch names many users, and one
transaction for all of them would lock them in the batch's order, so two batches naming
the same users in other orders could deadlock. A batch that fails half-way answers 500 and
SendGrid sends it again; what was recorded already is not counted twice, but for the opens
and clicks totals (as with a replay). A report already recorded once per delivery
(delivered, bounced, …) is skipped after a read, so a repeated batch costs little.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from api.deps import SessionDep, SettingsDep
from api.schemas import Message
from api.twilio import check_twilio_headers, verify_twilio
from core.config import Environment, Settings
from core.engagement import EngagementKind, is_machine
from store.campaigns import VersionUnavailable, load_definition
from store.engagement import FIRST_AT, TOTALS, Engagement, find_delivery_id, record_engagement
from store.models import Delivery

log = logging.getLogger("nudge.api")

router = APIRouter(tags=["engagement"])

SENDGRID_SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
SENDGRID_TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"
MAX_SIGNATURE_AGE = timedelta(hours=48)
"""Twice SendGrid's retry horizon (24 hours): see the module's note on replays."""
MAX_SENDGRID_BYTES = 4 * 1024 * 1024
"""SendGrid documents no batch size; one refused for its size is retried and then lost, so
the cap is generous. Enforced by the request guard (api.limits)."""
MAX_TWILIO_STATUS_BYTES = 64 * 1024
"""Twilio's status callback form is well under 1 KB."""
MAX_PROPERTY_CHARS = 500
"""A provider's reason or status kept on the event: enough to read, bounded."""


class WebhookSummary(BaseModel):
    """What became of the reports in one request."""

    received: int = 0
    recorded: int = 0
    """Matched a delivery and recorded (a repeat too: recording it again changes nothing)."""
    ignored: int = 0
    """Reports Nudge does not record: SendGrid's `processed` and `deferred`, Twilio's
    `queued`, `sent`, …, and a SendGrid event repeated within the batch."""
    unknown: int = 0
    """About no delivery of Nudge's (another sender on the same account, or one forgotten)."""
    invalid: int = 0
    """SendGrid events without an `event` name or a Unix `timestamp`."""


@dataclass(frozen=True)
class Report:
    """What a provider said about one delivery, as Nudge records it."""

    kind: EngagementKind
    machine: bool = False
    key: str = ""
    properties: dict[str, Any] = field(default_factory=dict)
    campaign_group: bool = False
    """An `unsubscribed` from the campaign's subscription group only; otherwise from every
    group on the channel."""


@dataclass(frozen=True)
class ReportedDelivery:
    """The columns of a delivery a report is checked against."""

    id: int
    channel: str
    idempotency_key: str
    provider_message_id: str | None
    campaign_id: str
    campaign_version: int
    sent_at: datetime | None
    first_at: dict[str, datetime | None] = field(default_factory=dict)
    """When each kind recorded once was first recorded (store.engagement.FIRST_AT)."""

    def has_recorded(self, kind: EngagementKind) -> bool:
        """Whether a report of `kind` would change nothing: one recorded once per delivery
        (delivered, bounced, …) whose time is set. Every open and click counts in the
        totals, so those are always recorded."""
        column = FIRST_AT.get(kind)
        if kind in TOTALS or column is None:
            return False
        return self.first_at.get(column.key) is not None


# -- what SendGrid's events mean -----------------------------------------------------------

SENDGRID_KINDS = {
    "delivered": EngagementKind.delivered,
    "dropped": EngagementKind.dropped,
    "spamreport": EngagementKind.spam,
    "unsubscribe": EngagementKind.unsubscribed,
    "group_unsubscribe": EngagementKind.unsubscribed,
    "open": EngagementKind.opened,
    "click": EngagementKind.clicked,
}
"""`bounce` depends on its type (`sendgrid_kind`). Not recorded: `processed` and `deferred`
(the message is still on its way), `group_resubscribe` (Nudge's own preferences decide),
and account events."""
SENDGRID_PROPERTIES = {
    "reason": "reason",
    "status": "smtp_status",
    "type": "bounce_type",
    "bounce_classification": "bounce_classification",
    "sg_event_id": "provider_event_id",
}
"""SendGrid's fields kept on the user's event, under these names."""


def sendgrid_kind(event: Mapping[str, Any]) -> EngagementKind | None:
    """The engagement a SendGrid event is, or None when Nudge does not record it.

    A `bounce` of type `bounce` (or of no type, as older events are) is a hard bounce: the
    address is refused for good, and suppressed. Of type `blocked` it is a soft one — the
    receiving server refused this message (the sender's reputation, its content, a full
    mailbox), not the address — recorded as `dropped`, which suppresses nothing."""
    name = event.get("event")
    if name == "bounce":
        hard = event.get("type", "bounce") in ("bounce", None)
        return EngagementKind.bounced if hard else EngagementKind.dropped
    return SENDGRID_KINDS.get(name) if isinstance(name, str) else None


def sendgrid_report(
    event: Mapping[str, Any], kind: EngagementKind, *, at: datetime, sent_at: datetime | None
) -> Report:
    """The report a SendGrid event of `kind` makes about its delivery."""
    properties = {
        name: _text(event[field])
        for field, name in SENDGRID_PROPERTIES.items()
        if isinstance(event.get(field), str | int) and not isinstance(event.get(field), bool)
    }
    machine = False
    key = ""
    if kind in (EngagementKind.opened, EngagementKind.clicked):
        agent = event.get("useragent")
        machine = event.get("sg_machine_open") is True or is_machine(
            kind=kind, user_agent=agent if isinstance(agent, str) else None, at=at, sent_at=sent_at
        )
    if kind is EngagementKind.clicked:
        url = event.get("url")
        if isinstance(url, str) and url:
            properties["link_url"] = url
            # The key names the link in the event's messageId: short, whatever the URL.
            key = "sendgrid-" + hashlib.sha256(url.encode()).hexdigest()[:16]
    return Report(
        kind=kind,
        machine=machine,
        key=key,
        properties=properties,
        campaign_group=event.get("event") == "group_unsubscribe",
    )


def _text(value: str | int) -> str | int:
    return value[:MAX_PROPERTY_CHARS] if isinstance(value, str) else value


# -- what Twilio's statuses mean -------------------------------------------------------------

TWILIO_PERMANENT = frozenset({"30005", "30006", "21211", "21614", "21635"})
"""Error codes that say the number itself cannot take SMS, now or later: a bounce, and the
number is suppressed. 30005 unknown destination handset (no such number), 30006 landline or
unreachable carrier, 21211 invalid `To` number, 21614 not a mobile number, 21635 landline.
Every other failure is `dropped`, suppressing nothing: 30003 (handset off or out of
coverage), 30004 (blocked, by the carrier or the recipient), 30007 (carrier filtering),
30008 (unknown) and the like can pass on a later day."""
TWILIO_OPTED_OUT = "21610"
"""The recipient texted STOP to the sender: Twilio refuses until they text START. Recorded
as `dropped` and as the user leaving every SMS group, so Nudge stops asking too."""
TWILIO_FAILED = frozenset({"undelivered", "failed"})


def twilio_reports(message_status: str, error_code: str) -> list[Report]:
    """What one Twilio status callback reports: nothing for the statuses on the way
    (`queued`, `sending`, `sent`, `accepted`, …)."""
    if message_status == "delivered":
        return [Report(EngagementKind.delivered)]
    if message_status == "read":  # a WhatsApp read receipt
        return [Report(EngagementKind.opened)]
    if message_status not in TWILIO_FAILED:
        return []
    properties = {"message_status": message_status, "error_code": error_code or None}
    if error_code in TWILIO_PERMANENT:
        return [Report(EngagementKind.bounced, properties=properties)]
    dropped = Report(EngagementKind.dropped, properties=properties)
    if error_code == TWILIO_OPTED_OUT:
        return [dropped, Report(EngagementKind.unsubscribed, properties=properties)]
    return [dropped]


# -- SendGrid's signature ------------------------------------------------------------------


class SendGridKeyError(ValueError):
    """NUDGE_SENDGRID_WEBHOOK_PUBLIC_KEY is not an ECDSA public key."""


@lru_cache(maxsize=4)
def sendgrid_public_key(value: str) -> ec.EllipticCurvePublicKey:
    """The verification key as SendGrid's console shows it: base64 of the DER
    SubjectPublicKeyInfo (a PEM block is taken too)."""
    text = value.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
        else:
            key = serialization.load_der_public_key(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error, UnsupportedAlgorithm) as exc:
        raise SendGridKeyError(
            "NUDGE_SENDGRID_WEBHOOK_PUBLIC_KEY is not a public key: copy the verification "
            "key from SendGrid's Event Webhook settings (base64)"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise SendGridKeyError(
            "NUDGE_SENDGRID_WEBHOOK_PUBLIC_KEY is not an ECDSA key: copy the verification "
            "key from SendGrid's Event Webhook settings"
        )
    return key


def sendgrid_signature_matches(
    key: ec.EllipticCurvePublicKey, *, timestamp: str, body: bytes, signature: str
) -> bool:
    """Whether `signature` (base64 DER ECDSA) is SendGrid's over `timestamp + body`."""
    try:
        der = base64.b64decode(signature.strip(), validate=True)
        key.verify(der, timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def _check_sendgrid_headers(
    request: Request, settings: Settings
) -> ec.EllipticCurvePublicKey | None:
    """What can be refused before the body is read; the key to verify it with, or None when
    it is taken unsigned (no key, outside production)."""
    configured = settings.sendgrid_webhook_public_key
    if not configured or not configured.strip():
        if settings.environment is Environment.production:
            # Unsigned, anyone could bounce any address off the list, or mark it as spam.
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                "set NUDGE_SENDGRID_WEBHOOK_PUBLIC_KEY (the verification key of SendGrid's "
                "signed Event Webhook) to accept SendGrid events in production",
            )
        return None
    try:
        key = sendgrid_public_key(configured)
    except SendGridKeyError as exc:
        log.error("%s", exc)
        raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, str(exc)) from exc
    for header in (SENDGRID_SIGNATURE, SENDGRID_TIMESTAMP):
        if not request.headers.get(header):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"{header} is missing")
    stamp = request.headers[SENDGRID_TIMESTAMP].strip()
    if not re.fullmatch(r"[0-9]{1,12}", stamp):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, f"{SENDGRID_TIMESTAMP} is not a Unix time in seconds"
        )
    age = time.time() - int(stamp)
    if age > MAX_SIGNATURE_AGE.total_seconds():
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"{SENDGRID_TIMESTAMP} is {age / 3600:.0f} hours old; signed requests older than "
            f"{MAX_SIGNATURE_AGE.total_seconds() / 3600:.0f} hours are refused as replays",
        )
    return key


def _verify_sendgrid(key: ec.EllipticCurvePublicKey, request: Request, body: bytes) -> None:
    if not sendgrid_signature_matches(
        key,
        timestamp=request.headers[SENDGRID_TIMESTAMP].strip(),
        body=body,
        signature=request.headers[SENDGRID_SIGNATURE],
    ):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"{SENDGRID_SIGNATURE} does not match the body (is "
            "NUDGE_SENDGRID_WEBHOOK_PUBLIC_KEY this webhook's verification key?)",
        )


def parse_sendgrid_batch(body: bytes) -> list[dict[str, Any]]:
    """The events of one POST: a JSON array of objects, or a 400 saying what is wrong."""
    try:
        batch = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, f"the body is not JSON: {exc}"[:300]
        ) from exc
    if not isinstance(batch, list):
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            f"the body must be a JSON array of SendGrid events, not {_json_type(batch)}",
        )
    for index, event in enumerate(batch):
        if not isinstance(event, dict):
            raise HTTPException(
                status.HTTP_400_BAD_REQUEST,
                f"event {index} of the array is {_json_type(event)}, not an object",
            )
    return batch


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


# -- finding the delivery --------------------------------------------------------------------


def _delivery_id(value: Any) -> int | None:
    """A delivery id as a custom arg or query parameter carries it (a string of digits)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,18}", value.strip()):
        value = int(value.strip())
    if isinstance(value, int) and 0 < value < 2**63:
        return value
    return None


async def _load_deliveries(
    session: AsyncSession, ids: Iterable[int]
) -> dict[int, ReportedDelivery]:
    wanted = sorted(set(ids))
    firsts = list(dict.fromkeys(FIRST_AT.values()))
    found: dict[int, ReportedDelivery] = {}
    for start in range(0, len(wanted), 500):
        result = await session.execute(
            select(
                Delivery.id,
                Delivery.channel,
                Delivery.idempotency_key,
                Delivery.provider_message_id,
                Delivery.campaign_id,
                Delivery.campaign_version,
                Delivery.sent_at,
                *firsts,
            ).where(Delivery.id.in_(wanted[start : start + 500]))
        )
        for row in result:
            found[row.id] = ReportedDelivery(
                id=row.id,
                channel=row.channel,
                idempotency_key=row.idempotency_key,
                provider_message_id=row.provider_message_id,
                campaign_id=row.campaign_id,
                campaign_version=row.campaign_version,
                sent_at=row.sent_at,
                first_at={column.key: row._mapping[column.key] for column in firsts},
            )
    return found


class _Deliveries:
    """The deliveries one request reports on, each looked up once."""

    def __init__(self, session: AsyncSession, channel: str):
        self._session = session
        self._channel = channel
        self._by_id: dict[int, ReportedDelivery | None] = {}
        self._by_provider_id: dict[str, ReportedDelivery | None] = {}
        self._groups: dict[tuple[str, int], str | None] = {}

    async def preload(self, ids: Iterable[int]) -> None:
        wanted = set(ids) - self._by_id.keys()
        found = await _load_deliveries(self._session, wanted)
        self._by_id.update({delivery_id: found.get(delivery_id) for delivery_id in wanted})

    async def by_id(self, delivery_id: int | None) -> ReportedDelivery | None:
        if delivery_id is None:
            return None
        if delivery_id not in self._by_id:
            await self.preload([delivery_id])
        row = self._by_id.get(delivery_id)
        return row if row is not None and row.channel == self._channel else None

    async def by_provider_id(self, provider_message_id: str) -> ReportedDelivery | None:
        if provider_message_id not in self._by_provider_id:
            found = await find_delivery_id(self._session, provider_message_id)
            self._by_provider_id[provider_message_id] = await self.by_id(found)
        return self._by_provider_id[provider_message_id]

    async def campaign_group(self, row: ReportedDelivery) -> str | None:
        """The subscription group of the delivery's campaign version; None (every group)
        when the version cannot be read: an opt-out is honoured too widely, never lost."""
        version = (row.campaign_id, row.campaign_version)
        if version not in self._groups:
            try:
                definition = await load_definition(
                    session=self._session, campaign_id=row.campaign_id, version=row.campaign_version
                )
                self._groups[version] = definition.subscription_group
            except VersionUnavailable as exc:
                log.warning("group unsubscribe of delivery %s: %s; every group", row.id, exc)
                self._groups[version] = None
        return self._groups[version]


def _sendgrid_reports_on(row: ReportedDelivery, event: Mapping[str, Any]) -> bool:
    """Whether an event naming this delivery in its custom args is about it: another sender
    on the same SendGrid account (a staging Nudge) numbers its deliveries too. Our
    idempotency key decides when the event has it; else SendGrid's message id does, once
    the delivery has recorded it (`sg_message_id` is that id, a dot, and more)."""
    key = event.get("idempotency_key")
    if isinstance(key, str) and key:
        return key == row.idempotency_key
    sg_message_id = event.get("sg_message_id")
    if isinstance(sg_message_id, str) and sg_message_id and row.provider_message_id:
        return sg_message_id.split(".", 1)[0] == row.provider_message_id
    return True


async def _sendgrid_delivery(
    deliveries: _Deliveries, event: Mapping[str, Any]
) -> ReportedDelivery | None:
    row = await deliveries.by_id(_delivery_id(event.get("delivery_id")))
    if row is not None and _sendgrid_reports_on(row, event):
        return row
    sg_message_id = event.get("sg_message_id")
    if isinstance(sg_message_id, str) and sg_message_id.split(".", 1)[0]:
        return await deliveries.by_provider_id(sg_message_id.split(".", 1)[0])
    return None


# -- the routes ------------------------------------------------------------------------------

SENDGRID_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "event": {"type": "string", "description": "delivered, bounce, …"},
                            "timestamp": {"type": "integer", "description": "Unix seconds"},
                            "sg_message_id": {"type": "string"},
                            "sg_event_id": {"type": "string"},
                            "delivery_id": {"type": "string", "description": "custom arg"},
                            "idempotency_key": {"type": "string", "description": "custom arg"},
                            "type": {"type": "string", "description": "bounce or blocked"},
                            "reason": {"type": "string"},
                        },
                    },
                }
            }
        },
    }
}
"""SendGrid's Event Webhook batch (the fields Nudge reads; SendGrid sends more)."""

REFUSALS: dict[int | str, dict[str, Any]] = {
    403: {"model": Message, "description": "the signature is missing or wrong"},
}


@router.post(
    "/v1/webhooks/sendgrid",
    response_model=WebhookSummary,
    summary="SendGrid Event Webhook (signed)",
    openapi_extra=SENDGRID_BODY,
    responses={
        **REFUSALS,
        400: {"model": Message, "description": "the body is not a JSON array of objects"},
    },
)
async def sendgrid_events(
    request: Request, settings: SettingsDep, session: SessionDep
) -> WebhookSummary:
    """Delivered, bounced (a hard bounce suppresses the address; a `blocked` one is
    recorded as dropped), dropped, spam report (suppresses), unsubscribe (every email group)
    and group unsubscribe (the campaign's group), and SendGrid's own opens and clicks, each
    recorded once for the delivery named by the `delivery_id` custom arg or SendGrid's
    message id. Events about no delivery of Nudge's are counted and skipped."""
    key = _check_sendgrid_headers(request, settings)
    raw = await request.body()
    if key is not None:
        _verify_sendgrid(key, request, raw)
    events = parse_sendgrid_batch(raw)
    summary = await _record_sendgrid(session, events)
    if summary.unknown or summary.invalid:
        log.info("sendgrid events: %s", summary.model_dump())
    return summary


async def _record_sendgrid(session: AsyncSession, events: list[dict[str, Any]]) -> WebhookSummary:
    counts: Counter[str] = Counter(received=len(events))
    seen: set[str] = set()
    wanted: list[tuple[datetime, int, dict[str, Any], EngagementKind]] = []
    for index, event in enumerate(events):
        at = _unix_time(event.get("timestamp"))
        if at is None or not isinstance(event.get("event"), str):
            counts["invalid"] += 1
            continue
        kind = sendgrid_kind(event)
        event_id = event.get("sg_event_id")
        repeated = isinstance(event_id, str) and event_id in seen
        if isinstance(event_id, str):
            seen.add(event_id)
        if kind is None or repeated:
            counts["ignored"] += 1
            continue
        wanted.append((at, index, event, kind))
    # Oldest first, so a delivery's first open is the one that counts as first.
    wanted.sort(key=lambda item: (item[0], item[1]))

    deliveries = _Deliveries(session, "email")
    ids = (_delivery_id(event.get("delivery_id")) for _, _, event, _ in wanted)
    await deliveries.preload(i for i in ids if i is not None)
    for at, _, event, kind in wanted:
        row = await _sendgrid_delivery(deliveries, event)
        if row is None:
            counts["unknown"] += 1
            continue
        if row.has_recorded(kind):
            # A repeat (SendGrid retrying a batch): recording it again would change nothing,
            # so it costs no transaction.
            counts["recorded"] += 1
            continue
        report = sendgrid_report(event, kind, at=at, sent_at=row.sent_at)
        group = await deliveries.campaign_group(row) if report.campaign_group else None
        recorded = await _record(session, row, report, at=at, source="sendgrid", group=group)
        await session.commit()
        counts["recorded" if recorded else "unknown"] += 1
    return WebhookSummary(**counts)


def _unix_time(value: Any) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        return None


async def _record(
    session: AsyncSession,
    row: ReportedDelivery,
    report: Report,
    *,
    at: datetime,
    source: str,
    group: str | None = None,
) -> bool:
    """Record one report in the session's transaction; False when the delivery is gone."""
    recorded = await record_engagement(
        session,
        Engagement(
            kind=report.kind,
            delivery_id=row.id,
            at=at,
            machine=report.machine,
            key=report.key,
            properties=report.properties,
            source=source,
            subscription_group=group,
        ),
    )
    return recorded.found


TWILIO_STATUS_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "MessageSid": {"type": "string"},
                        "MessageStatus": {
                            "type": "string",
                            "description": "queued, sent, delivered, undelivered, failed, read",
                        },
                        "ErrorCode": {"type": "string", "description": "when it failed"},
                        "AccountSid": {"type": "string"},
                    },
                }
            }
        },
    }
}
"""Twilio's status callback form (the fields Nudge reads; Twilio sends more)."""


@router.post(
    "/v1/webhooks/twilio/status",
    response_model=WebhookSummary,
    summary="Twilio message status callback",
    openapi_extra=TWILIO_STATUS_FORM,
    responses={403: {"model": Message, "description": "X-Twilio-Signature missing or wrong"}},
)
async def twilio_status(
    request: Request, settings: SettingsDep, session: SessionDep
) -> WebhookSummary:
    """`delivered`, `read` (WhatsApp: opened), and `undelivered` or `failed`: a bounce that
    suppresses the number when the error code says the number cannot take SMS (30005,
    30006, 21211, 21614, 21635), an unsubscribe from SMS for 21610 (the recipient texted
    STOP), otherwise dropped. Twilio calls the `StatusCallback` URL the Twilio provider
    gives with each message; its `delivery_id` names the delivery."""
    check_twilio_headers(request, settings)
    raw = await request.body()
    params = parse_qsl(raw.decode("utf-8", errors="replace"), keep_blank_values=True)
    verify_twilio(request, settings, params)
    form = dict(params)
    message_status = (form.get("MessageStatus") or form.get("SmsStatus") or "").strip().lower()
    reports = twilio_reports(message_status, (form.get("ErrorCode") or "").strip())
    if not reports:
        return WebhookSummary(received=1, ignored=1)
    sid = (form.get("MessageSid") or form.get("SmsSid") or "").strip()
    row = await _twilio_delivery(
        _Deliveries(session, "sms"), request.query_params.get("delivery_id"), sid
    )
    if row is None:
        log.info("twilio status %s for no delivery of ours (message %s)", message_status, sid)
        return WebhookSummary(received=1, unknown=1)
    at = datetime.now(UTC)  # Twilio's callback says when it happened by arriving
    for report in reports:
        if not row.has_recorded(report.kind):  # else a repeat, which would change nothing
            await _record(session, row, report, at=at, source="twilio")
    await session.commit()
    return WebhookSummary(received=1, recorded=1)


async def _twilio_delivery(
    deliveries: _Deliveries, delivery_id: str | None, sid: str
) -> ReportedDelivery | None:
    """The delivery the signed URL names, unless Twilio's SID says it is another; else the
    one that recorded this SID."""
    row = await deliveries.by_id(_delivery_id(delivery_id))
    if row is not None and (
        not sid or not row.provider_message_id or row.provider_message_id == sid
    ):
        return row
    return await deliveries.by_provider_id(sid) if sid else None
