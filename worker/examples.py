"""worker: the shipped examples `nudge dev` applies, and what it remembers of each, so a
changed example reaches an existing `.nudge/` without overwriting an operator's change."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from core.definition import DefinitionError, parse_campaign
from core.segments import definition_hash as segment_hash
from core.segments import parse_segment
from store.campaigns import definition_hash as campaign_hash

log = logging.getLogger("nudge.dev")

MEMORY_FILE = "examples.json"
"""In the state directory: per example, the hash of the definition `nudge dev` last applied."""
MEMORY_FORMAT = 1


class Plan(StrEnum):
    """What a start does with one shipped example."""

    apply = "apply"
    """Missing from the database: apply it (a campaign is activated)."""
    deleted = "deleted"
    """A segment nudge dev applied, deleted since by the operator: it stays deleted."""
    same = "same"
    """The stored definition is the shipped one: nothing to write; remember it."""
    update = "update"
    """Stored as nudge dev left it, and the shipped file changed since: save it as a new
    version (published when the campaign was live, which keeps its status)."""
    keep = "keep"
    """The operator's own (or archived), and nothing new was shipped since: leave it."""
    yours = "yours"
    """The operator's own, and the shipped file changed since: leave it, and say how to
    take the shipped one."""


def plan_example(
    *,
    shipped: str,
    latest: str | None,
    current: str | None,
    remembered: str | None,
    archived: bool = False,
) -> Plan:
    """Decide from hashes alone: of the shipped file, of the latest and the current stored
    versions (None: not in the database), and of what nudge dev last applied (None: never,
    or a `.nudge/` from before it remembered — then whatever is stored is the operator's).

    Stored versions count as nudge dev's only when both the current and the latest are what
    it applied: an operator's new version, draft (even of the shipped file, saved to try it
    first) or rollback makes the campaign theirs. Missing, but remembered: deleted by the
    operator (only segments can be), and it stays so."""
    if latest is None:
        return Plan.apply if remembered is None else Plan.deleted
    if latest == shipped and current == shipped:
        return Plan.same
    ours = remembered is not None and current == remembered and latest == remembered
    if shipped == remembered:
        return Plan.keep
    if ours and not archived:
        return Plan.update
    return Plan.yours


@dataclass(frozen=True)
class Example:
    """One shipped segment or campaign as this start found it: applied now (it was
    missing), updated to the shipped file, kept as it was (an operator may have paused,
    archived or changed it), or not applied, and why."""

    kind: str
    id: str
    version: int | None = None
    status: str | None = None
    applied: bool = False
    problem: str | None = None
    updated: bool = False
    note: str | None = None
    """One line for the banner: updated, or the operator's kept while the shipped changed."""

    @property
    def label(self) -> str:
        if self.problem:
            return f"{self.id} (not applied: {self.problem})"
        if self.version is None:
            return f"{self.id} (deleted)"
        shown = self.status if self.status in ("paused", "archived") else None
        return f"{self.id} (v{self.version}{f', {shown}' if shown else ''})"

    @property
    def kept(self) -> bool:
        return not (self.applied or self.updated or self.problem)


# -- what nudge dev remembers ---------------------------------------------------------------


def read_memory(state_dir: Path) -> dict[str, dict[str, str]]:
    """{kind: {id: hash}}; empty when there is no file yet (a `.nudge/` from before) or it
    cannot be read — then nothing stored counts as nudge dev's, so nothing is overwritten."""
    path = state_dir / MEMORY_FILE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        aside = path.with_name(f"{MEMORY_FILE}.bad")
        log.warning(
            "%s unreadable (%s), kept as %s: stored examples are treated as yours",
            path,
            exc,
            aside.name,
        )
        path.replace(aside)
        return {}
    if not isinstance(document, dict) or document.get("format") != MEMORY_FORMAT:
        return {}
    found: dict[str, dict[str, str]] = {}
    for kind in ("campaign", "segment"):
        hashes = document.get(kind)
        if isinstance(hashes, dict):
            found[kind] = {k: v for k, v in hashes.items() if isinstance(v, str)}
    return found


