"""api: the one way Nudge connects to Temporal (pydantic data converter), shared by all."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from temporalio.contrib.pydantic import pydantic_data_converter

from core.journey import SA_CAMPAIGN, SA_CAMPAIGN_VERSION, SA_STEP, SA_USER

DATA_CONVERTER = pydantic_data_converter

CAMPAIGN_KEY = SearchAttributeKey.for_keyword(SA_CAMPAIGN)
USER_KEY = SearchAttributeKey.for_keyword(SA_USER)
STEP_KEY = SearchAttributeKey.for_keyword(SA_STEP)
CAMPAIGN_VERSION_KEY = SearchAttributeKey.for_int(SA_CAMPAIGN_VERSION)
ALL_KEYS = (CAMPAIGN_KEY, USER_KEY, STEP_KEY, CAMPAIGN_VERSION_KEY)


async def connect(address: str, namespace: str = "default") -> Client:
    return await Client.connect(address, namespace=namespace, data_converter=DATA_CONVERTER)


def journey_search_attributes(
    *, campaign_id: str, user_id: str, campaign_version: int, step_id: str
) -> TypedSearchAttributes:
    """What a journey starts with, so operators can filter by campaign and user in the UI."""
    return TypedSearchAttributes(
        [
            SearchAttributePair(CAMPAIGN_KEY, campaign_id),
            SearchAttributePair(USER_KEY, user_id),
            SearchAttributePair(CAMPAIGN_VERSION_KEY, campaign_version),
            SearchAttributePair(STEP_KEY, step_id),
        ]
    )
