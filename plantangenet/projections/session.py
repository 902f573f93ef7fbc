"""The session projection: the state a session's events fold into.

:func:`evolve` is the only way state changes, and it is pure: the same fold
rehydrates an actor, answers "the session as it was at sequence N", and
builds views for auditors. There is no snapshot of these fields anywhere;
they are always derived from the log.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal

from immutables import Map

from plantangenet.events.chem import (
    ChemAccepted,
    ChemClause,
    ChemProposed,
    ChemRefused,
    ChemRevoked,
    ChemStatus,
)
from plantangenet.events.disclosure import CompositorRegistered
from plantangenet.events.dust import (
    DustCharged,
    DustDeposited,
    DustGranted,
    PricesChanged,
    movements,
)
from plantangenet.events.envelope import OPERATOR, Envelope
from plantangenet.events.fields import MetadataValue
from plantangenet.events.policy_values import Policy
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
from plantangenet.events.slots import slot_builder
from plantangenet.events.trust import (
    AgentBound,
    MessageQuarantined,
    OwnerAdded,
    OwnerRemoved,
)
from plantangenet.projections.maps import EMPTY_VIEW, FrozenMap, frozen, view

SessionStatus = Literal["new", "active", "ended"]


def _empty() -> Mapping[Any, Any]:
    return EMPTY_VIEW


@dataclasses.dataclass(frozen=True, slots=True)
class AgentView:
    """An attached agent as the session knows it."""

    agent_id: str
    kind: str
    name: str
    attached_at: int  # stream sequence of its AgentAttached
    #: The principal that speaks as this agent (``None``: unknown, so only the operator).
    principal: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class CursorView:
    """A cursor: an agent's region of interest over ``axes`` and ``[start, end]``.

    ``resolution`` is the time step the agent wants data at (``None``: the
    compositor's own).
    """

    cursor_id: str
    agent_id: str
    axes: tuple[str, ...]
    start: float
    end: float
    resolution: float | None = None


#: ``CursorView(...)`` built slot by slot (the fold makes one per cursor move).
_new_cursor = slot_builder(CursorView)


def cursor_view(event: CursorAdded | CursorMoved) -> CursorView:
    """The cursor a ``CursorAdded`` or ``CursorMoved`` describes."""
    return _new_cursor(
        event.cursor_id, event.agent_id, event.axes, event.start, event.end, event.resolution
    )


@dataclasses.dataclass(frozen=True, slots=True)
class IdentityView:
    """The identity the session's connection is bound to."""

    identity_id: str
    display_name: str
    attributes: Mapping[str, MetadataValue]


@dataclasses.dataclass(frozen=True, slots=True)
class ChemView:
    """A chem as this session knows it: its peer, where the negotiation is, the terms."""

    chem_id: str
    peer: str
    status: ChemStatus
    proposed_by: str
    round: int
    terms: tuple[ChemClause, ...]

    def clauses_by(self, discloser: str) -> tuple[ChemClause, ...]:
        """The clauses under which ``discloser`` discloses to the other side."""
        return tuple(c for c in self.terms if c.discloser == discloser)


@dataclasses.dataclass(frozen=True)
class SessionState:
    """Everything a session is, as folded from its events.

    ``sequence`` is the stream sequence of the last event folded in (0 before
    any); ``event_count`` how many events were folded.

    Frozen but not slotted: the fold makes one per event, and copying a
    ``__dict__`` is several times cheaper than setting sixteen slots.

    The maps are read-only views (``MappingProxyType``) of persistent maps
    (:class:`~plantangenet.projections.maps.FrozenMap`): an event changes one in
    O(log n), sharing the rest with the state before it, which stays as it was.
    They compare equal to any mapping with the same items.
    """

    session_id: str
    status: SessionStatus = "new"
    metadata: Mapping[str, MetadataValue] = dataclasses.field(default_factory=_empty)
    agents: Mapping[str, AgentView] = dataclasses.field(default_factory=_empty)
    cursors: Mapping[str, CursorView] = dataclasses.field(default_factory=_empty)
    identity: IdentityView | None = None
    #: Roles granted to attached agents.
    roles: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=_empty)
    #: The current policy; version 0 (no statements: default deny) until one is set.
    policy: Policy = dataclasses.field(default_factory=Policy)
    #: Compositors the session coordinates with: name -> description.
    compositors: Mapping[str, str] = dataclasses.field(default_factory=_empty)
    #: The price table: action (or ``action.level``) -> dust.
    prices: Mapping[str, int] = dataclasses.field(default_factory=_empty)
    #: Dust balances by account (agent ids and the treasury); accounts never go negative.
    balances: Mapping[str, int] = dataclasses.field(default_factory=_empty)
    #: Chems with other sessions, by chem id.
    chems: Mapping[str, ChemView] = dataclasses.field(default_factory=_empty)
    sequence: int = 0
    event_count: int = 0
    end_reason: str | None = None
    #: Principals that may send commands in the owner form (besides the operator, always).
    owners: tuple[str, ...] = ()
    #: Messages of the session's log that are not valid events of it and are not
    #: quarantined yet: stream sequence -> why. While any is left, the session takes
    #: no command but an operator's ``QuarantineMessage``.
    unreadable: Mapping[int, str] = dataclasses.field(default_factory=_empty)
    #: Stream sequences of quarantined messages (skipped by every fold).
    quarantined: tuple[int, ...] = ()

    @property
    def revision(self) -> int:
        """The revision of the last event folded in (0 before any): where the session is."""
        return self.event_count

    def is_owner(self, principal: str) -> bool:
        """Whether ``principal`` may send commands in the owner form (with no agent)."""
        return principal == OPERATOR or principal in self.owners

    def roles_of(self, agent_id: str) -> tuple[str, ...]:
        """The roles ``agent_id`` holds (empty if none or not attached)."""
        return self.roles.get(agent_id, ())

    def balance(self, account: str) -> int:
        """The dust ``account`` holds (0 if it never held any)."""
        return self.balances.get(account, 0)

    def price(self, action: str, level: str | None = None) -> int:
        """Dust per unit for ``action`` (at ``level``, if priced separately); 0 if unpriced."""
        if level is not None:
            priced = self.prices.get(f"{action}.{level}")
            if priced is not None:
                return priced
        return self.prices.get(action, 0)

    def cursors_of(self, agent_id: str) -> tuple[CursorView, ...]:
        """The cursors owned by ``agent_id``, in cursor-id order."""
        owned = _owned(self).get(agent_id)
        if not owned:
            return ()
        cursors = self.cursors
        return tuple(cursors[cid] for cid in sorted(owned))


