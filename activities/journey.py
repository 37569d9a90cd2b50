"""activities: what a journey asks the world for — may a send go now, deliver it, the
user's profile and local time, and how the journey ended."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, TypeVar, cast

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.channels.base import (
    MAX_MESSAGE_CHARS,
    OutgoingMessage,
    Provider,
    ProviderError,
    bounded,
)
from activities.policy import check_send_policy, read_facts
from core.config import Settings
from core.definition import CampaignDefinition, Channel, Priority, SplitStep
from core.journey import (
    ACTIVITY_CHECK_POLICY,
    ACTIVITY_DELIVER,
    ACTIVITY_FAIL_DELIVERY,
    ACTIVITY_HOLD_OUT,
    ACTIVITY_LOAD_PROFILE,
    ACTIVITY_RECORD_OUTCOME,
    ACTIVITY_RECORD_VARIANT,
    ACTIVITY_RESOLVE_WAIT,
    ACTIVITY_SEND,
    VERSION_UNAVAILABLE,
    DeliverRequest,
    DeliverResult,
    DeliveryFailure,
    DeliveryStatus,
    HoldOut,
    JourneyOutcome,
    PolicyAction,
    PolicyDecision,
    PolicyRequest,
    Profile,
    ProfileRequest,
    SendRequest,
    SendResult,
    VariantTaken,
    WaitRequest,
    WaitResolution,
)
from core.policy import ALLOW
from core.schedule import resolve_local_wait
from core.templates.render import RenderError, message_context, render_message
from core.tracking import tracked_html
from store import deliveries
from store.campaigns import DefinitionCache, VersionUnavailable
from store.entries import record_outcome, record_variant
from store.identities import canonical_user, person_profile
from store.models import Profile as ProfileRow
from store.profiles import get_profile
from store.subscriptions import add_suppression

PROVIDER_UNAVAILABLE = "ProviderUnavailable"

Activity = TypeVar("Activity", bound=Callable[..., Awaitable[Any]])


def final_errors(method: Activity) -> Activity:
    """The activity layer's one mapping of errors no retry can fix to Temporal's final
    failure: the journey's campaign version is missing or no longer validates."""

    @functools.wraps(method)
    async def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return await method(*args, **kwargs)
        except VersionUnavailable as exc:
            raise ApplicationError(str(exc), type=VERSION_UNAVAILABLE, non_retryable=True) from None

    return cast(Activity, run)


