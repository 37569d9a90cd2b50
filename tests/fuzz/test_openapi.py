"""Schemathesis against the API's own OpenAPI schema, served by a real `nudge api` process
(SQLite, the session's dev server): no input gets a 5xx, every status code is documented.

`make test` runs a few cases per operation; `make fuzz` runs NUDGE_FUZZ_EXAMPLES=1000.
"""

from __future__ import annotations

import base64
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    status_code_conformance,
)

from core.config import DEV_PAYLOAD_KEYS
from temporal.servers import DevServer, free_port
from tests.fixtures.api import ADMIN_TOKEN, WRITE_KEY, make_settings
from tests.fixtures.processes import NUDGE, worker_env

EXAMPLES = int(os.environ.get("NUDGE_FUZZ_EXAMPLES", "5"))
SEED = os.environ.get("NUDGE_FUZZ_SEED")
"""Unset: the same cases every run (derandomized); set: a fresh draw (`make fuzz`)."""
CHECKS = (not_a_server_error, status_code_conformance)


@pytest.fixture(scope="module")
def fuzz_api(dev_server: DevServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("fuzz")
    settings = make_settings(f"sqlite+aiosqlite:///{directory / 'nudge.db'}", dev_server.address)
    port = free_port()
    env = {
        **worker_env(settings),
        "NUDGE_API_PORT": str(port),
        "NUDGE_PAYLOAD_KEYS": DEV_PAYLOAD_KEYS,
        "NUDGE_LOG_LEVEL": "WARNING",
    }
    subprocess.run([str(NUDGE), "migrate"], env=env, check=True, capture_output=True)
    log = (directory / "api.log").open("wb")
    process = subprocess.Popen([str(NUDGE), "api"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, (directory / "api.log").read_text()
            assert time.monotonic() < deadline, "nudge api did not come up"
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


TRACKING = {"track", "identify", "page", "screen", "group", "alias", "batch", "import"}
BASIC = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()


def authorize(case: schemathesis.Case) -> None:
    """Tracking routes take the write key (HTTP Basic); the rest the admin token. A case
    that generated its own Authorization keeps it (a wrong credential must get a 401)."""
    headers = dict(case.headers or {})
    segments = case.path.split("/")
    tracking = len(segments) > 2 and segments[1] == "v1" and segments[2] in TRACKING
    headers.setdefault("Authorization", BASIC if tracking else f"Bearer {ADMIN_TOKEN}")
    case.headers = headers


@dataclass
class Finding:
    operation: str
    cases: int = 0
    kinds: dict[str, str] = field(default_factory=dict)
    """One example per kind of failure (check, status): `curl` to reproduce it."""


def fuzz(operation: Any, mode: GenerationMode) -> Finding:
    finding = Finding(f"{operation.label} ({mode.value})")

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        derandomize=SEED is None,
    )
    def run(case: schemathesis.Case) -> None:
        finding.cases += 1
        authorize(case)
        response = case.call(timeout=30)
        try:
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as group:  # findings: collect one of each kind, go on
            for failure in group.exceptions:
                kind = f"{type(failure).__name__} {response.status_code}"
                finding.kinds.setdefault(kind, f"{case.as_curl_command()}\n{response.text}"[:1500])

    try:
        run()
    except Unsatisfiable:
        # Nothing can be made invalid (no parameters, no body): no negative cases.
        assert mode is GenerationMode.NEGATIVE, finding.operation
    return finding


def test_no_input_gets_a_server_error_and_every_status_is_documented(fuzz_api: str) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzz_api}/openapi.json")
    findings = [
        fuzz(result.ok(), mode)
        for result in schema.get_all_operations()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    ]
    report = "\n".join(f"{f.cases:6d}  {f.operation}" for f in findings)
    print(f"\nschemathesis cases per operation:\n{report}")
    failed = [f for f in findings if f.kinds]
    assert not failed, "\n\n".join(
        f"{f.operation}: {kind}\n    {example}" for f in failed for kind, example in f.kinds.items()
    )
