"""core: what goes in and out of a journey — workflow input, state, activity requests."""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from core.definition import JourneyPlan
from core.events import JourneyEvent
from core.schedule import WaitOutcome

MAX_STEP_RECORDS = 200
"""Step records kept in state; older ones are dropped (the history has them all)."""
MAX_SEEN_EVENT_IDS = 1000
"""Event ids remembered for deduplication; the store's unique messageId catches older ones."""
MAX_STEPS_PER_JOURNEY = 10_000
"""The interpreter's bound: a journey that executes more steps than this (across all its
runs) ends as failed."""
MAX_RECENT_EVENTS = 50
"""Events kept for a `wait_for` that has not started yet (see `JourneyState.recent_events`)."""


def user_key(user_id: str, secret: bytes | None = None) -> str:
    """How a user is named where Temporal can read it — workflow ids and the `NudgeUser`
    search attribute, which the payload codec cannot encrypt: the id itself, or with
    `secret` (NUDGE_USER_ID_HASH_KEY) an HMAC of it, stable for as long as the key is."""
    if secret is None:
        return user_id
    return "h-" + hmac.new(secret, user_id.encode(), hashlib.sha256).hexdigest()[:40]


def journey_id(campaign_id: str, user_id: str, secret: bytes | None = None) -> str:
    """The workflow id of a (campaign, user) journey: a business key, one at a time."""
    return f"journey/{campaign_id}/{user_key(user_id, secret)}"


def idempotency_key(workflow_id: str, entry_message_id: str, step_id: str, visit: int) -> str:
    """Same on every retry and replay of one send; different for a deliberate second send.

    The entry event's id tells apart two journeys of the same user through the same campaign
    (re-entry), the visit count tells apart two passes through the same step.
    """
    raw = f"{workflow_id}\x1f{entry_message_id}\x1f{step_id}\x1f{visit}"
    return "nudge_" + hashlib.sha256(raw.encode()).hexdigest()[:40]


class JourneyStatus(StrEnum):
    running = "running"
    completed = "completed"
    """Reached the end of the graph (a step with no next). Journeys that reached an `exit`
    step before patch `exit-step-exited-v1` ended `completed` too."""
    converted = "converted"
    """A goal event arrived."""
    exited = "exited"
    """An exit event arrived, an `exit` step was reached, or an operator ended it."""
    failed = "failed"
    """A send failed with `on_failure: exit`, an activity the journey needed failed for good
    (the policy, the profile, a local time; `exit_reason` says which and why), or the step
    bound was hit."""


class StepRecord(BaseModel):
    step_id: str
    type: str
    visit: int
    at: datetime
    outcome: str = ""


class JourneyState(BaseModel):
    """Everything a journey knows; carried whole across continue-as-new."""

    status: JourneyStatus = JourneyStatus.running
    current_step: str | None = None
    step_started_at: datetime | None = None
    waiting_for: str | None = None
    visits: dict[str, int] = Field(default_factory=dict)
    history: list[StepRecord] = Field(default_factory=list)
    seen_event_ids: list[str] = Field(default_factory=list)
    last_event: JourneyEvent | None = None
    matched_event: JourneyEvent | None = None
    recent_events: list[JourneyEvent] = Field(default_factory=list)
    """Events a `wait_for` reacts to that arrived since the journey last finished waiting
    (e.g. during a send): the next `wait_for` matches them first, so an event sent in the
    same batch as the entry event is not missed."""
    sends: int = 0
    wait_until: datetime | None = None
    """A `wait until` step's resolved instant (kept across continue-as-new)."""
    deferred_until: datetime | None = None
    """When a send held back by the send policy (quiet hours) will be asked about again."""
    events_received: int = 0
    steps_executed: int = 0
    runs: int = 1
    exit_reason: str | None = None
    ended_at: datetime | None = None
    holdout: bool = False
    """In the campaign's holdout: goes through the steps, is sent nothing."""
    variant: str | None = None
    """The `split` variant the journey took last (None before any split)."""


