"""core: the scenario language of `nudge simulate` — one user's traits and timed events, the
settings a rehearsal overrides, what the team expects to happen, and the timeline the
rehearsal returns. Pure: `worker/simulate.py` runs a scenario, this module reads it and
checks the expectations against what happened.

A scenario (YAML or JSON)::

    name: abandoned cart gets a reminder
    user: ada
    traits: {first_name: Ada, timezone: Europe/Paris}
    start: "10:00 Europe/Paris"     # optional, see below
    settings: {quiet_hours: off}    # optional
    events:
      - {at: 0s, event: Product Added, properties: {product_id: sku-1}}
      - {at: 2h, traits: {first_name: Ada L.}}      # an identify: traits merged then
      - {at: 30h, event: Order Completed}
    until: 30d                      # optional
    max_steps: 500                  # optional
    expect:
      - sent remind-with-coupon at 24h
      - not sent tips
      - converted

`at` and `until` are offsets from the start: a number and a unit (`0s`, `90s`, `30m`,
`24h`, `1d12h`, `2w`). `start` is an instant with its zone (`2026-12-01T10:00:00Z`, not in
the past), or a time of day, `HH:MM` in UTC or `HH:MM Area/City` (the next time the clock
there shows it), or absent (now). The rehearsal runs until the journey ends, at most
`until` (default and bound: 90 days) after the start, and at most `max_steps` steps of the
journey (default 500, at most 2000): a campaign that loops (`tick: wait 1m -> ping: send ->
tick`) is stopped early, its timeline up to that step ending in why, e.g. `stopped after
500 steps at +4h10m: the campaign loops (tick → ping → tick)`. A rehearsal stopped early
does not pass: an expectation that what happened after the stop could change fails, saying
so.

`settings` overrides the send policy's settings for the rehearsal: `quiet_hours` (`off`, or
`21:00-08:00`), `caps` (`off`, or a list of `{limit, window, group, channel}` as
NUDGE_CAPS), `default_timezone` (an IANA name).

Expectations, one per line — NAME is a send step's id or its template's name (for
`entered`: any step's id), OFFSET as `at`; `at OFFSET` holds within that minute:

- `sent NAME [at OFFSET]`, `not sent NAME [at OFFSET]`: a message of it was (not) sent;
- `deferred NAME`, `suppressed NAME`, `held out NAME`, `failed NAME` (each may take
  `not` and `at OFFSET`): what the send policy or the delivery did with it;
- `entered STEP [at OFFSET]`, `not entered STEP`: the journey reached (never reached) it;
- `nothing sent`: no message at all;
- `running`, `completed`, `converted`, `exited`, `failed`: the journey's final status (the
  last journey's, when the scenario starts several).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, time, timedelta
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
    model_validator,
)

from core.config import CapRule
from core.definition import CampaignDefinition, DefinitionError, SendStep, parse_document
from core.durations import DurationError, parse_duration
from core.journey import JourneyStatus
from core.schedule import next_local_time, parse_clock, zone_named

MAX_RUN = timedelta(days=90)
"""How long a rehearsal runs at most after its start (simulated time)."""
MAX_EVENTS = 200
REHEARSAL_STEPS = 500
"""How many steps a rehearsal's journey takes at most unless the scenario says
(`max_steps`): a loop stops within seconds, not at the journey's own bound
(core.journey.MAX_STEPS_PER_JOURNEY) minutes later."""
MAX_REHEARSAL_STEPS = 2_000
"""The most a scenario's `max_steps` may ask for (some 10 s of rehearsal)."""
MAX_EXPECTATIONS = 100


class ScenarioError(ValueError):
    """A scenario that cannot run; the message says what to change."""


# -- offsets -------------------------------------------------------------------------------


