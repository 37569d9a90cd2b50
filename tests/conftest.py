"""tests: fixtures are real parts — databases, Temporal servers, HTTP servers on 127.0.0.1.

A test that runs past its timeout (pytest-timeout's `timeout`, or `@pytest.mark.timeout`)
fails one of two ways, both without hanging the run:

- an async test is cancelled where it waits: it fails with that place in its traceback,
  its `finally` blocks and fixtures clean up, and the run goes on. (pytest-timeout's
  `signal` method raised from a signal handler into whatever the one event loop ran at that
  moment — another test's task, or the loop itself — so the hung test either went on hanging
  or was reported failed while its task lived on into later tests.)
- whatever cancelling cannot reach — a blocked event loop, a fixture that hangs, a sync
  test — meets pytest-timeout's `thread` method: every thread's stack is printed and the run
  ends. For an async test that happens BACKSTOP_SECONDS after its cancellation, so its
  cleanup has time to run first.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Generator
from typing import Any

import pytest
import pytest_timeout
from pytest_asyncio import is_async_test

pytest_plugins = [
    "pytester",
    "tests.fixtures.db",
    "tests.fixtures.temporal",
    "tests.fixtures.servers",
    "tests.fixtures.processes",
]

BACKSTOP_SECONDS = 60.0
"""How long a cancelled async test has to clean up before the run is ended."""

_deadline = pytest.StashKey[tuple[float, float]]()
"""An async test's timeout, and when it is cancelled (time.monotonic())."""


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool | None:
    if not is_async_test(item):
        return None  # pytest-timeout's own timer, with the configured method
    item.stash[_deadline] = (settings.timeout, time.monotonic() + settings.timeout)
    backstop = settings._replace(timeout=settings.timeout + BACKSTOP_SECONDS, method="thread")
    result: bool = pytest_timeout.pytest_timeout_set_timer(item=item, settings=backstop)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Function) -> Generator[None, None, None]:
    bound = item.stash.get(_deadline, None)
    if bound is None:
        return (yield)
    test = item.obj
    item.obj = _cancelled_at(test, *bound)
    try:
        return (yield)
    finally:
        item.obj = test


def _cancelled_at(test: Callable[..., Any], timeout: float, deadline: float) -> Callable[..., Any]:
    @functools.wraps(test)
    async def bounded(*args: Any, **kwargs: Any) -> Any:
        scope = asyncio.timeout(deadline - time.monotonic())
        try:
            async with scope:
                return await test(*args, **kwargs)
        except TimeoutError:
            if not scope.expired():
                raise  # the test's own
            pytest.fail(
                f"Timeout: still running after {timeout:.0f} s, cancelled where it waited "
                "(the traceback above)",
                pytrace=True,
            )

    return bounded
