"""core: a campaign's funnel — the metrics the stats aggregates count, and how the counted
rows add up to a funnel per campaign, version, step and group (holdout, split variant),
with each variant's lift. Pure: the store reads the rows, the API serves the answer."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import BaseModel, Field

from core.engagement import EngagementKind
from core.experiments import HOLDOUT, compare

ENTERED = "entered"
"""At the journey level (step ''): a journey started (its group: '' or holdout). At a
`split` step: a journey took the variant."""
SENT = "sent"
FAILED = "failed"
HELD_OUT = "held_out"
"""A send the holdout was not sent: the moment it would have gone counts for attribution."""
SUPPRESSED = "suppressed:"
"""The prefix of suppressions, by reason: `suppressed:unsubscribed`, …"""
OPENED_HUMAN = "opened_human"
CLICKED_HUMAN = "clicked_human"
OPENS = "opens"
CLICKS = "clicks"
"""Every open and click, repeats and machines included (the rest count once per message)."""
CONVERTED = "converted"
"""A goal within the attribution window after a message; `amount` is its revenue."""
GOAL_WITHOUT_MESSAGE = "goal_without_message"
"""A journey that reached a goal with no message of the campaign before it."""
ENDED = "ended:"
"""The prefix of how journeys ended: `ended:converted`, `ended:completed`, …"""
NO_STEP = ""
NO_VARIANT = ""


def engagement_metric(kind: EngagementKind) -> str:
    return kind.value


def suppression_metric(reason: str) -> str:
    """A suppression's metric, by the kind of rule that stopped it (reasons carry details
    such as the cap's numbers, which would make every row its own)."""
    text = reason.lower()
    for prefix, category in (
        ("unsubscribed", "unsubscribed"),
        ("suppressed on", "suppression_list"),
        ("cap:", "frequency_cap"),
        ("quiet hours", "quiet_hours"),
        ("still deferred", "quiet_hours"),
        ("no consent", "no_consent"),
    ):
        if text.startswith(prefix):
            return SUPPRESSED + category
    return SUPPRESSED + "other"


ALL_TIME = datetime(1970, 1, 1, tzinfo=UTC)
"""The `hour` of the rows that count over all time: every count goes to its hour's row and
to this one, so a funnel with no time range reads a few rows however long the history."""


def hour_of(at: datetime) -> datetime:
    """The aggregate's bucket: the UTC hour `at` falls in."""
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class CountRow:
    campaign_version: int
    step_id: str
    variant: str
    metric: str
    count: int
    amount: float = 0.0


class Funnel(BaseModel):
    """What happened, from entry to conversion. Rates are null when their base is 0."""

    entered: int = 0
    sent: int = 0
    delivered: int = 0
    opened: int = Field(0, description="messages opened at least once, machines included")
    opened_human: int = Field(0, description="messages opened by a person (no proxy, no scan)")
    clicked: int = Field(0, description="messages with at least one click, machines included")
    clicked_human: int = 0
    opens: int = Field(0, description="every open, repeats included")
    clicks: int = Field(0, description="every click, repeats included")
    converted: int = Field(0, description="goals within the attribution window of a message")
    revenue: float = 0.0
    goal_without_message: int = 0
    held_out: int = Field(0, description="sends the holdout was not sent")
    suppressed: int = 0
    suppressed_by_reason: dict[str, int] = Field(default_factory=dict)
    failed: int = 0
    bounced: int = 0
    dropped: int = 0
    spam: int = 0
    unsubscribed: int = 0
    conversion_rate: float | None = Field(None, description="converted / entered")
    delivery_rate: float | None = Field(None, description="delivered / sent")
    open_rate: float | None = Field(None, description="opened_human / delivered")
    click_rate: float | None = Field(None, description="clicked_human / delivered")

    def add(self, metric: str, count: int, amount: float) -> None:
        if metric.startswith(SUPPRESSED):
            reason = metric.removeprefix(SUPPRESSED)
            self.suppressed += count
            self.suppressed_by_reason[reason] = self.suppressed_by_reason.get(reason, 0) + count
        elif metric == CONVERTED:
            self.converted += count
            self.revenue += amount
        elif metric in Funnel.model_fields and metric not in _DERIVED:
            setattr(self, metric, getattr(self, metric) + count)

    def finish(self) -> Funnel:
        self.revenue = round(self.revenue, 2)
        self.conversion_rate = _rate(self.converted, self.entered)
        self.delivery_rate = _rate(self.delivered, self.sent)
        self.open_rate = _rate(self.opened_human, self.delivered)
        self.click_rate = _rate(self.clicked_human, self.delivered)
        return self


_DERIVED = frozenset(
    {"revenue", "suppressed", "suppressed_by_reason", "converted"}
    | {name for name in Funnel.model_fields if name.endswith("_rate")}
)


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


class Lift(BaseModel):
    """A group's conversion rate against a baseline's."""

    baseline: str = Field(description="`holdout`, or the split's first variant (the control)")
    difference: float = Field(description="the group's conversion rate minus the baseline's")
    ci_low: float
    ci_high: float
    relative_lift: float | None
    p_value: float | None
    verdict: str = Field(description="collecting data, not yet significant, or significant")
    test: str


class StepFunnel(BaseModel):
    step_id: str
    type: str | None = Field(description="send, split, …; null for a step no longer defined")
    funnel: Funnel


