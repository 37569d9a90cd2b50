"""Experiments: the holdout and `split` assignment (deterministic, in proportion, independent
of each other) and the comparison of conversion rates."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from core.definition import DefinitionError, SplitStep, Variant, parse_campaign
from core.experiments import HOLDOUT, bucket, choose_variant, compare, in_holdout

USERS = [f"user-{i}" for i in range(10_000)]


def within(observed: int, expected_share: float, n: int, sigmas: float = 4.0) -> bool:
    """Whether a binomial count is within `sigmas` standard deviations of its mean: the
    assignment is a fixed function, so this either always holds or never does."""
    mean = expected_share * n
    return abs(observed - mean) <= sigmas * math.sqrt(n * expected_share * (1 - expected_share))


def test_assignment_is_a_function_of_campaign_step_and_user() -> None:
    variants = [Variant(name="a", weight=1), Variant(name="b", weight=1)]
    first = [choose_variant("cart", "split", u, variants).name for u in USERS[:500]]
    again = [choose_variant("cart", "split", u, variants).name for u in USERS[:500]]
    assert first == again
    # Another campaign (or another split) assigns independently.
    other = [choose_variant("welcome", "split", u, variants).name for u in USERS[:500]]
    assert first != other
    assert bucket("cart", HOLDOUT, "ada") == bucket("cart", HOLDOUT, "ada")
    assert 0 <= bucket("cart", HOLDOUT, "ada") < 1


@pytest.mark.parametrize("weights", [(1, 1), (9, 1), (50, 30, 20)])
def test_split_proportions_over_ten_thousand_users(weights: tuple[int, ...]) -> None:
    variants = [Variant(name=f"v{i}", weight=w) for i, w in enumerate(weights)]
    counts = Counter(choose_variant("cart", "remind", u, variants).name for u in USERS)
    total = sum(weights)
    for i, weight in enumerate(weights):
        assert within(counts[f"v{i}"], weight / total, len(USERS)), (counts, weights)


@pytest.mark.parametrize("share", [0.05, 0.1, 0.5])
def test_holdout_share_over_ten_thousand_users(share: float) -> None:
    held = sum(in_holdout("cart", u, share) for u in USERS)
    assert within(held, share, len(USERS)), (held, share)
    assert not any(in_holdout("cart", u, 0.0) for u in USERS[:1000])


def test_holdout_and_split_are_independent() -> None:
    """The variants are in proportion inside and outside the holdout alike."""
    variants = [Variant(name="a", weight=1), Variant(name="b", weight=1)]
    held = [u for u in USERS if in_holdout("cart", u, 0.3)]
    rest = [u for u in USERS if not in_holdout("cart", u, 0.3)]
    for group in (held, rest):
        share_a = sum(choose_variant("cart", "s", u, variants).name == "a" for u in group)
        assert within(share_a, 0.5, len(group)), (share_a, len(group))


def test_compare_a_clear_difference_is_significant() -> None:
    found = compare(
        baseline=HOLDOUT, conversions=300, entrants=1000, base_conversions=200, base_entrants=1000
    )
    assert found is not None
    assert found.difference == pytest.approx(0.1)
    # 0.1 ± 1.96 * sqrt(0.3*0.7/1000 + 0.2*0.8/1000)
    spread = 1.959963984540054 * math.sqrt(0.3 * 0.7 / 1000 + 0.2 * 0.8 / 1000)
    assert found.ci_low == pytest.approx(0.1 - spread) and found.ci_high == pytest.approx(
        0.1 + spread
    )
    assert found.relative_lift == pytest.approx(0.5)
    assert found.p_value is not None and found.p_value < 1e-5
    assert found.verdict == "significant"
    assert "z-test" in found.test


def test_compare_says_when_it_is_too_early_or_not_significant() -> None:
    early = compare(baseline="a", conversions=3, entrants=20, base_conversions=1, base_entrants=20)
    assert early is not None and early.verdict == "collecting data"
    close = compare(
        baseline="a", conversions=105, entrants=1000, base_conversions=100, base_entrants=1000
    )
    assert close is not None and close.verdict == "not yet significant"
    assert close.ci_low < 0 < close.ci_high
    assert (
        compare(baseline="a", conversions=0, entrants=0, base_conversions=1, base_entrants=5)
        is None
    )


def test_split_steps_are_validated() -> None:
    base = {
        "id": "ab",
        "name": "AB",
        "entry": {"event": "Signed Up"},
        "templates": {"t": {"body": "hi"}},
    }
    good = parse_campaign(
        {
            **base,
            "holdout": 0.1,
            "steps": [
                {
                    "id": "split",
                    "type": "split",
                    "variants": [
                        {"name": "a", "weight": 1, "next": "send_a"},
                        {"name": "b", "weight": 1},
                    ],
                },
                {"id": "send_a", "type": "send", "channel": "sandbox", "template": "t"},
            ],
        }
    )
    step = good.steps[0]
    assert isinstance(step, SplitStep) and [v.name for v in step.variants] == ["a", "b"]
    assert good.plan().holdout == 0.1
    with pytest.raises(DefinitionError, match="no step named 'nowhere'"):
        parse_campaign(
            {
                **base,
                "steps": [
                    {
                        "id": "split",
                        "type": "split",
                        "variants": [{"name": "a", "next": "nowhere"}, {"name": "b"}],
                    }
                ],
            }
        )
    with pytest.raises(DefinitionError, match="repeated"):
        parse_campaign(
            {
                **base,
                "steps": [
                    {"id": "split", "type": "split", "variants": [{"name": "a"}, {"name": "a"}]}
                ],
            }
        )
    with pytest.raises(DefinitionError, match="holdout"):
        parse_campaign({**base, "holdout": 0.9, "steps": [{"id": "x", "type": "exit"}]})
