"""Replay proves both ways: every recorded history replays against today's code — the
workflow its first event names (JourneyWorkflow, or an operator workflow: bulk exit,
migration, retry of a failed send) — and a deliberately non-deterministic change fails to."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer, WorkflowReplayResult
from temporalio.workflow import NondeterminismError

from core.definition import SendStep
from core.fanout import WORKFLOW_FANOUT
from core.journey import WORKFLOW_NAME, JourneyInput, JourneyResult, Send
from core.operations import (
    WORKFLOW_BULK_EXIT,
    WORKFLOW_MIGRATION,
    WORKFLOW_POLICY_RECHECK,
    WORKFLOW_RETRY_DELIVERY,
    MigrationInput,
    MigrationProgress,
)
from temporal.client import DATA_CONVERTER
from workflows.fanout import FanOutWorkflow
from workflows.journey import JourneyWorkflow
from workflows.operations import (
    BulkExitWorkflow,
    MigrationWorkflow,
    PolicyRecheckWorkflow,
    RetryDeliveryWorkflow,
)

HISTORIES = sorted((Path(__file__).parent.parent / "histories").glob("*.json"))

WORKFLOWS: dict[str, type] = {
    WORKFLOW_NAME: JourneyWorkflow,
    WORKFLOW_BULK_EXIT: BulkExitWorkflow,
    WORKFLOW_MIGRATION: MigrationWorkflow,
    WORKFLOW_RETRY_DELIVERY: RetryDeliveryWorkflow,
    WORKFLOW_POLICY_RECHECK: PolicyRecheckWorkflow,
    WORKFLOW_FANOUT: FanOutWorkflow,
}
"""Today's class of each workflow type a history may name."""


def load(name: str) -> WorkflowHistory:
    path = Path(__file__).parent.parent / "histories" / f"{name}.json"
    history = WorkflowHistory.from_json(name, path.read_text())
    # Under an id of its own kind: `journey/replay/cart_reminder`, `campaign_exit/replay/...`.
    return WorkflowHistory(f"{workflow_type(history)}/replay/{name}", history.events)


def workflow_type(history: WorkflowHistory) -> str:
    """The workflow type the history's first event started."""
    return history.events[0].workflow_execution_started_event_attributes.workflow_type.name


async def replay(workflow_class: type, name: str) -> WorkflowReplayResult:
    replayer = Replayer(workflows=[workflow_class], data_converter=DATA_CONVERTER)
    return await replayer.replay_workflow(load(name), raise_on_replay_failure=False)


def kinds(history: WorkflowHistory) -> Counter[str]:
    """How many events of each kind: `timer_fired`, `workflow_execution_signaled`, …"""
    return Counter(
        (e.WhichOneof("attributes") or "").removesuffix("_event_attributes") for e in history.events
    )


def activities(history: WorkflowHistory) -> list[str]:
    return [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
    ]


def patches(history: WorkflowHistory) -> list[str]:
    """The ids of the `workflow.patched` markers the history recorded, in order."""
    found = []
    for e in history.events:
        if e.HasField("marker_recorded_event_attributes"):
            marker = e.marker_recorded_event_attributes
            if marker.marker_name == "core_patch":
                [payload] = marker.details["patch-data"].payloads
                found.append(json.loads(payload.data)["id"])
    return found


def continued_from(history: WorkflowHistory) -> str:
    return history.events[0].workflow_execution_started_event_attributes.continued_execution_run_id


def attempts(history: WorkflowHistory, activity: str) -> list[int]:
    """Each run of `activity` that started: the attempt it ended on (retries after a
    failure are the retry policy's, not commands: only the last attempt is recorded)."""
    scheduled = {
        e.event_id
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
        and e.activity_task_scheduled_event_attributes.activity_type.name == activity
    }
    return [
        e.activity_task_started_event_attributes.attempt
        for e in history.events
        if e.HasField("activity_task_started_event_attributes")
        and e.activity_task_started_event_attributes.scheduled_event_id in scheduled
    ]