#: Cursor ids by owning agent: agent id -> {cursor id: None}.
Owned = Map[str, Map[str, None]]


def _owned(state: SessionState) -> Owned:
    """The state's cursor ids by owning agent (what a detach drops, what ``cursors_of`` lists).

    Derived from ``cursors``, so not a field (equality, ``repr`` and ``replace`` ignore
    it): kept in the instance's ``__dict__``, carried from state to state by the fold,
    and rebuilt once from ``cursors`` for a state made any other way.
    """
    owned: Owned | None = state.__dict__.get("_owned")
    if owned is None:
        by_agent: dict[str, dict[str, None]] = {}
        for cursor_id, cursor in state.cursors.items():
            by_agent.setdefault(cursor.agent_id, {})[cursor_id] = None
        owned = Map({agent: Map(ids) for agent, ids in by_agent.items()})
        state.__dict__["_owned"] = owned  # a cache of what ``cursors`` says
    return owned


def _own(owned: Owned, agent_id: str, cursor_id: str) -> Owned:
    return owned.set(agent_id, owned.get(agent_id, _NO_IDS).set(cursor_id, None))


def _disown(owned: Owned, agent_id: str, cursor_id: str) -> Owned:
    ids = owned.get(agent_id)
    if ids is None or cursor_id not in ids:
        return owned
    ids = ids.delete(cursor_id)
    return owned.set(agent_id, ids) if ids else owned.delete(agent_id)


_NO_IDS: Map[str, None] = Map()
_NO_OWNED: Owned = Map()


def _with(mapping: Mapping[Any, Any], key: Any, value: Any) -> Mapping[Any, Any]:
    return view(frozen(mapping).set(key, value))


def _without(mapping: Mapping[Any, Any], key: Any) -> Mapping[Any, Any]:
    return view(frozen(mapping).delete(key))


