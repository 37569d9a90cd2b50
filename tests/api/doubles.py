"""tests.api: a test double of JourneyWorkflow, registered under the real name `journey`.

It keeps every `event` signal it receives (duplicates too, to see what the router sent),
answers the `state` query and the `exit` update like the real one, and ends on `exit`, on
an event named `Finish`, or when told by the `finish` signal.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from core.events import JourneyEvent
    from core.journey import (
        QUERY_STATE,
        SIGNAL_EVENT,
        UPDATE_EXIT,
        WORKFLOW_NAME,
        ExitRequest,
        JourneyInput,
        JourneyResult,
        JourneyState,
        JourneyStatus,
    )

FINISH_EVENT = "Finish"


@workflow.defn(name=WORKFLOW_NAME)
class RecordingJourney:
    @workflow.init
    def __init__(self, input: JourneyInput) -> None:
        self.input = input
        self.state = JourneyState(
            current_step=input.plan.start_step,
            step_started_at=workflow.now(),
            last_event=input.entry_event,
        )

    @workflow.signal(name=SIGNAL_EVENT)
    def event(self, event: JourneyEvent) -> None:
        if event.message_id in self.state.seen_event_ids:
            return
        self.state.seen_event_ids.append(event.message_id)
        self.state.events_received += 1
        self.state.last_event = event
        if event.name == FINISH_EVENT:
            self._end(JourneyStatus.completed, "finish event")

    @workflow.query(name=QUERY_STATE)
    def query_state(self) -> JourneyState:
        return self.state

    @workflow.query(name="input")
    def query_input(self) -> JourneyInput:
        return self.input

    @workflow.update(name=UPDATE_EXIT)
    def exit(self, request: ExitRequest) -> JourneyState:
        self._end(JourneyStatus.exited, f"operator: {request.reason}")
        return self.state

    @exit.validator
    def _validate_exit(self, request: ExitRequest) -> None:
        if self.state.status is not JourneyStatus.running:
            raise ValueError(f"journey already ended: {self.state.status.value}")

    def _end(self, status: JourneyStatus, reason: str) -> None:
        self.state.status = status
        self.state.exit_reason = reason
        self.state.ended_at = workflow.now()

    @workflow.run
    async def run(self, input: JourneyInput) -> JourneyResult:
        await workflow.wait_condition(lambda: self.state.status is not JourneyStatus.running)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return JourneyResult(status=self.state.status, exit_reason=self.state.exit_reason)
