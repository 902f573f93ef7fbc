"""The events of a session's life: start, metadata, agents, cursors, policy, end.

Each is an immutable value with a stable type name and a schema version.
The envelope (see :mod:`plantangenet.events.envelope`) carries who, when,
why and where in the log; these classes carry only what happened.
"""

from __future__ import annotations

from collections.abc import Mapping

from plantangenet.events.base import Event, event_type
from plantangenet.events.fields import MetadataValue


@event_type("SessionStarted", version=1)
class SessionStarted(Event):
    """A session came into being with its initial metadata."""

    session_id: str
    metadata: Mapping[str, MetadataValue]


@event_type("SessionMetadataChanged", version=1)
class SessionMetadataChanged(Event):
    """Metadata keys were set (``changed``) and/or removed (``removed``)."""

    changed: Mapping[str, MetadataValue]
    removed: tuple[str, ...] = ()


@event_type("AgentAttached", version=1)
class AgentAttached(Event):
    """An agent (bot, client, bridge...) joined the session."""

    agent_id: str
    kind: str
    name: str


@event_type("AgentDetached", version=1)
class AgentDetached(Event):
    """An agent left the session (its cursors were removed just before)."""

    agent_id: str
    reason: str


@event_type("CursorAdded", version=1)
class CursorAdded(Event):
    """An agent opened a region of interest: ``axes`` over ``[start, end]``."""

    agent_id: str
    cursor_id: str
    axes: tuple[str, ...]
    start: float
    end: float


@event_type("CursorMoved", version=1)
class CursorMoved(Event):
    """A cursor now covers ``axes`` over ``[start, end]``."""

    agent_id: str
    cursor_id: str
    axes: tuple[str, ...]
    start: float
    end: float


@event_type("CursorRemoved", version=1)
class CursorRemoved(Event):
    """A cursor was closed."""

    agent_id: str
    cursor_id: str


@event_type("PolicyChanged", version=1)
class PolicyChanged(Event):
    """The session's policy was replaced.

    Version 1 is a placeholder: a policy id and opaque rule strings. Policy
    semantics (statements, effects, conditions) arrive with a later version
    and an upcaster from this one.
    """

    policy_id: str
    rules: tuple[str, ...]


@event_type("SessionEnded", version=1)
class SessionEnded(Event):
    """The session was closed; every agent was detached just before."""

    reason: str


SESSION_EVENTS: tuple[type[Event], ...] = (
    SessionStarted,
    SessionMetadataChanged,
    AgentAttached,
    AgentDetached,
    CursorAdded,
    CursorMoved,
    CursorRemoved,
    PolicyChanged,
    SessionEnded,
)
