"""core: rendering message templates in a sandbox (Jinja2's SandboxedEnvironment), bounded in
size and time, with locale- and zone-aware filters (Babel)."""

from __future__ import annotations

import contextvars
import re
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache, wraps
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_datetime
from babel.numbers import format_currency
from jinja2 import ChainableUndefined, TemplateError, TemplateSyntaxError, nodes, pass_context
from jinja2 import Template as JinjaTemplate
from jinja2.exceptions import SecurityError
from jinja2.nodes import EvalContext
from jinja2.runtime import Context, markup_join
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import is_undefined
from jinja2.visitor import NodeTransformer

if TYPE_CHECKING:
    from core.definition import Template

MAX_OUTPUT_CHARS = 500_000
"""What one rendered field may be; also the largest value a template may build."""
MAX_WORK_CHARS = 10 * MAX_OUTPUT_CHARS
"""All the strings one render may build on the way (bounds memory, not just output)."""
MAX_RANGE = 10_000
"""`range()` in a template (Jinja's sandbox allows 100 000)."""
MAX_ITERATIONS = 100_000
"""Loop iterations in one render, over every loop together (nested loops multiply)."""
RENDER_SECONDS = 0.2
"""Wall time one field may take to render."""
DEFAULT_TIMEZONE = "UTC"
DEFAULT_LOCALE = "en"

_TEMPLATE_FILE = "<template>"


class RenderError(ValueError):
    """A template that cannot be rendered; retrying will not help."""


# -- the budget of one render ---------------------------------------------------------------


@dataclass
class _Budget:
    deadline: float
    iterations: int = 0
    chars: int = 0

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise SecurityError(
                f"rendering took longer than {RENDER_SECONDS * 1000:.0f} ms; "
                "make loops shorter or do the work before sending the event"
            )

    def charge(self, value: Any) -> None:
        if isinstance(value, str | bytes):
            self.chars += len(value)
            if self.chars > MAX_WORK_CHARS:
                raise SecurityError(
                    f"the template built over {MAX_WORK_CHARS} characters while rendering"
                )


_budget: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar(
    "nudge_render_budget", default=None
)


def _tick() -> _Budget | None:
    budget = _budget.get()
    if budget is not None:
        budget.tick()
    return budget


def _size(value: Any, limit: int = MAX_OUTPUT_CHARS) -> int:
    """About how many characters `value` prints as; stops counting past `limit`."""
    if isinstance(value, str | bytes):
        return len(value)
    if value is None or isinstance(value, bool | int | float | Decimal) or is_undefined(value):
        return 8
    if isinstance(value, Mapping):
        items: Iterable[Any] = (x for kv in value.items() for x in kv)
    elif isinstance(value, list | tuple | set | frozenset):
        items = value
    else:
        return len(str(value))
    total = 2
    for item in items:
        total += _size(item, limit) + 2
        if total > limit:
            break
    return total


def _refuse_size(size: int, what: str) -> None:
    if size > MAX_OUTPUT_CHARS:
        raise SecurityError(
            f"{what} would exceed the output limit of {MAX_OUTPUT_CHARS} characters"
        )


def _refuse_number(value: Any, what: str) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_OUTPUT_CHARS:
        raise SecurityError(f"{what}: {value} is too large for a template")


_PERCENT_SPEC = re.compile(r"%[#0\- +]*(\d*)(?:\.(\d*))?")
_BRACE_SPEC = re.compile(r"\{[^{}]*\}")


def _check_format(fmt: Any, args: Iterable[Any]) -> None:
    """`'%0999999999d' % 1` and `'{:>999999999}'.format(1)` build huge strings in C."""
    if not isinstance(fmt, str):
        return
    for arg in args:
        _refuse_number(arg, "a format width")
    numbers = [n for m in _PERCENT_SPEC.finditer(fmt) for n in m.groups() if n]
    numbers += re.findall(r"\d+", " ".join(_BRACE_SPEC.findall(fmt)))
    for n in numbers:
        if len(n) > 6 or int(n) > MAX_OUTPUT_CHARS:
            raise SecurityError(f"a format width of {n} is too large for a template")


