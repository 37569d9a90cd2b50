"""core: the segment definition language — saved audiences over profile traits and event
history — and the audience a campaign's broadcast entry reaches. Pure: evaluation takes
the facts (traits, per-day counts) as arguments."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.conditions import Condition, evaluate
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


# -- evaluation ------------------------------------------------------------------------------

Counts = Mapping[str, Mapping[date, int]]
"""Per criterion (its `counter_key()`), how many matching events the user did each UTC day."""


@dataclass(frozen=True)
class Evaluation:
    """Whether a user is in a segment now, and the next instant that can change by time
    alone (a counted day leaving a window), None when only the user can change it."""

    member: bool
    recheck_at: datetime | None


def day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def window_start(criterion: EventCriterion, today: date) -> date | None:
    """The first day a criterion counts (`within: 30d` is today and the 29 days before);
    None when it counts every day ever."""
    days = criterion.days
    return None if days is None else today - timedelta(days=days - 1)


def _holds(criterion: EventCriterion, count: int) -> bool:
    if count < criterion.minimum:
        return False
    return criterion.at_most is None or count <= criterion.at_most


def evaluate_criterion(
    criterion: EventCriterion, per_day: Mapping[date, int], now: datetime
) -> Evaluation:
    """Whether the user's counted events satisfy one criterion at `now`, and when its
    answer next changes as counted days leave the window (days after today, an event
    stamped in the future, count as inside it)."""
    today = now.astimezone(UTC).date()
    start = window_start(criterion, today)
    inside = sorted((d, n) for d, n in per_day.items() if n > 0 and (start is None or d >= start))
    total = sum(n for _, n in inside)
    holds = _holds(criterion, total)
    if start is None:
        return Evaluation(holds, None)
    days = criterion.days or 0
    left = total
    for day, count in inside:
        left -= count
        if _holds(criterion, left) != holds:
            # The first day whose leaving flips the answer leaves at the start of day + days.
            return Evaluation(holds, day_start(day + timedelta(days=days)))
    return Evaluation(holds, None)


def evaluate_segment(
    definition: SegmentDefinition,
    *,
    traits: Mapping[str, Any],
    counts: Counts,
    now: datetime,
) -> Evaluation:
    """Whether a user with these traits and per-day counts is a member at `now`.

    `recheck_at` is the earliest instant one of the event criteria changes its answer by
    time alone: it may or may not change the segment's (with `match: any`, another
    criterion may still hold), so it is when to look again, not a promise of a change.
    """
    context = {"traits": traits}
    answers = [evaluate(c, context) for c in definition.traits]
    recheck: list[datetime] = []
    for criterion in definition.events:
        result = evaluate_criterion(criterion, counts.get(criterion.counter_key(), {}), now)
        answers.append(result.member)
        if result.recheck_at is not None:
            recheck.append(result.recheck_at)
    member = all(answers) if definition.match == "all" else any(answers)
    return Evaluation(member, min(recheck) if recheck else None)


def counted_criteria(
    segments: Iterable[SegmentDefinition], event_name: str
) -> list[EventCriterion]:
    """The criteria, one per counter, that count events named `event_name`."""
    found: dict[str, EventCriterion] = {}
    for segment in segments:
        for criterion in segment.events:
            if criterion.event == event_name:
                found.setdefault(criterion.counter_key(), criterion)
    return list(found.values())


def affected_by(
    definition: SegmentDefinition, *, event_name: str | None, traits_changed: Iterable[str]
) -> bool:
    """Whether an event can change a user's membership: its name is counted by the
    segment (a track), or it changed traits the segment reads (an identify, or a call
    carrying `context.traits`)."""
    if event_name is not None and event_name in definition.event_names():
        return True
    return not definition.traits_read().isdisjoint(traits_changed)


def parse_segment(data: Any) -> SegmentDefinition:
    """Validate a segment from a dict or from YAML/JSON text, as campaigns are
    (`core.definition.parse_document`): problems name their paths
    (`events[0].where[0].op: ...`). Raises core.definition.DefinitionError."""
    # core.definition imports this module (an audience is part of a campaign's entry).
    from core.definition import parse_document

    return parse_document(data, SegmentDefinition, "segment")
