"""core: experiments — who is in a campaign's holdout, which `split` variant a journey takes,
and whether a difference in conversion is more than chance. Pure: no clock, no randomness.

Assignment is a hash of (campaign, what is assigned, user), so the same user lands in the
same place on every replay, every re-entry and in every process, and the holdout and each
split are independent of one another (each hashes with its own salt).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

HOLDOUT = "holdout"
"""The group of a campaign's entrants who are sent nothing (a variant may not be named so)."""

Z_95 = 1.959963984540054
"""The two-sided 95% quantile of the standard normal distribution."""
ALPHA = 0.05
MIN_ENTRANTS = 100
MIN_CONVERSIONS = 5
"""Below these, in either group, no verdict is given: the normal approximation the test
rests on does not hold yet, and an early "winner" is mostly noise."""
TEST_NAME = (
    "two-proportion z-test (pooled, two-sided, alpha = 0.05); "
    "95% confidence interval of the difference by the normal approximation (Wald)"
)


def bucket(campaign_id: str, salt: str, user_id: str) -> float:
    """A number in [0, 1), uniform over users, fixed for (campaign, salt, user)."""
    digest = hashlib.sha256(f"{campaign_id}\x1f{salt}\x1f{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def in_holdout(campaign_id: str, user_id: str, share: float) -> bool:
    """Whether this user is in the campaign's holdout (`share` of entrants, 0 to 1)."""
    return share > 0 and bucket(campaign_id, HOLDOUT, user_id) < share


class Weighted(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def weight(self) -> float: ...


V = TypeVar("V", bound=Weighted)


def choose_variant(campaign_id: str, step_id: str, user_id: str, variants: Sequence[V]) -> V:
    """The variant a user takes at a split: each with probability weight / total."""
    total = sum(v.weight for v in variants)
    point = bucket(campaign_id, f"split:{step_id}", user_id) * total
    for variant in variants:
        point -= variant.weight
        if point < 0:
            return variant
    return variants[-1]  # only reached through rounding at the very top


@dataclass(frozen=True)
class Comparison:
    """A group's conversion rate against a baseline's (the holdout, or the first variant)."""

    baseline: str
    difference: float
    """The group's rate minus the baseline's (absolute, e.g. 0.02 is two points)."""
    ci_low: float
    ci_high: float
    relative_lift: float | None
    """The difference over the baseline's rate; None when the baseline converted nobody."""
    p_value: float | None
    verdict: str
    """`collecting data` (too few entrants or conversions to say anything),
    `not yet significant` (the interval still includes no difference) or `significant`."""
    test: str = TEST_NAME


def compare(
    *, baseline: str, conversions: int, entrants: int, base_conversions: int, base_entrants: int
) -> Comparison | None:
    """Compare a group with a baseline; None when either has no entrants."""
    if entrants <= 0 or base_entrants <= 0:
        return None
    p, q = conversions / entrants, base_conversions / base_entrants
    difference = p - q
    spread = math.sqrt(p * (1 - p) / entrants + q * (1 - q) / base_entrants)
    pooled = (conversions + base_conversions) / (entrants + base_entrants)
    pooled_spread = math.sqrt(pooled * (1 - pooled) * (1 / entrants + 1 / base_entrants))
    p_value = math.erfc(abs(difference / pooled_spread) / math.sqrt(2)) if pooled_spread else None
    enough = (
        min(entrants, base_entrants) >= MIN_ENTRANTS
        and min(conversions, base_conversions) >= MIN_CONVERSIONS
    )
    if not enough:
        verdict = "collecting data"
    elif p_value is not None and p_value < ALPHA:
        verdict = "significant"
    else:
        verdict = "not yet significant"
    return Comparison(
        baseline=baseline,
        difference=difference,
        ci_low=difference - Z_95 * spread,
        ci_high=difference + Z_95 * spread,
        relative_lift=difference / q if q else None,
        p_value=p_value,
        verdict=verdict,
    )
