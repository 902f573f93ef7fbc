"""The explorer's Textual app, driven by Textual's pilot at 80x24 against a real session on
the test nats-server (snapshots of it: tests/test_explorer_snapshots.py)."""

from __future__ import annotations

import asyncio
import fcntl
import io
import os
import select
import struct
import subprocess
import sys
import termios
from collections.abc import Awaitable, Callable
from datetime import UTC
from pathlib import Path

import pytest
from rich.style import Style
from rich.text import Text
from textual.containers import VerticalScroll
from textual.pilot import Pilot
from textual.widgets import Static

from plantangenet import EmbeddedNats, JournalConfig, Plantangenet
from plantangenet.cli import main
from plantangenet.events.envelope import Envelope
from plantangenet.timetravel.explorer import LiveFeed, Timeline
from plantangenet.timetravel.explorer.app import ExplorerApp
from plantangenet.timetravel.explorer.text import why_lines
from plantangenet.timetravel.explorer.widgets import (
    COLUMNS,
    REFUSAL_STYLE,
    HelpScreen,
    TimelineTable,
    event_style,
)
from plantangenet.timetravel.history import StreamSequence, Why, why
from tests.test_cli import external
from tests.test_explore import SID, build_session

SIZE = (80, 24)

Scenario = Callable[[ExplorerApp, Pilot[int]], Awaitable[None]]


def explore(app: ExplorerApp, scenario: Scenario, size: tuple[int, int] = SIZE) -> None:
    """Run ``app`` headless at ``size`` and play ``scenario`` on it, then quit with ``q``."""

    async def play() -> None:
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            await scenario(app, pilot)
            await pilot.press("q")
        assert app.return_code == 0

    asyncio.run(play())


def text(app: ExplorerApp, widget_id: str) -> str:
    return str(app.query_one(f"#{widget_id}", Static).content)


def why_source(runtime: Plantangenet) -> Callable[[Envelope], Why]:
    def answer(envelope: Envelope) -> Why:
        position = StreamSequence(envelope.sequence or 0)
        result: Why = runtime.run(why(runtime.journal, SID, position))
        return result

    return answer


def test_keys_move_through_the_timeline_and_the_panes_follow(runtime: Plantangenet) -> None:
    events = build_session(runtime)
    app = ExplorerApp(Timeline(SID, events))

    async def scenario(app: ExplorerApp, pilot: Pilot[int]) -> None:
        table = app.query_one(TimelineTable)
        assert table.row_count == len(events) and table.cursor_row == 0
        assert text(app, "title") == f" plantangenet explore  {SID}  ({len(events)} events)"
        assert text(app, "event-text").startswith(f"seq {events[0].sequence}  SessionStarted")
        assert f"event 1/{len(events)}" in text(app, "status")
        await pilot.press("down", "j", "down")
        assert app.timeline.index == 3 and table.cursor_row == 3
        assert text(app, "event-text").startswith(f"seq {events[3].sequence}  ")
        await pilot.press("k")
        assert app.timeline.index == 2 and table.cursor_row == 2
        await pilot.press("end")
        assert app.timeline.index == len(events) - 1 == table.cursor_row
        assert f"event {len(events)}/{len(events)}" in text(app, "status")
        await pilot.press("less_than_sign")
        assert app.timeline.index == 0 == table.cursor_row
        await pilot.press("up")
        assert app.timeline.index == 0
        await pilot.press("G")
        assert app.timeline.index == len(events) - 1
        await pilot.press("g", *f"#{events[4].sequence}", "enter")
        assert app.timeline.index == 4 == table.cursor_row
        await pilot.press("g", *"yesterday", "enter")
        assert app.timeline.index == 4
        assert "not a sequence or an ISO time" in text(app, "status")

    explore(app, scenario)


