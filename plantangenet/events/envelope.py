"""The envelope: an event plus who, when, why, and where in the log."""

from __future__ import annotations

import dataclasses
import itertools
import os
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from plantangenet.events.base import Event

_PROCESS = os.urandom(8).hex()
_COUNTER = itertools.count(int.from_bytes(os.urandom(4)))


def new_id() -> str:
    """A fresh unique id (32 hex characters) for events and commands.

    64 random bits chosen once per process, then a counter: unique without a
    system call per id (``os.urandom`` costs ~10 µs on some machines).
    """
    return f"{_PROCESS}{next(_COUNTER) & 0xFFFFFFFFFFFFFFFF:016x}"


def utc_now() -> datetime:
    """The current time as an aware UTC datetime, at microsecond precision."""
    return datetime.now(UTC)


#: The principal of the process that runs a session: its in-process API, and connections
#: in the session service's own NATS account. Remote principals always hold an ``@``.
OPERATOR = "operator"


@dataclasses.dataclass(frozen=True, slots=True)
class Authorization:
    """Why a command was let through: the policy decision per resource.

    ``statements[i]`` is the id of the statement that allowed
    ``resources[i]`` (``None`` when no statement was needed: a command in the owner
    form, or an agent detaching itself).
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

    ``principal`` is who sent the command, as the NATS server vouched for it:
    ``"<user>@<account>"`` for a request that came through the session service
    from another account, :data:`OPERATOR` for the process that runs the session
    (its in-process API, and connections in the service's own account), and
    ``None`` where it is unknown (events stored before principals were recorded,
    envelope format 1). ``fingerprint`` (on the first event of a command) is a
    digest of the command's content: the same principal reusing a command id with
    other content is refused (see :func:`plantangenet.decide.fingerprint`).
    ``revision`` is the event's position within its session: 1 for the first
    event, 2 for the next, with no gap -- the same in every copy of the session
    (a fork, another stream), where stream sequences differ. The session's
    single writer assigns it (the log's optimistic-concurrency guard makes it
    unique); readers fill it in for events stored before it was recorded.
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
    principal: str | None = None
    fingerprint: bytes = dataclasses.field(default=b"", repr=False)
    revision: int | None = None

    @property
    def type_name(self) -> str:
        """The stable type name of the event."""
        return self.event.type_name

    def with_revision(self, revision: int) -> Envelope:
        """This envelope numbered ``revision`` in its session (for events stored unnumbered)."""
        return dataclasses.replace(self, revision=revision)

    def stored_at(self, sequence: int, digest: bytes | None = None) -> Envelope:
        """This envelope with the stream sequence the log gave it (and its digest)."""
        return Envelope(
            self.event,
            self.session_id,
            self.event_id,
            self.causation_id,
            self.correlation_id,
            self.occurred_at,
            self.agent_id,
            sequence,
            self.previous_hash,
            self.authorization,
            self.digest if digest is None else digest,
            self.principal,
            self.fingerprint,
            self.revision,
        )


class CheckedEvent(NamedTuple):
    """A stored envelope's values, every one checked as decoding checks it, with neither
    the envelope nor its event built (:meth:`~plantangenet.events.codec.EventCodec.checked`):
    for folds that need only these (a replay's cursor moves, the audit's entries).

    ``occurred_at`` is in microseconds since the epoch (what :class:`Envelope` holds as a
    ``datetime``); ``fields`` has the event's fields as attributes, with the values the
    decoded event would have; ``sequence`` is the stream sequence it was read at.
    """

    type_name: str
    session_id: str
    event_id: str
    agent_id: str | None
    causation_id: str
    correlation_id: str
    occurred_at: int
    authorization: Authorization | None
    revision: int | None
    sequence: int | None
    fields: Any

    @property
    def occurred(self) -> datetime:
        """``occurred_at`` as the :class:`Envelope` holds it (a UTC ``datetime``)."""
        return _EPOCH + timedelta(microseconds=self.occurred_at)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
