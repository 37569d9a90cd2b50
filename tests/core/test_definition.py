"""tests.core: the campaign definition language — what parses, and what an author is told."""

from __future__ import annotations

import copy
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from core.conditions import AllOf, NotOf, Rule
from core.definition import (
    BranchStep,
    CampaignDefinition,
    DefinitionError,
    ExitStep,
    JourneyPlan,
    ReEntry,
    SendStep,
    SplitStep,
    WaitForStep,
    WaitStep,
    parse_campaign,
)
from core.templates.render import render

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "campaigns"


def cart() -> dict[str, Any]:
    """A valid definition touching every step type; tests break one thing at a time."""
    return {
        "id": "cart",
        "name": "Cart",
        "entry": {"event": "Product Added"},
        "goals": [{"event": "Order Completed"}],
        "steps": [
            {
                "id": "wait",
                "type": "wait_for",
                "event": "Checkout Started",
                "timeout": "1h",
                "on_event": "vip",
                "on_timeout": "pause",
            },
            {
                "id": "vip",
                "type": "branch",
                "branches": [
                    {
                        "conditions": [{"path": "traits.vip", "op": "eq", "value": True}],
                        "next": "remind",
                    }
                ],
                "else": "pause",
            },
            {"id": "pause", "type": "wait", "duration": "23h", "next": "remind"},
            {
                "id": "remind",
                "type": "send",
                "channel": "sandbox",
                "template": "reminder",
                "next": "done",
            },
            {"id": "done", "type": "exit"},
        ],
        "templates": {"reminder": {"subject": "Your cart", "body": "Hi {{ traits.first_name }}"}},
    }


def problems(data: Any) -> list[str]:
    with pytest.raises(DefinitionError) as err:
        parse_campaign(data)
    return err.value.problems


def with_steps(*steps: dict[str, Any], **fields: Any) -> dict[str, Any]:
    data = {"id": "c", "name": "C", "entry": {"event": "E"}, "steps": list(steps), **fields}
    data.setdefault("templates", {"t": {"body": "x"}})
    return data


def send(step_id: str, next_: str | None = None) -> dict[str, Any]:
    return {"id": step_id, "type": "send", "channel": "sandbox", "template": "t", "next": next_}


def wait(step_id: str, next_: str | None = None) -> dict[str, Any]:
    return {"id": step_id, "type": "wait", "duration": "1h", "next": next_}


# -- what parses --------------------------------------------------------------------------


def test_a_definition_with_every_step_type_parses() -> None:
    definition = parse_campaign(cart())
    assert isinstance(definition, CampaignDefinition)
    assert [type(s) for s in definition.steps] == [
        WaitForStep,
        BranchStep,
        WaitStep,
        SendStep,
        ExitStep,
    ]
    assert definition.start_step == "wait"
    assert definition.re_entry is ReEntry.after_exit
    pause = definition.step("pause")
    assert isinstance(pause, WaitStep) and pause.duration == timedelta(hours=23)
    vip = definition.step("vip")
    assert isinstance(vip, BranchStep) and vip.else_ == "pause"
    assert definition.event_names() == {"Order Completed", "Checkout Started"}
    assert definition.channels() == {"sandbox"}
    assert definition.needs_profile(vip) and not definition.needs_profile(pause)
    with pytest.raises(KeyError, match=r"^'nope'$"):
        definition.step("nope")


def test_start_names_the_first_step_to_run() -> None:
    data = with_steps(send("a"), send("b", "a"), start="b")
    assert parse_campaign(data).start_step == "b"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_parses_from_its_file(path: Path) -> None:
    definition = parse_campaign(path.read_text())
    assert definition.id == path.stem
    assert definition.description
    definition.plan()


def test_the_reference_examples_exist() -> None:
    assert {p.name for p in EXAMPLES.glob("*.yaml")} >= {
        "cart-abandonment.yaml",
        "welcome-series.yaml",
    }


def test_cart_abandonment_example_is_the_reference_scenario() -> None:
    definition = parse_campaign((EXAMPLES / "cart-abandonment.yaml").read_bytes())
    assert definition.entry.event == "Product Added"
    assert [g.event for g in definition.goals] == ["Order Completed"]
    assert definition.re_entry is ReEntry.after_exit
    first = definition.step(definition.start_step)
    assert isinstance(first, WaitStep) and first.duration == timedelta(hours=24)
    split = definition.step(first.next or "")
    assert isinstance(split, SplitStep) and [v.name for v in split.variants] == ["coupon", "plain"]
    for variant in split.variants:
        reminder = definition.step(variant.next or "")
        assert isinstance(reminder, SendStep) and reminder.channel == "sandbox"
    assert definition.holdout == 0.1 and definition.attribution.window == timedelta(days=3)
    # The goal ends the journey in any step, so the order is never waited for in a step.
    assert "Order Completed" in definition.plan().event_names()