def parse_offset(value: Any) -> timedelta:
    """'0s', '30m', '24h', '1d12h', '+2d' (or a number of seconds) → timedelta, zero allowed."""
    if isinstance(value, timedelta):
        seconds: float = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str):
        text = value.strip().removeprefix("+").strip()
        if re.fullmatch(r"0+\s*[wdhms]?", text):
            return timedelta(0)
        try:
            return parse_duration(text)
        except DurationError as exc:
            raise ValueError(
                f"invalid offset {value!r}: use a number and a unit w, d, h, m or s, "
                "e.g. '0s', '30m', '24h' or '1d12h'"
            ) from exc
    else:
        raise ValueError(f"invalid offset {value!r}: write it as '24h', '30m' or '0s'")
    if seconds < 0 or seconds != int(seconds):
        raise ValueError(f"invalid offset {value!r}: a whole number of seconds, not negative")
    return timedelta(seconds=int(seconds))


def format_offset(value: timedelta) -> str:
    """How the timeline shows an offset: '+0s', '+45s', '+30m', '+24h', '+5h30m' under two
    days, then days and hours: '+2d', '+3d 02h', '+3d 02h15m'. Seconds are shown only
    under a minute."""
    seconds = int(value.total_seconds())
    sign = "-" if seconds < 0 else "+"
    seconds = abs(seconds)
    if seconds < 60:
        return f"{sign}{seconds}s"
    minutes = seconds // 60
    days, rest = divmod(minutes, 1440)
    hours, mins = divmod(rest, 60)
    if minutes < 2 * 1440:
        hours += days * 24
        text = (f"{hours}h" if hours else "") + (f"{mins}m" if mins else "")
        return sign + text
    text = f"{days}d"
    if hours or mins:
        text += f" {hours:02d}h" + (f"{mins:02d}m" if mins else "")
    return sign + text


def _serialise_offset(value: timedelta) -> str:
    return format_offset(value).removeprefix("+").replace(" ", "")


Offset = Annotated[
    timedelta,
    BeforeValidator(parse_offset),
    PlainSerializer(_serialise_offset, return_type=str),
]
"""An offset from the scenario's start, written '24h' (zero allowed)."""


# -- expectations --------------------------------------------------------------------------


class Verb(StrEnum):
    sent = "sent"
    deferred = "deferred"
    suppressed = "suppressed"
    held_out = "held out"
    failed = "failed"
    entered = "entered"
    nothing_sent = "nothing sent"
    status = "status"


SEND_VERBS = (Verb.sent, Verb.deferred, Verb.suppressed, Verb.held_out, Verb.failed)
_STATUSES = "|".join(s.value for s in JourneyStatus)
_NAMED = re.compile(
    r"^(?P<not>not\s+)?(?P<verb>sent|deferred|suppressed|held\s+out|failed|entered)"
    r"\s+(?P<name>\S+)(?:\s+at\s+(?P<at>\S+))?$"
)
GRAMMAR = (
    "write '[not] sent NAME [at 24h]' (also deferred, suppressed, held out, failed), "
    "'[not] entered STEP [at 24h]', 'nothing sent', or a final status: "
    + ", ".join(s.value for s in JourneyStatus)
)


class Expectation(BaseModel):
    """One line of `expect`, read."""

    model_config = ConfigDict(frozen=True)

    text: str
    verb: Verb
    negated: bool = False
    name: str | None = None
    at: timedelta | None = None
    status: JourneyStatus | None = None

    @classmethod
    def parse(cls, line: str) -> Expectation:
        text = " ".join(line.split())
        lowered = text.lower()
        if re.fullmatch(_STATUSES, lowered):
            return cls(text=text, verb=Verb.status, status=JourneyStatus(lowered))
        if lowered == "nothing sent":
            return cls(text=text, verb=Verb.nothing_sent)
        found = _NAMED.match(text)
        if found is None:
            raise ValueError(f"cannot read {line!r}: {GRAMMAR}")
        at = None
        if found["at"] is not None:
            at = parse_offset(found["at"])
        return cls(
            text=text,
            verb=Verb(" ".join(found["verb"].lower().split())),
            negated=found["not"] is not None,
            name=found["name"],
            at=at,
        )


