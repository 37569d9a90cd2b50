"""core.templates: the sandbox — Jinja2's immutable sandbox, with every way a template can
build a big value or spin for long counted against one render's budget (size and time)."""

from __future__ import annotations

import contextlib
import contextvars
import gc
import math
import re
import sys
import threading
import time
from collections.abc import (
    Callable,
    ItemsView,
    Iterable,
    Iterator,
    KeysView,
    Mapping,
    ValuesView,
)
from dataclasses import dataclass
from datetime import date
from datetime import time as dt_time
from decimal import Decimal
from functools import update_wrapper, wraps
from types import FrameType, GeneratorType
from typing import Any, TypeVar

from jinja2 import nodes, pass_context, pass_eval_context
from jinja2.exceptions import SecurityError
from jinja2.nodes import EvalContext
from jinja2.runtime import Context, LoopContext, Macro, markup_join
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter
from jinja2.utils import Cycler, Namespace, is_undefined
from jinja2.visitor import NodeTransformer
from markupsafe import EscapeFormatter, Markup

MAX_OUTPUT_CHARS = 500_000
"""What one rendered field may be; also the largest value a template may build."""
MAX_WORK_CHARS = 10 * MAX_OUTPUT_CHARS
"""All the strings one render may build on the way (bounds memory, not just output)."""
MAX_RANGE = 10_000
"""`range()` in a template (Jinja's sandbox allows 100 000), and the most parts `slice`
may cut a sequence into."""
MAX_ITERATIONS = 100_000
"""Loop iterations in one render, over every loop together (nested loops multiply)."""
MAX_NUMBER_DIGITS = 1_000
"""The largest integer a template may compute, in decimal digits. Big-integer arithmetic
(`9**64**64`) runs as one step of the interpreter that no time check can interrupt, so it
is refused before it starts."""
RENDER_SECONDS = 0.2
"""CPU time one message (every field of it together) may take to render: the rendering
thread's own work, so a render that waits for the processor on a busy machine, or pays for
a garbage collection of the whole process's heap, is not cut short, and one that spins is."""
TEMPLATE_FILE = "<template>"
"""The file name Jinja gives a template compiled from a string: its frames name the line."""

_MAX_NUMBER_BITS = math.ceil(MAX_NUMBER_DIGITS * math.log2(10))
_DIGITS_PER_BIT = math.log10(2)

Result = TypeVar("Result")

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
_COLLECTOR_CODE = _count_collections.__code__


def _work_time() -> float:
    """This thread's CPU time, less what the garbage collector took in it."""
    return time.thread_time() - _collector.spent


def _too_slow() -> SecurityError:
    return SecurityError(
        f"rendering took longer than {RENDER_SECONDS * 1000:.0f} ms of CPU time; "
        "make loops shorter or do the work before sending the event"
    )


@dataclass
class _Budget:
    deadline: float
    iterations: int = 0
    chars: int = 0
    events: int = 0

    def tick(self) -> None:
        if _work_time() > self.deadline:
            raise _too_slow()

    def charge(self, chars: int) -> None:
        self.chars += chars
        if self.chars > MAX_WORK_CHARS:
            raise SecurityError(
                f"the template built over {MAX_WORK_CHARS} characters while rendering"
            )

    def watch(self, frame: FrameType, event: str, arg: Any) -> None:
        """The profile function (`sys.setprofile`) while library code runs for the template
        (a filter, a method): Python calls it around every function call, so a loop inside
        a filter (`urlize`, `sort`, `title` over a big value) stops at the deadline instead
        of running to its end. It looks at the clock every 64 calls. Raising here is like
        the function about to be called raising on its first line; Python then removes the
        profile function."""
        self.events += 1
        if (
            not self.events & 63
            and _work_time() > self.deadline
            and frame.f_code is not _COLLECTOR_CODE  # never fail a gc callback
        ):
            raise _too_slow()


_budget: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar(
    "nudge_render_budget", default=None
)


@contextlib.contextmanager
def budget() -> Iterator[_Budget]:
    """One render's budget: every check inside the block counts against it. A block inside
    another shares the outer one: the fields of a message render on one budget."""
    outer = _budget.get()
    if outer is not None:
        yield outer
        return
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


