"""core: the campaign definition language v1 (written as YAML or JSON) and its validation."""

from __future__ import annotations

import json
from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

from core.conditions import Condition, needs_traits, traits_read
from core.durations import Duration, signed_duration
from core.events import (
    DATE_REACHED,
    MAX_JSON_DEPTH,
    SCHEDULED,
    SEGMENT_ENTERED,
    SEGMENT_EXITED,
    TRAIT_CHANGED,
    BigNumber,
    format_path,
    json_problems,
    loads,
)
from core.experiments import HOLDOUT
from core.schedule import cron_of, parse_clock, zone_named
from core.segments import Audience
from core.templates.render import syntax_problem

SLUG = r"^[a-z0-9][a-z0-9_-]{0,62}$"
STEP_ID = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"


class DefinitionError(ValueError):
    """A campaign definition that cannot run; `problems` name each path that is wrong."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Trigger(_Model):
    """An event, by name, and conditions it (and the profile) must meet."""

    event: str = Field(min_length=1, max_length=200)
    conditions: list[Condition] = Field(default_factory=list)

    def event_name(self) -> str:
        """The name of the event a journey entering this way starts with."""
        return self.event


class SegmentEntry(_Model):
    """A journey starts when a user enters (or exits) a segment."""

    segment: str = Field(pattern=SLUG)
    on: Literal["entered", "exited"] = "entered"
    conditions: list[Condition] = Field(default_factory=list)
    """On traits, checked when the membership changes."""

    def event_name(self) -> str:
        return SEGMENT_ENTERED if self.on == "entered" else SEGMENT_EXITED


class TraitChangeEntry(_Model):
    """A journey starts when a profile trait changes: the entry event carries the trait's
    `properties.old` and `properties.new` values (a new trait's old value is null)."""

    trait: str = Field(min_length=1, max_length=200)
    conditions: list[Condition] = Field(default_factory=list)
    """E.g. `{path: properties.new, value: expecting}`; traits are the profile after the
    change."""

    def event_name(self) -> str:
        return TRAIT_CHANGED


class DateEntry(_Model):
    """A journey starts on the day of a date trait, at a local time in the user's zone,
    shifted by `offset`: every year on its anniversary (`yearly`; Feb 29 falls on Feb 28
    in other years), or once on the date itself (`once`). A user whose trait is missing or
    not a date is skipped; a user who gets or changes the trait later is picked up by the
    next sweep; one journey per user per occurrence, whatever the changes."""

    date: str = Field(min_length=1, max_length=200, description="the trait, e.g. birthday")
    repeat: Literal["yearly", "once"] = "yearly"
    offset: str | None = Field(default=None, description="whole days, e.g. -3d")
    time: str = Field(default="09:00", description="HH:MM in the user's zone")
    audience: Audience | None = None
    conditions: list[Condition] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> DateEntry:
        parse_clock(self.time)
        if self.offset is not None:
            shift = signed_duration(self.offset)
            if shift.seconds or shift.microseconds:
                raise ValueError("offset counts whole days, e.g. -3d")
        return self

    @property
    def offset_days(self) -> int:
        return signed_duration(self.offset).days if self.offset else 0

    def event_name(self) -> str:
        return DATE_REACHED


class ExternalEntry(_Model):
    """A journey starts for every member of `audience` when the external trigger `trigger`
    is posted (`POST /v1/triggers/{name}`); its properties are the entry event's."""

    trigger: str = Field(pattern=SLUG)
    audience: Audience | None = None

    def event_name(self) -> str:
        return self.trigger


class ScheduleEntry(_Model):
    """A recurring broadcast to `audience`: `every monday 10:00`, `every day 09:30`, or a
    five-field cron expression; at that wall time in each user's zone (`timezone: user`)
    or in one named zone."""

    schedule: str = Field(min_length=1, max_length=200)
    timezone: str = "user"
    audience: Audience | None = None

    def event_name(self) -> str:
        return SCHEDULED

    @model_validator(mode="after")
    def _check(self) -> ScheduleEntry:
        cron_of(self.schedule)
        if self.timezone != "user":
            zone_named(self.timezone)
        return self


Entry = Trigger | SegmentEntry | TraitChangeEntry | DateEntry | ExternalEntry | ScheduleEntry
ENTRY_KEYS = {
    "event": Trigger,
    "segment": SegmentEntry,
    "trait": TraitChangeEntry,
    "date": DateEntry,
    "trigger": ExternalEntry,
    "schedule": ScheduleEntry,
}


def _entry_kind(value: Any) -> str:
    if isinstance(value, BaseModel):
        return type(value).__name__
    if isinstance(value, dict):
        for key, kind in ENTRY_KEYS.items():
            if key in value:
                return kind.__name__
    return "Trigger"


AnyEntry = Annotated[
    Annotated[Trigger, Tag("Trigger")]
    | Annotated[SegmentEntry, Tag("SegmentEntry")]
    | Annotated[TraitChangeEntry, Tag("TraitChangeEntry")]
    | Annotated[DateEntry, Tag("DateEntry")]
    | Annotated[ExternalEntry, Tag("ExternalEntry")]
    | Annotated[ScheduleEntry, Tag("ScheduleEntry")],
    Discriminator(_entry_kind),
]
"""A campaign's entry: which key it has (`event`, `segment`, `trait`, `date`, `trigger`,
`schedule`) says which kind it is."""


class CampaignStatus(StrEnum):
    """Only `active` campaigns start journeys; running journeys finish whatever the status."""

    draft = "draft"
    active = "active"
    paused = "paused"
    archived = "archived"


class ReEntry(StrEnum):
    once = "once"
    """A user goes through the journey at most once, ever."""
    after_exit = "after_exit"
    """A user may enter again once their previous journey has ended."""


class FailureRule(StrEnum):
    continue_ = "continue"
    exit = "exit"


class Channel(StrEnum):
    """How a message goes out. Which provider serves a channel is configuration."""

    sandbox = "sandbox"
    webhook = "webhook"
    email = "email"
    sms = "sms"
    push = "push"


class SendStep(_Model):
    id: str = Field(pattern=STEP_ID)
    type: Literal["send"]
    channel: Channel
    template: str = Field(min_length=1, max_length=100)
    next: str | None = None
    on_failure: FailureRule = FailureRule.continue_

    def targets(self) -> dict[str, str | None]:
        return {"next": self.next}


class WaitUntil(_Model):
    """A wall-clock time in the user's zone: the next `time`, or `time` on the day of a
    date trait shifted by `offset` ("3 days before renewal_date at 09:00").

    With a `trait`, `missing` says what a user without a usable date gets, and `past` what
    a moment already gone does: `exit` ends the journey (the reason names the trait),
    `skip` moves on to `next` without waiting, `next_anniversary` waits for the date's next
    yearly anniversary (Feb 29 on Feb 28 in other years) at `time`. Both default to `exit`:
    a birthday greeting never reaches a user without a birthday, nor goes out at once for
    a date long gone."""

    time: str = Field(description="HH:MM in the user's zone (the `timezone` trait)")
    trait: str | None = Field(default=None, description="a date trait, e.g. renewal_date")
    offset: str | None = Field(default=None, description="e.g. -3d or 2d; with `trait`")
    missing: Literal["skip", "exit"] = Field(
        default="exit", description="with `trait`: what a missing or unreadable date does"
    )
    past: Literal["skip", "exit", "next_anniversary"] = Field(
        default="exit", description="with `trait`: what a moment already gone does"
    )

    @model_validator(mode="after")
    def _check(self) -> WaitUntil:
        parse_clock(self.time)
        if self.offset is not None:
            if self.trait is None:
                raise ValueError("offset needs a trait to count from")
            signed_duration(self.offset)
        return self


class WaitStep(_Model):
    """Wait a `duration`, or `until` a local time: exactly one of the two."""

    id: str = Field(pattern=STEP_ID)
    type: Literal["wait"]
    duration: Duration | None = None
    until: WaitUntil | None = None
    next: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> WaitStep:
        if (self.duration is None) == (self.until is None):
            raise ValueError("a wait needs exactly one of duration or until")
        return self

    def targets(self) -> dict[str, str | None]:
        return {"next": self.next}


class WaitForStep(_Model):
    """Wait for an event (and conditions) at most `timeout`: two ways out."""

    id: str = Field(pattern=STEP_ID)
    type: Literal["wait_for"]
    event: str = Field(min_length=1, max_length=200)
    conditions: list[Condition] = Field(default_factory=list)
    timeout: Duration
    on_event: str | None = None
    on_timeout: str | None = None

    def targets(self) -> dict[str, str | None]:
        return {"on_event": self.on_event, "on_timeout": self.on_timeout}


class Branch(_Model):
    conditions: list[Condition] = Field(min_length=1)
    next: str | None = None


class BranchStep(_Model):
    """The first branch whose conditions hold decides; `else` when none does."""

    id: str = Field(pattern=STEP_ID)
    type: Literal["branch"]
    branches: list[Branch] = Field(min_length=1)
    else_: str | None = Field(default=None, alias="else")

    def targets(self) -> dict[str, str | None]:
        out: dict[str, str | None] = {
            f"branches[{i}].next": b.next for i, b in enumerate(self.branches)
        }
        out["else"] = self.else_
        return out


class ExitStep(_Model):
    id: str = Field(pattern=STEP_ID)
    type: Literal["exit"]

    def targets(self) -> dict[str, str | None]:
        return {}


class Variant(_Model):
    """One arm of a `split`: its name (what the stats call it), its share and its next step."""

    name: str = Field(pattern=SLUG)
    weight: float = Field(default=1.0, gt=0, le=1_000_000)
    """Relative: weights 1 and 1 are an even split, 9 and 1 send nine in ten to the first."""
    next: str | None = None


class SplitStep(_Model):
    """An A/B test: each journey takes one variant, chosen by a hash of (campaign, step,
    user) so a re-entry or a replay takes the same one (core.experiments)."""

    id: str = Field(pattern=STEP_ID)
    type: Literal["split"]
    variants: list[Variant] = Field(min_length=2, max_length=20)

    @model_validator(mode="after")
    def _unique_names(self) -> SplitStep:
        names = [v.name for v in self.variants]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"variant names must differ: {', '.join(repeated)} repeated")
        if HOLDOUT in names:
            raise ValueError(f"{HOLDOUT!r} names the campaign's holdout, not a variant")
        return self

    def targets(self) -> dict[str, str | None]:
        return {f"variants[{i}].next": v.next for i, v in enumerate(self.variants)}


