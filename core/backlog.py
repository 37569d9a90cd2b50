"""core: back-pressure on ingestion — whether the outbox's backlog refuses a request, and
how long the sender should wait before sending it again.

Pure decisions on plain values; `api.backlog` counts the backlog and carries them out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

RETRY_AFTER_MIN_SECONDS = 1
RETRY_AFTER_MAX_SECONDS = 60
"""`Retry-After` stays within these: at least a second (HTTP's unit), at most a minute, so
an estimate made from a few samples never sends a client away for long: it asks again and
gets a fresher one."""
RETRY_AFTER_DEFAULT_SECONDS = 5
"""`Retry-After` while the backlog is not seen shrinking (just reached the limit, or still
growing): no rate to estimate from."""


@dataclass(frozen=True)
class Sample:
    """The number of pending events counted at one moment (seconds on a monotonic clock)."""

    at: float
    pending: int


@dataclass(frozen=True)
class Refusal:
    """Ingestion refuses a request: the backlog it saw, the limit, and when to come back."""

    pending: int
    limit: int
    retry_after: int
    """Seconds, a whole number within [RETRY_AFTER_MIN_SECONDS, RETRY_AFTER_MAX_SECONDS]."""
    at_least: bool = False
    """The count stopped at its cap: `pending` or more events wait."""

    @property
    def message(self) -> str:
        more = " or more" if self.at_least else ""
        return (
            f"{self.pending:,}{more} events wait in the outbox to be routed, at or over the "
            f"limit of {self.limit:,} (NUDGE_INGEST_BACKLOG_LIMIT); nothing of this request "
            f"was stored: send it again in {self.retry_after} s"
        )


def drain_rate(samples: Sequence[Sample]) -> float | None:
    """How fast the backlog has been shrinking, in events per second: from its highest
    count among `samples` (the latest such, when several tie) to the newest count; None
    when the newest count is the highest (it is not shrinking).

    The net rate: what every relay routes, less what is written meanwhile (other API
    processes, internal events). That is what decides when the backlog is under the limit
    again, and while ingestion refuses it is close to the relays' routing rate."""
    if len(samples) < 2:
        return None
    newest = samples[-1]
    peak = max(reversed(samples), key=lambda sample: sample.pending)
    span = newest.at - peak.at
    drained = peak.pending - newest.pending
    if span <= 0 or drained <= 0:
        return None
    return drained / span


def retry_after_seconds(*, pending: int, limit: int, rate: float | None) -> int:
    """Seconds until the backlog should be under the limit again:
    ceil((pending - limit + 1) / rate), clamped to [1, 60]; 5 when the rate is unknown."""
    if rate is None or rate <= 0:
        return RETRY_AFTER_DEFAULT_SECONDS
    to_drain = max(pending - limit + 1, 1)
    seconds = math.ceil(to_drain / rate)
    return min(max(seconds, RETRY_AFTER_MIN_SECONDS), RETRY_AFTER_MAX_SECONDS)


def refusal(
    *, pending: int, limit: int | None, rate: float | None, at_least: bool = False
) -> Refusal | None:
    """None when a request that writes events may go on: no limit (None or 0), or fewer
    than `limit` events pending. Otherwise what to answer."""
    if not limit or pending < limit:
        return None
    return Refusal(
        pending=pending,
        limit=limit,
        retry_after=retry_after_seconds(pending=pending, limit=limit, rate=rate),
        at_least=at_least,
    )
