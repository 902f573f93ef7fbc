"""Property: the structure-sharing fold is a pure fold, like the copying one it replaced.

A fold that shares structure between states could leak a later update into an earlier
state (the bug a copying fold cannot have). For random command sequences (the same
strategy as the replay properties), every intermediate state is snapshotted as plain data
when it is made and again after the whole sequence is folded: they must be equal, and
folding the same events again from scratch must give equal states at every step.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from hypothesis import given, settings, target
from hypothesis import strategies as st

from plantangenet import (
    AddCursor,
    AttachAgent,
    Command,
    CommandRejected,
    Envelope,
    QueryCursor,
    SessionState,
    StartSession,
    decide,
    evolve,
    fold,
)
from plantangenet.events import (
    AgentAttached,
    AgentDetached,
    CursorAdded,
    CursorMoved,
    CursorRemoved,
    Event,
    RoleGranted,
)
from plantangenet.events.envelope import new_id
from plantangenet.projections.views import plain
from tests.test_replay_property import COMMANDS

AT = datetime(2026, 1, 1, tzinfo=UTC)


def snapshot(state: SessionState) -> object:
    """The state as plain data: nothing shared with the state itself."""
    return plain(state)


@settings(max_examples=150, deadline=None)
@given(commands=st.lists(COMMANDS, min_size=1, max_size=40), owner_form=st.booleans())
def test_earlier_states_never_change_and_a_refold_is_equal(
    commands: list[Command], owner_form: bool
) -> None:
    state = SessionState("shared")
    states: list[SessionState] = [state]
    taken: list[object] = [snapshot(state)]
    envelopes: list[Envelope] = []
    prefix: list[Command] = [StartSession(metadata={})]
    prefix += [AttachAgent(agent_id=a, kind="bot") for a in "abc"]
    prefix += [AddCursor(agent_id=a, cursor_id="c1", axes=("x",), start=0, end=1) for a in "abc"]
    for command in [*prefix, *commands]:
        if isinstance(command, QueryCursor):
            continue  # needs a compositor, in the actor: not a fold
        if not isinstance(command, StartSession) and owner_form:
            command = dataclasses.replace(command, issued_by=None)  # most pass the policy
        try:
            events = decide(state, command, now=AT)
        except CommandRejected:
            continue
        for event in events:
            envelope = Envelope(
                event, "shared", new_id(), "c", "r", AT, command.issued_by, len(envelopes) + 1
            )
            envelopes.append(envelope)
            state = evolve(state, envelope)
            states.append(state)
            taken.append(snapshot(state))
    target(float(len(envelopes)))  # steer towards long folds
    # Nothing folded later reached into an earlier state.
    assert [snapshot(s) for s in states] == taken
    # The same events folded again from nothing give equal states, step by step.
    again = SessionState("shared")
    for envelope, expected in zip(envelopes, states[1:], strict=True):
        again = evolve(again, envelope)
        assert again == expected


# -- fold: runs of cursor moves at once, equal to evolve one by one ------------------------

_AGENTS = st.sampled_from("abc")
_CURSORS = st.sampled_from(["c1", "c2", "c3"])
_SPAN = st.floats(min_value=0, max_value=100, allow_nan=False)
_CURSOR_EVENTS = st.one_of(
    st.builds(CursorMoved, _AGENTS, _CURSORS, st.just(("x",)), _SPAN, _SPAN),
    st.builds(CursorAdded, _AGENTS, _CURSORS, st.just(("y",)), _SPAN, _SPAN),
)
#: Mostly cursor moves (long runs), among events that end a run: a new owner, a cursor
#: removed, an agent leaving (its cursors with it), a role.
_EVENTS = st.one_of(
    _CURSOR_EVENTS,
    _CURSOR_EVENTS,
    _CURSOR_EVENTS,
    st.builds(CursorRemoved, _AGENTS, _CURSORS),
    st.builds(AgentAttached, _AGENTS, st.just("bot"), st.just("")),
    st.builds(AgentDetached, _AGENTS, st.just("gone")),
    st.builds(RoleGranted, _AGENTS, st.sampled_from(["r", "s"])),
)


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(st.tuples(_EVENTS, st.booleans()), max_size=60),
    cut=st.integers(min_value=0, max_value=60),
)
def test_fold_equals_evolve_one_by_one(events: list[tuple[Event, bool]], cut: int) -> None:
    # Some envelopes carry no sequence (folded before the log numbered them).
    envelopes = [
        Envelope(event, "runs", new_id(), "c", "r", AT, None, (n + 1) * 2 if numbered else None)
        for n, (event, numbered) in enumerate(events)
    ]
    expected = SessionState("runs")
    for envelope in envelopes:
        expected = evolve(expected, envelope)
    folded = fold("runs", envelopes)
    in_two = fold("runs", envelopes[cut:], fold("runs", envelopes[:cut]))
    for state in (folded, in_two):
        assert state == expected
        assert snapshot(state) == snapshot(expected)
        for agent in "abc":  # the cursors-by-owner cache the fold carries along
            assert state.cursors_of(agent) == expected.cursors_of(agent)
        # A later event folds onto it as onto the state evolve made.
        later = Envelope(AgentDetached("a", "x"), "runs", new_id(), "c", "r", AT, None, 999)
        assert evolve(state, later) == evolve(expected, later)
