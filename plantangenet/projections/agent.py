"""The agent projection: what one agent's events fold into."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from plantangenet.events.envelope import Envelope
from plantangenet.events.session import (
    AgentAttached,
    AgentDetached,
    CursorAdded,
    CursorMoved,
    CursorRemoved,
    SessionEnded,
)
from plantangenet.projections.maps import EMPTY_VIEW, frozen, view
from plantangenet.projections.session import CursorView, cursor_view


@dataclasses.dataclass(frozen=True)
class AgentState:
    """One agent as folded from the session events about it.

    Frozen but not slotted, like :class:`SessionState`: the fold copies a ``__dict__``.
    ``cursors`` is, like the session's maps, a read-only view of a persistent map.
    """

    agent_id: str
    kind: str = ""
    name: str = ""
    attached: bool = False
    cursors: Mapping[str, CursorView] = dataclasses.field(default_factory=lambda: EMPTY_VIEW)
    sequence: int = 0


def evolve_agent(state: AgentState, envelope: Envelope) -> AgentState:
    """The agent's state after ``envelope`` (events about other agents are ignored)."""
    event = envelope.event
    if isinstance(event, SessionEnded):  # the end detaches every agent still attached
        if state.agent_id not in event.detached:
            return state
        sequence = envelope.sequence or state.sequence
        return _with(state, attached=False, cursors=EMPTY_VIEW, sequence=sequence)
    if getattr(event, "agent_id", None) != state.agent_id:
        return state
    sequence = envelope.sequence or state.sequence
    match event:
        case CursorAdded() | CursorMoved():
            cursors = frozen(state.cursors).set(event.cursor_id, cursor_view(event))
            return _with(state, cursors=view(cursors), sequence=sequence)
        case CursorRemoved(cursor_id=cid):
            cursors = frozen(state.cursors).delete(cid)
            return _with(state, cursors=view(cursors), sequence=sequence)
        case AgentAttached(kind=kind, name=name):
            return _with(state, kind=kind, name=name, attached=True, sequence=sequence)
        case AgentDetached():
            return _with(state, attached=False, cursors=EMPTY_VIEW, sequence=sequence)
    return _with(state, sequence=sequence)


def _with(state: AgentState, **changes: object) -> AgentState:
    """``dataclasses.replace`` without its per-call introspection (folded per event)."""
    new = object.__new__(AgentState)
    fields = new.__dict__  # filled directly: a frozen dataclass refuses setattr
    fields.update(state.__dict__)
    fields.update(changes)
    return new
