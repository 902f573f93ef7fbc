"""Tests of the session projection: ``evolve`` and ``fold``, pure (no NATS).

The property at the end drives ``decide`` and ``evolve`` with random command
sequences (owner and agent-issued, with random roles, policies, identities
and clock), records refusals as ``AccessDenied`` events the way the session
actor does, then checks that re-folding the produced envelopes from scratch
(and through the codec, along the hash chain) gives the very same states.
"""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plantangenet.domain.commands import (
    AddCursor,
    AttachAgent,
    BindIdentity,
    ChangeMetadata,
    ChangePolicy,
    Command,
    DetachAgent,
    EndSession,
    GrantRole,
    MoveCursor,
    RemoveCursor,
    RevokeRole,
    StartSession,
)
from plantangenet.domain.decide import decide_authorized
from plantangenet.domain.policy import Condition, Policy, Statement
from plantangenet.errors import AccessRefused, CommandRejected
from plantangenet.events import (
    CODEC,
    SESSION_EVENTS,
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
    ChemProposed,
    ChemQueried,
    ChemRefused,
    ChemRevoked,
)
from plantangenet.events.disclosure import CompositorRegistered, DisclosureMade
from plantangenet.events.dust import (
    TREASURY,
    ChargeRefused,
    DustCharged,
    DustDeposited,
    DustGranted,
    PricesChanged,
)
from plantangenet.events.trust import (
    AgentBound,
    MessageQuarantined,
    OwnerAdded,
    OwnerRemoved,
    RefusalsSuppressed,
)
from plantangenet.projections.session import (
    AgentView,
    CursorView,
    IdentityView,
    SessionState,
    evolve,
    fold,
    settled,
    with_unreadable,
)
from tests.test_codec import EVENT_STRATEGIES

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


WATCH = Statement("watch", "allow", ("cursor.*",), ("axis.*",), roles=("watcher",))
NO_SECRETS = Statement("no-secrets", "deny", ("cursor.add",), ("axis.secret",))
OFFICE = Statement(
    "office",
    "allow",
    ("metadata.change",),
    ("metadata.*",),
    conditions=(Condition("hour", "ge", 9),),
)

LOG: list[Envelope] = [
    env(SessionStarted(SID, {"title": "t", "n": 1}), 3),
    env(AgentAttached("a1", "bot", "One"), 5),
    env(AgentAttached("a2", "client", "Two"), 6),
    env(CursorAdded("a1", "c1", ("x",), 0.0, 1.0), 9),
    env(CursorAdded("a2", "c2", ("y", "z"), -1.0, 1.0), 10),
    env(CursorMoved("a1", "c1", ("x", "t"), 2.0, 4.0), 11),
    env(SessionMetadataChanged({"n": 2, "flag": True}, ("title",)), 12),
    env(PolicyChanged((WATCH,), added=("watch",)), 13),
    env(
        PolicyChanged((NO_SECRETS, OFFICE), added=("no-secrets", "office"), removed=("watch",)),
        14,
    ),
    env(IdentityBound("ops", "Operations", {"tier": "gold", "level": 3}), 15),
    env(RoleGranted("a1", "watcher"), 16),
    env(RoleGranted("a2", "viewer"), 17),
    env(RoleGranted("a1", "admin"), 18),
    env(AgentAttached("a3", "bridge", ""), 19),
    env(CursorAdded("a3", "c3", ("x",), 0.0, 0.0), 20),
    env(CursorRemoved("a3", "c3"), 21),
    env(
        AccessDenied("a3", "AddCursor", "cursor.add", "axis.secret", "no-secrets", "denied", 2),
        22,
    ),
    env(RoleRevoked("a1", "watcher"), 23),
    env(CursorRemoved("a2", "c2"), 24),
    env(AgentDetached("a2", "bye"), 25),
    env(ChemProposed("k1", "s2", "s2", 1, ()), 26),
]


