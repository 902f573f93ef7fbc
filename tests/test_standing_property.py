"""Property: a command is stored iff its principal's standing and the policy allow it.

Random principals send random commands (attach, grant a role, add an owner, bind an
agent, change metadata), in the owner form or as an agent, to a real session actor on a
real log. An independent model of the rules (docs/protocol.md, "Who may do what")
predicts each outcome: stored, refused (an ``AccessDenied`` recorded with the
principal), or invalid for the session's state (nothing stored). The log must hold
exactly that, and every refusal must name its principal.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plantangenet import (
    OPERATOR,
    AccessRefused,
    AddOwner,
    AttachAgent,
    BindAgent,
    ChangeMetadata,
    Command,
    CommandRejected,
    CommandResult,
    EmbeddedNats,
    GrantRole,
    JournalConfig,
    Plantangenet,
    RefusalLimit,
    StartSession,
)

PRINCIPALS = [OPERATOR, "p1@a", "p2@b", "p3@c"]
AGENTS = ["x", "y", "z"]
POLICY = [
    {"id": "join", "effect": "allow", "actions": ["session.attach"], "resources": ["agent.*"]},
    {
        "id": "writers",
        "effect": "allow",
        "roles": ["writer"],
        "actions": ["metadata.change"],
        "resources": ["metadata.*"],
    },
]
_ids = itertools.count()


@dataclasses.dataclass
class Model:
    """What the rules say the session is, and so what each command comes to."""

    owners: set[str] = dataclasses.field(default_factory=lambda: {"p1@a"})
    bound: dict[str, str] = dataclasses.field(default_factory=dict)  # agent -> principal
    roles: dict[str, set[str]] = dataclasses.field(default_factory=dict)

    def standing(self, command: Command) -> bool:
        principal, by = command.principal, command.issued_by
        if by is not None and isinstance(command, AddOwner | BindAgent):
            return False  # owners' commands, never an agent's
        if principal == OPERATOR:
            return True
        if by is None:
            return principal in self.owners
        if isinstance(command, AttachAgent) and command.bound_to not in (None, principal):
            return False  # only owners bind an agent to another principal
        if by in self.bound:
            return self.bound[by] == principal
        return isinstance(command, AttachAgent) and command.agent_id == by  # joining

    def policy(self, command: Command) -> bool:
        by = command.issued_by
        if by is None:
            return True
        if by not in self.bound:
            return isinstance(command, AttachAgent) and command.agent_id == by  # joining
        if isinstance(command, AttachAgent):
            return True
        if isinstance(command, ChangeMetadata):
            return "writer" in self.roles.get(by, set())
        return False  # no statement lets an agent grant roles

    def outcome(self, command: Command) -> str:
        """``stored``, ``refused`` or ``invalid``; and the model follows a stored command."""
        if not (self.standing(command) and self.policy(command)):
            return "refused"
        match command:
            case AttachAgent(agent_id=agent, bound_to=bound_to):
                if agent in self.bound:
                    return "invalid"
                self.bound[agent] = bound_to or command.principal
            case GrantRole(agent_id=agent, role=role):
                if agent not in self.bound or role in self.roles.get(agent, set()):
                    return "invalid"
                self.roles.setdefault(agent, set()).add(role)
            case AddOwner(owner=owner):
                if owner == OPERATOR or owner in self.owners:
                    return "invalid"
                self.owners.add(owner)
            case BindAgent(agent_id=agent, bound_to=bound_to):
                if agent not in self.bound or self.bound[agent] == bound_to:
                    return "invalid"
                self.bound[agent] = bound_to
        return "stored"


principals = st.sampled_from(PRINCIPALS)
agents = st.sampled_from(AGENTS)
others = st.sampled_from(PRINCIPALS[1:])


@st.composite
def commands(draw: st.DrawFn) -> Command:
    principal = draw(principals)
    agent = draw(agents)
    by = draw(st.sampled_from([None, agent, draw(agents)]))
    command: Command = draw(
        st.sampled_from(
            [
                AttachAgent(agent_id=agent, bound_to=draw(st.none() | others)),
                GrantRole(agent_id=agent, role="writer"),
                AddOwner(owner=draw(others)),
                BindAgent(agent_id=agent, bound_to=draw(others)),
                ChangeMetadata(changed={"k": draw(st.integers(0, 9))}),
            ]
        )
    )
    return dataclasses.replace(command, principal=principal, issued_by=by)


@pytest.fixture(scope="module")
def runtime(nats_server: EmbeddedNats) -> Iterator[Plantangenet]:
    config = JournalConfig(
        stream="STANDING", subject_prefix="standing.events", live_prefix="standing.live"
    )
    # Every refusal recorded one by one (no summaries), so each can be checked.
    limit = RefusalLimit(rate=1e6, burst=1_000_000, interval=60)
    with Plantangenet.open(nats_url=nats_server.url, journal=config, refusal_limit=limit) as pg:
        yield pg


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(sent=st.lists(commands(), min_size=1, max_size=25))
def test_stored_iff_standing_and_policy_allow_and_refusals_name_their_principal(
    runtime: Plantangenet, sent: list[Command]
) -> None:
    session_id = f"standing-{next(_ids)}"
    session = runtime.session(session_id)
    session.execute(StartSession(principal="p1@a"))
    session.change_policy(replace=POLICY)
    model = Model()
    expected = [model.outcome(command) for command in sent]
    outcomes = session.submit_many(sent).result(30)
    by_command: dict[str, list[str | None]] = {}
    for envelope in runtime.history(session_id):
        by_command.setdefault(envelope.causation_id, []).append(envelope.principal)
    denied = {
        e.causation_id: e.principal
        for e in runtime.history(session_id)
        if e.type_name == "AccessDenied"
    }
    for command, want, got in zip(sent, expected, outcomes, strict=True):
        where = (command, want, got)
        if want == "stored":
            assert isinstance(got, CommandResult), where
            assert all(p == command.principal for p in by_command[command.command_id]), where
        elif want == "refused":
            assert isinstance(got, AccessRefused) and got.sequence > 0, where
            assert denied[command.command_id] == command.principal, where
        else:
            assert isinstance(got, CommandRejected) and not isinstance(got, AccessRefused), where
            assert command.command_id not in by_command, where
    state = runtime.replay(session_id)
    assert set(state.owners) == model.owners
    assert {a: v.principal for a, v in state.agents.items()} == model.bound
    assert runtime.replay(session_id) == session.state
    runtime.stop_session(session_id)
