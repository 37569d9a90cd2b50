"""api: rehearse a campaign on the time-skipping server.

`POST /v1/campaigns/{id}/simulate?version=N` runs a scenario (core/scenario.py) against a
stored version — by default the latest, so a draft can be rehearsed before it is
published. The rehearsal engine lives in `worker/` (the real workflow, worker and
activities, a time-skipping server and a temporary database), which this room may not
import: it runs as a process of its own, `python -m worker.simulate`, a JSON request on
stdin and the result on stdout. A few run at once per API process
(NUDGE_SIMULATION_CONCURRENCY); one that takes too long (NUDGE_SIMULATION_TIMEOUT_SECONDS,
its wait for a turn included) is ended with its test server and its files (504). The
scenario is read and checked against the campaign here, before any process starts (422).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from pydantic import ValidationError

from api.deps import AdminDep, SessionDep, SettingsDep
from api.routes.campaigns import read_document
from api.schemas import MAX_VERSION, CampaignId, Message, ProblemsResponse
from core.config import Settings
from core.events import safe_text
from core.scenario import (
    SimulationRequest,
    SimulationResult,
    campaign_problems,
    parse_scenario,
)
from store import campaigns as store
from store.campaigns import VersionUnavailable, definition_document

router = APIRouter(prefix="/v1/campaigns", tags=["simulate"], dependencies=[AdminDep])

ENGINE = (sys.executable, "-m", "worker.simulate")

SCENARIO_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "A scenario (`nudge simulate`'s file): the user, their traits, timed "
        "events, optional settings and expectations; JSON, or YAML with "
        "`Content-Type: application/yaml`.",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/yaml": {"schema": {"type": "string"}},
        },
    }
}
VERSION = Query(
    ge=1, le=MAX_VERSION, description="the version to rehearse; default: the latest (a draft too)"
)


def policy_settings(settings: Settings) -> dict[str, Any]:
    """The send policy's settings of this deployment, which the rehearsal applies."""
    return {
        "quiet_hours_start": settings.quiet_hours_start,
        "quiet_hours_end": settings.quiet_hours_end,
        "caps": [cap.model_dump(mode="json") for cap in settings.caps],
        "default_timezone": settings.default_timezone,
        "cap_headroom": {str(p): n for p, n in settings.cap_headroom.items()},
    }


@router.post(
    "/{campaign_id}/simulate",
    response_model=SimulationResult,
    responses={
        401: {"model": Message, "description": "missing or wrong admin token"},
        404: {"model": Message, "description": "no such campaign or version"},
        409: {"model": Message, "description": "the version no longer validates"},
        422: {"model": ProblemsResponse, "description": "the scenario cannot run: each problem"},
        504: {"model": Message, "description": "the rehearsal took too long"},
    },
    openapi_extra=SCENARIO_DOC,
    summary="Rehearse a campaign version with a scenario (time-skipping: days take seconds)",
)
async def simulate_campaign(
    campaign_id: CampaignId,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    version: Annotated[int | None, VERSION] = None,
) -> SimulationResult:
    """The journey's timeline for the scenario's user and events, and whether each of its
    expectations holds (`passed`; a mismatch is still 200)."""
    campaign = await store.get_campaign(session=session, campaign_id=campaign_id)
    if campaign is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no campaign {campaign_id!r}")
    scenario = await read_document(request, parse_scenario)
    numbers = [
        row.version for row in await store.list_versions(session=session, campaign_id=campaign_id)
    ]
    number = version if version is not None else max(numbers)
    row = await store.get_version(session=session, campaign_id=campaign_id, version=number)
    if row is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"campaign {campaign_id!r} has no version {number} (versions: 1 to {max(numbers)})",
        )
    try:
        definition = store.definition_of(row)
    except VersionUnavailable as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    problems = campaign_problems(scenario, definition)
    if problems:
        raise HTTPException(422, {"problems": [safe_text(p) for p in problems]})
    job = SimulationRequest(
        definition=definition_document(definition),
        version=number,
        scenario=scenario.model_dump(mode="json"),
        settings=policy_settings(settings),
    )
    # The rehearsal may take a minute: no database connection is held meanwhile.
    await session.close()
    return await run_engine(
        job,
        gate=turns(request, settings),
        timeout_seconds=settings.simulation_timeout_seconds,
    )


def turns(request: Request, settings: Settings) -> asyncio.Semaphore:
    """The app's turns to rehearse: NUDGE_SIMULATION_CONCURRENCY of them, made at its first
    rehearsal (an app is served in one event loop)."""
    state = request.app.state
    gate: asyncio.Semaphore | None = getattr(state, "simulation_turns", None)
    if gate is None:
        gate = state.simulation_turns = asyncio.Semaphore(settings.simulation_concurrency)
    return gate


async def run_engine(
    job: SimulationRequest, *, gate: asyncio.Semaphore, timeout_seconds: float
) -> SimulationResult:
    """Run `worker.simulate` as a process when `gate` gives a turn; 504 past
    `timeout_seconds`, the wait for the turn included (the process, its Temporal server and
    its files are ended), 422 when the engine refuses the scenario (a start in the past)."""
    deadline = time.monotonic() + timeout_seconds
    too_long = HTTPException(
        status.HTTP_504_GATEWAY_TIMEOUT,
        f"the rehearsal took longer than {timeout_seconds:g} s (its wait for a turn "
        "included; NUDGE_SIMULATION_TIMEOUT_SECONDS); shorten the scenario (`until`) or try "
        "again when fewer run",
    )
    try:
        await asyncio.wait_for(gate.acquire(), timeout=deadline - time.monotonic())
    except TimeoutError:
        raise too_long from None
    try:
        returncode, out, err = await _run(job, deadline, too_long)
    finally:
        gate.release()
    said = err.decode(errors="replace").strip().splitlines()
    reason = said[-1] if said else f"exit status {returncode}"
    if returncode == 2:
        raise HTTPException(422, {"problems": [safe_text(reason)]})
    if returncode != 0:
        raise HTTPException(
            status.HTTP_500_INTERNAL_SERVER_ERROR, f"the rehearsal failed: {reason}"
        )
    try:
        return SimulationResult.model_validate_json(out)
    except ValidationError as exc:
        raise HTTPException(
            status.HTTP_500_INTERNAL_SERVER_ERROR, "the rehearsal's answer could not be read"
        ) from exc


async def _run(
    job: SimulationRequest, deadline: float, too_long: HTTPException
) -> tuple[int, bytes, bytes]:
    """The engine's exit status, stdout and stderr; `too_long` raised past `deadline`.

    Its temporary files (the rehearsal's database) go in a directory of its own (TMPDIR),
    removed here when it ends however it ends: a process killed at the deadline cannot
    remove them itself."""
    scratch = await asyncio.to_thread(tempfile.mkdtemp, prefix="nudge-rehearsal-")
    try:
        process = await asyncio.create_subprocess_exec(
            *ENGINE,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "TMPDIR": scratch},
            # Its own process group: ending it ends the Temporal test server it started.
            start_new_session=True,
        )
        try:
            out, err = await asyncio.wait_for(
                process.communicate(job.model_dump_json().encode()),
                timeout=max(deadline - time.monotonic(), 0.1),
            )
        except TimeoutError:
            _end(process)
            await process.wait()
            raise too_long from None
        except BaseException:
            _end(process)
            raise
        assert process.returncode is not None  # communicate() waited for it
        return process.returncode, out, err
    finally:
        await asyncio.to_thread(shutil.rmtree, scratch, True)


def _end(process: asyncio.subprocess.Process) -> None:
    """SIGKILL the engine's process group (it and its test server), if it still runs."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