def test_refusals_policy_changes_and_role_grants_stand_out(runtime: Plantangenet) -> None:
    events = build_session(runtime)
    app = ExplorerApp(Timeline(SID, events))
    styles = {name: event_style(name) for name in ("AccessDenied", "PolicyChanged", "RoleGranted")}
    assert styles["AccessDenied"] == REFUSAL_STYLE and "red" not in styles["PolicyChanged"]
    assert len(set(styles.values())) == 3 and "" not in styles.values()  # distinct, not plain
    assert event_style("ChargeRefused") == event_style("ChemRefused") == REFUSAL_STYLE
    assert event_style("CursorMoved") == ""

    async def scenario(app: ExplorerApp, pilot: Pilot[int]) -> None:
        table = app.query_one(TimelineTable)
        for row in range(table.row_count):
            assert str(table.row(row).style) == styles.get(events[row].type_name, "")
        # ...and drawn so: the colour is in what the row renders to.
        for name, style in styles.items():
            y = 1 + next(i for i, e in enumerate(events) if e.type_name == name)
            colours = {s.style.color for s in table.render_line(y) if s.style and s.text.strip()}
            assert colours == {Style.parse(style).color}, name
        denied = next(i for i, e in enumerate(events) if e.type_name == "AccessDenied")
        app.timeline.select(denied)
        app._changed()
        head = app.query_one("#event-text", Static).content
        assert isinstance(head, Text) and head.spans[0].style == REFUSAL_STYLE
        # Selected, the refusal keeps its colour (on the cursor's background).
        assert table.cursor_row == denied
        line = table.render_line(1 + denied)
        assert {s.style.color for s in line if s.style and s.text.strip()} == {
            Style.parse(REFUSAL_STYLE).color
        }
        assert {s.style.bgcolor for s in line if s.style and s.text.strip()} != {
            s.style.bgcolor for s in table.render_line(1) if s.style and s.text.strip()
        }

    explore(app, scenario)


def test_every_column_fits_at_80x24(runtime: Plantangenet) -> None:
    events = build_session(runtime)
    app = ExplorerApp(Timeline(SID, events))

    async def scenario(app: ExplorerApp, pilot: Pilot[int]) -> None:
        assert app.screen.has_class("-narrow")
        table = app.query_one(TimelineTable)
        # The table needs no horizontal scrolling: every column is on the screen, whole.
        assert table.max_scroll_x == 0
        assert table.virtual_size.width <= table.scrollable_content_region.width
        assert table.region.width == 80 and table.region.height >= 8
        assert table.render_line(0).text.split() == ["SEQ", "TIME", "(UTC)", "EVENT", "BY"]
        assert " ".join(COLUMNS) == "SEQ TIME (UTC) EVENT BY"
        denied = next(i for i, e in enumerate(events) if e.type_name == "AccessDenied")
        at = events[denied].occurred_at.astimezone(UTC)
        cells = [str(events[denied].sequence), f"{at:%m-%d}", f"{at:%H:%M:%S}", "AccessDenied"]
        assert table.render_line(1 + denied).text.split() == [*cells, "bot-2"]
        panes = app.query_one("#panes")
        assert panes.region.y >= table.region.bottom and panes.region.height >= 8
        # Rows below the fold: the table scrolls to keep the selected one on screen.
        shown = table.scrollable_content_region.height - 1
        assert len(events) > shown
        await pilot.press("end")
        last = str(events[-1].sequence)
        lines = [table.render_line(y).text.split() for y in range(1, shown + 1)]
        assert lines[-1][0] == last and lines[-1][3] == events[-1].type_name
        await pilot.press("home")
        assert table.render_line(1).text.split()[0] == str(events[0].sequence)

    explore(app, scenario)
    wide = ExplorerApp(Timeline(SID, events))

    async def side_by_side(app: ExplorerApp, pilot: Pilot[int]) -> None:
        assert app.screen.has_class("-wide")
        table = app.query_one(TimelineTable)
        panes = app.query_one("#panes")
        assert panes.region.x >= table.region.right and table.max_scroll_x == 0

    explore(wide, side_by_side, size=(140, 40))


