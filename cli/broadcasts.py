"""cli: a scheduled broadcast's firings — each fan-out's status and counts — without the
Temporal UI."""

from __future__ import annotations

import argparse

from cli.common import Groups, with_client


def cmd_campaigns_broadcasts(args: argparse.Namespace) -> None:
    with_client(args, lambda c: c.campaign_broadcasts(args.campaign_id, limit=args.limit))


def register(groups: Groups) -> None:
    """Add this module's commands to the groups cli/main.py built."""
    broadcasts = groups.campaigns.add_parser(
        "broadcasts",
        help="a scheduled campaign's recent firings, newest first: each fan-out's status "
        "and counts (started, already, skipped, pages, halted)",
    )
    broadcasts.add_argument("campaign_id")
    broadcasts.add_argument(
        "--limit", type=int, help="the newest this many (default 20, at most 100)"
    )
    broadcasts.set_defaults(func=cmd_campaigns_broadcasts)
