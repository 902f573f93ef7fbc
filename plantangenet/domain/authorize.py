"""Enforcement: who may send a command, which action on which resources it is, and whether
policy allows it.

Every command is checked here before any event is emitted, in two steps.

**Standing** (who speaks). A command comes from a *principal* (``Command.principal``:
who sent it, as the NATS server vouched for it) and is issued either in the *owner
form* (``issued_by=None``) or *as an agent* (``issued_by=<agent id>``):

* the :data:`~plantangenet.events.OPERATOR` (the process that runs the session)
  may do both, for any agent;
* another principal may use the owner form only if it owns the session (it started
  it, or an owner added it: ``OwnerAdded``), and may act only as agents bound to it
  (the agents it attached, or that an owner bound to it: ``AgentBound``);
* attaching: an owner attaches any agent (bound to itself, or to the principal it
  names in ``bound_to``); any principal may attach *itself*, i.e. send ``AttachAgent``
  as the agent it attaches, if the policy allows ``session.attach`` on
  ``agent.<agent_id>`` to an agent with no role yet (statements with no roles or
  with ``roles: ["*"]``);
* an agent may always detach *itself* (its principal speaks for it; no policy needed);
* ``AddOwner``, ``RemoveOwner`` and ``BindAgent`` are owner-form commands of owners;
  ``QuarantineMessage`` and ``SummariseRefusals`` are the operator's alone.

Anything else is refused with :class:`~plantangenet.errors.AccessRefused`, carrying the
``AccessDenied`` event the session records (the envelope records the principal).

**Policy** (what an agent may do). Commands in the owner form are not restricted by
the policy; commands issued as an agent are evaluated against the session's policy
with the agent's roles, for every resource they touch.

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
AddOwner           ``owner.add``        ``owner`` (owners only, never an agent)
RemoveOwner        ``owner.remove``     ``owner`` (owners only, never an agent)
BindAgent          ``agent.bind``       ``agent.<agent_id>`` (owners only, never an agent)
QuarantineMessage  ``log.quarantine``   ``log`` (the operator only)
SummariseRefusals  ``log.refusals``     ``log`` (the operator only)
=================  ===================  ==================================

(*) An agent acting on *another* agent's cursors also needs the action on
``agent.<owner>``, so a policy that lets bots move cursors over ``axis.*``
does not let one bot move another's.

(**) A cursor query is evaluated for the agent whose view it is (``agent_id``),
even when the owner sends it: the policy's allowing statement also says how
much each axis discloses (see :meth:`~plantangenet.domain.policy.Policy.disclose`).
A chem query's disclosure is set by the chem's terms instead.

Conditions see ``hour``, ``weekday``, ``principal``, ``identity.id``,
``identity.<attribute>``, ``agent.id``, ``agent.kind``, the attributes of the command
itself (``resolution``, ``start``, ``end``, ``axes`` of a cursor command; a cursor
query's are its cursor's) and whatever the command's free ``context`` adds — which
cannot override any of those. A key that is absent (e.g. ``resolution`` of a cursor at
its compositor's own resolution) cannot be evaluated: a deny that depends on it denies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NoReturn

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
from plantangenet.domain.dust import account_resource
from plantangenet.errors import AccessRefused, InvalidCommand
from plantangenet.events.envelope import OPERATOR, Authorization
from plantangenet.events.session import AccessDenied
from plantangenet.projections.session import SessionState

#: Context keys the session sets itself; a command's own context cannot override them.
RESERVED_CONTEXT = frozenset({"hour", "weekday", "principal", "resolution", "start", "end", "axes"})
#: Prefixes of context keys the session sets itself.
RESERVED_PREFIXES = ("identity.", "agent.", "command.")
#: Commands only owners send, and never as an agent.
OWNER_COMMANDS = (AddOwner, RemoveOwner, BindAgent)
#: Commands whose standing is checked whoever sends them (the operator included).
_GUARDED = (*OWNER_COMMANDS, QuarantineMessage, SummariseRefusals)


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
        case AddOwner():
            return "owner.add", ("owner",)
        case RemoveOwner():
            return "owner.remove", ("owner",)
        case BindAgent(agent_id=agent_id):
            return "agent.bind", (f"agent.{agent_id}",)
        case QuarantineMessage():
            return "log.quarantine", ("log",)
        case SummariseRefusals():
            return "log.refusals", ("log",)
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
            if type(k) is str and k not in RESERVED_CONTEXT and not k.startswith(RESERVED_PREFIXES)
        )
    context["hour"] = now.hour
    context["weekday"] = now.isoweekday()
    context["principal"] = command.principal
    _command_attributes(state, command, context)
    identity = state.identity
    if identity is not None:
        context["identity.id"] = identity.identity_id
        for key, value in identity.attributes.items():
            context[f"identity.{key}"] = value
    context["agent.id"] = agent_id
    agent = state.agents.get(agent_id)
    if agent is not None:
        context["agent.kind"] = agent.kind
    elif isinstance(command, AttachAgent) and command.agent_id == agent_id:
        context["agent.kind"] = command.kind  # an agent attaching itself: what it says it is
    return context


def _command_attributes(state: SessionState, command: Command, context: dict[str, Any]) -> None:
    """What a command asks for, from its own fields (never from its free ``context``)."""
    match command:
        case MoveCursor() | AddCursor() | QueryChem() | DiscloseChem():
            region: Any = command
        case QueryCursor(cursor_id=cursor_id):
            region = state.cursors.get(cursor_id) if isinstance(cursor_id, str) else None
        case _:
            return
    if region is None:
        return
    context["start"] = region.start
    context["end"] = region.end
    context["axes"] = region.axes
    if region.resolution is not None:  # the compositor's own resolution: nothing to compare
        context["resolution"] = region.resolution


def authorize(state: SessionState, command: Command, now: datetime) -> Authorization:
    """The authorization for ``command``, or :class:`AccessRefused` with its ``AccessDenied``.

    ``now`` (UTC) feeds time conditions; it is passed in so that this stays pure.
    """
    action, resources = request_of(command)
    policy = state.policy
    agent_id = command.issued_by
    if command.principal != OPERATOR or isinstance(command, _GUARDED):
        _check_standing(state, command, action, resources)
    if agent_id is None:
        return Authorization(action, resources, (None,) * len(resources), policy.version)
    name = type(command).__name__
    attaching_itself = (
        isinstance(command, AttachAgent)
        and command.agent_id == agent_id
        and agent_id not in state.agents
    )
    if agent_id not in state.agents and not attaching_itself:
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
    if isinstance(command, DetachAgent) and command.agent_id == agent_id:
        # An agent may always leave: its principal speaks for it (standing), no policy needed.
        return Authorization(action, resources, (None,) * len(resources), policy.version)
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


def _check_standing(
    state: SessionState, command: Command, action: str, resources: tuple[str, ...]
) -> None:
    """Refuse a command its principal may not send (see the module docs: *standing*)."""
    principal = command.principal
    agent_id = command.issued_by
    reason = ""
    if isinstance(command, QuarantineMessage | SummariseRefusals):
        if principal != OPERATOR or agent_id is not None:
            reason = f"{action} is the operator's alone"
    elif agent_id is not None and isinstance(command, OWNER_COMMANDS):
        reason = f"{action} is for the session's owners, not for agents"
    elif principal == OPERATOR:
        return
    elif agent_id is None:
        if isinstance(command, StartSession) and state.status == "new":
            return  # whoever starts a session owns it
        if not state.is_owner(principal):
            reason = (
                f"principal {principal!r} is not an owner of session {state.session_id!r}: "
                "send commands as one of your agents ('by')"
            )
    else:
        agent = state.agents.get(agent_id)
        if agent is not None and agent.principal != principal:
            reason = f"agent {agent_id!r} speaks for another principal, not {principal!r}"
        elif (
            isinstance(command, AttachAgent)
            and command.bound_to is not None
            and command.bound_to != principal
        ):
            reason = "an attach sent as an agent binds to its sender; only owners name another"
    if reason:
        refuse(
            AccessDenied(
                agent_id,
                type(command).__name__,
                action,
                resources[0] if resources else "",
                None,
                reason,
                state.policy.version,
            )
        )


def refuse(event: AccessDenied) -> NoReturn:
    """Raise :class:`AccessRefused` for ``event``."""
    who = event.agent_id or "the owner form"
    raise AccessRefused(
        f"{who} may not {event.action} on {event.resource}: {event.reason} "
        f"(policy version {event.policy_version})",
        event=event,
    )
