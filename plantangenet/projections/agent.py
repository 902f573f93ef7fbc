"""The agent projection: what one agent's events fold into."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType

from plantangenet.events.envelope import Envelope
from plantangenet.events.session import (
    AgentAttached,
    AgentDetached,
    CursorAdded,
    CursorMoved,
    CursorRemoved,
)
from plantangenet.projections.session import CursorView


@dataclasses.dataclass(frozen=True, slots=True)
class AgentState:
    """One agent as folded from the session events about it."""

    agent_id: str
    kind: str = ""
    name: str = ""
    attached: bool = False
    cursors: Mapping[str, CursorView] = dataclasses.field(
        default_factory=lambda: MappingProxyType({})
    )
    sequence: int = 0


def concerns(envelope: Envelope, agent_id: str) -> bool:
    """Whether the event in ``envelope`` is about ``agent_id``."""
    return getattr(envelope.event, "agent_id", None) == agent_id


def evolve_agent(state: AgentState, envelope: Envelope) -> AgentState:
    """The agent's state after ``envelope`` (events about other agents are ignored)."""
    event = envelope.event
    if getattr(event, "agent_id", None) != state.agent_id:
        return state
    sequence = envelope.sequence or state.sequence
    match event:
        case (
            CursorAdded(cursor_id=cid, axes=axes, start=s, end=e)
            | CursorMoved(cursor_id=cid, axes=axes, start=s, end=e)
        ):
            cursors = dict(state.cursors)
            cursors[cid] = CursorView(cid, state.agent_id, axes, s, e)
            return dataclasses.replace(state, cursors=MappingProxyType(cursors), sequence=sequence)
        case CursorRemoved(cursor_id=cid):
            cursors = dict(state.cursors)
            cursors.pop(cid, None)
            return dataclasses.replace(state, cursors=MappingProxyType(cursors), sequence=sequence)
        case AgentAttached(kind=kind, name=name):
            return dataclasses.replace(
                state, kind=kind, name=name, attached=True, sequence=sequence
            )
        case AgentDetached():
            return dataclasses.replace(
                state, attached=False, cursors=MappingProxyType({}), sequence=sequence
            )
    return dataclasses.replace(state, sequence=sequence)