def evolve(state: SessionState, envelope: Envelope) -> SessionState:
    """The state after ``envelope``'s event; ``state`` itself is not changed.

    Events that make no sense for the state (which :func:`decide` never emits)
    are folded leniently, so a replay never fails on history.
    """
    event = envelope.event
    sequence = envelope.sequence if envelope.sequence is not None else state.sequence
    changes: dict[str, object] = {"sequence": sequence, "event_count": state.event_count + 1}
    match event:
        case CursorMoved() | CursorAdded():
            cursor_id, agent_id = event.cursor_id, event.agent_id
            cursors = frozen(state.cursors)
            before = cursors.get(cursor_id)
            cursor = cursor_view(event)
            changes["cursors"] = view(cursors.set(cursor_id, cursor))
            if before is None or before.agent_id != agent_id:  # a new owner (else the same)
                owned = _owned(state)
                if before is not None:
                    owned = _disown(owned, before.agent_id, cursor_id)
                changes["_owned"] = _own(owned, agent_id, cursor_id)
        case CursorRemoved(cursor_id=cursor_id):
            cursors = frozen(state.cursors)
            before = cursors.get(cursor_id)
            if before is not None:
                changes["cursors"] = view(cursors.delete(cursor_id))
                changes["_owned"] = _disown(_owned(state), before.agent_id, cursor_id)
        case AgentAttached(agent_id=agent_id, kind=kind, name=name, principal=principal):
            agent = AgentView(agent_id, kind, name, sequence, principal)
            changes["agents"] = _with(state.agents, agent_id, agent)
        case AgentDetached(agent_id=agent_id):
            if agent_id in state.agents:
                changes["agents"] = _without(state.agents, agent_id)
            if agent_id in state.roles:
                changes["roles"] = _without(state.roles, agent_id)
            owned = _owned(state)
            leaving = owned.get(agent_id)
            if leaving:
                changes["cursors"] = view(frozen(state.cursors).update(removed=leaving))
                changes["_owned"] = owned.delete(agent_id)
        case SessionMetadataChanged(changed=changed, removed=removed):
            changes["metadata"] = view(frozen(state.metadata).update(changed, removed))
        case SessionStarted(metadata=metadata):
            changes["status"] = "active"
            changes["metadata"] = view(FrozenMap(metadata))
            if envelope.principal is not None and envelope.principal not in state.owners:
                changes["owners"] = (*state.owners, envelope.principal)  # who started it
        case PolicyChanged(statements=statements):
            changes["policy"] = Policy(statements, state.policy.version + 1)
        case RoleGranted(agent_id=agent_id, role=role):
            held = state.roles.get(agent_id, ())
            if role not in held:
                changes["roles"] = _with(state.roles, agent_id, (*held, role))
        case RoleRevoked(agent_id=agent_id, role=role):
            held = tuple(r for r in state.roles.get(agent_id, ()) if r != role)
            changes["roles"] = (
                _with(state.roles, agent_id, held) if held else _without(state.roles, agent_id)
            )
        case IdentityBound(identity_id=identity_id, display_name=name, attributes=attributes):
            changes["identity"] = IdentityView(
                identity_id, name, MappingProxyType(dict(attributes))
            )
        case SessionEnded(reason=reason):
            changes["status"] = "ended"
            changes["end_reason"] = reason
            if state.agents or state.cursors or state.roles:  # those still attached leave
                changes["agents"] = changes["cursors"] = changes["roles"] = EMPTY_VIEW
                changes["_owned"] = _NO_OWNED
        case DustDeposited() | DustGranted() | DustCharged():
            balances = frozen(state.balances)
            moved = movements(event)
            if moved:
                changes["balances"] = view(
                    balances.update({a: balances.get(a, 0) + n for a, n in moved.items()})
                )
        case PricesChanged(prices=prices):
            changes["prices"] = view(FrozenMap(prices))
        case CompositorRegistered(name=name, description=description):
            changes["compositors"] = _with(state.compositors, name, description)
        case ChemProposed(chem_id=chem_id, peer=peer, proposed_by=by, round=n, terms=terms):
            chem = ChemView(chem_id, peer, "proposed", by, n, terms)
            changes["chems"] = _with(state.chems, chem_id, chem)
        case (
            ChemAccepted(chem_id=chem_id)
            | ChemRefused(chem_id=chem_id)
            | ChemRevoked(chem_id=chem_id)
        ):
            known = state.chems.get(chem_id)
            if known is not None:
                status = _CHEM_STATUS[type(event)]
                changes["chems"] = _with(
                    state.chems, chem_id, dataclasses.replace(known, status=status)
                )
        case OwnerAdded(principal=principal):
            if principal not in state.owners:
                changes["owners"] = (*state.owners, principal)
        case OwnerRemoved(principal=principal):
            changes["owners"] = tuple(p for p in state.owners if p != principal)
        case AgentBound(agent_id=agent_id, principal=principal):
            bound = state.agents.get(agent_id)
            if bound is not None:
                changes["agents"] = _with(
                    state.agents, agent_id, dataclasses.replace(bound, principal=principal)
                )
        case MessageQuarantined(sequence=quarantined):
            if quarantined in state.unreadable:
                changes["unreadable"] = _without(state.unreadable, quarantined)
            if quarantined not in state.quarantined:
                changes["quarantined"] = (*state.quarantined, quarantined)
        case _:
            pass  # an event type this projection does not follow
    return _changed(state, changes)


def with_unreadable(state: SessionState, sequence: int, problem: str) -> SessionState:
    """The state after a message at ``sequence`` that is not a valid event of the session.

    The fold moves past it (its sequence is the session's last, so a writer's next
    append is guarded by it) and remembers it in ``unreadable`` until an operator
    quarantines it (``MessageQuarantined``); no command is taken meanwhile.
    """
    if sequence in state.quarantined:
        return _changed(state, {"sequence": max(sequence, state.sequence)})
    return _changed(
        state,
        {
            "sequence": max(sequence, state.sequence),
            "unreadable": _with(state.unreadable, sequence, problem),
        },
    )


