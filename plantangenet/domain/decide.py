"""The session's decisions: ``decide(state, command) -> events``.

Pure: no I/O, no clock, no ids. Given the folded state and a command, it
returns the events that the command causes, or raises a typed
:class:`~plantangenet.errors.CommandRejected` saying why not. The actor turns
the events into envelopes, appends them, and only then evolves its state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from plantangenet.domain import chem, dust
from plantangenet.domain.authorize import authorize, request_of
from plantangenet.domain.checks import (
    _EPOCH,
    _check_metadata,
    _check_region,
    _check_resolution,
    _check_text,
    _finite,
    _region,
)
from plantangenet.domain.checks import AXIS_PATTERN as AXIS_PATTERN
from plantangenet.domain.checks import COMMAND_ID_PATTERN as COMMAND_ID_PATTERN
from plantangenet.domain.checks import DEFAULT_LIMITS as DEFAULT_LIMITS
from plantangenet.domain.checks import ID_PATTERN as ID_PATTERN
from plantangenet.domain.checks import MAX_AXES as MAX_AXES
from plantangenet.domain.checks import MAX_KEY as MAX_KEY
from plantangenet.domain.checks import MAX_TEXT as MAX_TEXT
from plantangenet.domain.checks import MAX_VALUE as MAX_VALUE
from plantangenet.domain.checks import PRINCIPAL_PATTERN as PRINCIPAL_PATTERN
from plantangenet.domain.checks import Limits as Limits
from plantangenet.domain.checks import check_id as check_id
from plantangenet.domain.checks import check_principal as check_principal
from plantangenet.domain.checks import show as show
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
    DataQuery,
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
from plantangenet.domain.policy import check_role, parse_statements
from plantangenet.domain.query_plan import Plan
from plantangenet.domain.query_plan import plan as plan_disclosure
from plantangenet.errors import (
    AgentAlreadyAttached,
    CursorAlreadyExists,
    InvalidCommand,
    InvalidPolicy,
    LimitExceeded,
    LogDamaged,
    SessionAlreadyStarted,
    SessionClosed,
    SessionNotStarted,
    UnknownAgent,
    UnknownCursor,
)
from plantangenet.events.base import Event
from plantangenet.events.chem import ChemQueried
from plantangenet.events.disclosure import CompositorRegistered
from plantangenet.events.envelope import OPERATOR, Authorization
from plantangenet.events.session import (
    AgentAttached,
    AgentDetached,
    CursorAdded,
    CursorMoved,
    CursorRemoved,
    IdentityBound,
    PolicyChanged,
    RoleGranted,
    RoleRevoked,
    SessionEnded,
    SessionMetadataChanged,
    SessionStarted,
)
from plantangenet.events.trust import (
    AgentBound,
    MessageQuarantined,
    OwnerAdded,
    OwnerRemoved,
    RefusalsSuppressed,
)
from plantangenet.projections.session import SessionState


def damage(state: SessionState) -> LogDamaged | None:
    """The error for a session whose log holds unreadable messages (``None`` if none)."""
    if not state.unreadable:
        return None
    sequence = min(state.unreadable)
    return LogDamaged.at(state.session_id, sequence, state.unreadable[sequence])


def _require_readable(state: SessionState, command: Command) -> None:
    """Refuse every command but a quarantine while the log holds unreadable messages."""
    damaged = damage(state)
    if damaged is not None and not isinstance(command, QuarantineMessage):
        raise damaged


def _quarantine(state: SessionState, sequence: object, reason: object) -> MessageQuarantined:
    if type(sequence) is not int or sequence not in state.unreadable:
        unreadable = ", ".join(map(str, sorted(state.unreadable))) or "none"
        raise InvalidCommand(
            f"sequence {show(sequence)} is not an unreadable message of session "
            f"{state.session_id!r} (unreadable: {unreadable}); only those are quarantined"
        )
    return MessageQuarantined(sequence, state.unreadable[sequence], _check_text(reason, "reason"))


def _require_active(state: SessionState) -> None:
    if state.status == "new":
        raise SessionNotStarted(f"session {state.session_id!r} has not been started")
    if state.status == "ended":
        raise SessionClosed(f"session {state.session_id!r} has ended")


def _require_agent(state: SessionState, agent_id: str) -> None:
    check_id(agent_id, "agent_id")  # also keeps unhashable values out of the lookup
    if agent_id not in state.agents:
        raise UnknownAgent(f"agent {agent_id!r} is not attached to session {state.session_id!r}")


def _require_cursor(state: SessionState, agent_id: str, cursor_id: str) -> None:
    check_id(cursor_id, "cursor_id")
    cursor = state.cursors.get(cursor_id)
    if cursor is None or cursor.agent_id != agent_id:
        raise UnknownCursor(f"agent {agent_id!r} has no cursor {cursor_id!r}")


def _detach(state: SessionState, agent_id: str, reason: str) -> list[Event]:
    events: list[Event] = [CursorRemoved(agent_id, c.cursor_id) for c in state.cursors_of(agent_id)]
    events.append(AgentDetached(agent_id, reason))
    return events


def decide(
    state: SessionState,
    command: Command,
    *,
    now: datetime | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> list[Event]:
    """The events ``command`` causes in ``state``; raises ``CommandRejected`` if refused.

    A command issued by an agent is checked against the session's policy first
    (see :mod:`plantangenet.domain.authorize`); ``now`` feeds its time conditions.
    """
    return decide_authorized(state, command, now=now, limits=limits)[1]


def decide_authorized(
    state: SessionState,
    command: Command,
    *,
    now: datetime | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[Authorization, list[Event]]:
    """:func:`decide`, also returning the authorization that let the command through."""
    _check_envelope(command, Command)
    if state.unreadable:
        _require_readable(state, command)
    match command:
        case QuarantineMessage(sequence=sequence, reason=reason):
            authorization = authorize(state, command, now or _EPOCH)
            return authorization, [_quarantine(state, sequence, reason)]
        case StartSession(metadata=metadata):
            if state.status != "new":
                raise SessionAlreadyStarted(f"session {state.session_id!r} already exists")
            if command.issued_by is not None:
                raise InvalidCommand("a session is started by its owner, not by an agent")
            initial = _check_metadata(metadata, "metadata")
            if len(initial) > limits.max_metadata_keys:
                raise LimitExceeded(f"metadata holds at most {limits.max_metadata_keys} keys")
            events: list[Event] = [SessionStarted(state.session_id, initial)]
            return authorize(state, command, now or _EPOCH), events
    _require_active(state)
    _check_shape(command)
    if isinstance(command, DataQuery):
        raise InvalidCommand(
            f"{type(command).__name__} fetches data from a compositor: send it to the session "
            "(the actor plans it with plan_query, asks the compositor, then discloses)"
        )
    authorization = authorize(state, command, now or _EPOCH)
    events = _decide(state, command, limits)
    return authorization, _priced(state, command, authorization.action, events)


def plan_query(
    state: SessionState,
    command: DataQuery,
    *,
    now: datetime | None = None,
) -> tuple[Authorization, Plan]:
    """Check a data query and plan it (see :mod:`plantangenet.domain.query_plan`);
    raises if refused."""
    _check_envelope(command, DataQuery)
    if state.unreadable:
        _require_readable(state, command)
    _require_active(state)
    _check_shape(command)
    max_bytes = getattr(command, "max_bytes", None)
    if max_bytes is not None and (
        isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1
    ):
        raise InvalidCommand(f"max_bytes must be a positive whole number, got {show(max_bytes)}")
    if isinstance(command, QueryCursor):
        _require_agent(state, command.agent_id)
        _require_cursor(state, command.agent_id, command.cursor_id)
    authorize(state, command, now or _EPOCH)  # the sender may send it
    return plan_disclosure(state, command, now or _EPOCH)


def _check_envelope(command: object, kind: type[Command]) -> None:
    """The fields every command has: its class, issuer, principal, correlation and context."""
    if not isinstance(command, kind):
        label = "data query" if kind is DataQuery else "command"
        raise InvalidCommand(f"not a {label}: {type(command).__name__}")
    if command.issued_by is not None:
        check_id(command.issued_by, "issued_by")
    if command.principal != OPERATOR:
        check_principal(command.principal, "principal")
    correlation = command.correlation_id
    if correlation is not None and (
        type(correlation) is not str or not COMMAND_ID_PATTERN.fullmatch(correlation)
    ):
        raise InvalidCommand(
            "correlation_id must be 1-128 printable ASCII characters without spaces, "
            f"got {show(correlation)}"
        )
    if type(command.context) is not dict and not isinstance(command.context, Mapping):
        raise InvalidCommand("context must be a map")


def _priced(state: SessionState, command: Command, action: str, events: list[Event]) -> list[Event]:
    """``events``, preceded by the ``DustCharged`` the price table asks for (if any)."""
    if action in dust.FREE_ACTIONS or not state.prices:
        return events
    payer = command.issued_by or getattr(command, "agent_id", None)
    if not isinstance(payer, str) or payer not in state.agents:
        return events  # the owner's own commands are not charged
    price = state.price(action)
    return [*dust.charge(state, payer, price, action, type(command).__name__), *events]


def _check_shape(command: Command) -> None:
    """Validate the parts of a command that name resources, before authorizing it."""
    match command:
        case MoveCursor() | AddCursor():
            check_id(command.agent_id, "agent_id")
            check_id(command.cursor_id, "cursor_id")
            _check_region(command.axes, command.start, command.end)
            _check_resolution(command.resolution)
        case AttachAgent(agent_id=agent_id, kind=kind, name=name):
            check_id(agent_id, "agent_id")
            check_id(kind, "kind")
            _check_text(name, "name")
        case DetachAgent(agent_id=agent_id, reason=reason):
            check_id(agent_id, "agent_id")
            _check_text(reason, "reason")
        case EndSession(reason=reason):
            _check_text(reason, "reason")
        case BindIdentity(display_name=name, attributes=attributes):
            _check_text(name, "display_name")
            _check_metadata(attributes, "attributes")
        case (
            RemoveCursor(agent_id=agent_id, cursor_id=cursor_id)
            | QueryCursor(agent_id=agent_id, cursor_id=cursor_id)
        ):
            check_id(agent_id, "agent_id")
            check_id(cursor_id, "cursor_id")
        case QueryChem() | DiscloseChem():
            check_id(command.chem_id, "chem_id")
            check_id(command.agent_id, "agent_id")
            _check_region(command.axes, command.start, command.end)
            _check_resolution(command.resolution)
        case (
            ProposeChem(chem_id=chem_id)
            | AcceptChem(chem_id=chem_id)
            | RefuseChem(chem_id=chem_id)
            | RevokeChem(chem_id=chem_id)
        ):
            check_id(chem_id, "chem_id")
        case RegisterCompositor(name=name, description=description):
            check_id(name, "compositor name")
            _check_text(description, "description")
        case DepositDust(account=account, memo=memo):
            _check_text(account, "account")
            _check_text(memo, "memo")
        case GrantDust(source=source, target=target, memo=memo):
            _check_text(source, "source")
            _check_text(target, "target")
            _check_text(memo, "memo")
        case ChangeMetadata(changed=changed, removed=removed):
            _check_metadata(changed, "changed")
            if isinstance(removed, str) or not isinstance(removed, Sequence):
                raise InvalidCommand("removed must be a list of keys")
            for key in removed:
                _check_text(key, "removed key")
        case GrantRole(agent_id=agent_id, role=role) | RevokeRole(agent_id=agent_id, role=role):
            check_id(agent_id, "agent_id")
            check_role(role)


def _decide(state: SessionState, command: Command, limits: Limits) -> list[Event]:
    match command:
        case MoveCursor(  # first: the most frequent command
            agent_id=agent_id, cursor_id=cursor_id, axes=axes, start=start, end=end, resolution=res
        ):
            _require_agent(state, agent_id)
            _require_cursor(state, agent_id, cursor_id)
            return [CursorMoved(agent_id, cursor_id, *_region(axes, start, end, res))]
        case ChangeMetadata(changed=changed, removed=removed):  # shape checked already
            if not changed and not removed:
                raise InvalidCommand("a metadata change must set or remove at least one key")
            keys = (set(state.metadata) - set(removed)) | set(changed)
            if len(keys) > limits.max_metadata_keys:
                raise LimitExceeded(
                    f"metadata would hold {len(keys)} keys; the limit is {limits.max_metadata_keys}"
                )
            return [SessionMetadataChanged(dict(changed), tuple(removed))]
        case AttachAgent(agent_id=agent_id, kind=kind, name=name, bound_to=bound_to):
            check_id(agent_id, "agent_id")
            check_id(kind, "kind")
            _check_text(name, "name")
            if bound_to is not None:
                check_principal(bound_to, "bound_to")
            if agent_id in state.agents:
                raise AgentAlreadyAttached(f"agent {agent_id!r} is already attached")
            if len(state.agents) >= limits.max_agents:
                raise LimitExceeded(f"the session already has {limits.max_agents} agents")
            return [AgentAttached(agent_id, kind, name, bound_to or command.principal)]
        case BindAgent(agent_id=agent_id, bound_to=bound_to):
            _require_agent(state, agent_id)
            check_principal(bound_to, "bound_to")
            if state.agents[agent_id].principal == bound_to:
                raise InvalidCommand(f"agent {agent_id!r} is already bound to {bound_to!r}")
            return [AgentBound(agent_id, bound_to)]
        case AddOwner(owner=owner):
            check_principal(owner, "owner")
            if state.is_owner(owner):
                raise InvalidCommand(f"{owner!r} already owns session {state.session_id!r}")
            return [OwnerAdded(owner)]
        case RemoveOwner(owner=owner):
            check_principal(owner, "owner")
            if owner not in state.owners:
                raise InvalidCommand(f"{owner!r} is not an owner of session {state.session_id!r}")
            return [OwnerRemoved(owner)]
        case SummariseRefusals(refused=refused, count=count, commands=names, seconds=seconds):
            check_principal(refused, "refused")
            if type(count) is not int or count < 1:
                raise InvalidCommand(f"count must be a positive whole number, got {show(count)}")
            if not isinstance(names, Mapping) or len(names) > 64:
                raise InvalidCommand("commands must map at most 64 command names to counts")
            for name, n in names.items():
                _check_text(name, "command name")
                if type(n) is not int or n < 1:
                    raise InvalidCommand(f"commands[{show(name)}] must be a positive count")
            if isinstance(seconds, bool) or not isinstance(seconds, int | float):
                raise InvalidCommand(f"seconds must be a number, got {show(seconds)}")
            if not _finite(seconds) or seconds < 0:
                raise InvalidCommand(f"seconds must be a finite number >= 0, got {show(seconds)}")
            return [RefusalsSuppressed(refused, count, dict(names), float(seconds))]
        case DetachAgent(agent_id=agent_id, reason=reason):
            _require_agent(state, agent_id)
            return _detach(state, agent_id, _check_text(reason, "reason"))
        case AddCursor(
            agent_id=agent_id, cursor_id=cursor_id, axes=axes, start=start, end=end, resolution=res
        ):
            _require_agent(state, agent_id)
            check_id(cursor_id, "cursor_id")
            if cursor_id in state.cursors:
                raise CursorAlreadyExists(f"cursor {cursor_id!r} already exists")
            if len(state.cursors_of(agent_id)) >= limits.max_cursors_per_agent:
                raise LimitExceeded(
                    f"agent {agent_id!r} already has {limits.max_cursors_per_agent} cursors"
                )
            return [CursorAdded(agent_id, cursor_id, *_region(axes, start, end, res))]
        case RemoveCursor(agent_id=agent_id, cursor_id=cursor_id):
            _require_agent(state, agent_id)
            _require_cursor(state, agent_id, cursor_id)
            return [CursorRemoved(agent_id, cursor_id)]
        case ChangePolicy(replace=replace, add=add, remove=remove):
            return [_policy_change(state, replace, add, remove)]
        case BindIdentity(identity_id=identity_id, display_name=name, attributes=attributes):
            check_id(identity_id, "identity_id")
            _check_text(name, "display_name")
            return [IdentityBound(identity_id, name, _check_metadata(attributes, "attributes"))]
        case GrantRole(agent_id=agent_id, role=role):
            _require_agent(state, agent_id)
            if role in state.roles_of(agent_id):
                raise InvalidCommand(f"agent {agent_id!r} already holds role {role!r}")
            return [RoleGranted(agent_id, role)]
        case RevokeRole(agent_id=agent_id, role=role):
            _require_agent(state, agent_id)
            if role not in state.roles_of(agent_id):
                raise InvalidCommand(f"agent {agent_id!r} does not hold role {role!r}")
            return [RoleRevoked(agent_id, role)]
        case RegisterCompositor(name=name, description=description):
            _check_text(description, "description")
            if name not in state.compositors and len(state.compositors) >= limits.max_compositors:
                raise LimitExceeded(f"a session coordinates with at most {limits.max_compositors}")
            return [CompositorRegistered(name, description)]
        case SetPrices(prices=prices):
            return dust.set_prices(prices)
        case DepositDust(account=account, amount=amount, memo=memo):
            return dust.deposit(state, account, amount, _check_text(memo, "memo"))
        case GrantDust(source=source, target=target, amount=amount, memo=memo):
            return dust.grant(state, source, target, amount, _check_text(memo, "memo"))
        case ProposeChem(chem_id=chem_id, peer=peer, proposed_by=by, terms=terms):
            return [chem.propose(state, chem_id, check_id(peer, "peer"), by, terms)]
        case AcceptChem(chem_id=chem_id, accepted_by=by):
            return [chem.accept(state, chem_id, by)]
        case RefuseChem(chem_id=chem_id, refused_by=by, reason=reason):
            return [chem.refuse(state, chem_id, by, _check_text(reason, "reason"))]
        case RevokeChem(chem_id=chem_id, revoked_by=by, reason=reason):
            return [chem.revoke(state, chem_id, by, _check_text(reason, "reason"))]
        case QueryChem(chem_id=chem_id, agent_id=agent_id, axes=axes, start=start, end=end):
            return _query_chem(state, command, chem_id, agent_id, axes, start, end)
        case EndSession(reason=reason):
            _check_text(reason, "reason")  # every agent detaches with the end: one event
            return [SessionEnded(reason, tuple(sorted(state.agents)))]
    raise InvalidCommand(f"unknown command {type(command).__name__}")


def _policy_change(
    state: SessionState, replace: object, add: object, remove: object
) -> PolicyChanged:
    current = state.policy.statements
    base = current if replace is None else parse_statements(replace)
    if isinstance(remove, str) or not isinstance(remove, Sequence):
        raise InvalidPolicy("remove must be a list of statement ids")
    known = {s.id for s in base}
    for sid in remove:
        if not isinstance(sid, str) or sid not in known:
            raise InvalidPolicy(f"cannot remove statement {sid!r}: the policy has none")
    kept = tuple(s for s in base if s.id not in set(remove))
    added = parse_statements(add)
    statements = parse_statements([*kept, *added])  # validates ids stay unique
    if replace is None and not added and not remove:
        raise InvalidPolicy("a policy change must replace, add or remove statements")
    before = {s.id for s in current}
    after = {s.id for s in statements}
    changed = {s.id for s in statements if s not in current}
    return PolicyChanged(
        statements,
        added=tuple(sorted(changed)),
        removed=tuple(sorted(before - after)),
    )


def _query_chem(
    state: SessionState,
    command: QueryChem,
    chem_id: str,
    agent_id: str,
    axes: tuple[str, ...],
    start: float,
    end: float,
) -> list[Event]:
    """The asking side of a chem query: every axis must be in the peer's terms; pay for it."""
    _require_agent(state, agent_id)
    active = chem.active_chem(state, chem_id)
    price = 0
    for axis in axes:
        clause = chem.terms_for(active, active.peer, axis)
        if clause is None:
            raise InvalidCommand(f"chem {chem_id!r}: {active.peer!r} does not disclose {axis}")
        price += clause.price
    action = request_of(command)[0]
    charged = dust.charge(state, agent_id, price, action, type(command).__name__, chem_id)
    region = _region(axes, start, end, command.resolution)
    return [*charged, ChemQueried(chem_id, agent_id, *region[:3], price)]
