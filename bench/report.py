"""bench: figures — percentiles, ratios to the baseline, the machine, the printed table."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import math
import os
import platform
import subprocess
from dataclasses import dataclass, field
from typing import Any

from temporal.servers import DEV_SERVER_BINARY, ServerError, binary

STAGE_LABELS = {
    "to_workflow_start": "call → workflow started",
    "api_answered": "  of which: the API answered 200",
    "workflow_task_wait": "workflow task waits for the worker",
    "workflow_task_run": "workflow task runs (→ activity scheduled)",
    "activity_dispatch": "activity task reaches the worker",
    "activity_to_arrival": "activity runs → webhook arrives",
}


@dataclass
class LatencyFigures:
    n: int
    received: int
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    mean_ms: float | None
    elapsed_s: float
    throughput_per_s: float | None
    """Journeys received per second, first call to last arrival; concurrent phases only
    (one at a time, each journey also waits for the previous one to finish)."""


@dataclass
class PhaseFigures:
    system: str
    phase: str
    concurrency: int
    latency: LatencyFigures
    stages_ms: dict[str, float | None] = field(default_factory=dict)
    """Medians of each stage (see `event_to_send.STAGES`)."""
    cpu_ms_per_journey: float | None = None
    """CPU of this Python process (API, workers, driver, double) per journey, its work
    after the send included; the dev server's own CPU is not counted."""


@dataclass
class Delivery:
    expected: int
    missing: list[str]
    duplicated: list[str]
    unexpected: list[str]
    nudge_signed: int
    nudge_expected: int

    @property
    def exactly_once(self) -> bool:
        return not (self.missing or self.duplicated or self.unexpected)


@dataclass
class Figures:
    machine: dict[str, Any]
    config: dict[str, Any]
    phases: list[PhaseFigures]
    delivery: Delivery
    duration_s: float

    @property
    def complete(self) -> bool:
        """Every journey arrived once and every Nudge message was signed correctly."""
        d = self.delivery
        return d.exactly_once and d.nudge_signed == d.nudge_expected

    def get(self, system: str, phase: str) -> PhaseFigures:
        return next(p for p in self.phases if p.system == system and p.phase == phase)

    def ratios(self) -> dict[str, dict[str, float | None]]:
        """Nudge / baseline, per phase: >1 means Nudge is slower (latency) or faster
        (throughput)."""
        result: dict[str, dict[str, float | None]] = {}
        for phase in dict.fromkeys(p.phase for p in self.phases):
            nudge, base = self.get("nudge", phase).latency, self.get("baseline", phase).latency
            result[phase] = {
                "p50": _ratio(nudge.p50_ms, base.p50_ms),
                "p90": _ratio(nudge.p90_ms, base.p90_ms),
                "throughput": _ratio(nudge.throughput_per_s, base.throughput_per_s),
            }
        return result

    def as_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["delivery"]["exactly_once"] = self.delivery.exactly_once
        data["ratios_nudge_over_baseline"] = self.ratios()
        data["targets"] = [{**dataclasses.asdict(t), "met": t.met} for t in targets(self)]
        data["complete"] = self.complete
        return data


@dataclass(frozen=True)
class Target:
    """One of issue 11's targets: a ratio of Nudge to the baseline measured in the same run."""

    name: str
    value: float | None
    bound: float
    at_most: bool
    """True: met when `value` ≤ `bound`; False: when ≥."""

    @property
    def met(self) -> bool:
        if self.value is None:
            return False
        return self.value <= self.bound if self.at_most else self.value >= self.bound


def targets(figures: Figures) -> list[Target]:
    """CPU per journey and concurrent journeys/s (the concurrent rows: where a process's CPU
    is what bounds it), sequential p50."""
    ratios = figures.ratios()
    phases = {p.phase for p in figures.phases}
    found: list[Target] = []
    if "concurrent" in phases:
        cpu = _ratio(
            figures.get("nudge", "concurrent").cpu_ms_per_journey,
            figures.get("baseline", "concurrent").cpu_ms_per_journey,
        )
        found.append(Target("Python CPU per journey (concurrent)", cpu, 2.0, at_most=True))
        found.append(
            Target("concurrent journeys/s", ratios["concurrent"]["throughput"], 0.6, at_most=False)
        )
    if "sequential" in phases:
        found.append(Target("sequential event → send p50", ratios["sequential"]["p50"], 2.0, True))
    return found


