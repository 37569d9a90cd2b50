"""core: the housekeeping Nudge runs on Temporal Schedules — what each job is called, what
it is given and what it answers."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

WORKFLOW_PRUNE_LEDGER = "prune_send_ledger"
ACTIVITY_PRUNE_LEDGER = "prune_send_ledger"
ACTIVITY_PRUNE_REJECTED = "prune_rejected_events"
PATCH_PRUNE_REJECTED = "prune-rejected-v1"
ACTIVITY_PRUNE_COUNTERS = "prune_event_counters"
PATCH_PRUNE_COUNTERS = "prune-counters-v1"


class PruneLedgerRequest(BaseModel):
    now: datetime
    """The schedule's time: sends older than each cap window before it are forgotten."""


class LedgerPruned(BaseModel):
    deleted: int
    kept_since: datetime
    """Sends of every campaign from this instant on are kept (the longest settings cap)."""
    kept_longer: dict[str, datetime] = Field(default_factory=dict)
    """Campaigns whose own caps look further back, and since when their sends are kept."""
    rejected_deleted: int = 0
    """Refused ingestion messages older than NUDGE_REJECTED_EVENTS_DAYS, forgotten in the
    same run."""
    counters_deleted: int = 0
    """Segment event counters no segment reads any more, forgotten in the same run."""


class PruneRejectedRequest(BaseModel):
    now: datetime


class RejectedPruned(BaseModel):
    deleted: int
    kept_since: datetime


class PruneCountersRequest(BaseModel):
    now: datetime


class CountersPruned(BaseModel):
    deleted: int