class JourneyInput(BaseModel):
    campaign_id: str
    campaign_version: int
    user_id: str
    plan: JourneyPlan
    entry_event: JourneyEvent
    state: JourneyState | None = None
    """Set when a journey continues as new."""
    history_limit: int | None = None
    """Continue as new past this many history events (Temporal's suggestion also counts)."""


class JourneyResult(BaseModel):
    status: JourneyStatus
    exit_reason: str | None = None
    steps_executed: int = 0
    sends: int = 0


class ExitRequest(BaseModel):
    reason: str = Field(min_length=1, max_length=500)
    step: str | None = Field(None, max_length=63)
    """Only if the journey is at this step still (a bulk exit at one step): checked by the
    update's validator, so a journey that moved on since it was looked at stays."""


NOT_AT_STEP = "not at step"
"""How the exit update's validator begins when the journey is not at the step named."""


class JourneyPosition(BaseModel):
    """Where a journey stands, as a migration needs to know it (the `position` query): the
    version it runs, its step and whether that step may be left now."""

    campaign_version: int
    status: JourneyStatus
    current_step: str | None = None
    step_type: str | None = None
    """`wait`, `send`, …; None once the journey has no current step."""
    deferred_until: datetime | None = None
    """Set while a send is held back by the send policy (quiet hours): mid-send."""
    migrating: bool = False
    """A migration was accepted and is being applied."""


class MigrateRequest(BaseModel):
    """Move a waiting journey to another version of its campaign (the `migrate` update).

    `steps` maps the journey's step (old id) to where it lands (new id). A step absent from
    `steps` lands on the step of the same id in `plan` when that step has the same type
    (an unchanged wait keeps its name across versions); otherwise the journey stays.
    """

    from_version: int
    """The version the journey must run now: a journey moved already is not moved twice."""
    to_version: int
    plan: JourneyPlan
    """The new version's step graph, as a journey started on it gets it."""
    steps: dict[str, str] = Field(default_factory=dict)
    by: str | None = Field(default=None, max_length=200)
    """Who asked (an operator's name), for the journey's history."""
    reason: str | None = Field(default=None, max_length=500)


class MigrateResult(BaseModel):
    """Where a migrated journey went, and its state once moved."""

    from_version: int
    from_step: str
    to_version: int
    to_step: str
    state: JourneyState


class MigrationRefused(ValueError):
    """Why a journey stays where it is: the `migrate` update's validator raises it (so the
    update is rejected with this message) and the dry run reports it."""


MOVABLE_TYPES = ("wait", "wait_for")
"""The only steps a journey is moved from: waiting is a safe point. A send (in flight, or
deferred by quiet hours), a branch or a split is never interrupted."""


def migration_target(
    position: JourneyPosition,
    *,
    from_version: int,
    to_version: int,
    plan: JourneyPlan,
    steps: dict[str, str],
) -> str:
    """The step of `plan` a journey at `position` lands on when migrated from `from_version`
    to `to_version` with the mapping `steps`; `MigrationRefused` saying why it stays.

    The one rule both the dry run and the journey's own validator apply, so what the dry
    run promises is what the migration does (bar journeys that moved on meanwhile).
    """
    if position.status is not JourneyStatus.running:
        raise MigrationRefused(f"journey already ended: {position.status.value}")
    if position.migrating:
        raise MigrationRefused("a migration of this journey is under way")
    if position.campaign_version != from_version:
        raise MigrationRefused(
            f"journey runs version {position.campaign_version}, not {from_version}"
        )
    if to_version == from_version:
        raise MigrationRefused(f"journey runs version {to_version} already")
    step = position.current_step
    if step is None or position.step_type is None:
        raise MigrationRefused("journey has no current step")
    if position.step_type not in MOVABLE_TYPES or position.deferred_until is not None:
        sending = position.step_type == "send" or position.deferred_until is not None
        what = "mid-send" if sending else f"at a {position.step_type}"
        raise MigrationRefused(
            f"journey is {what} (step {step!r}): only journeys waiting at a wait or "
            "wait_for step are moved"
        )
    target = steps.get(step)
    if target is None:
        same = next((s for s in plan.steps if s.id == step), None)
        if same is None or same.type != position.step_type:
            raise MigrationRefused(
                f"step {step!r} has no mapping, and version {to_version} has no "
                f"{position.step_type} step of that id: map it (--step {step}=NEW)"
            )
        return step
    if not any(s.id == target for s in plan.steps):
        raise MigrationRefused(f"version {to_version} has no step {target!r}")
    return target


