"""core: user events in the Segment HTTP Tracking API shape, and the event a journey receives.

Also what any value Nudge stores as JSON may be (`json_problems`): Segment's spec is JSON,
and SQLite and PostgreSQL must accept the same values, so the rules are JSON's and the
stricter backend's, checked in one place before anything is stored.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

MAX_EVENT_BYTES = 32 * 1024
"""Segment's limit for one message, serialized."""
MAX_BATCH_BYTES = 500 * 1024
"""Segment's limit for one batch request."""

MAX_USER_ID_BYTES = 512
"""A userId or anonymousId, in bytes of UTF-8, not characters: the journey's workflow id
`journey/{campaign}/{user}` is limited by Temporal to 1,000 bytes. With a campaign id of at
most 63 bytes and `anon:` before an anonymousId, the longest is 8 + 63 + 1 + 5 + 512 = 589
bytes, so every accepted id can start a journey (and fits the stores' 700-character column)."""

MAX_JSON_DEPTH = 64
"""Nesting deeper than this is refused: no event or definition needs it, and recursive code
(parsers, serializers, the database's JSON functions) must never meet more."""
MAX_JSON_VALUES = 100_000
"""Values looked at before giving up: a few lines of YAML aliases stand for billions."""
MIN_INT, MAX_INT = -(2**63), 2**64 - 1
"""Integers fit 64 bits, signed or unsigned (ids are often unsigned): what JSON readers
downstream can hold as integers; bigger numbers go as text. Python has no such bound, and
its int-to-text conversion fails at 4300 digits."""
MAX_PROBLEMS = 20
"""A value with 2500 bad parts gets the first few problems, not a 2500-line answer."""

# -- values Nudge stores ---------------------------------------------------------------------

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
"""NUL (PostgreSQL text and JSONB cannot hold it) and lone UTF-16 surrogates (not Unicode:
no UTF-8 encoder writes them). Both come from JSON escapes, `\\u0000` and `\\ud800`."""


class BigNumber(str):
    """An integer literal too long to be one: kept as its text by `loads`, so that
    `json_problems` can say where it is (Python cannot even convert it past 4300 digits)."""


def _read_int(text: str) -> int | BigNumber:
    # 20 characters hold every 64-bit integer ("-9223372036854775808", "18446744073709551615");
    # JSON has no leading zeros, so a longer literal is out of range whatever it says.
    return int(text) if len(text) <= 20 else BigNumber(text)


def loads(text: str | bytes) -> Any:
    """JSON as Nudge reads it: like `json.loads`, but an integer too long for 64 bits is a
    `BigNumber` for `json_problems` to name. Deep nesting raises RecursionError."""
    return json.loads(text, parse_int=_read_int)


def safe_text(text: str) -> str:
    """`text` with NUL and lone surrogates written as `\\u0000`, `\\ud800`: what a message or
    a stored column may show of a value that was refused for them."""
    return _UNSTORABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def text_problem(text: str) -> str | None:
    """Why `text` cannot be stored as it is, or None."""
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    if found.group() == "\x00":
        return "contains NUL (\\u0000), which the database cannot store"
    return f"contains a lone surrogate (\\u{ord(found.group()):04x}), which is not Unicode text"


def value_problem(value: Any) -> str | None:
    """Why a single (not container) value cannot be stored as JSON, or None."""
    if isinstance(value, BigNumber):
        return f"must be an integer from {MIN_INT} to {MAX_INT}; send bigger numbers as text"
    if isinstance(value, str):
        return text_problem(value)
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and not MIN_INT <= value <= MAX_INT:
        return f"must be an integer from {MIN_INT} to {MAX_INT}; send bigger numbers as text"
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number: JSON has no NaN or Infinity"
    if isinstance(value, bytes | bytearray):
        return "is binary data, which JSON cannot hold"
    return None


Loc = tuple[str | int, ...]


