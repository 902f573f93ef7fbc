"""Snapshots of the explorer's screens (pytest-textual-snapshot), on a deterministic session:
a real session's events with fixed ids, times and sequences.

``pytest tests/test_explorer_snapshots.py --snapshot-update`` rewrites the SVGs in
tests/__snapshots__/ after an intended change; look at them before committing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from textual.pilot import Pilot

from plantangenet import Plantangenet
from plantangenet.events.envelope import Envelope
from plantangenet.timetravel.explorer import Timeline
from plantangenet.timetravel.explorer.app import ExplorerApp
from tests.test_explore import SID, build_session

SnapCompare = Callable[..., bool]
EPOCH = datetime(2026, 1, 2, 3, 4, 0, tzinfo=UTC)


def fixed(envelopes: list[Envelope]) -> list[Envelope]:
    """The events with fixed ids, times and sequences (the revision), so screens are stable."""
    return [
        dataclasses.replace(
            e,
            event_id=f"{e.revision or 0:032x}",
            causation_id=f"command-{e.revision}",
            correlation_id="request-1",
            occurred_at=EPOCH + timedelta(seconds=7 * (e.revision or 0)),
            sequence=e.revision,
        )
        for e in envelopes
    ]


def app_of(runtime: Plantangenet) -> ExplorerApp:
    events = fixed(build_session(runtime))
    assert [e.sequence for e in events] == list(range(1, 16))
    return ExplorerApp(Timeline(SID, events))


def test_opened_at_80x24(runtime: Plantangenet, snap_compare: SnapCompare) -> None:
    assert snap_compare(app_of(runtime), terminal_size=(80, 24))


def test_a_refusal_and_its_diff_at_80x24(runtime: Plantangenet, snap_compare: SnapCompare) -> None:
    # Down to the AccessDenied (red), past the PolicyChanged and the attaches; the diff pane.
    press = ["down"] * 5 + ["d"]
    assert snap_compare(app_of(runtime), press=press, terminal_size=(80, 24))


def test_a_policy_change_at_80x24(runtime: Plantangenet, snap_compare: SnapCompare) -> None:
    assert snap_compare(app_of(runtime), press=["down", "down"], terminal_size=(80, 24))


def test_help_at_80x24(runtime: Plantangenet, snap_compare: SnapCompare) -> None:
    assert snap_compare(app_of(runtime), press=["question_mark"], terminal_size=(80, 24))


def test_filtered_and_searched_at_80x24(runtime: Plantangenet, snap_compare: SnapCompare) -> None:
    async def run_before(pilot: Pilot[int]) -> None:
        await pilot.press("t", *"cursor*", "enter")
        await pilot.press("slash", *"ocean.wave", "enter")

    assert snap_compare(app_of(runtime), run_before=run_before, terminal_size=(80, 24))


def test_the_prompt_at_80x24(runtime: Plantangenet, snap_compare: SnapCompare) -> None:
    assert snap_compare(app_of(runtime), press=["t", *"agent:bot"], terminal_size=(80, 24))


def test_wide_layout(runtime: Plantangenet, snap_compare: SnapCompare) -> None:
    assert snap_compare(app_of(runtime), press=["end"], terminal_size=(140, 40))
