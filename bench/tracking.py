"""bench: `python -m bench.tracking` — opens and clicks recorded per second by one API
process, against a bare FastAPI handler doing one INSERT, measured in the same run.

    .venv/bin/python -m bench.tracking                    # 2,000 requests a row, 20 at a time
    .venv/bin/python -m bench.tracking --quick            # a few, to see that it runs
    .venv/bin/python -m bench.tracking --postgres postgresql+asyncpg://postgres@127.0.0.1:5432/test
    .venv/bin/python -m bench.tracking --requests 5000 --concurrency 50 --json out.json

Each server runs in a process of its own (uvicorn on 127.0.0.1, an ephemeral port), so
the load generator here does not share its event loop: the real Nudge API on a migrated
database, with a campaign and `deliveries` rows seeded; and the baseline, a FastAPI app
whose routes at the same paths do one INSERT into a table of their own and answer the
same GIF or a 302. Both on the same kind of database: SQLite files (the same engine
settings, `store.db.create_engine`), and with `--postgres URL` scratch databases on that
server too (made and dropped here). Both get the same concurrent httpx load: GET the
pixel, then GET a tracked link, with a browser's user agent, each delivery hit twice (its
first open or click, then a repeat). Temporal is not running: the API's relay leaves the
`Email Opened` / `Email Link Clicked` events in the outbox, so routing them is not part
of the figure.

Prints requests/s and latency for each, and the ratio Nudge / bare; exits 1 when a request
got an unexpected answer or a hit was not recorded exactly once (Nudge's `opens` and
`clicks` columns, the baseline's rows). Speed is never asserted.

On SQLite, concurrent write transactions from one process's pooled connections wait for
each other in SQLite's busy handler, which sleeps between tries: at concurrency 20 both
systems run several times below what the same writes do one after another. The ratio
holds that against both; lower `--concurrency` to see the writes themselves.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import httpx
from fastapi import FastAPI, Header
from fastapi.responses import Response
from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from api.routes.engagement import PIXEL as GIF
from core.config import Environment, Settings
from core.definition import parse_campaign
from core.tracking import click_token, open_token
from store.campaigns import save_campaign
from store.db import create_engine, migrate, session_factory
from store.models import Delivery
from temporal.servers import free_port

SECRET = "bench-link-secret"
BROWSER = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Safari/605.1.15"
)
LINK = "https://shop.example/cart?item=umbrella&utm_source=nudge"
PIXEL = "open"
CLICK = "click"
NUDGE = "nudge"
BARE = "bare"
CAMPAIGN = parse_campaign(
    {
        "id": "bench-tracking",
        "name": "Bench: tracked email",
        "entry": {"event": "Bench Triggered"},
        "steps": [{"id": "hello", "type": "send", "channel": "email", "template": "hello"}],
        "templates": {"hello": {"subject": "Hi", "body": "Hi", "html": "<p>Hi</p>"}},
    }
)
START_SECONDS = 60.0


@dataclass(frozen=True)
class Config:
    requests: int = 2000
    """Per row (pixel or link, Nudge or bare)."""
    concurrency: int = 20
    warmup: int = 100
    """Requests per row before measuring (other deliveries than the measured ones)."""


QUICK = Config(requests=60, concurrency=4, warmup=10)


@dataclass
class Row:
    system: str
    target: str
    requests: int
    seconds: float
    per_second: float
    p50_ms: float
    p99_ms: float
    unexpected: list[str] = field(default_factory=list)


@dataclass
class Figures:
    config: Config
    backend: str
    rows: list[Row]
    recorded: dict[str, tuple[int, int]]
    """What each store holds against what was sent: (recorded, expected)."""

    def row(self, system: str, target: str) -> Row:
        return next(r for r in self.rows if (r.system, r.target) == (system, target))

    def ratio(self, target: str) -> float:
        return self.row(NUDGE, target).per_second / self.row(BARE, target).per_second

    @property
    def complete(self) -> bool:
        return all(not r.unexpected for r in self.rows) and all(
            got == want for got, want in self.recorded.values()
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "backend": self.backend,
            "rows": [asdict(r) for r in self.rows],
            "recorded": {k: list(v) for k, v in self.recorded.items()},
            "ratios_nudge_over_bare": {t: self.ratio(t) for t in (PIXEL, CLICK)},
            "complete": self.complete,
        }


# -- the servers, each in its own process -------------------------------------------------

HITS = Table(
    "bench_hits",
    MetaData(),
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(8)),
    Column("token", String(2048)),
    Column("user_agent", String(512)),
    Column("at", DateTime(timezone=True)),
)


def bare_app(database_url: str) -> FastAPI:
    """The baseline: the same paths, one INSERT each through the same engine settings."""
    engine = create_engine(database_url)
    sessions = session_factory(engine)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with engine.begin() as connection:
            await connection.run_sync(HITS.metadata.create_all)
        yield
        await engine.dispose()

    app = FastAPI(lifespan=lifespan)

    async def hit(kind: str, token: str, user_agent: str | None) -> None:
        async with sessions() as session:
            await session.execute(
                insert(HITS).values(
                    kind=kind, token=token, user_agent=user_agent, at=datetime.now(UTC)
                )
            )
            await session.commit()

    @app.get("/t/o/{token}")
    async def pixel(token: str, user_agent: Annotated[str | None, Header()] = None) -> Response:
        await hit(PIXEL, token, user_agent)
        return Response(GIF, media_type="image/gif", headers={"Cache-Control": "no-store"})

    @app.get("/t/c/{token}")
    async def click(token: str, user_agent: Annotated[str | None, Header()] = None) -> Response:
        await hit(CLICK, token, user_agent)
        return Response(status_code=302, headers={"Location": LINK})

    return app


def nudge_settings(database_url: str) -> Settings:
    return Settings(
        _env_file=None,
        environment=Environment.test,
        database_url=database_url,
        temporal_address=f"127.0.0.1:{free_port()}",  # nothing listens: no Temporal
        link_secret=SECRET,
        # The shipped defaults, stated so that NUDGE_* variables cannot change the bench.
        relay_interval_seconds=2.0,
        campaign_refresh_seconds=5.0,
        machine_click_seconds=2.0,
        machine_open_seconds=1.0,
    )


async def _serve(system: str, database_url: str) -> None:
    """The child process: serve until terminated, after printing the base URL."""
    from api.app import create_app
    from api.server import serve_in_loop

    app = create_app(nudge_settings(database_url)) if system == NUDGE else bare_app(database_url)
    async with serve_in_loop(app) as served:
        print(served.url, flush=True)
        await served.task


@contextlib.asynccontextmanager
async def server(system: str, database_url: str) -> AsyncIterator[str]:
    """Start `python -m bench.tracking --serve SYSTEM` and yield its URL; terminate it after."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.tracking",
        "--serve",
        system,
        "--database-url",
        database_url,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), timeout=START_SECONDS)
        url = line.decode().strip()
        if not url.startswith("http://"):
            raise RuntimeError(f"the {system} server did not start (exit {process.returncode})")
        yield url
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout=30)
            except TimeoutError:
                process.kill()
                await process.wait()


