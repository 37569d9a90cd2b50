"""core: what goes in and out of the operator workflows — a campaign's bulk exit (with its
progress), the retry of a failed send, the migration of waiting journeys to a newer version,
and the re-check of the send policy by running journeys."""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field

from core.definition import SLUG
from core.journey import DeliverResult

WORKFLOW_BULK_EXIT = "campaign_exit"
WORKFLOW_RETRY_DELIVERY = "delivery_retry"
ACTIVITY_EXIT_PAGE = "exit_page"
ACTIVITY_PREPARE_RETRY = "prepare_retry"
QUERY_PROGRESS = "progress"

RETRY_REFUSED = "RetryRefused"
"""The failure type of a retry that may not go (the send is no longer failed, the user
unsubscribed, its entry event is gone): the API answers 409 with its message."""

REQUEST_ID = r"^[A-Za-z0-9_.-]{1,64}$"

OperationRequestId = Annotated[
    str | None,
    Field(
        pattern=REQUEST_ID,
        description="names the operation; the same id again finds it instead of a second one",
    ),
]
"""An operator request's own id (optional): how a client retries it safely."""

JourneysPerPage = Annotated[
    int, Field(ge=1, le=1000, description="journeys per activity call (one heartbeat each)")
]
MAX_ERRORS_KEPT = 5


def bulk_exit_id(campaign_id: str, request_id: str) -> str:
    """The workflow id of one bulk exit: the same request id names the same operation, so
    a request sent twice starts it once."""
    return f"campaign-exit/{campaign_id}/{request_id}"


def retry_workflow_id(delivery_id: int, retry: int) -> str:
    """The workflow id of the `retry`-th retry of a delivery: one at a time per number."""
    return f"delivery-retry/{delivery_id}/{retry}"


class BulkExitRequest(BaseModel):
    """`POST /v1/campaigns/{id}/exit`: end the campaign's running journeys."""

    # A misspelt `step` would otherwise exit every running journey of the campaign.
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=400, description="recorded on each journey")
    step: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        description="only journeys at this step (their `current_step`)",
    )
    request_id: OperationRequestId = None
    page_size: JourneysPerPage = 100


class JourneysTold(BaseModel):
    """How far an operation over running journeys is (a bulk exit, a policy re-check): rows
    of the membership index seen, what each got, the keyset cursor, the last failures."""

    seen: int = 0
    skipped: int = 0
    failed: int = 0
    """Temporal did not take it (no worker answered in time, …): see `errors`."""
    pages: int = 0
    after_user: str | None = None
    after_id: int | None = None
    """The keyset cursor: the last journey row handled, by (user id, row id)."""
    done: bool = False
    errors: list[str] = Field(default_factory=list)
    """The last few failures, for the operator."""

    def add(self, page: Self) -> None:
        """A page's counts added up, its cursor taken."""
        self.seen += page.seen
        self.skipped += page.skipped
        self.failed += page.failed
        self.after_user, self.after_id = page.after_user, page.after_id
        self.errors = [*self.errors, *page.errors][-MAX_ERRORS_KEPT:]


class ExitProgress(JourneysTold):
    """How far a bulk exit is."""

    exited: int = 0
    skipped: int = 0
    """Already ended (their row not yet updated), or not at the step asked for."""
    not_at_step: int = 0
    """Of `skipped`: running, but at another step than the one asked for."""

    def add(self, page: Self) -> None:
        super().add(page)
        self.exited += page.exited
        self.not_at_step += page.not_at_step


class BulkExitInput(BaseModel):
    campaign_id: str
    reason: str
    step: str | None = None
    request_id: str
    page_size: int = 100
    pages_per_run: int = 50
    """Continue as new after this many pages: the history stays a few hundred events."""
    progress: ExitProgress = Field(default_factory=ExitProgress)
    """Carried across continue-as-new."""


class ExitPage(BaseModel):
    """One activity call: exit up to `page_size` running journeys after the cursor."""

    campaign_id: str
    reason: str
    step: str | None = None
    after_user: str | None = None
    after_id: int | None = None
    page_size: int = 100


