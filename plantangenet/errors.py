"""The typed errors of plantangenet.

Every failure that reaches a caller is a :class:`PlantangenetError`. Each
subclass names one cause, so callers (and the wire protocol, later) can tell
a refused command from a decoding problem from a lost race on the log.
"""

from __future__ import annotations

from typing import Any


class PlantangenetError(Exception):
    """Base class of every error raised by plantangenet."""

    #: A short, stable, machine-readable code (used in CLI and wire replies).
    code: str = "error"


class EmbeddedServerError(PlantangenetError):
    """The embedded ``nats-server`` could not be found, started or stopped."""

    code = "embedded_server"


class CodecError(PlantangenetError):
    """An event could not be encoded or decoded (see the subclasses)."""

    code = "codec_error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class EncodeError(CodecError):
    """An event holds a value that cannot be written to the log."""

    code = "encode_error"


class DecodeError(CodecError):
    """Bytes from the log (or a caller) could not be turned into an event.

    Raised for malformed msgpack, an unknown event type, a version with no
    upcaster, and missing or mistyped fields. :attr:`field` names the
    offending field (dotted path) when there is one.
    """

    code = "decode_error"


class UnknownEventType(DecodeError):
    """The event type name is not registered."""

    code = "unknown_event_type"


class UnknownEventVersion(DecodeError):
    """The event version is newer than the code, or older with no upcaster."""

    code = "unknown_event_version"


class PayloadTooLarge(EncodeError):
    """An encoded event exceeds the configured size limit."""

    code = "payload_too_large"


class CommandRejected(PlantangenetError):
    """The session refused a command; nothing was written to the log."""

    code = "command_rejected"


class InvalidCommand(CommandRejected):
    """The command itself is malformed (bad id, wrong type, bad range...)."""

    code = "invalid_command"


class LogDamaged(DecodeError, CommandRejected):
    """The session's log holds a message that is not a valid event of the session.

    The session takes no command, and answers no state, until an operator
    quarantines the message (``plantangenet quarantine SESSION SEQ``);
    :attr:`sequence` is its stream sequence. Nothing was written. (A
    :class:`DecodeError`, as the log could not be read; and a
    :class:`CommandRejected`, as a command is refused for it.)
    """

    code = "log_damaged"

    def __init__(self, message: str, *, sequence: int = 0) -> None:
        super().__init__(message)
        self.sequence = sequence

    @classmethod
    def at(cls, session_id: str, sequence: int, problem: object) -> LogDamaged:
        """The error for the message at ``sequence`` of ``session_id``, and what to do."""
        return cls(
            f"session {session_id!r} cannot be used: the message at stream sequence "
            f"{sequence} is not a valid event of it ({problem}); an operator may quarantine "
            f"it: plantangenet quarantine {session_id} {sequence}",
            sequence=sequence,
        )


class InvalidPolicy(InvalidCommand):
    """A policy document is malformed (unknown effect, empty actions, bad pattern...)."""

    code = "invalid_policy"


class RecordedRefusal(CommandRejected):
    """A refusal the session writes to its log before reporting it (see the subclasses).

    :attr:`event` is the event recorded for it; :attr:`sequence` is where it
    was stored (0 until it is).
    """

    code = "refused"
    #: False when the refusal was answered but not stored: its principal was over the
    #: rate at which a session records refusals (then a ``RefusalsSuppressed`` counts it).
    event_recorded = True

    def __init__(self, message: str, *, event: Any = None, sequence: int = 0) -> None:
        super().__init__(message)
        self.event = event
        self.sequence = sequence


class AccessRefused(RecordedRefusal):
    """The session's policy refused the command; the refusal is in the log.

    :attr:`event` is the ``AccessDenied`` event recorded for it (agent,
    action, resource, statement, reason, policy version).
    """

    code = "access_refused"


class IdempotencyConflict(CommandRejected):
    """The sender already used this command id for a command with other content.

    A command id is an idempotency key of its principal: sending the same id again
    is a retry, answered with the first outcome, only if the command is the same.
    Nothing was written; send the new command with a fresh id.
    """

    code = "idempotency_conflict"


class InsufficientDust(RecordedRefusal):
    """The paying account's dust does not cover the command's price; nothing was done.

    :attr:`event` is the ``ChargeRefused`` event recorded for it (account,
    price, balance, action).
    """

    code = "insufficient_dust"


