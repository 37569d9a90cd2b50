"""The `nudge` command's error paths, run as a user runs it (a process, its own directory,
only the NUDGE_* settings given here): each ends with one line on stderr that says what is
wrong and what to do, a non-zero exit, and no traceback."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from temporal.servers import free_port
from tests.cli.runner import C_LOCALE, CAMPAIGN, closed_url, nudge
from tests.fixtures.api import RunningApi, make_settings, running_api


@pytest.fixture
async def api(sqlite_url: str) -> AsyncIterator[RunningApi]:
    """The real API on SQLite (Temporal unreachable: these calls do not need it)."""
    async with running_api(make_settings(sqlite_url, f"127.0.0.1:{free_port()}")) as running:
        yield running


# -- the campaign file -------------------------------------------------------------------


async def test_apply_a_file_that_does_not_exist(tmp_path: Path) -> None:
    ran = await nudge(tmp_path, "campaigns", "apply", "cart.yaml", url=closed_url())
    ran.failed_with("cannot read cart.yaml", "no such file")


async def test_apply_a_directory(tmp_path: Path) -> None:
    (tmp_path / "campaigns").mkdir()
    ran = await nudge(tmp_path, "campaigns", "apply", "campaigns", url=closed_url())
    ran.failed_with("cannot read campaigns", "a directory")


async def test_apply_a_file_that_is_not_text(tmp_path: Path) -> None:
    (tmp_path / "cart.yaml").write_bytes(b"\xff\xfe\x00id: cart")
    ran = await nudge(tmp_path, "campaigns", "apply", "cart.yaml", url=closed_url())
    ran.failed_with("cannot read cart.yaml", "not UTF-8 text")


async def test_apply_an_unreadable_file(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads any file: no permission error to provoke")
    path = tmp_path / "cart.yaml"
    path.write_text(CAMPAIGN)
    path.chmod(0)
    ran = await nudge(tmp_path, "campaigns", "apply", "cart.yaml", url=closed_url())
    ran.failed_with("cannot read cart.yaml", "permission denied")


async def test_every_command_that_reads_files_says_why_in_one_line(tmp_path: Path) -> None:
    """The other commands that take files (a segment, a simulation's campaign and
    scenarios): missing, a directory, not UTF-8, not YAML, not JSON — one line each, naming
    the file, before any server is asked."""
    (tmp_path / "cart.yaml").write_text(CAMPAIGN)
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "latin1.yaml").write_bytes(b"user: caf\xe9\n")
    (tmp_path / "bad.yaml").write_text("user: [\n")
    (tmp_path / "bad.json").write_text('{"user": ')
    run = partial(nudge, tmp_path, url=closed_url())
    runs = await asyncio.gather(
        run("segments", "apply", "shanghai.yaml"),
        run("segments", "apply", "scenarios"),
        run("simulate", "missing.yaml", "bad.yaml"),
        run("simulate", "cart.yaml", "latin1.yaml"),
        run("simulate", "cart.yaml", "bad.yaml"),
        run("simulate", "cart.yaml", "bad.json"),
    )
    runs[0].failed_with("cannot read shanghai.yaml: no such file")
    runs[1].failed_with("cannot read scenarios: it is a directory")
    runs[2].failed_with("cannot read missing.yaml: no such file")
    runs[3].failed_with("cannot read latin1.yaml: not UTF-8 text (byte 9)")
    runs[4].failed_with("bad.yaml: not valid YAML or JSON: line 2 column 1")
    runs[5].failed_with("bad.json: not valid YAML or JSON", "line 1 column 10")


async def test_a_command_line_argparse_refuses_is_one_line_too(tmp_path: Path) -> None:
    run = partial(nudge, tmp_path, url=closed_url())
    limit, unknown = await asyncio.gather(run("messages", "--limit", "x"), run("bogus"))
    limit.failed_with("error: argument --limit: invalid int value: 'x'", "nudge messages --help")
    unknown.failed_with("invalid choice: 'bogus'", "(see nudge --help)")
    assert limit.code == unknown.code == 2


async def test_a_setting_that_is_wrong_is_one_line_naming_its_variable(tmp_path: Path) -> None:
    run = partial(nudge, tmp_path, "campaigns", "list", url=closed_url())
    port, clock = await asyncio.gather(run(api_port="abc"), run(quiet_hours_start="25:00"))
    port.failed_with("error: configuration: NUDGE_API_PORT: Input should be a valid integer")
    clock.failed_with("error: configuration:", "invalid time of day '25:00'")


# -- the API ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("campaigns", "list"),
        ("campaigns", "apply", "cart.yaml"),
        ("events", "send", "--user", "ada", "--event", "Signed Up"),
        ("journeys", "show", "cart", "ada"),
    ],
    ids=["list", "apply", "send", "show"],
)
async def test_an_unreachable_api_is_named_with_how_to_point_at_it(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    (tmp_path / "cart.yaml").write_text(CAMPAIGN)
    url = closed_url()
    ran = await nudge(tmp_path, *args, url=url)
    line = ran.failed_with(f"cannot reach the Nudge API at {url}", "NUDGE_URL", "--url")
    assert not line.startswith("error: 0:")  # no status where there was no answer


async def test_a_url_that_is_not_one(tmp_path: Path) -> None:
    ran = await nudge(tmp_path, "campaigns", "list", url="127.0.0.1:8000")
    ran.failed_with("cannot reach the Nudge API at 127.0.0.1:8000", "http://")


@pytest.fixture
def not_nudge(tmp_path: Path) -> Iterator[str]:
    """A web server that is not the Nudge API (say, the Temporal UI on :8233): it answers
    GET /v1/campaigns 200 with an HTML page."""
    site = tmp_path / "site"
    (site / "v1" / "campaigns").mkdir(parents=True)
    (site / "v1" / "campaigns" / "index.html").write_text("<html>Temporal</html>")
    handler = partial(SimpleHTTPRequestHandler, directory=str(site))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def test_a_url_that_is_not_the_nudge_api(tmp_path: Path, not_nudge: str) -> None:
    ran = await nudge(tmp_path, "campaigns", "list", url=not_nudge)
    ran.failed_with(f"{not_nudge} did not answer as the Nudge API", "NUDGE_URL")


async def test_a_wrong_admin_token_is_a_401_naming_the_setting(
    tmp_path: Path, api: RunningApi
) -> None:
    ran = await nudge(tmp_path, "campaigns", "list", url=api.url, admin_token="wrong")
    ran.failed_with("error: 401: wrong admin token", "set NUDGE_ADMIN_TOKEN")


async def test_a_wrong_write_key_is_a_401_naming_the_setting(
    tmp_path: Path, api: RunningApi
) -> None:
    args = ("events", "send", "--user", "ada", "--event", "Signed Up")
    ran = await nudge(tmp_path, *args, url=api.url, write_key="wrong")
    ran.failed_with("error: 401: wrong write key", "set NUDGE_WRITE_KEY")
    assert await api.events() == []


async def test_without_an_admin_token_the_401_says_which_setting(
    tmp_path: Path, api: RunningApi
) -> None:
    # Unset, the command sends the development placeholder, which this API refuses.
    ran = await nudge(tmp_path, "journeys", "show", "cart", "ada", url=api.url, admin_token=None)
    ran.failed_with("error: 401: wrong admin token", "set NUDGE_ADMIN_TOKEN")


async def test_the_apis_own_refusal_is_shown(tmp_path: Path, api: RunningApi) -> None:
    """What the API says is wrong with a definition reaches the user, path and all: every
    problem, on one line."""
    steps = "  - {id: a, type: send, channel: sandbox, template: hi, next: b}\n"
    steps += "  - {id: b, type: send, channel: sandbox, template: bye}\n"
    (tmp_path / "cart.yaml").write_text(CAMPAIGN.split("steps:")[0] + "steps:\n" + steps)
    ran = await nudge(tmp_path, "campaigns", "apply", "cart.yaml", url=api.url)
    ran.failed_with("error: 422: ", "steps[0].template: no template named 'hi'; steps[1]")


@pytest.mark.parametrize(
    ("properties", "says"),
    [("{not json", "--properties is not JSON"), ("[1, 2]", "--properties must be a JSON object")],
)
async def test_event_properties_must_be_a_json_object(
    tmp_path: Path, api: RunningApi, properties: str, says: str
) -> None:
    args = ("events", "send", "--user", "ada", "--event", "Signed Up")
    ran = await nudge(tmp_path, *args, "--properties", properties, url=api.url)
    ran.failed_with(says)
    assert await api.events() == []


async def test_the_happy_path_still_prints_json(tmp_path: Path, api: RunningApi) -> None:
    (tmp_path / "cart.yaml").write_text(CAMPAIGN)
    ran = await nudge(tmp_path, "campaigns", "apply", "cart.yaml", url=api.url)
    # What was done, for a person, on stderr; stdout stays the JSON a script reads.
    assert (ran.code, ran.stderr) == (
        0,
        "hello: version 1 saved; the campaign is a draft, nothing enters it until: "
        "nudge campaigns activate hello\n",
    )
    assert json.loads(ran.stdout)["id"] == "hello"


async def test_bad_json_in_a_definition_file_is_one_line(tmp_path: Path, api: RunningApi) -> None:
    (tmp_path / "cart.json").write_text('{"id": "cart", "name": ')
    ran = await nudge(tmp_path, "campaigns", "apply", "cart.json", url=api.url)
    line = ran.failed_with("error: 4")
    assert "JSON" in line or "json" in line, line


@pytest.fixture
def failing_api() -> Iterator[str]:
    """A server that fails every request as an API with a bug does: 500, a short text."""

    class Failing(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"Internal Server Error"
            self.send_response(500)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def test_a_server_error_is_one_line_saying_the_api_failed(
    tmp_path: Path, failing_api: str
) -> None:
    ran = await nudge(tmp_path, "campaigns", "list", url=failing_api)
    ran.failed_with("error: 500: Internal Server Error", "the API failed")


# -- output ----------------------------------------------------------------------------------


async def test_output_is_utf8_not_escaped_even_under_a_c_locale(
    tmp_path: Path, api: RunningApi
) -> None:
    """What people read prints as they wrote it — in JSON on stdout and in an error on
    stderr — on a terminal whose locale is not UTF-8 (Python's streams are ASCII there)."""
    segment = "id: cafe\nname: Café crème à 2,50 €\ntraits:\n  - {path: traits.city, op: eq, value: Zürich}\n"
    (tmp_path / "café.yaml").write_text(segment, encoding="utf-8")
    applied, missing = await asyncio.gather(
        nudge(tmp_path, "segments", "apply", "café.yaml", url=api.url, environ=C_LOCALE),
        nudge(tmp_path, "campaigns", "show", "café-crème", url=api.url, environ=C_LOCALE),
    )
    assert (applied.code, applied.stderr) == (0, ""), applied
    assert '"name": "Café crème à 2,50 €"' in applied.stdout
    assert "\\u" not in applied.stdout
    missing.failed_with("error: 4", "café-crème")


async def test_messages_of_a_user_in_no_journey_say_so(tmp_path: Path, api: RunningApi) -> None:
    ran = await nudge(tmp_path, "messages", "--user", "nobody", url=api.url)
    assert ran.code == 0, ran
    assert json.loads(ran.stdout) == []  # stdout stays JSON: the reason goes to stderr
    assert "no message sent to nobody: they are in no journey" in ran.stderr
    assert "nudge events send --user nobody" in ran.stderr


# -- nudge dev's ports -----------------------------------------------------------------------


async def test_nudge_dev_says_which_port_is_taken_by_what_and_both_ways_to_move(
    tmp_path: Path,
) -> None:
    """One line, before anything starts (no database, no server); the other ports and
    NUDGE_TEMPORAL_ADDRESS are checked in tests/worker/test_dev.py, in process."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = partial(nudge, tmp_path, url=closed_url(), api_port=str(port))
        ran, api = await asyncio.gather(run("dev"), run("api"))
    ran.failed_with(
        f"port {port} (API) is in use by pid {os.getpid()} (python",
        "--api-port PORT",
        "NUDGE_API_PORT=PORT",
    )
    # `nudge api` too, where the setting is the one way.
    api.failed_with(f"port {port} (API) is in use by pid {os.getpid()} (", "NUDGE_API_PORT=PORT")
    assert not (tmp_path / ".nudge").exists()  # nothing started, nothing written
