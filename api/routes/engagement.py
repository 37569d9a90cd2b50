"""api: engagement — the open pixel and tracked links of emails, and provider status
webhooks (SendGrid's Event Webhook, Twilio's status callbacks)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["engagement"])