class JourneyActivities:
    """Holds the clients activities need, built once by the worker."""

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        providers: dict[str, Provider],
        settings: Settings | None = None,
    ):
        self._sessions = sessions
        self._providers = providers
        self._settings = settings or Settings(_env_file=None)
        self._definitions = DefinitionCache()

    @activity.defn(name=ACTIVITY_RESOLVE_WAIT)
    async def resolve_wait(self, request: WaitRequest) -> WaitResolution:
        """A `wait until` as an instant, from the user's zone (`timezone` trait, else the
        default) and, for "3 days before renewal_date", the date trait — or, when that
        date is missing or gone, the step's `missing`/`past` rule (skip or exit)."""
        async with self._sessions() as session:
            row = await person_profile(session, request.user_id)
        wait = resolve_local_wait(
            now=request.now,
            clock=request.time,
            trait=request.trait,
            offset=request.offset,
            traits=dict(row.traits) if row else {},
            default_timezone=self._settings.default_timezone,
            missing=request.missing,
            past=request.past,
        )
        return WaitResolution(until=wait.until, note=wait.note, outcome=wait.outcome)

    @activity.defn(name=ACTIVITY_CHECK_POLICY)
    @final_errors
    async def check_policy(self, request: PolicyRequest) -> PolicyDecision:
        """May this send go now? Hard bounces, consent, quiet hours and frequency caps, in
        that order (core.policy); a suppression is recorded as a delivery."""
        return await check_send_policy(
            sessions=self._sessions,
            settings=self._settings,
            request=request,
            now=_policy_time(request),
            definition_of=self._definitions.get,
        )

    @activity.defn(name=ACTIVITY_SEND)
    @final_errors
    async def send(self, request: SendRequest) -> SendResult:
        """The send policy, then the delivery, as one activity (journeys since the workflow's
        `PATCH_LEAN`; `check_policy` and `deliver` before): one task, and one read of
        the person where there were two. A retry that finds the delivery row goes straight
        to the delivery: the policy allowed it, and `deliver`'s rules apply from there."""
        async with _heartbeating():
            async with self._sessions() as session:
                facts = await read_facts(session, request, self._definitions.get)
            recorded = facts.recorded
            if recorded is not None and recorded.status != DeliveryStatus.suppressed.value:
                return SendResult(decision=ALLOW, delivery=await self._deliver(request))
            decision = await check_send_policy(
                sessions=self._sessions,
                settings=self._settings,
                request=request,
                now=_policy_time(request),
                definition_of=self._definitions.get,
                facts=facts,
            )
            if decision.action is not PolicyAction.allow:
                return SendResult(decision=decision)
            assert facts.definition is not None
            known = _Known(facts.definition, facts.person[0], facts.profile)
            return SendResult(decision=decision, delivery=await self._deliver(request, known))

    @activity.defn(name=ACTIVITY_LOAD_PROFILE)
    async def load_profile(self, request: ProfileRequest) -> Profile:
        async with self._sessions() as session:
            row = await person_profile(session, request.user_id)
        traits = dict(row.traits) if row else {}
        if request.traits is not None:
            traits = {k: traits[k] for k in request.traits if k in traits}
        return Profile(user_id=request.user_id, traits=traits)

    @activity.defn(name=ACTIVITY_RECORD_OUTCOME)
    async def record_outcome(self, outcome: JourneyOutcome) -> None:
        """Write how the journey ended, so the campaign's funnel counts it."""
        async with self._sessions() as session, session.begin():
            await record_outcome(session=session, outcome=outcome)

    @activity.defn(name=ACTIVITY_RECORD_VARIANT)
    @final_errors
    async def record_variant(self, taken: VariantTaken) -> None:
        """Count the journey as an entrant of the `split` variant it took."""
        async with self._sessions() as session, session.begin():
            definition = await self._definitions.get(
                session, taken.campaign_id, taken.campaign_version
            )
            step = definition.step(taken.step_id)
            names = [v.name for v in step.variants] if isinstance(step, SplitStep) else []
            await record_variant(session=session, taken=taken, names=names)

    @activity.defn(name=ACTIVITY_HOLD_OUT)
    async def hold_out(self, request: HoldOut) -> None:
        """Record a send the holdout is not sent, as `held_out`, for attribution."""
        async with self._sessions() as session, session.begin():
            await deliveries.record_held_out(session=session, send=request.send, at=request.at)

    @activity.defn(name=ACTIVITY_FAIL_DELIVERY)
    async def fail_delivery(self, failure: DeliveryFailure) -> None:
        """Close a send the journey gave up on (its retries ran out), so it does not stay
        `pending` forever. A send that succeeded in the meantime stays sent (only pending
        rows change). Its frequency-cap slot is kept: an attempt may have reached the user."""
        async with self._sessions() as session, session.begin():
            await deliveries.fail_delivery(
                session=session,
                idempotency_key=failure.idempotency_key,
                error=failure.reason,
                release=False,
            )

    @activity.defn(name=ACTIVITY_DELIVER)
    @final_errors
    async def deliver(self, request: DeliverRequest) -> DeliverResult:
        """Send one message at most once.

        The `deliveries` row is written (and committed) before the provider is called and
        completed after; a retry that finds it finished returns the recorded outcome
        without calling the provider again. A retryable provider error raises (Temporal
        retries with backoff, `Retry-After` honoured); a final one returns `failed`.
        """
        async with _heartbeating():
            return await self._deliver(request)

    async def _deliver(self, request: DeliverRequest, known: _Known | None = None) -> DeliverResult:
        if known is None:
            # Before the row: a send on a version that cannot be used is never tried.
            async with self._sessions() as session:
                definition = await self._definitions.get(
                    session, request.campaign_id, request.campaign_version
                )
                # The person's: a journey that began under an anonymous id sends to the
                # address (and names the user, in unsubscribe links) of the person it became.
                person = await canonical_user(session, request.user_id)
                profile = await get_profile(session=session, user_id=person)
        else:
            definition, person, profile = known
        async with self._sessions() as session, session.begin():
            row = await deliveries.claim_delivery(session=session, request=request)
        if row.status != DeliveryStatus.pending.value:
            return _result(row, duplicate=True)

        try:
            traits = dict(profile.traits) if profile else {}
            message = await self._render(request, definition, traits, row.id, person)
            provider = self._providers.get(request.channel)
            if provider is None:
                known = ", ".join(sorted(self._providers)) or "none"
                raise ProviderError(
                    f"no provider configured for channel {request.channel!r} (configured: {known})",
                    retryable=False,
                )
            receipt = await provider.send(message)
        except (RenderError, ProviderError) as exc:
            retryable = isinstance(exc, ProviderError) and exc.retryable
            # Shielded: an activity cancelled meanwhile (its heartbeat timed out, the
            # journey ended) still records the outcome, so a final failure is not left
            # `pending` for a retry to render and fail again, attempt after attempt.
            await asyncio.shield(self._record_error(request, row.id, exc, retryable=retryable))
            if retryable:
                assert isinstance(exc, ProviderError)
                delay = timedelta(seconds=exc.retry_after) if exc.retry_after else None
                # No cause: the provider error's message says it all, and a chained cause
                # (its own message and stack trace again) is what pushed Temporal's failure
                # past its size limit ("Failure exceeds size limit.").
                raise ApplicationError(
                    str(exc), type=PROVIDER_UNAVAILABLE, next_retry_delay=delay
                ) from None
            activity.logger.warning("delivery %s failed: %s", row.id, exc)
            return DeliverResult(
                status=DeliveryStatus.failed,
                delivery_id=row.id,
                idempotency_key=request.idempotency_key,
                reason=bounded(str(exc), MAX_MESSAGE_CHARS),
            )

        async with self._sessions() as session, session.begin():
            await deliveries.complete_delivery(
                session=session,
                delivery_id=row.id,
                status=DeliveryStatus.sent,
                provider_message_id=receipt.provider_message_id,
                provider_response=receipt.response,
                delivered=not provider.reports_delivery,
            )
        return DeliverResult(
            status=DeliveryStatus.sent,
            delivery_id=row.id,
            idempotency_key=request.idempotency_key,
            provider_message_id=receipt.provider_message_id,
        )

    async def _record_error(
        self, request: DeliverRequest, delivery_id: int, exc: Exception, *, retryable: bool
    ) -> None:
        """Keep this attempt's error and the provider's answer on the row (before Temporal
        retries), so an operator reads "attempt 7: webhook answered 503 from …" there."""
        error = bounded(str(exc), MAX_MESSAGE_CHARS)
        answer = _attempt_answer(exc)
        async with self._sessions() as session, session.begin():
            if retryable:
                await deliveries.record_delivery_error(
                    session=session, delivery_id=delivery_id, error=error, provider_response=answer
                )
                return
            # Nothing went out: the provider said no, or there was nothing to send.
            await deliveries.fail_delivery(
                session=session,
                idempotency_key=request.idempotency_key,
                error=error,
                release=True,
                provider_response=answer,
            )
            if isinstance(exc, ProviderError) and exc.bounce:
                await add_suppression(
                    session=session,
                    user_id=await canonical_user(session, request.user_id),
                    channel=request.channel,
                    reason=f"hard bounce: {exc}",
                )

    async def _render(
        self,
        request: DeliverRequest,
        definition: CampaignDefinition,
        traits: dict[str, Any],
        delivery_id: int,
        person: str,
    ) -> OutgoingMessage:
        template = definition.templates.get(request.template)
        if template is None:
            raise RenderError(f"template {request.template!r} not found")
        context = message_context(
            user_id=person,
            traits=traits,
            event=request.entry_event.as_context(),
            last_event=(request.last_event or request.entry_event).as_context(),
            campaign={
                "id": definition.id,
                "name": definition.name,
                "version": request.campaign_version,
            },
            default_timezone=self._settings.default_timezone,
        )
        # A render may take up to RENDER_SECONDS of CPU, and no step of it more (the sandbox
        # refuses what would hold the interpreter in one step): off the event loop, so
        # heartbeats and other activities keep going meanwhile.
        rendered = await asyncio.to_thread(render_message, template, context, name=request.template)
        html = rendered.html
        tracking = definition.tracking
        if html and request.channel == Channel.email:
            # Also with tracking off: it takes the `data-nudge-track` marks out.
            html = tracked_html(
                html,
                secret=self._settings.link_secret,
                public_url=self._settings.public_url,
                delivery_id=delivery_id,
                opens=tracking.opens,
                clicks=tracking.clicks,
            )
        transactional = definition.priority is Priority.transactional
        return OutgoingMessage(
            idempotency_key=request.idempotency_key,
            delivery_id=delivery_id,
            user_id=person,
            campaign_id=request.campaign_id,
            campaign_version=request.campaign_version,
            step_id=request.step_id,
            channel=request.channel,
            subject=rendered.subject,
            body=rendered.body,
            data=rendered.data,
            html=html,
            traits=context["traits"],
            subscription_group=None if transactional else definition.subscription_group,
            priority=definition.priority.value,
        )

    def all(self) -> list[Any]:
        return [
            self.deliver,
            self.fail_delivery,
            self.load_profile,
            self.record_outcome,
            self.resolve_wait,
            self.check_policy,
            self.record_variant,
            self.hold_out,
            self.send,
        ]


class _Known(NamedTuple):
    """What `send` read already and `_deliver` would read again."""

    definition: CampaignDefinition
    person: str
    profile: ProfileRow | None


def _policy_time(request: PolicyRequest) -> datetime:
    """The policy decides at the later of the journey's time and the clock: a time-skipping
    server's days count, and a late retry is never early."""
    now = datetime.now(UTC)
    return max(request.now or now, now)


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


def _attempt_answer(exc: Exception) -> dict[str, Any] | None:
    """What the provider answered to a failed attempt (bounded), with the attempt's time."""
    answer = getattr(exc, "answer", None)
    if not answer:
        return None
    info = activity.info()
    return {**answer, "attempt": info.attempt, "at": datetime.now(UTC).isoformat()}


def _result(row: Any, *, duplicate: bool) -> DeliverResult:
    return DeliverResult(
        status=DeliveryStatus(row.status),
        delivery_id=row.id,
        idempotency_key=row.idempotency_key,
        provider_message_id=row.provider_message_id,
        reason=row.error,
        duplicate=duplicate,
    )