class RetryInput(BaseModel):
    delivery_id: int
    """The failed send retried (the original, never a retry's row)."""
    retry: int = Field(ge=1)
    """Which retry of it this is: the new send's idempotency key derives from it."""


class RetryOutcome(BaseModel):
    delivery_id: int
    retry: int
    result: DeliverResult
    """The new send's outcome (its own delivery row)."""


# -- migrating waiting journeys to a newer version (the report and its workflow) -----------

WORKFLOW_MIGRATION = "campaign_migration"
ACTIVITY_MIGRATE_PAGE = "migrate_page"
WORKFLOW_MIGRATION_DRY_RUN = "campaign_migration_dry_run"
ACTIVITY_MIGRATE_PAGE_DRY_RUN = "migrate_page_dry_run"
"""A dry run's own names: a worker of a Nudge from before dry runs were paged knows
neither, so it refuses one ("not registered") rather than migrate for real."""
MIGRATION_REFUSED = "MigrationRefused"
"""The failure type of a migration that cannot go on (its target version is gone or no
longer validates): the operation ends failed with its message."""
MAX_LISTED = 200
"""Journeys listed one by one in a report (the counts cover them all)."""


def migration_id(campaign_id: str, request_id: str) -> str:
    """The workflow id of one migration: the same request id names the same operation, so
    a request sent twice (a client's retry after a timeout) migrates once."""
    return f"campaign-migration/{campaign_id}/{request_id}"


class StepReport(BaseModel):
    """The journeys found at one step of the old version, and what becomes of them."""

    step: str | None = Field(description="the step they wait at; null: no step (ended, …)")
    type: str | None = None
    journeys: int = 0
    lands_on: str | None = Field(None, description="the new version's step they move to")
    movable: int = Field(0, description="journeys that can move (dry run) or were asked to")
    moved: int = 0
    stays: dict[str, int] = Field(
        default_factory=dict, description="why the others stay: reason → journeys"
    )


class JourneyMoved(BaseModel):
    workflow_id: str
    from_step: str
    to_step: str


class JourneyStays(BaseModel):
    workflow_id: str
    step: str | None = None
    reason: str


class MigrationReport(BaseModel):
    """A dry run's or a migration's answer: counts per step, then the journeys themselves
    (at most `MAX_LISTED` of each list; the counts are whole)."""

    campaign_id: str
    from_version: int
    to_version: int
    dry_run: bool
    operation_id: str | None = Field(
        None, description="the migration's operation (`GET …/migrations/{operation_id}`)"
    )
    journeys: int = 0
    movable: int = 0
    moved: int = 0
    steps: list[StepReport] = Field(default_factory=list)
    moved_journeys: list[JourneyMoved] = Field(default_factory=list)
    staying_journeys: list[JourneyStays] = Field(default_factory=list)
    moved_ids: list[str] = Field(default_factory=list, exclude=True)
    """Every journey moved (not only those listed), and those found on the target version
    already: the caller records their new version. Never serialized (a page's activity
    records its own)."""

    def add(self, part: MigrationReport) -> None:
        """Count a part of the same migration (a batch, a page) in: per step, the counts
        and reasons add up; the lists keep their first `MAX_LISTED`."""
        self.journeys += part.journeys
        self.movable += part.movable
        self.moved += part.moved
        by_step = {row.step: row for row in self.steps}
        for row in part.steps:
            mine = by_step.setdefault(row.step, StepReport(step=row.step, type=row.type))
            mine.type = mine.type or row.type
            mine.journeys += row.journeys
            mine.movable += row.movable
            mine.moved += row.moved
            mine.lands_on = row.lands_on or mine.lands_on
            for reason, n in row.stays.items():
                mine.stays[reason] = mine.stays.get(reason, 0) + n
            mine.stays = dict(sorted(mine.stays.items(), key=lambda kv: -kv[1]))
        self.steps = sorted(by_step.values(), key=lambda r: (r.step is None, r.step or ""))
        room = MAX_LISTED - len(self.moved_journeys)
        self.moved_journeys = [*self.moved_journeys, *part.moved_journeys[: max(room, 0)]]
        room = MAX_LISTED - len(self.staying_journeys)
        self.staying_journeys = [*self.staying_journeys, *part.staying_journeys[: max(room, 0)]]
        self.moved_ids = [*self.moved_ids, *part.moved_ids]


