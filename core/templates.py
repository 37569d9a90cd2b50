"""core: rendering message templates in a sandbox (Jinja2's SandboxedEnvironment)."""

from __future__ import annotations

from typing import Any

from jinja2 import ChainableUndefined, TemplateError, TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment

MAX_OUTPUT_CHARS = 500_000

_env = SandboxedEnvironment(
    autoescape=False, undefined=ChainableUndefined, keep_trailing_newline=True
)


class RenderError(ValueError):
    """A template that cannot be rendered; retrying will not help."""


def render(source: str, context: dict[str, Any], *, name: str = "template") -> str:
    """Render `source` with `context`; unknown variables render empty."""
    try:
        out = _env.from_string(source).render(context)
    except TemplateError as exc:
        line = getattr(exc, "lineno", None)
        where = f" line {line}" if line else ""
        raise RenderError(f"template {name!r}{where}: {exc}") from exc
    except Exception as exc:  # a template's own runtime error, e.g. {{ 1 // 0 }}
        raise RenderError(f"template {name!r}: {type(exc).__name__}: {exc}") from exc
    if len(out) > MAX_OUTPUT_CHARS:
        raise RenderError(f"template {name!r}: output over {MAX_OUTPUT_CHARS} characters")
    return out


def syntax_problem(source: str) -> str | None:
    """Why `source` is not a valid template (with its line), or None."""
    try:
        _env.parse(source)
    except TemplateSyntaxError as exc:
        return f"line {exc.lineno}: {exc.message}"
    return None
