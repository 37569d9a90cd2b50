"""bench: the event → send bench runs on the session dev server and counts every journey.

Speed is measured by `make bench`, never asserted here: this only checks that both Nudge
and the baseline produced figures and that each journey's message arrived exactly once.
"""

from __future__ import annotations

from bench.event_to_send import BASELINE, CONCURRENT, NUDGE, SEQUENTIAL, Config, measure
from bench.report import render
from temporal.servers import DevServer


async def test_bench_produces_figures_for_nudge_and_baseline(dev_server: DevServer):
    figures = await measure(Config(journeys=3, concurrency=2, warmup=1), server=dev_server)

    assert {(p.system, p.phase) for p in figures.phases} == {
        (system, phase) for system in (NUDGE, BASELINE) for phase in (SEQUENTIAL, CONCURRENT)
    }
    for p in figures.phases:
        assert p.latency.n == p.latency.received == 3, (p.system, p.phase)
        assert p.latency.p50_ms is not None and p.latency.max_ms is not None
        assert set(p.stages_ms) >= {"to_workflow_start", "activity_to_arrival"}
    delivery = figures.delivery
    assert delivery.expected == 2 * (1 + 3 + 3)
    assert delivery.exactly_once, (delivery.missing, delivery.duplicated, delivery.unexpected)
    assert delivery.nudge_signed == delivery.nudge_expected == 1 + 3 + 3
    assert figures.complete
    assert "nudge / baseline" in render(figures)
    assert figures.as_json()["ratios_nudge_over_baseline"][CONCURRENT]["throughput"] is not None
