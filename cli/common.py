"""cli: what every `nudge` command shares — settings, the API's address, reading the files a
user names, calling the API with one-line errors, printing answers."""

from __future__ import annotations

import argparse
import asyncio
import codecs
import json
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from core.config import Settings


def settings_or_exit() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise SystemExit(f"error: configuration: {settings_problems(exc)}") from exc
    except ValueError as exc:  # a value the environment source cannot even parse (JSON)
        raise SystemExit(f"error: configuration: {' '.join(str(exc).split())}") from exc


def settings_problems(exc: ValidationError) -> str:
    """Pydantic's report in one line, each problem under its variable's name:
    "NUDGE_API_PORT: Input should be a valid integer ('abc')"."""
    problems = []
    for error in exc.errors():
        names = [str(part) for part in error["loc"]]
        where = f"NUDGE_{names[0].upper()}" if names else "settings"
        given = error.get("input")
        shown = f" ({given!r})" if names and isinstance(given, str) else ""
        message = str(error["msg"]).removeprefix("Value error, ")
        problems.append(
            f"{where}{'.' + '.'.join(names[1:]) if names[1:] else ''}: {message}{shown}"
        )
    return "; ".join(problems)


def api_url(args: argparse.Namespace, settings: Settings) -> str:
    return (
        args.url
        or os.environ.get("NUDGE_URL")
        or (f"http://{settings.api_host}:{settings.api_port}")
    )


def print_json(data: Any) -> None:
    """As people read it: '150,00 €', not '150,00\\u00a0\\u20ac' (stdout is UTF-8, see
    `utf8_output`)."""
    print(json.dumps(data, indent=2, default=str, ensure_ascii=False))


def utf8_output() -> None:
    """Write stdout and stderr as UTF-8 whatever the locale says (a C locale, a pipe on a
    system whose default is not UTF-8): what the API answers is Unicode, and a `€` must
    neither fail to print nor turn into an escape."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(encoding="utf-8", errors="backslashreplace")


def parse_json(text: str, *, what: str) -> Any:
    """JSON a user gave (`what` names where: '--properties', 'scenario.json'); a one-line
    error saying where it breaks."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(
            f"error: {what} is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc


def json_object(text: str, *, what: str, example: str = '{"order_id": "o-1"}') -> dict[str, Any]:
    """A JSON object a user gave as an argument or in a file; a one-line error otherwise."""
    value = parse_json(text, what=what)
    if not isinstance(value, dict):
        raise SystemExit(f"error: {what} must be a JSON object, e.g. '{example}'")
    return value


def read_json(name: str) -> Any:
    """A JSON file the user named: readable, UTF-8 and JSON, or a one-line error."""
    return parse_json(read_text(name), what=name)


def utf8_arguments(argv: list[str]) -> list[str]:
    """The command line as the user typed it (UTF-8), also where the locale is not UTF-8:
    Python then decodes it as ASCII with escapes, and `café` would reach the API as
    surrogates it cannot encode."""
    if codecs.lookup(sys.getfilesystemencoding()).name == "utf-8":
        return argv
    return [os.fsencode(arg).decode("utf-8", "surrogateescape") for arg in argv]


def read_text(name: str) -> str:
    """A file the user named, as text; a one-line error saying why it cannot be read."""
    # The name as the file system spells it (see utf8_arguments).
    path = Path(os.fsdecode(name.encode("utf-8", "surrogateescape")))
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise SystemExit(f"error: cannot read {name}: no such file") from exc
    except IsADirectoryError as exc:
        raise SystemExit(f"error: cannot read {name}: it is a directory, not a file") from exc
    except PermissionError as exc:
        raise SystemExit(f"error: cannot read {name}: permission denied") from exc
    except UnicodeDecodeError as exc:
        raise SystemExit(
            f"error: cannot read {name}: not UTF-8 text (byte {exc.start}); save it as UTF-8"
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
    show: Callable[[Any], None] = print_json,
) -> None:
    """Call the API; what goes wrong ends the command with one line on stderr. `credential`
    names the setting the call authenticates with, for a 401's message; `show` prints what
    the call returned (JSON by default; nothing is printed for None)."""
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
    except KeyError as exc:  # JSON, but not the API's shapes
        raise SystemExit(
            f"error: {url} did not answer as the Nudge API (no {exc} in its answer); "
            "check NUDGE_URL or --url"
        ) from exc
    if result is not None:
        show(result)


def refused(exc: Any, *, url: str, credential: str) -> str:
    """The one line a `NudgeClientError` becomes: no answer at all, the API's refusal (a
    definition's problems joined by '; '), or a server that is not the API."""
    import httpx

    if isinstance(exc.__cause__, httpx.HTTPError):
        reason = str(exc.__cause__).rstrip(".")
        return f"error: cannot reach the Nudge API at {url}: {reason}; {POINT_AT_IT}"
    detail = exc.detail
    if exc.status_code == 0:  # refused before any request: a setting is missing
        return f"error: {detail}"
    if isinstance(detail, dict) and isinstance(detail.get("problems"), list):
        # One line, however many: a terminal, a CI log and `2>&1 | tail -1` all show it.
        text = "; ".join(" ".join(str(p).split()) for p in detail["problems"])
    elif isinstance(detail, str) and ("<html" in detail.lower() or "\n" in detail.strip()):
        return (
            f"error: {url} answered {exc.status_code} with a page, not as the Nudge API; "
            "check NUDGE_URL or --url"
        )
    else:
        text = str(detail)
    if exc.status_code == 401:
        text += f" (set {credential} to the one the API was started with)"
    elif exc.status_code == 500:  # 502-504 say themselves what is down (Temporal, a worker)
        text += " (the API failed: its log says why)"
    return f"error: {exc.status_code}: {text}"


@dataclass(frozen=True)
class Groups:
    """The command groups cli/main.py builds, for other modules to add subcommands to:
    `sub` holds the top-level commands (`nudge X`), the others `nudge campaigns X` and
    `nudge journeys X`."""

    sub: argparse._SubParsersAction[Any]
    campaigns: argparse._SubParsersAction[Any]
    journeys: argparse._SubParsersAction[Any]
