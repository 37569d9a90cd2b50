"""core: the segment definition language — saved audiences over profile traits and event
history — and the audience a campaign's broadcast entry reaches. Pure: evaluation takes
the facts (traits, per-day counts) as arguments."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.conditions import Condition
from core.durations import Duration

SLUG = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class EventCriterion(_Model):
    """How often the user did an event (matching `where`) within a window: at least once
    by default; `at_most: 0` means *did not*."""

    event: str = Field(min_length=1, max_length=200)
    where: list[Condition] = Field(default_factory=list)
    """Conditions on the counted event (`properties.total`, `event.name`)."""
    at_least: int | None = Field(default=None, ge=0, le=1_000_000)
    at_most: int | None = Field(default=None, ge=0, le=1_000_000)
    within: Duration | None = None
    """The window, counted in whole UTC days back from today (today included): `30d`.
    None: ever."""

    @model_validator(mode="after")
    def _check(self) -> EventCriterion:
        for i, condition in enumerate(self.where):
            if any(p.startswith("traits.") for p in condition.paths()):
                raise ValueError(
                    f"where[{i}]: conditions on a counted event read the event "
                    "(properties., event.), not traits"
                )
        if self.at_least is not None and self.at_most is not None:
            if self.at_least > self.at_most:
                raise ValueError("at_least is more than at_most: nobody could match")
        if self.within is not None and self.within < timedelta(days=1):
            raise ValueError("within counts whole days: use 1d or more")
        return self

    @property
    def minimum(self) -> int:
        if self.at_least is not None:
            return self.at_least
        return 0 if self.at_most is not None else 1

    @property
    def days(self) -> int | None:
        """The window in whole days (a partial day counts whole), None for ever."""
        if self.within is None:
            return None
        return -(-int(self.within.total_seconds()) // 86400)

    def uses_trigger(self) -> bool:
        """Whether `where` compares with the trigger's properties: such a criterion is
        evaluated per trigger occurrence from stored events, not kept as a counter."""
        return any(p.startswith("trigger.") for c in self.where for p in c.paths())

    def counter_key(self) -> str:
        """Names this criterion's per-day counters: the event and its conditions (two
        segments with the same criterion share counters; the window does not matter)."""
        raw = json.dumps(
            {"event": self.event, "where": [c.model_dump(mode="json") for c in self.where]},
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(raw.encode()).hexdigest()[:32]


class SegmentDefinition(_Model):
    """A saved audience: who matches `traits` and `events` (all of them, or any of them
    with `match: any`). Membership is kept current as events arrive and time passes."""

    id: str = Field(pattern=SLUG)
    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=5000)
    match: Literal["all", "any"] = "all"
    traits: list[Condition] = Field(default_factory=list)
    """Conditions on profile traits (`traits.city`)."""
    events: list[EventCriterion] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> SegmentDefinition:
        if not self.traits and not self.events:
            raise ValueError("a segment needs at least one condition in traits or events")
        for i, condition in enumerate(self.traits):
            wrong = [p for p in condition.paths() if not p.startswith("traits.")]
            if wrong:
                raise ValueError(
                    f"traits[{i}]: a segment's trait conditions read traits. only, not {wrong[0]!r}"
                )
        for i, criterion in enumerate(self.events):
            if criterion.uses_trigger():
                raise ValueError(
                    f"events[{i}].where: a saved segment has no trigger; compare with "
                    "trigger. in a campaign's audience instead"
                )
        return self

    def event_names(self) -> set[str]:
        return {c.event for c in self.events}

    def traits_read(self) -> set[str]:
        return {p.split(".")[1] for c in self.traits for p in c.paths() if p.startswith("traits.")}


class Audience(_Model):
    """Who a broadcast entry (an external trigger, a schedule, a date trait) reaches: the
    members of `segment` (everyone with a profile without one) for whom `conditions` (on
    traits, and on the trigger: `value_from: trigger.properties.city`) and `events` hold."""

    segment: str | None = Field(default=None, pattern=SLUG)
    conditions: list[Condition] = Field(default_factory=list)
    events: list[EventCriterion] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> Audience:
        for i, condition in enumerate(self.conditions):
            wrong = [
                p
                for p in condition.paths()
                if not (p.startswith("traits.") or p.startswith("trigger."))
            ]
            if wrong:
                raise ValueError(
                    f"conditions[{i}]: an audience reads traits. and trigger., not {wrong[0]!r}"
                )
        return self


def definition_hash(definition: SegmentDefinition) -> str:
    raw = json.dumps(definition.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()


def as_json(definition: SegmentDefinition) -> dict[str, Any]:
    return definition.model_dump(mode="json", exclude_defaults=True)