def _check_replace(text: Any, old: Any, new: Any) -> None:
    if isinstance(text, str) and isinstance(old, str) and isinstance(new, str):
        count = text.count(old) if old else len(text) + 1
        _refuse_size(len(text) + count * len(new), "replace")


def _checked_join(separator: Any, items: Any) -> list[Any]:
    listed = list(items)
    size = sum(_size(i) for i in listed) + len(str(separator)) * max(len(listed) - 1, 0)
    _refuse_size(size, "join")
    return listed


def _plain(args: tuple[Any, ...]) -> list[Any]:
    return [a for a in args if not isinstance(a, Context | EvalContext)]


class _BoundedIterable:
    """What a template's `{% for %}` iterates: the value, counted against the budget."""

    def __init__(self, iterable: Any):
        self._iterable = iterable

    def __len__(self) -> int:
        return len(self._iterable)

    def __iter__(self) -> Iterator[Any]:
        budget = _budget.get()
        for item in self._iterable:
            if budget is not None:
                budget.iterations += 1
                if budget.iterations > MAX_ITERATIONS:
                    raise SecurityError(
                        f"loops ran over {MAX_ITERATIONS} iterations in one template"
                    )
                budget.tick()
            yield item


class _Bounds(NodeTransformer):
    """Routes every loop and every `~` through the environment, where they are counted."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = nodes.Call(
            nodes.EnvironmentAttribute("bounded_loop", lineno=node.lineno),
            [node.iter],
            [],
            None,
            None,
            lineno=node.lineno,
        )
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return nodes.Call(
            nodes.EnvironmentAttribute("bounded_concat", lineno=node.lineno),
            list(node.nodes),
            [],
            None,
            None,
            lineno=node.lineno,
        )


def _bounded_range(*args: int) -> range:
    numbers = range(*args)
    if len(numbers) > MAX_RANGE:
        raise SecurityError(f"range() in a template is limited to {MAX_RANGE} items")
    return numbers


def _finalize(value: Any) -> Any:
    """Every `{{ value }}` passes here before it becomes text."""
    _tick()
    _refuse_size(_size(value), "a printed value")
    return value


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox (immutable: templates cannot grow lists), with every way of building a
    big value or spinning for long checked against one render's budget: `*`, `**`, `+`,
    `%`, `~`, loops, method calls and filters."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any):
        super().__init__(finalize=_finalize, **options)
        self.globals["range"] = _bounded_range
        self.globals.pop("lipsum", None)  # lipsum(n=10**6): a lot of text for no message
        self.filters.update(
            money=money, date=date_filter, datetime=datetime_filter, days_until=days_until
        )
        self.filters = {name: _guarded(name, f) for name, f in self.filters.items()}

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = _Bounds().visit(super()._parse(source, name, filename))
        assert isinstance(tree, nodes.Template)
        tree.set_environment(self)
        return tree

    def bounded_loop(self, iterable: Any) -> _BoundedIterable:
        return _BoundedIterable(iterable)

    def bounded_concat(self, *values: Any) -> str:
        _tick()
        _refuse_size(sum(_size(v) for v in values), "joining values with ~")
        out = markup_join(values)
        budget = _budget.get()
        if budget is not None:
            budget.charge(out)
        return out

    def getattr(self, obj: Any, attribute: str) -> Any:
        _tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _tick()
        return super().getitem(obj, argument)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        budget = _tick()
        if operator == "**":
            if isinstance(right, int | float) and abs(right) > 64:
                raise SecurityError(f"exponent {right} is too large for a template")
        elif operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int):
                    _refuse_size(_size(seq) * times, "a repeated value")
        elif operator == "+":
            if isinstance(left, str | list | tuple):
                _refuse_size(_size(left) + _size(right), "adding values")
        elif operator == "%" and isinstance(left, str):
            _check_format(left, right if isinstance(right, tuple) else (right,))
        out = super().call_binop(context, operator, left, right)
        if budget is not None:
            budget.charge(out)
        return out

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        budget = _tick()
        # The sandbox hands out `str.format` wrapped; the bound method is `__wrapped__`.
        target = getattr(__obj, "__wrapped__", __obj)
        receiver = getattr(target, "__self__", None)
        if isinstance(receiver, str | bytes):
            method = getattr(target, "__name__", "")
            if method in ("translate", "maketrans"):
                raise SecurityError(f"str.{method} is not available in templates")
            if method in ("center", "ljust", "rjust", "zfill"):
                for arg in (*args, *kwargs.values()):
                    _refuse_number(arg, f"str.{method}")
            elif method == "expandtabs":
                tabsize = (*args, *kwargs.values(), 8)[0]
                if isinstance(tabsize, int):
                    _refuse_size(len(receiver) * max(tabsize, 1), "expandtabs")
            elif method == "replace" and len(args) >= 2:
                _check_replace(receiver, args[0], args[1])
            elif method == "join" and args:
                args = (_checked_join(receiver, args[0]), *args[1:])
            elif method in ("format", "format_map"):
                _check_format(receiver, (*args, *kwargs.values()))
        out = super().call(__context, __obj, *args, **kwargs)
        if budget is not None:
            budget.charge(out)
        return out


def _guarded(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """A filter, with its size-making arguments checked before it runs and its result
    counted after. `wraps` keeps Jinja's pass_context/pass_eval_context marker."""

    @wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        budget = _tick()
        plain = _plain(args)
        if name == "center":
            _refuse_number(kwargs.get("width", plain[1] if len(plain) > 1 else 80), "center")
        elif name == "indent" and plain:
            width = kwargs.get("width", plain[1] if len(plain) > 1 else 4)
            step = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
            lines = str(plain[0]).count("\n") + 1
            _refuse_size(len(str(plain[0])) + lines * step, "indent")
        elif name == "replace" and len(plain) >= 3:
            _check_replace(plain[0], plain[1], plain[2])
        elif name == "format" and plain:
            _check_format(plain[0], (*plain[1:], *kwargs.values()))
        elif name == "join" and plain:
            separator = kwargs.get("d", plain[1] if len(plain) > 1 else "")
            listed = _checked_join(separator, plain[0])
            index = args.index(plain[0]) if any(a is plain[0] for a in args) else 0
            args = (*args[:index], listed, *args[index + 1 :])
        out = function(*args, **kwargs)
        if budget is not None:
            budget.charge(out)
        return out

    return guarded


