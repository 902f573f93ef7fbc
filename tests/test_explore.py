"""The session explorer's model and commands against a real session's events (the Textual
app itself: tests/test_explorer_app.py)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from plantangenet import AccessRefused, Plantangenet
from plantangenet.domain.policy import Statement
from plantangenet.events.envelope import Envelope
from plantangenet.projections.session import CursorView, SessionState, fold
from plantangenet.timetravel.explore import (
    Change,
    EventFilter,
    Explorer,
    LiveFeed,
    Timeline,
    diff_states,
    parse_jump,
    state_lines,
)
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


def test_explorer_commands_prompts_search_and_status(runtime: Plantangenet) -> None:
    events = build_session(runtime)
    timeline = Timeline(SID, events)
    explorer = Explorer(timeline)
    explorer.step(+1)
    assert timeline.index == 1 and explorer.message == ""
    explorer.step(+2)
    assert timeline.index == 3
    explorer.step(-2)
    assert timeline.index == 1
    explorer.step(-1)
    explorer.step(-1)
    assert timeline.index == 0 and explorer.message == "at the first event"

    explorer.submit("jump", f"#{events[6].sequence}")
    assert timeline.index == 6 and explorer.message == ""
    explorer.submit("jump", "0")
    assert timeline.index == 6 and "no event at or before sequence 0" in explorer.message
    explorer.submit("jump", events[2].occurred_at.isoformat())
    assert timeline.index == 2
    explorer.submit("jump", "later")
    assert timeline.index == 2 and "not a sequence or an ISO time" in explorer.message

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

    # Search: type, agent or payload text, case-insensitive, wrapping around.
    timeline.first()
    explorer.submit("search", "ocean.WAVE")  # only in the payload of bot-2's second cursor
    wave = [i for i, e in enumerate(events) if "ocean.wave" in repr(e.event)]
    assert wave and timeline.index == wave[0] and explorer.message == "'ocean.WAVE': 1 of 1"
    explorer.submit("search", "accessdenied")
    denied = [i for i, e in enumerate(events) if e.type_name == "AccessDenied"]
    assert timeline.index == denied[0]
    explorer.submit("search", "bot-1")
    hits = explorer.hits()
    assert hits == [i for i, e in enumerate(events) if "bot-1" in repr(e.event) + str(e.agent_id)]
    assert len(hits) > 3 and timeline.index == next(i for i in hits if i >= denied[0])
    at = timeline.index
    explorer.search_next(+1)
    assert timeline.index == hits[hits.index(at) + 1]
    explorer.search_next(-1)
    explorer.search_next(-1)
    assert timeline.index == hits[hits.index(at) - 1]
    timeline.select(hits[-1])
    explorer.search_next(+1)
    assert timeline.index == hits[0] and "(wrapped)" in explorer.message
    explorer.submit("search", "no such thing")
    assert timeline.index == hits[0] and explorer.message == "not found: 'no such thing'"

    explorer.toggle_follow()
    assert timeline.follow and timeline.index == len(events) - 1
    assert explorer.message == "following new events" and "FOLLOW" in explorer.status("live")
    explorer.step(+1)
    assert explorer.message == "at the last event (following)"
    explorer.toggle_follow()
    assert not timeline.follow and explorer.message == "not following"
