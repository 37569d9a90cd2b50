"""bench: the tracking bench runs in its quick mode and every hit is recorded exactly once.

Speed is measured by `python -m bench.tracking`, never asserted here.
"""

from __future__ import annotations

from bench.tracking import BARE, CLICK, NUDGE, PIXEL, QUICK, measure, render


async def test_tracking_bench_produces_figures_for_nudge_and_bare():
    figures = await measure(QUICK)

    assert {(r.system, r.target) for r in figures.rows} == {
        (system, target) for system in (NUDGE, BARE) for target in (PIXEL, CLICK)
    }
    for r in figures.rows:
        assert r.unexpected == [], (r.system, r.target)
        assert r.requests == QUICK.requests and r.per_second > 0 and r.p99_ms >= r.p50_ms
    sent = QUICK.requests + 2 * max(QUICK.warmup // 2, 1)
    assert figures.recorded == {
        "nudge opens": (sent, sent),
        "nudge clicks": (sent, sent),
        "bare rows": (2 * sent, 2 * sent),
    }
    assert figures.complete
    assert "nudge / bare" in render(figures)
    assert figures.as_json()["ratios_nudge_over_bare"][PIXEL] > 0
