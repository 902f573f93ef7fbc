"""Table-driven tests of ``decide``: pure, no NATS, no clock.

Each case is a state (new, active, ended), a command, and either the exact
events the command must cause or the exact typed error it must raise.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from plantangenet import commands as commands_module
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
from plantangenet.errors import (
    AgentAlreadyAttached,
    CommandRejected,
    CursorAlreadyExists,
    InvalidCommand,
    SessionAlreadyStarted,
    SessionClosed,
    SessionNotStarted,
    UnknownAgent,
    UnknownCursor,
)
from plantangenet.events import (
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
from plantangenet.projections.session import SessionState, evolve

SID = "s1"
AT = __import__("datetime").datetime(2024, 1, 1, tzinfo=__import__("datetime").UTC)


def apply(state: SessionState, *commands: Command) -> SessionState:
    """``state`` after deciding and evolving each command in turn."""
    for command in commands:
        for event in decide(state, command):
            envelope = Envelope(
                event=event,
                session_id=state.session_id,
                event_id=f"e{state.sequence + 1}",
                causation_id=command.command_id,
                correlation_id=command.command_id,
                occurred_at=AT,
                sequence=state.sequence + 1,
            )
            state = evolve(state, envelope)
    return state


NEW = SessionState(SID)
# a1 owns c0 and c1, a2 owns c2, a3 owns nothing.
ACTIVE = apply(
    NEW,
    StartSession(metadata={"k": "v", "n": 1}),
    AttachAgent(agent_id="a1", kind="bot", name="Bot one"),
    AttachAgent(agent_id="a2", kind="client"),
    AttachAgent(agent_id="a3"),
    AddCursor(agent_id="a1", cursor_id="c1", axes=("x",), start=0.0, end=1.0),
    AddCursor(agent_id="a2", cursor_id="c2", axes=("y",), start=0.0, end=1.0),
    AddCursor(agent_id="a1", cursor_id="c0", axes=("x", "y"), start=-1.0, end=1.0),
)
ENDED = apply(ACTIVE, EndSession(reason="done"))
STATES = {"new": NEW, "active": ACTIVE, "ended": ENDED}


def test_fixture_states() -> None:
    assert NEW.status == "new"
    assert ACTIVE.status == "active"
    assert set(ACTIVE.agents) == {"a1", "a2", "a3"}
    assert {c: v.agent_id for c, v in ACTIVE.cursors.items()} == {
        "c0": "a1",
        "c1": "a1",
        "c2": "a2",
    }
    assert ENDED.status == "ended"
    assert ENDED.agents == {}
    assert ENDED.cursors == {}
    assert ENDED.end_reason == "done"


# One valid-looking instance of every command (valid in ACTIVE).
COMMANDS: dict[str, Command] = {
    "StartSession": StartSession(metadata={"a": 1}),
    "ChangeMetadata": ChangeMetadata(changed={"k": "w"}, removed=("n",)),
    "AttachAgent": AttachAgent(agent_id="a9", kind="bridge", name="Nine"),
    "DetachAgent": DetachAgent(agent_id="a2", reason="bye"),
    "AddCursor": AddCursor(agent_id="a3", cursor_id="c9", axes=("z",), start=1, end=2),
    "MoveCursor": MoveCursor(agent_id="a1", cursor_id="c1", axes=("x", "t"), start=2.0, end=3.0),
    "RemoveCursor": RemoveCursor(agent_id="a2", cursor_id="c2"),
    "ChangePolicy": ChangePolicy(policy_id="p1", rules=("allow all",)),
    "EndSession": EndSession(reason="over"),
}

EXPECTED_IN_ACTIVE: dict[str, list[Event]] = {
    "ChangeMetadata": [SessionMetadataChanged({"k": "w"}, ("n",))],
    "AttachAgent": [AgentAttached("a9", "bridge", "Nine")],
    "DetachAgent": [CursorRemoved("a2", "c2"), AgentDetached("a2", "bye")],
    "AddCursor": [CursorAdded("a3", "c9", ("z",), 1.0, 2.0)],
    "MoveCursor": [CursorMoved("a1", "c1", ("x", "t"), 2.0, 3.0)],
    "RemoveCursor": [CursorRemoved("a2", "c2")],
    "ChangePolicy": [PolicyChanged("p1", ("allow all",))],
    "EndSession": [
        CursorRemoved("a1", "c0"),
        CursorRemoved("a1", "c1"),
        AgentDetached("a1", "session ended"),
        CursorRemoved("a2", "c2"),
        AgentDetached("a2", "session ended"),
        AgentDetached("a3", "session ended"),
        SessionEnded("over"),
    ],
}

Outcome = list[Event] | type[CommandRejected]


def _status_table() -> list[tuple[str, str, Outcome]]:
    table: list[tuple[str, str, Outcome]] = []
    for name in COMMANDS:
        if name == "StartSession":
            table.append(("new", name, [SessionStarted(SID, {"a": 1})]))
            table.append(("active", name, SessionAlreadyStarted))
            table.append(("ended", name, SessionAlreadyStarted))
        else:
            table.append(("new", name, SessionNotStarted))
            table.append(("active", name, EXPECTED_IN_ACTIVE[name]))
            table.append(("ended", name, SessionClosed))
    return table


def check(state: SessionState, command: Command, expected: Outcome) -> None:
    before = state
    if isinstance(expected, list):
        events = decide(state, command)
        assert events == expected
        assert [type(e) for e in events] == [type(e) for e in expected]
    else:
        with pytest.raises(CommandRejected) as excinfo:
            decide(state, command)
        assert type(excinfo.value) is expected, excinfo.value
        assert str(excinfo.value)
    assert state is before and state == before


@pytest.mark.parametrize(("status", "name", "expected"), _status_table())
def test_every_command_in_every_status(status: str, name: str, expected: Outcome) -> None:
    check(STATES[status], COMMANDS[name], expected)


def test_the_table_covers_every_command_class() -> None:
    declared = {
        obj
        for obj in vars(commands_module).values()
        if isinstance(obj, type) and issubclass(obj, Command) and obj is not Command
    }
    assert {type(c) for c in COMMANDS.values()} == declared


CASES: list[tuple[str, Command, Outcome]] = [
    # agents
    ("attach existing", AttachAgent(agent_id="a1"), AgentAlreadyAttached),
    ("attach default kind", AttachAgent(agent_id="b"), [AgentAttached("b", "bot", "")]),
    ("detach unknown", DetachAgent(agent_id="zz"), UnknownAgent),
    ("detach no cursors", DetachAgent(agent_id="a3"), [AgentDetached("a3", "detached")]),
    (
        "detach two cursors",
        DetachAgent(agent_id="a1", reason="gone"),
        [CursorRemoved("a1", "c0"), CursorRemoved("a1", "c1"), AgentDetached("a1", "gone")],
    ),
    # cursors
    (
        "add to unknown agent",
        AddCursor(agent_id="zz", cursor_id="c9", axes=("x",), start=0, end=1),
        UnknownAgent,
    ),
    (
        "add existing own id",
        AddCursor(agent_id="a1", cursor_id="c1", axes=("x",), start=0, end=1),
        CursorAlreadyExists,
    ),
    (
        "add id owned by another agent",
        AddCursor(agent_id="a3", cursor_id="c2", axes=("x",), start=0, end=1),
        CursorAlreadyExists,
    ),
    (
        "add empty range",
        AddCursor(agent_id="a3", cursor_id="c9", axes=("ocean.temp",), start=5, end=5),
        [CursorAdded("a3", "c9", ("ocean.temp",), 5.0, 5.0)],
    ),
    (
        "add axes as a list",
        AddCursor(agent_id="a3", cursor_id="c9", axes=["a_b", "c-d"], start=-1, end=1),  # type: ignore[arg-type]
        [CursorAdded("a3", "c9", ("a_b", "c-d"), -1.0, 1.0)],
    ),
    (
        "move unknown cursor",
        MoveCursor(agent_id="a1", cursor_id="c9", axes=("x",), start=0, end=1),
        UnknownCursor,
    ),
    (
        "move another agent's cursor",
        MoveCursor(agent_id="a1", cursor_id="c2", axes=("x",), start=0, end=1),
        UnknownCursor,
    ),
    (
        "move as unknown agent",
        MoveCursor(agent_id="zz", cursor_id="c2", axes=("x",), start=0, end=1),
        UnknownAgent,
    ),
    ("remove unknown cursor", RemoveCursor(agent_id="a1", cursor_id="c9"), UnknownCursor),
    ("remove another agent's cursor", RemoveCursor(agent_id="a3", cursor_id="c1"), UnknownCursor),
    ("remove as unknown agent", RemoveCursor(agent_id="zz", cursor_id="c1"), UnknownAgent),
    # metadata, policy, end
    ("metadata remove only", ChangeMetadata(removed=("k",)), [SessionMetadataChanged({}, ("k",))]),
    (
        "metadata scalar values",
        ChangeMetadata(changed={"s": "x", "i": -3, "f": 0.5, "b": False, "z": None}),
        [SessionMetadataChanged({"s": "x", "i": -3, "f": 0.5, "b": False, "z": None}, ())],
    ),
    ("policy without rules", ChangePolicy(policy_id="p"), [PolicyChanged("p", ())]),
    (
        "issued by any valid id",
        ChangePolicy(policy_id="p", issued_by="x"),
        [PolicyChanged("p", ())],
    ),
    (
        "longest valid ids",
        AttachAgent(agent_id="a" * 128, kind="k" * 128),
        [AgentAttached("a" * 128, "k" * 128, "")],
    ),
]


@pytest.mark.parametrize(("label", "command", "expected"), CASES, ids=[c[0] for c in CASES])
def test_case_in_active_session(label: str, command: Command, expected: Outcome) -> None:
    check(ACTIVE, command, expected)


def test_end_session_detaches_everyone_in_one_decision() -> None:
    events = decide(ACTIVE, EndSession(reason="over"))
    assert events == EXPECTED_IN_ACTIVE["EndSession"]
    ended = apply(ACTIVE, EndSession(reason="over"))
    assert ended.status == "ended"
    assert ended.agents == {}
    assert ended.cursors == {}
    assert ended.event_count == ACTIVE.event_count + len(events)
    # An empty session ends with just SessionEnded.
    assert decide(apply(NEW, StartSession()), EndSession()) == [SessionEnded("ended")]


def test_start_session_copies_its_metadata() -> None:
    metadata: dict[str, Any] = {"k": 1}
    (event,) = decide(NEW, StartSession(metadata=metadata))
    metadata["k"] = 2
    assert isinstance(event, SessionStarted)
    assert event.metadata == {"k": 1}
    assert event.session_id == SID


# -- invalid commands --------------------------------------------------------

BAD_IDS: list[Any] = [
    ".",
    "a.b",
    "*",
    "a*",
    ">",
    "a>",
    "a b",
    " ",
    "",
    "x" * 129,
    "\u00e9",
    "a\n",
    "a/b",
    None,
    5,
    b"bytes",
    ["a1"],
]


def _bad_id_commands(bad: Any) -> list[tuple[SessionState, Command]]:
    region: dict[str, Any] = {"axes": ("x",), "start": 0.0, "end": 1.0}
    return [
        (ACTIVE, AttachAgent(agent_id=bad)),
        (ACTIVE, AttachAgent(agent_id="b", kind=bad)),
        (ACTIVE, AddCursor(agent_id="a1", cursor_id=bad, **region)),
        (ACTIVE, AddCursor(agent_id=bad, cursor_id="c9", **region)),
        (ACTIVE, MoveCursor(agent_id=bad, cursor_id="c1", **region)),
        (ACTIVE, MoveCursor(agent_id="a1", cursor_id=bad, **region)),
        (ACTIVE, RemoveCursor(agent_id=bad, cursor_id="c1")),
        (ACTIVE, RemoveCursor(agent_id="a1", cursor_id=bad)),
        (ACTIVE, DetachAgent(agent_id=bad)),
        (ACTIVE, ChangePolicy(policy_id=bad)),
        (ACTIVE, ChangePolicy(policy_id="p", issued_by=bad)),
        (NEW, StartSession(issued_by=bad)),
    ]


@pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
def test_bad_ids_are_invalid_commands(bad: Any) -> None:
    commands = _bad_id_commands(bad)
    if bad is None:  # None is a valid issued_by (the owner), and nothing else is
        commands = commands[:-2]
    for state, command in commands:
        with pytest.raises(InvalidCommand) as excinfo:
            decide(state, command)
        assert type(excinfo.value) is InvalidCommand, command


def wrong(value: object) -> Any:
    """``value``, typed as anything: the commands below are deliberately ill-typed."""
    return value


def _cursor(**overrides: Any) -> list[Command]:
    fields: dict[str, Any] = {"axes": ("x",), "start": 0.0, "end": 1.0}
    fields.update(overrides)
    return [
        AddCursor(agent_id="a3", cursor_id="c9", **fields),
        MoveCursor(agent_id="a1", cursor_id="c1", **fields),
    ]


INVALID: list[tuple[str, list[Command]]] = [
    ("start after end", _cursor(start=2.0, end=1.0)),
    ("nan start", _cursor(start=math.nan)),
    ("nan end", _cursor(end=math.nan)),
    ("inf end", _cursor(end=math.inf)),
    ("-inf start", _cursor(start=-math.inf)),
    ("int too big for a float", _cursor(end=10**400)),
    ("bool start", _cursor(start=False)),
    ("string start", _cursor(start="0")),
    ("None end", _cursor(end=None)),
    ("empty axes", _cursor(axes=())),
    ("duplicate axes", _cursor(axes=("x", "y", "x"))),
    ("axes is a string", _cursor(axes="x")),
    ("axes is None", _cursor(axes=None)),
    ("axes is a set", _cursor(axes={"x"})),
    ("axes is a map", _cursor(axes={"x": 1})),
    ("axis not a string", _cursor(axes=("x", 1))),
    ("too many axes", _cursor(axes=tuple(f"a{i}" for i in range(65)))),
    *[
        (f"bad axis {axis!r}", _cursor(axes=(axis,)))
        for axis in ("", ".", "a.", ".a", "a..b", "a b", "a*", "a>", "x" * 257, "\u00e9")
    ],
    ("metadata nested dict", [StartSession(metadata=wrong({"k": {"n": 1}}))]),
    ("metadata list value", [StartSession(metadata=wrong({"k": [1]}))]),
    ("metadata nan", [StartSession(metadata={"k": math.nan})]),
    ("metadata empty key", [StartSession(metadata={"": 1})]),
    ("metadata int key", [StartSession(metadata=wrong({1: 1}))]),
    ("metadata not a map", [StartSession(metadata=wrong([("k", 1)]))]),
    ("changed nested dict", [ChangeMetadata(changed=wrong({"k": {"n": 1}}))]),
    ("changed not a map", [ChangeMetadata(changed=wrong("k"))]),
    ("empty change", [ChangeMetadata()]),
    ("removed is a string", [ChangeMetadata(removed=wrong("k"))]),
    ("removed key not a string", [ChangeMetadata(removed=wrong((1,)))]),
    ("rules is a string", [ChangePolicy(policy_id="p", rules=wrong("allow"))]),
    ("rule not a string", [ChangePolicy(policy_id="p", rules=wrong((1,)))]),
    ("rule too long", [ChangePolicy(policy_id="p", rules=("r" * 1025,))]),
    ("name not a string", [AttachAgent(agent_id="b", name=wrong(1))]),
    ("name too long", [AttachAgent(agent_id="b", name="n" * 1025)]),
    ("detach reason not a string", [DetachAgent(agent_id="a1", reason=wrong(None))]),
    ("end reason too long", [EndSession(reason="r" * 1025)]),
    ("not a known command", [Command()]),
]


@pytest.mark.parametrize(("label", "commands"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_commands(label: str, commands: list[Command]) -> None:
    state = NEW if isinstance(commands[0], StartSession) else ACTIVE
    for command in commands:
        with pytest.raises(InvalidCommand) as excinfo:
            decide(state, command)
        assert type(excinfo.value) is InvalidCommand, command
