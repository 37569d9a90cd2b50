"""The suite's timeouts (tests/conftest.py, pyproject.toml): an async test that hangs fails
on its own, cleans up, and the run goes on — whether the event loop is idle meanwhile or
busy with other tasks, as it is with a worker's pollers or a server.

Each case runs a small pytest session of its own with the project's settings, a 2 s
timeout, and two tests: one that hangs, and one after it that must find the first one's
cleanup done and no task of it left on the shared event loop.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN_WITHIN = 90.0
"""Seconds for the whole small session (mostly imports): a hang never ends it."""

HUNG_THEN_NEXT = """
import asyncio
import contextlib

cleaned = []


async def test_hangs():
    async def busy():
        while True:
            await asyncio.sleep(0)

    spinner = asyncio.create_task(busy()) if {busy} else None
    try:
        await asyncio.Event().wait()
    finally:
        if spinner is not None:
            spinner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await spinner
        cleaned.append("hung test")


async def test_next():
    assert cleaned == ["hung test"]
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert others == []
"""


@pytest.mark.parametrize(
    "busy",
    [pytest.param(False, id="idle-loop"), pytest.param(True, id="busy-loop")],
)
def test_a_hung_async_test_fails_alone_cleans_up_and_the_run_goes_on(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, busy: bool
):
    pytester.makepyfile(test_hung=HUNG_THEN_NEXT.format(busy=busy))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    try:
        result = pytester.runpytest_subprocess(
            *("-c", str(ROOT / "pyproject.toml"), "-p", "tests.conftest"),
            *("-p", "no:cacheprovider", "-o", "timeout=2", "test_hung.py"),
            timeout=RUN_WITHIN,
        )
    except pytester.TimeoutExpired:
        pytest.fail(f"the run hung: a 2 s timeout did not end it within {RUN_WITHIN:.0f} s")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        ["*await asyncio.Event().wait()*", "*Timeout: still running after 2 s*"]
    )