Step = Annotated[
    SendStep | WaitStep | WaitForStep | BranchStep | SplitStep | ExitStep,
    Field(discriminator="type"),
]
WAITING_TYPES = ("wait", "wait_for")


class JourneyPlan(_Model):
    """The step graph a journey runs: a campaign version without its message content.

    This is what a `JourneyWorkflow` is started with, so editing a campaign never changes a
    running journey, and templates (content, personal data) stay out of its history.
    """

    id: str = Field(pattern=SLUG)
    entry: AnyEntry
    re_entry: ReEntry = ReEntry.after_exit
    goals: list[Trigger] = Field(default_factory=list)
    exits: list[Trigger] = Field(default_factory=list)
    start: str | None = None
    steps: list[Step] = Field(min_length=1)
    holdout: float = Field(default=0.0, ge=0, le=0.5)
    """The share of entrants (0 to 0.5) who go through the journey but are sent nothing:
    their goals are still counted, so the campaign's lift can be measured against them."""

    @model_validator(mode="after")
    def _check_graph(self) -> JourneyPlan:
        problems = graph_problems(self) + _event_only_problems(self)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def start_step(self) -> str:
        return self.start or self.steps[0].id

    def step(self, step_id: str) -> Step:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)

    def event_names(self) -> set[str]:
        """Every event name this plan reacts to once a journey runs."""
        names = {t.event for t in (*self.goals, *self.exits)}
        names.update(s.event for s in self.steps if isinstance(s, WaitForStep))
        return names

    def needs_profile(self, step: Step) -> bool:
        if isinstance(step, BranchStep):
            return any(needs_traits(b.conditions) for b in step.branches)
        return False

    def traits_read(self, step: Step) -> list[str]:
        """The traits a step's conditions read, sorted: what its profile load returns."""
        if isinstance(step, BranchStep):
            return sorted(set().union(*(traits_read(b.conditions) for b in step.branches)))
        return []