_CHEM_STATUS: dict[type, ChemStatus] = {
    ChemAccepted: "active",
    ChemRefused: "refused",
    ChemRevoked: "revoked",
}


def _changed(state: SessionState, changes: dict[str, object]) -> SessionState:
    """``dataclasses.replace`` without its per-call introspection (the fold's hot path).

    Carries the ``_owned`` cache (see :func:`_owned`) along: a change of ``cursors``
    that changes which agent owns which cursor must pass the new one in ``changes``.
    """
    new = object.__new__(SessionState)
    fields = new.__dict__  # filled directly: a frozen dataclass refuses setattr
    fields.update(state.__dict__)
    fields.update(changes)
    return new


def settled(
    state: SessionState, decided: SessionState, stored: Sequence[Envelope]
) -> SessionState | None:
    """``fold`` of ``stored`` onto ``state``, reusing ``decided``: the same fold done before
    the log numbered the events.

    A single writer folds the events it decides before they are stored; once the
    log acknowledges them, folding them again would change only the stream
    sequence. This returns ``decided`` stamped with the last one, or ``None``
    (fold ``stored`` instead) when an event's fold records its own sequence or
    ``decided`` is not ``state`` plus exactly ``len(stored)`` events.
    """
    if (
        not stored
        or decided.session_id != state.session_id
        or decided.event_count != state.event_count + len(stored)
        or any(type(e.event) in _NUMBERED for e in stored)
    ):
        return None
    last = stored[-1].sequence
    return decided if last is None else _changed(decided, {"sequence": last})


#: Events whose fold records the envelope's own stream sequence.
_NUMBERED = frozenset({AgentAttached})


def fold(
    session_id: str, envelopes: Iterable[Envelope], state: SessionState | None = None
) -> SessionState:
    """Fold ``envelopes`` into ``state`` (or a new session's initial state).

    The same as :func:`evolve` applied to each in turn, but a run of cursor moves
    (``CursorMoved``/``CursorAdded`` of cursors that keep their owner: most of a
    long session's log) makes one new state instead of one per event (:class:`MoveRun`).
    """
    current = state if state is not None else SessionState(session_id)
    run = MoveRun(current)
    for envelope in envelopes:
        event = envelope.event
        if isinstance(event, _MOVES) and run.takes(event.cursor_id, event.agent_id):
            run.add(cursor_view(event), envelope.sequence)
            continue
        current = evolve(run.folded(current), envelope)
        run = MoveRun(current)
    return run.folded(current)


#: Events that set a cursor (a run of them folds at once, see :func:`fold`).
_MOVES = (CursorMoved, CursorAdded)
#: Their type names.
MOVE_TYPE_NAMES = frozenset(cls.type_name for cls in _MOVES)


class MoveRun:
    """Cursor events gathered to fold at once: those that set a cursor that exists and
    keeps its owner (``CursorMoved``/``CursorAdded``), in a row, on top of ``state``.

    Such an event changes only its cursor's view, the sequence and the count of events,
    so a run of them makes one new state (:meth:`folded`) instead of one per event.
    Any other event ends the run: fold the run, :func:`evolve` the event, start a new run
    on the state that gives.
    """

    __slots__ = ("_count", "_cursors", "_moved", "_sequence")

    def __init__(self, state: SessionState) -> None:
        self._cursors = state.cursors
        self._moved: dict[str, CursorView] = {}  # the last view of each cursor in the run
        self._count = 0
        self._sequence: int | None = None  # the run's last stream sequence

    def takes(self, cursor_id: str, agent_id: str) -> bool:
        """Whether an event by ``agent_id`` that sets ``cursor_id`` joins the run: the cursor
        exists (in the state or the run) and ``agent_id`` owns it."""
        before = self._moved.get(cursor_id) or self._cursors.get(cursor_id)
        return before is not None and before.agent_id == agent_id

    def add(self, cursor: CursorView, sequence: int | None) -> None:
        """Add the event that sets ``cursor`` (one :meth:`takes`), stored at ``sequence``."""
        self._moved[cursor.cursor_id] = cursor
        self._count += 1
        if sequence is not None:
            self._sequence = sequence

    def folded(self, state: SessionState) -> SessionState:
        """``state`` (the one the run began on) with the run's events folded in."""
        return _moved(state, self._moved, self._count, self._sequence) if self._count else state


def _moved(
    state: SessionState, moved: Mapping[str, CursorView], count: int, sequence: int | None
) -> SessionState:
    """``state`` after ``count`` cursor events that set ``moved`` and changed no owner."""
    return _changed(
        state,
        {
            "sequence": state.sequence if sequence is None else sequence,
            "event_count": state.event_count + count,
            "cursors": view(frozen(state.cursors).update(moved)),
        },
    )