def _watched(run: Callable[[], Result]) -> Result:
    """`run()`, stopped at the render's deadline even if it never returns to the template.
    A process under a profiler keeps its profiler: the template's own checks still apply."""
    budget = _budget.get()
    if budget is None or sys.getprofile() is not None:
        return run()
    sys.setprofile(budget.watch)
    try:
        return run()
    finally:
        sys.setprofile(None)


# -- sizes ----------------------------------------------------------------------------------


def _size(value: Any, limit: int = MAX_OUTPUT_CHARS) -> int:
    """About how many characters `value` prints as; stops counting past `limit`. Shared
    references count each time (`[l, l, l]` prints `l` three times)."""
    if isinstance(value, str | bytes):
        return len(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return max(8, int(value.bit_length() * _DIGITS_PER_BIT) + 2)
    if value is None or isinstance(value, bool | float | Decimal) or is_undefined(value):
        return 8
    items: Iterable[Any]
    if isinstance(value, Mapping | ItemsView):
        pairs = value.items() if isinstance(value, Mapping) else value
        items = (x for kv in pairs for x in kv)
    elif isinstance(value, Namespace):
        items = (x for kv in _namespace_attrs(value).items() for x in kv)
    elif isinstance(value, Cycler):
        items = value.items
    elif isinstance(value, list | tuple | set | frozenset | KeysView | ValuesView):
        items = value
    else:
        return len(str(value))
    total = 2
    for item in items:
        total += _size(item, limit) + 2
        if total > limit:
            break
    return total


def _indented_size(value: Any, indent: int, limit: int = MAX_OUTPUT_CHARS, depth: int = 1) -> int:
    """About how many characters indentation adds when `value` is printed one item a line,
    `indent` more per level (`tojson(indent)`, `pprint`); stops counting past `limit`."""
    if isinstance(value, Mapping):
        items: Iterable[Any] = value.values()
    elif isinstance(value, list | tuple | set | frozenset):
        items = value
    else:
        return 0
    total = 0
    for item in items:
        total += 1 + indent * depth + _indented_size(item, indent, limit, depth + 1)
        if total > limit:
            break
    return total


def _namespace_attrs(ns: Namespace) -> dict[str, Any]:
    attrs: dict[str, Any] = ns._Namespace__attrs
    return attrs


def _refuse_size(size: int, what: str) -> None:
    if size > MAX_OUTPUT_CHARS:
        raise SecurityError(
            f"{what} would exceed the output limit of {MAX_OUTPUT_CHARS} characters"
        )


def _refuse_number(value: Any, what: str) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_OUTPUT_CHARS:
        raise SecurityError(f"{what}: {_shown(value)} is too large for a template")


def _refuse_bits(bits: float, what: str) -> None:
    if bits > _MAX_NUMBER_BITS:
        digits = bits * _DIGITS_PER_BIT
        about = f"{digits:,.0f}" if digits < 1e15 else "more than 10^15"
        raise SecurityError(
            f"{what} would be a number of about {about} digits; numbers in a template are "
            f"limited to {MAX_NUMBER_DIGITS} digits"
        )


def _shown(value: Any) -> str:
    """A number as an error message shows it: a big one by its size, not its digits."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"a number of about {int(value.bit_length() * _DIGITS_PER_BIT) + 1} digits"
    return repr(value)


def _built(value: Any, what: str) -> Any:
    """A value the template built (an operator's, a filter's or a method's result): within
    the limits, and its characters counted against the render's budget."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        _refuse_bits(value.bit_length(), what)
        return value
    if isinstance(value, str | bytes):
        size = len(value)
    elif isinstance(value, list | tuple | dict | set | frozenset | Namespace | Cycler):
        size = _size(value)
        _refuse_size(size, what)
    else:
        return value
    budget = _budget.get()
    if budget is not None:
        budget.charge(size)
    return value


def _refuse_arguments(args: Iterable[Any], kwargs: Mapping[str, Any], what: str) -> None:
    """Arguments are values too: `m(l, l, l, ...)` hands a macro one tuple of them."""
    size = 0
    for value in (*args, *kwargs.values()):
        size += _size(value)
        _refuse_size(size, what)


# -- formats --------------------------------------------------------------------------------

_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d*))?")


def _refuse_widths(numbers: Iterable[str]) -> None:
    for n in numbers:
        if len(n) > 6 or int(n) > MAX_OUTPUT_CHARS:
            raise SecurityError(f"a format width of {n} is too large for a template")


