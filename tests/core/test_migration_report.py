"""core: a migration's report added up page by page (the `campaign_migration` workflow's
running report) — per step counts and reasons summed, the lists capped."""

from __future__ import annotations

from core.operations import (
    MAX_LISTED,
    JourneyMoved,
    JourneyStays,
    MigrationProgress,
    MigrationReport,
    StepReport,
)


def page(n: int, *, moved: int, stays: dict[str, int], first: int = 0) -> MigrationReport:
    """A page of `n` journeys waiting at `wait`, `moved` of them moved."""
    return MigrationReport(
        campaign_id="cart",
        from_version=1,
        to_version=2,
        dry_run=False,
        journeys=n,
        movable=n,
        moved=moved,
        steps=[
            StepReport(
                step="wait",
                type="wait",
                journeys=n,
                lands_on="pause",
                movable=n,
                moved=moved,
                stays=stays,
            )
        ],
        moved_journeys=[
            JourneyMoved(workflow_id=f"j{first + i}", from_step="wait", to_step="pause")
            for i in range(moved)
        ],
        staying_journeys=[JourneyStays(workflow_id="x", step="wait", reason="r")],
        moved_ids=[f"j{first + i}" for i in range(moved)],
    )


def test_pages_add_up_per_step_and_the_lists_stay_capped():
    total = MigrationProgress(
        report=MigrationReport(campaign_id="cart", from_version=1, to_version=2, dry_run=False)
    )
    first = MigrationProgress(report=page(150, moved=150, stays={}), seen=150, after="j149")
    second = MigrationProgress(
        report=page(100, moved=97, stays={"journey is mid-send": 3}, first=150),
        seen=100,
        after="j249",
    )
    ended = MigrationReport(
        campaign_id="cart",
        from_version=1,
        to_version=2,
        dry_run=False,
        journeys=1,
        steps=[StepReport(step=None, journeys=1, stays={"journey already ended": 1})],
    )
    total.add(first)
    total.add(second)
    total.add(MigrationProgress(report=ended, seen=1, after="k"))
    report = total.report
    assert (total.seen, total.after) == (251, "k")
    assert (report.journeys, report.movable, report.moved) == (251, 250, 247)
    assert [s.model_dump() for s in report.steps] == [
        {
            "step": "wait",
            "type": "wait",
            "journeys": 250,
            "lands_on": "pause",
            "movable": 250,
            "moved": 247,
            "stays": {"journey is mid-send": 3},
        },
        {
            "step": None,
            "type": None,
            "journeys": 1,
            "lands_on": None,
            "movable": 0,
            "moved": 0,
            "stays": {"journey already ended": 1},
        },
    ]
    assert len(report.moved_journeys) == MAX_LISTED
    assert report.moved_journeys[-1].workflow_id == f"j{MAX_LISTED - 1}"
    assert len(report.staying_journeys) == 2
    # The ids to record are never serialized: each page's activity recorded its own.
    assert len(report.moved_ids) == 247
    assert "moved_ids" not in report.model_dump()