class Template(_Model):
    """Message content. Rendered with Jinja2 (sandboxed) by the `deliver` activity."""

    subject: str | None = Field(default=None, max_length=2000)
    """An email's subject, a push notification's title."""
    body: str = Field(max_length=200_000)
    """The text: an email's plain-text part, an SMS, a push notification's body."""
    html: str | None = Field(default=None, max_length=500_000)
    """An email's HTML part (autoescaped is up to the author: values render as they are)."""
    data: dict[str, Any] = Field(default_factory=dict)
    """Extra fields: a push notification's data, a webhook's payload."""

    @model_validator(mode="after")
    def _check_syntax(self) -> Template:
        sources = (("subject", self.subject), ("body", self.body), ("html", self.html))
        for field, source in sources:
            problem = syntax_problem(source) if source else None
            if problem:
                raise ValueError(f"{field}: {problem}")
        return self


class Priority(StrEnum):
    """Transactional messages (receipts, password resets) skip marketing opt-outs, caps and
    quiet hours. Under a cap shared across campaigns, a lower priority leaves slots free for
    higher ones (`low` the last one, by default: core.policy, `cap_headroom`)."""

    transactional = "transactional"
    high = "high"
    normal = "normal"
    low = "low"


class Cap(_Model):
    """At most `limit` sends of this campaign to one user within `window`."""

    limit: int = Field(ge=1, le=10_000)
    window: Duration


