"""The session explorer: its model against a real session's events, and the curses program
end to end in a pseudo-terminal against the real server."""

from __future__ import annotations

import codecs
import fcntl
import os
import random
import re
import select
import struct
import subprocess
import sys
import termios
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from plantangenet import AccessRefused, EmbeddedNats, JournalConfig, Plantangenet
from plantangenet.events.envelope import Envelope
from plantangenet.explore import (
    Change,
    EventFilter,
    Explorer,
    LiveFeed,
    Timeline,
    diff_states,
    parse_jump,
    state_lines,
)
from plantangenet.policy import Statement
from plantangenet.projections.session import CursorView, SessionState, fold
from tests.conftest import wait_until

SID = "explored"


def build_session(pg: Plantangenet) -> list[Envelope]:
    """A session touching every part of the state, interleaved with another session
    on the same stream (so its sequences have gaps)."""
    s = pg.session(SID)
    other = pg.session("elsewhere")
    s.start({"purpose": "explore", "owner": "harbour"})
    other.start({"purpose": "noise"})
    s.bind_identity("ops", "Operations", {"tier": "gold"})
    s.change_policy(
        replace=[
            {
                "id": "watchers",
                "effect": "allow",
                "roles": ["watcher"],
                "actions": ["cursor.*"],
                "resources": ["axis.ocean.*", "cursor.*"],
            }
        ]
    )
    s.attach("bot-1", kind="bot", name="Bot One")
    other.attach("stranger")
    s.attach("bot-2", kind="client", name="Bot Two")
    with pytest.raises(AccessRefused):  # recorded as AccessDenied
        s.add_cursor("bot-2", "c2", ["ocean.temp"], 0, 5, issued_by="bot-2")
    s.grant_role("bot-1", "watcher")
    s.add_cursor("bot-1", "c1", ["ocean.temp"], 0, 10, issued_by="bot-1")
    s.move_cursor("bot-1", "c1", ["ocean.temp"], 5, 15, issued_by="bot-1")
    other.attach("another")
    s.add_cursor("bot-2", "c2", ["ocean.wave"], 0, 3)
    s.change_metadata({"status": "observing"}, removed=["owner"])
    s.move_cursor("bot-1", "c1", ["ocean.temp"], 10, 20, issued_by="bot-1")
    s.revoke_role("bot-1", "watcher")
    s.detach("bot-2", "done")
    return pg.history(SID)


def prefix_states(events: list[Envelope]) -> list[SessionState]:
    """``fold`` of the first k events, for every k."""
    return [fold(SID, events[:k]) for k in range(len(events) + 1)]


def check_at(timeline: Timeline, index: int, expected: list[SessionState]) -> None:
    assert timeline.index == index
    assert timeline.state == expected[index + 1]
    assert timeline.before == expected[index]
    assert timeline.changes == diff_states(expected[index], expected[index + 1])


def test_stepping_forward_and_backward_folds_exactly_the_first_k_events(
    runtime: Plantangenet,
) -> None:
    events = build_session(runtime)
    assert len(events) >= 15
    sequences = [e.sequence or 0 for e in events]
    assert sequences[-1] - sequences[0] + 1 > len(events)  # the other session's events
    expected = prefix_states(events)
    assert expected[-1] == runtime.session(SID).state  # the live actor agrees

    forward = Timeline(SID, events, checkpoint_every=3)
    for i, envelope in enumerate(events):
        check_at(forward, i, expected)
        assert forward.selected == envelope
        # ...and the log's own replay up to that sequence agrees.
        assert forward.state == runtime.state_at(SID, envelope.revision or 0)
        assert forward.step(+1) is (i < len(events) - 1)
    assert forward.at_end

    backward = Timeline(SID, events, checkpoint_every=3)
    assert backward.last()
    for i in reversed(range(len(events))):
        check_at(backward, i, expected)
        assert backward.step(-1) is (i > 0)
    check_at(backward, 0, expected)

    jumping = Timeline(SID, events, checkpoint_every=2)
    rng = random.Random(7)
    for _ in range(60):
        i = rng.randrange(len(events))
        jumping.select(i)
        check_at(jumping, i, expected)
    jumping.select(len(events) - 1)
    assert jumping.step(-4)
    check_at(jumping, len(events) - 5, expected)
    assert jumping.step(+100)  # stops at the end
    check_at(jumping, len(events) - 1, expected)


