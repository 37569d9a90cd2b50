"""tests: `nudge` as a user runs it — a process in its own directory, only the NUDGE_*
settings a test gives — and what it printed."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.fixtures.api import ADMIN_TOKEN, WRITE_KEY

NUDGE = Path(sys.executable).parent / "nudge"
CAMPAIGN = "id: hello\nname: Hello\nentry: {event: Signed Up}\nsteps:\n  - {id: hi, type: exit}\n"


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str

    def failed_with(self, *parts: str) -> str:
        """The one line the command printed on stderr, checked to hold each of `parts`."""
        assert self.code != 0, self
        assert "Traceback" not in self.stderr, self.stderr
        assert self.stdout == "", self.stdout
        lines = self.stderr.strip().splitlines()
        assert len(lines) == 1, self.stderr
        for part in parts:
            assert part in lines[0], (part, lines[0])
        return lines[0]


C_LOCALE = {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": ""}
"""A terminal that is not UTF-8: Python's standard streams are ASCII under it."""


async def nudge(
    cwd: Path,
    *args: str,
    url: str,
    environ: dict[str, str] | None = None,
    **settings: str | None,
) -> Ran:
    """Run `nudge ARGS` against `url`, in `cwd` (so no developer's .env is read), with the
    test's credentials unless `settings` (NUDGE_* names, lower case, without the prefix;
    None: unset) say otherwise; `environ` adds other variables (a locale). Asynchronous, so
    an API served in this loop can answer."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUDGE_")}
    env |= environ or {}
    env |= {"NUDGE_URL": url, "NUDGE_WRITE_KEY": WRITE_KEY, "NUDGE_ADMIN_TOKEN": ADMIN_TOKEN}
    for name, value in settings.items():
        env.pop(f"NUDGE_{name.upper()}", None)
        if value is not None:
            env[f"NUDGE_{name.upper()}"] = value
    env["NUDGE_LOG_LEVEL"] = "WARNING"
    process = await asyncio.create_subprocess_exec(
        str(NUDGE),
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return Ran(process.returncode, out.decode("utf-8"), err.decode("utf-8"))


def closed_url() -> str:
    """An API address nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"
