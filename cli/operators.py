"""cli: operator tools: a user's view, bulk exit, running journeys re-asking the send policy,
retrying a failed send."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from cli.common import Groups, with_client

if TYPE_CHECKING:
    from api.client import NudgeClient

POLL_SECONDS = 1.0
"""How often `nudge campaigns exit --wait` (and `journeys recheck --wait`) reads the
operation's progress."""


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
        return await follow(
            operation,
            progress_line,
            lambda: client.exit_progress(args.campaign_id, operation["operation_id"]),
        )

    with_client(args, run)


async def follow(
    operation: dict[str, Any],
    line_of: Callable[[dict[str, Any]], str],
    read: Callable[[], Awaitable[dict[str, Any]]],
) -> dict[str, Any]:
    """Poll an operation until its workflow has ended: progress on stderr as it changes,
    the final operation returned (printed on stdout, as JSON)."""
    shown = ""
    while True:
        line = line_of(operation)
        if line != shown:
            print(line, file=sys.stderr, flush=True)
            shown = line
        # Until the workflow has ended: its progress says `done` a moment before.
        if operation["status"] != "running":
            return operation
        await asyncio.sleep(POLL_SECONDS)
        operation = await read()


def recheck_line(operation: dict[str, Any]) -> str:
    p = operation["progress"]
    scope = operation["campaign_id"] or "every campaign"
    line = (
        f"{scope}: {p['seen']} seen, {p['told']} told, {p['skipped']} skipped (not running), "
        f"{p['failed']} failed"
    )
    return line + (" — done" if p["done"] else "")


def cmd_journeys_recheck(args: argparse.Namespace) -> None:
    async def run(client: NudgeClient) -> dict[str, Any]:
        operation = await client.recheck_journeys(campaign_id=args.campaign)
        if not args.wait:
            return operation
        return await follow(
            operation,
            recheck_line,
            lambda: client.recheck_progress(operation["operation_id"]),
        )

    with_client(args, run)


def cmd_deliveries_retry(args: argparse.Namespace) -> None:
    with_client(args, lambda c: c.retry_delivery(args.delivery_id))


def register(groups: Groups) -> None:
    """Add this module's commands to the groups cli/main.py built."""
    users = groups.sub.add_parser("users", help="look up users").add_subparsers(
        dest="action", required=True
    )
    show = users.add_parser(
        "show", help="a user's profile, consent, journeys (with their step) and latest sends"
    )
    show.add_argument("user_id")
    show.set_defaults(func=cmd_users_show)

    exit_all = groups.campaigns.add_parser(
        "exit", help="end every running journey of a campaign (a Temporal workflow)"
    )
    exit_all.add_argument("campaign_id")
    exit_all.add_argument("--reason", required=True, help="recorded on each journey")
    exit_all.add_argument("--step", help="only the journeys at this step")
    exit_all.add_argument(
        "--wait", action="store_true", help="print progress until every journey was handled"
    )
    exit_all.set_defaults(func=cmd_campaigns_exit)

    recheck = groups.journeys.add_parser(
        "recheck",
        help="running journeys ask the send policy again: run after restarting the workers "
        "with changed quiet hours (a Temporal workflow)",
    )
    recheck.add_argument("--campaign", help="only this campaign's journeys (default: every one)")
    recheck.add_argument(
        "--wait", action="store_true", help="print progress until every journey was told"
    )
    recheck.set_defaults(func=cmd_journeys_recheck)

    deliveries = groups.sub.add_parser("deliveries", help="act on deliveries").add_subparsers(
        dest="action", required=True
    )
    retry = deliveries.add_parser("retry", help="send a failed delivery again, exactly once")
    retry.add_argument("delivery_id", type=int)
    retry.set_defaults(func=cmd_deliveries_retry)
