"""The envelope: an event plus who, when, why, and where in the log."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime

from plantangenet.events.base import Event


def new_id() -> str:
    """A fresh random id (32 hex characters), used for events and commands."""
    return uuid.uuid4().hex


def utc_now() -> datetime:
    """The current time as an aware UTC datetime, at microsecond precision."""
    return datetime.now(UTC)


@dataclasses.dataclass(frozen=True, slots=True)
class Envelope:
    """One event as it travels to and from the log.

    ``agent_id`` is the agent on whose behalf the command was issued (``None``
    for the session's owner); the agent an event is *about* is in the event.
    ``causation_id`` is the id of the command that produced the event;
    ``correlation_id`` ties together everything one original request caused.
    ``sequence`` is the JetStream stream sequence, known once stored.
    """

    event: Event
    session_id: str
    event_id: str
    causation_id: str
    correlation_id: str
    occurred_at: datetime
    agent_id: str | None = None
    sequence: int | None = None

    @property
    def type_name(self) -> str:
        """The stable type name of the event."""
        return self.event.type_name

    def stored_at(self, sequence: int) -> Envelope:
        """This envelope with the stream sequence the log gave it."""
        return dataclasses.replace(self, sequence=sequence)