def render_targets(figures: Figures) -> list[str]:
    lines = [f"{'targets: nudge / baseline':<44}{'measured':>10}{'target':>10}  met"]
    for t in targets(figures):
        bound = f"{'≤' if t.at_most else '≥'} {t.bound:.2f}x"
        lines.append(f"{t.name:<44}{_x(t.value):>10}{bound:>10}  {'yes' if t.met else 'NO'}")
    return lines


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def percentile(ordered: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); `ordered` sorted."""
    k = (len(ordered) - 1) * q / 100
    low = math.floor(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def latency_figures(
    latencies: list[float], *, n: int, elapsed: float, throughput: bool
) -> LatencyFigures:
    """`latencies` in seconds, one per journey that arrived (of `n`)."""
    ms = sorted(x * 1000 for x in latencies)

    def pick(q: float) -> float | None:
        return percentile(ms, q) if ms else None

    return LatencyFigures(
        n=n,
        received=len(ms),
        p50_ms=pick(50),
        p90_ms=pick(90),
        p99_ms=pick(99),
        max_ms=ms[-1] if ms else None,
        mean_ms=sum(ms) / len(ms) if ms else None,
        elapsed_s=elapsed,
        throughput_per_s=len(ms) / elapsed if throughput and elapsed > 0 else None,
    )


def machine() -> dict[str, Any]:
    try:
        cli = subprocess.run(
            [binary(DEV_SERVER_BINARY), "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError, ServerError) as exc:
        cli = f"unknown ({exc})"
    return {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "temporalio": importlib.metadata.version("temporalio"),
        "temporal_cli": cli,
    }


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def _x(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def render(figures: Figures) -> str:
    m, c, d = figures.machine, figures.config, figures.delivery
    lines = [
        "Nudge bench: one journey, event → send (POST /v1/track → signed webhook received)",
        "baseline: signal-with-start → one activity → POST to the same double, same dev server",
        "",
        f"machine  {m['usable_cores']} cores · {m['platform']} · Python {m['python']} · "
        f"temporalio {m['temporalio']} · {m['temporal_cli']}",
        f"run      {c['journeys']} journeys per row, concurrency {c['concurrency']} in the "
        f"concurrent rows, {c['warmup']} warm-up journeys each (not counted); "
        f"{figures.duration_s:.1f} s in all",
        f"server   Temporal dev server: {c['dev_server']}",
        "",
        f"{'latency (ms)':<26}{'n':>4}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}{'journeys/s':>12}",
    ]
    for p in figures.phases:
        lat = p.latency
        name = f"{p.phase} {p.system}" + (f" (x{p.concurrency})" if p.concurrency > 1 else "")
        received = f"{lat.received}" if lat.received == lat.n else f"{lat.received}/{lat.n}"
        lines.append(
            f"{name:<26}{received:>4}{_ms(lat.p50_ms):>8}{_ms(lat.p90_ms):>8}"
            f"{_ms(lat.p99_ms):>8}{_ms(lat.max_ms):>8}{_ms(lat.throughput_per_s):>12}"
        )
    lines += ["", f"{'nudge / baseline':<26}{'p50':>8}{'p90':>8}{'journeys/s':>12}"]
    for phase, r in figures.ratios().items():
        lines.append(f"{phase:<26}{_x(r['p50']):>8}{_x(r['p90']):>8}{_x(r['throughput']):>12}")

    columns = [(p, f"{p.phase[:4]} {p.system}") for p in figures.phases]
    lines += [
        "",
        "where the time goes (medians, ms; Temporal history event times, one wall clock)",
        f"{'stage':<44}" + "".join(f"{title:>15}" for _, title in columns),
    ]
    for stage, label in STAGE_LABELS.items():
        if not any(stage in p.stages_ms for p, _ in columns):
            continue
        cells = "".join(f"{_ms(p.stages_ms.get(stage)):>15}" for p, _ in columns)
        lines.append(f"{label:<44}{cells}")

    cells = "".join(f"{_ms(p.cpu_ms_per_journey):>15}" for p, _ in columns)
    lines.append(f"{'CPU of this process per journey (all its work)':<44}{cells}")
    lines += ["", *render_targets(figures)]

    verdict = (
        "every journey's message received exactly once, nothing unexpected"
        if d.exactly_once
        else f"PROBLEM: missing {len(d.missing)}, duplicated {len(d.duplicated)}, "
        f"unexpected {len(d.unexpected)}"
    )
    lines += [
        "",
        f"delivery  {d.expected} journeys: {verdict}; "
        f"{d.nudge_signed}/{d.nudge_expected} Nudge messages carry a valid signature",
    ]
    return "\n".join(lines)
