"""Replay proves both ways: every recorded history replays against today's JourneyWorkflow,
and a deliberately non-deterministic change to it fails to."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer, WorkflowReplayResult
from temporalio.workflow import NondeterminismError

from core.definition import SendStep
from core.journey import WORKFLOW_NAME, JourneyInput, JourneyResult, Send
from temporal.client import DATA_CONVERTER
from workflows.journey import JourneyWorkflow

HISTORIES = sorted((Path(__file__).parent.parent / "histories").glob("*.json"))


async def replay(workflow_class: type, name: str) -> WorkflowReplayResult:
    path = Path(__file__).parent.parent / "histories" / f"{name}.json"
    history = WorkflowHistory.from_json(f"journey/replay/{name}", path.read_text())
    replayer = Replayer(workflows=[workflow_class], data_converter=DATA_CONVERTER)
    return await replayer.replay_workflow(history, raise_on_replay_failure=False)


def test_histories_are_recorded():
    assert len(HISTORIES) >= 1, "tests/histories/ must hold recorded journeys"


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_history_replays(path: Path):
    result = await replay(JourneyWorkflow, path.stem)
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


async def test_a_change_without_a_patch_fails_replay():
    result = await replay(SendsWithoutAsking, "policy_deferred")
    assert isinstance(result.replay_failure, NondeterminismError)
    assert "check_policy" in str(result.replay_failure)
    # The same change leaves histories recorded before the policy existed replaying: they
    # never asked it (that is what `patched` tells apart).
    assert (await replay(SendsWithoutAsking, "cart_reminder")).replay_failure is None
