"""bench: the routing bench runs on the session dev server and routes every event.

Speed is measured by `python -m bench.routing`, never asserted here: this only checks that
every part produced its figure, that the burst was routed whole and the goal behind it too.
"""

from __future__ import annotations

from bench.routing import Sizes, measure
from temporal.servers import DevServer


async def test_routing_bench_produces_every_figure(dev_server: DevServer) -> None:
    figures = await measure(
        True, postgres=None, server=dev_server, sizes=Sizes(burst=30, ignored=30, settle_timeout=30)
    )

    assert figures.complete
    assert figures.routed_events == figures.events == 30
    assert figures.goal_lane_ms is not None
    assert figures.routed_per_s > 0 and figures.raw_per_s > 0
    assert 0 < figures.lag_p50_ms <= figures.lag_p99_ms <= figures.lag_max_ms
    [ignored] = figures.ignored
    assert ignored.backend == "SQLite" and ignored.settled_per_s
    assert "routed / raw" in figures.render()
    assert dict(figures.rows())["goal lane"].endswith("pending entries")
