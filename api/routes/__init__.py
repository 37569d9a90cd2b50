"""api: the routers, one per resource, collected here."""

from fastapi import APIRouter

from api.routes import (
    broadcasts,
    campaigns,
    codec,
    dashboard,
    engagement,
    health,
    journeys,
    messages,
    migrations,
    operations,
    preview,
    provider_webhooks,
    rejected,
    segments,
    simulate,
    subscriptions,
    tracking,
    triggers,
    users,
)

api_router = APIRouter()
api_router.include_router(tracking.router)
api_router.include_router(campaigns.router)
api_router.include_router(broadcasts.router)
api_router.include_router(segments.router)
api_router.include_router(preview.router)
api_router.include_router(journeys.router)
api_router.include_router(messages.router)
api_router.include_router(rejected.router)
api_router.include_router(subscriptions.router)
api_router.include_router(triggers.router)
api_router.include_router(simulate.router)
api_router.include_router(migrations.router)
api_router.include_router(users.router)
api_router.include_router(operations.router)
api_router.include_router(health.router)
api_router.include_router(codec.router)
api_router.include_router(engagement.router)
api_router.include_router(provider_webhooks.router)
api_router.include_router(dashboard.router)
