"""temporal: ending a short-lived process that used a Temporal client (`nudge …`, the bench).

Kept apart from the client, so a command imports no SDK just to exit."""

from __future__ import annotations

import asyncio
import os
import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import NoReturn


def exit_process(code: int) -> NoReturn:
    """Exit once output is flushed, without interpreter teardown: a Temporal client still
    referenced then can abort the process at exit (temporalio/sdk-python#300, exit 134).
    Close clients first; this is the backstop."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_to_exit(main: Callable[[], Awaitable[int]]) -> NoReturn:
    """Run `main` on a new event loop and end the process with the code it returns: 130
    on Ctrl-C, 1 (after its traceback) on any error; then `exit_process`."""

    async def run() -> int:
        return await main()

    try:
        code = asyncio.run(run())
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        traceback.print_exc()
        code = 1
    exit_process(code)