def test_cart_abandonment_template_renders_from_the_entry_event() -> None:
    definition = parse_campaign((EXAMPLES / "cart-abandonment.yaml").read_text())
    template = definition.templates["cart_reminder"]
    # Segment's Product Added properties.
    event = {
        "name": "Product Added",
        "properties": {
            "product_id": "507f1f77bcf86cd799439011",
            "name": "Monopoly",
            "price": 18.99,
        },
    }
    context = {"traits": {"first_name": "Ada"}, "event": event, "last_event": event}
    body = render(template.body, context)
    assert "Hi Ada, your Monopoly is still in your cart." in body
    assert "COMEBACK10" in body and "18.99" in body
    assert render(template.subject or "", context) == "Monopoly is waiting for you"
    # No profile yet, no price: still a sentence.
    bare = {"traits": {}, "event": {"properties": {"name": "Monopoly"}}}
    assert render(template.body, bare).startswith("Hi there, your Monopoly")
    assert "price" not in render(template.body, bare)


def test_welcome_series_example_waits_for_activity_then_sends_tips() -> None:
    definition = parse_campaign((EXAMPLES / "welcome-series.yaml").read_text())
    assert definition.entry.event == "Signed Up"
    assert definition.re_entry is ReEntry.once
    welcome = definition.step(definition.start_step)
    assert isinstance(welcome, SendStep)
    waiting = definition.step(welcome.next or "")
    assert isinstance(waiting, WaitForStep)
    assert (waiting.event, waiting.timeout) == ("Product Viewed", timedelta(days=2))
    assert waiting.on_event is None
    tips = definition.step(waiting.on_timeout or "")
    assert isinstance(tips, SendStep) and tips.template == "tips"
    for name, template in definition.templates.items():
        assert "Hi Ada" in render(template.body, {"traits": {"first_name": "Ada"}}), name


def test_yaml_text_json_text_and_bytes_give_the_same_definition() -> None:
    data = cart()
    expected = parse_campaign(data)
    as_yaml = yaml.safe_dump(data, sort_keys=False)
    as_json = json.dumps(data, indent="\t")  # tabs: valid JSON, not valid YAML
    bom = "\ufeff"  # as some editors save files
    for text in (
        as_yaml,
        as_json,
        as_yaml.encode(),
        as_json.encode(),
        bom + as_json,
        (bom + as_yaml).encode(),
    ):
        assert parse_campaign(text) == expected


def test_text_that_is_neither_yaml_nor_json_is_rejected() -> None:
    [problem] = problems("id: [unclosed")
    assert problem.startswith("not valid YAML or JSON:")
    [problem] = problems('{"id": "c",}')
    assert problem.startswith("not valid YAML or JSON:")
    [problem] = problems(b"\xff\xfe\x00")
    assert problem.startswith("not valid UTF-8 text")


@pytest.mark.parametrize("data", ["- a\n- b\n", "just words", 42, None])
def test_a_definition_must_be_a_mapping(data: Any) -> None:
    assert problems(data) == ["a campaign definition must be a mapping"]


def test_a_dumped_definition_parses_back_to_itself() -> None:
    definition = parse_campaign(cart())
    dumped = definition.model_dump(mode="json", by_alias=True)
    assert dumped["steps"][2]["duration"] == "23h"
    assert dumped["steps"][1]["else"] == "pause"
    assert parse_campaign(dumped) == definition
    assert parse_campaign(json.dumps(dumped)) == definition


# -- plan() ---------------------------------------------------------------------------------


def test_plan_keeps_the_step_graph_and_drops_the_content() -> None:
    definition = parse_campaign(cart())
    plan = definition.plan()
    assert type(plan) is JourneyPlan
    assert not hasattr(plan, "templates") and not hasattr(plan, "name")
    assert (plan.id, plan.entry, plan.goals, plan.exits, plan.re_entry, plan.start) == (
        definition.id,
        definition.entry,
        definition.goals,
        definition.exits,
        definition.re_entry,
        definition.start,
    )
    assert plan.steps == definition.steps
    assert JourneyPlan.model_validate_json(plan.model_dump_json()) == plan


