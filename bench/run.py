"""bench: `python -m bench.run` (`make bench`) — what a journey costs against Temporal's own
floor, whether routing keeps up with ingestion, and Nudge scaled out across processes.

Three parts on one dev server, each printed as it finishes:
- event → send (bench.event_to_send): one journey's latency and CPU against the bare
  signal-with-start → activity path, sequentially and concurrently, with the issue's three
  target ratios;
- routing (bench.routing): a burst of journey-starting events, routed against raw
  signal-with-starts, the lag, the goal lane, and events that start nothing;
- scale-out (bench.scaleout): `nudge api` and `nudge worker` as processes on PostgreSQL, in
  three shapes.

`--quick` runs each part small (a smoke run, about a minute); the full run is what the
README's figures come from. Exits 0 when every journey's message arrived exactly once and
every part completed, 1 otherwise or on any error.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

from bench import routing, scaleout
from bench.event_to_send import Config, measure
from bench.report import render
from bench.stack import UNTHROTTLED
from temporal.servers import DevServerOptions, dev_server
from temporal.shutdown import run_to_exit

PARTS = ("send", "routing", "scaleout")
QUICK = Config(journeys=10, concurrency=5, warmup=1)


def parse(argv: list[str] | None) -> argparse.Namespace:
    defaults = Config()
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="every part small: a smoke run")
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"which parts, comma-separated (default: {','.join(PARTS)})",
    )
    parser.add_argument("--journeys", type=int, help=f"per row (default {defaults.journeys})")
    parser.add_argument(
        "--concurrency", type=int, help=f"concurrent rows (default {defaults.concurrency})"
    )
    parser.add_argument("--warmup", type=int, help=f"per system (default {defaults.warmup})")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    parser.add_argument(
        "--stock-dev-server",
        action="store_true",
        help="keep the dev server's 20/s transfer-queue throttle (see bench/stack.py)",
    )
    parser.add_argument(
        "--deadline",
        type=float,
        metavar="SECONDS",
        help="give up (exit 1) when the whole run takes longer (default: 150 quick, 1200 full)",
    )
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if unknown := set(args.parts) - set(PARTS):
        parser.error(f"unknown parts {sorted(unknown)}; known: {', '.join(PARTS)}")
    base = QUICK if args.quick else defaults
    args.config = Config(
        journeys=args.journeys or base.journeys,
        concurrency=args.concurrency or base.concurrency,
        warmup=base.warmup if args.warmup is None else args.warmup,
        stock_dev_server=args.stock_dev_server,
    )
    if args.config.journeys < 1 or args.config.concurrency < 1 or args.config.warmup < 0:
        parser.error("--journeys and --concurrency must be at least 1, --warmup at least 0")
    args.deadline = args.deadline or (150.0 if args.quick else 1200.0)
    return args


async def _main(args: argparse.Namespace) -> int:
    begin = time.monotonic()
    report: dict[str, Any] = {"quick": args.quick}
    complete = True
    options = DevServerOptions(dynamic_config=() if args.stock_dev_server else UNTHROTTLED)
    async with dev_server(options) as server:
        if "send" in args.parts:
            figures = await measure(args.config, server=server)
            print(render(figures), flush=True)
            report["event_to_send"] = figures.as_json()
            complete = complete and figures.complete
        if "routing" in args.parts:
            routed = await routing.measure(args.quick, server=server)
            print("", routed.render(), sep="\n", flush=True)
            report["routing"] = routed.as_json()
            complete = complete and routed.complete
        if "scaleout" in args.parts:
            scaled = await scaleout.measure(args.quick, server=server)
            print("", scaled.render(), sep="\n", flush=True)
            report["scaleout"] = {**dataclasses.asdict(scaled), "complete": scaled.complete}
            complete = complete and scaled.complete
    report["duration_s"] = time.monotonic() - begin
    print(f"\nbench {'(quick) ' if args.quick else ''}done in {report['duration_s']:.0f} s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"figures written to {args.json}")
    return 0 if complete else 1


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse(argv)
    run_to_exit(lambda: asyncio.wait_for(_main(args), timeout=args.deadline))


if __name__ == "__main__":
    main()
