"""cli: `nudge simulate`: rehearse a campaign on Temporal's time-skipping server.

`nudge simulate CAMPAIGN_FILE SCENARIO_FILE...` runs each scenario (core/scenario.py) in
this process (worker/simulate.py); `nudge simulate --campaign ID SCENARIO_FILE...` asks
the API to rehearse a stored version (`--version N`, default the latest). Each prints the
journey's timeline and its expectations; the command exits 1 when one does not hold, or
when a rehearsal was stopped early (its journey took more than the scenario's `max_steps`
steps: it loops), so a team runs its campaigns' scenarios in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import textwrap
from datetime import timedelta
from typing import Any

from cli.common import Groups, read_text, settings_or_exit, with_client
from core.scenario import (
    MAX_REHEARSAL_STEPS,
    EntryKind,
    Timeline,
    TimelineEntry,
    Verdict,
    format_offset,
)

BODY_LINES = 12
"""A sent message's body lines shown in the timeline (--json has all of it)."""


def register(groups: Groups) -> None:
    """Add this module's commands to the groups cli/main.py built."""
    simulate = groups.sub.add_parser(
        "simulate",
        help="rehearse a campaign with a scenario on the time-skipping server",
        description="Rehearse a campaign: run a scenario's user and timed events through the "
        "real journey on Temporal's time-skipping server (days take seconds), print the "
        "timeline, and check the scenario's expectations (exit 1 when one does not hold).",
    )
    simulate.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="CAMPAIGN_FILE SCENARIO_FILE... (with --campaign: SCENARIO_FILE...)",
    )
    simulate.add_argument(
        "--campaign", help="rehearse this stored campaign through the API instead of a file"
    )
    simulate.add_argument(
        "--version", type=int, help="with --campaign: the version (default: the latest)"
    )
    simulate.add_argument("--json", action="store_true", help="print the results as JSON")
    simulate.set_defaults(func=cmd_simulate)


def cmd_simulate(args: argparse.Namespace) -> None:
    if args.campaign is None:
        if args.version is not None:
            raise SystemExit("error: --version goes with --campaign ID")
        if len(args.files) < 2:
            raise SystemExit(
                "error: give a campaign file and at least one scenario file "
                "(or --campaign ID and scenario files)"
            )
        results = _rehearse_files(args.files[0], args.files[1:])
    else:
        results = _rehearse_stored(args, args.campaign, args.files)
    if args.json:
        print(json.dumps(results if len(results) > 1 else results[0], indent=2, ensure_ascii=False))
    else:
        print("\n\n".join(render_result(r) for r in results))
    said = [
        f"simulate: {r['timeline']['scenario']!r} {r['timeline']['stop_reason']} "
        f"(a scenario's `max_steps`, at most {MAX_REHEARSAL_STEPS}, lets a journey take more)"
        for r in results
        if r["timeline"].get("stopped_early")
    ]
    failed = [r["timeline"]["scenario"] for r in results if not r["passed"]]
    if failed:
        # One line on stderr (the diff is above, on stdout), one more for each rehearsal
        # stopped early (it did not complete), and exit status 1.
        said.append(
            f"simulate: {len(failed)} of {len(results)} scenarios did not go as expected: "
            + ", ".join(repr(name) for name in failed)
        )
        raise SystemExit("\n".join(said))


def _rehearse_files(campaign_file: str, scenario_files: list[str]) -> list[dict[str, Any]]:
    from core.definition import DefinitionError, parse_campaign
    from core.scenario import ScenarioError, check_against, parse_scenario

    try:
        definition = parse_campaign(read_text(campaign_file))
    except DefinitionError as exc:
        raise SystemExit(f"error: {campaign_file}: {'; '.join(exc.problems)}") from exc
    scenarios = []
    for name in scenario_files:
        try:
            scenario = parse_scenario(read_text(name))
            check_against(scenario, definition)
        except DefinitionError as exc:
            raise SystemExit(f"error: {name}: {'; '.join(exc.problems)}") from exc
        scenarios.append((name, scenario))
    settings = settings_or_exit()
    # The engine (Temporal, the store) is imported once the files are known to be good.
    from core.scenario import result_of
    from temporal.servers import ServerError
    from worker.simulate import quiet_runtime, simulate

    quiet_runtime()

    async def run() -> list[dict[str, Any]]:
        out = []
        for name, scenario in scenarios:
            try:
                timeline = await simulate(
                    definition=definition, scenario=scenario, settings=settings
                )
            except ScenarioError as exc:
                raise SystemExit(f"error: {name}: {exc}") from exc
            out.append(result_of(scenario, timeline).model_dump(mode="json"))
        return out

    try:
        return asyncio.run(run())
    except ServerError as exc:
        raise SystemExit(f"error: cannot start Temporal's time-skipping server: {exc}") from exc


