"""cli: what every `nudge` command shares — settings, the API's address, reading the files a
user names, calling the API with one-line errors, printing answers."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from core.config import Settings


def settings_or_exit() -> Settings:
    try:
        return Settings()
    except ValueError as exc:
        raise SystemExit(f"configuration error: {exc}") from exc


def api_url(args: argparse.Namespace, settings: Settings) -> str:
    return (
        args.url
        or os.environ.get("NUDGE_URL")
        or (f"http://{settings.api_host}:{settings.api_port}")
    )


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def read_text(name: str) -> str:
    """A file the user named, as text; a one-line error saying why it cannot be read."""
    try:
        return Path(name).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise SystemExit(f"error: cannot read {name}: no such file") from exc
    except IsADirectoryError as exc:
        raise SystemExit(f"error: cannot read {name}: it is a directory, not a file") from exc
    except PermissionError as exc:
        raise SystemExit(f"error: cannot read {name}: permission denied") from exc
    except UnicodeDecodeError as exc:
        raise SystemExit(
            f"error: cannot read {name}: not UTF-8 text (byte {exc.start}); "
            "save the definition as UTF-8 YAML or JSON"
        ) from exc
    except OSError as exc:
        raise SystemExit(f"error: cannot read {name}: {exc.strerror or exc}") from exc


ADMIN_TOKEN = "NUDGE_ADMIN_TOKEN"
WRITE_KEY = "NUDGE_WRITE_KEY"
POINT_AT_IT = "is it running? Point at it with NUDGE_URL or --url"


def with_client(
    args: argparse.Namespace,
    call: Callable[[Any], Awaitable[Any]],
    *,
    credential: str = ADMIN_TOKEN,
) -> None:
    """Call the API; what goes wrong ends the command with one line on stderr. `credential`
    names the setting the call authenticates with, for a 401's message."""
    import httpx

    from api.client import NudgeClient, NudgeClientError

    settings = settings_or_exit()
    url = api_url(args, settings)

    async def run() -> Any:
        async with NudgeClient(
            url,
            write_key=settings.write_key,
            admin_token=settings.admin_token,
        ) as client:
            return await call(client)

    try:
        result = asyncio.run(run())
    except NudgeClientError as exc:
        raise SystemExit(refused(exc, url=url, credential=credential)) from exc
    except httpx.InvalidURL as exc:
        raise SystemExit(f"error: {url!r} is not a URL ({exc}); {POINT_AT_IT}") from exc
    except json.JSONDecodeError as exc:  # a success answer that is not JSON
        raise SystemExit(
            f"error: {url} did not answer as the Nudge API (its answer is not JSON); "
            "check NUDGE_URL or --url"
        ) from exc
    if result is not None:
        print_json(result)


def refused(exc: Any, *, url: str, credential: str) -> str:
    """The one line (or, for a definition's problems, one line each) a `NudgeClientError`
    becomes: no answer at all, the API's refusal, or a server that is not the API."""
    import httpx

    if isinstance(exc.__cause__, httpx.HTTPError):
        reason = str(exc.__cause__).rstrip(".")
        return f"error: cannot reach the Nudge API at {url}: {reason}; {POINT_AT_IT}"
    detail = exc.detail
    if exc.status_code == 0:  # refused before any request: a setting is missing
        return f"error: {detail}"
    if isinstance(detail, dict) and isinstance(detail.get("problems"), list):
        problems = [str(p) for p in detail["problems"]]
        text = problems[0] if len(problems) == 1 else "\n  " + "\n  ".join(problems)
    elif isinstance(detail, str) and ("<html" in detail.lower() or "\n" in detail.strip()):
        return (
            f"error: {url} answered {exc.status_code} with a page, not as the Nudge API; "
            "check NUDGE_URL or --url"
        )
    else:
        text = str(detail)
    if exc.status_code == 401:
        text += f" (set {credential} to the one the API was started with)"
    return f"error: {exc.status_code}: {text}"