def _check_format(fmt: Any, args: Iterable[Any]) -> None:
    """`'%0999999999d' % 1` and `'%*d' % (999999999, 1)` build huge strings in C."""
    if isinstance(fmt, bytes):
        fmt = fmt.decode("latin-1")
    if not isinstance(fmt, str):
        return
    specs = _PERCENT_SPEC.findall(fmt)
    _refuse_widths(n for spec in specs for n in spec if n and n != "*")
    if any("*" in spec for spec in specs):
        for arg in args:
            _refuse_number(arg, "a format width")


class _BoundedFormatter(SandboxedFormatter):
    """`str.format`'s formatter, with each field's width and precision checked once its
    nested fields are filled in: `'{:>{}}'.format('x', 10**9)`,
    `'{0[a]:>{0[w]}}'.format({'a': 'x', 'w': 10**9})`."""

    def format_field(self, value: Any, format_spec: str) -> Any:
        if not isinstance(value, date | dt_time):  # a strftime pattern: its digits are text
            _refuse_widths(re.findall(r"\d+", format_spec))
        return super().format_field(value, format_spec)


class _BoundedEscapeFormatter(_BoundedFormatter, EscapeFormatter):
    """The same, for `Markup.format`: values are escaped."""


def _check_replace(text: Any, old: Any, new: Any) -> None:
    kind = str if isinstance(text, str) else bytes if isinstance(text, bytes) else None
    if kind is not None and isinstance(old, kind) and isinstance(new, kind):
        count = text.count(old) if old else len(text) + 1
        _refuse_size(len(text) + count * len(new), "replace")


def _checked_join(separator: Any, items: Any) -> list[Any]:
    listed = list(items)
    size = sum(_size(i) for i in listed) + _size(separator) * max(len(listed) - 1, 0)
    _refuse_size(size, "join")
    return listed


# -- filters --------------------------------------------------------------------------------
# Each check takes what its filter takes (by Jinja's parameter names, without the context,
# eval context or environment) and returns the value to filter: the same one, or a list
# where the filter would walk an iterator twice.


def _check_center(value: Any, width: Any = 80, *_: Any, **__: Any) -> Any:
    _refuse_number(width, "center")
    return value


def _check_indent(s: Any, width: Any = 4, *_: Any, **__: Any) -> Any:
    text = str(s)
    step = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    _refuse_size(len(text) + (text.count("\n") + 1) * step, "indent")
    return s


def _check_replace_filter(s: Any, old: Any = "", new: Any = "", *_: Any, **__: Any) -> Any:
    _check_replace(s, old, new)
    return s


def _check_format_filter(value: Any, *args: Any, **kwargs: Any) -> Any:
    _check_format(value, (*args, *kwargs.values()))
    return value


def _check_join(value: Any, d: Any = "", *_: Any, **__: Any) -> Any:
    return _checked_join(d, value)


def _check_batch(
    value: Any, linecount: Any = None, fill_with: Any = None, *_: Any, **__: Any
) -> Any:
    # The last batch is padded to `linecount` items with `fill_with`, in one step.
    if fill_with is not None and isinstance(linecount, int):
        _refuse_size(
            linecount * (_size(fill_with) + 2), f"batch({_shown(linecount)}) with a fill value"
        )
    return value


def _check_slice(value: Any, slices: Any = None, *_: Any, **__: Any) -> Any:
    if isinstance(slices, int) and slices > MAX_RANGE:
        raise SecurityError(f"slice({_shown(slices)}): at most {MAX_RANGE} slices in a template")
    return value


def _check_wordwrap(
    s: Any,
    width: Any = 79,
    break_long_words: Any = True,
    wrapstring: Any = None,
    *_: Any,
    **__: Any,
) -> Any:
    # Greedy wrapping: two lines in a row hold more than `width` characters of the text,
    # so a paragraph of n characters wraps into at most 2n/(width+1) + 1 lines.
    text, wrap = str(s), "\n" if wrapstring is None else str(wrapstring)
    if isinstance(width, int) and width > 0:
        lines = 2 * len(text) // (width + 1) + len(text.splitlines()) + 1
        _refuse_size(len(text) + lines * len(wrap), "wordwrap")
    return s


