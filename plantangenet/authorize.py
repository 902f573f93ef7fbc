"""Enforcement: which action on which resources a command is, and whether policy allows it.

Every command that acts on a resource is checked here before any event is
emitted. Commands issued by the session's owner (``issued_by=None``) are
allowed; commands issued on behalf of an agent are evaluated against the
session's policy with the agent's roles, for every resource they touch. A
refusal raises :class:`~plantangenet.errors.AccessRefused` carrying the
``AccessDenied`` event that the session records for auditors.

=================  ===================  ==================================
command            action               resources
=================  ===================  ==================================
AttachAgent        ``session.attach``   ``agent.<agent_id>``
DetachAgent        ``session.detach``   ``agent.<agent_id>``
AddCursor          ``cursor.add``       ``axis.<axis>`` for each axis (*)
MoveCursor         ``cursor.move``      ``axis.<axis>`` for each axis (*)
RemoveCursor       ``cursor.remove``    ``cursor.<cursor_id>`` (*)
ChangeMetadata     ``metadata.change``  ``metadata.<key>`` for each key
ChangePolicy       ``policy.change``    ``policy``
GrantRole          ``role.grant``       ``role.<role>``
RevokeRole         ``role.revoke``      ``role.<role>``
BindIdentity       ``identity.bind``    ``identity``
EndSession         ``session.end``      ``session``
RegisterCompositor ``compositor.register`` ``compositor.<name>``
QueryCursor        ``cursor.query``     ``axis.<axis>`` for each axis (*) (**)
SetPrices          ``dust.price``       ``dust.prices``
DepositDust        ``dust.deposit``     ``dust.agent.<id>`` or ``dust.treasury``
GrantDust          ``dust.grant``       the source account, as above
ProposeChem        ``chem.propose``     ``chem.<chem_id>`` (also counters)
AcceptChem         ``chem.accept``      ``chem.<chem_id>``
RefuseChem         ``chem.refuse``      ``chem.<chem_id>``
RevokeChem         ``chem.revoke``      ``chem.<chem_id>``
QueryChem          ``chem.query``       ``chem.<chem_id>`` (*)
DiscloseChem       ``chem.disclose``    decided by the chem's terms, not the policy
=================  ===================  ==================================

(*) An agent acting on *another* agent's cursors also needs the action on
``agent.<owner>``, so a policy that lets bots move cursors over ``axis.*``
does not let one bot move another's.

(**) A cursor query is evaluated for the agent whose view it is (``agent_id``),
even when the owner sends it: the policy's allowing statement also says how
much each axis discloses (see :meth:`~plantangenet.policy.Policy.disclose`).
A chem query's disclosure is set by the chem's terms instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NoReturn

from plantangenet.commands import (
    AcceptChem,
    AddCursor,
    AttachAgent,
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
    QueryChem,
    QueryCursor,
    RefuseChem,
    RegisterCompositor,
    RemoveCursor,
    RevokeChem,
    RevokeRole,
    SetPrices,
    StartSession,
)
from plantangenet.dust import account_resource
from plantangenet.errors import AccessRefused, InvalidCommand
from plantangenet.events.envelope import Authorization
from plantangenet.events.session import AccessDenied
from plantangenet.projections.session import SessionState

#: Context keys the session sets itself; a command's own context cannot override them.
RESERVED_CONTEXT = ("hour", "weekday", "identity.", "agent.")


def request_of(command: Command) -> tuple[str, tuple[str, ...]]:
    """The action a command performs and the resources it touches."""
    match command:
        case MoveCursor(agent_id=agent_id, axes=axes):  # first: the most frequent command
            return "cursor.move", _each("axis", axes) + _other(command, agent_id)
        case AttachAgent(agent_id=agent_id):
            return "session.attach", (f"agent.{agent_id}",)
        case DetachAgent(agent_id=agent_id):
            return "session.detach", (f"agent.{agent_id}",)
        case AddCursor(agent_id=agent_id, axes=axes):
            return "cursor.add", _each("axis", axes) + _other(command, agent_id)
        case RemoveCursor(agent_id=agent_id, cursor_id=cursor_id):
            return "cursor.remove", (f"cursor.{cursor_id}", *_other(command, agent_id))
        case ChangeMetadata(changed=changed, removed=removed):
            if not isinstance(changed, Mapping):
                raise InvalidCommand("changed must be a map of string keys to scalar values")
            return "metadata.change", _each("metadata", [*changed, *removed])
        case ChangePolicy():
            return "policy.change", ("policy",)
        case GrantRole(role=role):
            return "role.grant", (f"role.{role}",)
        case RevokeRole(role=role):
            return "role.revoke", (f"role.{role}",)
        case BindIdentity():
            return "identity.bind", ("identity",)
        case EndSession():
            return "session.end", ("session",)
        case StartSession():
            return "session.start", ("session",)
        case RegisterCompositor(name=name):
            return "compositor.register", (f"compositor.{name}",)
        case QueryCursor(agent_id=agent_id):
            return "cursor.query", _other(command, agent_id)
        case SetPrices():
            return "dust.price", ("dust.prices",)
        case DepositDust(account=account):
            return "dust.deposit", (account_resource(str(account)),)
        case GrantDust(source=source):
            return "dust.grant", (account_resource(str(source)),)
        case ProposeChem(chem_id=chem_id):
            return "chem.propose", (f"chem.{chem_id}",)
        case AcceptChem(chem_id=chem_id):
            return "chem.accept", (f"chem.{chem_id}",)
        case RefuseChem(chem_id=chem_id):
            return "chem.refuse", (f"chem.{chem_id}",)
        case RevokeChem(chem_id=chem_id):
            return "chem.revoke", (f"chem.{chem_id}",)
        case QueryChem(chem_id=chem_id, agent_id=agent_id):
            return "chem.query", (f"chem.{chem_id}", *_other(command, agent_id))
        case DiscloseChem(chem_id=chem_id):
            return "chem.disclose", (f"chem.{chem_id}",)
    raise InvalidCommand(f"unknown command {type(command).__name__}")


def _other(command: Command, owner: object) -> tuple[str, ...]:
    """Acting on another agent's cursors also needs the action on ``agent.<owner>``."""
    if command.issued_by is not None and command.issued_by != owner:
        return (f"agent.{owner}",)
    return ()


