"""cli: operator tools: a user's view, bulk exit, retrying a failed send."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from cli.common import with_client

POLL_SECONDS = 1.0
"""How often `nudge campaigns exit --wait` reads the operation's progress."""


def cmd_users_show(args: argparse.Namespace) -> None:
    with_client(args, lambda c: c.get_user(args.user_id))


def progress_line(operation: dict[str, Any]) -> str:
    p = operation["progress"]
    line = (
        f"{operation['campaign_id']}: {p['seen']} seen, {p['exited']} exited, "
        f"{p['skipped']} skipped, {p['failed']} failed"
    )
    if p.get("not_at_step"):
        line += f" ({p['not_at_step']} at another step)"
    return line + (" — done" if p["done"] else "")


def cmd_campaigns_exit(args: argparse.Namespace) -> None:
    async def run(client: Any) -> dict[str, Any]:
        operation: dict[str, Any] = await client.exit_campaign(
            args.campaign_id, reason=args.reason, step=args.step
        )
        if not args.wait:
            return operation
        # Progress on stderr as it changes; the final operation on stdout, as JSON.
        shown = ""
        while True:
            line = progress_line(operation)
            if line != shown:
                print(line, file=sys.stderr, flush=True)
                shown = line
            # Until the workflow has ended: its progress says `done` a moment before.
            if operation["status"] != "running":
                return operation
            await asyncio.sleep(POLL_SECONDS)
            operation = await client.exit_progress(args.campaign_id, operation["operation_id"])

    with_client(args, run)


def cmd_deliveries_retry(args: argparse.Namespace) -> None:
    with_client(args, lambda c: c.retry_delivery(args.delivery_id))


def register(sub: argparse._SubParsersAction, campaigns: argparse._SubParsersAction) -> None:
    """Add this module's commands: `sub` holds the top-level commands, `campaigns` the
    `nudge campaigns` ones."""
    users = sub.add_parser("users", help="look up users").add_subparsers(
        dest="action", required=True
    )
    show = users.add_parser(
        "show", help="a user's profile, consent, journeys (with their step) and latest sends"
    )
    show.add_argument("user_id")
    show.set_defaults(func=cmd_users_show)

    exit_all = campaigns.add_parser(
        "exit", help="end every running journey of a campaign (a Temporal workflow)"
    )
    exit_all.add_argument("campaign_id")
    exit_all.add_argument("--reason", required=True, help="recorded on each journey")
    exit_all.add_argument("--step", help="only the journeys at this step")
    exit_all.add_argument(
        "--wait", action="store_true", help="print progress until every journey was handled"
    )
    exit_all.set_defaults(func=cmd_campaigns_exit)

    deliveries = sub.add_parser("deliveries", help="act on deliveries").add_subparsers(
        dest="action", required=True
    )
    retry = deliveries.add_parser("retry", help="send a failed delivery again, exactly once")
    retry.add_argument("delivery_id", type=int)
    retry.set_defaults(func=cmd_deliveries_retry)