def test_plan_keeps_template_names_but_not_templates() -> None:
    plan = parse_campaign(cart()).plan()
    dumped = plan.model_dump(by_alias=True)
    assert "templates" not in dumped and "description" not in dumped
    assert dumped["steps"][3]["template"] == "reminder"


def test_plan_validates_again() -> None:
    definition = parse_campaign(cart())
    # model_copy does not validate: a definition broken after parsing must not become a plan.
    broken = definition.model_copy(update={"steps": [*definition.steps[:3], definition.steps[4]]})
    with pytest.raises(ValidationError, match=r"steps\[2\]\.next: no step named 'remind'"):
        broken.plan()


# -- what is rejected, and the path it names ------------------------------------------------


@pytest.mark.parametrize(
    ("break_it", "expected"),
    [
        (lambda d: d["steps"][3].update(next="nowhere"), "steps[3].next: no step named 'nowhere'"),
        (lambda d: d["steps"][2].update(next="nowhere"), "steps[2].next: no step named 'nowhere'"),
        (
            lambda d: d["steps"][0].update(on_event="nowhere"),
            "steps[0].on_event: no step named 'nowhere'",
        ),
        (
            lambda d: d["steps"][0].update(on_timeout="remind2"),
            "steps[0].on_timeout: no step named 'remind2'",
        ),
        (
            lambda d: d["steps"][1]["branches"][0].update(next="nowhere"),
            "steps[1].branches[0].next: no step named 'nowhere'",
        ),
        (
            lambda d: d["steps"][1].update({"else": "nowhere"}),
            "steps[1].else: no step named 'nowhere'",
        ),
        (lambda d: d.update(start="nowhere"), "start: no step named 'nowhere'"),
    ],
    ids=["send.next", "wait.next", "on_event", "on_timeout", "branches.next", "else", "start"],
)
def test_an_unknown_step_reference_is_named_by_its_path(break_it: Any, expected: str) -> None:
    data = cart()
    break_it(data)
    assert problems(data) == [expected]


def test_the_brief_example_message() -> None:
    data = with_steps(
        send("a", "b"),
        wait("b", "c"),
        send("c", "d"),
        {"id": "d", "type": "wait_for", "event": "E2", "timeout": "1d", "on_timeout": "remind"},
    )
    assert problems(data) == ["steps[3].on_timeout: no step named 'remind'"]


def test_every_unknown_reference_is_reported_at_once() -> None:
    data = with_steps(send("a", "x"), send("a", "y"))
    assert problems(data) == [
        "steps[1].id: duplicate step id 'a'",
        "steps[0].next: no step named 'x'",
        "steps[1].next: no step named 'y'",
    ]


def test_duplicate_step_ids_are_rejected() -> None:
    data = with_steps(send("a", "b"), send("b"), send("b"))
    assert problems(data) == ["steps[2].id: duplicate step id 'b'"]


def test_a_step_nothing_leads_to_is_unreachable() -> None:
    data = with_steps(send("a"), send("orphan"), send("orphan2", "a"))
    assert problems(data) == [
        "steps[1]: step 'orphan' is unreachable from start 'a'",
        "steps[2]: step 'orphan2' is unreachable from start 'a'",
    ]


def test_reachability_starts_from_start() -> None:
    data = with_steps(send("a"), send("b", "a"), start="b")
    assert parse_campaign(data).start_step == "b"  # a is reached from b
    data = with_steps(send("a"), send("b"), start="b")
    assert problems(data) == ["steps[0]: step 'a' is unreachable from start 'b'"]


def test_a_cycle_without_a_wait_is_rejected() -> None:
    data = with_steps(send("a", "b"), send("b", "a"))
    assert problems(data) == ["steps[1]: cycle without a wait: a -> b -> a"]


def test_a_step_that_leads_to_itself_is_a_cycle() -> None:
    assert problems(with_steps(send("a", "a"))) == ["steps[0]: cycle without a wait: a -> a"]


@pytest.mark.parametrize(("waiting", "kind"), [("wait", WaitStep), ("wait_for", WaitForStep)])
def test_a_cycle_through_a_wait_is_accepted(waiting: str, kind: type) -> None:
    step: dict[str, Any] = (
        wait("w", "a")
        if waiting == "wait"
        else {"id": "w", "type": "wait_for", "event": "E2", "timeout": "1d", "on_timeout": "a"}
    )
    definition = parse_campaign(with_steps(send("a", "w"), step))
    first, back = definition.steps
    assert isinstance(first, SendStep) and first.next == "w"
    assert isinstance(back, kind)
    # The cycle survives into the plan a journey runs: a -> w -> a.
    plan = definition.plan()
    assert plan.step("a") == first and plan.step("w") == back
    assert (back.next if isinstance(back, WaitStep) else back.on_timeout) == "a"


