"""temporal: ending a short-lived process that used a Temporal client (`nudge …`, the bench).

Kept apart from the client, so a command imports no SDK just to exit."""

from __future__ import annotations

import os
import sys
from typing import NoReturn


def exit_process(code: int) -> NoReturn:
    """Exit once output is flushed, without interpreter teardown: a Temporal client still
    referenced then can abort the process at exit (temporalio/sdk-python#300, exit 134).
    Close clients first; this is the backstop."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