GUARDED: dict[str, Callable[[WorkflowHistory], bool]] = {
    "cart_reminder": lambda h: kinds(h)["timer_fired"] == 1 and "deliver" in activities(h),
    "cart_converted": lambda h: "deliver" not in activities(h),
    "wait_for_matched": lambda h: kinds(h)["workflow_execution_signaled"] == 4,
    # The 7 d timeout fired with nothing but the entry event: its own branch was taken.
    "wait_for_timeout": lambda h: (
        kinds(h)["timer_fired"] == 1
        and kinds(h)["workflow_execution_signaled"] == 1
        and activities(h).count("deliver") == 1
    ),
    # The 24 h wait, then the deferral's timer; asked again when it fired.
    "policy_deferred": lambda h: (
        activities(h).count("check_policy") == 2 and kinds(h)["timer_fired"] == 2
    ),
    # The policy said no: asked once, never delivered, and the journey went on to its end.
    "policy_suppressed": lambda h: (
        activities(h).count("check_policy") == 1
        and "deliver" not in activities(h)
        and activities(h)[-1] == "record_outcome"
    ),
    "continued_as_new": lambda h: (
        kinds(h)["workflow_execution_continued_as_new"] == 1 and not continued_from(h)
    ),
    "continued_as_new_last_run": lambda h: (
        bool(continued_from(h)) and kinds(h)["workflow_execution_completed"] == 1
    ),
    "branch_pro": lambda h: activities(h)[:2] == ["load_profile", "deliver"],
    "operator_exit": lambda h: kinds(h)["workflow_execution_update_completed"] == 1,
    "wait_until": lambda h: "resolve_wait" in activities(h),
    # A date trait the user lacks (wait-until-missing-v1): resolved, no timer, no send.
    "wait_until_missing": lambda h: (
        activities(h) == ["resolve_wait", "record_outcome"] and kinds(h)["timer_started"] == 0
    ),
    # Before activity-failure-v1 a failed activity failed the run; from it on, the journey
    # records its outcome and completes.
    "profile_failed_unpatched": lambda h: kinds(h)["workflow_execution_failed"] == 1,
    "profile_failed": lambda h: (
        kinds(h)["activity_task_failed"] == 1 and activities(h)[-1] == "record_outcome"
    ),
    # A split: the variant recorded, its message sent.
    "split_variant": lambda h: (
        activities(h)
        == [
            "record_variant",
            "check_policy",
            "deliver",
            "record_outcome",
        ]
    ),
    # The holdout: no policy, no delivery; the send held out, and the split not counted.
    "holdout": lambda h: activities(h) == ["hold_out", "record_outcome"],
    # lean-journey-v1: one `send` where `check_policy` and `deliver` were, the outcome a
    # local activity (a marker, no activity task).
    "lean_reminder": lambda h: activities(h) == ["send"] and kinds(h)["marker_recorded"] >= 2,
    "lean_deferred": lambda h: activities(h) == ["send", "send"] and kinds(h)["timer_fired"] == 2,
    "lean_suppressed": lambda h: (
        activities(h)[:2] == ["load_profile", "send"] and "record_outcome" not in activities(h)
    ),
    # An operator's migration (migrate-v1): the 24 h timer cancelled at the update, the
    # move applied behind the patch, v2's wait, then v2's send.
    "migrated": lambda h: (
        kinds(h)["workflow_execution_update_completed"] == 1
        and kinds(h)["timer_canceled"] == 1
        and patches(h) == ["migrate-v1", "lean-journey-v1"]
        and activities(h) == ["send"]
    ),
    # An exit step ends the journey `exited` (exit-step-exited-v1), behind its marker.
    "exit_step_exited": lambda h: patches(h)[-1] == "exit-step-exited-v1",
    # The operator workflows. A bulk exit pages the campaign's journeys, one activity a
    # page, until a page says it was the last.
    "operator_bulk_exit": lambda h: (
        workflow_type(h) == WORKFLOW_BULK_EXIT
        and activities(h) == ["exit_page"] * 3
        and kinds(h)["workflow_execution_completed"] == 1
    ),
    # A migration's first run: two pages (`pages_per_run`), then continue-as-new carrying
    # the cursor and the report.
    "operator_migration": lambda h: (
        workflow_type(h) == WORKFLOW_MIGRATION
        and activities(h) == ["migrate_page"] * 2
        and kinds(h)["workflow_execution_continued_as_new"] == 1
        and not continued_from(h)
    ),
    # A retry: the send rebuilt, then `deliver`, whose first attempt failed (a provider
    # outage) and whose second, the retry policy's, sent it.
    "operator_retry": lambda h: (
        workflow_type(h) == WORKFLOW_RETRY_DELIVERY
        and activities(h) == ["prepare_retry", "deliver"]
        and attempts(h, "deliver") == [2]
        and kinds(h)["workflow_execution_completed"] == 1
    ),
    # A trigger's fan-out: rain paged until its campaign was found paused (its third page
    # halted), then storm paged to its end; one run, completed.
    "fanout_halted": lambda h: (
        workflow_type(h) == WORKFLOW_FANOUT
        and activities(h) == ["start_audience_page"] * 5
        and kinds(h)["workflow_execution_completed"] == 1
    ),
    # A policy re-check of every campaign: three pages across two campaigns, the last short.
    "operator_recheck": lambda h: (
        workflow_type(h) == WORKFLOW_POLICY_RECHECK
        and activities(h) == ["recheck_page"] * 3
        and kinds(h)["workflow_execution_completed"] == 1
    ),
}
"""The behaviours the recorded histories guard, and how each history shows its own."""


