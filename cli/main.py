"""cli: the `nudge` command — thin: starts processes or calls the API through its client."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any, NoReturn

from cli import broadcasts, lifecycle, migrate, operators, simulate, triggers
from cli.common import (
    WRITE_KEY,
    Groups,
    json_object,
    read_text,
    settings_or_exit,
    utf8_arguments,
    utf8_output,
    with_client,
)
from temporal.shutdown import exit_process

# -- processes ---------------------------------------------------------------------------


def cmd_dev(args: argparse.Namespace) -> None:
    from worker.dev import DevOptions, run_dev

    settings = settings_or_exit()
    options = DevOptions(
        api_port=args.api_port,
        temporal_port=args.temporal_port,
        ui_port=args.ui_port,
        examples=None if args.no_examples else DevOptions().examples,
    )
    asyncio.run(run_dev(settings, options))


def cmd_worker(args: argparse.Namespace) -> None:
    from worker.build import run_worker

    asyncio.run(run_worker(settings_or_exit()))


def cmd_api(args: argparse.Namespace) -> None:
    import uvicorn

    from api.app import create_app
    from temporal.servers import port_holder, port_is_free

    settings = settings_or_exit()
    if not port_is_free(settings.api_port, settings.api_host):
        holder = port_holder(settings.api_port)
        raise SystemExit(
            f"error: port {settings.api_port} (API) is in use{f' by {holder}' if holder else ''}: "
            "stop it, or choose another port with NUDGE_API_PORT=PORT"
        )
    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_level=os.environ.get("NUDGE_LOG_LEVEL", "info").lower(),
        proxy_headers=True,
    )


def cmd_migrate(args: argparse.Namespace) -> None:
    from store.db import migrate

    settings = settings_or_exit()
    asyncio.run(migrate(settings.database_url))
    print("database is at the latest schema")


# -- API calls ---------------------------------------------------------------------------


def cmd_campaigns_list(args: argparse.Namespace) -> None:
    with_client(args, lambda c: c.list_campaigns())


def cmd_campaigns_show(args: argparse.Namespace) -> None:
    with_client(args, lambda c: c.get_campaign(args.campaign_id))


def cmd_campaigns_status(args: argparse.Namespace) -> None:
    with_client(args, lambda c: c.set_campaign_status(args.campaign_id, args.action))


def cmd_campaigns_stats(args: argparse.Namespace) -> None:
    with_client(args, lambda c: c.campaign_stats(args.campaign_id))


def cmd_segments_apply(args: argparse.Namespace) -> None:
    text = read_text(args.file)
    with_client(args, lambda c: c.apply_segment(text))


def cmd_segments_list(args: argparse.Namespace) -> None:
    with_client(args, lambda c: c.list_segments())


def cmd_segments_show(args: argparse.Namespace) -> None:
    with_client(args, lambda c: c.get_segment(args.segment_id))


def cmd_segments_members(args: argparse.Namespace) -> None:
    with_client(
        args, lambda c: c.segment_members(args.segment_id, after=args.after, limit=args.limit)
    )


def cmd_messages(args: argparse.Namespace) -> None:
    """The user's messages; when none was sent, why (on stderr, so stdout stays JSON): each
    of the user's journeys and what it waits for — quiet hours with the time they end."""

    async def call(client: Any) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = await client.sandbox_messages(
            user_id=args.user, limit=args.limit
        )
        if args.user and not messages:
            print("\n".join(await why_nothing_sent(client, args.user)), file=sys.stderr)
        return messages

    with_client(args, call)


async def why_nothing_sent(client: Any, user: str) -> list[str]:
    """Lines saying why `user` has no sandbox message: each journey of theirs and what it
    waits for (a send held by quiet hours says until when), and their sends on other
    channels or held back — from the user view (GET /v1/users/{id})."""
    from api.client import NudgeClientError

    try:
        view = await client.get_user(user)
    except NudgeClientError as exc:
        if exc.status_code != 404:
            raise
        view = {"journeys": [], "deliveries": []}
    lines = []
    for journey in view.get("journeys", []):
        step = journey.get("current_step")
        where = str(journey.get("status")) + (f" at step {step}" if step else "")
        why = journey.get("waiting_for") or journey.get("exit_reason") or journey.get("note")
        lines.append(f"  {journey.get('campaign_id')}: {where}" + (f": {why}" if why else ""))
    for delivery in view.get("deliveries", []):
        error = delivery.get("last_error")
        lines.append(
            f"  {delivery.get('campaign_id')}/{delivery.get('step_id')}: "
            f"{delivery.get('status')} on {delivery.get('channel')}"
            + (f": {error}" if error else "")
        )
    if not lines:
        return [
            f"no message sent to {user}: they are in no journey (an event a campaign starts "
            f"on starts one: nudge events send --user {user} --event …)"
        ]
    return [f"no message sent to {user} yet; their journeys and sends:", *lines]


def cmd_rejected(args: argparse.Namespace) -> None:
    with_client(args, lambda c: c.rejected_events(limit=args.limit, before=args.before))


def cmd_events_send(args: argparse.Namespace) -> None:
    properties = json_object(args.properties, what="--properties") if args.properties else {}
    with_client(
        args,
        lambda c: c.track(user_id=args.user, event=args.event, properties=properties),
        credential=WRITE_KEY,
    )


def cmd_journeys_show(args: argparse.Namespace) -> None:
    with_client(args, lambda c: c.journey_state(args.campaign_id, args.user_id))


def cmd_journeys_exit(args: argparse.Namespace) -> None:
    with_client(args, lambda c: c.exit_journey(args.campaign_id, args.user_id, args.reason))


