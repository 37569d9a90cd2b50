"""tests.simulate: rehearsals with the real journey — the examples' scenarios on the
time-skipping server (every one must hold: teams run them in CI), `nudge simulate` as a
process (a timeline with the rendered reminder, a failing expectation's diff and exit 1,
a bad scenario's one-line error), and `POST /v1/campaigns/{id}/simulate` over HTTP."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from api.client import NudgeClient
from core.config import Settings
from core.definition import parse_campaign
from core.scenario import EntryKind, format_offset, parse_scenario, result_of
from temporal.servers import free_port
from tests.cli.runner import closed_url, nudge
from tests.fixtures.api import ADMIN, ADMIN_TOKEN, make_settings, running_api
from worker.simulate import simulate

EXAMPLES = Path(__file__).parents[2] / "examples"
SCENARIOS = sorted((EXAMPLES / "scenarios").glob("*/*.yaml"))
CART = EXAMPLES / "campaigns" / "cart-abandonment.yaml"
ABANDONED = EXAMPLES / "scenarios" / "cart-abandonment" / "abandoned.yaml"
REMINDER = "Hi Ada, your Umbrella is still in your cart."


def test_both_examples_have_scenarios() -> None:
    assert {path.parent.name for path in SCENARIOS} == {"cart-abandonment", "welcome-series"}
    for path in SCENARIOS:
        assert (EXAMPLES / "campaigns" / f"{path.parent.name}.yaml").is_file(), path


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: f"{p.parent.name}/{p.stem}")
async def test_every_example_scenario_holds(path: Path) -> None:
    """On the settings' defaults (quiet hours 21:00-08:00, the default caps)."""
    definition = parse_campaign((EXAMPLES / "campaigns" / f"{path.parent.name}.yaml").read_text())
    scenario = parse_scenario(path.read_text())
    assert scenario.expect, f"{path} states no expectations"
    timeline = await simulate(
        definition=definition, scenario=scenario, settings=Settings(_env_file=None)
    )
    result = result_of(scenario, timeline)
    failing = [v for v in result.expectations if not v.holds]
    assert result.passed, failing
    # Every journey the rehearsal started has ended or is still said to run: nothing lost.
    assert timeline.journeys >= 1
    assert timeline.entries[-1].kind in (EntryKind.end, EntryKind.event)
    sent = [e for e in timeline.entries if e.kind is EntryKind.sent]
    assert all(e.message is not None and e.message.body for e in sent), sent


async def test_nudge_simulate_prints_the_timeline_and_a_diff_when_an_expectation_fails(
    tmp_path: Path,
) -> None:
    failing = tmp_path / "failing.yaml"
    document = yaml.safe_load(ABANDONED.read_text())
    document["name"] = "expects the wrong variant"
    document["expect"] = ["sent remind-without-coupon at 24h", "converted", "sent cart_reminder"]
    failing.write_text(yaml.safe_dump(document))

    ran = await nudge(tmp_path, "simulate", str(CART), str(failing), url=closed_url())

    assert ran.code == 1, ran
    assert ran.stderr == (
        "simulate: 1 of 1 scenarios did not go as expected: 'expects the wrong variant'\n"
    )
    out = ran.stdout
    assert out.startswith("cart-abandonment v1 · expects the wrong variant · user ada\n")
    # The timeline: the journey's steps, the send at +24h with the rendered message.
    lines = [line.split() for line in out.splitlines()]
    assert ["+0s", "event", "Product", "Added", "started", "journey", "1"] in lines
    assert ["+24h", "step", "remind", "(split)", "variant", "coupon"] in lines
    [sent] = [line for line in lines if line[:2] == ["+24h", "sent"]]
    assert sent[2:5] == ["remind-with-coupon", "(cart_reminder)", "via"]
    assert f"| {REMINDER}" in out
    assert "subject: Umbrella is waiting for you" in out
    # Which expectations fail, each with what was expected and what happened.
    assert (
        "expectations: 1 of 3 hold\n"
        "  FAIL  sent remind-without-coupon at 24h\n"
        "          - expected: remind-without-coupon sent at +24h\n"
        "          + happened: nothing of remind-without-coupon; sends: sent "
        "remind-with-coupon (cart_reminder) at +24h\n"
        "  FAIL  converted\n"
        "          - expected: the journey ends converted\n"
        "          + happened: completed (reached the end of the journey)\n"
        "  ok    sent cart_reminder\n"
    ) in out


async def test_a_welcome_scenario_expecting_what_did_not_happen_fails_with_what_did() -> None:
    # The welcome series' idle newcomer, told to expect no tips and a conversion: both are
    # wrong, and each says what happened instead.
    document = yaml.safe_load((EXAMPLES / "scenarios" / "welcome-series" / "idle.yaml").read_text())
    document["expect"] = ["sent welcome at 0s", "not sent tips", "converted"]
    scenario = parse_scenario(document)
    definition = parse_campaign((EXAMPLES / "campaigns" / "welcome-series.yaml").read_text())
    timeline = await simulate(
        definition=definition, scenario=scenario, settings=Settings(_env_file=None)
    )
    result = result_of(scenario, timeline)
    assert not result.passed
    verdicts = {v.expectation: v for v in result.expectations}
    assert verdicts["sent welcome at 0s"].holds
    assert not verdicts["not sent tips"].holds
    assert "sent tips" in verdicts["not sent tips"].happened
    assert "+2d" in verdicts["not sent tips"].happened
    assert not verdicts["converted"].holds
    assert verdicts["converted"].happened == "completed (reached the end of the journey)"


