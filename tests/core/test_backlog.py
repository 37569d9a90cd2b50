"""tests.core: back-pressure decisions — when the backlog refuses ingestion, and the
Retry-After it answers — on plain values."""

from __future__ import annotations

import pytest

from core.backlog import Sample, drain_rate, refusal, retry_after_seconds


def test_no_limit_and_under_the_limit_refuse_nothing() -> None:
    assert refusal(pending=10**9, limit=None, rate=None) is None
    assert refusal(pending=10**9, limit=0, rate=None) is None
    assert refusal(pending=49_999, limit=50_000, rate=None) is None


def test_at_the_limit_refuses_naming_the_backlog_and_the_limit() -> None:
    refused = refusal(pending=50_000, limit=50_000, rate=None)
    assert refused is not None
    assert refused.retry_after == 5
    assert refused.message == (
        "50,000 events wait in the outbox to be routed, at or over the limit of 50,000 "
        "(NUDGE_INGEST_BACKLOG_LIMIT); nothing of this request was stored: send it again "
        "in 5 s"
    )
    capped = refusal(pending=100_000, limit=50_000, rate=None, at_least=True)
    assert capped is not None
    assert capped.message.startswith("100,000 or more events wait")


@pytest.mark.parametrize(
    ("pending", "limit", "rate", "seconds"),
    [
        (100, 100, None, 5),  # not seen draining: the default
        (100, 100, 0.0, 5),
        (100, 100, 1000.0, 1),  # under a second: one
        (150, 100, 10.0, 6),  # 51 to drain at 10/s: 5.1 s, rounded up
        (35_500, 10_000, 74.0, 60),  # the measured relay: minutes, said as the most, 60
    ],
)
def test_retry_after_is_what_must_drain_over_the_rate_within_1_to_60(
    pending: int, limit: int, rate: float | None, seconds: int
) -> None:
    assert retry_after_seconds(pending=pending, limit=limit, rate=rate) == seconds


def test_drain_rate_is_measured_from_the_peak() -> None:
    assert drain_rate([]) is None
    assert drain_rate([Sample(0, 5)]) is None
    assert drain_rate([Sample(0, 5), Sample(1, 7)]) is None  # growing
    assert drain_rate([Sample(0, 5), Sample(2, 5)]) is None  # flat
    assert drain_rate([Sample(0, 0), Sample(10, 30), Sample(12, 20)]) == 5.0
    # The latest of equal peaks: the backlog has drained since then.
    assert drain_rate([Sample(0, 30), Sample(5, 10), Sample(8, 30), Sample(10, 20)]) == 5.0