def json_problems(value: Any, *, limit: int = MAX_PROBLEMS) -> list[tuple[Loc, str]]:
    """Where `value` is not something Nudge stores as JSON, and why, in document order; []
    when it is. Keys count too (shown with `safe_text`), and so does nesting beyond
    MAX_JSON_DEPTH. Walked without recursion, looking at MAX_JSON_VALUES values at most."""
    problems: list[tuple[Loc, str]] = []
    todo: list[tuple[Any, Loc]] = [(value, ())]
    seen = 0
    while todo and len(problems) < limit:
        node, loc = todo.pop()
        seen += 1
        if seen > MAX_JSON_VALUES:
            problems.append(((), f"has more than {MAX_JSON_VALUES} values"))
            break
        if isinstance(node, dict | list) and len(loc) >= MAX_JSON_DEPTH:
            problems.append((loc, f"nests deeper than {MAX_JSON_DEPTH} levels"))
        elif isinstance(node, dict):
            children: list[tuple[Any, Loc]] = []
            for key, child in node.items():
                name = safe_text(key) if isinstance(key, str) else str(key)
                if isinstance(key, str) and (problem := text_problem(key)):
                    problems.append(((*loc, name), f"this key {problem}"))
                children.append((child, (*loc, name)))
            todo.extend(reversed(children))
        elif isinstance(node, list):
            todo.extend((child, (*loc, i)) for i, child in reversed(list(enumerate(node))))
        elif problem := value_problem(node):
            problems.append((loc, problem))
    return problems[:limit]


def format_path(loc: Loc) -> str:
    """`a.b[0].c`: a path from `json_problems` as the problems name it."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _shown(value: Any) -> str:
    """A short, storable picture of a refused value for an error's `input` (a response
    echoes it: it must be valid JSON text itself)."""
    return safe_text(value if isinstance(value, str) else repr(value))[:80]


def check_json(value: Any, title: str = "value") -> None:
    """Raise pydantic's ValidationError naming each path where `value` breaks the rules of
    `json_problems`. Called from a validator, the paths land under the field or model
    being validated, so an API error names the exact field."""
    problems = json_problems(value)
    if problems:
        errors = [
            InitErrorDetails(
                type=PydanticCustomError("json_value", message),
                loc=loc,
                input=_shown(_at(value, loc)),
            )
            for loc, message in problems
        ]
        raise ValidationError.from_exception_data(title, errors)


def _at(value: Any, loc: Loc) -> Any:
    """The part of `value` at `loc` (as `json_problems` names it), or None if a key was
    shown escaped."""
    for part in loc:
        if isinstance(value, list) and isinstance(part, int):
            value = value[part]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            return None
    return value


def _fits_user_id(value: str) -> str:
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_USER_ID_BYTES:
        raise ValueError(
            f"is {size} bytes of UTF-8; the limit is {MAX_USER_ID_BYTES} bytes "
            "(a journey's Temporal workflow id is made from it)"
        )
    return value


def _in_utc_years(value: datetime) -> datetime:
    if value.tzinfo is not None:
        try:
            value.astimezone(UTC)
        except OverflowError:
            raise ValueError("is outside the years 1 to 9999 once converted to UTC") from None
    return value


UserId = Annotated[str, AfterValidator(_fits_user_id)]
"""A userId or anonymousId: at most MAX_USER_ID_BYTES of UTF-8."""


def _storable(value: str) -> str:
    problem = text_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


StoredUserId = Annotated[str, AfterValidator(_storable), AfterValidator(_fits_user_id)]
"""A user id given on its own (a URL path or query, not inside a message whose every value
`json_problems` checks): storable text, at most MAX_USER_ID_BYTES of UTF-8."""
Timestamp = Annotated[datetime, AfterValidator(_in_utc_years)]
"""A time that can be stored: in UTC, still within the years 1 to 9999."""


class SegmentMessage(BaseModel):
    """Fields every Segment message shares. Unknown fields are kept (SDKs send extras)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    NUMERIC_IDS: ClassVar[tuple[str, ...]] = ("userId", "anonymousId", "user_id", "anonymous_id")
    """Ids Segment accepts as numbers; kept as strings so keys are stable."""

    user_id: UserId | None = Field(default=None, alias="userId")
    anonymous_id: UserId | None = Field(default=None, alias="anonymousId")
    message_id: str | None = Field(default=None, alias="messageId", min_length=1, max_length=512)
    timestamp: Timestamp | None = None
    sent_at: Timestamp | None = Field(default=None, alias="sentAt")
    context: dict[str, Any] = Field(default_factory=dict)
    integrations: dict[str, Any] = Field(default_factory=dict)
    write_key: str | None = Field(default=None, alias="writeKey")

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        # The whole message is stored (extras too), so all of it is checked, before the
        # numeric ids become text: NaN must not turn into the user "nan".
        check_json(data, cls.__name__)
        if isinstance(data, dict):
            for key in cls.NUMERIC_IDS:
                value = data.get(key)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    data = {**data, key: str(value)}
        return data

    @model_validator(mode="after")
    def _needs_identity(self) -> SegmentMessage:
        if not self.user_id and not self.anonymous_id:
            raise ValueError("userId or anonymousId is required")
        return self

    @property
    def user_key(self) -> str:
        """Who the journey is for: the userId, else `anon:<anonymousId>`."""
        return self.user_id or f"anon:{self.anonymous_id}"