async def test_a_bad_scenario_is_one_line_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(ABANDONED.read_text().replace("- completed", "- sent the-reminder"))
    ran = await nudge(tmp_path, "simulate", str(CART), str(bad), url=closed_url())
    ran.failed_with(
        f"error: {bad}: expect[2]: 'sent the-reminder': 'the-reminder' is neither a send step"
    )


async def test_the_api_rehearses_a_stored_version(sqlite_url: str) -> None:
    """The API client's `simulate` (what `nudge simulate --campaign ID` calls): the API runs
    the engine as a process; and the API's refusals before any process starts."""
    settings = make_settings(sqlite_url, f"127.0.0.1:{free_port()}")
    async with running_api(settings) as api:
        await api.campaign(yaml.safe_load(CART.read_text()), activate=False)
        path = "/v1/campaigns/cart-abandonment/simulate"

        missing = await api.http.post(path.replace("cart", "kart"), headers=ADMIN, json={})
        bad = await api.http.post(
            path,
            headers={**ADMIN, "Content-Type": "application/yaml"},
            content=ABANDONED.read_text().replace("at: 0s", "at: soon"),
        )
        typo = await api.http.post(
            path,
            headers=ADMIN,
            json={**yaml.safe_load(ABANDONED.read_text()), "expect": ["entered remnid"]},
        )
        no_version = await api.http.post(
            path, params={"version": 7}, headers=ADMIN, json=yaml.safe_load(ABANDONED.read_text())
        )
        assert (missing.status_code, missing.json()) == (
            404,
            {"detail": "no campaign 'kart-abandonment'"},
        )
        assert bad.status_code == 422
        assert bad.json()["detail"]["problems"][0].startswith("events[0].at: invalid offset 'soon'")
        assert typo.status_code == 422
        assert "'remnid'" in typo.json()["detail"]["problems"][0]
        assert (no_version.status_code, no_version.json()["detail"]) == (
            404,
            "campaign 'cart-abandonment' has no version 7 (versions: 1 to 1)",
        )

        async with NudgeClient(api.url, admin_token=ADMIN_TOKEN) as client:
            result = await client.simulate("cart-abandonment", ABANDONED.read_text())
    assert result["passed"] is True
    assert [v["holds"] for v in result["expectations"]] == [True, True, True]
    timeline = result["timeline"]
    assert (timeline["campaign_id"], timeline["campaign_version"], timeline["status"]) == (
        "cart-abandonment",
        1,
        "completed",
    )
    [sent] = [e for e in timeline["entries"] if e["kind"] == "sent"]
    assert (sent["name"], sent["offset"] // 60) == ("remind-with-coupon", 24 * 60)
    assert sent["message"]["body"].startswith(REMINDER)


async def test_routing_identify_and_a_journey_still_running_when_time_is_up() -> None:
    """Events go the way production routes them (an entry whose conditions fail starts
    nothing), traits merge when identified, and `until` stops a journey mid-wait."""
    scenario = parse_scenario(
        {
            "name": "late entry",
            "user": "ada",
            "start": "10:00",
            "events": [
                {"at": "0s", "event": "Product Added", "properties": {"name": "Umbrella"}},
                {"at": "1h", "traits": {"first_name": "Zed"}},
                {"at": "2h", "event": "Product Added", "properties": {"product_id": "p1"}},
                {"at": "3h", "event": "Signed Up"},
            ],
            "until": "20h",
            "expect": ["running", "entered wait-for-order at 2h", "nothing sent"],
        }
    )
    timeline = await simulate(
        definition=parse_campaign(CART.read_text()),
        scenario=scenario,
        settings=Settings(_env_file=None),
    )
    assert result_of(scenario, timeline).passed
    assert (timeline.start.hour, timeline.start.minute) == (10, 0)
    due = timeline.start + timedelta(hours=26)
    assert [(format_offset(e.delta), e.kind.value, e.name, e.detail) for e in timeline.entries] == [
        ("+0s", "event", "Product Added", "ignored: the campaign's entry conditions do not hold"),
        ("+1h", "event", "identify", "traits: first_name='Zed'"),
        ("+2h", "event", "Product Added", "started journey 1"),
        ("+2h", "step", "wait-for-order", "entered"),
        (
            "+3h",
            "event",
            "Signed Up",
            "ignored: the campaign neither starts on it nor waits for it",
        ),
        ("+20h", "end", "running", f"still running: waiting 1d (until {due:%Y-%m-%d %H:%M} UTC)"),
    ]
    assert timeline.stopped_at == 20 * 3600