def test_a_cycle_without_a_wait_beside_one_with_a_wait_is_rejected() -> None:
    # a -> b (wait) -> d -> a has a wait; a -> c -> d -> a has none, and a branch that
    # keeps choosing c would spin forever.
    data = with_steps(
        {
            "id": "a",
            "type": "branch",
            "branches": [{"conditions": [{"path": "traits.x", "op": "exists"}], "next": "b"}],
            "else": "c",
        },
        wait("b", "d"),
        send("c", "d"),
        send("d", "a"),
    )
    assert problems(data) == ["steps[3]: cycle without a wait: a -> c -> d -> a"]


def test_a_long_chain_of_steps_does_not_exhaust_the_stack() -> None:
    count = 3000
    steps = [wait(f"s{i}", f"s{i + 1}" if i + 1 < count else None) for i in range(count)]
    assert len(parse_campaign(with_steps(*steps)).steps) == count
    steps[-1]["type"], steps[-1]["next"] = "send", "s0"
    steps[-1] |= {"channel": "sandbox", "template": "t"}
    del steps[-1]["duration"]
    looped = parse_campaign(with_steps(*steps))  # one long cycle, with waits in it
    last = looped.step(f"s{count - 1}")
    assert isinstance(last, SendStep) and last.next == "s0"


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        ({"id": "s", "type": "send", "template": "t"}, "steps[1].channel: Field required"),
        ({"id": "s", "type": "send", "channel": "sandbox"}, "steps[1].template: Field required"),
        ({"id": "s", "type": "wait"}, "steps[1]: a wait needs exactly one of duration or until"),
        ({"id": "s", "type": "wait_for", "timeout": "1h"}, "steps[1].event: Field required"),
        ({"id": "s", "type": "wait_for", "event": "E"}, "steps[1].timeout: Field required"),
        ({"id": "s", "type": "branch"}, "steps[1].branches: Field required"),
        ({"type": "exit"}, "steps[1].id: Field required"),
    ],
)
def test_a_missing_field_of_a_step_type_is_named(step: dict[str, Any], expected: str) -> None:
    assert problems(with_steps(send("a", "s"), step)) == [expected]


def test_a_misspelt_field_is_rejected() -> None:
    step = {"id": "s", "type": "send", "channel": "sandbox", "template": "t", "nxet": "a"}
    assert problems(with_steps(step)) == ["steps[0].nxet: Extra inputs are not permitted"]


def test_an_unknown_step_type_is_rejected() -> None:
    [problem] = problems(with_steps({"id": "s", "type": "sms"}))
    assert problem.startswith("steps[0]: Input tag 'sms' found using 'type'")


def test_an_invalid_campaign_or_step_id_is_rejected() -> None:
    data = with_steps({"id": "has space", "type": "exit"})
    data["id"] = "Cart Abandonment"
    found = problems(data)
    assert [p.split(":")[0] for p in found] == ["id", "steps[0].id"]


def test_a_missing_top_level_field_is_named() -> None:
    data = cart()
    del data["entry"], data["name"]
    assert problems(data) == ["entry: Field required", "name: Field required"]


def test_an_unknown_template_lists_the_known_ones() -> None:
    data = cart()
    data["steps"][3]["template"] = "remindr"
    assert problems(data) == [
        "steps[3].template: no template named 'remindr' (templates: reminder)"
    ]
    data["templates"] = {}
    assert problems(data) == ["steps[3].template: no template named 'remindr'"]


def test_a_template_problem_names_the_template() -> None:
    data = cart()
    data["templates"]["send"] = {"subject": "no body"}
    assert problems(data) == ["templates.send.body: Field required"]


@pytest.mark.parametrize(
    ("duration", "reason"),
    [
        ("24x", "use a number and a unit"),
        ("h", "use a number and a unit"),
        ("-1h", "use a number and a unit"),
        ("1.5h", "use a number and a unit"),
        ("0h", "must be longer than zero"),
        (0, "must be longer than zero"),
        (-60, "must be longer than zero"),
        (1.5, "use a whole number of seconds"),
        ("99999999999999d", "too long"),
    ],
)
def test_a_bad_duration_is_named(duration: Any, reason: str) -> None:
    data = cart()
    data["steps"][2]["duration"] = duration
    [problem] = problems(data)
    assert problem.startswith(f"steps[2].duration: invalid duration {duration!r}: {reason}")


