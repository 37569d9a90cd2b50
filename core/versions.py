"""core: what changed between two versions of a campaign — a unified diff of the two
definitions rendered as YAML, and the changes a reviewer looks for first (steps added,
removed or changed; other fields changed). Pure: the API reads the versions and serves it."""

from __future__ import annotations

import difflib
from typing import Any

import yaml
from pydantic import BaseModel, Field


class DefinitionChanges(BaseModel):
    """Two versions compared: `text` is empty when their definitions are the same."""

    text: str = Field(description="a unified diff of the two definitions, as YAML")
    steps_added: list[str] = Field(description="ids of steps only the newer side has")
    steps_removed: list[str] = Field(description="ids of steps only the older side has")
    steps_changed: list[str] = Field(description="ids of steps on both sides that differ")
    fields_changed: list[str] = Field(
        description="top-level fields (other than steps) that differ, in definition order"
    )


def render_yaml(document: dict[str, Any]) -> str:
    """A stored definition as YAML an author would write: its own field order, readable
    text (UTF-8, not escaped), block style."""
    text: str = yaml.safe_dump(
        document, sort_keys=False, allow_unicode=True, default_flow_style=False, width=100
    )
    return text


def compare_definitions(
    old: dict[str, Any], new: dict[str, Any], *, old_label: str, new_label: str
) -> DefinitionChanges:
    """`old` and `new` are stored definitions (JSON documents); the labels head the diff
    (`cart v3`, `cart v4`)."""
    lines = difflib.unified_diff(
        render_yaml(old).splitlines(keepends=True),
        render_yaml(new).splitlines(keepends=True),
        fromfile=old_label,
        tofile=new_label,
    )
    old_steps, new_steps = _steps(old), _steps(new)
    fields = [
        name
        for name in dict.fromkeys([*old, *new])
        if name != "steps" and old.get(name) != new.get(name)
    ]
    return DefinitionChanges(
        text="".join(lines),
        steps_added=[s for s in new_steps if s not in old_steps],
        steps_removed=[s for s in old_steps if s not in new_steps],
        steps_changed=[s for s in new_steps if s in old_steps and old_steps[s] != new_steps[s]],
        fields_changed=fields,
    )


def _steps(document: dict[str, Any]) -> dict[str, Any]:
    """Steps by id, in order (a step only moved shows in the diff's text, not as changed)."""
    steps = document.get("steps")
    if not isinstance(steps, list):
        return {}
    return {str(step.get("id")): step for step in steps if isinstance(step, dict) and "id" in step}