# -- the data ------------------------------------------------------------------------------


async def seed(database_url: str, deliveries: int) -> list[int]:
    """A migrated database with the campaign and `deliveries` sent an hour ago (so timing
    says nothing: each hit is a person's); their ids."""
    await migrate(database_url)
    engine = create_engine(database_url)
    try:
        sessions = session_factory(engine)
        sent_at = datetime.now(UTC) - timedelta(hours=1)
        async with sessions() as session, session.begin():
            await save_campaign(session=session, definition=CAMPAIGN)
            await session.execute(
                insert(Delivery),
                [
                    {
                        "idempotency_key": f"bench-{i}",
                        "workflow_id": f"journey/bench-tracking/user-{i}",
                        "campaign_id": CAMPAIGN.id,
                        "campaign_version": 1,
                        "step_id": "hello",
                        "visit": 1,
                        "channel": "email",
                        "user_id": f"user-{i}",
                        "status": "sent",
                        "sent_at": sent_at,
                    }
                    for i in range(deliveries)
                ],
            )
        async with sessions() as session:
            return list((await session.scalars(select(Delivery.id).order_by(Delivery.id))).all())
    finally:
        await engine.dispose()


def paths(target: str, ids: list[int]) -> list[str]:
    """Each delivery's pixel or link path, twice over: its first hit, then a repeat."""
    if target == PIXEL:
        one = [f"/t/o/{open_token(secret=SECRET, delivery_id=i)}" for i in ids]
    else:
        one = [f"/t/c/{click_token(secret=SECRET, delivery_id=i, link=0, url=LINK)}" for i in ids]
    return one + one


