"""What a session actor is told, and what it answers: its messages and command results.

The messages :class:`~plantangenet.actors.session.SessionActor` receives (``Execute``,
``ExecuteMany``, ``ReadState``, ``Inspect``, ``PassivateIfIdle``, and its own),
what it answers (:class:`CommandResult`, :class:`Asleep`, :class:`HookFailure`), and the
small helpers that resolve replies. Every public name is importable from
:mod:`plantangenet.actors.session` too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pykka

from plantangenet.actors.agent import (
    Agent,
)
from plantangenet.actors.replies import Batch, Reply
from plantangenet.domain.commands import (
    Command,
    DataQuery,
)
from plantangenet.domain.disclosure import Sample
from plantangenet.domain.query_plan import Plan
from plantangenet.errors import (
    CommandRejected,
    IdempotencyConflict,
    RecordedRefusal,
)
from plantangenet.events.envelope import Envelope
from plantangenet.log.journal import AppendResult
from plantangenet.projections.session import SessionState

if TYPE_CHECKING:  # it handles these messages (and imports this module)
    from plantangenet.actors.session import SessionActor

#: Command ids travel in NATS headers (Nats-Msg-Id): visible ASCII only.
COMMAND_ID = re.compile(r"[!-~]{1,128}")


#: The most events one group-commit append carries unless told otherwise (and the most
#: one command may write). Bigger groups share an append's fixed costs (~0.5 ms of
#: event-loop CPU, the thread hand-offs around its acknowledgement) among more
#: commands; JetStream takes up to 1,000 messages in an atomic batch.
DEFAULT_MAX_BATCH = 512


#: Marks an event that is about no agent in particular (it has no ``agent_id``).
_EVERYONE = object()


#: A command's idempotency key: the principal that sent it and its id.
CommandKey = tuple[str | None, str]


#: Called with every stored envelope, on the session actor's thread.
OnChange = Callable[[Envelope], None]


#: Makes the behaviour of an agent that has none given (e.g. after rehydration); an
#: agent whose behaviour does nothing (``None`` or the base :class:`Agent`) gets no actor.
AgentFactory = Callable[[str, str], Agent | None]  # (agent_id, kind) -> Agent


#: Seconds an agent actor may idle before it is passivated, unless told otherwise.
DEFAULT_AGENT_IDLE_TIMEOUT = 60.0


log = logging.getLogger("plantangenet.session")


@dataclasses.dataclass(frozen=True, slots=True)
class Asleep:
    """A passivated session's agents, handed to the actor that takes it up again.

    ``behaviours``: the agents with behaviour (their actors passivated, no teardown);
    ``bare``: the agents without (no actor). Neither is set up again.
    """

    behaviours: Mapping[str, Agent]
    bare: frozenset[str]


@dataclasses.dataclass(frozen=True, slots=True)
class CommandResult:
    """A command's outcome: the events it stored (empty never: refusals raise)."""

    command_id: str
    session_id: str
    events: tuple[Envelope, ...]
    #: True when the command had been stored before (a retry).
    duplicate: bool = False
    #: The data a query disclosed, shaped by policy (empty for other commands, and
    #: for a retried query: data is never stored, so a retry does not repeat it).
    samples: tuple[Sample, ...] = ()

    @property
    def first_sequence(self) -> int:
        """Stream sequence of the command's first event."""
        return self.events[0].sequence or 0 if self.events else 0

    @property
    def sequence(self) -> int:
        """Stream sequence of the command's last event."""
        return self.events[-1].sequence or 0 if self.events else 0


@dataclasses.dataclass(frozen=True, slots=True)
class HookFailure:
    """An on-change callback raised while handling a stored event."""

    sequence: int
    callback: str
    error: str


@dataclasses.dataclass(slots=True)
class _Pending:
    """A decided command until it is answered.

    Tuples rather than lists, and one reply field: hundreds of these live through a
    pipelined append, and every container in them is one more object the garbage
    collector tracks and traverses while they do.
    """

    command: Command
    #: What the command asks (see :func:`~plantangenet.domain.commands.fingerprint`).
    fingerprint: bytes
    envelopes: tuple[Envelope, ...]
    #: The encoding of each envelope.
    payloads: tuple[bytes, ...]
    #: SHA-256 of each payload (the hash chain's links, not computed twice).
    digests: tuple[bytes, ...]
    reply: Reply
    #: Replies of retries that arrived while the command was pending.
    joined: list[Reply] | None = None
    #: What a data query disclosed, handed to the caller once its events are stored.
    samples: tuple[Sample, ...] = ()
    #: A refusal decided while earlier commands were still unacknowledged: it stands
    #: if they are stored, and the command is decided again if their append fails.
    refused: CommandRejected | None = None
    #: Set on the command that ends an append group: the speculative state once its
    #: events were folded in (see ``_keep_decided`` and ``settled``).
    decided: SessionState | None = None
    #: Decided on the event loop's thread, for callers there only: its acknowledgement
    #: may then be handled there too (see ``SessionActor._takes_on_loop``).
    on_loop: bool = False

    @property
    def replies(self) -> list[Reply]:
        """Everyone waiting for this command's outcome."""
        return [self.reply] if self.joined is None else [self.reply, *self.joined]