def test_help_screen(runtime: Plantangenet) -> None:
    app = ExplorerApp(Timeline(SID, build_session(runtime)))

    async def scenario(app: ExplorerApp, pilot: Pilot[int]) -> None:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        help_text = str(app.screen.query_one("#help-text", Static).content)
        assert "search event type, agent, payload" in help_text and "agent:ID" in help_text
        box = app.screen.query_one(VerticalScroll)
        assert box.max_scroll_y == 0 and box.max_scroll_x == 0  # all of it fits at 80x24
        await pilot.press("x")  # any key closes it, and does nothing else
        assert not isinstance(app.screen, HelpScreen) and app.timeline.index == 0
        await pilot.press("question_mark", "f")  # closes it: does not follow
        assert not isinstance(app.screen, HelpScreen) and not app.timeline.follow
        await pilot.press("question_mark", "q")  # closes it: does not quit
        assert not isinstance(app.screen, HelpScreen) and app.is_running

    explore(app, scenario)


def test_search_across_the_timeline_with_next_and_previous(runtime: Plantangenet) -> None:
    events = build_session(runtime)
    app = ExplorerApp(Timeline(SID, events))
    bot2 = [i for i, e in enumerate(events) if "bot-2" in repr(e.event) + str(e.agent_id)]
    assert len(bot2) >= 3

    async def scenario(app: ExplorerApp, pilot: Pilot[int]) -> None:
        table = app.query_one(TimelineTable)
        await pilot.press("slash", *"ocean.wave", "enter")  # only in a payload
        wave = next(i for i, e in enumerate(events) if "ocean.wave" in repr(e.event))
        assert app.timeline.index == wave == table.cursor_row
        assert "'ocean.wave': 1 of 1" in text(app, "status")
        await pilot.press("home", "slash", *"BOT-2", "enter")
        assert app.timeline.index == bot2[0]
        await pilot.press("n")
        assert app.timeline.index == bot2[1] == table.cursor_row
        await pilot.press("n")
        assert app.timeline.index == bot2[2]
        await pilot.press("N")
        assert app.timeline.index == bot2[1]
        await pilot.press("slash", *"nowhere", "enter")
        assert app.timeline.index == bot2[1] and "not found: 'nowhere'" in text(app, "status")
        await pilot.press("slash", *"abc", "escape")  # cancelled: the search stays
        assert app.explorer.search == "nowhere" and app.focused is table

    explore(app, scenario)


def test_filter_uses_the_shared_syntax(runtime: Plantangenet) -> None:
    events = build_session(runtime)
    app = ExplorerApp(Timeline(SID, events))
    cursors = [i for i, e in enumerate(events) if e.type_name.startswith("Cursor")]

    async def scenario(app: ExplorerApp, pilot: Pilot[int]) -> None:
        table = app.query_one(TimelineTable)
        await pilot.press("t", *"cursor*", "enter")
        assert table.row_count == len(cursors)
        assert [table.index_at(r) for r in range(table.row_count)] == cursors
        assert app.timeline.index == cursors[0] and table.cursor_row == 0
        assert f"filter cursor*: {len(cursors)} match" in text(app, "status")
        await pilot.press("down")
        assert app.timeline.index == cursors[1]
        await pilot.press("t", *"Nonsense", "enter")
        assert "no event type matches 'Nonsense'" in text(app, "status")
        assert table.row_count == len(cursors)  # unchanged
        await pilot.press("t", "enter")  # empty: no filter
        assert table.row_count == len(events) and app.timeline.index == cursors[1]
        assert table.cursor_row == cursors[1]

    explore(app, scenario)


