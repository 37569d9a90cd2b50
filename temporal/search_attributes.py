"""temporal: the search attributes operators filter journeys by — declared once, here.

The worker's workflow upserts `STEP`; the router sets all four when a journey starts; the
servers Nudge starts (and the compose file's setup job) register them by these names."""

from __future__ import annotations

from temporalio.common import (
    SearchAttributeIndexedValueType,
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
)

CAMPAIGN = SearchAttributeKey.for_keyword("NudgeCampaign")
USER = SearchAttributeKey.for_keyword("NudgeUser")
STEP = SearchAttributeKey.for_keyword("NudgeStep")
CAMPAIGN_VERSION = SearchAttributeKey.for_int("NudgeCampaignVersion")
ALL: tuple[SearchAttributeKey, ...] = (CAMPAIGN, USER, STEP, CAMPAIGN_VERSION)  # type: ignore[type-arg]

_CLI_TYPES = {
    SearchAttributeIndexedValueType.TEXT: "Text",
    SearchAttributeIndexedValueType.KEYWORD: "Keyword",
    SearchAttributeIndexedValueType.INT: "Int",
    SearchAttributeIndexedValueType.DOUBLE: "Double",
    SearchAttributeIndexedValueType.BOOL: "Bool",
    SearchAttributeIndexedValueType.DATETIME: "Datetime",
    SearchAttributeIndexedValueType.KEYWORD_LIST: "KeywordList",
}


def by_name() -> dict[str, str]:
    """`{"NudgeCampaign": "Keyword", …}`: how the `temporal` CLI (and `temporal operator
    search-attribute create`) names each one and its type."""
    return {key.name: _CLI_TYPES[key.indexed_value_type] for key in ALL}


def journey_search_attributes(
    *, campaign_id: str, user_id: str, campaign_version: int, step_id: str
) -> TypedSearchAttributes:
    """What an operator filters journeys by in the Temporal UI, set when a journey starts."""
    return TypedSearchAttributes(
        [
            SearchAttributePair(CAMPAIGN, campaign_id),
            SearchAttributePair(USER, user_id),
            SearchAttributePair(CAMPAIGN_VERSION, campaign_version),
            SearchAttributePair(STEP, step_id),
        ]
    )
