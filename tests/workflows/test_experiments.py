"""Experiments and engagement in JourneyWorkflow, on the time-skipping server: a `split`
takes the hashed variant, the holdout is sent nothing, and a journey can wait for the user to
open an email and send an SMS to those who did not."""

from __future__ import annotations

from datetime import timedelta

from core.definition import parse_campaign
from core.experiments import HOLDOUT, choose_variant, in_holdout
from core.journey import SIGNAL_EVENT, JourneyStatus
from tests.workflows.test_journey import event, start

AB = parse_campaign(
    {
        "id": "ab-test",
        "name": "Reminder A/B",
        "entry": {"event": "Product Added"},
        "goals": [{"event": "Order Completed"}],
        "holdout": 0.2,
        "steps": [
            {"id": "wait", "type": "wait", "duration": "1h", "next": "split"},
            {
                "id": "split",
                "type": "split",
                "variants": [
                    {"name": "plain", "weight": 1, "next": "remind_plain"},
                    {"name": "coupon", "weight": 1, "next": "remind_coupon"},
                ],
            },
            {"id": "remind_plain", "type": "send", "channel": "sandbox", "template": "plain"},
            {"id": "remind_coupon", "type": "send", "channel": "sandbox", "template": "coupon"},
        ],
        "templates": {"plain": {"body": "Come back"}, "coupon": {"body": "10% off"}},
    }
)


def users_for(*, holdout: bool, variant: str, count: int = 1) -> list[str]:
    """Users the hash puts in (or out of) the holdout and in `variant`."""
    split = AB.steps[1]
    found = []
    for i in range(10_000):
        user = f"u{i}"
        if in_holdout(AB.id, user, AB.holdout) is not holdout:
            continue
        if choose_variant(AB.id, split.id, user, split.variants).name == variant:
            found.append(user)
            if len(found) == count:
                return found
    raise AssertionError("no such user in 10,000")


async def test_split_takes_the_hashed_variant_and_sends_its_message(
    time_skipping_env, task_queue, doubles, worker
):
    for variant, template in (("plain", "plain"), ("coupon", "coupon")):
        [user] = users_for(holdout=False, variant=variant)
        handle = await start(time_skipping_env.client, task_queue, AB, user=user)
        result = await handle.result()
        assert result.status is JourneyStatus.completed and result.sends == 1
        request = doubles.sends[-1][0]
        assert request.template == template and request.variant == variant
        taken = doubles.variants[-1]
        assert (taken.user_id, taken.step_id, taken.variant) == (user, "split", variant)
        assert doubles.outcomes[-1].variant == variant
    assert doubles.held_out == []


async def test_a_reentry_takes_the_same_variant(time_skipping_env, task_queue, doubles, worker):
    [user] = users_for(holdout=False, variant="coupon")
    for _ in range(2):
        handle = await start(time_skipping_env.client, task_queue, AB, user=user)
        await handle.result()
    assert [t.variant for t in doubles.variants] == ["coupon", "coupon"]


async def test_the_holdout_is_sent_nothing_and_its_goal_is_recorded(
    time_skipping_env, task_queue, doubles, worker
):
    users = users_for(holdout=True, variant="coupon", count=2)
    # One goes through the journey: the send is held out, recorded at the moment it
    # would have gone.
    began = await time_skipping_env.get_current_time()
    handle = await start(time_skipping_env.client, task_queue, AB, user=users[0])
    result = await handle.result()
    assert result.status is JourneyStatus.completed and result.sends == 0
    assert doubles.sends == [] and doubles.policy_checks == []
    [held] = doubles.held_out
    assert held.send.step_id == "remind_coupon" and held.send.variant == HOLDOUT
    assert timedelta(hours=1) <= held.at - began < timedelta(hours=1, minutes=1)
    assert doubles.variants == []  # counted as the holdout, not as a variant
    assert doubles.outcomes[-1].variant == HOLDOUT

    # The other converts while it waits: its goal and group reach the store, which
    # attributes it (tests/store/test_attribution.py).
    handle = await start(time_skipping_env.client, task_queue, AB, user=users[1])
    await time_skipping_env.sleep(timedelta(minutes=30))
    goal = event("Order Completed", revenue=42.5)
    await handle.signal(SIGNAL_EVENT, goal)
    result = await handle.result()
    assert result.status is JourneyStatus.converted
    outcome = doubles.outcomes[-1]
    assert outcome.variant == HOLDOUT and outcome.goal_event == goal
    assert doubles.sends == []


OPEN_OR_SMS = parse_campaign(
    {
        "id": "open-or-sms",
        "name": "Email, then SMS to those who did not open",
        "entry": {"event": "Signed Up"},
        "steps": [
            {"id": "email", "type": "send", "channel": "email", "template": "t", "next": "opened"},
            {
                "id": "opened",
                "type": "wait_for",
                "event": "Email Opened",
                "conditions": [{"path": "properties.machine", "op": "eq", "value": False}],
                "timeout": "2d",
                "on_timeout": "sms",
            },
            {"id": "sms", "type": "send", "channel": "sms", "template": "t"},
        ],
        "templates": {"t": {"subject": "Hi", "body": "Welcome"}},
    }
)


async def test_wait_for_email_opened_sends_an_sms_to_those_who_did_not_open(
    time_skipping_env, task_queue, doubles, worker
):
    opener = await start(time_skipping_env.client, task_queue, OPEN_OR_SMS, user="opener")
    silent = await start(time_skipping_env.client, task_queue, OPEN_OR_SMS, user="silent")
    await time_skipping_env.sleep(timedelta(hours=5))
    # A mail proxy's open is not the person's: the journey keeps waiting.
    await opener.signal(SIGNAL_EVENT, event("Email Opened", machine=True, delivery_id=1))
    await opener.signal(SIGNAL_EVENT, event("Email Opened", machine=False, delivery_id=1))
    assert (await opener.result()).status is JourneyStatus.completed
    began = await time_skipping_env.get_current_time()
    assert (await silent.result()).status is JourneyStatus.completed
    by_user: dict[str, list[str]] = {}
    for request, _ in doubles.sends:
        by_user.setdefault(request.user_id, []).append(request.channel)
    assert by_user == {"opener": ["email"], "silent": ["email", "sms"]}
    sms_at = next(at for r, at in doubles.sends if r.channel == "sms")
    assert sms_at >= began  # sent when the 2 days ran out, not before
