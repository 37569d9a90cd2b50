"""core: what a fan-out is — one external trigger's occurrence, or one firing of a
scheduled broadcast, reaching a campaign's audience: the workflow's input, its cursor,
and what one page of the audience asks of the activity that starts the journeys."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from core.definition import CampaignStatus, JourneyPlan
from core.events import JourneyEvent
from core.segments import Audience

WORKFLOW_FANOUT = "fan-out"
ACTIVITY_START_PAGE = "start_audience_page"
ACTIVITY_DUE_BROADCASTS = "due_broadcasts"

BROADCAST_LOOKBACK_MINUTES = 15
"""A scheduled broadcast is started by the first clock run within this long after it
fired: a clock held up a few minutes (a deploy, a busy server) misses nothing. A broadcast
missed by more is not sent late: a Monday-morning digest on Monday night would surprise."""

PAGES_PER_RUN = 40
"""A fan-out continues as new after this many pages: its history stays small whatever the
audience (a page is a few events)."""


def occurrence_message_id(occurrence: str, user_id: str) -> str:
    """The entry message id of one user's journey from one occurrence: the same on every
    retry, so a journey is started once per (campaign, occurrence, user)."""
    digest = hashlib.sha256(f"{occurrence}\x1f{user_id}".encode()).hexdigest()[:32]
    return f"{occurrence}/{digest}"


def trigger_occurrence(name: str, trigger_id: str) -> str:
    return f"trigger/{name}/{trigger_id}"


def fanout_workflow_id(occurrence: str) -> str:
    return f"fanout/{occurrence}"


class FanOutTarget(BaseModel):
    """One campaign the occurrence starts journeys of, as it was when it fired."""

    campaign_id: str
    campaign_version: int
    campaign_name: str
    plan: JourneyPlan
    audience: Audience | None = None
    local_time: datetime | None = None
    """A broadcast at each user's local time: the wall time (naive) each user's journey
    waits for in their own zone; None: start now."""


class FanOutCursor(BaseModel):
    target: int = 0
    """Which target is being paged."""
    after: str | None = None
    """The last user id handled (users go in id order)."""
    pages: int = 0
    started: int = 0
    """Journeys started so far, all targets together."""
    already: int = 0
    """Users whose journey for this occurrence had started before (a retry, a repeat)."""
    skipped: int = 0
    """Users of the page the audience or the re-entry rules left out."""
    halted: dict[str, str] = Field(default_factory=dict)
    """Targets whose fan-out stopped before their audience's end, campaign id → why: the
    status the campaign was found in (`paused`, `archived`). See `halt_reason`."""


class FanOutInput(BaseModel):
    occurrence: str
    """`trigger/{name}/{id}` or `schedule/{campaign}/{time}`: names the journeys' entries."""
    entry_name: str
    properties: dict[str, Any] = Field(default_factory=dict)
    """The trigger's properties: the entry event's, for conditions and templates."""
    fired_at: datetime
    targets: list[FanOutTarget]
    cursor: FanOutCursor = Field(default_factory=FanOutCursor)
    pages_per_run: int = PAGES_PER_RUN
    """Continue as new after this many pages."""


class PageRequest(BaseModel):
    occurrence: str
    entry_name: str
    properties: dict[str, Any] = Field(default_factory=dict)
    fired_at: datetime
    target: FanOutTarget
    after: str | None = None


class PageResult(BaseModel):
    after: str | None
    """The last user id of the page; None when the audience is exhausted."""
    started: int = 0
    """Journeys entered: not a start that joined the user's journey already running."""
    already: int = 0
    skipped: int = 0
    """Users the audience or the re-entry rules left out (a user in a running journey of
    the campaign among them, whose start joined that journey)."""
    halted: str | None = None
    """The campaign was found not active (its status, `paused` or `archived`): the page
    started no journey after that, and `after` is None — its target is done. `skipped`
    still counts the users of the page the audience or the re-entry rules left out, as
    judged before its first chunk."""


def halt_reason(status: str | None) -> str | None:
    """Why a fan-out stops entering users of a campaign in this status: the status itself
    when the campaign is not active, None when it goes on.

    A broadcast is a moment: once a fan-out finds its campaign paused or archived it stops
    for good, and resuming the campaign does not resume the broadcast (its users would
    enter late, whenever an operator happened to resume). A pause and a resume between
    two looks go unseen. Publishing a new version leaves the campaign active: the fan-out
    goes on with the version it fired with.

    None (no campaign row) goes on too: campaigns are never deleted, and the target
    carries the plan it fired with."""
    if status is None or status == CampaignStatus.active.value:
        return None
    return str(status)


class BroadcastsDue(BaseModel):
    started: list[str] = Field(default_factory=list)
    """The fan-out workflow ids started (or found started) for the occurrences due."""


def entry_event(request: PageRequest | FanOutInput, user_id: str) -> JourneyEvent:
    return JourneyEvent(
        message_id=occurrence_message_id(request.occurrence, user_id),
        name=request.entry_name,
        timestamp=request.fired_at,
        properties=dict(request.properties),
    )