class Track(SegmentMessage):
    type: Literal["track"] = "track"
    event: str = Field(min_length=1, max_length=200)
    properties: dict[str, Any] = Field(default_factory=dict)


class Identify(SegmentMessage):
    type: Literal["identify"] = "identify"
    traits: dict[str, Any] = Field(default_factory=dict)


class Page(SegmentMessage):
    type: Literal["page"] = "page"
    name: str | None = Field(default=None, max_length=200)
    category: str | None = Field(default=None, max_length=200)
    properties: dict[str, Any] = Field(default_factory=dict)


class Screen(SegmentMessage):
    """A mobile screen view: stored, not routed (like page)."""

    type: Literal["screen"] = "screen"
    name: str | None = Field(default=None, max_length=200)
    properties: dict[str, Any] = Field(default_factory=dict)


class Group(SegmentMessage):
    """The user joined a group (account, company). Group traits describe the group, not the
    user, so they are stored with the event and not merged into the profile."""

    NUMERIC_IDS = (*SegmentMessage.NUMERIC_IDS, "groupId", "group_id")

    type: Literal["group"] = "group"
    group_id: str = Field(alias="groupId", min_length=1, max_length=512)
    traits: dict[str, Any] = Field(default_factory=dict)


class Alias(SegmentMessage):
    """Two ids are the same person: `previousId` is linked to the user (store.identities)."""

    type: Literal["alias"] = "alias"
    previous_id: str = Field(alias="previousId", min_length=1, max_length=512)


BatchItem = Annotated[Track | Identify | Page | Screen | Group | Alias, Field(discriminator="type")]


class Batch(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    batch: list[BatchItem] = Field(min_length=1, max_length=2500)
    context: dict[str, Any] = Field(default_factory=dict)
    integrations: dict[str, Any] = Field(default_factory=dict)
    write_key: str | None = Field(default=None, alias="writeKey")
    sent_at: Timestamp | None = Field(default=None, alias="sentAt")


SEGMENT_ENTERED = "Segment Entered"
SEGMENT_EXITED = "Segment Exited"
"""Nudge's own events (type `internal`): a user joined or left a segment (`properties.segment`)."""
TRAIT_CHANGED = "Trait Changed"
"""A profile trait changed: `properties.trait`, `properties.old`, `properties.new`."""
DATE_REACHED = "Date Reached"
"""A date entry's moment came for a user: `properties.campaign`, `.trait`, `.date`,
`.occurrence`."""
SCHEDULED = "Scheduled"
"""The entry event of a scheduled broadcast's journeys: `properties.occurrence`."""


class JourneyEvent(BaseModel):
    """What a journey learns of an event: enough for conditions and templates, no more.

    Sent as the `event` signal and carried in the journey's state; Segment's 32 KB cap
    bounds its size.
    """

    model_config = ConfigDict(frozen=True)

    message_id: str
    name: str
    timestamp: datetime
    properties: dict[str, Any] = Field(default_factory=dict)

    def as_context(self) -> dict[str, Any]:
        """The `event` root of a condition or template context."""
        return {
            "name": self.name,
            "message_id": self.message_id,
            "timestamp": self.timestamp.isoformat(),
            "properties": self.properties,
        }


def utcnow() -> datetime:
    return datetime.now(UTC)