def _expectation(value: Any) -> Any:
    if isinstance(value, Expectation):
        return value
    if not isinstance(value, str):
        raise ValueError(
            f"an expectation is one line of text, e.g. 'sent reminder at 24h'; {GRAMMAR}"
        )
    return Expectation.parse(value)


ExpectationLine = Annotated[
    Expectation,
    BeforeValidator(_expectation),
    PlainSerializer(lambda e: e.text, return_type=str),
]


# -- the scenario ----------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScenarioEvent(_Model):
    """A `track` event of the user at an offset, or (`traits`) an identify merging traits."""

    at: Offset
    event: str | None = Field(default=None, min_length=1, max_length=200)
    properties: dict[str, Any] = Field(default_factory=dict)
    traits: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> ScenarioEvent:
        if (self.event is None) == (self.traits is None):
            raise ValueError("give either `event` (a track event) or `traits` (an identify)")
        if self.traits is not None and self.properties:
            raise ValueError("`properties` belong to an `event`, not to `traits`")
        return self


def _off(value: Any) -> bool:
    return value is False or value is None or (isinstance(value, str) and value.strip() == "off")


class ScenarioSettings(_Model):
    """The send policy's settings the rehearsal overrides (the rest: the configured ones)."""

    quiet_hours: str | bool | None = None
    caps: list[CapRule] | str | bool | None = None
    default_timezone: str | None = None

    @field_validator("quiet_hours", mode="before")
    @classmethod
    def _quiet(cls, value: Any) -> Any:
        if _off(value):
            return "off"
        if value is True:
            raise ValueError("write 'off', or the hours as '21:00-08:00'")
        start, sep, end = str(value).partition("-")
        if not sep:
            raise ValueError(f"invalid quiet hours {value!r}: write 'off' or '21:00-08:00'")
        parse_clock(start)
        parse_clock(end)
        return f"{start.strip()}-{end.strip()}"

    @field_validator("caps", mode="before")
    @classmethod
    def _caps(cls, value: Any) -> Any:
        if _off(value):
            return "off"
        if not isinstance(value, list):
            raise ValueError("write 'off', or a list of {limit, window, group, channel}")
        return value

    @field_validator("default_timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is not None:
            zone_named(value)
        return value

    def overrides(self) -> dict[str, Any]:
        """The `Settings` fields this sets, by name."""
        out: dict[str, Any] = {}
        if "quiet_hours" in self.model_fields_set:
            if self.quiet_hours == "off":
                out |= {"quiet_hours_start": None, "quiet_hours_end": None}
            else:
                start, _, end = str(self.quiet_hours).partition("-")
                out |= {"quiet_hours_start": start, "quiet_hours_end": end}
        if "caps" in self.model_fields_set:
            out["caps"] = [] if self.caps == "off" else self.caps
        if self.default_timezone is not None:
            out["default_timezone"] = self.default_timezone
        return out


_CLOCK = re.compile(r"^(?P<clock>\d{1,2}:\d{2})(?:\s+(?P<zone>\S+))?$")


class Scenario(_Model):
    name: str = Field(min_length=1, max_length=200)
    user: str = Field(min_length=1, max_length=200)
    traits: dict[str, Any] = Field(default_factory=dict)
    start: datetime | str | None = None
    settings: ScenarioSettings = Field(default_factory=ScenarioSettings)
    events: list[ScenarioEvent] = Field(min_length=1, max_length=MAX_EVENTS)
    until: Offset | None = None
    max_steps: int = Field(default=REHEARSAL_STEPS, ge=1, le=MAX_REHEARSAL_STEPS)
    expect: list[ExpectationLine] = Field(default_factory=list, max_length=MAX_EXPECTATIONS)

    @field_validator("start", mode="before")
    @classmethod
    def _start(cls, value: Any) -> Any:
        if value is None or isinstance(value, datetime):
            return value
        if not isinstance(value, str):
            raise ValueError(f"invalid start {value!r}: {START_FORMS}")
        found = _CLOCK.match(value.strip())
        if found is not None:
            parse_clock(found["clock"])
            if found["zone"]:
                zone_named(found["zone"])
            return value.strip()
        try:
            return datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"invalid start {value!r}: {START_FORMS}") from None

    @field_validator("start")
    @classmethod
    def _zoned(cls, value: datetime | str | None) -> datetime | str | None:
        if isinstance(value, datetime):
            if value.tzinfo is None:
                raise ValueError(f"start {value.isoformat()} has no zone: add one, e.g. 'Z'")
            return value.astimezone(UTC)
        return value

    @model_validator(mode="after")
    def _check(self) -> Scenario:
        self.events.sort(key=lambda e: e.at)  # stable: same offsets keep their order
        if self.until is not None:
            if self.until > MAX_RUN:
                raise ValueError(f"until: at most {_serialise_offset(MAX_RUN)}")
            if self.events[-1].at > self.until:
                raise ValueError("until: comes before the last event")
        if self.events[-1].at > MAX_RUN:
            raise ValueError(f"events: the last one is more than {MAX_RUN.days}d after the start")
        return self

    def resolve_start(self, now: datetime) -> datetime:
        """The start as an instant, given the rehearsal clock's `now`: not before it."""
        if self.start is None:
            return now
        if isinstance(self.start, datetime):
            if self.start < now - timedelta(seconds=1):
                raise ScenarioError(
                    f"start {self.start:%Y-%m-%d %H:%M} UTC is in the past: the rehearsal's "
                    "clock starts now; give a later instant, or a time of day such as '10:00'"
                )
            return max(self.start, now)
        found = _CLOCK.match(self.start)
        assert found is not None
        zone = zone_named(found["zone"] or "UTC")
        clock: time = parse_clock(found["clock"])
        return next_local_time(now, clock, zone)

    def run_for(self) -> timedelta:
        return self.until or MAX_RUN


