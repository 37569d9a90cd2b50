"""activities.channels: which provider serves which channel — built once, from settings."""

from __future__ import annotations

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from activities.channels.base import Provider
from activities.channels.email import list_unsubscribe_hook
from activities.channels.sandbox import SandboxProvider
from activities.channels.webhook import WebhookProvider
from core.config import Settings


def build_providers(
    settings: Settings, *, http: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> dict[str, Provider]:
    """The provider of each channel: `sandbox` and `webhook` always; `email`, `sms` and
    `push` when their provider is configured.

    A send on a channel with no provider fails (final, recorded) naming what to configure.
    Email providers add `List-Unsubscribe` (one-click, RFC 8058) to marketing messages.
    """
    providers: dict[str, Provider] = {
        "sandbox": SandboxProvider(sessions),
        "webhook": WebhookProvider(http, settings.webhook_url, settings.webhook_secrets),
    }
    if settings.email_provider == "smtp":
        from activities.channels.smtp import SmtpProvider

        providers["email"] = SmtpProvider.from_settings(
            settings, extra_headers=list_unsubscribe_hook(settings)
        )
    elif settings.email_provider == "sendgrid":
        from activities.channels.sendgrid import SendGridProvider

        providers["email"] = SendGridProvider.from_settings(
            settings, http, extra_headers=list_unsubscribe_hook(settings)
        )
    if settings.sms_provider == "twilio":
        from activities.channels.twilio import TwilioProvider

        providers["sms"] = TwilioProvider.from_settings(settings, http)
    if settings.push_provider == "fcm":
        from activities.channels.fcm import FcmProvider

        providers["push"] = FcmProvider.from_settings(settings, http, sessions)
    return providers