class Tracking(_Model):
    """Engagement tracking of a campaign's emails: an open pixel, and links rewritten to
    pass through Nudge. A link keeps its own URL with `data-nudge-track="off"`."""

    opens: bool = True
    clicks: bool = True


class Attribution(_Model):
    """When a goal counts as the campaign's conversion: within `window` after one of its
    messages was delivered (or opened, or clicked)."""

    window: Duration = Field(default_factory=lambda: timedelta(days=3))
    after: Literal["delivered", "opened", "clicked"] = "delivered"


class CampaignDefinition(JourneyPlan):
    """A campaign as its author writes it. Each change is stored as a new version."""

    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=5000)
    priority: Priority = Priority.normal
    subscription_group: str = Field(default="marketing", pattern=SLUG)
    """What a user unsubscribes from to stop this campaign (not for transactional ones)."""
    caps: list[Cap] = Field(default_factory=list)
    templates: dict[str, Template] = Field(default_factory=dict)
    tracking: Tracking = Field(default_factory=Tracking)
    attribution: Attribution = Field(default_factory=Attribution)

    @model_validator(mode="after")
    def _check_templates(self) -> CampaignDefinition:
        problems = [
            f"steps[{i}].template: no template named {s.template!r}"
            + (f" (templates: {', '.join(sorted(self.templates))})" if self.templates else "")
            for i, s in enumerate(self.steps)
            if isinstance(s, SendStep) and s.template not in self.templates
        ]
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def plan(self) -> JourneyPlan:
        return JourneyPlan.model_validate(
            self.model_dump(by_alias=True, include=set(JourneyPlan.model_fields))
        )

    def channels(self) -> set[str]:
        return {s.channel for s in self.steps if isinstance(s, SendStep)}


def graph_problems(plan: JourneyPlan) -> list[str]:
    """Unknown references, duplicate ids, unreachable steps, cycles with no wait in them."""
    problems: list[str] = []
    index: dict[str, int] = {}
    for i, step in enumerate(plan.steps):
        if step.id in index:
            problems.append(f"steps[{i}].id: duplicate step id {step.id!r}")
        else:
            index[step.id] = i
    if plan.start is not None and plan.start not in index:
        problems.append(f"start: no step named {plan.start!r}")
    edges: dict[str, list[str]] = {}
    for i, step in enumerate(plan.steps):
        for field, target in step.targets().items():
            if target is None:
                continue
            if target not in index:
                problems.append(f"steps[{i}].{field}: no step named {target!r}")
            else:
                edges.setdefault(step.id, []).append(target)
    if problems:
        return problems

    start = plan.start_step
    seen = {start}
    todo = [start]
    while todo:
        for nxt in edges.get(todo.pop(), []):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    for i, step in enumerate(plan.steps):
        if step.id not in seen:
            problems.append(f"steps[{i}]: step {step.id!r} is unreachable from start {start!r}")

    # A cycle must pass through a wait, or a journey could spin without ever yielding: look
    # for cycles among the steps that do not wait. Iterative, so a long chain of steps
    # cannot exhaust the interpreter's recursion limit.
    waits = {s.id for s in plan.steps if s.type in WAITING_TYPES}
    color: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in (s.id for s in plan.steps):
        if root in waits or root in color:
            continue
        path = [root]
        color[root] = 1
        pending = [iter(edges.get(root, []))]
        while pending:
            following = next(pending[-1], None)
            if following is None:
                color[path.pop()] = 2
                pending.pop()
            elif following in waits or color.get(following) == 2:
                continue
            elif color.get(following) == 1:
                cycle = [*path[path.index(following) :], following]
                problems.append(
                    f"steps[{index[path[-1]]}]: cycle without a wait: {' -> '.join(cycle)}"
                )
            else:
                color[following] = 1
                path.append(following)
                pending.append(iter(edges.get(following, [])))
    return problems


