"""core.templates: the sandbox — Jinja2's immutable sandbox, with every way a template can
build a big value or spin for long counted against one render's budget (size and time)."""

from __future__ import annotations

import contextlib
import contextvars
import gc
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import wraps
from typing import Any

from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.nodes import EvalContext
from jinja2.runtime import Context, markup_join
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import is_undefined
from jinja2.visitor import NodeTransformer

MAX_OUTPUT_CHARS = 500_000
"""What one rendered field may be; also the largest value a template may build."""
MAX_WORK_CHARS = 10 * MAX_OUTPUT_CHARS
"""All the strings one render may build on the way (bounds memory, not just output)."""
MAX_RANGE = 10_000
"""`range()` in a template (Jinja's sandbox allows 100 000)."""
MAX_ITERATIONS = 100_000
"""Loop iterations in one render, over every loop together (nested loops multiply)."""
RENDER_SECONDS = 0.2
"""CPU time one field may take to render: the rendering thread's own work, so a render that
waits for the processor on a busy machine, or pays for a garbage collection of the whole
process's heap, is not cut short, and one that spins is."""
TEMPLATE_FILE = "<template>"
"""The file name Jinja gives a template compiled from a string: its frames name the line."""

# -- the budget of one render ---------------------------------------------------------------


class _CollectorTime(threading.local):
    """CPU time the garbage collector took in this thread: a collection runs in whichever
    thread allocated last, and in a large process a full one takes 100 ms and more."""

    spent = 0.0
    started = 0.0


_collector = _CollectorTime()


def _count_collections(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _collector.started = time.thread_time()
    else:
        _collector.spent += time.thread_time() - _collector.started


gc.callbacks.append(_count_collections)


def _work_time() -> float:
    """This thread's CPU time, less what the garbage collector took in it."""
    return time.thread_time() - _collector.spent


@dataclass
class _Budget:
    deadline: float
    iterations: int = 0
    chars: int = 0

    def tick(self) -> None:
        if _work_time() > self.deadline:
            raise SecurityError(
                f"rendering took longer than {RENDER_SECONDS * 1000:.0f} ms of CPU time; "
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


@contextlib.contextmanager
def budget() -> Iterator[_Budget]:
    """One render's budget: every check inside the block counts against it."""
    current = _Budget(deadline=_work_time() + RENDER_SECONDS)
    token = _budget.set(current)
    try:
        yield current
    finally:
        _budget.reset(token)


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


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox (immutable: templates cannot grow lists), with every way of building a
    big value or spinning for long checked against one render's budget: `*`, `**`, `+`,
    `%`, `~`, loops, method calls and filters — Jinja's own and the `filters` given."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, *, filters: Mapping[str, Callable[..., Any]] | None = None, **options: Any):
        super().__init__(finalize=_finalize, **options)
        self.globals["range"] = _bounded_range
        self.globals.pop("lipsum", None)  # lipsum(n=10**6): a lot of text for no message
        self.filters.update(filters or {})
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
