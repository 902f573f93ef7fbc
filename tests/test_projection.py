"""Tests of the session projection: ``evolve`` and ``fold``, pure (no NATS).

The property at the end drives ``decide`` and ``evolve`` with random command
sequences, then checks that re-folding the produced envelopes from scratch
(and through the codec) gives the very same states.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plantangenet.commands import (
    AddCursor,
    AttachAgent,
    ChangeMetadata,
    ChangePolicy,
    Command,
    DetachAgent,
    EndSession,
    MoveCursor,
    RemoveCursor,
    StartSession,
)
from plantangenet.decide import decide
from plantangenet.errors import CommandRejected
from plantangenet.events import (
    CODEC,
    AgentAttached,
    AgentDetached,
    CursorAdded,
    CursorMoved,
    CursorRemoved,
    Envelope,
    Event,
    PolicyChanged,
    SessionEnded,
    SessionMetadataChanged,
    SessionStarted,
)
from plantangenet.projections.session import (
    AgentView,
    CursorView,
    PolicyView,
    SessionState,
    evolve,
    fold,
)

SID = "s1"
AT = datetime(2024, 1, 1, tzinfo=UTC)


def env(event: Event, sequence: int | None) -> Envelope:
    return Envelope(
        event=event,
        session_id=SID,
        event_id=f"e{sequence}",
        causation_id="cmd",
        correlation_id="cmd",
        occurred_at=AT,
        sequence=sequence,
    )


LOG: list[Envelope] = [
    env(SessionStarted(SID, {"title": "t", "n": 1}), 3),
    env(AgentAttached("a1", "bot", "One"), 5),
    env(AgentAttached("a2", "client", "Two"), 6),
    env(CursorAdded("a1", "c1", ("x",), 0.0, 1.0), 9),
    env(CursorAdded("a2", "c2", ("y", "z"), -1.0, 1.0), 10),
    env(CursorMoved("a1", "c1", ("x", "t"), 2.0, 4.0), 11),
    env(SessionMetadataChanged({"n": 2, "flag": True}, ("title",)), 12),
    env(PolicyChanged("p1", ("r1",)), 13),
    env(PolicyChanged("p2", ("r2", "r3")), 14),
    env(AgentAttached("a3", "bridge", ""), 15),
    env(CursorAdded("a3", "c3", ("x",), 0.0, 0.0), 16),
    env(CursorRemoved("a3", "c3"), 17),
    env(CursorRemoved("a2", "c2"), 18),
    env(AgentDetached("a2", "bye"), 19),
]


def test_fold_of_a_hand_made_log() -> None:
    state = fold(SID, LOG)
    assert state.session_id == SID
    assert state.status == "active"
    assert state.metadata == {"n": 2, "flag": True}
    assert state.agents == {
        "a1": AgentView("a1", "bot", "One", 5),
        "a3": AgentView("a3", "bridge", "", 15),
    }
    assert state.cursors == {"c1": CursorView("c1", "a1", ("x", "t"), 2.0, 4.0)}
    assert state.policy == PolicyView("p2", ("r2", "r3"), 2)
    assert state.sequence == 19
    assert state.event_count == len(LOG)
    assert state.end_reason is None
    assert state.cursors_of("a1") == (CursorView("c1", "a1", ("x", "t"), 2.0, 4.0),)
    assert state.cursors_of("a3") == ()


def test_fold_to_the_end() -> None:
    ended = fold(
        SID,
        [
            env(CursorRemoved("a1", "c1"), 20),
            env(AgentDetached("a1", "x"), 21),
            env(AgentDetached("a3", "x"), 22),
            env(SessionEnded("done"), 23),
        ],
        fold(SID, LOG),
    )
    assert ended.status == "ended"
    assert ended.end_reason == "done"
    assert ended.agents == {}
    assert ended.cursors == {}
    assert ended.sequence == 23
    assert ended.event_count == len(LOG) + 4
    assert ended.policy == PolicyView("p2", ("r2", "r3"), 2)


def test_initial_state() -> None:
    state = fold(SID, [])
    assert state == SessionState(SID)
    assert (state.status, state.sequence, state.event_count) == ("new", 0, 0)
    assert state.policy is None
    for mapping in (state.metadata, state.agents, state.cursors):
        assert mapping == {}
        with pytest.raises(TypeError):
            mapping["x"] = 1  # type: ignore[index]


def test_fold_continues_from_a_given_state() -> None:
    for k in range(len(LOG) + 1):
        assert fold(SID, LOG[k:], fold(SID, LOG[:k])) == fold(SID, LOG)


def test_lenient_folding_of_events_decide_never_emits() -> None:
    state = fold(SID, LOG[:3])
    # Unknown cursors and agents are ignored rather than failing a replay.
    after = fold(
        SID,
        [env(CursorRemoved("a9", "c9"), 30), env(AgentDetached("a9", "?"), 31)],
        state,
    )
    assert after.agents == state.agents
    assert after.cursors == state.cursors
    assert after.event_count == state.event_count + 2
    # A detach without the CursorRemoved events still drops the agent's cursors.
    detached = fold(SID, [env(AgentDetached("a1", "gone"), 40)], fold(SID, LOG))
    assert "a1" not in detached.agents
    assert detached.cursors == {}


def test_an_envelope_without_sequence_keeps_the_last_one() -> None:
    state = fold(SID, LOG[:2])
    after = evolve(state, env(AgentAttached("a9", "bot", ""), None))
    assert after.sequence == state.sequence == 5
    assert after.event_count == 3
    assert after.agents["a9"].attached_at == 5


def _snapshot(state: SessionState) -> dict[str, Any]:
    """A deep, independent copy of everything in ``state``."""
    return {
        f.name: (
            dict(value) if isinstance(value := getattr(state, f.name), MappingProxyType) else value
        )
        for f in dataclasses.fields(state)
    }


EVERY_EVENT: list[Event] = [
    SessionStarted(SID, {"fresh": 1}),
    SessionMetadataChanged({"n": 3}, ("flag", "nothing")),
    AgentAttached("a4", "bot", "Four"),
    AgentAttached("a1", "bot", "Again"),
    AgentDetached("a1", "bye"),
    CursorAdded("a1", "c4", ("x",), 0.0, 1.0),
    CursorMoved("a1", "c1", ("y",), 5.0, 6.0),
    CursorRemoved("a1", "c1"),
    PolicyChanged("p3", ()),
    SessionEnded("stop"),
]


@pytest.mark.parametrize("event", EVERY_EVENT, ids=lambda e: type(e).__name__)
def test_evolve_never_mutates_its_input(event: Event) -> None:
    state = fold(SID, LOG)
    before = _snapshot(state)
    after = evolve(state, env(event, 100))
    assert _snapshot(state) == before
    assert after is not state
    assert after.sequence == 100
    assert after.event_count == state.event_count + 1
    for s in (state, after):
        for mapping in (s.metadata, s.agents, s.cursors):
            assert isinstance(mapping, MappingProxyType)
            with pytest.raises(TypeError):
                mapping["new"] = 1  # type: ignore[index]
            with pytest.raises(TypeError):
                del mapping["a1"]  # type: ignore[attr-defined]


def test_state_does_not_alias_mutable_event_mappings() -> None:
    metadata: dict[str, Any] = {"k": 1}
    changed: dict[str, Any] = {"j": 2}
    state = fold(SID, [env(SessionStarted(SID, metadata), 1)])
    state = evolve(state, env(SessionMetadataChanged(changed), 2))
    metadata["k"] = 99
    changed["j"] = 99
    metadata["extra"] = 0
    assert state.metadata == {"k": 1, "j": 2}


def test_every_event_type_is_folded() -> None:
    # Each event in EVERY_EVENT changes something beyond the counters.
    base = fold(SID, LOG)
    ignore = {"sequence", "event_count"}
    for event in EVERY_EVENT:
        after = evolve(base, env(event, 100))
        changed = {
            f.name
            for f in dataclasses.fields(base)
            if f.name not in ignore and getattr(after, f.name) != getattr(base, f.name)
        }
        assert changed, event


# -- the property: decide + evolve == fold of what was produced -------------

AGENTS = st.sampled_from(["a1", "a2", "a3"])
CURSORS = st.sampled_from(["c1", "c2", "c3"])
KEYS = st.sampled_from(["k1", "k2", "k3"])
VALUES = st.none() | st.booleans() | st.integers(-5, 5) | st.sampled_from(["", "v", "w"])
LOW = st.integers(-3, 3)
# Mostly ordered ranges, sometimes reversed (rejected by decide).
RANGES = st.tuples(LOW, st.integers(-1, 4)).map(lambda t: (float(t[0]), float(t[0] + t[1])))
AXES = st.lists(st.sampled_from(["x", "y", "ocean.temp"]), min_size=1, max_size=3, unique=True).map(
    tuple
)
ISSUERS = st.none() | AGENTS


def _cursor_command(cls: type[AddCursor] | type[MoveCursor]) -> st.SearchStrategy[Command]:
    return st.builds(
        lambda agent_id, cursor_id, axes, bounds, issued_by: cls(
            agent_id=agent_id,
            cursor_id=cursor_id,
            axes=axes,
            start=bounds[0],
            end=bounds[1],
            issued_by=issued_by,
        ),
        AGENTS,
        CURSORS,
        AXES,
        RANGES,
        ISSUERS,
    )


ATTACH = st.builds(AttachAgent, agent_id=AGENTS, kind=st.sampled_from(["bot", "client"]))
COMMANDS: st.SearchStrategy[Command] = st.one_of(
    ATTACH,
    _cursor_command(AddCursor),
    _cursor_command(MoveCursor),
    ATTACH,
    _cursor_command(AddCursor),
    st.builds(RemoveCursor, agent_id=AGENTS, cursor_id=CURSORS),
    st.builds(DetachAgent, agent_id=AGENTS),
    st.builds(
        ChangeMetadata,
        changed=st.dictionaries(KEYS, VALUES, max_size=2),
        removed=st.lists(KEYS, max_size=2).map(tuple),
    ),
    st.builds(
        ChangePolicy,
        policy_id=st.sampled_from(["p1", "p2"]),
        rules=st.lists(st.sampled_from(["r1", "r2"]), max_size=2).map(tuple),
    ),
    st.builds(StartSession, metadata=st.dictionaries(KEYS, VALUES, max_size=2)),
)
# Usually the session is started first; EndSession (after which nothing is
# accepted) is inserted at a random place, often after everything else.
PLANS = st.tuples(
    st.sampled_from([[StartSession(metadata={"k1": 1})]] * 4 + [[]]),
    st.lists(COMMANDS, min_size=10, max_size=50),
    st.none() | st.integers(min_value=0, max_value=60),
    st.lists(st.integers(min_value=1, max_value=3), min_size=1, max_size=8),
).map(
    lambda t: (
        t[0]
        + t[1][: t[2]]
        + ([EndSession(reason="fin")] if t[2] is not None else [])
        + t[1][t[2] if t[2] is not None else len(t[1]) :],
        t[3],
    )
)


def _check_invariants(state: SessionState) -> None:
    for cursor_id, cursor in state.cursors.items():
        assert cursor.cursor_id == cursor_id
        assert cursor.agent_id in state.agents
        assert cursor.start <= cursor.end
    for agent_id, agent in state.agents.items():
        assert agent.agent_id == agent_id
        assert agent.attached_at <= state.sequence
    if state.status != "active":
        assert state.agents == {}
        assert state.cursors == {}


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(plan=PLANS)
def test_decide_then_evolve_equals_refolding(plan: tuple[list[Command], list[int]]) -> None:
    commands, gaps = plan
    state = SessionState(SID)
    produced: list[Envelope] = []
    recorded: list[SessionState] = []
    sequence = 0
    accepted = 0
    for command in commands:
        try:
            events = decide(state, command)
        except CommandRejected:
            continue
        accepted += 1
        assert events
        for event in events:
            sequence += gaps[len(produced) % len(gaps)]  # other sessions share the stream
            envelope = Envelope(
                event=event,
                session_id=SID,
                event_id=f"e{sequence}",
                causation_id=command.command_id,
                correlation_id=command.command_id,
                occurred_at=AT,
                agent_id=command.issued_by,
                sequence=sequence,
            )
            previous = _snapshot(state)
            new_state = evolve(state, envelope)
            assert _snapshot(state) == previous
            state = new_state
            produced.append(envelope)
            recorded.append(state)
            _check_invariants(state)

    assert state.event_count == len(produced)
    assert state.sequence == (produced[-1].sequence if produced else 0)
    assert fold(SID, produced) == state
    assert fold(SID, []) == SessionState(SID)
    for k in range(1, len(produced) + 1):
        assert fold(SID, produced[:k]) == recorded[k - 1]
    # The same history, stored and read back through the codec, folds the same.
    decoded = [CODEC.decode(CODEC.encode(e), sequence=e.sequence) for e in produced]
    assert decoded == produced
    assert fold(SID, decoded) == state
    if accepted and commands and isinstance(commands[0], StartSession):
        assert state.status in ("active", "ended")
