"""core: Nudge's settings, one class, read from the environment (NUDGE_*) and `.env`."""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.durations import Duration
from core.schedule import parse_clock, zone_named

DEV_WRITE_KEY = "dev-write-key"
DEV_ADMIN_TOKEN = "dev-admin-token"
DEV_LINK_SECRET = "dev-link-secret-change-me"
DEV_WEBHOOK_SECRET = "whsec_ZGV2LXdlYmhvb2stc2VjcmV0LWNoYW5nZS1tZQ=="


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
    temporal_namespace: str = "default"
    task_queue: str = "nudge"

    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=0, le=65535)
    write_key: str = DEV_WRITE_KEY
    """Segment write key: the HTTP Basic username of every tracking request."""
    admin_token: str = DEV_ADMIN_TOKEN
    """Bearer token for campaign management and journey inspection."""

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
    public_url: str = "http://127.0.0.1:8000"
    """Where users reach the API (unsubscribe links)."""
    link_secret: str = DEV_LINK_SECRET
    """Signs unsubscribe links."""
    unsubscribe_link_days: int = Field(default=60, ge=1)

    relay_interval_seconds: float = Field(default=2.0, gt=0)
    """How often accepted events still pending (Temporal was unreachable) are retried."""
    campaign_refresh_seconds: float = Field(default=5.0, gt=0)
    """How often the router reloads active campaigns written by another API instance."""

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
        for name in ("quiet_hours_start", "quiet_hours_end"):
            value = getattr(self, name)
            if value:
                parse_clock(value)
        zone_named(self.default_timezone)
        return self

    @property
    def webhook_secrets(self) -> list[str]:
        return [s.strip() for s in self.webhook_secret.split(",") if s.strip()]
