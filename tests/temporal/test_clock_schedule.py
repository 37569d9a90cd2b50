"""temporal.schedules: the audience clock's schedule as declared — every minute, a slow
run never doubled, missed minutes not replayed one by one (the sweep looks back)."""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import ScheduleActionStartWorkflow, ScheduleOverlapPolicy

from core.clock import WORKFLOW_CLOCK
from temporal.schedules import audience_clock_id, prune_ledger_id, schedules


def test_the_audience_clock_fires_every_minute_without_overlap() -> None:
    declared = schedules("tq-1")
    assert set(declared) == {audience_clock_id("tq-1"), prune_ledger_id("tq-1")}
    clock = declared["nudge-audience-clock/tq-1"]
    action = clock.action
    assert isinstance(action, ScheduleActionStartWorkflow)
    assert action.workflow == WORKFLOW_CLOCK and action.task_queue == "tq-1"
    assert [i.every for i in clock.spec.intervals] == [timedelta(minutes=1)]
    assert clock.policy.overlap is ScheduleOverlapPolicy.SKIP
    assert clock.policy.catchup_window == timedelta(minutes=1)