def test_a_timeout_is_a_duration_too() -> None:
    data = cart()
    data["steps"][0]["timeout"] = "soon"
    [problem] = problems(data)
    assert problem.startswith("steps[0].timeout: invalid duration 'soon'")


def test_an_unknown_condition_op_is_one_problem_at_its_path() -> None:
    data = cart()
    data["entry"]["conditions"] = [{"path": "properties.price", "op": "greater", "value": 5}]
    [problem] = problems(data)
    assert problem.startswith("entry.conditions[0].op: Input should be 'eq', 'ne', 'gt'")


@pytest.mark.parametrize(
    ("condition", "where"),
    [
        ({"path": "profile.vip", "op": "exists"}, "steps[1].branches[0].conditions[0]"),
        ({"path": "traits", "op": "exists"}, "steps[1].branches[0].conditions[0]"),
        (
            {"all": [{"path": "traits.vip"}, {"path": "user.vip"}]},
            "steps[1].branches[0].conditions[0].all[1]",
        ),
        (
            {"not": {"any": [{"path": "vip", "op": "exists"}]}},
            "steps[1].branches[0].conditions[0].not.any[0]",
        ),
    ],
)
def test_a_condition_path_with_an_unknown_root_is_one_problem(
    condition: dict[str, Any], where: str
) -> None:
    data = cart()
    data["steps"][1]["branches"][0]["conditions"] = [condition]
    [problem] = problems(data)
    assert problem.startswith(f"{where}: path ")
    assert "must start with one of event., properties., traits." in problem


def test_nested_conditions_parse_into_their_kinds() -> None:
    data = cart()
    data["entry"]["conditions"] = [
        {
            "all": [
                {"path": "properties.price", "op": "gte", "value": 10},
                {"not": {"path": "event.name"}},
            ]
        }
    ]
    [condition] = parse_campaign(data).entry.conditions
    assert isinstance(condition, AllOf)
    assert isinstance(condition.all[0], Rule) and isinstance(condition.all[1], NotOf)


# -- property: a cycle without a wait is found whatever the graph -------------------------

KINDS = ("send", "wait", "branch")


@st.composite
def graphs(draw: st.DrawFn) -> tuple[list[str], list[list[int | None]]]:
    size = draw(st.integers(1, 7))
    kinds = draw(st.lists(st.sampled_from(KINDS), min_size=size, max_size=size))
    target = st.one_of(st.none(), st.integers(0, size - 1))
    edges = [
        draw(st.lists(target, min_size=2, max_size=3)) if kind == "branch" else [draw(target)]
        for kind in kinds
    ]
    return kinds, edges


def build(kinds: list[str], edges: list[list[int | None]]) -> dict[str, Any]:
    name = [f"s{i}" for i in range(len(kinds))]

    def to(i: int | None) -> str | None:
        return None if i is None else name[i]

    steps: list[dict[str, Any]] = []
    for i, (kind, out) in enumerate(zip(kinds, edges, strict=True)):
        if kind == "send":
            steps.append(send(name[i], to(out[0])))
        elif kind == "wait":
            steps.append(wait(name[i], to(out[0])))
        else:
            branches = [{"conditions": [{"path": "event.name"}], "next": to(j)} for j in out[:-1]]
            steps.append(
                {"id": name[i], "type": "branch", "branches": branches, "else": to(out[-1])}
            )
    return with_steps(*steps)


def has_cycle_without_wait(kinds: list[str], edges: list[list[int | None]]) -> bool:
    """Oracle, by another method: can some step that does not wait come back to itself
    through steps that do not wait?"""
    moving = {i for i, kind in enumerate(kinds) if kind != "wait"}
    for origin in moving:
        todo = [j for j in edges[origin] if j in moving]
        seen: set[int] = set()
        while todo:
            node = todo.pop()
            if node == origin:
                return True
            if node not in seen:
                seen.add(node)
                todo.extend(j for j in edges[node] if j in moving)
    return False


@settings(max_examples=300, deadline=None)
@given(graphs())
def test_cycles_without_a_wait_are_found_in_any_graph(
    graph: tuple[list[str], list[list[int | None]]],
) -> None:
    kinds, edges = graph
    data = build(kinds, edges)
    try:
        parse_campaign(copy.deepcopy(data))
        found: list[str] = []
    except DefinitionError as err:
        found = err.problems
    assert any("cycle without a wait" in p for p in found) == has_cycle_without_wait(kinds, edges)
    # Any other problem is about a step no path reaches.
    assert all("cycle without a wait" in p or "unreachable" in p for p in found)
