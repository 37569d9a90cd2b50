"""core: when a fan-out stops entering a campaign's audience — a pure decision on the
campaign's status."""

from __future__ import annotations

import pytest

from core.definition import CampaignStatus
from core.fanout import halt_reason


@pytest.mark.parametrize(
    ("status", "halted"),
    [
        (CampaignStatus.active.value, None),
        (CampaignStatus.paused.value, "paused"),
        (CampaignStatus.archived.value, "archived"),
        (CampaignStatus.draft.value, "draft"),
        (None, None),  # no campaign row: campaigns are never deleted; the target carries its plan
    ],
)
def test_only_an_active_campaign_goes_on(status: str | None, halted: str | None) -> None:
    assert halt_reason(status) == halted
