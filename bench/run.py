"""bench: `python -m bench.run` (`make bench`) — event → send latency, Nudge against its floor.

Prints a table (and writes JSON with `--json PATH`); exits 0 when every journey's message
arrived exactly once, 1 otherwise or on any error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import traceback
from pathlib import Path

from bench.event_to_send import Config, measure
from bench.report import render
from temporal.shutdown import exit_process


def parse(argv: list[str] | None) -> argparse.Namespace:
    defaults = Config()
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--journeys", type=int, default=defaults.journeys, help="per row")
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency)
    parser.add_argument("--warmup", type=int, default=defaults.warmup, help="per system")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    parser.add_argument(
        "--stock-dev-server",
        action="store_true",
        help="keep the dev server's 20/s transfer-queue throttle (see bench/stack.py)",
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="give up (exit 1) when the whole run takes longer",
    )
    args = parser.parse_args(argv)
    if args.journeys < 1 or args.concurrency < 1 or args.warmup < 0:
        parser.error("--journeys and --concurrency must be at least 1, --warmup at least 0")
    return args


async def _main(args: argparse.Namespace) -> int:
    config = Config(
        journeys=args.journeys,
        concurrency=args.concurrency,
        warmup=args.warmup,
        stock_dev_server=args.stock_dev_server,
    )
    figures = await asyncio.wait_for(measure(config), timeout=args.deadline)
    print(render(figures))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures.as_json(), indent=2) + "\n")
        print(f"\nfigures written to {args.json}")
    return 0 if figures.complete else 1


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse(argv)
    try:
        code = asyncio.run(_main(args))
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        traceback.print_exc()
        code = 1
    exit_process(code)


if __name__ == "__main__":
    main()
