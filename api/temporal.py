"""api: the one way Nudge connects to Temporal (pydantic data converter), shared by all."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.common import SearchAttributeKey
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
