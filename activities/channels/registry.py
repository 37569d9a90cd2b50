"""activities.channels: which provider serves which channel — built once, from settings."""

from __future__ import annotations

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from activities.channels.base import Channel
from activities.channels.sandbox import SandboxChannel
from activities.channels.webhook import WebhookChannel
from activities.policy import list_unsubscribe_hook
from core.config import Settings


def build_channels(
    settings: Settings, *, http: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> dict[str, Channel]:
    """`sandbox` and `webhook` always; `email`, `sms` and `push` when a provider is set.

    A send on a channel with no provider fails (final, recorded) naming what to configure.
    Email channels add `List-Unsubscribe` (one-click, RFC 8058) to marketing messages.
    """
    channels: dict[str, Channel] = {
        "sandbox": SandboxChannel(sessions),
        "webhook": WebhookChannel(http, settings.webhook_url, settings.webhook_secrets),
    }
    if settings.email_provider == "smtp":
        from activities.channels.smtp import SmtpChannel

        channels["email"] = SmtpChannel.from_settings(
            settings, extra_headers=list_unsubscribe_hook(settings)
        )
    elif settings.email_provider == "sendgrid":
        from activities.channels.sendgrid import SendGridChannel

        channels["email"] = SendGridChannel.from_settings(
            settings, http, extra_headers=list_unsubscribe_hook(settings)
        )
    if settings.sms_provider == "twilio":
        from activities.channels.twilio import TwilioChannel

        channels["sms"] = TwilioChannel.from_settings(settings, http)
    if settings.push_provider == "fcm":
        from activities.channels.fcm import FcmChannel

        channels["push"] = FcmChannel.from_settings(settings, http, sessions)
    return channels