def _check_tojson(value: Any, indent: Any = None, *_: Any, **__: Any) -> Any:
    step = len(indent) if isinstance(indent, str) else indent if isinstance(indent, int) else 0
    if step:
        _refuse_number(step, "tojson's indent")
        _refuse_size(_size(value) + _indented_size(value, step), "tojson with an indent")
    return value


def _check_round(value: Any, precision: Any = 0, *_: Any, **__: Any) -> Any:
    # round(1, -10**6) and the 'ceil' and 'floor' methods compute 10**precision.
    if isinstance(precision, int) and abs(precision) > MAX_NUMBER_DIGITS:
        raise SecurityError(
            f"round: a precision of {_shown(precision)} digits is too large for a template"
        )
    return value


def _check_int(value: Any, *_: Any, **__: Any) -> Any:
    # Reading a number is quadratic in its length, and Python's own limit can be lifted.
    if isinstance(value, str | bytes) and len(value) > _MAX_NUMBER_BITS + 8:
        raise SecurityError(f"int: {len(value)} characters are too long for a number")
    return value


def _check_sum(iterable: Any, attribute: Any = None, start: Any = 0, *_: Any, **__: Any) -> Any:
    # Adding sequences (`|sum(start=[])`) copies the running total at every step.
    if isinstance(start, int | float | Decimal):
        return iterable
    items = list(iterable)
    total = _size(start) + sum(_size(i) for i in items)
    _refuse_size(total, "sum")
    if len(items) * total > MAX_WORK_CHARS:
        raise SecurityError(
            f"sum of {len(items)} sequences would copy over {MAX_WORK_CHARS} characters; "
            "use join or a loop"
        )
    return items


def _check_urlize(
    value: Any,
    trim_url_limit: Any = None,
    nofollow: Any = False,
    target: Any = None,
    rel: Any = None,
    *_: Any,
    **__: Any,
) -> Any:
    # `rel` and `target` are repeated in every link.
    extra = len(str(rel or "")) + len(str(target or ""))
    _refuse_size(len(str(value).split()) * extra, "urlize's rel and target")
    return value


def _check_pprint(value: Any, *_: Any, **__: Any) -> Any:
    _refuse_size(_size(value) + _indented_size(value, 1), "pprint")
    return value


_FILTER_CHECKS: dict[str, Callable[..., Any]] = {
    "center": _check_center,
    "indent": _check_indent,
    "replace": _check_replace_filter,
    "format": _check_format_filter,
    "join": _check_join,
    "batch": _check_batch,
    "slice": _check_slice,
    "wordwrap": _check_wordwrap,
    "tojson": _check_tojson,
    "round": _check_round,
    "int": _check_int,
    "sum": _check_sum,
    "urlize": _check_urlize,
    "pprint": _check_pprint,
}
"""What each filter that can build something big or compute for long in one step is checked
for before it runs."""

_UNWATCHED_FILTERS = frozenset(
    {
        *("abs", "attr", "capitalize", "center", "count", "d", "default", "e", "escape"),
        *("filesizeformat", "first", "float", "forceescape", "format", "int", "last"),
        *("length", "list", "lower", "random", "replace", "reverse", "round", "safe"),
        *("string", "trim", "truncate", "upper", "wordcount"),
        *("money", "date", "datetime", "days_until"),
    }
)
"""Filters that do a bounded amount of Python work (or one C call on a value within the
limits): they run without the watchdog, which slows Python code down several times. Every
other filter (`sort`, `urlize`, `title`, `striptags`, `pprint`, ...) loops in Python over
its input and runs watched (`_watched`)."""

_WATCHED_STEPS = frozenset({"select", "reject", "selectattr", "rejectattr", "unique"})
"""Lazy filters whose one step may pass over the whole input (looking for the next item that
passes the test, or has not been seen): each step runs watched. The steps of the others
(`map`, `batch`, `slice`, `items`) take one item, or one batch, and are only counted."""

_LEADS: dict[str | None, Callable[[Context], tuple[Any, ...]]] = {
    None: lambda context: (),
    "context": lambda context: (context,),
    "eval_context": lambda context: (context.eval_ctx,),
    "environment": lambda context: (context.environment,),
}