# -- locale- and zone-aware filters ---------------------------------------------------------


@lru_cache(maxsize=256)
def _parse_locale(name: str) -> Locale:
    return Locale.parse(name.replace("-", "_"))


def user_locale(context: Mapping[str, Any] | Context) -> Locale:
    """The `locale` trait ('de_DE', 'fr-FR', 'en'), else the context's default, else 'en'."""
    traits = context.get("traits")
    wanted = traits.get("locale") if isinstance(traits, Mapping) else None
    for candidate in (wanted, context.get("_locale"), DEFAULT_LOCALE):
        if isinstance(candidate, str) and candidate.strip():
            try:
                return _parse_locale(candidate.strip())
            except (ValueError, TypeError, UnknownLocaleError):
                continue
    return _parse_locale(DEFAULT_LOCALE)


def user_zone(context: Mapping[str, Any] | Context) -> ZoneInfo:
    """The `timezone` trait (an IANA name), else the context's default, else UTC."""
    traits = context.get("traits")
    wanted = traits.get("timezone") if isinstance(traits, Mapping) else None
    for candidate in (wanted, context.get("_zone"), DEFAULT_TIMEZONE):
        if isinstance(candidate, str) and candidate.strip():
            try:
                return ZoneInfo(candidate.strip())
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo(DEFAULT_TIMEZONE)