def test_fold_of_a_hand_made_log() -> None:
    state = fold(SID, LOG)
    assert state.session_id == SID
    assert state.status == "active"
    assert state.metadata == {"n": 2, "flag": True}
    assert state.agents == {
        "a1": AgentView("a1", "bot", "One", 5),
        "a3": AgentView("a3", "bridge", "", 19),
    }
    assert state.cursors == {"c1": CursorView("c1", "a1", ("x", "t"), 2.0, 4.0)}
    assert state.policy == Policy((NO_SECRETS, OFFICE), 2)
    assert state.identity == IdentityView("ops", "Operations", {"tier": "gold", "level": 3})
    assert state.roles == {"a1": ("admin",)}  # a2's role went with a2
    assert state.roles_of("a1") == ("admin",)
    assert state.roles_of("a2") == state.roles_of("a3") == state.roles_of("nobody") == ()
    assert state.sequence == 26
    assert state.event_count == len(LOG)
    assert list(state.chems) == ["k1"] and state.chems["k1"].status == "proposed"
    assert state.end_reason is None
    assert state.cursors_of("a1") == (CursorView("c1", "a1", ("x", "t"), 2.0, 4.0),)
    assert state.cursors_of("a3") == ()


def test_fold_to_the_end() -> None:
    ended = fold(
        SID,
        [
            env(CursorRemoved("a1", "c1"), 30),
            env(AgentDetached("a1", "x"), 31),
            env(AgentDetached("a3", "x"), 32),
            env(SessionEnded("done"), 33),
        ],
        fold(SID, LOG),
    )
    assert ended.status == "ended"
    assert ended.end_reason == "done"
    assert ended.agents == {}
    assert ended.cursors == {}
    assert ended.roles == {}
    assert ended.sequence == 33
    assert ended.event_count == len(LOG) + 4
    # What the session was is kept: its last policy and identity.
    assert ended.policy == Policy((NO_SECRETS, OFFICE), 2)
    assert ended.identity == IdentityView("ops", "Operations", {"tier": "gold", "level": 3})


def test_initial_state() -> None:
    state = fold(SID, [])
    assert state == SessionState(SID)
    assert (state.status, state.sequence, state.event_count) == ("new", 0, 0)
    assert state.policy == Policy() == Policy((), 0)
    assert state.identity is None
    assert state.roles_of("a1") == ()
    for mapping in (state.metadata, state.agents, state.cursors, state.roles):
        assert mapping == {}
        with pytest.raises(TypeError):
            mapping["x"] = 1  # type: ignore[index]


def test_fold_continues_from_a_given_state() -> None:
    for k in range(len(LOG) + 1):
        assert fold(SID, LOG[k:], fold(SID, LOG[:k])) == fold(SID, LOG)


def test_policy_version_counts_policy_changes() -> None:
    changes = [
        PolicyChanged((WATCH,), added=("watch",)),
        PolicyChanged((WATCH,)),  # the same statements again: still a new version
        PolicyChanged((), removed=("watch",)),
        PolicyChanged((OFFICE, NO_SECRETS), added=("no-secrets", "office")),
    ]
    state = SessionState(SID)
    for n, change in enumerate(changes, start=1):
        state = evolve(state, env(change, n))
        assert state.policy == Policy(change.statements, n)
    # Other events leave the policy alone.
    after = fold(SID, [env(AgentAttached("a1", "bot", ""), 9)], state)
    assert after.policy is state.policy
    # The version counts events, not sequences: gaps in the stream do not matter.
    gappy = fold(SID, [env(c, 100 * n) for n, c in enumerate(changes, start=1)])
    assert gappy.policy == state.policy


def test_roles_are_granted_revoked_and_dropped_on_detach() -> None:
    state = fold(SID, LOG[:3])  # a1 and a2 attached
    state = fold(
        SID,
        [
            env(RoleGranted("a1", "watcher"), 10),
            env(RoleGranted("a1", "admin"), 11),
            env(RoleGranted("a2", "watcher"), 12),
        ],
        state,
    )
    assert state.roles == {"a1": ("watcher", "admin"), "a2": ("watcher",)}  # in grant order
    assert isinstance(state.roles["a1"], tuple)
    # Granting a held role again changes nothing but the counters (lenient).
    again = evolve(state, env(RoleGranted("a1", "admin"), 13))
    assert again.roles == state.roles
    assert again.event_count == state.event_count + 1
    # Revoking the last role removes the agent from the mapping.
    state = fold(
        SID, [env(RoleRevoked("a1", "watcher"), 14), env(RoleRevoked("a2", "watcher"), 15)], state
    )
    assert state.roles == {"a1": ("admin",)}
    assert "a2" not in state.roles
    # Revoking a role not held changes nothing.
    assert evolve(state, env(RoleRevoked("a1", "viewer"), 16)).roles == state.roles
    assert evolve(state, env(RoleRevoked("a9", "viewer"), 16)).roles == state.roles
    # Detaching drops the agent's roles; re-attaching starts with none.
    detached = fold(
        SID, [env(AgentDetached("a1", "bye"), 17), env(AgentAttached("a1", "bot", ""), 18)], state
    )
    assert detached.roles == {}
    assert detached.roles_of("a1") == ()
    # Detaching an agent without roles leaves the other agents' roles alone.
    state = evolve(state, env(RoleGranted("a2", "viewer"), 19))
    other = evolve(state, env(AgentDetached("a2", "bye"), 20))
    assert other.roles == {"a1": ("admin",)}


