"""The events of a session's life: start, metadata, agents, cursors, policy, end.

Each is an immutable value with a stable type name and a schema version.
The envelope (see :mod:`plantangenet.events.envelope`) carries who, when,
why and where in the log; these classes carry only what happened.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from plantangenet.events.base import EVENTS, Event, event_type
from plantangenet.events.chem import CHEM_EVENTS
from plantangenet.events.disclosure import DISCLOSURE_EVENTS
from plantangenet.events.dust import DUST_EVENTS
from plantangenet.events.fields import MetadataValue
from plantangenet.events.policy_values import Statement
from plantangenet.events.trust import TRUST_EVENTS


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


@event_type("AgentAttached", version=2)
class AgentAttached(Event):
    """An agent (bot, client, bridge...) joined the session.

    ``principal`` (version 2) is the principal the agent is bound to: only it may
    issue commands as the agent. Version 1 events are upcast with ``None``: the
    principal is unknown, and only the operator speaks for such an agent until an
    owner binds it (``AgentBound``).
    """

    agent_id: str
    kind: str
    name: str
    principal: str | None = None


def _agent_attached_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "principal": None}


EVENTS.add_upcaster("AgentAttached", 1, _agent_attached_v1_to_v2)


@event_type("AgentDetached", version=1)
class AgentDetached(Event):
    """An agent left the session (its cursors were removed just before)."""

    agent_id: str
    reason: str


@event_type("CursorAdded", version=2)
class CursorAdded(Event):
    """An agent opened a region of interest: ``axes`` over ``[start, end]``.

    ``resolution`` (time units between samples; ``None``: the compositor's
    own) was added in version 2; version 1 events are upcast with ``None``.
    """

    agent_id: str
    cursor_id: str
    axes: tuple[str, ...]
    start: float
    end: float
    resolution: float | None = None


@event_type("CursorMoved", version=2)
class CursorMoved(Event):
    """A cursor now covers ``axes`` over ``[start, end]`` at ``resolution``.

    The event carries the whole new region, so it records a move (new
    interval or axes) and a resize (longer, shorter, finer, coarser) alike.
    """

    agent_id: str
    cursor_id: str
    axes: tuple[str, ...]
    start: float
    end: float
    resolution: float | None = None


def _cursor_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "resolution": None}


EVENTS.add_upcaster("CursorAdded", 1, _cursor_v1_to_v2)
EVENTS.add_upcaster("CursorMoved", 1, _cursor_v1_to_v2)


@event_type("CursorRemoved", version=1)
class CursorRemoved(Event):
    """A cursor was closed."""

    agent_id: str
    cursor_id: str


@event_type("PolicyChanged", version=3)
class PolicyChanged(Event):
    """The session's policy changed; ``statements`` is the complete new policy.

    ``added`` and ``removed`` name the statement ids the change added and
    removed (a replacement lists both). Each ``PolicyChanged`` increments the
    policy version. Version 1 was a placeholder (a policy id and opaque rule
    strings); it is upcast to an empty statement list. Version 3 added each
    statement's optional ``disclosure``; a version 2 statement has none.
    """

    statements: tuple[Statement, ...]
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()


def _policy_changed_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    # v1 held {"policy_id", "rules"}: opaque placeholder strings with no meaning.
    return {"statements": [], "added": [], "removed": []}


def _policy_changed_v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    return data  # statements without "disclosure" decode with None: nothing to add


EVENTS.add_upcaster("PolicyChanged", 1, _policy_changed_v1_to_v2)
EVENTS.add_upcaster("PolicyChanged", 2, _policy_changed_v2_to_v3)


@event_type("IdentityBound", version=1)
class IdentityBound(Event):
    """The session's connection was bound to an identity (its trust context)."""

    identity_id: str
    display_name: str
    attributes: Mapping[str, MetadataValue]


@event_type("RoleGranted", version=1)
class RoleGranted(Event):
    """An attached agent was given a role inside the session."""

    agent_id: str
    role: str


@event_type("RoleRevoked", version=1)
class RoleRevoked(Event):
    """An agent's role was taken away."""

    agent_id: str
    role: str


@event_type("AccessDenied", version=1)
class AccessDenied(Event):
    """The policy refused a command; nothing else was written for it.

    ``agent_id`` is who tried (``None``: the session owner), ``command`` the
    command's name, ``statement_id`` the deny statement that decided
    (``None``: no statement allowed it, default deny).
    """

    agent_id: str | None
    command: str
    action: str
    resource: str
    statement_id: str | None
    reason: str
    policy_version: int


@event_type("SessionEnded", version=2)
class SessionEnded(Event):
    """The session was closed, and every agent still attached detached with it.

    ``detached`` (version 2) names those agents: their cursors and roles end with
    them, in this one event, so a session of any size ends in one command. Version
    1 wrote a ``CursorRemoved`` and an ``AgentDetached`` for each before it (so a
    session with more cursors and agents than one append holds could not end); it
    is upcast with ``detached=()``, its own events having detached everyone.
    """

    reason: str
    detached: tuple[str, ...] = ()


def _session_ended_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "detached": []}


EVENTS.add_upcaster("SessionEnded", 1, _session_ended_v1_to_v2)


SESSION_EVENTS: tuple[type[Event], ...] = (
    SessionStarted,
    SessionMetadataChanged,
    AgentAttached,
    AgentDetached,
    CursorAdded,
    CursorMoved,
    CursorRemoved,
    PolicyChanged,
    IdentityBound,
    RoleGranted,
    RoleRevoked,
    AccessDenied,
    SessionEnded,
    *DISCLOSURE_EVENTS,
    *DUST_EVENTS,
    *CHEM_EVENTS,
    *TRUST_EVENTS,
)
"""Every event type a session's log holds."""
