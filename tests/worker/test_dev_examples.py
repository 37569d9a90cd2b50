"""`nudge dev`'s shipped examples on a restart: a changed example reaches an existing
`.nudge/` when the stored one is still as nudge dev left it; an operator's version, pause
or a `.nudge/` from before nudge dev remembered what it applied is never overwritten.

The decision with plain hashes; carrying it out through the real API on a real SQLite
file (Temporal not needed to save campaigns); and one real `nudge dev` start."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.client import NudgeClient
from core.config import Settings
from store.db import migrate
from temporal.servers import free_port
from tests.fixtures.api import ADMIN, RunningApi, make_settings, running_api
from tests.worker.test_dev import dev_stack, quiet_now
from worker.dev import EXAMPLES, DevOptions
from worker.examples import MEMORY_FILE, Example, Plan, apply_examples, plan_example

SHIPPED = EXAMPLES.parent


# -- the decision --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("latest", "current", "remembered", "archived", "expected"),
    [
        (None, None, None, False, Plan.apply),  # missing
        (None, None, "old", False, Plan.deleted),  # deleted by the operator: stays so
        ("old", "old", "old", False, Plan.update),  # as nudge dev left it
        ("new", "old", "old", False, Plan.yours),  # a draft of the shipped file: theirs
        ("new", "new", "old", False, Plan.same),  # the operator took it already
        ("new", "new", None, False, Plan.same),  # legacy, equal to the shipped file
        ("old", "old", None, False, Plan.yours),  # legacy: never overwritten
        ("op", "op", "old", False, Plan.yours),  # the operator's own version
        ("op", "old", "old", False, Plan.yours),  # the operator's draft waits
        ("old", "op", "old", False, Plan.yours),  # the operator published another version
        ("old", "old", "old", True, Plan.yours),  # archived: takes no version
    ],
)
def test_plan_from_hashes(
    latest: str | None, current: str | None, remembered: str | None, archived: bool, expected: Plan
):
    plan = plan_example(
        shipped="new", latest=latest, current=current, remembered=remembered, archived=archived
    )
    assert plan == expected


def test_nothing_new_shipped_keeps_the_operators_version_without_a_word():
    for latest in ("op", "new"):
        plan = plan_example(shipped="new", latest=latest, current="op", remembered="new")
        assert plan == Plan.keep


# -- carried out through the API -------------------------------------------------------------


@dataclass
class Shipped:
    """A temporary copy of some shipped examples, to change as a newer Nudge would."""

    campaigns: Path
    state_dir: Path

    def path(self, kind: str, name: str) -> Path:
        folder = self.campaigns if kind == "campaign" else self.campaigns.parent / "segments"
        return folder / f"{name}.yaml"

    def change(self, kind: str, name: str, old: str, new: str) -> None:
        path = self.path(kind, name)
        text = path.read_text(encoding="utf-8")
        assert old in text
        path.write_text(text.replace(old, new), encoding="utf-8")

    def memory(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads((self.state_dir / MEMORY_FILE).read_text())
        return document


def shipped_copy(root: Path) -> Shipped:
    """order-receipt, cart-abandonment and the shanghai segment: none needs Temporal to
    be applied."""
    campaigns, segments = root / "examples" / "campaigns", root / "examples" / "segments"
    campaigns.mkdir(parents=True)
    segments.mkdir()
    for name in ("order-receipt", "cart-abandonment"):
        shutil.copy(SHIPPED / "campaigns" / f"{name}.yaml", campaigns)
    shutil.copy(SHIPPED / "segments" / "shanghai.yaml", segments)
    return Shipped(campaigns, root / ".nudge")


@pytest.fixture
async def api(sqlite_url: str) -> AsyncIterator[RunningApi]:
    """The API on a SQLite file, with Temporal unreachable (a port nothing listens on)."""
    async with running_api(make_settings(sqlite_url, f"127.0.0.1:{free_port()}")) as running:
        yield running


async def bring(api: RunningApi, shipped: Shipped) -> dict[str, Example]:
    async with NudgeClient(api.url, admin_token=api.settings.admin_token) as client:
        found = await apply_examples(client, shipped.campaigns, shipped.state_dir)
    assert not [e.problem for e in found if e.problem]
    return {e.id: e for e in found}


async def campaign(api: RunningApi, name: str) -> dict[str, Any]:
    response = await api.http.get(f"/v1/campaigns/{name}", headers=ADMIN)
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


async def test_an_unchanged_example_takes_the_shipped_file_and_an_operators_is_kept(
    api: RunningApi, tmp_path: Path
):
    shipped = shipped_copy(tmp_path)
    first = await bring(api, shipped)
    assert {(e.id, e.applied, e.version, e.status) for e in first.values()} == {
        ("order-receipt", True, 1, "active"),
        ("cart-abandonment", True, 1, "active"),
        ("shanghai", True, 1, "building"),
    }
    remembered = shipped.memory()
    assert set(remembered["campaign"]) == {"order-receipt", "cart-abandonment"}
    assert set(remembered["segment"]) == {"shanghai"}

    # The operator pauses the receipt, and makes the cart campaign theirs (v2, published).
    r = await api.http.post("/v1/campaigns/order-receipt/pause", headers=ADMIN)
    assert r.status_code == 200, r.text
    cart = (await campaign(api, "cart-abandonment"))["definition"]
    r = await api.http.post(
        "/v1/campaigns?activate=true", json={**cart, "name": "Our cart"}, headers=ADMIN
    )
    assert r.status_code == 201, r.text

    # A newer Nudge ships all three changed.
    shipped.change("campaign", "order-receipt", "is confirmed", "is confirmed, thank you")
    shipped.change("campaign", "cart-abandonment", "name: Cart abandonment", "name: Cart")
    shipped.change("segment", "shanghai", "name: Users in Shanghai", "name: Shanghai users")

    second = await bring(api, shipped)
    receipt = await campaign(api, "order-receipt")
    assert (receipt["status"], receipt["current_version"], receipt["latest_version"]) == (
        "paused",
        2,
        2,
    )
    subject = receipt["definition"]["templates"]["receipt"]["subject"]
    assert subject == "Your order {{ event.properties.order_id }} is confirmed, thank you"
    assert second["order-receipt"].updated
    assert second["order-receipt"].note == "order-receipt: updated to the shipped example (v2)"

    cart_now = await campaign(api, "cart-abandonment")
    assert (cart_now["name"], cart_now["current_version"], cart_now["latest_version"]) == (
        "Our cart",
        2,
        2,
    )
    path = shipped.path("campaign", "cart-abandonment")
    assert second["cart-abandonment"].note == (
        f"cart-abandonment: yours (v2) kept; {path} changed since — take it: "
        f"nudge campaigns apply {path} && nudge campaigns publish cart-abandonment"
    )

    segment = (await api.http.get("/v1/segments/shanghai", headers=ADMIN)).json()
    assert (segment["name"], segment["version"]) == ("Shanghai users", 2)
    assert second["shanghai"].note == "shanghai: updated to the shipped example (v2)"

    now = shipped.memory()
    assert now["campaign"]["order-receipt"] != remembered["campaign"]["order-receipt"]
    assert now["campaign"]["cart-abandonment"] == remembered["campaign"]["cart-abandonment"]
    assert now["segment"]["shanghai"] != remembered["segment"]["shanghai"]

    # Once more: nothing new to write; the operator's cart is still said.
    third = await bring(api, shipped)
    assert not any(e.applied or e.updated for e in third.values())
    assert third["order-receipt"].note is None
    assert third["cart-abandonment"].note == second["cart-abandonment"].note
    assert (await campaign(api, "order-receipt"))["latest_version"] == 2


async def test_a_nudge_dir_from_before_is_never_overwritten_on_the_first_run(
    api: RunningApi, tmp_path: Path
):
    shipped = shipped_copy(tmp_path)
    await bring(api, shipped)
    (shipped.state_dir / MEMORY_FILE).unlink()  # as a .nudge/ from before this change
    shipped.change("campaign", "order-receipt", "is confirmed", "is confirmed, thank you")

    found = await bring(api, shipped)
    receipt = await campaign(api, "order-receipt")
    assert (receipt["current_version"], receipt["latest_version"]) == (1, 1)
    assert not found["order-receipt"].updated
    path = shipped.path("campaign", "order-receipt")
    assert found["order-receipt"].note == (
        f"order-receipt: yours (v1) kept; {path} changed since — take it: "
        f"nudge campaigns apply {path} && nudge campaigns publish order-receipt"
    )
    # Those equal to the shipped file are nudge dev's from now on; the changed one is not.
    remembered = shipped.memory()
    assert set(remembered["campaign"]) == {"cart-abandonment"}
    assert set(remembered["segment"]) == {"shanghai"}
    assert found["cart-abandonment"].note is None


async def test_an_archived_example_is_kept_and_an_unreadable_memory_overwrites_nothing(
    api: RunningApi, tmp_path: Path
):
    shipped = shipped_copy(tmp_path)
    await bring(api, shipped)
    r = await api.http.post("/v1/campaigns/cart-abandonment/archive", headers=ADMIN)
    assert r.status_code == 200, r.text
    shipped.change("campaign", "cart-abandonment", "name: Cart abandonment", "name: Cart")
    shipped.change("campaign", "order-receipt", "is confirmed", "is confirmed, thank you")
    (shipped.state_dir / MEMORY_FILE).write_text('{"format": 1, "campaign": {"order-rec')

    found = await bring(api, shipped)
    cart = await campaign(api, "cart-abandonment")
    assert (cart["status"], cart["latest_version"]) == ("archived", 1)
    assert found["cart-abandonment"].note is not None
    assert found["cart-abandonment"].note.endswith("archived, it takes no new version")
    assert (await campaign(api, "order-receipt"))["latest_version"] == 1
    assert not any(e.updated for e in found.values())
    # Rewritten whole: what equals the shipped file is remembered again.
    memory = shipped.memory()
    assert (memory["format"], memory["campaign"], list(memory["segment"])) == (1, {}, ["shanghai"])
    # The unreadable file is set aside, not lost.
    aside = shipped.state_dir / f"{MEMORY_FILE}.bad"
    assert aside.read_text() == '{"format": 1, "campaign": {"order-rec'


async def test_a_segment_the_operator_deleted_stays_deleted_but_a_new_database_gets_all(
    api: RunningApi, tmp_path: Path
):
    shipped = shipped_copy(tmp_path)
    await bring(api, shipped)
    r = await api.http.delete("/v1/segments/shanghai", headers=ADMIN)
    assert r.status_code in (200, 204), r.text

    found = await bring(api, shipped)
    assert (await api.http.get("/v1/segments/shanghai", headers=ADMIN)).status_code == 404
    assert found["shanghai"].label == "shanghai (deleted)"
    assert found["shanghai"].note == (
        "shanghai: deleted, kept so; nudge segments apply "
        f"{shipped.path('segment', 'shanghai')} brings it back"
    )
    assert "shanghai" in shipped.memory()["segment"]

    # The same .nudge/ against a database of its own: not one campaign it remembers is
    # there (campaigns are never deleted), so nothing counts as deleted: all are applied.
    other = f"sqlite+aiosqlite:///{tmp_path / 'other.db'}"
    await migrate(other)
    async with running_api(make_settings(other, f"127.0.0.1:{free_port()}")) as new_api:
        again = await bring(new_api, shipped)
    assert {name: e.applied for name, e in again.items()} == dict.fromkeys(again, True)
    assert set(again) == {"shanghai", "order-receipt", "cart-abandonment"}


# -- one real start ----------------------------------------------------------------------


async def test_nudge_dev_start_updates_a_changed_example_and_says_so(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """The state a first start leaves (examples applied and remembered), then a start of
    `nudge dev` with the receipt changed: v2, live, and the banner's line."""
    shipped = shipped_copy(tmp_path)
    settings = Settings(
        _env_file=None,
        database_url=sqlite_url,
        api_port=free_port(),
        write_key="demo-key",
        **quiet_now(datetime.now(UTC)),
    )
    async with running_api(make_settings(sqlite_url, f"127.0.0.1:{free_port()}")) as before:
        await bring(before, shipped)
    shipped.change("campaign", "order-receipt", "is confirmed", "is confirmed, thank you")
    options = DevOptions(
        temporal_port=free_port(),
        ui_port=free_port(),
        state_dir=shipped.state_dir,
        examples=shipped.campaigns,
    )
    base = f"http://127.0.0.1:{settings.api_port}"
    admin = {"Authorization": f"Bearer {settings.admin_token}"}
    async with dev_stack(settings, options), httpx.AsyncClient(base_url=base, timeout=10) as http:
        banner = capsys.readouterr().out
        receipt = (await http.get("/v1/campaigns/order-receipt", headers=admin)).json()
        [sent] = (await http.get("/v1/messages", params={"user_id": "ada"}, headers=admin)).json()[
            "data"
        ]
    assert "  order-receipt: updated to the shipped example (v2)\n" in banner
    assert (receipt["status"], receipt["current_version"]) == ("active", 2)
    # The demo receipt went out on the shipped example's new version.
    assert sent["subject"] == "Your order demo-1001 is confirmed, thank you"