def _rehearse_stored(
    args: argparse.Namespace, campaign_id: str, scenario_files: list[str]
) -> list[dict[str, Any]]:
    texts = [read_text(name) for name in scenario_files]
    results: list[dict[str, Any]] = []

    async def call(client: Any) -> None:
        for text in texts:
            results.append(await client.simulate(campaign_id, text, version=args.version))

    with_client(args, call)
    return results


# -- printing ---------------------------------------------------------------------------------


def render_result(result: dict[str, Any]) -> str:
    """The timeline as aligned columns, then each expectation (with a diff when it fails)."""
    timeline = Timeline.model_validate(result["timeline"])
    verdicts = [Verdict.model_validate(v) for v in result["expectations"]]
    lines = [render_heading(timeline), ""]
    lines += render_entries(timeline)
    if verdicts:
        held = sum(v.holds for v in verdicts)
        lines += ["", f"expectations: {held} of {len(verdicts)} hold"]
        for verdict in verdicts:
            lines.append(f"  {'ok  ' if verdict.holds else 'FAIL'}  {verdict.expectation}")
            if not verdict.holds:
                lines.append(f"          - expected: {verdict.expected}")
                lines.append(f"          + happened: {verdict.happened}")
    return "\n".join(lines)


def render_heading(timeline: Timeline) -> str:
    if timeline.stopped_early:
        ending = f"STOPPED EARLY: {timeline.stop_reason}"
    elif timeline.status is None:
        ending = "no journey started"
    else:
        ending = timeline.status.value + (
            f" ({timeline.exit_reason})" if timeline.exit_reason else ""
        )
    stopped = format_offset(timedelta(seconds=timeline.stopped_at))
    return (
        f"{timeline.campaign_id} v{timeline.campaign_version} · {timeline.scenario} · "
        f"user {timeline.user}\n"
        f"start {timeline.start:%Y-%m-%d %H:%M} UTC · stopped at {stopped} · {ending}"
    )


def _label(entry: TimelineEntry) -> str:
    if entry.kind is EntryKind.step and entry.step_type:
        return f"{entry.name} ({entry.step_type})"
    if entry.kind in (EntryKind.event, EntryKind.end):
        return entry.name
    return f"{entry.name} ({entry.template})" if entry.template else entry.name


def render_entries(timeline: Timeline) -> list[str]:
    entries = timeline.entries
    several = timeline.journeys > 1
    rows = [
        (
            format_offset(e.delta),
            (f"#{e.journey} " if several else "") + e.kind.value,
            _label(e),
            e.detail,
        )
        for e in entries
    ]
    widths = [max((len(r[i]) for r in rows), default=0) for i in range(3)]
    lines = []
    for entry, row in zip(entries, rows, strict=True):
        lines.append(
            "  "
            + "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True))
            + "  "
            + row[3]
        )
        message = entry.message
        if message is not None:
            indent = " " * (2 + widths[0] + 2)
            if message.subject:
                lines.append(f"{indent}subject: {message.subject}")
            body = message.body.rstrip("\n").splitlines()
            for line in body[:BODY_LINES]:
                lines.append(f"{indent}| {line}")
            if len(body) > BODY_LINES:
                lines.append(f"{indent}| … ({len(body) - BODY_LINES} more lines; --json has them)")
            if message.data:
                data = json.dumps(message.data, ensure_ascii=False)
                lines.append(f"{indent}data: {textwrap.shorten(data, 200)}")
    return lines