class MigrationProgress(BaseModel):
    """How far a migration is: journeys read from the membership index, the pages done,
    the keyset cursor, and the report so far."""

    report: MigrationReport
    seen: int = 0
    pages: int = 0
    after: str | None = None
    """The keyset cursor: the last journey (workflow id) asked."""
    done: bool = False

    def add(self, page: MigrationProgress) -> None:
        self.seen += page.seen
        self.after = page.after
        self.report.add(page.report)


class MigrationInput(BaseModel):
    campaign_id: str
    from_version: int
    to_version: int
    steps: dict[str, str] = Field(default_factory=dict)
    by: str | None = None
    reason: str | None = None
    request_id: str
    page_size: int = 100
    pages_per_run: int = 50
    """Continue as new after this many pages: the history stays a few hundred events."""
    dry_run: bool = False
    """Only report where each journey would land: nothing moved, nothing recorded (the
    same pages, the same activity)."""
    progress: MigrationProgress | None = None
    """Carried across continue-as-new."""


class MigratePage(BaseModel):
    """One activity call: migrate up to `page_size` journeys of `from_version` after the
    cursor. The target's plan is read by the activity (a published version does not
    change), so histories carry no copy of it per page."""

    campaign_id: str
    from_version: int
    to_version: int
    steps: dict[str, str] = Field(default_factory=dict)
    by: str | None = None
    reason: str | None = None
    after: str | None = None
    page_size: int = 100
    dry_run: bool = False
    """Ask each journey where it would land; move none, record none."""


# -- telling running journeys the send policy changed (quiet hours) -----------------------

WORKFLOW_POLICY_RECHECK = "policy_recheck"
ACTIVITY_RECHECK_PAGE = "recheck_page"


def policy_recheck_id(request_id: str) -> str:
    """The workflow id of one re-check: named by its request id alone (it may span every
    campaign), so a request sent twice tells each journey once."""
    return f"policy-recheck/{request_id}"


class RecheckRequest(BaseModel):
    """`POST /v1/journeys/recheck`: running journeys ask the send policy again — a send
    deferred by quiet hours goes now if the policy now allows it."""

    # A misspelt `campaign_id` would otherwise widen the re-check to every campaign.
    model_config = ConfigDict(extra="forbid")

    campaign_id: str | None = Field(
        default=None,
        pattern=SLUG,
        description="only this campaign's journeys; none: every campaign's",
    )
    request_id: OperationRequestId = None
    page_size: JourneysPerPage = 100


class RecheckProgress(JourneysTold):
    """How far a re-check is; its cursor walks campaign by campaign."""

    told: int = 0
    """Running journeys sent the `recheck-policy` signal (one not deferring ignores it)."""
    skipped: int = 0
    """Ended, or never started: Temporal has no running journey of the row to tell."""
    after_campaign: str | None = None
    """With `after_user` and `after_id`: the last row handled, by (campaign, user, row)."""

    def add(self, page: Self) -> None:
        super().add(page)
        self.told += page.told
        self.after_campaign = page.after_campaign


class RecheckInput(BaseModel):
    campaign_id: str | None = None
    """None: every campaign's running journeys, campaign by campaign in id order."""
    request_id: str
    page_size: int = 100
    pages_per_run: int = 50
    """Continue as new after this many pages: the history stays a few hundred events."""
    progress: RecheckProgress = Field(default_factory=RecheckProgress)
    """Carried across continue-as-new."""


class RecheckPage(BaseModel):
    """One activity call: tell up to `page_size` running journeys after the cursor."""

    campaign_id: str | None = None
    after_campaign: str | None = None
    after_user: str | None = None
    after_id: int | None = None
    page_size: int = 100