def test_identity_is_bound_and_rebound() -> None:
    attributes: dict[str, Any] = {"tier": "gold"}
    state = fold(SID, [env(IdentityBound("ops", "Ops", attributes), 1)])
    attributes["tier"] = "changed"  # the state does not alias the event's mapping
    assert state.identity == IdentityView("ops", "Ops", {"tier": "gold"})
    assert state.identity is not None
    assert isinstance(state.identity.attributes, MappingProxyType)
    with pytest.raises(TypeError):
        state.identity.attributes["tier"] = "x"  # type: ignore[index]
    rebound = evolve(state, env(IdentityBound("guest", "", {}), 2))
    assert rebound.identity == IdentityView("guest", "", {})
    assert rebound.agents == state.agents and rebound.policy == state.policy


def test_access_denied_changes_nothing_but_the_counters() -> None:
    state = fold(SID, LOG)
    denied = AccessDenied(None, "EndSession", "session.end", "session", None, "no", 2)
    after = evolve(state, env(denied, 50))
    assert after == dataclasses.replace(state, sequence=50, event_count=state.event_count + 1)


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
    assert after.roles == state.roles
    assert after.event_count == state.event_count + 2
    # A detach without the CursorRemoved events still drops the agent's cursors.
    detached = fold(SID, [env(AgentDetached("a1", "gone"), 40)], fold(SID, LOG))
    assert "a1" not in detached.agents
    assert "a1" not in detached.roles
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
    PolicyChanged(()),
    PolicyChanged((NO_SECRETS, OFFICE)),  # the same statements: only the version changes
    IdentityBound("guest", "Guest", {}),
    RoleGranted("a3", "viewer"),
    RoleGranted("a1", "watcher"),
    RoleRevoked("a1", "admin"),
    SessionEnded("stop"),
    CompositorRegistered("synthetic", "test data"),
    PricesChanged({"cursor.query": 2}),
    DustDeposited("a1", 5),
    DustGranted("a1", TREASURY, 2),
    DustCharged("a1", 1, "cursor.query", "c1"),
    ChemProposed("k2", "s3", "s1", 1, ()),
    ChemAccepted("k1", "s1", 1),
    ChemRefused("k1", "s1", "no"),
    ChemRevoked("k1", "s1"),  # lenient: the fold follows even a step decide would refuse
    OwnerAdded("bob@bots"),
    OwnerRemoved("bob@bots"),
    AgentBound("a3", "bob@bots"),
    MessageQuarantined(99, "not msgpack", "forensics"),
]
#: Session events that the session state does not follow (they are audit records).
NOT_FOLDED: set[type[Event]] = {
    AccessDenied,
    DisclosureMade,
    ChargeRefused,
    ChemQueried,
    RefusalsSuppressed,
}


def test_the_event_list_covers_every_session_event() -> None:
    assert {type(e) for e in EVERY_EVENT} | NOT_FOLDED == set(SESSION_EVENTS)


@pytest.mark.parametrize(
    "event",
    [*EVERY_EVENT, AccessDenied("a1", "AddCursor", "cursor.add", "axis.x", None, "no", 2)],
    ids=lambda e: type(e).__name__,
)
def test_evolve_never_mutates_its_input(event: Event) -> None:
    state = fold(SID, LOG)
    before = _snapshot(state)
    after = evolve(state, env(event, 100))
    assert _snapshot(state) == before
    assert after is not state
    assert after.sequence == 100
    assert after.event_count == state.event_count + 1
    for s in (state, after):
        for mapping in (s.metadata, s.agents, s.cursors, s.roles):
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
        start = base
        if isinstance(event, OwnerRemoved):  # an owner to remove
            start = evolve(base, env(OwnerAdded(event.principal), 99))
        if isinstance(event, MessageQuarantined):  # a message to quarantine
            start = with_unreadable(base, event.sequence, event.problem)
        after = evolve(start, env(event, 100))
        changed = {
            f.name
            for f in dataclasses.fields(base)
            if f.name not in ignore and getattr(after, f.name) != getattr(start, f.name)
        }
        assert changed, event