START_FORMS = (
    "give an instant with its zone ('2026-12-01T10:00:00Z') or a time of day "
    "('10:00', '10:00 Europe/Paris')"
)


def parse_scenario(data: Any) -> Scenario:
    """Validate a scenario from a dict, or from YAML/JSON text; `DefinitionError` naming each
    problem's path (`expect[1]: cannot read ...`)."""
    return parse_document(data, Scenario, "scenario")


def campaign_problems(scenario: Scenario, definition: CampaignDefinition) -> list[str]:
    """What the scenario's expectations name that the campaign does not have: a typo in
    `not sent remnider` would otherwise always hold."""
    sends = {s.id for s in definition.steps if isinstance(s, SendStep)}
    templates = set(definition.templates)
    steps = {s.id for s in definition.steps}
    problems = []
    for i, expectation in enumerate(scenario.expect):
        name = expectation.name
        if name is None:
            continue
        if expectation.verb is Verb.entered and name not in steps:
            problems.append(
                f"expect[{i}]: {expectation.text!r}: campaign {definition.id!r} has no step "
                f"{name!r} (steps: {', '.join(sorted(steps))})"
            )
        elif expectation.verb in SEND_VERBS and name not in sends | templates:
            problems.append(
                f"expect[{i}]: {expectation.text!r}: {name!r} is neither a send step nor a "
                f"template of campaign {definition.id!r} (send steps: "
                f"{', '.join(sorted(sends)) or 'none'}; templates: "
                f"{', '.join(sorted(templates)) or 'none'})"
            )
    return problems


def check_against(scenario: Scenario, definition: CampaignDefinition) -> None:
    """Raise `DefinitionError` with `campaign_problems`, if any."""
    problems = campaign_problems(scenario, definition)
    if problems:
        raise DefinitionError(problems)


# -- the timeline ------------------------------------------------------------------------------


class EntryKind(StrEnum):
    event = "event"
    """A scenario event (or identify) and what routing did with it."""
    step = "step"
    """The journey entered a step; `detail` is the step's outcome."""
    sent = "sent"
    deferred = "deferred"
    suppressed = "suppressed"
    held_out = "held out"
    failed = "failed"
    end = "end"
    """The journey ended (or the rehearsal stopped while it ran)."""