def mapping_problems(
    steps: dict[str, str],
    *,
    old: JourneyPlan,
    new: JourneyPlan,
    from_version: int,
    to_version: int,
) -> list[str]:
    """What is wrong with a migration's step mapping, one line each naming the entry: an old
    step the version does not have or that is no waiting step, a new step it does not have."""
    problems = []
    old_steps = {s.id: s.type for s in old.steps}
    new_steps = {s.id for s in new.steps}
    for source, target in steps.items():
        kind = old_steps.get(source)
        if kind is None:
            problems.append(f"steps.{source}: version {from_version} has no step {source!r}")
        elif kind not in MOVABLE_TYPES:
            problems.append(
                f"steps.{source}: step {source!r} is a {kind}: only wait and wait_for steps "
                "are migrated from"
            )
        if target not in new_steps:
            problems.append(f"steps.{source}: version {to_version} has no step {target!r}")
    return problems


class Send(BaseModel):
    """One send of one journey: which step on which visit, to whom, under which key. What the
    send policy is asked about and `deliver` carries out, and the delivery row records."""

    idempotency_key: str
    workflow_id: str
    campaign_id: str
    campaign_version: int
    step_id: str
    visit: int
    channel: str
    user_id: str
    variant: str | None = None
    """The journey's group when it sends: `holdout`, the `split` variant it took, or None."""


class DeliverRequest(Send):
    template: str
    entry_event: JourneyEvent
    last_event: JourneyEvent | None = None


class DeliveryStatus(StrEnum):
    pending = "pending"
    """Row written, provider not (yet) known to have accepted."""
    sent = "sent"
    failed = "failed"
    suppressed = "suppressed"
    """The send policy said no (unsubscribed, capped, bounced): recorded with its reason."""
    held_out = "held_out"
    """Not sent because the journey is in the campaign's holdout; recorded at the moment it
    would have gone, for attribution."""


class DeliverResult(BaseModel):
    status: DeliveryStatus
    delivery_id: int
    idempotency_key: str
    provider_message_id: str | None = None
    reason: str | None = None
    duplicate: bool = False
    """True when an earlier attempt had already completed this send."""


class DeliveryFailure(BaseModel):
    """A send the journey gave up on (retries ran out): its row is closed as failed."""

    idempotency_key: str
    reason: str


class VariantTaken(BaseModel):
    """A journey took a variant at a `split`: counted as the variant's entrant."""

    workflow_id: str
    run_id: str
    campaign_id: str
    campaign_version: int
    user_id: str
    entry_message_id: str
    step_id: str
    variant: str
    at: datetime


class HoldOut(BaseModel):
    """A send a journey in the holdout is not sent, recorded for attribution."""

    send: Send
    at: datetime


class JourneyOutcome(BaseModel):
    """How a journey ended, for the campaign's funnel in the store."""

    workflow_id: str
    run_id: str
    campaign_id: str
    campaign_version: int
    user_id: str
    entry_message_id: str
    status: JourneyStatus
    exit_reason: str | None = None
    ended_at: datetime
    variant: str | None = None
    """`holdout` or the journey's last `split` variant (None before either existed)."""
    goal_event: JourneyEvent | None = None
    """The goal that converted it: attributed to the campaign's last message within its
    attribution window, or recorded as reached without one."""