class Parser(argparse.ArgumentParser):
    """argparse's usage errors as every other error of `nudge`: one line (argparse prints the
    whole usage first), pointing at the command's --help."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="nudge", description="Event-triggered journeys on Temporal")
    p.add_argument("--url", help="the Nudge API (default: NUDGE_URL or NUDGE_API_HOST:PORT)")
    sub = p.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="run the embedded stack: Temporal dev server, worker, API")
    dev.add_argument("--api-port", type=int, help="the API's port (default: NUDGE_API_PORT, 8000)")
    dev.add_argument(
        "--temporal-port",
        type=int,
        help="the Temporal dev server's port (default: NUDGE_TEMPORAL_PORT, else the port of "
        "NUDGE_TEMPORAL_ADDRESS, else 7233)",
    )
    dev.add_argument(
        "--ui-port", type=int, help="the Temporal UI's port (default: NUDGE_TEMPORAL_UI_PORT, 8233)"
    )
    dev.add_argument("--no-examples", action="store_true", help="don't apply the demo campaigns")
    dev.set_defaults(func=cmd_dev)
    sub.add_parser("worker", help="run a Temporal worker").set_defaults(func=cmd_worker)
    sub.add_parser("api", help="serve the HTTP API").set_defaults(func=cmd_api)
    sub.add_parser("migrate", help="bring the database to the latest schema").set_defaults(
        func=cmd_migrate
    )

    campaigns = sub.add_parser("campaigns", help="manage campaigns").add_subparsers(
        dest="action", required=True
    )
    campaigns.add_parser("list").set_defaults(func=cmd_campaigns_list)
    show_campaign = campaigns.add_parser("show", help="status, current definition, versions")
    show_campaign.add_argument("campaign_id")
    show_campaign.set_defaults(func=cmd_campaigns_show)
    stats = campaigns.add_parser("stats", help="the funnel: entered, converted, deliveries")
    stats.add_argument("campaign_id")
    stats.set_defaults(func=cmd_campaigns_stats)
    for action in ("activate", "pause", "archive"):
        sp = campaigns.add_parser(action)
        sp.add_argument("campaign_id")
        sp.set_defaults(func=cmd_campaigns_status)

    segments = sub.add_parser("segments", help="manage segments").add_subparsers(
        dest="action", required=True
    )
    apply_segment = segments.add_parser(
        "apply", help="create or update a segment from a YAML/JSON file"
    )
    apply_segment.add_argument("file")
    apply_segment.set_defaults(func=cmd_segments_apply)
    segments.add_parser("list").set_defaults(func=cmd_segments_list)
    show_segment = segments.add_parser("show", help="definition, version, status, member count")
    show_segment.add_argument("segment_id")
    show_segment.set_defaults(func=cmd_segments_show)
    members = segments.add_parser("members", help="members in user id order, a page at a time")
    members.add_argument("segment_id")
    members.add_argument("--after", help="the last user id of the page before (next_after)")
    members.add_argument("--limit", type=int, default=100)
    members.set_defaults(func=cmd_segments_members)

    events = sub.add_parser("events", help="send events").add_subparsers(
        dest="action", required=True
    )
    send = events.add_parser("send", help="send a track event (Segment shape)")
    send.add_argument("--user", required=True)
    send.add_argument("--event", required=True)
    send.add_argument("--properties", help="JSON object")
    send.set_defaults(func=cmd_events_send)

    messages = sub.add_parser("messages", help="what the sandbox channel kept, newest first")
    messages.add_argument("--user")
    messages.add_argument("--limit", type=int, default=20)
    messages.set_defaults(func=cmd_messages)

    rejected = sub.add_parser("rejected", help="messages ingestion refused, and why; newest first")
    rejected.add_argument("--limit", type=int, default=20)
    rejected.add_argument("--before", type=int, help="an id: older ones (next_before pages on)")
    rejected.set_defaults(func=cmd_rejected)

    journeys = sub.add_parser("journeys", help="inspect journeys").add_subparsers(
        dest="action", required=True
    )
    show = journeys.add_parser("show", help="a journey's state")
    show.add_argument("campaign_id")
    show.add_argument("user_id")
    show.set_defaults(func=cmd_journeys_show)
    ex = journeys.add_parser("exit", help="end a journey")
    ex.add_argument("campaign_id")
    ex.add_argument("user_id")
    ex.add_argument("--reason", required=True)
    ex.set_defaults(func=cmd_journeys_exit)
    # Each module below registers its own commands: new groups, or more subcommands of
    # `campaigns` and `journeys`.
    groups = Groups(sub=sub, campaigns=campaigns, journeys=journeys)
    for module in (simulate, lifecycle, migrate, operators, triggers, broadcasts):
        module.register(groups)
    return p


def main(argv: list[str] | None = None) -> None:
    utf8_output()
    logging.basicConfig(
        level=os.environ.get("NUDGE_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("httpx", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = parser().parse_args(utf8_arguments(sys.argv[1:] if argv is None else argv))
    code = 0
    try:
        args.func(args)
    except SystemExit as exc:
        if exc.code not in (None, 0):
            print(exc.code if isinstance(exc.code, str) else "", file=sys.stderr)
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:
        # A failure no command foresaw: still one line; the traceback at debug level.
        logging.getLogger("nudge").debug("unexpected failure", exc_info=True)
        reason = " ".join(str(exc).split()) or "no message"
        print(
            f"error: {type(exc).__name__}: {reason} (NUDGE_LOG_LEVEL=DEBUG shows where)",
            file=sys.stderr,
        )
        code = 1
    exit_process(code)


if __name__ == "__main__":
    main()