def write_memory(state_dir: Path, memory: dict[str, dict[str, str]]) -> None:
    """Replace the file at once (a temporary file renamed over it): a start stopped midway
    leaves the old memory or the new, never half of one."""
    state_dir.mkdir(parents=True, exist_ok=True)
    document = {"format": MEMORY_FORMAT, **{k: dict(sorted(v.items())) for k, v in memory.items()}}
    handle, name = tempfile.mkstemp(dir=state_dir, prefix=".examples.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump(document, file, indent=2, sort_keys=True)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(name, state_dir / MEMORY_FILE)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


# -- applying ----------------------------------------------------------------------------


def shipped_hash(kind: str, text: str) -> tuple[str, str]:
    """(id, hash) of a shipped file, normalised as the store does; DefinitionError."""
    if kind == "segment":
        segment = parse_segment(text)
        return segment.id, segment_hash(segment)
    campaign = parse_campaign(text)
    return campaign.id, campaign_hash(campaign)


def shown_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


async def apply_examples(client: Any, examples: Path, state_dir: Path) -> list[Example]:
    """Bring each example segment (`examples/segments/`, beside the campaigns) and campaign
    in `examples` into the database through the API (`client`: a NudgeClient), as
    `plan_example` decides, and remember what was applied in `state_dir`.

    Something that cannot be applied is reported, never a reason not to start."""
    from api.client import NudgeClientError

    memory = read_memory(state_dir)
    if await _database_is_new(client, memory):
        # Not one campaign it applied is there (campaigns are never deleted): a database
        # of its own (another NUDGE_DATABASE_URL), not an operator's deletions.
        memory = {}
    found: list[Example] = []
    kinds = (
        ("segment", sorted((examples.parent / "segments").glob("*.y*ml"))),
        ("campaign", sorted(examples.glob("*.y*ml"))),
    )
    for kind, paths in kinds:
        remembered = memory.setdefault(kind, {})
        for path in paths:
            text = path.read_text(encoding="utf-8")
            try:
                name, shipped = shipped_hash(kind, text)
            except DefinitionError as exc:
                problem = "; ".join(exc.problems)
                log.warning("example %s %s not applied: %s", kind, path.name, problem)
                found.append(Example(kind, path.stem, problem=problem))
                continue
            try:
                example, applied = await _bring(
                    client, kind, name, text, path, shipped, remembered.get(name)
                )
            except NudgeClientError as exc:
                problem = " ".join(str(exc).split())
                log.warning("example %s %s not applied: %s", kind, name, problem)
                found.append(Example(kind, name, problem=problem))
                continue
            if applied is not None:
                remembered[name] = applied
            found.append(example)
    write_memory(state_dir, memory)
    return found


async def _database_is_new(client: Any, memory: dict[str, dict[str, str]]) -> bool:
    from api.client import NudgeClientError

    remembered = memory.get("campaign", {})
    for name in remembered:
        try:
            await client.get_campaign(name)
        except NudgeClientError as exc:
            if exc.status_code != 404:
                raise
            continue
        return False
    return bool(remembered)


async def _bring(
    client: Any, kind: str, name: str, text: str, path: Path, shipped: str, remembered: str | None
) -> tuple[Example, str | None]:
    """One example brought in; with the hash to remember now (None: keep what was)."""
    from api.client import NudgeClientError

    get = client.get_segment if kind == "segment" else client.get_campaign
    try:
        stored = await get(name)
    except NudgeClientError as exc:
        if exc.status_code != 404:
            raise
        stored = None
    if stored is None:
        latest = current = None
    elif kind == "segment":
        try:
            latest = current = segment_hash(parse_segment(stored["definition"]))
        except DefinitionError:  # stored by an older Nudge, refused today: not ours to touch
            latest = current = "unreadable"
    else:
        hashes = {v["version"]: v["definition_hash"] for v in stored["versions"]}
        latest, current = hashes[stored["latest_version"]], hashes[stored["current_version"]]
    status = None if stored is None else stored.get("status")
    plan = plan_example(
        shipped=shipped,
        latest=latest,
        current=current,
        remembered=remembered,
        archived=status == "archived",
    )
    if plan == Plan.deleted:
        note = f"{name}: deleted, kept so; nudge segments apply {shown_path(path)} brings it back"
        return Example(kind, name, note=note), remembered
    if plan == Plan.apply:
        if kind == "segment":
            saved = await client.apply_segment(text)
        else:
            saved = await client.apply_campaign(text, activate=True)
        version = saved.get("version", saved.get("current_version"))
        return Example(kind, name, version, saved.get("status"), applied=True), shipped
    assert stored is not None
    if plan == Plan.update:
        if kind == "segment":
            saved = await client.apply_segment(text)
            version, status = saved["version"], saved["status"]
        else:
            saved = await client.apply_campaign(text)
            version = saved["version"]
            if status in ("active", "paused"):
                # Publishing keeps the status: a paused campaign stays paused.
                published = await client.publish_campaign(name, version=version)
                status = published["campaign"]["status"]
        note = f"{name}: updated to the shipped example (v{version})"
        return Example(kind, name, version, status, updated=True, note=note), shipped
    version = stored.get("version", stored.get("current_version"))
    said: str | None = None
    if plan == Plan.yours:
        theirs = stored.get("latest_version", version)
        take = (
            f"take it: nudge segments apply {shown_path(path)}"
            if kind == "segment"
            else f"take it: nudge campaigns apply {shown_path(path)} && "
            f"nudge campaigns publish {name}"
        )
        said = f"{name}: yours (v{theirs}) kept; {shown_path(path)} changed since — " + (
            "archived, it takes no new version" if status == "archived" else take
        )
    return Example(kind, name, version, status, note=said), (shipped if plan == Plan.same else None)