class PolicyRequest(Send):
    """Before a send: may this message go to this user now?"""

    now: datetime | None = None
    """The journey's time when it asked. The policy decides at the later of this and the
    clock, so a time-skipping test server's days count, and a late retry is never early."""
    attempt: int = 1
    """Which time the journey asks for this send (each deferral asks again)."""
    max_attempts: int | None = None
    """The journey gives up deferring after this many asks: a deferral at the last one is
    recorded as a suppression instead, so it counts like any other. None: never."""


class PolicyAction(StrEnum):
    allow = "allow"
    suppress = "suppress"
    """Not sent, and never will be for this visit (unsubscribed, capped, bounced)."""
    defer = "defer"
    """Not now (quiet hours): ask again at `defer_until`."""


class PolicyDecision(BaseModel):
    action: PolicyAction
    reason: str | None = None
    defer_until: datetime | None = None


class SendRequest(DeliverRequest, PolicyRequest):
    """One `send` activity: the send policy, then (when it allows) the delivery — what
    `check_policy` and `deliver` did as two activities before it."""


class SendResult(BaseModel):
    decision: PolicyDecision
    """What the policy said; `allow` when the delivery was tried (`delivery`)."""
    delivery: DeliverResult | None = None


class WaitRequest(BaseModel):
    """Resolve a `wait until` to an instant, from the user's profile (zone, date traits)."""

    user_id: str
    step_id: str
    time: str
    trait: str | None = None
    offset: str | None = None
    now: datetime
    missing: str | None = None
    """What a missing date does (`skip`, `exit`); None: requests made before it existed,
    which move on at once."""
    past: str | None = None
    """What a moment already gone does (`skip`, `exit`, `next_anniversary`); None: as
    `missing`."""


class WaitResolution(BaseModel):
    until: datetime
    """UTC; in the past when the moment has gone (the journey moves on at once)."""
    note: str
    """How it was resolved, for operators: "10:00 Europe/Paris"; with `skip` or `exit`,
    why."""
    outcome: WaitOutcome = WaitOutcome.wait
    """`wait` until `until`; `skip` to the next step at once; `exit` the journey. Results
    recorded before it existed read as `wait`."""


class ProfileRequest(BaseModel):
    user_id: str
    traits: list[str] | None = None
    """Only these traits come back (so the history holds no more of the profile than the
    journey reads); None: all of them (journeys started before this field existed)."""


class Profile(BaseModel):
    user_id: str
    traits: dict[str, Any] = Field(default_factory=dict)


WORKFLOW_NAME = "journey"
SIGNAL_EVENT = "event"
SIGNAL_RECHECK = "recheck-policy"
"""Ask a send deferred by the send policy (quiet hours) again now, not at the deferral's end:
the policy's settings changed (`nudge dev` sends it to every running journey at start)."""
QUERY_STATE = "state"
UPDATE_EXIT = "exit"
UPDATE_MIGRATE = "migrate"
QUERY_POSITION = "position"
ACTIVITY_DELIVER = "deliver"
ACTIVITY_LOAD_PROFILE = "load_profile"
ACTIVITY_RECORD_OUTCOME = "record_outcome"
ACTIVITY_FAIL_DELIVERY = "fail_delivery"
ACTIVITY_CHECK_POLICY = "check_policy"
ACTIVITY_RESOLVE_WAIT = "resolve_wait"
ACTIVITY_RECORD_VARIANT = "record_variant"
ACTIVITY_HOLD_OUT = "hold_out"
ACTIVITY_SEND = "send"
VERSION_UNAVAILABLE = "CampaignVersionUnavailable"
"""The type of an activity's final failure when the journey's campaign version is missing
or no longer validates: nothing of that version can ever be sent."""