def test_every_history_says_what_it_guards():
    assert {p.stem for p in HISTORIES} == set(GUARDED)


@pytest.mark.parametrize("name", sorted(GUARDED))
def test_each_guarded_behaviour_has_its_history(name: str):
    path = Path(__file__).parent.parent / "histories" / f"{name}.json"
    assert path.exists(), f"record it: python -m tests.workflows.record_histories ({name})"
    history = WorkflowHistory.from_json(name, path.read_text())
    assert GUARDED[name](history), f"{name}.json does not show what it should guard"


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_history_replays(path: Path):
    kind = workflow_type(load(path.stem))
    assert kind in WORKFLOWS, f"{path.name} runs {kind!r}: name its class in WORKFLOWS"
    result = await replay(WORKFLOWS[kind], path.stem)
    assert result.replay_failure is None, f"{path.name} no longer replays: {result.replay_failure}"


@workflow.defn(name=WORKFLOW_NAME, sandboxed=False)
class SendsWithoutAsking(JourneyWorkflow):
    """The mistake replay tests exist to catch: the send policy dropped from the journey
    without `workflow.patched`, so a history that asked it no longer matches."""

    @workflow.run
    async def run(self, input: JourneyInput) -> JourneyResult:
        return await super().run(input)

    async def _check_policy(self, step: SendStep, send: Send) -> None:
        return None


@workflow.defn(name=WORKFLOW_NAME, sandboxed=False)
class NeverContinuesAsNew(JourneyWorkflow):
    """Another such mistake: the history bound dropped, so a long journey's runs no longer
    turn over where the recorded one did."""

    @workflow.run
    async def run(self, input: JourneyInput) -> JourneyResult:
        return await super().run(input)

    def _should_continue_as_new(self) -> bool:
        return False


@pytest.mark.parametrize("name", ["policy_deferred", "policy_suppressed"])
async def test_a_change_without_a_patch_fails_replay(name: str):
    result = await replay(SendsWithoutAsking, name)
    assert isinstance(result.replay_failure, NondeterminismError)
    assert "check_policy" in str(result.replay_failure)
    # The same change leaves histories recorded before the policy existed replaying: they
    # never asked it (that is what `patched` tells apart).
    assert (await replay(SendsWithoutAsking, "cart_reminder")).replay_failure is None


async def test_dropping_continue_as_new_fails_replay():
    result = await replay(NeverContinuesAsNew, "continued_as_new")
    assert isinstance(result.replay_failure, NondeterminismError)
    # The run that was continued as new is the only one it changes.
    assert (await replay(NeverContinuesAsNew, "continued_as_new_last_run")).replay_failure is None


@workflow.defn(name=WORKFLOW_MIGRATION, sandboxed=False)
class MigratesInOneRun(MigrationWorkflow):
    """The same mistake in an operator workflow: a migration that no longer turns its run
    over every `pages_per_run` pages asks for a third page where the recorded run
    continued as new."""

    @workflow.run
    async def run(self, input: MigrationInput) -> MigrationProgress:
        return await super().run(input.model_copy(update={"pages_per_run": 10**6}))


async def test_an_operator_workflow_changed_without_a_patch_fails_replay() -> None:
    assert (await replay(MigrationWorkflow, "operator_migration")).replay_failure is None
    result = await replay(MigratesInOneRun, "operator_migration")
    assert isinstance(result.replay_failure, NondeterminismError)
    # A history replays only against the workflow it recorded.
    wrong = await replay(BulkExitWorkflow, "operator_migration")
    assert wrong.replay_failure is not None