def _guarded(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """A filter, with its arguments checked before it runs (`_FILTER_CHECKS`), run under the
    render's deadline, and its result checked and counted after.

    Every guarded filter takes the template's context, so Jinja never runs one while it
    compiles a template (constant folding: `[1]|batch(100000000, 0)` would run there, with
    no budget), and hands the filter the context, eval context or environment it asks for."""
    lead = _LEADS[getattr(getattr(function, "jinja_pass_arg", None), "name", None)]
    check = _FILTER_CHECKS.get(name)
    watched = name not in _UNWATCHED_FILTERS
    what = f"filter {name}"

    @wraps(function)
    def guarded(context: Context, *args: Any, **kwargs: Any) -> Any:
        _tick()
        if len(args) > 1 or kwargs:
            _refuse_arguments(args[1:], kwargs, f"the arguments of {what}")
        if check is not None and args:
            with contextlib.suppress(TypeError):  # arguments the filter itself refuses
                args = (check(*args, **kwargs), *args[1:])
        if watched:
            out = _watched(lambda: function(*lead(context), *args, **kwargs))
        else:
            out = function(*lead(context), *args, **kwargs)
        if isinstance(out, GeneratorType):
            return _Steps(out, watched=name in _WATCHED_STEPS)
        return _built(out, what)

    return pass_context(guarded)


class _Steps:
    """A filter's lazy result (`map`, `select`, `slice`, `unique`): each step counted, and,
    for `_WATCHED_STEPS`, run under the render's deadline however long it takes to find the
    next item."""

    def __init__(self, iterator: Iterator[Any], *, watched: bool):
        self._iterator = iterator
        self._watched = watched

    def __iter__(self) -> _Steps:
        return self

    def __next__(self) -> Any:
        _tick()
        if self._watched:
            return _watched(self._iterator.__next__)
        return next(self._iterator)


# -- loops, literals, namespaces ------------------------------------------------------------


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
    """Routes every loop, every `~` and every list, tuple and dict the template writes
    through the environment, where they are counted."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = _environment_call("bounded_loop", node.iter)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _environment_call("bounded_concat", *node.nodes)

    # `[l, l, l, l]` of a big `l`, nested a few times, is a value of exponential size
    # that `|string`, `|tojson` or `==` would walk in one step.
    def visit_List(self, node: nodes.List) -> nodes.Node:
        self.generic_visit(node)
        return _environment_call("bounded_literal", node)

    def visit_Dict(self, node: nodes.Dict) -> nodes.Node:
        self.generic_visit(node)
        return _environment_call("bounded_literal", node)

    def visit_Tuple(self, node: nodes.Tuple) -> nodes.Node:
        self.generic_visit(node)
        return _environment_call("bounded_literal", node) if node.ctx == "load" else node


def _environment_call(method: str, *args: Any) -> nodes.Call:
    lineno = args[0].lineno if args else None
    return nodes.Call(
        nodes.EnvironmentAttribute(method, lineno=lineno),
        list(args),
        [],
        None,
        None,
        lineno=lineno,
    )


class _BoundedNamespace(Namespace):
    """`namespace()`: what `{% set ns.x = ... %}` keeps is a value built like any other."""

    def __setitem__(self, name: str, value: Any) -> None:
        _tick()
        _refuse_size(_size({**_namespace_attrs(self), name: value}), "a namespace")
        super().__setitem__(name, value)


def _bounded_range(*args: int) -> range:
    numbers = range(*args)
    if len(numbers) > MAX_RANGE:
        raise SecurityError(f"range() in a template is limited to {MAX_RANGE} items")
    return numbers


@pass_eval_context
def _finalize(eval_ctx: EvalContext, value: Any) -> Any:
    """Every `{{ value }}` passes here before it becomes text. It takes the eval context so
    that Jinja never finalizes (and so never computes) an expression while compiling."""
    budget = _tick()
    size = _size(value)
    _refuse_size(size, "a printed value")
    if budget is not None:
        budget.charge(size)  # a block or macro joins what it prints in one step
    return value


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox (immutable: templates cannot grow lists), with every way of building a
    big value or spinning for long checked against one render's budget: arithmetic, `~`,
    loops, literals, method calls and filters — Jinja's own and the `filters` given.

    Nothing a template says runs while it compiles: the optimizer is off, intercepted
    operators are never folded, filters take the context and `finalize` the eval context,
    both of which Jinja treats as known only at run time."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, *, filters: Mapping[str, Callable[..., Any]] | None = None, **options: Any):
        super().__init__(finalize=_finalize, optimized=False, **options)
        self.globals["range"] = _bounded_range
        self.globals["namespace"] = _BoundedNamespace
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
        out: str = _built(markup_join(values), "joining values with ~")
        return out

    def bounded_literal(self, value: Result) -> Result:
        _tick()
        _refuse_size(_size(value), f"a {type(value).__name__} written in the template")
        return value

    def getattr(self, obj: Any, attribute: str) -> Any:
        _tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _tick()
        return super().getitem(obj, argument)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _tick()
        numbers = (
            isinstance(left, int)
            and isinstance(right, int)
            and not isinstance(left, bool)
            and not isinstance(right, bool)
        )
        if operator == "**" and numbers and right > 0 and abs(left) > 1:
            # The result has right * log2(left) bits; a huge exponent is refused unread.
            bits = right * math.log2(abs(left)) if right.bit_length() < 64 else math.inf
            _refuse_bits(bits, "`**`")
        elif operator == "*" and numbers:
            _refuse_bits(left.bit_length() + right.bit_length() - 1, "`*`")
        elif operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | bytes | list | tuple) and isinstance(times, int):
                    _refuse_size(_size(seq) * times, "a repeated value")
        elif operator == "+":
            if isinstance(left, str | bytes | list | tuple):
                _refuse_size(_size(left) + _size(right), "adding values")
        elif operator == "%" and isinstance(left, str | bytes):
            _check_format(left, right if isinstance(right, tuple) else (right,))
        out = super().call_binop(context, operator, left, right)
        return _built(out, f"`{operator}`")

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """`str.format` and `str.format_map` as a template gets them: through the
        sandbox's formatter, with every width checked (`_BoundedFormatter`)."""
        receiver = getattr(value, "__self__", None)
        method = getattr(value, "__name__", None)
        if not isinstance(receiver, str) or method not in ("format", "format_map"):
            return None
        formatter: _BoundedFormatter = (
            _BoundedEscapeFormatter(self, escape=receiver.escape)
            if isinstance(receiver, Markup)
            else _BoundedFormatter(self)
        )

        def bounded_format(*args: Any, **kwargs: Any) -> str:
            if method == "format_map":
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one mapping")
                return type(receiver)(formatter.vformat(receiver, (), args[0]))
            return type(receiver)(formatter.vformat(receiver, args, kwargs))

        return update_wrapper(bounded_format, value)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _tick()
        # What Jinja adds to a call made in a loop or block, for a callable taking the context.
        scope = {k: kwargs.pop(k) for k in ("_loop_vars", "_block_vars") if k in kwargs}
        if getattr(__obj, "__self__", None) is __self:
            return __obj(*args, **kwargs)  # bounded_loop & co., which `_Bounds` put there
        # The sandbox hands out `str.format` wrapped; the bound method is `__wrapped__`.
        target = getattr(__obj, "__wrapped__", __obj)
        receiver = getattr(target, "__self__", None)
        method = getattr(target, "__name__", "")
        what = (
            f"{type(receiver).__name__}.{method}"
            if receiver is not None and method
            else method or getattr(target, "name", None) or "a call"
        )
        _refuse_arguments(args, kwargs, f"the arguments of {what}")
        if isinstance(receiver, str | bytes):
            if method in ("translate", "maketrans"):
                raise SecurityError(f"str.{method} is not available in templates")
            if method in ("center", "ljust", "rjust", "zfill"):
                for arg in (*args, *kwargs.values()):
                    _refuse_number(arg, f"str.{method}")
            elif method == "expandtabs":
                tabsize = args[0] if args else kwargs.get("tabsize", 8)
                if isinstance(tabsize, int):
                    _refuse_size(len(receiver) * max(tabsize, 1), "expandtabs")
            elif method == "replace" and len(args) >= 2:
                _check_replace(receiver, args[0], args[1])
            elif method == "join" and args:
                args = (_checked_join(receiver, args[0]), *args[1:])
        elif isinstance(receiver, int) and method == "to_bytes":
            _refuse_number(args[0] if args else kwargs.get("length", 1), "int.to_bytes")

        def run() -> Any:
            return super(BoundedEnvironment, __self).call(
                __context, __obj, *args, **kwargs, **scope
            )

        # A macro (or a recursive loop) is template code, counted as it runs: unwatched.
        out = run() if isinstance(__obj, Macro | LoopContext) else _watched(run)
        return _built(out, what)