def test_diff_and_why_panes_of_the_selected_event(runtime: Plantangenet) -> None:
    events = build_session(runtime)
    app = ExplorerApp(Timeline(SID, events), why_source=why_source(runtime))
    denied = next(i for i, e in enumerate(events) if e.type_name == "AccessDenied")
    moved = next(i for i, e in enumerate(events) if e.type_name == "CursorMoved")

    async def scenario(app: ExplorerApp, pilot: Pilot[int]) -> None:
        app.timeline.select(moved)
        app._changed()
        await pilot.press("d")
        assert app.pane == "diff"
        diff = text(app, "diff-text")
        assert "1 change(s)" in diff
        assert "~ cursors.c1: bot-1 ocean.temp [0, 10] -> bot-1 ocean.temp [5, 15]" in diff
        assert [str(c) for c in app.timeline.changes] == diff.splitlines()[1:]

        await pilot.press("w")
        assert app.pane == "why"
        await app.workers.wait_for_complete()
        await pilot.pause()
        expected = why_lines(
            runtime.run(why(runtime.journal, SID, StreamSequence(events[moved].sequence or 0)))
        )
        assert text(app, "why-text") == "\n".join(expected)
        assert "allowed" in expected and any("by statement watchers" in x for x in expected)

        for _ in range(moved - denied):  # to the refusal: the why pane follows
            await pilot.press("up")
        assert app.timeline.selected == events[denied]
        await app.workers.wait_for_complete()
        await pilot.pause()
        refused = text(app, "why-text")
        assert "REFUSED" in refused and "default deny" in refused
        assert f"seq {events[denied].sequence}  AccessDenied" in refused

        await pilot.press("e")
        assert app.pane == "event" and "AccessDenied" in text(app, "event-text")

    explore(app, scenario)


def test_copy_the_selected_event_id(runtime: Plantangenet) -> None:
    events = build_session(runtime)
    app = ExplorerApp(Timeline(SID, events))

    async def scenario(app: ExplorerApp, pilot: Pilot[int]) -> None:
        await pilot.press("down", "down", "c")
        assert app.clipboard == events[2].event_id
        messages = [n.message for n in app._notifications]
        assert f"copied event id {events[2].event_id}" in messages

    explore(app, scenario)


def test_a_click_selects_a_row(runtime: Plantangenet) -> None:
    events = build_session(runtime)
    app = ExplorerApp(Timeline(SID, events))

    async def scenario(app: ExplorerApp, pilot: Pilot[int]) -> None:
        table = app.query_one(TimelineTable)
        assert await pilot.click(TimelineTable, offset=(10, 1 + 4))  # header, then rows
        await pilot.pause()
        assert table.cursor_row == 4 and app.timeline.index == 4
        assert text(app, "event-text").startswith(f"seq {events[4].sequence}  ")
        assert await pilot.click("#tabs-list Tab#--content-tab-diff")
        await pilot.pause()
        assert app.pane == "diff"

    explore(app, scenario)


