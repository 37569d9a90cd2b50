"""core: Nudge's settings, one class, read from the environment (NUDGE_*) and `.env`."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.definition import Priority
from core.durations import Duration
from core.schedule import parse_clock, zone_named

DEV_WRITE_KEY = "dev-write-key"
DEV_ADMIN_TOKEN = "dev-admin-token"
DEV_LINK_SECRET = "dev-link-secret-change-me"
DEV_WEBHOOK_SECRET = "whsec_ZGV2LXdlYmhvb2stc2VjcmV0LWNoYW5nZS1tZQ=="
DEV_PAYLOAD_KEYS = "dev:bnVkZ2UtZGV2LXBheWxvYWQta2V5LWNoYW5nZS1tZSE="
DEV_UI_ORIGINS = "http://127.0.0.1:8233,http://localhost:8233"

KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
AES_KEY_BYTES = (16, 24, 32)


@dataclass(frozen=True)
class PayloadKey:
    """One AES-GCM key for Temporal payloads: `id` travels in each payload's metadata so a
    payload names the key that decrypts it."""

    id: str
    secret: bytes = field(repr=False)


def parse_payload_keys(value: str) -> list[PayloadKey]:
    """`id:base64key,id:base64key…`, newest first: the first encrypts, all decrypt.

    Rotation: put a new key first, keep the old ones until no open history (and no
    history you may still read) holds payloads under them.
    """
    keys: list[PayloadKey] = []
    for i, item in enumerate(part.strip() for part in value.split(",")):
        if not item:
            continue
        key_id, sep, encoded = item.partition(":")
        if not sep or not KEY_ID.fullmatch(key_id):
            raise ValueError(
                f"payload key {i + 1}: write it as <id>:<base64 key>, the id of letters, "
                "digits, '.', '_' or '-' (at most 64)"
            )
        try:
            secret = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"payload key {key_id!r}: the key is not base64") from None
        if len(secret) not in AES_KEY_BYTES:
            raise ValueError(
                f"payload key {key_id!r}: an AES key is 16, 24 or 32 bytes, not {len(secret)}"
            )
        if any(k.id == key_id for k in keys):
            raise ValueError(f"payload key {key_id!r} is listed twice")
        keys.append(PayloadKey(key_id, secret))
    if not keys:
        raise ValueError("at least one payload key is needed")
    return keys


class Environment(StrEnum):
    dev = "dev"
    test = "test"
    production = "production"


class CapRule(BaseModel):
    """At most `limit` sends per user within `window`, counting sends of `group` (a
    subscription group) or on `channel`, or every non-transactional send when neither."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(ge=1)
    window: Duration
    group: str | None = None
    channel: str | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="NUDGE_", env_file=".env", extra="ignore", env_ignore_empty=True
    )

    environment: Environment = Environment.dev
    database_url: str = "sqlite+aiosqlite:///.nudge/nudge.db"

    temporal_address: str = "127.0.0.1:7233"
    temporal_port: int | None = Field(default=None, ge=1, le=65535)
    """The port `nudge dev` starts its Temporal dev server on (`--temporal-port` wins).
    Unset: the port of NUDGE_TEMPORAL_ADDRESS when that is set, else 7233."""
    temporal_ui_port: int | None = Field(default=None, ge=1, le=65535)
    """The port of the Temporal Web UI `nudge dev` starts (`--ui-port` wins). Unset: 8233."""
    temporal_namespace: str = "default"
    task_queue: str = "nudge"

    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=0, le=65535)
    write_key: str = DEV_WRITE_KEY
    """Segment write key: the HTTP Basic username of every tracking request."""
    admin_token: str = DEV_ADMIN_TOKEN
    """Bearer token for campaign management and journey inspection."""
    body_timeout_seconds: float = Field(default=10.0, gt=0)
    """A request's whole body must arrive within this long of its headers; a slower one
    gets 408 and the connection is closed."""
    docs_public: bool | None = None
    """Serve /docs, /redoc and /openapi.json to anyone. Unset: yes in dev and test; no in
    production, where /openapi.json needs the admin token and /docs is not served."""

    webhook_url: str | None = None
    """Where the `webhook` channel POSTs messages."""
    webhook_secret: str = DEV_WEBHOOK_SECRET
    """Standard Webhooks signing secret (`whsec_` + base64). Several, comma-separated, to rotate."""
    provider_timeout_seconds: float = Field(default=10.0, gt=0)

    # -- providers: which one serves a channel is configuration ----------------------
    email_provider: Literal["smtp", "sendgrid"] | None = None
    """Serves the `email` channel; unset: sends on `email` fail naming this setting."""
    email_from: str = "Nudge <nudge@localhost>"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_security: Literal["starttls", "tls", "none"] = "starttls"
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_ca_file: str | None = None
    """A CA bundle to trust for the SMTP server's certificate (default: the system's)."""
    sendgrid_url: str = "https://api.sendgrid.com/v3/mail/send"
    sendgrid_api_key: str | None = None

    sms_provider: Literal["twilio"] | None = None
    """Serves the `sms` channel (Twilio's Messages API, or one compatible with it)."""
    sms_from: str | None = None
    twilio_url: str = "https://api.twilio.com"
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = None

    push_provider: Literal["fcm"] | None = None
    """Serves the `push` channel (FCM HTTP v1, or one compatible with it)."""
    fcm_url: str = "https://fcm.googleapis.com"
    fcm_project_id: str | None = None
    fcm_access_token: str | None = None
    """An OAuth 2 bearer token for FCM HTTP v1."""

    # -- user protection --------------------------------------------------------------
    default_timezone: str = "UTC"
    """For users whose profile has no `timezone` trait (an IANA name)."""
    quiet_hours_start: str | None = "21:00"
    quiet_hours_end: str | None = "08:00"
    """Marketing sends inside [start, end) in the user's zone wait for the end. Unset or
    equal: no quiet hours."""
    caps: list[CapRule] = Field(
        default_factory=lambda: [
            CapRule(group="marketing", limit=3, window=timedelta(hours=24)),
            CapRule(channel="sms", limit=1, window=timedelta(hours=24)),
        ]
    )
    """Frequency caps across campaigns, as JSON: each {limit, window} with an optional
    `group` (subscription group) or `channel`. Transactional campaigns are not capped."""
    cap_headroom: dict[Priority, Annotated[int, Field(ge=0, le=10_000)]] = Field(
        default_factory=lambda: {Priority.low: 1}
    )
    """Slots of each cap across campaigns that a priority leaves free for higher ones, as
    JSON ({"low": 1} by default: a low-priority send never takes the last slot of a cap of
    two or more). A priority not named leaves none."""
    public_url: str = "http://127.0.0.1:8000"
    """Where users reach the API (unsubscribe links)."""
    link_secret: str = DEV_LINK_SECRET
    """Signs unsubscribe links, and (under a key derived from it) tracking links."""
    unsubscribe_link_days: int = Field(default=60, ge=1)
    machine_click_seconds: float = Field(default=2.0, ge=0)
    """A click this soon after the message was sent is counted as a link scanner's."""
    machine_open_seconds: float = Field(default=1.0, ge=0)
    """An open this soon after the message was sent is counted as a mail proxy's."""
    sendgrid_webhook_public_key: str | None = None
    """The verification key of SendGrid's signed Event Webhook (base64, as the SendGrid
    console shows it). Unset: the webhook is refused in production, unsigned allowed in dev."""
    temporal_ui_url: str | None = "http://127.0.0.1:8233"
    """Where operators open the Temporal UI: the dashboard links each journey there."""
    dashboard_session_hours: float = Field(default=12.0, gt=0)
    """How long a dashboard login lasts."""

    payload_keys: str = DEV_PAYLOAD_KEYS
    """Encrypts what Nudge puts in Temporal (workflow inputs, signals, activity arguments
    and results, failure messages): `id:base64key`, comma-separated, newest first. The
    first key encrypts; every listed key decrypts (rotation). AES-GCM, 128/192/256-bit."""
    codec_auth: Literal["token", "none"] | None = None
    """Who may use the codec endpoint (`/codec/decode`): `token` (the admin token as a
    bearer token) or `none` (anyone who reaches the API). Unset: `none` in dev and test (the
    local Temporal UI sends no token), `token` in production."""
    codec_cors_origins: str = DEV_UI_ORIGINS
    """Origins of the Temporal UI allowed to call the codec endpoint from a browser."""
    user_id_hash_key: str | None = None
    """Workflow ids and the `NudgeUser` search attribute are not encrypted (Temporal must
    read them). Set, they name users by an HMAC of the user id under this key instead of
    the id; the API and CLI hash for you. Set it before the first journey and never change
    it: a running journey is found by its id."""

    rejected_events_days: int = Field(default=30, ge=1)
    """How long refused ingestion messages are kept for operators (`GET /v1/rejected-events`);
    the hourly housekeeping run forgets older ones."""

    relay_interval_seconds: float = Field(default=2.0, gt=0)
    """How often accepted events still pending (Temporal was unreachable) are retried."""
    ingest_backlog_limit: int | None = Field(default=50_000, ge=0)
    """While this many events (or more) wait in the outbox to be routed, the tracking routes
    answer 429 with `Retry-After` and store nothing of the request, so a relay that routes
    slower than events arrive is not buried. Each API process counts at most once a second.
    0 (or None): no limit."""
    campaign_refresh_seconds: float = Field(default=5.0, gt=0)
    """How often the router reloads active campaigns written by another API instance."""
    relay_concurrency: int = Field(default=32, ge=1, le=256)
    """How many users' events the relay routes side by side (each user's in order)."""
    date_lookback_hours: float = Field(default=24.0, gt=0, le=24 * 14)
    """How late a date entry's moment (a birthday at 09:00 local) may still be greeted: each
    minute's sweep looks this far back, so after an outage the next sweep catches up (a
    late greeting is better than none) and a user who gets the trait after today's moment
    is still greeted. Each (campaign, user, occurrence) is greeted once whatever it is."""

    trigger_token: str | None = None
    """A bearer token that may post external triggers (`POST /v1/triggers/{name}`) and
    nothing else: for the service that watches the weather or the prices. The admin token
    may post them too."""
    fanout_rate_per_second: float = Field(default=500.0, gt=0)
    """At most this many journeys started per second by one fan-out (a trigger's or a
    schedule's audience), so a 100,000-user broadcast does not swamp Temporal or the
    providers."""
    fanout_page_size: int = Field(default=500, ge=1, le=10_000)
    """Users per fan-out page: one activity call, heartbeating as it goes."""
    simulation_concurrency: int = Field(default=2, ge=1, le=64)
    """Rehearsals (`POST /v1/campaigns/{id}/simulate`) one API process runs at once, each a
    process with a Temporal test server of its own; more wait for a turn."""
    simulation_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    """How long a rehearsal over the API may take, its wait for a turn included: then 504,
    and its process and test server are ended."""
    workflow_cache_size: int = Field(default=1000, ge=0)
    """How many workflows one worker process keeps in memory (Temporal's
    `max_cached_workflows`; its default, 1000). The worker's RSS is bounded by this, not by
    the number of journeys: a waiting journey lives in Temporal, and one evicted from the
    cache is replayed from its history when its timer fires or an event reaches it. 0
    caches none (every task replays)."""

    @model_validator(mode="after")
    def _refuse_placeholders(self) -> Settings:
        if self.environment is Environment.production:
            # An empty value is as public as the dev one (`NUDGE_WRITE_KEY=` in a .env).
            if self.write_key.strip() in ("", DEV_WRITE_KEY):
                raise ValueError("NUDGE_WRITE_KEY must be set to a secret in production")
            if self.admin_token.strip() in ("", DEV_ADMIN_TOKEN):
                raise ValueError("NUDGE_ADMIN_TOKEN must be set to a secret in production")
            if not self.webhook_secrets or DEV_WEBHOOK_SECRET in self.webhook_secrets:
                raise ValueError("NUDGE_WEBHOOK_SECRET must be set to a secret in production")
            if self.link_secret.strip() in ("", DEV_LINK_SECRET):
                raise ValueError("NUDGE_LINK_SECRET must be set to a secret in production")
            if DEV_PAYLOAD_KEYS.partition(":")[2] in self.payload_keys:
                raise ValueError("NUDGE_PAYLOAD_KEYS must be set to your own keys in production")
        parse_payload_keys(self.payload_keys)
        for name in ("quiet_hours_start", "quiet_hours_end"):
            value = getattr(self, name)
            if value:
                parse_clock(value)
        zone_named(self.default_timezone)
        return self

    @property
    def payload_key_list(self) -> list[PayloadKey]:
        return parse_payload_keys(self.payload_keys)

    @property
    def user_secret(self) -> bytes | None:
        return self.user_id_hash_key.encode() if self.user_id_hash_key else None

    @property
    def codec_requires_token(self) -> bool:
        if self.codec_auth is None:
            return self.environment is Environment.production
        return self.codec_auth == "token"

    @property
    def codec_origins(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.codec_cors_origins.split(",") if o.strip()]

    @property
    def docs_are_public(self) -> bool:
        if self.docs_public is None:
            return self.environment is not Environment.production
        return self.docs_public

    @property
    def webhook_secrets(self) -> list[str]:
        return [s.strip() for s in self.webhook_secret.split(",") if s.strip()]
