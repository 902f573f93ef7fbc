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
class Authorization:
    """Why a command was let through: the policy decision per resource.

    ``statements[i]`` is the id of the statement that allowed
    ``resources[i]`` (``None`` when the session's owner issued the command).
    """

    action: str
    resources: tuple[str, ...]
    statements: tuple[str | None, ...]
    policy_version: int


@dataclasses.dataclass(frozen=True, slots=True)
class Envelope:
    """One event as it travels to and from the log.

    ``agent_id`` is the agent on whose behalf the command was issued (``None``
    for the session's owner); the agent an event is *about* is in the event.
    ``causation_id`` is the id of the command that produced the event;
    ``correlation_id`` ties together everything one original request caused.
    ``sequence`` is the JetStream stream sequence, known once stored.
    ``previous_hash`` is the SHA-256 of the session's previous stored event
    (empty for the first): the events of a session form a hash chain.
    ``authorization`` (on the first event of a command) records the policy
    decision that let the command through. ``digest`` is the SHA-256 of this
    envelope's own encoding, known once encoded or read (not compared).
    """

    event: Event
    session_id: str
    event_id: str
    causation_id: str
    correlation_id: str
    occurred_at: datetime
    agent_id: str | None = None
    sequence: int | None = None
    previous_hash: bytes = b""
    authorization: Authorization | None = None
    digest: bytes = dataclasses.field(default=b"", compare=False, repr=False)

    @property
    def type_name(self) -> str:
        """The stable type name of the event."""
        return self.event.type_name

    def stored_at(self, sequence: int, digest: bytes | None = None) -> Envelope:
        """This envelope with the stream sequence the log gave it (and its digest)."""
        return dataclasses.replace(
            self, sequence=sequence, digest=self.digest if digest is None else digest
        )
