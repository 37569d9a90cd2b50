"""api: provider status webhooks — SendGrid's signed Event Webhook and Twilio's status
callbacks, each verified, recorded as engagement of the delivery they report on."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["engagement"])
