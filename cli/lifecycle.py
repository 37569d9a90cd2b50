"""cli: campaign versions: draft, publish, diff.

`nudge campaigns apply FILE` saves a definition; once a campaign has been activated, a
changed definition is a draft version that new journeys do not enter until `nudge campaigns
publish ID` (or `apply --activate`). What each command did is said in one line on stderr,
so stdout stays what a script reads: the JSON answer, or the diff's text.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cli.common import Groups, print_json, read_text, with_client


def say(line: str) -> None:
    print(line, file=sys.stderr)


def applied_line(applied: dict[str, Any], *, latest: int | None = None) -> str:
    """What `apply` did, for a person: which version new journeys enter, and what to run
    next when it is not the one just saved. `latest`: the campaign's newest version, when a
    definition found unchanged from the live one may have a newer draft above it (reverted
    to: `publish` without a version would make that draft live)."""
    campaign_id, number, state = applied["id"], applied["version"], applied["version_state"]
    live, status = applied["current_version"], applied["status"]
    done = f"version {number} {'saved' if applied['new_version'] else 'unchanged'}"
    if status == "draft":
        return (
            f"{campaign_id}: {done}; the campaign is a draft, nothing enters it until: "
            f"nudge campaigns activate {campaign_id}"
        )
    if state != "live":
        return (
            f"{campaign_id}: {done} ({state}); version {live} stays live until you "
            f"publish it: nudge campaigns publish {campaign_id} --version {number} "
            f"(what changes: nudge campaigns diff {campaign_id} {live} {number})"
        )
    line = f"{campaign_id}: {done}, live; the campaign is {status}"
    if latest is not None and latest > number:
        line += (
            f"; version {latest}, a newer draft, stays unpublished (nudge campaigns publish "
            f"{campaign_id} without --version would make it live)"
        )
    return line


def cmd_apply(args: argparse.Namespace) -> None:
    text = read_text(args.file)

    async def apply(client: Any) -> None:
        applied = await client.apply_campaign(text, activate=args.activate)
        latest = None
        if not applied["new_version"] and applied["version_state"] == "live":
            latest = (await client.get_campaign(applied["id"]))["latest_version"]
        say(applied_line(applied, latest=latest))
        print_json(applied)

    with_client(args, apply)


def cmd_publish(args: argparse.Namespace) -> None:
    async def publish(client: Any) -> None:
        published = await client.publish_campaign(args.campaign_id, version=args.version)
        campaign, number = published["campaign"], published["version"]["version"]
        if published["changed"]:
            say(
                f"{campaign['id']}: version {number} is live (was {published['previous_version']}); "
                f"running journeys keep their version; the campaign is {campaign['status']}"
            )
        else:
            say(f"{campaign['id']}: version {number} was live already; nothing changed")
        print_json(published)

    with_client(args, publish)


def cmd_diff(args: argparse.Namespace) -> None:
    async def diff(client: Any) -> None:
        changes = await client.campaign_diff(
            args.campaign_id, from_version=args.from_version, to_version=args.to_version
        )
        sys.stdout.write(changes["text"])
        say(summary_line(changes))

    with_client(args, diff)


def summary_line(changes: dict[str, Any]) -> str:
    """`cart v2 → v3: steps added: bye; steps changed: wait; fields changed: name`."""
    head = f"{changes['campaign_id']} v{changes['from_version']} → v{changes['to_version']}"
    if not changes["text"]:
        return f"{head}: the same definition"
    parts = [
        f"{label}: {', '.join(changes[key])}"
        for key, label in (
            ("steps_added", "steps added"),
            ("steps_removed", "steps removed"),
            ("steps_changed", "steps changed"),
            ("fields_changed", "fields changed"),
        )
        if changes[key]
    ]
    return f"{head}: {'; '.join(parts) or 'steps reordered'}"


def version_number(text: str) -> int:
    """A version as the API takes it: a positive number."""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a version number (1, 2, …)") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a version number (1, 2, …)")
    return number


def register(groups: Groups) -> None:
    """Add this module's commands to the groups cli/main.py built."""
    apply = groups.campaigns.add_parser(
        "apply",
        help="create or update a campaign from a YAML/JSON file (a changed definition of a "
        "campaign that was activated is a draft until published)",
    )
    apply.add_argument("file")
    apply.add_argument(
        "--activate",
        action="store_true",
        help="publish what was saved and activate the campaign, in one request",
    )
    apply.set_defaults(func=cmd_apply)

    publish = groups.campaigns.add_parser(
        "publish", help="make a version the one new journeys enter (an older one: a rollback)"
    )
    publish.add_argument("campaign_id")
    publish.add_argument(
        "--version", type=version_number, help="the version to publish (default: the latest)"
    )
    publish.set_defaults(func=cmd_publish)

    diff = groups.campaigns.add_parser(
        "diff", help="what changed between two versions, as a unified diff of their YAML"
    )
    diff.add_argument("campaign_id")
    diff.add_argument(
        "from_version", nargs="?", type=version_number, help="default: the live version"
    )
    diff.add_argument("to_version", nargs="?", type=version_number, help="default: the latest")
    diff.set_defaults(func=cmd_diff)
