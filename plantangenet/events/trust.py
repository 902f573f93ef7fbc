"""The events of a session's trust boundary: owners, agents' principals, refusals, quarantine.

A *principal* is who sent a command as the NATS server vouched for it
(``"<user>@<account>"``, or :data:`~plantangenet.events.envelope.OPERATOR` for the
process that runs the session); every envelope records the principal of the
command that caused it. These events record who may speak for the session and
for its agents, and what the session did about messages it could not read.
"""

from __future__ import annotations

from collections.abc import Mapping

from plantangenet.events.base import Event, event_type


@event_type("OwnerAdded", version=1)
class OwnerAdded(Event):
    """``principal`` became an owner: it may send commands in the owner form (no agent).

    The principal that starts a session is its first owner (its ``SessionStarted``
    envelope says who); the operator always is one.
    """

    principal: str


@event_type("OwnerRemoved", version=1)
class OwnerRemoved(Event):
    """``principal`` is no longer an owner of the session."""

    principal: str


@event_type("AgentBound", version=1)
class AgentBound(Event):
    """An owner bound ``agent_id`` to ``principal``: from now on only it speaks as the agent."""

    agent_id: str
    principal: str


@event_type("RefusalsSuppressed", version=1)
class RefusalsSuppressed(Event):
    """Refusals of ``principal`` that were counted instead of recorded.

    Each principal's refusals in a session are recorded one by one up to a bounded
    rate; past it they are answered but not stored, and summarised here (by the
    session itself) once per interval: ``count`` refusals over ``seconds``, by
    command name.
    """

    principal: str
    count: int
    commands: Mapping[str, int]
    seconds: float


@event_type("MessageQuarantined", version=1)
class MessageQuarantined(Event):
    """The message at stream ``sequence`` is not a valid event of this session: folds skip it.

    Written by an operator (``plantangenet quarantine``) when bytes that are not an
    event of the session's writer reached its log. The message stays in the log for
    forensics; ``problem`` is why it could not be read, ``reason`` the operator's note.
    """

    sequence: int
    problem: str
    reason: str


TRUST_EVENTS: tuple[type[Event], ...] = (
    OwnerAdded,
    OwnerRemoved,
    AgentBound,
    RefusalsSuppressed,
    MessageQuarantined,
)
