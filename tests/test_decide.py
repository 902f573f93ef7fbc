"""Table-driven tests of ``decide``: pure, no NATS, no clock.

Each case is a state (new, active, ended), a command, and either the exact
events the command must cause or the exact typed error it must raise. The
second half covers the trust boundary: the owner (``issued_by=None``) is
always allowed, agents are held to the session's policy (roles, deny over
allow, conditions on time, identity and request context), and every refusal
carries the ``AccessDenied`` event to record.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

import pytest

from plantangenet.domain import commands as commands_module
from plantangenet.domain.authorize import request_of
from plantangenet.domain.commands import (
    AcceptChem,
    AddCursor,
    AddOwner,
    AttachAgent,
    BindAgent,
    BindIdentity,
    ChangeMetadata,
    ChangePolicy,
    Command,
    DepositDust,
    DetachAgent,
    DiscloseChem,
    EndSession,
    GrantDust,
    GrantRole,
    MoveCursor,
    ProposeChem,
    QuarantineMessage,
    QueryChem,
    QueryCursor,
    RefuseChem,
    RegisterCompositor,
    RemoveCursor,
    RemoveOwner,
    RevokeChem,
    RevokeRole,
    SetPrices,
    StartSession,
    SummariseRefusals,
)
from plantangenet.domain.decide import decide, decide_authorized
from plantangenet.domain.disclosure import Disclosure
from plantangenet.domain.policy import Condition, Policy, Statement
from plantangenet.errors import (
    AccessRefused,
    AgentAlreadyAttached,
    CommandRejected,
    CursorAlreadyExists,
    InvalidCommand,
    InvalidPolicy,
    LogDamaged,
    SessionAlreadyStarted,
    SessionClosed,
    SessionNotStarted,
    UnknownAgent,
    UnknownCursor,
)
from plantangenet.events import (
    CODEC,
    OPERATOR,
    AccessDenied,
    AgentAttached,
    AgentDetached,
    Authorization,
    CursorAdded,
    CursorMoved,
    CursorRemoved,
    Envelope,
    Event,
    IdentityBound,
    PolicyChanged,
    RoleGranted,
    RoleRevoked,
    SessionEnded,
    SessionMetadataChanged,
    SessionStarted,
)
from plantangenet.events.chem import (
    ChemAccepted,
    ChemClause,
    ChemProposed,
    ChemQueried,
    ChemRefused,
    ChemRevoked,
)
from plantangenet.events.disclosure import CompositorRegistered
from plantangenet.events.dust import DustCharged, DustDeposited, DustGranted, PricesChanged
from plantangenet.events.trust import (
    AgentBound,
    MessageQuarantined,
    OwnerAdded,
    OwnerRemoved,
    RefusalsSuppressed,
)
from plantangenet.projections.session import (
    IdentityView,
    SessionState,
    evolve,
    with_unreadable,
)

SID = "s1"
AT = datetime(2024, 1, 1, tzinfo=UTC)  # a Monday, at midnight


def apply(state: SessionState, *commands: Command, now: datetime | None = None) -> SessionState:
    """``state`` after deciding and evolving each command in turn."""
    for command in commands:
        for event in decide(state, command, now=now):
            envelope = Envelope(
                event=event,
                session_id=state.session_id,
                event_id=f"e{state.sequence + 1}",
                causation_id=command.command_id,
                correlation_id=command.command_id,
                occurred_at=AT,
                agent_id=command.issued_by,
                sequence=state.sequence + 1,
                principal=command.principal,
            )
            state = evolve(state, envelope)
    return state


def wrong(value: object) -> Any:
    """``value``, typed as anything: the commands below are deliberately ill-typed."""
    return value


def as_agent(command: Command, agent_id: str | None) -> Command:
    """``command`` (same id, same fields) issued on behalf of ``agent_id``."""
    return dataclasses.replace(command, issued_by=agent_id)


WATCHERS = Statement("watchers", "allow", ("cursor.*",), ("axis.*", "cursor.*"), roles=("watcher",))
ADMINS_DOC: dict[str, Any] = {
    "id": "admins",
    "effect": "allow",
    "actions": ["*"],
    "resources": ["*"],
    "roles": ["admin"],
}
ADMINS = Statement("admins", "allow", ("*",), ("*",), roles=("admin",))

NEW = SessionState(SID)
# a1 owns c0 and c1 and is a watcher, a2 owns c2 and is a viewer, a3 owns
# nothing and holds no role. The policy (version 1) lets watchers use cursors.
ACTIVE = apply(
    NEW,
    StartSession(metadata={"k": "v", "n": 1}),
    AttachAgent(agent_id="a1", kind="bot", name="Bot one"),
    AttachAgent(agent_id="a2", kind="client"),
    AttachAgent(agent_id="a3"),
    AddCursor(agent_id="a1", cursor_id="c1", axes=("x",), start=0.0, end=1.0),
    AddCursor(agent_id="a2", cursor_id="c2", axes=("y",), start=0.0, end=1.0),
    AddCursor(agent_id="a1", cursor_id="c0", axes=("x", "y"), start=-1.0, end=1.0),
    ChangePolicy(replace=[WATCHERS]),
    GrantRole(agent_id="a1", role="watcher"),
    GrantRole(agent_id="a2", role="viewer"),
    # Data, dust and chems: a compositor, 100 dust for a1, chem k1 with s2 active
    # (s2 discloses wind, s1 discloses x rounded), chem k2 proposed by s2.
    RegisterCompositor(name="synthetic"),
    DepositDust(account="a1", amount=100),
    ProposeChem(
        chem_id="k1",
        peer="s2",
        proposed_by="s1",
        terms=[
            {"discloser": "s2", "axes": ["wind.*"], "price": 3},
            {"discloser": "s1", "axes": ["x"], "disclosure": {"level": "degraded", "decimals": 0}},
        ],
    ),
    AcceptChem(chem_id="k1", accepted_by="s2"),
    ProposeChem(
        chem_id="k2", peer="s2", proposed_by="s2", terms=[{"discloser": "s2", "axes": ["y"]}]
    ),
    AddOwner(owner="bob@bots"),
)
ENDED = apply(ACTIVE, EndSession(reason="done"))
STATES = {"new": NEW, "active": ACTIVE, "ended": ENDED}


def test_fixture_states() -> None:
    assert NEW.status == "new"
    assert NEW.policy == Policy((), 0)
    assert ACTIVE.status == "active"
    assert set(ACTIVE.agents) == {"a1", "a2", "a3"}
    assert {c: v.agent_id for c, v in ACTIVE.cursors.items()} == {
        "c0": "a1",
        "c1": "a1",
        "c2": "a2",
    }
    assert ACTIVE.policy == Policy((WATCHERS,), 1)
    assert dict(ACTIVE.roles) == {"a1": ("watcher",), "a2": ("viewer",)}
    assert ACTIVE.roles_of("a3") == ()
    assert ACTIVE.identity is None
    assert ENDED.status == "ended"
    assert ENDED.agents == {}
    assert ENDED.cursors == {}
    assert ENDED.roles == {}
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
    "ChangePolicy": ChangePolicy(replace=[ADMINS_DOC]),
    "BindIdentity": BindIdentity(
        identity_id="ops", display_name="Operations", attributes={"tier": "gold"}
    ),
    "GrantRole": GrantRole(agent_id="a3", role="watcher"),
    "RevokeRole": RevokeRole(agent_id="a2", role="viewer"),
    "EndSession": EndSession(reason="over"),
    "RegisterCompositor": RegisterCompositor(name="recorded", description="buoys"),
    "SetPrices": SetPrices(prices={"cursor.query": 2, "cursor.query.full": 5}),
    "DepositDust": DepositDust(account="a3", amount=5, memo="top-up"),
    "GrantDust": GrantDust(source="a1", target="a2", amount=10),
    "ProposeChem": ProposeChem(
        chem_id="k2", peer="s2", proposed_by="s1", terms=[{"discloser": "s1", "axes": ["x"]}]
    ),
    "AcceptChem": AcceptChem(chem_id="k2", accepted_by="s1"),
    "RefuseChem": RefuseChem(chem_id="k2", refused_by="s1", reason="no"),
    "RevokeChem": RevokeChem(chem_id="k1", revoked_by="s1"),
    "QueryChem": QueryChem(chem_id="k1", agent_id="a1", axes=("wind.speed",), start=0, end=1),
    "AddOwner": AddOwner(owner="carol@bots"),
    "RemoveOwner": RemoveOwner(owner="bob@bots"),
    "BindAgent": BindAgent(agent_id="a3", bound_to="carol@bots"),
    "SummariseRefusals": SummariseRefusals(
        refused="m@x", count=3, commands={"MoveCursor": 3}, seconds=1.5
    ),
}
#: Commands that apply only to a damaged log (see test_quarantine_* below).
DAMAGE_COMMANDS: dict[str, Command] = {"QuarantineMessage": QuarantineMessage(sequence=1)}
#: Data queries: decided in steps by the session actor (see test_disclosure.py).
DATA_QUERIES: dict[str, Command] = {
    "QueryCursor": QueryCursor(agent_id="a1", cursor_id="c1", compositor="synthetic"),
    "DiscloseChem": DiscloseChem(
        chem_id="k1", peer="s2", agent_id="b1", axes=("x",), start=0, end=1, compositor="synthetic"
    ),
}

EXPECTED_IN_ACTIVE: dict[str, list[Event]] = {
    "ChangeMetadata": [SessionMetadataChanged({"k": "w"}, ("n",))],
    "AttachAgent": [AgentAttached("a9", "bridge", "Nine", OPERATOR)],
    "DetachAgent": [CursorRemoved("a2", "c2"), AgentDetached("a2", "bye")],
    "AddCursor": [CursorAdded("a3", "c9", ("z",), 1.0, 2.0)],
    "MoveCursor": [CursorMoved("a1", "c1", ("x", "t"), 2.0, 3.0)],
    "RemoveCursor": [CursorRemoved("a2", "c2")],
    "ChangePolicy": [PolicyChanged((ADMINS,), added=("admins",), removed=("watchers",))],
    "BindIdentity": [IdentityBound("ops", "Operations", {"tier": "gold"})],
    "GrantRole": [RoleGranted("a3", "watcher")],
    "RevokeRole": [RoleRevoked("a2", "viewer")],
    "EndSession": [SessionEnded("over", ("a1", "a2", "a3"))],
    "RegisterCompositor": [CompositorRegistered("recorded", "buoys")],
    "SetPrices": [PricesChanged({"cursor.query": 2, "cursor.query.full": 5})],
    "DepositDust": [DustDeposited("a3", 5, "top-up")],
    "GrantDust": [DustGranted("a1", "a2", 10)],
    "ProposeChem": [ChemProposed("k2", "s2", "s1", 2, (ChemClause("s1", ("x",), Disclosure()),))],
    "AcceptChem": [ChemAccepted("k2", "s1", 1)],
    "RefuseChem": [ChemRefused("k2", "s1", "no")],
    "RevokeChem": [ChemRevoked("k1", "s1")],
    "QueryChem": [
        DustCharged("a1", 3, "chem.query", "k1"),
        ChemQueried("k1", "a1", ("wind.speed",), 0.0, 1.0, 3),
    ],
    "AddOwner": [OwnerAdded("carol@bots")],
    "RemoveOwner": [OwnerRemoved("bob@bots")],
    "BindAgent": [AgentBound("a3", "carol@bots")],
    "SummariseRefusals": [RefusalsSuppressed("m@x", 3, {"MoveCursor": 3}, 1.5)],
}

# The action and resources of each command above (the table in plantangenet.domain.authorize).
REQUESTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "StartSession": ("session.start", ("session",)),
    "ChangeMetadata": ("metadata.change", ("metadata.k", "metadata.n")),
    "AttachAgent": ("session.attach", ("agent.a9",)),
    "DetachAgent": ("session.detach", ("agent.a2",)),
    "AddCursor": ("cursor.add", ("axis.z",)),
    "MoveCursor": ("cursor.move", ("axis.x", "axis.t")),
    "RemoveCursor": ("cursor.remove", ("cursor.c2",)),
    "ChangePolicy": ("policy.change", ("policy",)),
    "BindIdentity": ("identity.bind", ("identity",)),
    "GrantRole": ("role.grant", ("role.watcher",)),
    "RevokeRole": ("role.revoke", ("role.viewer",)),
    "EndSession": ("session.end", ("session",)),
    "RegisterCompositor": ("compositor.register", ("compositor.recorded",)),
    "SetPrices": ("dust.price", ("dust.prices",)),
    "DepositDust": ("dust.deposit", ("dust.agent.a3",)),
    "GrantDust": ("dust.grant", ("dust.agent.a1",)),
    "ProposeChem": ("chem.propose", ("chem.k2",)),
    "AcceptChem": ("chem.accept", ("chem.k2",)),
    "RefuseChem": ("chem.refuse", ("chem.k2",)),
    "RevokeChem": ("chem.revoke", ("chem.k1",)),
    "QueryChem": ("chem.query", ("chem.k1",)),
    "AddOwner": ("owner.add", ("owner",)),
    "RemoveOwner": ("owner.remove", ("owner",)),
    "BindAgent": ("agent.bind", ("agent.a3",)),
    "SummariseRefusals": ("log.refusals", ("log",)),
}
IN_SESSION = [name for name in COMMANDS if name != "StartSession"]
#: Owner-form commands of owners: no policy lets an agent send them.
OWNER_ONLY = {"AddOwner", "RemoveOwner", "BindAgent", "SummariseRefusals"}
#: Commands an agent may send if the policy allows it.
BY_POLICY = [name for name in IN_SESSION if name not in OWNER_ONLY]

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


def check(state: SessionState, command: Command, expected: Outcome, **kw: Any) -> None:
    before = state
    if isinstance(expected, list):
        events = decide(state, command, **kw)
        assert events == expected
        assert [type(e) for e in events] == [type(e) for e in expected]
    else:
        with pytest.raises(CommandRejected) as excinfo:
            decide(state, command, **kw)
        assert type(excinfo.value) is expected, excinfo.value
        assert str(excinfo.value)
    assert state is before and state == before


@pytest.mark.parametrize("name", DATA_QUERIES)
def test_data_queries_are_not_decided_alone(name: str) -> None:
    # They need the compositor's answer: the session actor plans, fetches, then discloses.
    with pytest.raises(InvalidCommand, match="compositor"):
        decide(ACTIVE, DATA_QUERIES[name])


@pytest.mark.parametrize(("status", "name", "expected"), _status_table())
def test_every_command_in_every_status(status: str, name: str, expected: Outcome) -> None:
    check(STATES[status], COMMANDS[name], expected)


@pytest.mark.parametrize(("status", "name", "expected"), _status_table())
def test_lifecycle_is_checked_before_authorization(
    status: str, name: str, expected: Outcome
) -> None:
    # Issued by an agent that is not even attached: a closed or unstarted
    # session says so, rather than refusing access.
    if status == "active" or isinstance(expected, list):
        return
    check(STATES[status], as_agent(COMMANDS[name], "zz"), expected)


def test_the_tables_cover_every_command_class() -> None:
    declared = {
        obj
        for obj in vars(commands_module).values()
        if isinstance(obj, type) and issubclass(obj, Command) and obj is not Command
    }
    tabled = [*COMMANDS.values(), *DATA_QUERIES.values(), *DAMAGE_COMMANDS.values()]
    assert {type(c) for c in tabled} == declared - {commands_module.DataQuery}
    assert set(REQUESTS) == set(COMMANDS)
    assert set(EXPECTED_IN_ACTIVE) == set(IN_SESSION)


POLICY_ONE = {"id": "one", "effect": "allow", "actions": ["cursor.add"], "resources": ["axis.x"]}
POLICY_TWO = {
    "id": "two",
    "effect": "deny",
    "actions": ["cursor.*", "metadata.change"],
    "resources": ["axis.secret.*"],
    "roles": ["watcher", "viewer"],
    "conditions": [
        {"key": "hour", "op": "in", "value": [1, 2]},
        {"key": "identity.tier", "op": "ne", "value": "gold"},
        {"key": "resolution", "op": "le", "value": 2.5},
        {"key": "flag", "op": "eq", "value": None},
    ],
}
ONE = Statement("one", "allow", ("cursor.add",), ("axis.x",))
TWO = Statement(
    "two",
    "deny",
    ("cursor.*", "metadata.change"),
    ("axis.secret.*",),
    roles=("watcher", "viewer"),
    conditions=(
        Condition("hour", "in", (1, 2)),
        Condition("identity.tier", "ne", "gold"),
        Condition("resolution", "le", 2.5),
        Condition("flag", "eq", None),
    ),
)
WATCHERS_NARROW = dataclasses.replace(WATCHERS, resources=("axis.x",))

CASES: list[tuple[str, Command, Outcome]] = [
    # agents
    ("attach existing", AttachAgent(agent_id="a1"), AgentAlreadyAttached),
    ("attach default kind", AttachAgent(agent_id="b"), [AgentAttached("b", "bot", "", OPERATOR)]),
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
        AddCursor(agent_id="a3", cursor_id="c9", axes=wrong(["a_b", "c-d"]), start=-1, end=1),
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
    # metadata, end
    ("metadata remove only", ChangeMetadata(removed=("k",)), [SessionMetadataChanged({}, ("k",))]),
    (
        "metadata scalar values",
        ChangeMetadata(changed={"s": "x", "i": -3, "f": 0.5, "b": False, "z": None}),
        [SessionMetadataChanged({"s": "x", "i": -3, "f": 0.5, "b": False, "z": None}, ())],
    ),
    (
        "longest valid ids",
        AttachAgent(agent_id="a" * 128, kind="k" * 128),
        [AgentAttached("a" * 128, "k" * 128, "", OPERATOR)],
    ),
    # identity
    ("bind minimal identity", BindIdentity(identity_id="ops"), [IdentityBound("ops", "", {})]),
    (
        "bind identity with scalar attributes",
        BindIdentity(identity_id="u-1", attributes={"s": "x", "i": 3, "f": 0.5, "b": True}),
        [IdentityBound("u-1", "", {"s": "x", "i": 3, "f": 0.5, "b": True})],
    ),
    # roles
    ("grant a second role", GrantRole(agent_id="a1", role="admin"), [RoleGranted("a1", "admin")]),
    (
        "grant a role another agent holds",
        GrantRole(agent_id="a3", role="viewer"),
        [RoleGranted("a3", "viewer")],
    ),
    ("grant a held role", GrantRole(agent_id="a1", role="watcher"), InvalidCommand),
    ("grant to an unknown agent", GrantRole(agent_id="zz", role="watcher"), UnknownAgent),
    ("revoke a role not held", RevokeRole(agent_id="a3", role="viewer"), InvalidCommand),
    ("revoke another agent's role", RevokeRole(agent_id="a1", role="viewer"), InvalidCommand),
    ("revoke from an unknown agent", RevokeRole(agent_id="zz", role="viewer"), UnknownAgent),
    ("longest valid role", GrantRole(agent_id="a3", role="r" * 64), [RoleGranted("a3", "r" * 64)]),
    # policy
    (
        "policy add",
        ChangePolicy(add=[POLICY_ONE]),
        [PolicyChanged((WATCHERS, ONE), added=("one",))],
    ),
    (
        "policy remove",
        ChangePolicy(remove=["watchers"]),
        [PolicyChanged((), removed=("watchers",))],
    ),
    (
        "policy replace with nothing",
        ChangePolicy(replace=[]),
        [PolicyChanged((), removed=("watchers",))],
    ),
    (
        "policy replace with the same statement",
        ChangePolicy(replace=[WATCHERS]),
        [PolicyChanged((WATCHERS,))],
    ),
    (
        "policy replace a statement under the same id",
        ChangePolicy(replace=[WATCHERS_NARROW]),
        [PolicyChanged((WATCHERS_NARROW,), added=("watchers",))],
    ),
    (
        "policy replace, remove and add at once",
        ChangePolicy(replace=[POLICY_ONE, WATCHERS], remove=["one"], add=[POLICY_TWO]),
        [PolicyChanged((WATCHERS, TWO), added=("two",))],
    ),
    (
        "policy documents become statements",
        ChangePolicy(replace=[POLICY_TWO, POLICY_ONE]),
        [PolicyChanged((TWO, ONE), added=("one", "two"), removed=("watchers",))],
    ),
    (
        "policy remove then re-add an id",
        ChangePolicy(remove=["watchers"], add=[WATCHERS_NARROW]),
        [PolicyChanged((WATCHERS_NARROW,), added=("watchers",))],
    ),
    (
        "policy from tuples",
        ChangePolicy(add=({**POLICY_ONE, "actions": ("cursor.add",)},), remove=()),
        [PolicyChanged((WATCHERS, ONE), added=("one",))],
    ),
]


@pytest.mark.parametrize(("label", "command", "expected"), CASES, ids=[c[0] for c in CASES])
def test_case_in_active_session(label: str, command: Command, expected: Outcome) -> None:
    check(ACTIVE, command, expected)


def test_policy_changes_fold_into_versions() -> None:
    state = apply(ACTIVE, ChangePolicy(add=[POLICY_ONE]), ChangePolicy(remove=["watchers"]))
    assert state.policy == Policy((ONE,), 3)
    (event,) = decide(state, ChangePolicy(replace=[WATCHERS, POLICY_TWO]))
    assert event == PolicyChanged((WATCHERS, TWO), added=("two", "watchers"), removed=("one",))
    assert isinstance(event, PolicyChanged)
    assert all(type(s) is Statement for s in event.statements)
    assert all(type(c) is Condition for s in event.statements for c in s.conditions)


def test_end_session_detaches_everyone_in_one_decision() -> None:
    events = decide(ACTIVE, EndSession(reason="over"))
    assert events == EXPECTED_IN_ACTIVE["EndSession"]
    ended = apply(ACTIVE, EndSession(reason="over"))
    assert ended.status == "ended"
    assert ended.agents == {}
    assert ended.cursors == {}
    assert ended.roles == {}
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
        (ACTIVE, BindIdentity(identity_id=bad)),
        (ACTIVE, GrantRole(agent_id=bad, role="watcher")),
        (ACTIVE, RevokeRole(agent_id=bad, role="watcher")),
        (ACTIVE, ChangePolicy(add=[ADMINS_DOC], issued_by=bad)),
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


@pytest.mark.parametrize(
    "bad", ["", "a b", "a.b", "*", "r" * 65, "\u00e9", "a\n", None, 5, ["r"]], ids=repr
)
def test_bad_role_names_are_invalid_commands(bad: Any) -> None:
    for command in (GrantRole(agent_id="a1", role=bad), RevokeRole(agent_id="a1", role=bad)):
        # Checked before authorization: even an unattached agent hears about the role.
        for issuer in (None, "a3", "zz"):
            with pytest.raises(InvalidCommand, match="role"):
                decide(ACTIVE, as_agent(command, issuer))


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
    ("started by an agent", [StartSession(issued_by="a1")]),
    ("changed nested dict", [ChangeMetadata(changed=wrong({"k": {"n": 1}}))]),
    ("changed not a map", [ChangeMetadata(changed=wrong("k"))]),
    ("empty change", [ChangeMetadata()]),
    ("removed is a string", [ChangeMetadata(removed=wrong("k"))]),
    ("removed key not a string", [ChangeMetadata(removed=wrong((1,)))]),
    ("name not a string", [AttachAgent(agent_id="b", name=wrong(1))]),
    ("name too long", [AttachAgent(agent_id="b", name="n" * 1025)]),
    ("detach reason not a string", [DetachAgent(agent_id="a1", reason=wrong(None))]),
    ("end reason too long", [EndSession(reason="r" * 1025)]),
    ("display name not a string", [BindIdentity(identity_id="ops", display_name=wrong(1))]),
    ("display name too long", [BindIdentity(identity_id="ops", display_name="n" * 1025)]),
    ("attributes nested", [BindIdentity(identity_id="ops", attributes=wrong({"k": {"n": 1}}))]),
    ("attributes not a map", [BindIdentity(identity_id="ops", attributes=wrong(["k"]))]),
    ("attributes nan", [BindIdentity(identity_id="ops", attributes={"k": math.nan})]),
    ("context not a map", [AttachAgent(agent_id="b", context=wrong("ctx"))]),
    ("context a list", [EndSession(context=wrong([("k", 1)]))]),
    ("not a known command", [Command()]),
    ("not a command", [wrong(object())]),
]


@pytest.mark.parametrize(("label", "commands"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_commands(label: str, commands: list[Command]) -> None:
    state = NEW if isinstance(commands[0], StartSession) else ACTIVE
    for command in commands:
        with pytest.raises(InvalidCommand) as excinfo:
            decide(state, command)
        assert type(excinfo.value) is InvalidCommand, command


def _statement(**overrides: Any) -> dict[str, Any]:
    return {**POLICY_ONE, **overrides}


def _condition(**overrides: Any) -> dict[str, Any]:
    return _statement(conditions=[{"key": "hour", "op": "ge", "value": 9, **overrides}])


MALFORMED_POLICIES: list[tuple[str, ChangePolicy]] = [
    ("unknown effect", ChangePolicy(add=[_statement(effect="maybe")])),
    ("effect in capitals", ChangePolicy(add=[_statement(effect="ALLOW")])),
    ("missing effect", ChangePolicy(add=[{k: v for k, v in POLICY_ONE.items() if k != "effect"}])),
    ("empty actions", ChangePolicy(add=[_statement(actions=[])])),
    (
        "missing actions",
        ChangePolicy(add=[{k: v for k, v in POLICY_ONE.items() if k != "actions"}]),
    ),
    ("actions a string", ChangePolicy(add=[_statement(actions="cursor.add")])),
    ("empty resources", ChangePolicy(add=[_statement(resources=[])])),
    *[
        (f"bad pattern {pattern!r}", ChangePolicy(add=[_statement(resources=[pattern])]))
        for pattern in ("", "a..b", "a b", ".a", "a.", "axis.x*", "a>", "x" * 257, 5, None)
    ],
    ("bad action pattern", ChangePolicy(add=[_statement(actions=["cursor add"])])),
    ("missing id", ChangePolicy(add=[{k: v for k, v in POLICY_ONE.items() if k != "id"}])),
    ("bad id", ChangePolicy(add=[_statement(id="a.b")])),
    ("unknown field", ChangePolicy(add=[_statement(priority=1)])),
    ("roles a string", ChangePolicy(add=[_statement(roles="admin")])),
    ("bad role", ChangePolicy(add=[_statement(roles=["a b"])])),
    ("conditions a map", ChangePolicy(add=[_statement(conditions={"key": "hour"})])),
    ("condition not a map", ChangePolicy(add=[_statement(conditions=["hour ge 9"])])),
    ("unknown operator", ChangePolicy(add=[_condition(op="between")])),
    ("empty condition key", ChangePolicy(add=[_condition(key="")])),
    ("unknown condition field", ChangePolicy(add=[_condition(unit="h")])),
    ("'in' without a list", ChangePolicy(add=[_condition(op="in", value="9")])),
    ("nested condition value", ChangePolicy(add=[_condition(value={"h": 9})])),
    ("non-finite condition value", ChangePolicy(add=[_condition(value=math.inf)])),
    ("statement not a map", ChangePolicy(add=["allow everything"])),  # type: ignore[list-item]
    (
        "statement object with unknown effect",
        ChangePolicy(add=[dataclasses.replace(ONE, effect=wrong("maybe"))]),
    ),
    ("statement object with no actions", ChangePolicy(add=[dataclasses.replace(ONE, actions=())])),
    ("duplicate ids", ChangePolicy(replace=[POLICY_ONE, POLICY_ONE])),
    ("adding an existing id", ChangePolicy(add=[{**POLICY_ONE, "id": "watchers"}])),
    ("removing an unknown id", ChangePolicy(remove=["nope"])),
    ("removing an id the replacement lacks", ChangePolicy(remove=["watchers"], replace=[])),
    ("remove a string", ChangePolicy(remove=wrong("watchers"))),
    ("replace a string", ChangePolicy(replace=wrong("allow"))),
    ("replace a single statement", ChangePolicy(replace=wrong(POLICY_ONE))),
    ("add None", ChangePolicy(add=wrong(None))),
    ("no change at all", ChangePolicy()),
]


@pytest.mark.parametrize(
    ("label", "command"), MALFORMED_POLICIES, ids=[c[0] for c in MALFORMED_POLICIES]
)
def test_malformed_policy_documents_are_invalid_policy(label: str, command: ChangePolicy) -> None:
    with pytest.raises(InvalidPolicy) as excinfo:
        decide(ACTIVE, command)
    assert type(excinfo.value) is InvalidPolicy
    assert isinstance(excinfo.value, InvalidCommand)
    assert str(excinfo.value)
    # An agent allowed to change the policy gets the same answer.
    admin = apply(ACTIVE, ChangePolicy(add=[ADMINS_DOC]), GrantRole(agent_id="a3", role="admin"))
    with pytest.raises(InvalidPolicy):
        decide(admin, as_agent(command, "a3"))


@pytest.mark.parametrize(
    "command",
    [
        ChangePolicy(remove=wrong([["watchers"]])),
        ChangePolicy(add=[_statement(effect=["allow"])]),
        ChangePolicy(add=[_condition(op=["ge"])]),
    ],
    ids=["unhashable remove id", "unhashable effect", "unhashable operator"],
)
def test_unhashable_policy_values_are_invalid_policy(command: ChangePolicy) -> None:
    with pytest.raises(InvalidPolicy):
        decide(ACTIVE, command)


# -- authorization ----------------------------------------------------------


def _refusal(state: SessionState, command: Command, **kw: Any) -> AccessDenied:
    """The AccessDenied event of a refused command (and nothing else happened)."""
    before = state
    with pytest.raises(AccessRefused) as excinfo:
        decide_authorized(state, command, **kw)
    assert state is before and state == before
    event = excinfo.value.event
    assert type(event) is AccessDenied
    assert excinfo.value.sequence == 0  # not stored yet
    assert event.action in str(excinfo.value)
    assert event.resource in str(excinfo.value)
    assert f"version {event.policy_version}" in str(excinfo.value)
    # The refusal is itself an event for the log.
    envelope = Envelope(event, SID, "e", command.command_id, command.command_id, AT, "x")
    assert CODEC.decode(CODEC.encode(envelope)).event == event
    return event


@pytest.mark.parametrize("name", IN_SESSION)
def test_the_owner_is_always_allowed(name: str) -> None:
    action, resources = REQUESTS[name]
    command = COMMANDS[name]
    assert command.issued_by is None
    authorization, events = decide_authorized(ACTIVE, command)
    assert authorization == Authorization(action, resources, (None,) * len(resources), 1)
    assert events == EXPECTED_IN_ACTIVE[name]
    # Even a policy that denies everything to everyone does not bind the owner.
    locked = apply(
        ACTIVE,
        ChangePolicy(add=[_statement(id="nothing", effect="deny", actions=["*"], resources=["*"])]),
    )
    authorization, _ = decide_authorized(locked, command)
    assert authorization.statements == (None,) * len(resources)
    assert authorization.policy_version == 2


def test_the_owner_starts_the_session() -> None:
    authorization, events = decide_authorized(NEW, StartSession())
    assert authorization == Authorization("session.start", ("session",), (None,), 0)
    assert events == [SessionStarted(SID, {})]


@pytest.mark.parametrize("name", BY_POLICY)
def test_an_attached_agent_without_a_role_is_refused(name: str) -> None:
    action, resources = REQUESTS[name]
    command = as_agent(COMMANDS[name], "a3")
    assert ACTIVE.roles_of("a3") == ()
    event = _refusal(ACTIVE, command)
    assert event == AccessDenied(
        agent_id="a3",
        command=name,
        action=action,
        resource=resources[0],
        statement_id=None,
        reason=event.reason,
        policy_version=1,
    )
    assert "default deny" in event.reason
    assert action in event.reason and resources[0] in event.reason
    with pytest.raises(AccessRefused):
        decide(ACTIVE, command)


@pytest.mark.parametrize("name", BY_POLICY)
def test_an_unattached_agent_is_refused_whatever_the_policy(name: str) -> None:
    action, resources = REQUESTS[name]
    open_to_all = apply(
        ACTIVE,
        ChangePolicy(replace=[_statement(id="all", actions=["*"], resources=["*"])]),
    )
    # Anyone attached may do it ...
    decide(open_to_all, as_agent(COMMANDS[name], "a3"))
    # ... but an agent that is not attached may not.
    event = _refusal(open_to_all, as_agent(COMMANDS[name], "zz"))
    assert event == AccessDenied("zz", name, action, resources[0], None, event.reason, 2)
    assert "not attached" in event.reason


@pytest.mark.parametrize("name", BY_POLICY)
def test_a_statement_for_the_agents_role_lets_exactly_that_command_through(name: str) -> None:
    action, resources = request_of(
        as_agent(COMMANDS[name], "a3")
    )  # + agent.<owner> for others' cursors
    only_this = {
        "id": "only-this",
        "effect": "allow",
        "actions": [action],
        "resources": list(resources),
        "roles": ["helper"],
    }
    state = apply(ACTIVE, ChangePolicy(add=[only_this]), GrantRole(agent_id="a3", role="helper"))
    assert state.policy.version == 2
    command = as_agent(COMMANDS[name], "a3")
    authorization, events = decide_authorized(state, command)
    assert authorization == Authorization(action, resources, ("only-this",) * len(resources), 2)
    # The issuer changes nothing in what the command does.
    assert events == decide(state, COMMANDS[name])
    # The same statement for another role, or another action, lets nothing through.
    for statement in (
        {**only_this, "roles": ["other"]},
        {**only_this, "actions": ["other.action"]},
        {**only_this, "resources": ["other"]},
    ):
        other = apply(
            ACTIVE, ChangePolicy(add=[statement]), GrantRole(agent_id="a3", role="helper")
        )
        event = _refusal(other, command)
        assert (event.statement_id, event.policy_version) == (None, 2)
        assert (event.action, event.resource) == (action, resources[0])


@pytest.mark.parametrize("name", BY_POLICY)
def test_a_wildcard_admin_role_is_allowed_everything(name: str) -> None:
    action, resources = request_of(
        as_agent(COMMANDS[name], "a3")
    )  # + agent.<owner> for others' cursors
    state = apply(ACTIVE, ChangePolicy(add=[ADMINS_DOC]), GrantRole(agent_id="a3", role="admin"))
    authorization, events = decide_authorized(state, as_agent(COMMANDS[name], "a3"))
    assert authorization == Authorization(action, resources, ("admins",) * len(resources), 2)
    assert events == decide(state, COMMANDS[name])


def test_authorization_names_the_allowing_statement_per_resource() -> None:
    ocean = {
        "id": "ocean",
        "effect": "allow",
        "actions": ["cursor.add"],
        "resources": ["axis.ocean.*"],
        "roles": ["watcher"],
    }
    wind = {**ocean, "id": "wind", "actions": ["cursor.*"], "resources": ["axis.wind"]}
    state = apply(ACTIVE, ChangePolicy(replace=[ocean, wind, WATCHERS]))
    command = AddCursor(
        agent_id="a1",
        cursor_id="c7",
        axes=("ocean.temp", "wind", "ocean.salt.deep", "x"),
        start=0,
        end=1,
        issued_by="a1",
    )
    authorization, events = decide_authorized(state, command)
    assert authorization == Authorization(
        "cursor.add",
        ("axis.ocean.temp", "axis.wind", "axis.ocean.salt.deep", "axis.x"),
        ("ocean", "wind", "ocean", "watchers"),  # the first allow, in policy order
        2,
    )
    assert events == [
        CursorAdded("a1", "c7", ("ocean.temp", "wind", "ocean.salt.deep", "x"), 0.0, 1.0)
    ]
    metadata = {
        "id": "meta",
        "effect": "allow",
        "actions": ["metadata.*"],
        "resources": ["metadata.*"],
    }
    public = {**metadata, "id": "public", "resources": ["metadata.public"]}
    state = apply(ACTIVE, ChangePolicy(add=[public, metadata]))
    authorization, _ = decide_authorized(
        state, ChangeMetadata(changed={"public": 1}, removed=("k",), issued_by="a3")
    )
    assert authorization == Authorization(
        "metadata.change", ("metadata.public", "metadata.k"), ("public", "meta"), 2
    )


SECRET = {
    "id": "no-secrets",
    "effect": "deny",
    "actions": ["cursor.*"],
    "resources": ["axis.secret"],
    "roles": ["watcher"],
}


@pytest.mark.parametrize("deny_first", [True, False])
def test_an_explicit_deny_wins_over_any_allow(deny_first: bool) -> None:
    everything = _statement(id="everything", actions=["*"], resources=["*"])
    statements: list[Statement | Mapping[str, Any]] = [SECRET, WATCHERS, everything]
    if not deny_first:
        statements.reverse()
    state = apply(ACTIVE, ChangePolicy(replace=statements))
    command = AddCursor(
        agent_id="a1", cursor_id="c7", axes=("x", "secret"), start=0, end=1, issued_by="a1"
    )
    event = _refusal(state, command)
    assert event == AccessDenied(
        "a1", "AddCursor", "cursor.add", "axis.secret", "no-secrets", event.reason, 2
    )
    assert "no-secrets" in event.reason
    # Another role is not bound by the deny; other axes stay allowed.
    decide(state, dataclasses.replace(command, issued_by="a3"))
    decide(state, dataclasses.replace(command, axes=("x", "y")))
    # A deny naming no role binds every agent.
    state = apply(state, ChangePolicy(add=[{**SECRET, "id": "nobody", "roles": []}]))
    event = _refusal(state, dataclasses.replace(command, issued_by="a3"))
    assert (event.statement_id, event.policy_version) == ("nobody", 3)


def test_roles_come_and_go() -> None:
    command = AddCursor(agent_id="a3", cursor_id="c7", axes=("x",), start=0, end=1, issued_by="a3")
    _refusal(ACTIVE, command)
    granted = apply(ACTIVE, GrantRole(agent_id="a3", role="watcher"))
    authorization, _ = decide_authorized(granted, command)
    assert authorization.statements == ("watchers",)
    revoked = apply(granted, RevokeRole(agent_id="a3", role="watcher"))
    _refusal(revoked, command)
    # Detaching drops the roles: attached again, the agent starts with none.
    again = apply(granted, DetachAgent(agent_id="a3"), AttachAgent(agent_id="a3"))
    assert again.roles_of("a3") == ()
    _refusal(again, command)


def test_an_agent_may_be_allowed_to_grant_roles_but_not_others() -> None:
    grants = {
        "id": "grant-watchers",
        "effect": "allow",
        "actions": ["role.grant", "role.revoke"],
        "resources": ["role.watcher"],
        "roles": ["lead"],
    }
    state = apply(ACTIVE, ChangePolicy(add=[grants]), GrantRole(agent_id="a2", role="lead"))
    authorization, events = decide_authorized(
        state, GrantRole(agent_id="a3", role="watcher", issued_by="a2")
    )
    assert events == [RoleGranted("a3", "watcher")]
    assert authorization.statements == ("grant-watchers",)
    event = _refusal(state, GrantRole(agent_id="a3", role="admin", issued_by="a2"))
    assert (event.action, event.resource) == ("role.grant", "role.admin")
    # Authorized, but the role is already held: the command itself is invalid.
    with pytest.raises(InvalidCommand):
        decide(state, GrantRole(agent_id="a1", role="watcher", issued_by="a2"))


def test_shape_is_checked_before_authorization() -> None:
    bad = [
        AddCursor(agent_id="a3", cursor_id="c9", axes=(), start=0, end=1),
        AddCursor(agent_id="a3", cursor_id="c9", axes=("x",), start=2, end=1),
        MoveCursor(agent_id="a1", cursor_id="c.1", axes=("x",), start=0, end=1),
        RemoveCursor(agent_id="a 1", cursor_id="c1"),
        AttachAgent(agent_id="*"),
        DetachAgent(agent_id=">"),
        ChangeMetadata(changed=wrong({"k": [1]})),
        ChangeMetadata(removed=wrong("k")),
    ]
    for command in bad:
        for issuer in ("a3", "zz"):
            with pytest.raises(InvalidCommand) as excinfo:
                decide(ACTIVE, as_agent(command, issuer))
            assert type(excinfo.value) is InvalidCommand, command


def test_a_session_is_not_started_by_an_agent() -> None:
    with pytest.raises(InvalidCommand) as excinfo:
        decide_authorized(NEW, StartSession(issued_by="a1"))
    assert type(excinfo.value) is InvalidCommand
    with pytest.raises(SessionAlreadyStarted):
        decide(ACTIVE, StartSession(issued_by="a1"))


# -- conditions: time, identity, agent and request context -----------------

OFFICE = {
    "id": "office-hours",
    "effect": "allow",
    "actions": ["cursor.add"],
    "resources": ["axis.*"],
    "roles": ["day"],
    "conditions": [
        {"key": "hour", "op": "ge", "value": 9},
        {"key": "hour", "op": "lt", "value": 17},
    ],
}
DAY = apply(ACTIVE, ChangePolicy(add=[OFFICE]), GrantRole(agent_id="a3", role="day"))
ADD = AddCursor(agent_id="a3", cursor_id="c7", axes=("x",), start=0, end=1, issued_by="a3")


@pytest.mark.parametrize(
    ("now", "allowed"),
    [
        (AT.replace(hour=9), True),
        (AT.replace(hour=12, minute=30), True),
        (AT.replace(hour=16, minute=59, second=59), True),
        (AT.replace(hour=17), False),
        (AT.replace(hour=8, minute=59), False),
        (AT.replace(hour=23), False),
        (None, False),  # no clock given: the epoch, at midnight
    ],
    ids=str,
)
def test_hour_conditions_use_now(now: datetime | None, allowed: bool) -> None:
    if allowed:
        authorization, _ = decide_authorized(DAY, ADD, now=now)
        assert authorization.statements == ("office-hours",)
    else:
        event = _refusal(DAY, ADD, now=now)
        assert (event.statement_id, event.resource) == (None, "axis.x")
    # The owner is not bound by the clock.
    decide(DAY, as_agent(ADD, None), now=now)


def test_weekday_conditions_use_now() -> None:
    weekdays = {
        **OFFICE,
        "id": "weekdays",
        "conditions": [{"key": "weekday", "op": "le", "value": 5}],
    }
    state = apply(ACTIVE, ChangePolicy(add=[weekdays]), GrantRole(agent_id="a3", role="day"))
    for day in range(7):  # 2024-01-01 is a Monday (ISO weekday 1)
        now = AT + timedelta(days=day, hours=12)
        if day < 5:
            decide(state, ADD, now=now)
        else:
            _refusal(state, ADD, now=now)


def _with_identity(**attributes: Any) -> SessionState:
    tiers = {
        "id": "gold",
        "effect": "allow",
        "actions": ["cursor.add"],
        "resources": ["axis.*"],
        "conditions": [
            {"key": "identity.tier", "op": "eq", "value": "gold"},
            {"key": "identity.id", "op": "eq", "value": "ops"},
            {"key": "identity.level", "op": "ge", "value": 3},
        ],
    }
    suspended = {
        "id": "suspended",
        "effect": "deny",
        "actions": ["*"],
        "resources": ["*"],
        "conditions": [{"key": "identity.suspended", "op": "eq", "value": True}],
    }
    return apply(
        ACTIVE,
        ChangePolicy(add=[tiers, suspended]),
        BindIdentity(identity_id="ops", display_name="Ops", attributes=attributes),
    )


def test_identity_attributes_appear_as_identity_keys_in_the_context() -> None:
    gold = _with_identity(tier="gold", level=3, suspended=False)
    assert gold.identity == IdentityView(
        "ops", "Ops", MappingProxyType({"tier": "gold", "level": 3, "suspended": False})
    )
    authorization, _ = decide_authorized(gold, ADD)
    assert authorization.statements == ("gold",)
    for attributes in (
        {"tier": "silver", "level": 3},
        {"tier": "gold", "level": 2},
        {"tier": "gold"},
    ):
        _refusal(_with_identity(**attributes), ADD)
    # Rebinding the identity changes the context.
    rebound = apply(
        gold, BindIdentity(identity_id="guest", attributes={"tier": "gold", "level": 9})
    )
    _refusal(rebound, ADD)  # identity.id is now "guest"
    # Without any identity, identity conditions do not hold.
    no_identity = apply(
        ACTIVE,
        ChangePolicy(
            add=[
                {
                    **OFFICE,
                    "id": "id",
                    "conditions": [{"key": "identity.id", "op": "ne", "value": "x"}],
                }
            ]
        ),
        GrantRole(agent_id="a3", role="day"),
    )
    _refusal(no_identity, ADD)
    # An identity attribute can switch on a deny; a deny on an attribute the identity
    # lacks cannot be evaluated, so it denies too (the policy fails closed).
    event = _refusal(_with_identity(tier="gold", level=3, suspended=True), ADD)
    assert event.statement_id == "suspended"
    event = _refusal(_with_identity(tier="gold", level=3), ADD)
    assert event.statement_id == "suspended"
    assert "cannot be evaluated" in event.reason


def test_agent_attributes_appear_in_the_context() -> None:
    clients = {
        "id": "clients",
        "effect": "allow",
        "actions": ["cursor.add"],
        "resources": ["axis.*"],
        "conditions": [{"key": "agent.kind", "op": "eq", "value": "client"}],
    }
    myself = {
        "id": "myself",
        "effect": "allow",
        "actions": ["cursor.add"],
        "resources": ["axis.*"],
        "conditions": [{"key": "agent.id", "op": "in", "value": ["a3"]}],
    }
    state = apply(ACTIVE, ChangePolicy(replace=[clients]))
    decide(state, as_agent(dataclasses.replace(ADD, agent_id="a2"), "a2"))  # a2 is a client
    _refusal(state, ADD)  # a3 is a bot
    state = apply(ACTIVE, ChangePolicy(replace=[myself]))
    decide(state, ADD)
    _refusal(state, as_agent(dataclasses.replace(ADD, agent_id="a1"), "a1"))


def test_command_context_feeds_conditions_but_cannot_override_the_session() -> None:
    resolution = {
        "id": "coarse",
        "effect": "allow",
        "actions": ["cursor.add"],
        "resources": ["axis.*"],
        "conditions": [{"key": "resolution", "op": "le", "value": 3}],
    }
    state = apply(ACTIVE, ChangePolicy(replace=[resolution]))
    # The command's own resolution is what conditions see; its free context cannot say
    # otherwise, and a cursor at the compositor's own resolution (None) has none to test.
    decide(state, dataclasses.replace(ADD, resolution=2))
    _refusal(state, dataclasses.replace(ADD, resolution=5))
    _refusal(state, dataclasses.replace(ADD, context={"resolution": 2}))
    _refusal(state, dataclasses.replace(ADD, resolution=5, context={"resolution": 2}))
    _refusal(state, ADD)
    # Keys the session sets itself cannot be supplied by the caller.
    night = AT.replace(hour=22)
    _refusal(DAY, dataclasses.replace(ADD, context={"hour": 10}), now=night)
    silver = _with_identity(tier="silver", level=3)
    for context in ({"identity.tier": "gold"}, {"identity.id": "ops", "identity.tier": "gold"}):
        _refusal(silver, dataclasses.replace(ADD, context=context))
    bots = {
        **resolution,
        "id": "bots",
        "conditions": [{"key": "agent.kind", "op": "eq", "value": "client"}],
    }
    state = apply(ACTIVE, ChangePolicy(replace=[bots]))
    _refusal(state, dataclasses.replace(ADD, context={"agent.kind": "client"}))
    _refusal(state, dataclasses.replace(ADD, context={"agent.id": "a2"}))


def test_metadata_keys_are_authorized_whatever_mapping_type_carries_them() -> None:
    # a3 holds no role; the owner's ChangeMetadata takes any Mapping.
    command = ChangeMetadata(changed=MappingProxyType({"owner": "a3"}), issued_by="a3")
    _refusal(ACTIVE, command)


def test_moving_another_agents_cursor_needs_the_action_on_that_agent() -> None:
    bots = {
        "id": "bots",
        "effect": "allow",
        "roles": ["bot"],
        "actions": ["cursor.*"],
        "resources": ["axis.*", "cursor.*"],
    }
    state = apply(
        ACTIVE,
        ChangePolicy(replace=[bots]),
        AttachAgent(agent_id="b1"),
        AttachAgent(agent_id="b2"),
        GrantRole(agent_id="b1", role="bot"),
        GrantRole(agent_id="b2", role="bot"),
        AddCursor(agent_id="b1", cursor_id="own", axes=("x",), start=0, end=1, issued_by="b1"),
    )
    move = MoveCursor(agent_id="b1", cursor_id="own", axes=("x",), start=1, end=2, issued_by="b2")
    refused = _refusal(state, move)
    assert refused.resource == "agent.b1"
    decide(state, dataclasses.replace(move, issued_by="b1"))
    overseers = {**bots, "id": "overseers", "resources": ["axis.*", "agent.*"]}
    allowed = apply(state, ChangePolicy(add=[overseers]))
    decide(allowed, move)


# -- standing: principals, owners and the agents bound to them --------------------------

ALICE = "alice@bot-alice"
MALLORY = "mallory@bot-mallory"


def from_(principal: str, command: Command) -> Command:
    """``command`` (same id, same fields) sent by ``principal``."""
    return dataclasses.replace(command, principal=principal)


#: A session alice started over the wire; she attached her agent "al", the operator
#: attached "op"; a policy lets every agent attach itself and move its cursors.
REMOTE = apply(
    NEW,
    from_(ALICE, StartSession()),
    from_(ALICE, AttachAgent(agent_id="al")),
    AttachAgent(agent_id="op"),
    ChangePolicy(
        replace=[
            {"id": "join", "effect": "allow", "actions": ["session.attach"], "resources": ["*"]},
            {"id": "cursors", "effect": "allow", "actions": ["cursor.*"], "resources": ["*"]},
        ]
    ),
    AddCursor(agent_id="al", cursor_id="c", axes=("x",), start=0, end=1),
)


def test_whoever_starts_a_session_owns_it_and_binds_the_agents_it_attaches() -> None:
    assert REMOTE.owners == (ALICE,)
    assert REMOTE.is_owner(ALICE) and REMOTE.is_owner(OPERATOR)
    assert not REMOTE.is_owner(MALLORY)
    assert REMOTE.agents["al"].principal == ALICE
    assert REMOTE.agents["op"].principal == OPERATOR


@pytest.mark.parametrize(
    "command",
    [
        GrantRole(agent_id="al", role="admin"),
        ChangePolicy(add=[{"id": "all", "effect": "allow", "actions": ["*"], "resources": ["*"]}]),
        DepositDust(account="al", amount=1_000_000),
        EndSession(),
        BindIdentity(identity_id="x"),
        AddOwner(owner=MALLORY),
        BindAgent(agent_id="al", bound_to=MALLORY),
        AttachAgent(agent_id="m2", bound_to=MALLORY),
    ],
    ids=lambda c: type(c).__name__,
)
def test_the_owner_form_of_a_principal_that_owns_nothing_is_refused(command: Command) -> None:
    event = _refusal(REMOTE, from_(MALLORY, command))
    assert event.agent_id is None and event.statement_id is None
    assert "not an owner" in event.reason and MALLORY in event.reason
    decide(REMOTE, from_(ALICE, command))  # the owner may


def test_a_principal_speaks_only_as_the_agents_bound_to_it() -> None:
    move = MoveCursor(agent_id="al", cursor_id="c", axes=("x",), start=1, end=2, issued_by="al")
    decide(REMOTE, from_(ALICE, move))
    decide(REMOTE, move)  # the operator speaks for any agent
    for impostor in (MALLORY, "alice@bot-mallory", "@bot-alice"):
        event = _refusal(REMOTE, from_(impostor, move))
        assert event.agent_id == "al" and "another principal" in event.reason
    # Nor as an agent the operator attached.
    op = dataclasses.replace(move, agent_id="op", issued_by="op", cursor_id="c")
    assert "another principal" in _refusal(REMOTE, from_(ALICE, op)).reason


def test_an_agent_attaches_itself_as_the_policy_allows_and_is_bound_to_its_principal() -> None:
    join = AttachAgent(agent_id="m", issued_by="m", principal=MALLORY)
    authorization, events = decide_authorized(REMOTE, join)
    assert events == [AgentAttached("m", "bot", "", MALLORY)]
    assert authorization.statements == ("join",)
    # Not bound to someone else, and not as another (unattached) agent.
    assert "only owners name" in _refusal(REMOTE, dataclasses.replace(join, bound_to=ALICE)).reason
    other = from_(MALLORY, AttachAgent(agent_id="m", issued_by="n"))
    assert "not attached" in _refusal(REMOTE, other).reason
    # Without a statement that lets a role-less agent attach, nobody joins by itself.
    closed = apply(REMOTE, ChangePolicy(remove=["join"]))
    assert "default deny" in _refusal(closed, join).reason
    # Once attached, the agent is mallory's alone.
    joined = apply(REMOTE, join)
    move = AddCursor(agent_id="m", cursor_id="cm", axes=("x",), start=0, end=1, issued_by="m")
    decide(joined, from_(MALLORY, move))
    assert "another principal" in _refusal(joined, from_(ALICE, move)).reason


def test_owners_name_the_principal_an_agent_is_bound_to_and_rebind_it() -> None:
    state = apply(REMOTE, from_(ALICE, AttachAgent(agent_id="b", bound_to="bob@bots")))
    assert state.agents["b"].principal == "bob@bots"
    state = apply(state, from_(ALICE, BindAgent(agent_id="al", bound_to="bob@bots")))
    move = MoveCursor(agent_id="al", cursor_id="c", axes=("x",), start=1, end=2, issued_by="al")
    decide(state, from_("bob@bots", move))
    assert "another principal" in _refusal(state, from_(ALICE, move)).reason
    with pytest.raises(InvalidCommand, match="already bound"):
        decide(state, from_(ALICE, BindAgent(agent_id="al", bound_to="bob@bots")))


def test_owners_add_and_remove_owners_and_agents_never_do() -> None:
    state = apply(REMOTE, from_(ALICE, AddOwner(owner=MALLORY)))
    assert state.owners == (ALICE, MALLORY)
    decide(state, from_(MALLORY, EndSession()))
    state = apply(state, from_(MALLORY, RemoveOwner(owner=ALICE)))
    assert state.owners == (MALLORY,)
    assert "not an owner" in _refusal(state, from_(ALICE, EndSession())).reason
    with pytest.raises(InvalidCommand, match="not an owner"):
        decide(state, RemoveOwner(owner=ALICE))
    with pytest.raises(InvalidCommand, match="already owns"):
        decide(state, AddOwner(owner=OPERATOR))
    # No policy makes an agent an owner, not even the operator's own agents.
    admin = apply(state, ChangePolicy(add=[ADMINS_DOC]), GrantRole(agent_id="op", role="admin"))
    for command in (AddOwner(owner="x@y"), RemoveOwner(owner=MALLORY)):
        event = _refusal(admin, as_agent(command, "op"))
        assert "owners, not for agents" in event.reason
    # Refusal summaries are the session's own (the operator's): nobody else writes them.
    summary = SummariseRefusals(refused=ALICE, count=1, commands={}, seconds=1.0)
    for sender in (from_(MALLORY, summary), from_(ALICE, summary), as_agent(summary, "op")):
        assert "operator's alone" in _refusal(admin, sender).reason


@pytest.mark.parametrize("principal", ["", "has space", "x" * 257, "tab\there", 7, None])
def test_a_malformed_principal_is_invalid(principal: Any) -> None:
    with pytest.raises(InvalidCommand, match="principal"):
        decide(REMOTE, from_(wrong(principal), EndSession()))


@pytest.mark.parametrize("correlation", ["", "c" * 129, "with space", "x" * 120 * 1024, 5])
def test_a_malformed_or_oversized_correlation_id_is_invalid(correlation: Any) -> None:
    command = dataclasses.replace(EndSession(), correlation_id=wrong(correlation))
    with pytest.raises(InvalidCommand, match="correlation_id"):
        decide(REMOTE, command)
    decide(REMOTE, dataclasses.replace(EndSession(), correlation_id="c" * 128))


def test_the_principal_is_in_the_context_and_the_context_cannot_claim_another() -> None:
    alices = {
        "id": "alices",
        "effect": "allow",
        "actions": ["cursor.*"],
        "resources": ["*"],
        "conditions": [{"key": "principal", "op": "eq", "value": ALICE}],
    }
    state = apply(REMOTE, ChangePolicy(replace=[alices]))
    move = MoveCursor(agent_id="al", cursor_id="c", axes=("x",), start=1, end=2, issued_by="al")
    decide(state, from_(ALICE, move))
    op_move = dataclasses.replace(move, agent_id="op", issued_by="op", cursor_id="c")
    state = apply(state, AddCursor(agent_id="op", cursor_id="c2", axes=("x",), start=0, end=1))
    op_move = dataclasses.replace(op_move, cursor_id="c2", context={"principal": ALICE})
    _refusal(state, op_move)


@pytest.mark.parametrize(
    ("metadata", "match"),
    [
        ({"k" * 257: 1}, "keys"),
        ({"k": "v" * (64 * 1024 + 1)}, "at most 65536"),
    ],
)
def test_metadata_keys_and_values_have_limits(metadata: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidCommand, match=match):
        decide(ACTIVE, ChangeMetadata(changed=metadata))
    with pytest.raises(InvalidCommand, match=match):
        decide(ACTIVE, BindIdentity(identity_id="i", attributes=metadata))


# -- a damaged log: unreadable messages and their quarantine ------------------------------


DAMAGED = with_unreadable(ACTIVE, ACTIVE.sequence + 1, "malformed msgpack")


def test_a_session_with_an_unreadable_message_takes_no_command_but_a_quarantine() -> None:
    sequence = ACTIVE.sequence + 1
    assert DAMAGED.sequence == sequence and dict(DAMAGED.unreadable) == {
        sequence: "malformed msgpack"
    }
    for name, command in COMMANDS.items():
        with pytest.raises(LogDamaged) as excinfo:
            decide(DAMAGED, command)
        assert excinfo.value.sequence == sequence, name
        assert f"plantangenet quarantine {SID} {sequence}" in str(excinfo.value)
    quarantine = QuarantineMessage(sequence=sequence, reason="a reply written into the log")
    events = decide(DAMAGED, quarantine)
    assert events == [
        MessageQuarantined(sequence, "malformed msgpack", "a reply written into the log")
    ]
    healed = apply(DAMAGED, quarantine)
    assert healed.unreadable == {} and healed.quarantined == (sequence,)
    decide(healed, COMMANDS["MoveCursor"])  # commands are taken again


def test_only_the_operator_quarantines_and_only_unreadable_messages() -> None:
    sequence = ACTIVE.sequence + 1
    quarantine = QuarantineMessage(sequence=sequence)
    assert "operator's alone" in _refusal(DAMAGED, from_(ALICE, quarantine)).reason
    assert "owners, not for agents" not in _refusal(DAMAGED, as_agent(quarantine, "a1")).reason
    for bad in (sequence + 1, 1, wrong("1"), wrong(None)):
        with pytest.raises(InvalidCommand, match="not an unreadable message"):
            decide(DAMAGED, QuarantineMessage(sequence=bad))
    with pytest.raises(InvalidCommand, match="unreadable: none"):
        decide(ACTIVE, quarantine)


def test_an_agent_may_always_leave_but_not_remove_another() -> None:
    # ACTIVE's policy lets nobody detach anybody; a3 holds no role.
    events = decide(ACTIVE, DetachAgent(agent_id="a3", issued_by="a3"))
    assert events == [AgentDetached("a3", "detached")]
    event = _refusal(ACTIVE, DetachAgent(agent_id="a2", issued_by="a3"))
    assert event.action == "session.detach" and event.resource == "agent.a2"
    # Standing still holds: another principal does not detach alice's agent for her.
    leave = from_(MALLORY, DetachAgent(agent_id="al", issued_by="al"))
    assert "another principal" in _refusal(REMOTE, leave).reason
    decide(REMOTE, from_(ALICE, DetachAgent(agent_id="al", issued_by="al")))
