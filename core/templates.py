"""core: rendering message templates in a sandbox (Jinja2's SandboxedEnvironment)."""

from __future__ import annotations

from typing import Any

from jinja2 import ChainableUndefined, TemplateError, TemplateSyntaxError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

MAX_OUTPUT_CHARS = 500_000


class _BoundedEnvironment(SandboxedEnvironment):
    """The sandbox, with `*` and `**` unable to build huge values ('x' * 10**9)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            if isinstance(right, int | float) and abs(right) > 64:
                raise SecurityError(f"exponent {right} is too large for a template")
            return left**right
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, str | list | tuple) and isinstance(times, int):
                if len(seq) * times > MAX_OUTPUT_CHARS:
                    raise SecurityError("a repeated value would exceed the output limit")
        return left * right


_env = _BoundedEnvironment(
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
