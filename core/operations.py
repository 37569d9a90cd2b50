"""core: what goes in and out of the operator workflows — a campaign's bulk exit (with its
progress) and the retry of a failed send."""

from __future__ import annotations

from pydantic import BaseModel, Field

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

    reason: str = Field(min_length=1, max_length=400, description="recorded on each journey")
    step: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        description="only journeys at this step (their `current_step`)",
    )
    request_id: str | None = Field(
        default=None,
        pattern=REQUEST_ID,
        description="names the operation; the same id again finds it instead of a second one",
    )
    page_size: int = Field(
        default=100, ge=1, le=1000, description="journeys per activity call (one heartbeat each)"
    )


class ExitProgress(BaseModel):
    """How far a bulk exit is: journeys seen in the membership index and what each got."""

    seen: int = 0
    exited: int = 0
    skipped: int = 0
    """Already ended (their row not yet updated), or not at the step asked for."""
    not_at_step: int = 0
    """Of `skipped`: running, but at another step than the one asked for."""
    failed: int = 0
    """Temporal did not take the exit (no worker answered in time, …): see `errors`."""
    pages: int = 0
    after_user: str | None = None
    after_id: int | None = None
    """The keyset cursor: the last journey row handled, by (user id, row id)."""
    done: bool = False
    errors: list[str] = Field(default_factory=list)
    """The last few failures, for the operator."""

    def add(self, page: ExitProgress) -> None:
        self.seen += page.seen
        self.exited += page.exited
        self.skipped += page.skipped
        self.not_at_step += page.not_at_step
        self.failed += page.failed
        self.after_user, self.after_id = page.after_user, page.after_id
        self.errors = [*self.errors, *page.errors][-MAX_ERRORS_KEPT:]


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
