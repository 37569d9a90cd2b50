"""cli: external triggers — where an occurrence's fan-out is, without the Temporal UI."""

from __future__ import annotations

import argparse

from cli.common import Groups, with_client


def cmd_triggers_show(args: argparse.Namespace) -> None:
    with_client(args, lambda c: c.trigger_occurrence(args.name, args.id))


def register(groups: Groups) -> None:
    """Add this module's commands to the groups cli/main.py built."""
    triggers = groups.sub.add_parser("triggers", help="external triggers").add_subparsers(
        dest="action", required=True
    )
    show = triggers.add_parser(
        "show",
        help="an occurrence: received (its outbox row), its fan-out's status and counts, "
        "the campaigns it reaches and any halted",
    )
    show.add_argument("name", help="the trigger's name (POST /v1/triggers/NAME)")
    show.add_argument("id", help="the occurrence's id, as posted")
    show.set_defaults(func=cmd_triggers_show)
