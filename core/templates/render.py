"""core.templates: rendering — one template, or every part of a message, for one user."""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from types import TracebackType
from typing import Any, Protocol, cast

from jinja2 import ChainableUndefined, TemplateError, TemplateSyntaxError
from jinja2 import Template as JinjaTemplate

from core.schedule import DEFAULT_TIMEZONE
from core.templates import sandbox
from core.templates.filters import DEFAULT_LOCALE, FILTERS, LOCALE_KEY, ZONE_KEY
from core.templates.sandbox import MAX_OUTPUT_CHARS, TEMPLATE_FILE, BoundedEnvironment


class RenderError(ValueError):
    """A template that cannot be rendered; retrying will not help."""


class MessageTemplate(Protocol):
    """The parts of a message a template has (core.definition.Template)."""

    @property
    def subject(self) -> str | None: ...
    @property
    def body(self) -> str: ...
    @property
    def html(self) -> str | None: ...
    @property
    def data(self) -> Mapping[str, Any]: ...


_env = BoundedEnvironment(
    filters=FILTERS, autoescape=False, undefined=ChainableUndefined, keep_trailing_newline=True
)


@lru_cache(maxsize=512)
def _compile(source: str) -> JinjaTemplate:
    return _env.from_string(source)


def _template_line(tb: TracebackType | None) -> int | None:
    """The template line an error happened on (Jinja rewrites its frames to show it)."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == TEMPLATE_FILE:
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
    except Exception as exc:  # a number too long for Python to read, nesting too deep
        raise RenderError(f"template {name!r}: {type(exc).__name__}: {exc}") from exc
    parts: list[str] = []
    size = 0
    with sandbox.budget() as budget:
        chunks = cast(Generator[str, None, None], template.generate(dict(context)))
        try:
            for chunk in chunks:
                size += len(chunk)
                if size > MAX_OUTPUT_CHARS:
                    raise RenderError(
                        f"template {name!r}: output over {MAX_OUTPUT_CHARS} characters"
                    )
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
    return "".join(parts)


def syntax_problem(source: str) -> str | None:
    """Why `source` is not a valid template (with its line), or None."""
    try:
        _env.parse(source)
    except TemplateSyntaxError as exc:
        return f"line {exc.lineno}: {exc.message}"
    except Exception as exc:  # a number too long for Python to read, nesting too deep
        return f"{type(exc).__name__}: {exc}"
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
        ZONE_KEY: default_timezone,
        LOCALE_KEY: default_locale,
    }


@dataclass(frozen=True)
class RenderedMessage:
    """A template rendered for one user: what a channel sends (or a preview shows)."""

    body: str
    subject: str | None = None
    html: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


def render_message(
    template: MessageTemplate, context: Mapping[str, Any], *, name: str
) -> RenderedMessage:
    """Render each part of `template` (subject, body, html, every string in data), all on
    one budget (`RENDER_SECONDS` for the whole message, however many strings its data
    holds); the one function `deliver` and the preview share. Raises `RenderError`."""
    with sandbox.budget():
        return RenderedMessage(
            subject=render(template.subject, context, name=f"{name}.subject")
            if template.subject
            else None,
            body=render(template.body, context, name=f"{name}.body"),
            html=render(template.html, context, name=f"{name}.html") if template.html else None,
            data={
                k: _render_value(v, context, f"{name}.data.{k}") for k, v in template.data.items()
            },
        )


def _render_value(value: Any, context: Mapping[str, Any], name: str) -> Any:
    if isinstance(value, str):
        return render(value, context, name=name)
    if isinstance(value, dict):
        return {k: _render_value(v, context, f"{name}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_render_value(v, context, f"{name}[{i}]") for i, v in enumerate(value)]
    return value