# -- the property: decide + evolve == fold of what was produced -------------

AGENTS = st.sampled_from(["a1", "a2", "a3"])
CURSORS = st.sampled_from(["c1", "c2", "c3"])
KEYS = st.sampled_from(["k1", "k2", "k3"])
ROLES = st.sampled_from(["watcher", "admin", "viewer"])
VALUES = st.none() | st.booleans() | st.integers(-5, 5) | st.sampled_from(["", "v", "w"])
LOW = st.integers(-3, 3)
# Mostly ordered ranges, sometimes reversed (rejected by decide).
RANGES = st.tuples(LOW, st.integers(-1, 4)).map(lambda t: (float(t[0]), float(t[0] + t[1])))
AXES = st.lists(
    st.sampled_from(["x", "y", "ocean.temp", "secret"]), min_size=1, max_size=3, unique=True
).map(tuple)
# Mostly the owner; otherwise an agent (attached or not: a9 never is).
ISSUERS = st.one_of(st.none(), st.none(), st.sampled_from(["a1", "a1", "a2", "a3", "a9"]))
# Statements (objects and documents) that policies are drawn from; one is malformed.
STATEMENTS: list[Statement | dict[str, Any]] = [
    Statement("watch", "allow", ("cursor.*",), ("axis.*", "cursor.*"), roles=("watcher",)),
    Statement("admin", "allow", ("*",), ("*",), roles=("admin",)),
    {"id": "no-secrets", "effect": "deny", "actions": ["cursor.*"], "resources": ["axis.secret"]},
    {
        "id": "office",
        "effect": "allow",
        "actions": ["metadata.change", "session.*"],
        "resources": ["*"],
        "roles": ["viewer"],
        "conditions": [
            {"key": "hour", "op": "ge", "value": 9},
            {"key": "hour", "op": "lt", "value": 17},
        ],
    },
    Statement(
        "gold",
        "allow",
        ("role.*", "identity.bind", "policy.change"),
        ("*",),
        conditions=(Condition("identity.tier", "eq", "v"),),
    ),
    {"id": "broken", "effect": "maybe", "actions": ["*"], "resources": ["*"]},
]


def _id_of(statement: Statement | dict[str, Any]) -> str:
    return statement.id if isinstance(statement, Statement) else str(statement["id"])


STATEMENT_IDS = st.sampled_from(["watch", "admin", "no-secrets", "office", "gold", "nope"])


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