def _missing(value: Any) -> bool:
    return value is None or is_undefined(value) or value == ""


@pass_context
def money(context: Context, amount: Any, currency: str = "USD") -> str:
    """`{{ 19.5 | money }}` → '$19.50' (en), `{{ 19.5 | money('EUR') }}` → '19,50 €' (de)."""
    if _missing(amount):
        return ""
    try:
        value = Decimal(str(amount)) if not isinstance(amount, bool) else Decimal("nan")
    except InvalidOperation:
        value = Decimal("nan")
    if not value.is_finite() or abs(value) >= Decimal(10) ** 15:
        raise ValueError(f"money: {amount!r} is not an amount of money")
    return format_currency(value, str(currency).upper(), locale=user_locale(context))


def _instant(value: Any, what: str) -> datetime | date:
    """An aware datetime (UTC when none is given), or a plain date for 'YYYY-MM-DD' (a
    birthday is a day, not an instant: it must not move to the day before in New York)."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = value / 1000 if abs(value) > 100_000_000_000 else value  # epoch ms
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise ValueError(f"{what}: {value!r} is not a time") from exc
    if isinstance(value, str):
        text = value.strip()
        try:
            if len(text) == 10:
                return date.fromisoformat(text)
            parsed = datetime.fromisoformat(text)
        except ValueError as exc:
            raise ValueError(f"{what}: {value!r} is not an ISO 8601 date or time") from exc
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise ValueError(f"{what}: {value!r} is not a date or time")


def _pattern(format: Any, what: str) -> str:
    if not isinstance(format, str) or not 0 < len(format) <= 100:
        raise ValueError(f"{what}: format must be short, medium, long, full or a short pattern")
    return format


@pass_context
def date_filter(context: Context, value: Any, format: str = "medium") -> str:
    """`{{ event.timestamp | date }}` → 'Mar 5, 2025', the day in the user's zone."""
    if _missing(value):
        return ""
    instant = _instant(value, "date")
    day = (
        instant.astimezone(user_zone(context)).date() if isinstance(instant, datetime) else instant
    )
    return format_date(day, format=_pattern(format, "date"), locale=user_locale(context))


@pass_context
def datetime_filter(context: Context, value: Any, format: str = "medium") -> str:
    """`{{ event.timestamp | datetime('short') }}` → '3/5/25, 9:30 AM' in the user's zone."""
    if _missing(value):
        return ""
    zone = user_zone(context)
    instant = _instant(value, "datetime")
    if not isinstance(instant, datetime):
        instant = datetime(instant.year, instant.month, instant.day, tzinfo=zone)
    return format_datetime(
        instant, format=_pattern(format, "datetime"), tzinfo=zone, locale=user_locale(context)
    )


def _now(context: Mapping[str, Any] | Context) -> datetime:
    now = context.get("now")
    return now if isinstance(now, datetime) else datetime.now(UTC)


@pass_context
def days_until(context: Context, value: Any) -> int | str:
    """Whole days from today to the value's day, both in the user's zone (negative: past)."""
    if _missing(value):
        return ""
    zone = user_zone(context)
    instant = _instant(value, "days_until")
    day = instant.astimezone(zone).date() if isinstance(instant, datetime) else instant
    return (day - _now(context).astimezone(zone).date()).days


_env = _BoundedEnvironment(
    autoescape=False, undefined=ChainableUndefined, keep_trailing_newline=True
)


# -- rendering ------------------------------------------------------------------------------


@lru_cache(maxsize=512)
def _compile(source: str) -> JinjaTemplate:
    return _env.from_string(source)