def test_each_event_shows_what_it_changed(runtime: Plantangenet) -> None:
    events = build_session(runtime)
    timeline = Timeline(SID, events)

    def changes_of(type_name: str, nth: int = 0) -> list[Change]:
        index = [i for i, e in enumerate(events) if e.type_name == type_name][nth]
        timeline.select(index)
        return timeline.changes

    started = changes_of("SessionStarted")
    assert Change("status", "changed", "new", "active") in started
    assert Change("metadata.purpose", "added", None, "explore") in started
    policy = changes_of("PolicyChanged")
    assert [c.path for c in policy] == ["policy.version", "policy.statements.watchers"]
    assert policy[0] == Change("policy.version", "changed", 0, 1)
    assert isinstance(policy[1].after, Statement) and policy[1].kind == "added"
    assert changes_of("AccessDenied") == []
    moved = changes_of("CursorMoved")
    before = CursorView("c1", "bot-1", ("ocean.temp",), 0, 10)
    after = CursorView("c1", "bot-1", ("ocean.temp",), 5, 15)
    assert moved == [Change("cursors.c1", "changed", before, after)]
    assert str(moved[0]) == "~ cursors.c1: bot-1 ocean.temp [0, 10] -> bot-1 ocean.temp [5, 15]"
    metadata = changes_of("SessionMetadataChanged")
    assert metadata == [
        Change("metadata.owner", "removed", "harbour", None),
        Change("metadata.status", "added", None, "observing"),
    ]
    assert str(metadata[0]) == '- metadata.owner (was "harbour")'
    assert changes_of("RoleRevoked") == [Change("roles.bot-1", "removed", ("watcher",), None)]
    detached = changes_of("AgentDetached")
    assert [(c.path, c.kind) for c in detached] == [("agents.bot-2", "removed")]

    lines = state_lines(timeline.state)
    assert f"status: active  (seq {events[-1].sequence}, {len(events)} events)" in lines
    assert "  c1  bot-1 ocean.temp [10, 20]" in lines
    assert any(line.startswith('  bot-1  bot "Bot One"') for line in lines)
    assert 'identity: ops "Operations" tier="gold"' in lines