async def recorded(database_url: str, ids: list[int]) -> tuple[int, int]:
    """(opens, clicks) summed over the deliveries."""
    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as session:
            statement = select(func.sum(Delivery.opens), func.sum(Delivery.clicks)).where(
                Delivery.id.in_(ids)
            )
            opens, clicks = (await session.execute(statement)).one()
        return int(opens or 0), int(clicks or 0)
    finally:
        await engine.dispose()


async def bare_rows(database_url: str) -> int:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            count = await connection.scalar(select(func.count()).select_from(HITS))
            return int(count or 0)
    finally:
        await engine.dispose()


# -- the load ------------------------------------------------------------------------------


async def load(
    url: str, targets: list[str], concurrency: int
) -> tuple[float, list[float], list[str]]:
    """GET each path, `concurrency` at a time; (seconds, latencies in ms, unexpected)."""
    expected = {"/t/o/": 200, "/t/c/": 302}
    latencies: list[float] = []
    unexpected: list[str] = []
    queue = iter(targets)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=url, limits=limits, timeout=60, headers={"User-Agent": BROWSER}
    ) as http:

        async def worker() -> None:
            for path in queue:
                started = time.perf_counter()
                response = await http.get(path)
                latencies.append((time.perf_counter() - started) * 1000)
                if response.status_code != expected[path[:5]]:
                    unexpected.append(f"{path[:5]}… {response.status_code} {response.text[:80]}")
                elif path.startswith("/t/c/") and response.headers.get("location") != LINK:
                    unexpected.append(f"redirect to {response.headers.get('location')!r}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, latencies, unexpected


@contextlib.asynccontextmanager
async def databases(postgres: str | None = None) -> AsyncIterator[tuple[str, str]]:
    """Two empty databases, Nudge's and the baseline's: SQLite files in a temporary
    directory, or scratch databases on the PostgreSQL server `postgres` names (dropped
    after)."""
    if postgres is None:
        with tempfile.TemporaryDirectory(prefix="nudge-bench-tracking-") as directory:
            files = Path(directory)
            yield (
                f"sqlite+aiosqlite:///{files / 'nudge.db'}",
                f"sqlite+aiosqlite:///{files / 'bare.db'}",
            )
        return
    admin = create_async_engine(postgres, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    names = [f"nudge_bench_{system}_{secrets.token_hex(4)}" for system in (NUDGE, BARE)]
    try:
        async with admin.connect() as connection:
            for name in names:
                await connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            nudge, bare = (
                make_url(postgres).set(database=n).render_as_string(hide_password=False)
                for n in names
            )
            yield nudge, bare
        finally:
            async with admin.connect() as connection:
                for name in names:
                    await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


async def measure(config: Config, postgres: str | None = None) -> Figures:
    """Both systems on SQLite, or on the PostgreSQL server `postgres` names."""
    measured = config.requests // 2  # deliveries per row: each hit twice
    warm = max(config.warmup // 2, 1)
    rows: list[Row] = []
    async with databases(postgres) as (nudge_url, bare_url):
        ids = await seed(nudge_url, 2 * (warm + measured))
        # Each target gets deliveries of its own: the warm-up's, then the measured ones.
        chunks = [ids[i : i + warm + measured] for i in (0, warm + measured)]
        sent = {PIXEL: 0, CLICK: 0}
        async with server(BARE, bare_url) as bare, server(NUDGE, nudge_url) as nudge:
            for target, chunk in zip((PIXEL, CLICK), chunks, strict=True):
                warmup, timed = paths(target, chunk[:warm]), paths(target, chunk[warm:])
                for system, url in ((BARE, bare), (NUDGE, nudge)):
                    await load(url, warmup, config.concurrency)
                    seconds, latencies, unexpected = await load(url, timed, config.concurrency)
                    quantiles = statistics.quantiles(latencies, n=100, method="inclusive")
                    rows.append(
                        Row(
                            system=system,
                            target=target,
                            requests=len(timed),
                            seconds=seconds,
                            per_second=len(timed) / seconds,
                            p50_ms=statistics.median(latencies),
                            p99_ms=quantiles[98],
                            unexpected=unexpected[:5],
                        )
                    )
                sent[target] = len(warmup) + len(timed)
        opens, clicks = await recorded(nudge_url, ids)
        rows_written = await bare_rows(bare_url)
    return Figures(
        config=config,
        backend="SQLite file" if postgres is None else "PostgreSQL",
        rows=rows,
        recorded={
            "nudge opens": (opens, sent[PIXEL]),
            "nudge clicks": (clicks, sent[CLICK]),
            "bare rows": (rows_written, sent[PIXEL] + sent[CLICK]),
        },
    )


def render(figures: Figures) -> str:
    c = figures.config
    lines = [
        f"tracking endpoints: one API process each, {figures.backend}, {c.requests} requests a row, "
        f"concurrency {c.concurrency}",
        f"  {'':<22} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}",
    ]
    for target, label in ((PIXEL, "open pixel  GET /t/o"), (CLICK, "tracked link GET /t/c")):
        for system in (BARE, NUDGE):
            r = figures.row(system, target)
            name = "bare insert" if system == BARE else "nudge"
            lines.append(
                f"  {label[:12]:<12} {name:<11}{r.per_second:9.0f} {r.p50_ms:8.1f} {r.p99_ms:8.1f}"
            )
        lines.append(f"  {label[:12]:<12} nudge / bare {figures.ratio(target):8.2f}")
    lines.append(
        "  recorded: "
        + ", ".join(f"{k} {got}/{want}" for k, (got, want) in figures.recorded.items())
    )
    for r in figures.rows:
        for problem in r.unexpected:
            lines.append(f"  unexpected ({r.system} {r.target}): {problem}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tracking", description=__doc__)
    parser.add_argument("--requests", type=int, default=Config.requests, help="per row")
    parser.add_argument("--concurrency", type=int, default=Config.concurrency)
    parser.add_argument("--warmup", type=int, default=Config.warmup, help="per row")
    parser.add_argument("--quick", action="store_true", help="a few requests: does it run")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="also run on this PostgreSQL server, e.g. postgresql+asyncpg://postgres@127.0.0.1/test",
    )
    parser.add_argument("--serve", choices=[NUDGE, BARE], help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(args.serve, args.database_url))
        return
    if args.requests < 2 or args.concurrency < 1 or args.warmup < 0:
        parser.error("--requests must be at least 2, --concurrency at least 1")
    config = QUICK if args.quick else Config(args.requests, args.concurrency, args.warmup)
    runs = [asyncio.run(measure(config))]
    print(render(runs[0]))
    if args.postgres:
        runs.append(asyncio.run(measure(config, args.postgres)))
        print(render(runs[1]))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([f.as_json() for f in runs], indent=2) + "\n")
    sys.exit(0 if all(f.complete for f in runs) else 1)


if __name__ == "__main__":
    main()