class RenderedMessage(BaseModel):
    """What the sandbox channel kept of one send."""

    channel: str
    template: str
    subject: str | None = None
    body: str
    data: dict[str, Any] | None = None


class TimelineEntry(BaseModel):
    offset: float
    """Seconds after the start."""
    at: datetime
    kind: EntryKind
    name: str
    """The event's name, the step's id, or the send step's id."""
    detail: str = ""
    journey: int = 1
    """Which journey of the scenario (a user may enter again once one has ended)."""
    step_type: str | None = None
    template: str | None = None
    message: RenderedMessage | None = None

    @property
    def delta(self) -> timedelta:
        return timedelta(seconds=self.offset)


class Timeline(BaseModel):
    campaign_id: str
    campaign_version: int
    scenario: str
    user: str
    start: datetime
    stopped_at: float
    """Seconds after the start when the rehearsal stopped."""
    journeys: int = 0
    status: JourneyStatus | None = None
    """The last journey's status (None: the scenario started no journey)."""
    exit_reason: str | None = None
    entries: list[TimelineEntry] = Field(default_factory=list)
    stopped_early: bool = False
    """The rehearsal stopped before the journey ended or its time was up: the journey took
    more than the scenario's `max_steps` steps (it loops). `stopped_at` is then the instant
    of the first step past the bound, and `entries` end there."""
    stop_reason: str | None = None
    """Why it stopped early, e.g. 'stopped after 500 steps at +4h10m: the campaign loops
    (tick → ping → tick)'."""


def loop_in(steps: list[str]) -> list[str] | None:
    """The loop a journey's steps (their ids, in order) end in: from the last step back to
    its previous visit, when that stretch came just before too (`tick → ping → tick`);
    None when the steps do not end going round."""
    if not steps:
        return None
    last = len(steps) - 1
    previous = [i for i in range(last - 1, -1, -1) if steps[i] == steps[last]][:1]
    if not previous:
        return None
    start = previous[0]
    length = last - start
    if start - length < 0 or steps[start - length : start + 1] != steps[start : last + 1]:
        return None
    return steps[start : last + 1]


def stop_reason(bound: int, at: timedelta, steps: list[str]) -> str:
    """Why a rehearsal stopped after `bound` steps, at `at` after its start."""
    loop = loop_in(steps)
    why = (
        f"the campaign loops ({' → '.join(loop)})"
        if loop is not None
        else "the journey takes more steps than the scenario's `max_steps`"
    )
    return f"stopped after {bound} steps at {format_offset(at)}: {why}"


class Verdict(BaseModel):
    expectation: str
    holds: bool
    expected: str
    happened: str


SEND_KINDS = {
    Verb.sent: EntryKind.sent,
    Verb.deferred: EntryKind.deferred,
    Verb.suppressed: EntryKind.suppressed,
    Verb.held_out: EntryKind.held_out,
    Verb.failed: EntryKind.failed,
}


def _same_minute(offset: timedelta, at: timedelta) -> bool:
    return at <= offset < at + timedelta(minutes=1)


LISTED = 10
"""Entries a verdict names (a loop's hundreds of sends would drown it)."""


def _listed(entries: list[TimelineEntry]) -> str:
    text = ", ".join(
        f"{e.kind.value} {e.name}"
        + (f" ({e.template})" if e.template and e.template != e.name else "")
        + f" at {format_offset(e.delta)}"
        for e in entries[:LISTED]
    )
    if len(entries) > LISTED:
        text += f" and {len(entries) - LISTED} more"
    return text


def check(expectations: list[Expectation], timeline: Timeline) -> list[Verdict]:
    """Each expectation against what happened, with both said in words. When the rehearsal
    stopped early, one that what came after the stop could change fails, saying why."""
    return [_unfinished(_check_one(e, timeline), e, timeline) for e in expectations]