def test_live_follow_appends_new_events_while_open(runtime: Plantangenet) -> None:
    events = build_session(runtime)
    timeline = Timeline(SID, events)
    feed = LiveFeed(runtime, SID, from_sequence=(events[-1].sequence or 0) + 1).start()
    app = ExplorerApp(timeline, feed=feed, poll_interval=0.05)
    session = runtime.session(SID)

    async def until(pilot: Pilot[int], done: Callable[[], bool]) -> None:
        for _ in range(400):  # bounded: fails below, never hangs
            if done():
                return
            await pilot.pause(0.05)

    async def scenario(app: ExplorerApp, pilot: Pilot[int]) -> None:
        table = app.query_one(TimelineTable)
        assert app.timeline.index == 0
        # Not following: a new event is appended, the cursor stays.
        await asyncio.to_thread(session.change_metadata, {"phase": "one"})
        await until(pilot, lambda: table.row_count == len(events) + 1)
        assert table.row_count == len(events) + 1 and app.timeline.index == 0
        assert f"({len(events) + 1} events)" in text(app, "title")
        assert "| live" in text(app, "status")
        await pilot.press("f")
        assert app.timeline.follow and app.timeline.index == len(events)
        assert "FOLLOW" in text(app, "status")
        # Following: the cursor moves to each new event.
        await asyncio.to_thread(session.move_cursor, "bot-1", "c1", ["ocean.temp"], 30, 40)
        await until(pilot, lambda: table.row_count == len(events) + 2)
        assert app.timeline.index == len(events) + 1 == table.cursor_row
        assert app.timeline.selected is not None
        assert app.timeline.selected.type_name == "CursorMoved"
        assert "[10, 20] -> bot-1 ocean.temp [30, 40]" in text(app, "diff-text")
        await pilot.press("f")
        assert not app.timeline.follow and "follow off" in text(app, "status")

    try:
        explore(app, scenario)
    finally:
        feed.stop()
    assert app.timeline.state == runtime.session(SID).state


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plantangenet_explore_opens_the_app_at_a_position_live_and_with_why(
    runtime: Plantangenet,
    nats_server: EmbeddedNats,
    journal_config: JournalConfig,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``plantangenet explore SID --at seq:N`` end to end, the terminal played by the pilot."""
    events = build_session(runtime)
    denied = next(e for e in events if e.type_name == "AccessDenied")
    session = runtime.session(SID)
    seen: list[str] = []

    def drive(app: ExplorerApp) -> int:  # stands in for App.run on a terminal
        async def play() -> int | None:
            async with app.run_test(size=SIZE) as pilot:
                await pilot.pause()
                assert app.timeline.selected == denied  # opened at --at
                assert app.feed is not None and app.why_source is not None
                await pilot.press("w")
                await app.workers.wait_for_complete()
                await pilot.pause()
                seen.append(text(app, "why-text"))
                await pilot.press("f")
                await asyncio.to_thread(session.change_metadata, {"phase": "live"})
                for _ in range(400):  # bounded wait for the live event
                    if len(app.timeline) > len(events):
                        break
                    await pilot.pause(0.05)
                selected = app.timeline.selected
                assert selected is not None and selected.type_name == "SessionMetadataChanged"
                seen.append(text(app, "status"))
                await pilot.press("q")
            return app.return_value

        return asyncio.run(play()) or 0

    monkeypatch.setattr(ExplorerApp, "run", drive)
    monkeypatch.setattr(sys, "stdin", _Terminal())
    monkeypatch.setattr(sys, "stdout", _Terminal())
    status = main(
        ["explore", SID, "--at", f"seq:{denied.sequence}", *external(nats_server, journal_config)],
        out=io.StringIO(),
    )
    assert status == 0
    why_text, status_line = seen
    assert f"seq {denied.sequence}  AccessDenied" in why_text and "REFUSED" in why_text
    assert f"event {len(events) + 1}/{len(events) + 1}" in status_line
    assert "FOLLOW | live" in status_line


def test_explore_runs_in_a_real_terminal(
    runtime: Plantangenet,
    nats_server: EmbeddedNats,
    journal_config: JournalConfig,
) -> None:
    """The real thing in a pseudo-terminal: it draws the session, and ``q`` exits with 0."""
    build_session(runtime)
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {
        **os.environ,
        "TERM": "xterm-256color",
        "NATS_URL": nats_server.url,
        "PLANTANGENET_STREAM": journal_config.stream,
        "PLANTANGENET_SUBJECT_PREFIX": journal_config.subject_prefix,
    }
    child = subprocess.Popen(
        [sys.executable, "-m", "plantangenet.cli", "explore", SID],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
        start_new_session=True,
    )
    os.close(slave)
    shown = b""

    def read_until(done: Callable[[], bool], rounds: int = 300) -> None:
        nonlocal shown
        for _ in range(rounds):  # bounded: the assertions below say what was missing
            if done():
                return
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    shown += os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    return

    try:
        read_until(lambda: b"AccessDenied" in shown and b"Copy" in shown)
        assert b"plantangenet explore" in shown and b"AccessDenied" in shown, shown[-2000:]
        os.write(master, b"q")
        read_until(lambda: child.poll() is not None)
        assert child.wait(timeout=30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.close(master)