def _each(prefix: str, names: object) -> tuple[str, ...]:
    if type(names) is not tuple and (isinstance(names, str) or not isinstance(names, Sequence)):
        raise InvalidCommand(f"{prefix} names must be a list")
    return tuple([f"{prefix}.{name}" for name in names])


def request_context(
    state: SessionState, command: Command, agent_id: str, now: datetime
) -> dict[str, Any]:
    """The attributes policy conditions see for this request."""
    context: dict[str, Any] = {}
    if isinstance(command.context, Mapping):
        context.update(
            (k, v)
            for k, v in command.context.items()
            if isinstance(k, str) and not k.startswith(RESERVED_CONTEXT)
        )
    context["hour"] = now.hour
    context["weekday"] = now.isoweekday()
    identity = state.identity
    if identity is not None:
        context["identity.id"] = identity.identity_id
        for key, value in identity.attributes.items():
            context[f"identity.{key}"] = value
    context["agent.id"] = agent_id
    agent = state.agents.get(agent_id)
    if agent is not None:
        context["agent.kind"] = agent.kind
    return context


def authorize(state: SessionState, command: Command, now: datetime) -> Authorization:
    """The authorization for ``command``, or :class:`AccessRefused` with its ``AccessDenied``.

    ``now`` (UTC) feeds time conditions; it is passed in so that this stays pure.
    """
    action, resources = request_of(command)
    policy = state.policy
    agent_id = command.issued_by
    if agent_id is None:
        return Authorization(action, resources, (None,) * len(resources), policy.version)
    name = type(command).__name__
    if agent_id not in state.agents:
        refuse(
            AccessDenied(
                agent_id,
                name,
                action,
                resources[0] if resources else "",
                None,
                f"agent {agent_id!r} is not attached to the session",
                policy.version,
            )
        )
    roles = state.roles_of(agent_id)
    context = request_context(state, command, agent_id, now)
    statements: list[str | None] = []
    for resource in resources:
        decision = policy.evaluate(roles, action, resource, context)
        if not decision.allowed:
            refuse(
                AccessDenied(
                    agent_id,
                    name,
                    action,
                    resource,
                    decision.statement_id,
                    decision.reason,
                    policy.version,
                )
            )
        statements.append(decision.statement_id)
    return Authorization(action, resources, tuple(statements), policy.version)


def refuse(event: AccessDenied) -> NoReturn:
    """Raise :class:`AccessRefused` for ``event``."""
    who = event.agent_id or "the owner"
    raise AccessRefused(
        f"{who} may not {event.action} on {event.resource}: {event.reason} "
        f"(policy version {event.policy_version})",
        event=event,
    )