def _template_line(tb: TracebackType | None) -> int | None:
    """The template line an error happened on (Jinja rewrites its frames to show it)."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == _TEMPLATE_FILE:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def render(source: str, context: Mapping[str, Any], *, name: str = "template") -> str:
    """Render `source` with `context`; unknown variables render empty.

    Streams the output and stops as soon as it passes `MAX_OUTPUT_CHARS` or the render
    passes `RENDER_SECONDS`; anything that fails is a `RenderError` naming `name` and the
    template line.
    """
    try:
        template = _compile(source)
    except TemplateSyntaxError as exc:
        raise RenderError(f"template {name!r} line {exc.lineno}: {exc.message}") from exc
    budget = _Budget(deadline=time.monotonic() + RENDER_SECONDS)
    token = _budget.set(budget)
    chunks = cast(Generator[str, None, None], template.generate(dict(context)))
    parts: list[str] = []
    size = 0
    try:
        for chunk in chunks:
            size += len(chunk)
            if size > MAX_OUTPUT_CHARS:
                raise RenderError(f"template {name!r}: output over {MAX_OUTPUT_CHARS} characters")
            budget.tick()
            parts.append(chunk)
    except RenderError:
        raise
    except Exception as exc:
        line = _template_line(exc.__traceback__)
        where = f" line {line}" if line else ""
        detail = str(exc) if isinstance(exc, TemplateError) else f"{type(exc).__name__}: {exc}"
        raise RenderError(f"template {name!r}{where}: {detail}") from exc
    finally:
        chunks.close()
        _budget.reset(token)
    return "".join(parts)


def syntax_problem(source: str) -> str | None:
    """Why `source` is not a valid template (with its line), or None."""
    try:
        _env.parse(source)
    except TemplateSyntaxError as exc:
        return f"line {exc.lineno}: {exc.message}"
    return None


def message_context(
    *,
    user_id: str,
    traits: Mapping[str, Any] | None,
    event: Mapping[str, Any] | None,
    last_event: Mapping[str, Any] | None = None,
    campaign: Mapping[str, Any],
    now: datetime | None = None,
    default_timezone: str = DEFAULT_TIMEZONE,
    default_locale: str = DEFAULT_LOCALE,
) -> dict[str, Any]:
    """What a message template sees: `user_id`, `traits`, `event` (the one that started the
    journey), `last_event` (the latest one; the entry event until another arrives),
    `campaign` and `now`. Filters read the user's `locale` and `timezone` traits and fall
    back to the defaults given here."""
    entry = dict(event or {})
    return {
        "user_id": user_id,
        "traits": dict(traits or {}),
        "event": entry,
        "last_event": dict(last_event) if last_event is not None else entry,
        "campaign": dict(campaign),
        "now": now or datetime.now(UTC),
        "_zone": default_timezone,
        "_locale": default_locale,
    }


@dataclass(frozen=True)
class RenderedMessage:
    """A template rendered for one user: what a channel sends (or a preview shows)."""

    body: str
    subject: str | None = None
    html: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


def render_message(template: Template, context: Mapping[str, Any], *, name: str) -> RenderedMessage:
    """Render each part of `template` (subject, body, html, every string in data); the
    one function `deliver` and the preview share. Raises `RenderError`."""
    return RenderedMessage(
        subject=render(template.subject, context, name=f"{name}.subject")
        if template.subject
        else None,
        body=render(template.body, context, name=f"{name}.body"),
        html=render(template.html, context, name=f"{name}.html") if template.html else None,
        data={k: _render_value(v, context, f"{name}.data.{k}") for k, v in template.data.items()},
    )


def _render_value(value: Any, context: Mapping[str, Any], name: str) -> Any:
    if isinstance(value, str):
        return render(value, context, name=name)
    if isinstance(value, dict):
        return {k: _render_value(v, context, f"{name}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_render_value(v, context, f"{name}[{i}]") for i, v in enumerate(value)]
    return value