ATTACH = st.builds(
    AttachAgent, agent_id=AGENTS, kind=st.sampled_from(["bot", "client"]), issued_by=ISSUERS
)
GRANT = st.builds(GrantRole, agent_id=AGENTS, role=ROLES, issued_by=ISSUERS)
COMMANDS: st.SearchStrategy[Command] = st.one_of(
    ATTACH,
    _cursor_command(AddCursor),
    _cursor_command(MoveCursor),
    ATTACH,
    _cursor_command(AddCursor),
    st.builds(RemoveCursor, agent_id=AGENTS, cursor_id=CURSORS, issued_by=ISSUERS),
    st.builds(DetachAgent, agent_id=AGENTS, issued_by=ISSUERS),
    st.builds(
        ChangeMetadata,
        changed=st.dictionaries(KEYS, VALUES, max_size=2),
        removed=st.lists(KEYS, max_size=2).map(tuple),
        issued_by=ISSUERS,
    ),
    st.builds(
        ChangePolicy,
        replace=st.none() | st.lists(st.sampled_from(STATEMENTS), max_size=4, unique_by=_id_of),
        add=st.lists(st.sampled_from(STATEMENTS), max_size=1),
        remove=st.lists(STATEMENT_IDS, max_size=2),
        issued_by=ISSUERS,
    ),
    GRANT,
    GRANT,
    st.builds(RevokeRole, agent_id=AGENTS, role=ROLES, issued_by=ISSUERS),
    st.builds(
        BindIdentity,
        identity_id=st.sampled_from(["ops", "guest"]),
        attributes=st.dictionaries(st.sampled_from(["tier", "level"]), VALUES, max_size=2),
        issued_by=ISSUERS,
    ),
    st.builds(StartSession, metadata=st.dictionaries(KEYS, VALUES, max_size=2)),
)
#: A session where agents hold roles under a policy, so agent-issued commands pass too.
SETUP: list[Command] = [
    StartSession(metadata={"k1": 1}),
    AttachAgent(agent_id="a1"),
    AttachAgent(agent_id="a2", kind="client"),
    AttachAgent(agent_id="a3"),
    ChangePolicy(replace=STATEMENTS[:-1]),
    GrantRole(agent_id="a1", role="admin"),
    GrantRole(agent_id="a2", role="watcher"),
    GrantRole(agent_id="a3", role="viewer"),
    BindIdentity(identity_id="ops", attributes={"tier": "v"}),
]
# Usually the session is started first (often set up for agents); EndSession
# (after which nothing is accepted) is inserted at a random place, often after
# everything else.
PLANS = st.tuples(
    st.sampled_from([[StartSession(metadata={"k1": 1})]] * 2 + [SETUP] * 5 + [[]]),
    st.lists(COMMANDS, min_size=10, max_size=50),
    st.none() | st.integers(min_value=0, max_value=60),
    st.lists(st.integers(min_value=1, max_value=3), min_size=1, max_size=8),
    st.lists(st.integers(min_value=0, max_value=23), min_size=1, max_size=8),
).map(
    lambda t: (
        t[0]
        + t[1][: t[2]]
        + ([EndSession(reason="fin", issued_by=None)] if t[2] is not None else [])
        + t[1][t[2] if t[2] is not None else len(t[1]) :],
        t[3],
        t[4],
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
    for agent_id, roles in state.roles.items():
        assert agent_id in state.agents
        assert roles
        assert len(set(roles)) == len(roles)
    if state.status != "active":
        assert state.agents == {}
        assert state.cursors == {}
        assert state.roles == {}


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(plan=PLANS)
def test_decide_then_evolve_equals_refolding(
    plan: tuple[list[Command], list[int], list[int]],
) -> None:
    commands, gaps, hours = plan
    state = SessionState(SID)
    produced: list[Envelope] = []
    payloads: list[bytes] = []
    recorded: list[SessionState] = []
    sequence = 0
    accepted = 0
    previous_hash = b""
    for n, command in enumerate(commands):
        now = AT.replace(hour=hours[n % len(hours)])
        authorization: Authorization | None
        try:
            authorization, events = decide_authorized(state, command, now=now)
        except AccessRefused as refused:  # recorded, as the session actor does
            authorization, events = None, [refused.event]
            assert command.issued_by is not None
            assert refused.event.agent_id == command.issued_by
            assert refused.event.command == type(command).__name__
            assert refused.event.policy_version == state.policy.version
        except CommandRejected:
            continue
        else:
            accepted += 1
            assert authorization.policy_version == state.policy.version
            assert len(authorization.statements) == len(authorization.resources)
            leaving = isinstance(command, DetachAgent) and command.agent_id == command.issued_by
            if command.issued_by is None or leaving:  # no statement: the owner; leaving
                assert set(authorization.statements) <= {None}
            else:
                assert command.issued_by in state.agents
                assert None not in authorization.statements
        assert events
        for event in events:
            sequence += gaps[len(produced) % len(gaps)]  # other sessions share the stream
            envelope = Envelope(
                event=event,
                session_id=SID,
                event_id=f"e{sequence}",
                causation_id=command.command_id,
                correlation_id=command.command_id,
                occurred_at=now,
                agent_id=command.issued_by,
                sequence=sequence,
                previous_hash=previous_hash,
                authorization=authorization,
            )
            authorization = None  # recorded once, on the command's first event
            payload = CODEC.encode(envelope)
            previous_hash = hashlib.sha256(payload).digest()
            previous = _snapshot(state)
            new_state = evolve(state, envelope)
            assert _snapshot(state) == previous
            if isinstance(event, AccessDenied):
                assert _snapshot(new_state) == {
                    **previous,
                    "sequence": sequence,
                    "event_count": state.event_count + 1,
                }
            state = new_state
            produced.append(envelope)
            payloads.append(payload)
            recorded.append(state)
            _check_invariants(state)

    assert state.event_count == len(produced)
    assert state.sequence == (produced[-1].sequence if produced else 0)
    assert state.policy.version == sum(isinstance(e.event, PolicyChanged) for e in produced)
    bound = [e.event for e in produced if isinstance(e.event, IdentityBound)]
    if bound:
        assert state.identity == IdentityView(
            bound[-1].identity_id, bound[-1].display_name, bound[-1].attributes
        )
    else:
        assert state.identity is None
    assert fold(SID, produced) == state
    assert fold(SID, []) == SessionState(SID)
    for k in range(1, len(produced) + 1):
        assert fold(SID, produced[:k]) == recorded[k - 1]
    # The same history, stored and read back through the codec, folds the same
    # and its hash chain links each event to the one before.
    decoded = [
        CODEC.decode(payload, sequence=e.sequence)
        for payload, e in zip(payloads, produced, strict=True)
    ]
    assert decoded == produced
    assert fold(SID, decoded) == state
    for before, after in zip([None, *decoded], decoded, strict=False):
        assert after.previous_hash == (before.digest if before is not None else b"")
    if accepted and commands and isinstance(commands[0], StartSession):
        assert state.status in ("active", "ended")


def test_the_agent_fold_keeps_every_field_and_the_cursor_resolution() -> None:
    from plantangenet.projections.agent import AgentState, evolve_agent

    cursor = CursorView("c0", "a1", ("x",), 0.0, 1.0, 0.5)
    state = AgentState("a1", "bot", "One", True, MappingProxyType({"c0": cursor}), 7)
    after = evolve_agent(state, env(RoleGranted("a1", "watcher"), 9))
    assert dataclasses.replace(after, sequence=7) == state and after.sequence == 9
    after = evolve_agent(after, env(CursorMoved("a1", "c1", ("y",), 2.0, 3.0, 0.25), 10))
    assert after.cursors["c1"] == CursorView("c1", "a1", ("y",), 2.0, 3.0, 0.25)
    assert after.cursors["c0"] == cursor and (after.kind, after.name) == ("bot", "One")
    assert evolve_agent(after, env(RoleGranted("a2", "x"), 11)) is after  # not about a1


@pytest.mark.parametrize("cls", SESSION_EVENTS, ids=lambda c: c.type_name)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_settled_equals_folding_the_stored_event_again(cls: type[Event], data: Any) -> None:
    # The actor reuses the state it decided on (``settled``) instead of folding stored
    # events again. That is only right if a fold reads nothing of the envelope's stream
    # sequence but ``SessionState.sequence`` -- or ``settled`` refuses the event type.
    # A new event whose fold records its own sequence fails here until it is listed.
    base = fold(
        SID,
        [
            env(SessionStarted(SID, {}), 1),
            env(AgentAttached("a", "bot", "A"), 2),
            env(CursorAdded("a", "c1", ("x",), 0.0, 1.0), 3),
        ],
    )
    unstored = env(data.draw(EVENT_STRATEGIES[cls]), None)
    decided = evolve(base, unstored)
    stored = dataclasses.replace(unstored, sequence=base.sequence + 7)
    again = evolve(base, stored)
    reused = settled(base, decided, [stored])
    if reused is None:
        assert cls is AgentAttached  # the one fold that records its envelope's sequence
    else:
        assert reused == again
    assert settled(base, base, [stored]) is None  # decided must be base plus exactly these


def test_a_v1_end_and_a_v2_end_fold_to_the_same_session() -> None:
    # v1 detached everyone with events of their own before SessionEnded; v2 in its one event.
    base = fold(SID, LOG)
    assert base.agents and base.cursors
    v1 = [
        *[CursorRemoved(c.agent_id, cid) for cid, c in sorted(base.cursors.items())],
        *[AgentDetached(a, "session ended") for a in sorted(base.agents)],
        SessionEnded("stop"),
    ]
    v2 = [SessionEnded("stop", tuple(sorted(base.agents)))]
    old = fold(SID, [env(e, 100 + i) for i, e in enumerate(v1)], base)
    new = fold(SID, [env(e, 100) for e in v2], base)
    ignore = {"sequence", "event_count"}
    for f in dataclasses.fields(SessionState):
        if f.name not in ignore:
            assert getattr(old, f.name) == getattr(new, f.name), f.name
    assert new.status == "ended" and new.agents == {} and new.cursors == {} and new.roles == {}


def test_a_stored_v1_session_end_reads_as_v2_with_nobody_left_to_detach() -> None:
    stored = CODEC.encode(env(SessionEnded("stop"), 1))
    raw = msgpack.unpackb(stored, raw=False)
    raw["v"], raw["d"] = 1, {"reason": "stop"}  # as version-1 code wrote it
    decoded = CODEC.decode(msgpack.packb(raw, use_bin_type=True))
    assert decoded.event == SessionEnded("stop", ())
