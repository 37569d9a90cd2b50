"""bench: the scale-out bench (`nudge api` and `nudge worker` as processes on PostgreSQL)
and the waiting-journeys bench produce their figures, and count every journey.

Speed is measured by `python -m bench.scaleout` and `python -m bench.waiting`, never
asserted here.
"""

from __future__ import annotations

import pytest

from bench import scaleout, waiting
from temporal.servers import DevServer
from tests.fixtures.db import require_postgres


# Two `nudge` processes start and stop: 13-28 s on 2 shared cores, not reliably under the
# 20 s a test may take in make test.
@pytest.mark.slow
async def test_scaleout_quick_runs_processes_and_delivers_each_journey_once(
    dev_server: DevServer,
) -> None:
    postgres = await require_postgres()
    figures = await scaleout.measure(
        True, journeys_per_shape=10, postgres_url=postgres, server=dev_server
    )

    assert [s.shape for s in figures.shapes] == list(scaleout.QUICK_SHAPES)
    (shape,) = figures.shapes
    assert shape.latency.n == shape.latency.received == 10
    assert shape.expected == 10 + scaleout.WARMUP
    assert shape.exactly_once, (shape.missing, shape.duplicated, shape.unexpected)
    assert shape.latency.throughput_per_s and shape.latency.p50_ms
    assert {"api-1", "worker-1", "temporal"} <= set(shape.cpu_ms_per_journey)
    assert shape.nudge_cpu_ms > 0
    assert figures.complete
    assert "1 API + 1 worker" in figures.render()


async def test_waiting_journeys_wake_once_after_seven_days_on_the_time_skipping_server() -> None:
    wake = await waiting.measure_wake(10, cache_size=10)

    assert wake.received == wake.journeys == 10
    assert not wake.duplicated
    assert wake.wake_s > 0 and wake.journeys_per_s > 0


# A `nudge worker` process and two servers: 8-20 s on 2 shared cores; make test runs the
# wake alone (above, ~3-6 s).
@pytest.mark.slow
async def test_waiting_journeys_start_wait_and_wake_once(dev_server: DevServer) -> None:
    figures = await waiting.measure(20, cache_sizes=(10,), wake=10, server=dev_server)

    (cache,) = figures.caches
    assert cache.cache_size == 10 and cache.journeys == 20
    assert cache.at_timer == 20
    assert cache.worker_rss_mb > 0 and cache.temporal_rss_mb > 0
    assert figures.wake is not None
    assert figures.wake.received == 10 and not figures.wake.duplicated
    assert figures.complete
    assert "time-skipping" in figures.render()