@dataclasses.dataclass(frozen=True, slots=True)
class Execute:
    """Message: decide and store ``command``; the outcome goes to ``reply``."""

    command: Command
    reply: Reply
    behaviour: Agent | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ExecuteMany:
    """Message: :class:`Execute` each of ``commands`` in order; outcomes go to ``batch``."""

    commands: tuple[Command, ...]
    batch: Batch


@dataclasses.dataclass(frozen=True, slots=True)
class _Appended:
    #: The append's task, ended (its outcome read on the actor's thread).
    outcome: asyncio.Future[AppendResult]


@dataclasses.dataclass(slots=True)
class _Composing:
    """A data query whose compositor is answering on the compositor pool."""

    command: DataQuery
    fingerprint: bytes
    reply: Reply
    behaviour: Agent | None
    #: The plan the compositor was asked for, and how many times it was asked.
    plan: Plan
    attempt: int
    #: Identifies this ask: a late answer, or a timeout, of an earlier one is ignored.
    token: object
    #: Replies of retries that arrived while the compositor answered.
    joined: list[Reply] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True, slots=True)
class _Composed:
    """Message: the compositor answered (or failed) the query under ``key``."""

    key: CommandKey
    token: object
    answer: concurrent.futures.Future[list[Sample]]


@dataclasses.dataclass(frozen=True, slots=True)
class _ComposeTimedOut:
    """Message: the compositor of the query under ``key`` took too long."""

    key: CommandKey
    token: object


@dataclasses.dataclass(frozen=True, slots=True)
class _Answer:
    """What a compositor answered ``plan`` (its samples, or the failure to report)."""

    plan: Plan
    attempt: int
    answer: concurrent.futures.Future[list[Sample]]


class _Deferred(Exception):
    """The query went to its compositor; it is decided when the answer comes back."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Redecide:
    """Message: decide ``command`` again, on the actor's thread (a refusal decided on the
    loop's thread asks the log there whether the state it was decided on is stale)."""

    command: Command
    reply: Reply
    behaviour: Agent | None
    composed: _Answer | None


@dataclasses.dataclass(frozen=True, slots=True)
class _SummariseRefusals:
    """Message: record the refusals of ``principal`` counted since its last summary."""

    principal: str


@dataclasses.dataclass(frozen=True, slots=True)
class PassivateIfIdle:
    """Message: stop to be passivated if unused for ``timeout`` seconds with nothing to do.

    Nothing to do: no command or read pending, no agent actor running (its agents
    are all passivated or have none), no on-change hook, no refusals being counted.
    The actor then stops at once (nothing behind it in its inbox is lost: see
    :attr:`SessionActor.leftovers`) and calls its ``on_passivated``.
    """

    timeout: float


@dataclasses.dataclass(frozen=True, slots=True)
class _Reap:
    """Message: passivate the agent actors idle for longer than the timeout."""


@dataclasses.dataclass(frozen=True, slots=True)
class Inspect:
    """Message: run ``fn(actor)`` on the actor's thread; result to ``reply``."""

    fn: Callable[[SessionActor], Any]
    reply: concurrent.futures.Future[Any]


@dataclasses.dataclass(frozen=True, slots=True)
class ReadState:
    """Message: the state once it holds every event up to ``sequence``; to ``reply``.

    ``sequence`` is the session's last stream sequence as the log reported it when
    the read arrived: a reader then sees every command acknowledged before it asked,
    whichever process wrote it (see :meth:`SessionActor.state_at_least`).
    """

    sequence: int
    reply: concurrent.futures.Future[SessionState]


def _key(command: Command) -> CommandKey:
    return (command.principal, command.command_id)


def _conflict(command: Command) -> IdempotencyConflict:
    return IdempotencyConflict(
        f"command id {command.command_id!r} was used before for a command with other content "
        f"(this one: {type(command).__name__}); nothing was written: send it with a fresh id"
    )


def _agent_of(command: Command) -> str:
    return getattr(command, "agent_id", "") or ""


def _fail(reply: Reply, exc: BaseException) -> None:
    try:  # noqa: SIM105 - try costs less than contextlib.suppress, per command
        reply.set_exception(exc)
    except concurrent.futures.InvalidStateError:  # cancelled meanwhile
        pass


def _resolve(reply: Reply, result: Any) -> None:
    try:  # noqa: SIM105 - try costs less than contextlib.suppress, per command
        reply.set_result(result)
    except concurrent.futures.InvalidStateError:  # cancelled meanwhile
        pass


def _tell(ref: pykka.ActorRef[Any], message: Any) -> None:
    # If the actor stopped, on_stop already failed its pending replies.
    with contextlib.suppress(pykka.ActorDeadError):
        ref.tell(message)


def _unrecorded(refused: RecordedRefusal) -> RecordedRefusal:
    """``refused`` answered without being stored: its principal is over its refusal rate."""
    unrecorded = type(refused)(
        f"{refused} [not recorded: this principal's refusals in the session pass the rate "
        "recorded one by one; it is counted in the session's next RefusalsSuppressed]",
        event=refused.event,
    )
    unrecorded.event_recorded = False
    return unrecorded


def _log_summary_failure(outcome: concurrent.futures.Future[Any]) -> None:
    error = outcome.exception()
    if error is not None:
        log.info("a summary of suppressed refusals was not recorded: %s", error)