def _event_only_problems(plan: JourneyPlan) -> list[str]:
    """Goals, exits and wait_for are matched the moment an event arrives, from the event
    alone: a journey does not read the profile for every signal. Traits belong in `entry`
    (checked when the event is routed) and in `branch` steps."""
    where: list[tuple[str, list[Condition]]] = [
        *((f"goals[{i}].conditions", t.conditions) for i, t in enumerate(plan.goals)),
        *((f"exits[{i}].conditions", t.conditions) for i, t in enumerate(plan.exits)),
        *(
            (f"steps[{i}].conditions", s.conditions)
            for i, s in enumerate(plan.steps)
            if isinstance(s, WaitForStep)
        ),
    ]
    return [
        f"{path}: traits are not available here; use event or properties paths "
        "(check traits in entry conditions or a branch step)"
        for path, conditions in where
        if needs_traits(conditions)
    ]


_UNION_TAGS = {
    "send",
    "wait",
    "wait_for",
    "branch",
    "split",
    "exit",
    "Rule",
    "AllOf",
    "AnyOf",
    "NotOf",
    *(kind.__name__ for kind in ENTRY_KEYS.values()),
}
"""Names pydantic puts in an error's location for the union member it tried."""


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    prev: Any = None
    for part in loc:
        # A union member's name follows a list index (or `not`); the author only needs the
        # path. Elsewhere the same word is a real key: a template named `send` is shown.
        tag = part in _UNION_TAGS and (isinstance(prev, int) or prev in ("not", "entry"))
        if isinstance(part, int):
            out += f"[{part}]"
        elif tag or "[" in str(part):
            pass
        else:
            out += f".{part}" if out else str(part)
        prev = part
    return out


def format_validation_error(err: ValidationError) -> list[str]:
    """Turn pydantic's errors into `steps[3].channel: Field required` lines."""
    problems = []
    for e in err.errors():
        msg = str(e["msg"]).removeprefix("Value error, ")
        loc = _format_loc(tuple(e["loc"]))
        for line in msg.split("\n"):
            problems.append(f"{loc}: {line}" if loc else line)
    return problems


class _YamlLoader(yaml.SafeLoader):
    """YAML's safe loader, except that an integer too long for Python to convert is a
    `BigNumber` (which `json_problems` refuses, naming where) instead of a ValueError."""


def _yaml_int(loader: _YamlLoader, node: yaml.ScalarNode) -> Any:
    try:
        return loader.construct_yaml_int(node)
    except ValueError:
        return BigNumber(loader.construct_scalar(node))


_YamlLoader.add_constructor("tag:yaml.org,2002:int", _yaml_int)


def _one_line(exc: Exception) -> str:
    """A parser's complaint as one line with its place: PyYAML's spans several, with a
    caret drawing (fine in a terminal's traceback, not in a problem list or a CLI error)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        problem = exc.problem or exc.context or "cannot be read"
        return f"line {mark.line + 1} column {mark.column + 1}: {problem}"
    return " ".join(str(exc).split())


def _read_text(text: str) -> Any:
    text = text.removeprefix("\ufeff")  # a byte order mark, as some editors save files
    try:
        return loads(text) if text.lstrip().startswith("{") else yaml.load(text, _YamlLoader)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise DefinitionError([f"not valid YAML or JSON: {_one_line(exc)}"]) from exc
    except RecursionError:
        raise DefinitionError(
            [f"the definition nests deeper than {MAX_JSON_DEPTH} levels"]
        ) from None


def parse_campaign(data: Any) -> CampaignDefinition:
    """Validate a definition from a dict, or from YAML/JSON text (`parse_document`)."""
    return parse_document(data, CampaignDefinition, "campaign")


Document = TypeVar("Document", bound=BaseModel)


def parse_document(data: Any, model: type[Document], what: str) -> Document:
    """Validate a definition (a campaign, a segment) from a dict, or from YAML/JSON text.

    A definition is stored as JSON, on SQLite or PostgreSQL alike: what either cannot hold
    (NaN, 64-bit overflow, NUL, lone surrogates, YAML's binary) is refused with its path
    before the model sees it, and so is nesting that recursive code must not meet; then
    each problem the model finds names its path. Raises `DefinitionError`."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DefinitionError([f"not valid UTF-8 text: {exc}"]) from exc
    if isinstance(data, str):
        data = _read_text(data)
    if not isinstance(data, dict):
        raise DefinitionError([f"a {what} definition must be a mapping"])
    problems = json_problems(data)
    if problems:
        raise DefinitionError(
            [f"{format_path(loc)}: {message}" if loc else message for loc, message in problems]
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise DefinitionError(format_validation_error(exc)) from exc