def _unfinished(verdict: Verdict, expectation: Expectation, timeline: Timeline) -> Verdict:
    """`verdict`, or a failing one when the rehearsal stopped early before it was settled:
    a final status, 'nothing sent', a 'not', or anything not found by the stop, unless it
    is about a minute wholly before the stop."""
    if not timeline.stopped_early:
        return verdict
    stopped = timedelta(seconds=timeline.stopped_at)
    settled = expectation.at is not None and expectation.at + timedelta(minutes=1) <= stopped
    if expectation.verb is Verb.status:
        settled = False
    elif expectation.verb is Verb.nothing_sent or expectation.negated:
        settled = settled or not verdict.holds  # a send seen already fails it for good
    else:
        settled = settled or verdict.holds  # found already: later cannot undo it
    if settled:
        return verdict
    return verdict.model_copy(
        update={
            "holds": False,
            "happened": f"unknown: the rehearsal {timeline.stop_reason} "
            f"(until then: {verdict.happened})",
        }
    )


def _check_one(expectation: Expectation, timeline: Timeline) -> Verdict:
    entries = timeline.entries
    sends = [e for e in entries if e.kind is EntryKind.sent]
    if expectation.verb is Verb.status:
        assert expectation.status is not None
        happened = (
            "no journey started"
            if timeline.status is None
            else f"{timeline.status.value}"
            + (f" ({timeline.exit_reason})" if timeline.exit_reason else "")
        )
        return Verdict(
            expectation=expectation.text,
            holds=timeline.status is expectation.status,
            expected=f"the journey ends {expectation.status.value}"
            if expectation.status is not JourneyStatus.running
            else "the journey still runs when the rehearsal stops",
            happened=happened,
        )
    if expectation.verb is Verb.nothing_sent:
        return Verdict(
            expectation=expectation.text,
            holds=not sends,
            expected="no message sent",
            happened=_listed(sends) if sends else "no message sent",
        )
    name = expectation.name
    if expectation.verb is Verb.entered:
        kinds = {EntryKind.step}
        related = [e for e in entries if e.kind is EntryKind.step and e.name == name]
        what = f"{name} entered"
    else:
        kinds = {SEND_KINDS[expectation.verb]}
        related = [
            e for e in entries if e.kind in SEND_KINDS.values() and name in (e.name, e.template)
        ]
        what = f"{name} {expectation.verb.value}"
    at = expectation.at
    matching = [e for e in related if e.kind in kinds and (at is None or _same_minute(e.delta, at))]
    when = f" at {format_offset(at)}" if at is not None else ""
    holds = bool(matching) != expectation.negated
    if related:
        happened = _listed(related)
    elif expectation.verb is Verb.entered:
        happened = f"step {name} never entered"
    else:
        happened = f"nothing of {name}" + (f"; sends: {_listed(sends)}" if sends else "")
    return Verdict(
        expectation=expectation.text,
        holds=holds,
        expected=(what.replace(" ", " not ", 1) if expectation.negated else what) + when,
        happened=happened,
    )


class SimulationRequest(BaseModel):
    """One rehearsal to run: what the API hands `python -m worker.simulate` on stdin."""

    definition: dict[str, Any]
    version: int = 1
    scenario: dict[str, Any]
    settings: dict[str, Any] = Field(default_factory=dict)
    """The caller's send-policy settings (quiet hours, caps, default zone) by `Settings`
    name; the scenario's own `settings` override them."""


class SimulationResult(BaseModel):
    """A rehearsal's timeline and each expectation's verdict: what `nudge simulate --json`
    prints and `POST /v1/campaigns/{id}/simulate` answers."""

    timeline: Timeline
    expectations: list[Verdict]
    passed: bool
    """Every expectation holds (also when there are none), and the rehearsal was not
    stopped early (`timeline.stopped_early`)."""


def result_of(scenario: Scenario, timeline: Timeline) -> SimulationResult:
    verdicts = check(scenario.expect, timeline)
    return SimulationResult(
        timeline=timeline,
        expectations=verdicts,
        passed=all(v.holds for v in verdicts) and not timeline.stopped_early,
    )