class LimitExceeded(CommandRejected):
    """The command would take the session past a configured limit (see ``decide.Limits``)."""

    code = "limit_exceeded"


class SessionNotStarted(CommandRejected):
    """The session has no ``SessionStarted`` event yet."""

    code = "session_not_started"


class SessionAlreadyStarted(CommandRejected):
    """``StartSession`` was sent to a session that already exists."""

    code = "session_already_started"


class SessionClosed(CommandRejected):
    """The session has ended; it accepts no further commands."""

    code = "session_ended"


class UnknownAgent(CommandRejected):
    """The command names an agent that is not attached to the session."""

    code = "unknown_agent"


class AgentAlreadyAttached(CommandRejected):
    """The agent id is already attached to the session."""

    code = "agent_already_attached"


class UnknownCursor(CommandRejected):
    """The cursor does not exist, or belongs to another agent."""

    code = "unknown_cursor"


class CursorAlreadyExists(CommandRejected):
    """A cursor with this id already exists in the session."""

    code = "cursor_already_exists"


class UnknownCompositor(CommandRejected):
    """The session does not coordinate with a compositor of that name."""

    code = "unknown_compositor"


class CompositorFailed(PlantangenetError):
    """A compositor could not answer (it raised, returned bad data, or is not in this process).

    Nothing was written and no dust was charged.
    """

    code = "compositor_failed"


class UnknownChem(CommandRejected):
    """The session has no chem of that id."""

    code = "unknown_chem"


class ChemInactive(CommandRejected):
    """The chem is not in a state that allows this (not accepted yet, refused or revoked)."""

    code = "chem_inactive"


class JournalError(PlantangenetError):
    """The log could not complete an operation (server, stream or timeout)."""

    code = "journal_error"


class ConcurrencyError(JournalError):
    """Another writer appended to the session first; nothing was written.

    :attr:`expected` is the sequence the writer assumed was last,
    :attr:`actual` the one the server reported (when it says).
    """

    code = "concurrency_conflict"

    def __init__(self, message: str, *, expected: int, actual: int | None = None) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class StorageExhausted(JournalError):
    """The log has no room for an append: nothing of it was stored.

    Either the stream is full (its ``max_bytes``/``max_msgs``; it refuses new
    events rather than drop history), or the server's JetStream store is out of
    space (its ``max_file_store``, or the disk). Retrying does not help until an
    operator makes room; every event stored before is still there.
    """

    code = "storage_exhausted"


class TooManyReaders(JournalError):
    """The stream holds as many consumers as it may (1,000 by default): a read could not start.

    Readers delete their consumers when they finish; this is transient unless
    something keeps creating consumers. Retry later.
    """

    code = "too_many_readers"


class DuplicateCommand(JournalError):
    """The command id was already stored (a retry); nothing new was written."""

    code = "duplicate_command"


class TooManyRequests(PlantangenetError):
    """The service holds as many of this principal's requests as it queues; nothing was done.

    Each principal's requests wait in a queue of their own, served in turn with
    everyone else's: a principal that sends faster than the service answers it
    fills only its own queue. Retry after the replies to the requests in flight.
    """

    code = "too_many_requests"


class UnknownSession(PlantangenetError):
    """No events exist for this session id."""

    code = "unknown_session"


class UnknownPosition(PlantangenetError):
    """A position names no point of the session's history.

    An event id that is not one of the session's events, a sequence or a time
    before its first event, or text that is no position at all.
    """

    code = "unknown_position"


class SessionExists(PlantangenetError):
    """The session already has events (e.g. the target of a fork)."""

    code = "session_exists"


class ActorStopped(PlantangenetError):
    """The actor that should handle the request is not running."""

    code = "actor_stopped"


class ReplyTooLarge(PlantangenetError):
    """A reply would exceed the largest message the NATS connection may carry.

    Only a ``state`` reply can grow that large (a session's metadata and agents
    are bounded per event, not in total). :attr:`sequence` is the stream
    sequence the state was at: fold the session's events from the log up to
    it to get the same state (:meth:`plantangenet.wire.client.BotClient.state` does).
    """

    code = "reply_too_large"

    def __init__(self, message: str, *, sequence: int = 0) -> None:
        super().__init__(message)
        self.sequence = sequence