def test_jump_to_sequence_and_to_time(runtime: Plantangenet) -> None:
    events = build_session(runtime)
    timeline = Timeline(SID, events)
    sequences = [e.sequence or 0 for e in events]
    for target in range(sequences[-1] + 3):
        timeline.select(len(events) // 2)
        at_or_before = [i for i, s in enumerate(sequences) if s <= target]
        assert timeline.jump_to_sequence(target) is bool(at_or_before)
        assert timeline.index == (at_or_before[-1] if at_or_before else len(events) // 2)
        assert timeline.state == fold(SID, events[: timeline.index + 1])

    for envelope in events:
        moment = envelope.occurred_at
        candidates = [(e.occurred_at, i) for i, e in enumerate(events) if e.occurred_at <= moment]
        assert timeline.jump_to_time(moment)
        assert timeline.index == max(candidates)[1]
        assert timeline.jump_to_time(moment.astimezone(UTC).replace(tzinfo=None))  # naive: UTC
        assert timeline.index == max(candidates)[1]
    timeline.select(3)
    assert not timeline.jump_to_time(events[0].occurred_at - timedelta(seconds=1))
    assert timeline.index == 3
    assert timeline.jump_to_time(datetime.now(UTC) + timedelta(days=1))
    assert timeline.index == len(events) - 1

    assert parse_jump("#12") == 12
    assert parse_jump(" 7 ") == 7
    assert parse_jump("2024-01-02T03:04:05Z") == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_jump("2024-01-02 03:04:05") == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    reference = datetime(2030, 6, 7, 23, 0, tzinfo=UTC)
    assert parse_jump("03:04:05.5", reference) == datetime(2030, 6, 7, 3, 4, 5, 500000, UTC)
    with pytest.raises(ValueError, match="not a sequence or an ISO time"):
        parse_jump("yesterday")


def test_filter_restricts_where_the_cursor_stops_but_the_state_folds_everything(
    runtime: Plantangenet,
) -> None:
    events = build_session(runtime)
    expected = prefix_states(events)
    timeline = Timeline(SID, events, checkpoint_every=4)

    def visits(event_filter: EventFilter) -> list[int]:
        timeline.set_filter(event_filter)
        assert timeline.first() is bool(timeline.matching)
        seen = [timeline.index] if timeline.matching else []
        while timeline.step(+1):
            seen.append(timeline.index)
            check_at(timeline, timeline.index, expected)
        back = [timeline.index] if timeline.matching else []
        while timeline.step(-1):
            back.append(timeline.index)
            check_at(timeline, timeline.index, expected)
        assert back[::-1] == seen
        return seen

    moved = [i for i, e in enumerate(events) if e.type_name == "CursorMoved"]
    assert visits(EventFilter.parse("cursormoved")) == moved
    assert str(timeline.filter) == "CursorMoved"
    cursors = [i for i, e in enumerate(events) if e.type_name.startswith("Cursor")]
    assert visits(EventFilter.parse("Cursor*")) == cursors

    def concerns(e: Envelope, agent: str) -> bool:
        return e.agent_id == agent or getattr(e.event, "agent_id", None) == agent

    bot2 = [i for i, e in enumerate(events) if concerns(e, "bot-2")]
    assert "AccessDenied" in [events[i].type_name for i in bot2]  # bot-2 tried
    assert "CursorAdded" in [events[i].type_name for i in bot2]  # the owner, about bot-2
    assert visits(EventFilter.parse("agent:bot-2")) == bot2
    both = [i for i in cursors if concerns(events[i], "bot-1")]
    assert visits(EventFilter.parse("Cursor*, agent:bot-1")) == both
    assert visits(EventFilter.parse("SessionEnded")) == []
    assert visits(EventFilter()) == list(range(len(events)))

    # Filtering while on an event it hides: to the previous match, else the next one.
    timeline.select(moved[1] + 1)
    timeline.set_filter(EventFilter(types=("CursorMoved",)))
    check_at(timeline, moved[1], expected)
    timeline.set_filter(EventFilter())
    timeline.select(0)
    timeline.set_filter(EventFilter(types=("CursorMoved",)))
    check_at(timeline, moved[0], expected)
    timeline.set_filter(EventFilter(types=("SessionEnded",)))  # nothing: stays
    check_at(timeline, moved[0], expected)
    assert not timeline.step(+1) and not timeline.step(-1)

    with pytest.raises(ValueError, match="agent id"):
        EventFilter.parse("agent:")
    with pytest.raises(ValueError, match="no event type matches 'CursorMove'"):
        EventFilter.parse("CursorMove")


def test_follow_moves_the_cursor_with_live_events_only_at_the_end(
    runtime: Plantangenet,
) -> None:
    events = build_session(runtime)
    expected = prefix_states(events)
    timeline = Timeline(SID, events[:5], checkpoint_every=3)
    assert timeline.index == 0
    assert timeline.append(events[5]) and timeline.index == 0  # not following
    timeline.set_follow(True)
    check_at(timeline, 5, expected)
    assert timeline.append(events[6])
    check_at(timeline, 6, expected)
    assert not timeline.append(events[6])  # already there (a tail overlapping the history)
    assert not timeline.append(events[2])
    timeline.step(-2)
    assert timeline.append(events[7])  # looking back: the cursor stays
    check_at(timeline, 4, expected)
    timeline.last()
    assert timeline.extend(events[8:10]) == 2
    check_at(timeline, 9, expected)

    # With a filter, the cursor follows the new events the filter lets it stop on.
    timeline.set_filter(EventFilter(types=("CursorMoved",)))
    first_moved = next(i for i, e in enumerate(events) if e.type_name == "CursorMoved")
    assert first_moved < 10 and timeline.index == first_moved
    for i in range(10, len(events)):
        timeline.append(events[i])
        last_moved = max(j for j in range(i + 1) if events[j].type_name == "CursorMoved")
        check_at(timeline, last_moved, expected)
    timeline.set_follow(False)
    assert len(timeline) == len(events)


def test_live_feed_tails_the_session_into_a_following_timeline(runtime: Plantangenet) -> None:
    events = build_session(runtime)
    timeline = Timeline(SID, events)
    timeline.set_follow(True)
    feed = LiveFeed(runtime, SID, from_sequence=(events[-1].sequence or 0) + 1).start()
    try:
        session = runtime.session(SID)
        session.move_cursor("bot-1", "c1", ["ocean.temp"], 30, 40)
        session.change_metadata({"phase": "live"})
        runtime.session("elsewhere").attach("late")  # another session: not on this timeline
        session.end("finished")
        live = session.state

        def caught_up() -> bool:
            timeline.extend(feed.drain())
            return timeline.state.sequence == live.sequence

        wait_until(caught_up, timeout=10)
        assert feed.error is None and feed.state == "live"
        assert timeline.state == live == runtime.replay(SID)
        assert timeline.selected is not None and timeline.selected.type_name == "SessionEnded"
        assert [e.sequence for e in timeline.events] == [e.sequence for e in runtime.history(SID)]
    finally:
        feed.stop()
    feed.stop()  # idempotent


def test_explorer_keys_prompts_and_status(runtime: Plantangenet) -> None:
    events = build_session(runtime)
    timeline = Timeline(SID, events)
    explorer = Explorer(timeline)
    assert explorer.key(ord("n")) is None and timeline.index == 1
    explorer.key(ord("l"))
    explorer.key(0x105)  # curses.KEY_RIGHT
    assert timeline.index == 3
    explorer.key(ord("p"))
    explorer.key(ord("h"))
    assert timeline.index == 1
    explorer.key(0x104)  # curses.KEY_LEFT
    explorer.key(0x104)
    assert timeline.index == 0 and explorer.message == "at the first event"

    assert explorer.key(ord("g")) == "jump"
    explorer.submit("jump", f"#{events[6].sequence}")
    assert timeline.index == 6 and explorer.message == ""
    explorer.submit("jump", "0")
    assert timeline.index == 6 and "no event at or before sequence 0" in explorer.message
    explorer.submit("jump", events[2].occurred_at.isoformat())
    assert timeline.index == 2
    explorer.submit("jump", "later")
    assert timeline.index == 2 and "not a sequence or an ISO time" in explorer.message

    assert explorer.key(ord("f")) == "filter"
    assert "[(none)]" in explorer.prompt_label("filter")
    explorer.submit("filter", "agent:bot-1 CursorMoved")
    assert timeline.filter == EventFilter(("CursorMoved",), ("bot-1",))
    assert timeline.selected is not None and timeline.selected.type_name == "CursorMoved"
    explorer.submit("filter", "Nonsense")
    assert "no event type matches" in explorer.message
    assert timeline.filter == EventFilter(("CursorMoved",), ("bot-1",))  # unchanged
    status = explorer.status("live")
    assert "filter CursorMoved agent:bot-1: 2 match" in status
    assert f"seq {timeline.selected.sequence}" in status and "follow off" in status
    explorer.submit("filter", "")
    assert not timeline.filter

    explorer.key(ord("F"))
    assert timeline.follow and timeline.index == len(events) - 1
    assert explorer.message == "following new events" and "FOLLOW" in explorer.status("live")
    explorer.key(ord("n"))
    assert explorer.message == "at the last event (following)"
    explorer.key(ord("F"))
    assert not timeline.follow
    assert explorer.key(ord("<")) is None and timeline.index == 0
    assert explorer.key(ord("G")) is None and timeline.index == len(events) - 1
    assert explorer.key(12) == "redraw"
    assert explorer.key(ord("q")) == "quit"


# -- end to end: the real curses program in a pseudo-terminal ------------------------------


class Screen:
    """Just enough of an xterm to know what a curses program shows on it."""

    def __init__(self, rows: int, cols: int) -> None:
        self.rows, self.cols = rows, cols
        self._decode = codecs.getincrementaldecoder("utf-8")("replace").decode
        self._pending = ""
        self.reset()

    def reset(self) -> None:
        self.grid = self._blank_grid()
        self.y = self.x = 0
        self.top, self.bottom = 0, self.rows - 1
        self.insert = False
        self.last = " "
        self.saved = (0, 0)
        self.main: list[list[str]] | None = None

    def _blank_grid(self) -> list[list[str]]:
        return [[" "] * self.cols for _ in range(self.rows)]

    def text(self) -> str:
        return "\n".join("".join(row).rstrip() for row in self.grid)

    def feed(self, data: bytes) -> None:
        text = self._pending + self._decode(data)
        self._pending = ""
        i = 0
        while i < len(text):
            ch = text[i]
            if ch == "\x1b":
                after = self._escape(text, i)
                if after is None:  # incomplete: wait for more bytes
                    self._pending = text[i:]
                    return
                i = after
                continue
            if ch == "\r":
                self.x = 0
            elif ch in "\n\x0b\x0c":
                self._linefeed()
            elif ch == "\b":
                self.x = max(min(self.x, self.cols - 1) - 1, 0)
            elif ch == "\t":
                self.x = min((self.x // 8 + 1) * 8, self.cols - 1)
            elif ch >= " " and ch != "\x7f":
                self._put(ch)
            i += 1

    def _put(self, ch: str) -> None:
        if self.x >= self.cols:  # pending wrap (xenl)
            self.x = 0
            self._linefeed()
        line = self.grid[self.y]
        if self.insert:
            line.insert(self.x, ch)
            line.pop()
        else:
            line[self.x] = ch
        self.x += 1
        self.last = ch

    def _linefeed(self) -> None:
        if self.y == self.bottom:
            self._scroll_up(1)
        elif self.y < self.rows - 1:
            self.y += 1

    def _scroll_up(self, n: int) -> None:
        for _ in range(n):
            del self.grid[self.top]
            self.grid.insert(self.bottom, [" "] * self.cols)

    def _scroll_down(self, n: int) -> None:
        for _ in range(n):
            del self.grid[self.bottom]
            self.grid.insert(self.top, [" "] * self.cols)

    def _escape(self, text: str, i: int) -> int | None:
        if i + 1 >= len(text):
            return None
        kind = text[i + 1]
        if kind == "[":
            j = i + 2
            while j < len(text) and "\x20" <= text[j] <= "\x3f":
                j += 1
            if j >= len(text):
                return None
            self._csi(text[i + 2 : j], text[j])
            return j + 1
        if kind == "]":  # OSC, up to BEL or ST
            for j in range(i + 2, len(text)):
                if text[j] == "\x07":
                    return j + 1
                if text[j] == "\x1b" and j + 1 < len(text) and text[j + 1] == "\\":
                    return j + 2
            return None
        if kind in "()*+":  # charset designation
            return i + 3 if i + 2 < len(text) else None
        if kind == "7":
            self.saved = (self.y, self.x)
        elif kind == "8":
            self.y, self.x = self.saved
        elif kind == "M":
            if self.y == self.top:
                self._scroll_down(1)
            elif self.y > 0:
                self.y -= 1
        elif kind == "D":
            self._linefeed()
        elif kind == "E":
            self.x = 0
            self._linefeed()
        elif kind == "c":
            self.reset()
        return i + 2

    def _csi(self, params: str, final: str) -> None:
        prefix = ""
        while params and params[0] in "?>!<=":
            prefix, params = prefix + params[0], params[1:]
        params = params.rstrip(" !\"#$%&'()*+,-./")
        nums = [int(p) if p.isdigit() else 0 for p in params.split(";")] if params else []

        def arg(k: int = 0, default: int = 1) -> int:
            return nums[k] if k < len(nums) and nums[k] else default

        x = min(self.x, self.cols - 1)
        line = self.grid[self.y]
        if prefix and final not in "hl":
            return
        if final == "A":
            self.y, self.x = max(self.y - arg(), 0), x
        elif final == "B":
            self.y, self.x = min(self.y + arg(), self.rows - 1), x
        elif final == "C":
            self.x = min(x + arg(), self.cols - 1)
        elif final == "D":
            self.x = max(x - arg(), 0)
        elif final in "Hf":
            self.y = min(arg(0) - 1, self.rows - 1)
            self.x = min(arg(1) - 1, self.cols - 1)
        elif final == "d":
            self.y, self.x = min(arg() - 1, self.rows - 1), x
        elif final in "G`":
            self.x = min(arg() - 1, self.cols - 1)
        elif final == "J":
            mode = nums[0] if nums else 0
            if mode == 0:
                line[x:] = [" "] * (self.cols - x)
                for row in self.grid[self.y + 1 :]:
                    row[:] = [" "] * self.cols
            elif mode == 1:
                line[: x + 1] = [" "] * (x + 1)
                for row in self.grid[: self.y]:
                    row[:] = [" "] * self.cols
            else:
                self.grid = self._blank_grid()
        elif final == "K":
            mode = nums[0] if nums else 0
            if mode == 0:
                line[x:] = [" "] * (self.cols - x)
            elif mode == 1:
                line[: x + 1] = [" "] * (x + 1)
            else:
                line[:] = [" "] * self.cols
        elif final == "X":
            n = min(arg(), self.cols - x)
            line[x : x + n] = [" "] * n
        elif final == "@":
            line[x:x] = [" "] * arg()
            del line[self.cols :]
        elif final == "P":
            del line[x : x + arg()]
            line.extend([" "] * (self.cols - len(line)))
        elif final in "LM" and self.top <= self.y <= self.bottom:
            for _ in range(arg()):
                if final == "L":
                    del self.grid[self.bottom]
                    self.grid.insert(self.y, [" "] * self.cols)
                else:
                    del self.grid[self.y]
                    self.grid.insert(self.bottom, [" "] * self.cols)
            self.x = 0
        elif final == "S":
            self._scroll_up(arg())
        elif final == "T":
            self._scroll_down(arg())
        elif final == "r":
            self.top, self.bottom = arg(0) - 1, arg(1, self.rows) - 1
            self.y = self.x = 0
        elif final == "b":
            for _ in range(arg()):
                self._put(self.last)
        elif final in "hl":
            on = final == "h"
            if prefix == "?" and 1049 in nums:
                if on:
                    self.main = self.grid
                    self.grid = self._blank_grid()
                elif self.main is not None:
                    self.grid, self.main = self.main, None
            elif prefix == "" and 4 in nums:
                self.insert = on
        # m (colours), t, p, n...: nothing to show


class Terminal:
    """The master side of a pty, read into a :class:`Screen`."""

    def __init__(
        self, fd: int, rows: int, cols: int, child: subprocess.Popen[bytes], stderr: Path
    ) -> None:
        self.fd = fd
        self.screen = Screen(rows, cols)
        self.child = child
        self.stderr = stderr

    def pump(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                return
            try:
                data = os.read(self.fd, 65536)
            except OSError:  # the child closed the terminal
                return
            if not data:
                return
            self.screen.feed(data)

    def send(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def wait_for(self, *patterns: str, timeout: float = 15.0) -> str:
        """Until every regex in ``patterns`` is on the screen; fails with the screen if not."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen.text()
            if all(re.search(p, text, re.MULTILINE) for p in patterns):
                return text
            exited = self.child.poll() is not None
            if exited or time.monotonic() > deadline:
                if exited:  # what it wrote last, then no more waiting
                    self.pump(0.2)
                    text = self.screen.text()
                    if all(re.search(p, text, re.MULTILINE) for p in patterns):
                        return text
                missing = [p for p in patterns if not re.search(p, text, re.MULTILINE)]
                raise AssertionError(
                    f"not on the screen: {missing}\n--- screen ---\n{text}\n"
                    f"--- exit status {self.child.poll()}, stderr ---\n"
                    f"{self.stderr.read_text(errors='replace')}"
                )
            self.pump(0.05)


CHILD = """
import sys
from plantangenet import Plantangenet
from plantangenet.explore import run
with Plantangenet.open() as pg:  # NATS_URL and PLANTANGENET_* from the environment
    status = run(pg, sys.argv[1])
print("explorer exited with", status)
sys.exit(status)
"""

ROWS, COLS = 40, 140


def test_explore_end_to_end_in_a_pseudo_terminal(
    runtime: Plantangenet,
    nats_server: EmbeddedNats,
    journal_config: JournalConfig,
    tmp_path: Path,
) -> None:
    session = runtime.session("seen")
    session.start({"purpose": "e2e"})
    session.attach("bot-1", kind="bot", name="Bot One")
    session.add_cursor("bot-1", "c1", ["ocean.temp"], 0, 10)
    session.move_cursor("bot-1", "c1", ["ocean.temp"], 5, 15)
    assert [e.sequence for e in runtime.history("seen")] == [1, 2, 3, 4]

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
    env = {
        **os.environ,
        "TERM": "xterm",
        "LINES": str(ROWS),
        "COLUMNS": str(COLS),
        "NATS_URL": nats_server.url,
        "PLANTANGENET_STREAM": journal_config.stream,
        "PLANTANGENET_SUBJECT_PREFIX": journal_config.subject_prefix,
    }
    stderr_path = tmp_path / "stderr"
    with stderr_path.open("wb") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, "seen"],
            stdin=slave,
            stdout=slave,
            stderr=stderr,
            env=env,
            cwd=Path(__file__).resolve().parent.parent,
            start_new_session=True,
        )
    os.close(slave)
    term = Terminal(master, ROWS, COLS, child, stderr_path)
    try:
        term.wait_for(
            r"plantangenet explore  seen  \(4 events\)",
            r"\| seq 1  SessionStarted  by \(owner\)",
            r'\|\s+purpose = "e2e"$',
            r'\+ metadata\.purpose = "e2e"',
            r"event 1/4 \| seq 1 \| follow off \| live",
            r"^\s+4  \d\d-\d\d \d\d:\d\d:\d\d  CursorMoved",
        )
        term.send(b"n")
        term.wait_for(
            r"\| seq 2  AgentAttached",
            r'\+ agents\.bot-1 = bot "Bot One" \(attached at seq 2\)',
            r"agents \(1\):",
            r"cursors \(0\):",
            r"event 2/4 \| seq 2",
        )
        term.send(b"\x1bOC")  # Right arrow (keypad transmit mode)
        term.wait_for(
            r"\| seq 3  CursorAdded",
            r"\+ cursors\.c1 = bot-1 ocean\.temp \[0, 10\]",
            r"cursors \(1\):",
            r"event 3/4 \| seq 3",
        )
        term.send(b"p")
        text = term.wait_for(r"\| seq 2  AgentAttached", r"cursors \(0\):", r"event 2/4")
        assert "CursorAdded  by" not in text
        assert re.search(r"^>\s+2  .*AgentAttached", text, re.MULTILINE)  # the selected row

        term.send(b"f")
        term.wait_for(r"^filter \(types, agent:ID; empty clears\) \[\(none\)\]:")
        term.send(b"cursormoved\r")  # nothing matches before seq 2: to the next match
        term.wait_for(
            r"\| seq 4  CursorMoved", r"event 4/4 \| seq 4 \| filter CursorMoved: 1 match"
        )
        text = term.wait_for(r"^>\s+4  ")
        assert not re.search(r"^\s+[123]  ", text, re.MULTILINE)  # only matching rows listed
        term.send(b"f")
        term.wait_for(r"^filter .* \[CursorMoved\]:")
        term.send(b"\r")  # empty: no filter
        term.wait_for(r"event 4/4 \| seq 4 \| follow off", r"^\s+1  .*SessionStarted")
        term.send(b"g")
        term.wait_for(r"^jump to sequence or ISO time:")
        term.send(b"1\r")
        term.wait_for(r"\| seq 1  SessionStarted", r"event 1/4 \| seq 1")

        term.send(b"F")  # follow: to the end, then along with live events
        term.wait_for(
            r"\| seq 4  CursorMoved",
            r"~ cursors\.c1: bot-1 ocean\.temp \[0, 10\] -> bot-1 ocean\.temp \[5, 15\]",
            r"FOLLOW",
        )
        session.move_cursor("bot-1", "c1", ["ocean.temp"], 7, 17)
        term.wait_for(
            r"\(5 events\)",
            r"\| seq 5  CursorMoved",
            r"\[5, 15\] -> bot-1 ocean\.temp \[7, 17\]",
            r"event 5/5 \| seq 5 \| FOLLOW \| live",
        )

        term.send(b"q")
        term.wait_for(r"explorer exited with 0")
        assert child.wait(timeout=10) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.close(master)
