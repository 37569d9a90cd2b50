"""cli: move waiting journeys to a newer campaign version.

`nudge campaigns migrate ID --from 3 --to 4 --step wait=pause [--dry-run]` prints, per step
of version 3, how many journeys wait there, where they land in version 4 and why the others
stay (`--json`: the API's report as it is). The migration, and its dry run alike, runs on the
server as an operation: the command waits for it to end, its progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
from typing import Any

from cli.common import Groups, print_json, with_client

POLL_SECONDS = 1.0
"""How often a migration still going is read again."""


def step_mapping(pairs: list[str]) -> dict[str, str]:
    """`--step OLD=NEW` values as a mapping; a one-line error for one that is not."""
    steps: dict[str, str] = {}
    for text in pairs:
        old, sep, new = text.partition("=")
        if not sep or not old.strip() or not new.strip():
            raise SystemExit(
                f"error: --step {text!r} is not OLD=NEW (a step id of the old version, '=', "
                "a step id of the new one)"
            )
        if steps.get(old.strip(), new.strip()) != new.strip():
            raise SystemExit(f"error: --step maps {old.strip()!r} twice")
        steps[old.strip()] = new.strip()
    return steps


def _journeys(n: int) -> str:
    return f"{n} journey{'' if n == 1 else 's'}"


def report_lines(report: dict[str, Any], *, command: str) -> list[str]:
    """The report for a person: one line per step, one indented line per reason to stay."""
    dry = report["dry_run"]
    head = f"{report['campaign_id']}: "
    versions = f"v{report['from_version']} → v{report['to_version']}"
    if dry:
        head += f"dry run of {versions}: {_journeys(report['journeys'])}, {report['movable']} would move"
    else:
        head += f"migrated {versions}: {report['moved']} of {_journeys(report['journeys'])} moved"
    lines = [head]
    if not report["journeys"]:
        lines.append(f"  no journey runs version {report['from_version']}")
    for step in report["steps"]:
        name = step["step"] or "(no step)"
        kind = f" ({step['type']})" if step["type"] else ""
        line = f"  step {name}{kind}: {_journeys(step['journeys'])}"
        if step["lands_on"]:
            done = f"{step['movable']} would move" if dry else f"{step['moved']} moved"
            line += f" → {step['lands_on']}: {done}"
        lines.append(line)
        for reason, n in step["stays"].items():
            lines.append(f"      {n} stay{'s' if n == 1 else ''}: {reason}")
    if dry and report["movable"]:
        lines.append(f"nothing moved (dry run); to move them: {command}")
    return lines


def progress_line(operation: dict[str, Any]) -> str:
    p = operation["progress"]
    r = p["report"]
    versions = f"v{r['from_version']} → v{r['to_version']}"
    if r["dry_run"]:
        doing, done = f"dry run of {versions}", f"{r['movable']} would move"
    else:
        doing, done = f"migrating {versions}", f"{r['moved']} moved"
    return (
        f"{operation['campaign_id']}: {doing}: {_journeys(p['seen'])} seen, {done} "
        f"(page {p['pages']})"
    )


async def wait_for_migration(client: Any, operation: dict[str, Any]) -> dict[str, Any]:
    """Poll a migration (or its dry run) until its workflow has ended (not only until its
    progress says `done`: the query says so a moment before the workflow completes); its
    final report. Progress goes to stderr as it changes."""
    shown = ""
    while operation["status"] == "running":
        line = progress_line(operation)
        if line != shown:
            print(line, file=sys.stderr, flush=True)
            shown = line
        await asyncio.sleep(POLL_SECONDS)
        operation = await client.migration_progress(
            operation["campaign_id"], operation["operation_id"]
        )
    if operation["status"] != "completed":
        what = "dry run" if operation["progress"]["report"]["dry_run"] else "migration"
        raise SystemExit(
            f"error: {what} {operation['operation_id']} of {operation['campaign_id']} "
            f"ended {operation['status']}: see the workflow {operation['workflow_id']}"
        )
    report: dict[str, Any] = operation["progress"]["report"]
    return report


def cmd_migrate(args: argparse.Namespace) -> None:
    steps = step_mapping(args.step or [])

    async def migrate(client: Any) -> None:
        report = await client.migrate_journeys(
            args.campaign_id,
            from_version=args.from_version,
            to_version=args.to_version,
            steps=steps,
            dry_run=args.dry_run,
            by=args.by,
            reason=args.reason,
            # The command waits itself, showing progress from the start (a dry run too:
            # it pages through the journeys as the migration does).
            wait_seconds=0,
        )
        if "progress" in report:  # still going: an operation, not yet its report
            report = await wait_for_migration(client, report)
        if args.json:
            print_json(report)
            return
        words = ["nudge", "campaigns", "migrate", args.campaign_id]
        words += ["--from", str(args.from_version), "--to", str(args.to_version)]
        for old, new in steps.items():
            words += ["--step", f"{old}={new}"]
        print("\n".join(report_lines(report, command=shlex.join(words))))

    with_client(args, migrate)


def register(groups: Groups) -> None:
    """Add this module's commands to the groups cli/main.py built."""
    migrate = groups.campaigns.add_parser(
        "migrate",
        help="move journeys waiting in one version to a newer one (--dry-run first)",
        description="Journeys waiting at a wait or wait_for step of the old version move to "
        "the mapped step of the new one, keeping the time already waited; a step not mapped "
        "lands on the new version's step of the same id and type, if any. Journeys mid-send, "
        "at a branch or a split stay.",
    )
    migrate.add_argument("campaign_id")
    migrate.add_argument("--from", dest="from_version", type=int, required=True)
    migrate.add_argument("--to", dest="to_version", type=int, required=True)
    migrate.add_argument(
        "--step",
        action="append",
        metavar="OLD=NEW",
        help="where the journeys waiting at OLD land (repeatable)",
    )
    migrate.add_argument(
        "--dry-run", action="store_true", help="only count journeys per step and where they land"
    )
    migrate.add_argument("--by", help="who migrates, for each journey's history")
    migrate.add_argument("--reason", help="why, for each journey's history")
    migrate.add_argument("--json", action="store_true", help="print the API's report as JSON")
    migrate.set_defaults(func=cmd_migrate)
