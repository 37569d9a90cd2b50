"""activities: what a journey asks the world for — deliver a message, load a profile."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.channels.base import Channel, OutgoingMessage, ProviderError
from core.definition import CampaignDefinition
from core.journey import (
    ACTIVITY_DELIVER,
    ACTIVITY_FAIL_DELIVERY,
    ACTIVITY_LOAD_PROFILE,
    ACTIVITY_RECORD_OUTCOME,
    DeliverRequest,
    DeliverResult,
    DeliveryFailure,
    DeliveryStatus,
    JourneyOutcome,
    Profile,
    ProfileRequest,
)
from core.templates import RenderError, render
from store import deliveries
from store.campaigns import get_version
from store.entries import record_outcome
from store.profiles import get_profile

PROVIDER_UNAVAILABLE = "ProviderUnavailable"


class JourneyActivities:
    """Holds the clients activities need, built once by the worker."""

    def __init__(self, *, sessions: async_sessionmaker[AsyncSession], channels: dict[str, Channel]):
        self._sessions = sessions
        self._channels = channels

    @activity.defn(name=ACTIVITY_LOAD_PROFILE)
    async def load_profile(self, request: ProfileRequest) -> Profile:
        async with self._sessions() as session:
            row = await get_profile(session=session, user_id=request.user_id)
        return Profile(user_id=request.user_id, traits=dict(row.traits) if row else {})

    @activity.defn(name=ACTIVITY_RECORD_OUTCOME)
    async def record_outcome(self, outcome: JourneyOutcome) -> None:
        """Write how the journey ended, so the campaign's funnel counts it."""
        async with self._sessions() as session, session.begin():
            await record_outcome(
                session=session,
                campaign_id=outcome.campaign_id,
                campaign_version=outcome.campaign_version,
                user_id=outcome.user_id,
                workflow_id=outcome.workflow_id,
                run_id=outcome.run_id,
                entry_message_id=outcome.entry_message_id,
                status=outcome.status.value,
                exit_reason=outcome.exit_reason,
                ended_at=outcome.ended_at,
            )

    @activity.defn(name=ACTIVITY_FAIL_DELIVERY)
    async def fail_delivery(self, failure: DeliveryFailure) -> None:
        """Close a send whose retries ran out, so it does not stay `pending` forever. A
        send that succeeded in the meantime stays sent (only pending rows change)."""
        async with self._sessions() as session, session.begin():
            row = await deliveries.get_delivery(
                session=session, idempotency_key=failure.idempotency_key
            )
            if row is not None:
                await deliveries.complete_delivery(
                    session=session,
                    delivery_id=row.id,
                    status=DeliveryStatus.failed,
                    error=failure.reason,
                )

    @activity.defn(name=ACTIVITY_DELIVER)
    async def deliver(self, request: DeliverRequest) -> DeliverResult:
        """Send one message at most once.

        The `deliveries` row is written (and committed) before the provider is called and
        completed after; a retry that finds it finished returns the recorded outcome
        without calling the provider again. A retryable provider error raises (Temporal
        retries with backoff, `Retry-After` honoured); a final one returns `failed`.
        """
        async with _heartbeating():
            return await self._deliver(request)

    async def _deliver(self, request: DeliverRequest) -> DeliverResult:
        async with self._sessions() as session, session.begin():
            row = await deliveries.claim_delivery(session=session, request=request)
        if row.status != DeliveryStatus.pending.value:
            return _result(row, duplicate=True)

        try:
            message = await self._render(request, row.id)
            channel = self._channels.get(request.channel)
            if channel is None:
                known = ", ".join(sorted(self._channels)) or "none"
                raise ProviderError(
                    f"no provider configured for channel {request.channel!r} (configured: {known})",
                    retryable=False,
                )
            receipt = await channel.send(message)
        except (RenderError, ProviderError) as exc:
            retryable = isinstance(exc, ProviderError) and exc.retryable
            async with self._sessions() as session, session.begin():
                if retryable:
                    await deliveries.record_delivery_error(
                        session=session, delivery_id=row.id, error=str(exc)
                    )
                else:
                    await deliveries.complete_delivery(
                        session=session,
                        delivery_id=row.id,
                        status=DeliveryStatus.failed,
                        error=str(exc),
                    )
            if retryable:
                assert isinstance(exc, ProviderError)
                delay = timedelta(seconds=exc.retry_after) if exc.retry_after else None
                raise ApplicationError(
                    str(exc), type=PROVIDER_UNAVAILABLE, next_retry_delay=delay
                ) from exc
            activity.logger.warning("delivery %s failed: %s", row.id, exc)
            return DeliverResult(
                status=DeliveryStatus.failed,
                delivery_id=row.id,
                idempotency_key=request.idempotency_key,
                reason=str(exc),
            )

        async with self._sessions() as session, session.begin():
            await deliveries.complete_delivery(
                session=session,
                delivery_id=row.id,
                status=DeliveryStatus.sent,
                provider_message_id=receipt.provider_message_id,
                provider_response=receipt.response,
            )
        return DeliverResult(
            status=DeliveryStatus.sent,
            delivery_id=row.id,
            idempotency_key=request.idempotency_key,
            provider_message_id=receipt.provider_message_id,
        )

    async def _render(self, request: DeliverRequest, delivery_id: int) -> OutgoingMessage:
        async with self._sessions() as session:
            version = await get_version(
                session=session,
                campaign_id=request.campaign_id,
                version=request.campaign_version,
            )
            profile = await get_profile(session=session, user_id=request.user_id)
        if version is None:
            raise RenderError(
                f"campaign {request.campaign_id!r} version {request.campaign_version} not found"
            )
        try:
            definition = CampaignDefinition.model_validate(version.definition)
        except ValidationError as exc:
            raise RenderError(f"stored definition does not validate: {exc}") from exc
        template = definition.templates.get(request.template)
        if template is None:
            raise RenderError(f"template {request.template!r} not found")
        context: dict[str, Any] = {
            "user_id": request.user_id,
            "traits": dict(profile.traits) if profile else {},
            "event": request.entry_event.as_context(),
            "last_event": (request.last_event or request.entry_event).as_context(),
            "campaign": {
                "id": definition.id,
                "name": definition.name,
                "version": request.campaign_version,
            },
        }
        name = request.template
        return OutgoingMessage(
            idempotency_key=request.idempotency_key,
            delivery_id=delivery_id,
            user_id=request.user_id,
            campaign_id=request.campaign_id,
            campaign_version=request.campaign_version,
            step_id=request.step_id,
            channel=request.channel,
            subject=render(template.subject, context, name=f"{name}.subject")
            if template.subject
            else None,
            body=render(template.body, context, name=f"{name}.body"),
            data={
                k: _render_value(v, context, f"{name}.data.{k}") for k, v in template.data.items()
            },
            html=render(template.html, context, name=f"{name}.html") if template.html else None,
            traits=context["traits"],
        )

    def all(self) -> list[Any]:
        return [self.deliver, self.fail_delivery, self.load_profile, self.record_outcome]


@contextlib.asynccontextmanager
async def _heartbeating() -> AsyncIterator[None]:
    """Heartbeat while the body runs (a provider may take seconds to answer), so Temporal
    notices a worker that died mid-send after the heartbeat timeout and retries elsewhere."""
    timeout = activity.info().heartbeat_timeout
    if not timeout:
        yield
        return

    async def beat() -> None:
        while True:
            activity.heartbeat()
            await asyncio.sleep(timeout.total_seconds() / 3)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _render_value(value: Any, context: dict[str, Any], name: str) -> Any:
    if isinstance(value, str):
        return render(value, context, name=name)
    if isinstance(value, dict):
        return {k: _render_value(v, context, f"{name}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_render_value(v, context, f"{name}[{i}]") for i, v in enumerate(value)]
    return value


def _result(row: Any, *, duplicate: bool) -> DeliverResult:
    return DeliverResult(
        status=DeliveryStatus(row.status),
        delivery_id=row.id,
        idempotency_key=row.idempotency_key,
        provider_message_id=row.provider_message_id,
        reason=row.error,
        duplicate=duplicate,
    )