class GroupFunnel(BaseModel):
    """The holdout, everyone messaged, or one variant of a split."""

    group: str
    split: str | None = Field(None, description="the split step, for a variant")
    funnel: Funnel
    lift: list[Lift] = Field(default_factory=list)


class JourneyCounts(BaseModel):
    running: int = 0
    completed: int = 0
    converted: int = 0
    exited: int = 0
    failed: int = 0


class CampaignFunnel(BaseModel):
    campaign_id: str
    since: datetime | None = None
    until: datetime | None = None
    funnel: Funnel
    versions: dict[int, Funnel]
    steps: list[StepFunnel]
    groups: list[GroupFunnel]
    journeys: JourneyCounts


MESSAGED = "messaged"
"""The group of everyone not in the holdout, compared with it."""


def build_funnel(
    *,
    campaign_id: str,
    rows: Iterable[CountRow],
    step_types: dict[str, str],
    splits: dict[str, list[str]],
    since: datetime | None = None,
    until: datetime | None = None,
) -> CampaignFunnel:
    """Add the counted rows up. `step_types` names each step's type (every version);
    `splits` lists each split step's variants in order (the first is the control)."""
    total = Funnel()
    versions: dict[int, Funnel] = defaultdict(Funnel)
    steps: dict[str, Funnel] = defaultdict(Funnel)
    groups: dict[tuple[str | None, str], Funnel] = defaultdict(Funnel)
    ended: dict[str, int] = defaultdict(int)
    for row in rows:
        at_split = row.metric == ENTERED and row.step_id != NO_STEP
        if row.metric.startswith(ENDED):
            ended[row.metric.removeprefix(ENDED)] += row.count
            continue
        if not at_split:
            total.add(row.metric, row.count, row.amount)
            versions[row.campaign_version].add(row.metric, row.count, row.amount)
            group = HOLDOUT if row.variant == HOLDOUT else MESSAGED
            groups[(None, group)].add(row.metric, row.count, row.amount)
        if row.step_id != NO_STEP:
            steps[row.step_id].add(row.metric, row.count, row.amount)
        if row.variant not in (NO_VARIANT, HOLDOUT):
            split = _split_of(row.variant, row.step_id, splits) if not at_split else row.step_id
            groups[(split, row.variant)].add(row.metric, row.count, row.amount)
    return CampaignFunnel(
        campaign_id=campaign_id,
        since=since,
        until=until,
        funnel=total.finish(),
        versions={v: f.finish() for v, f in sorted(versions.items())},
        steps=[
            StepFunnel(step_id=s, type=step_types.get(s), funnel=_step_entered(f).finish())
            for s, f in sorted(steps.items(), key=lambda item: _order(item[0], step_types))
        ],
        groups=_groups(groups, splits),
        journeys=JourneyCounts(
            running=max(total.entered - sum(ended.values()), 0),
            **{k: v for k, v in ended.items() if k in JourneyCounts.model_fields},
        ),
    )


def _step_entered(funnel: Funnel) -> Funnel:
    """A send step's entrants are the sends it tried, whatever became of them (a split's
    are counted as such; other steps are not counted, so no step costs an activity)."""
    if not funnel.entered:
        funnel.entered = funnel.sent + funnel.failed + funnel.suppressed + funnel.held_out
    return funnel


def _order(step_id: str, step_types: dict[str, str]) -> tuple[int, str]:
    order = list(step_types)
    return (order.index(step_id) if step_id in order else len(order), step_id)


def _split_of(variant: str, step_id: str, splits: dict[str, list[str]]) -> str | None:
    """The split a variant belongs to (a send after the split carries only the name)."""
    for split, names in splits.items():
        if variant in names:
            return split
    return None


def _groups(
    groups: dict[tuple[str | None, str], Funnel], splits: dict[str, list[str]]
) -> list[GroupFunnel]:
    for funnel in groups.values():
        funnel.finish()
    holdout = groups.get((None, HOLDOUT))
    out: list[GroupFunnel] = []
    if holdout is not None:
        messaged = groups.get((None, MESSAGED), Funnel().finish())
        out.append(GroupFunnel(group=HOLDOUT, funnel=holdout))
        out.append(
            GroupFunnel(
                group=MESSAGED, funnel=messaged, lift=_lifts(messaged, [(HOLDOUT, holdout)])
            )
        )
    for split, names in splits.items():
        control_name = names[0] if names else None
        control = groups.get((split, control_name)) if control_name else None
        for name in names:
            found = groups.get((split, name))
            if found is None:
                continue
            baselines: list[tuple[str, Funnel]] = []
            if holdout is not None:
                baselines.append((HOLDOUT, holdout))
            if control is not None and name != control_name and control_name is not None:
                baselines.append((control_name, control))
            out.append(
                GroupFunnel(group=name, split=split, funnel=found, lift=_lifts(found, baselines))
            )
    return out


def _lifts(funnel: Funnel, baselines: list[tuple[str, Funnel]]) -> list[Lift]:
    lifts = []
    for name, base in baselines:
        found = compare(
            baseline=name,
            conversions=funnel.converted,
            entrants=funnel.entered,
            base_conversions=base.converted,
            base_entrants=base.entered,
        )
        if found is not None:
            lifts.append(Lift(**found.__dict__))
    return lifts
