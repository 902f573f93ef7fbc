"""The session actor: the single writer of one session's events.

Commands arrive as messages. For each, the actor *decides* against the state
its events fold into (plus the events it has decided but not yet seen
stored), encodes the resulting envelopes, and hands them to the journal on
the event-loop thread. Only when the log acknowledges them does it *evolve*
its state, tell the agents, run the on-change hooks and reply.

Appends are pipelined by group commit: while one append is in flight,
newly decided commands queue up and go out together as the next atomic
append, guarded by the sequence the previous one ended at. If an append
fails, the actor catches up from the log, answers each command of the failed
append (a command found in the log after all is a success), and decides the
queued commands again on the fresh state.

Every failure becomes a typed error on the caller's future. Nothing a caller
sends can stop the actor.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import itertools
import logging
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import pykka

from plantangenet.actors.agent import (
    Agent,
    AgentActor,
    AgentContext,
    Drowsy,
    acts,
    agent_state,
    drowse,
    listens,
    notify,
    passivate,
    retire,
)
from plantangenet.actors.future import ReplyFuture
from plantangenet.actors.pool import PooledRef
from plantangenet.actors.refusals import RefusalLimit, RefusalMeter
from plantangenet.actors.replies import Batch, Reply
from plantangenet.commands import (
    AttachAgent,
    Command,
    DataQuery,
    SummariseRefusals,
    fingerprint,
)
from plantangenet.decide import (
    DEFAULT_LIMITS,
    Limits,
    damage,
    decide_authorized,
    plan_query,
    show,
)
from plantangenet.disclosure import Sample
from plantangenet.errors import (
    AccessRefused,
    ActorStopped,
    CodecError,
    CommandRejected,
    CompositorFailed,
    IdempotencyConflict,
    InsufficientDust,
    InvalidCommand,
    JournalError,
    PlantangenetError,
    RecordedRefusal,
)
from plantangenet.events.base import Event
from plantangenet.events.codec import EventCodec
from plantangenet.events.dust import ChargeRefused
from plantangenet.events.envelope import OPERATOR, Authorization, Envelope, new_id, utc_now
from plantangenet.events.session import AccessDenied, AgentAttached, AgentDetached, SessionEnded
from plantangenet.journal import MAX_EVENTS_PER_APPEND, AppendResult, Journal
from plantangenet.loop import EventLoopThread
from plantangenet.projections.agent import AgentState
from plantangenet.projections.cursors import CursorIndex
from plantangenet.projections.session import SessionState, evolve, settled
from plantangenet.query_plan import Compositor, Plan, disclose
from plantangenet.session_replay import replay

log = logging.getLogger("plantangenet.session")

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

#: Seconds a compositor may take to answer a data query before the query is answered
#: ``CompositorFailed`` (nothing recorded), unless told otherwise.
DEFAULT_COMPOSITOR_TIMEOUT = 5.0
#: Threads of the process's shared compositor pool (runtimes usually bring their own).
DEFAULT_COMPOSITOR_THREADS = 8
#: How many times a data query is asked again when the state changed its plan (its
#: cursor moved, say) while its compositor answered, before it fails.
MAX_COMPOSE_ATTEMPTS = 3

_compositor_pool: concurrent.futures.ThreadPoolExecutor | None = None
_compositor_pool_lock = threading.Lock()


def default_compositor_pool() -> concurrent.futures.ThreadPoolExecutor:
    """The process's shared compositor threads (started on first use)."""
    global _compositor_pool
    with _compositor_pool_lock:
        if _compositor_pool is None:
            _compositor_pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=DEFAULT_COMPOSITOR_THREADS,
                thread_name_prefix="plantangenet-compositor",
            )
        return _compositor_pool


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
    #: What the command asks (see :func:`~plantangenet.commands.fingerprint`).
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
    outcome: concurrent.futures.Future[AppendResult]


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


class SessionActor(pykka.ThreadingActor):
    """The actor that owns one session: decides, appends, evolves, notifies.

    :param session_id: the session (validated by the caller).
    :param loop: the event-loop thread owning the NATS connection.
    :param journal: the log.
    :param codec: encodes envelopes (size and type checks happen here).
    :param agent_factory: behaviour for agents attached without one.
    :param handle: the :class:`~plantangenet.handle.SessionHandle` given to agents.
    :param max_batch: the most events one group-commit append carries (and one command
        may write); at most 1,000.
    :param compositors: the compositors this process provides, by name (data queries
        ask them; the session's log says which ones it coordinates with).
    :param refusal_limit: how fast each remote principal's refusals are recorded one by
        one; past it they are answered, counted, and summarised (``RefusalsSuppressed``).
    :param agent_idle_timeout: seconds an agent actor may go without an event (or a
        query of its state) before it is passivated: stopped without teardown, started
        again without setup when it is needed (``None``: never).
    :param asleep: the agents of this session passivated with its previous actor.
    :param agent_pool: the threads the agent actors run on (default: the process's
        shared pool, :func:`~plantangenet.actors.pool.default_pool`).
    :param on_passivated: called with the actor, on its thread, just before it stops to
        be passivated (``passivating`` set, ``asleep`` not yet) and once it stopped
        (``asleep`` set; see :class:`PassivateIfIdle`).
    :param compositor_pool: the threads compositors answer data queries on (default:
        the process's shared pool, :func:`default_compositor_pool`): never this actor's,
        so a slow compositor delays no other command of the session.
    :param compositor_timeout: seconds a compositor may take before its query is
        answered ``CompositorFailed`` (nothing recorded; ``None``: no limit).

    A data query (``QueryCursor``, ``DiscloseChem``) is decided in two steps. First it
    is planned on the state as decided so far (refusals, a missing compositor and a
    charge the payer cannot pay answer at once, as before), and the compositor is asked
    for the planned region on the compositor pool; the actor goes on deciding other
    commands meanwhile. When the answer comes back the query is decided again on the
    state as decided *then*: planned again (the agent may have detached, the cursor
    moved or gone, the policy or prices changed, the balance been spent) and, if the
    plan still asks the same compositor for the same region, the answer is shaped by
    the new plan and its ``DisclosureMade`` and charge are decided on that state. If
    the region changed, the compositor is asked again (at most
    ``MAX_COMPOSE_ATTEMPTS`` times). Its events are thus ordered after the commands
    decided while it waited. A compositor that raises, answers bad data or takes longer
    than ``compositor_timeout`` answers ``CompositorFailed``, recording nothing; a late
    answer is dropped (the thread it holds is freed only when the compositor returns).
    """

    #: How many recent commands (with their events) each actor keeps to answer retries
    #: at once; older retries are caught by JetStream's duplicate window. Bounds memory.
    remembered_commands = 1_000

    def __init__(
        self,
        session_id: str,
        *,
        loop: EventLoopThread,
        journal: Journal,
        codec: EventCodec,
        agent_factory: AgentFactory,
        handle: Any,
        max_batch: int = DEFAULT_MAX_BATCH,
        limits: Limits = DEFAULT_LIMITS,
        compositors: Mapping[str, Compositor] | None = None,
        refusal_limit: RefusalLimit | None = None,
        agent_idle_timeout: float | None = DEFAULT_AGENT_IDLE_TIMEOUT,
        asleep: Asleep | None = None,
        on_passivated: Callable[[SessionActor], None] | None = None,
        agent_pool: concurrent.futures.Executor | None = None,
        compositor_pool: concurrent.futures.Executor | None = None,
        compositor_timeout: float | None = DEFAULT_COMPOSITOR_TIMEOUT,
    ) -> None:
        super().__init__()
        self.compositor_pool = compositor_pool
        self.compositor_timeout = compositor_timeout
        #: Data queries whose compositor is answering, by key (retries join them).
        self._composing: dict[CommandKey, _Composing] = {}
        self.session_id = session_id
        self.agent_idle_timeout = agent_idle_timeout
        self.agent_pool = agent_pool
        self.loop = loop
        self.journal = journal
        self.codec = codec
        self.agent_factory = agent_factory
        self.handle = handle
        self.max_batch = min(max_batch, MAX_EVENTS_PER_APPEND)
        self.limits = limits
        self.compositors: Mapping[str, Compositor] = compositors if compositors is not None else {}
        #: Coverage lookups over the stored cursors: built from ``state`` on first use,
        #: then folded along with it (sessions nobody asks pay nothing for it).
        self._cursor_index: CursorIndex | None = None
        #: The fold of every event of this session the actor has seen stored.
        self.state = SessionState(session_id)
        #: ``state`` plus the events decided but not yet acknowledged.
        self._speculative = self.state
        self._queued: deque[_Pending] = deque()
        #: Events queued since the last group boundary, and the queued command holding
        #: the speculative state at the end of that open group (see ``_keep_decided``).
        self._group_events = 0
        self._group_end: _Pending | None = None
        self._in_flight: list[_Pending] | None = None
        #: Commands decided but not yet answered, by key (retries join them).
        self._pending: dict[CommandKey, _Pending] = {}
        #: Stored envelopes not yet handed to each agent actor (one message per append).
        self._outbox: dict[str, list[Envelope]] = {}
        self._needs_catch_up = True
        #: Recent commands' stored envelopes (the tuple their CommandResult shares), by
        #: key: a command id is an idempotency key of its principal only.
        self._results: OrderedDict[CommandKey, tuple[Envelope, ...]] = OrderedDict()
        self._refusals = RefusalMeter(refusal_limit or RefusalLimit())
        #: SHA-256 of the last stored event (the hash chain's head), and of the
        #: last decided one.
        self._last_hash = b""
        self._speculative_hash = b""
        self._behaviours: dict[str, Agent] = {}
        #: The running agent actors, their behaviours, and when each was last needed.
        self.agents: dict[str, PooledRef] = {}
        self._live: dict[str, Agent] = {}
        self._active_at: dict[str, float] = {}
        #: Live agents asked whether they are idle (see ``_reap``), not needed since.
        self._drowsing: set[str] = set()
        #: The behaviours of passivated agents (no actor until they are needed again).
        self._sleeping: dict[str, Agent] = dict(asleep.behaviours) if asleep else {}
        #: Every agent this actor took in: running, passivated, or without an actor.
        self._attached: set[str] = set(self._sleeping) | (asleep.bare if asleep else set())
        self._reaping = False
        #: Set when the actor stops to be passivated: its agents are passivated too.
        self.passivating = False
        self.asleep: Asleep | None = None
        self.on_passivated = on_passivated
        #: The messages found behind a passivation, for the actor taking the session up.
        self.leftovers: list[Any] = []
        #: When a command or a read last came (passivation waits for a quiet spell).
        self.used_at = time.monotonic()
        self.hooks: dict[int, OnChange] = {}
        self.hook_failures: list[HookFailure] = []
        self._next_hook = 0
        #: Reads waiting for this actor's own appends in flight (see ``_read_state``).
        self._readers: list[ReadState] = []

    # -- lifecycle -----------------------------------------------------------

    def on_start(self) -> None:
        try:
            self._catch_up()
        except PlantangenetError as exc:  # retried, and reported, by the next command
            log.warning("session %s: rehydration failed: %s", self.session_id, exc)

    def on_stop(self) -> None:
        if self.passivating:
            self._passivated()
            return
        stopped = ActorStopped(f"session {self.session_id} stopped")
        for pending in [*(self._in_flight or []), *self._queued]:
            for reply in pending.replies:
                _fail(reply, stopped)
        composing, self._composing = list(self._composing.values()), {}
        for asked in composing:
            for reply in [asked.reply, *asked.joined]:
                _fail(reply, stopped)
        readers, self._readers = self._readers, []
        for reader in readers:
            _fail(reader.reply, stopped)
        self._refuse_unhandled(stopped)
        for agent_id in list(self._sleeping):  # torn down on their own threads
            self._wake(agent_id)
        for agent in self.agents.values():
            retire(agent, "shutdown")
        self.agents.clear()
        self._live.clear()

    def _passivate_if_idle(self, message: PassivateIfIdle) -> None:
        if (
            time.monotonic() - self.used_at < message.timeout
            or self._in_flight is not None
            or self._queued
            or self._pending
            or self._composing
            or self._readers
            or self._outbox
            or self.agents
            or self.hooks
            or self._refusals.counting()
        ):
            return
        # The handle's door: nothing it sends can come in between the look and the stop.
        try:
            door: Any = self.handle._door
        except Exception:  # a handle without one (tests): no door to hold
            door = contextlib.nullcontext()
        with door:
            if not self.actor_inbox.empty():
                return
            self.passivating = True
            if self.on_passivated is not None:
                self.on_passivated(self)
            self._stop()  # at once: pykka refuses messages from now on (the handle revives)

    def _passivated(self) -> None:
        """Stopped to be passivated: hand over the agents (no teardown) and the leftovers."""
        bare = frozenset(self._attached - set(self._sleeping))
        self.asleep = Asleep(dict(self._sleeping), bare)
        self._sleeping.clear()
        while not self.actor_inbox.empty():  # sent just before the stop: not lost
            envelope = self.actor_inbox.get()
            if isinstance(envelope.message, (Execute, ExecuteMany, Inspect, ReadState)):
                self.leftovers.append(envelope.message)
        if self.on_passivated is not None:
            try:
                self.on_passivated(self)
            except Exception:  # pragma: no cover - a bug
                log.exception("session %s: on_passivated failed", self.session_id)

    def _refuse_unhandled(self, stopped: ActorStopped) -> None:
        """Answer the messages still in the inbox behind the stop with ``stopped``.

        pykka discards the messages an actor leaves unhandled when it stops, except
        the asks (which it fails with ``ActorDeadError``); commands and queries carry
        their own futures, which would wait forever. Once the actor counts as stopped
        pykka refuses new messages, so only a message whose sender checked just
        before can still arrive after this.
        """
        kept = []
        while not self.actor_inbox.empty():  # only this thread takes from the inbox
            envelope = self.actor_inbox.get()
            message = envelope.message
            if isinstance(message, (Execute, Inspect, ReadState)):
                _fail(message.reply, stopped)
            elif isinstance(message, ExecuteMany):
                for index in range(len(message.commands)):
                    _fail(message.batch.slot(index), stopped)
            else:
                kept.append(envelope)
        for envelope in kept:  # pykka answers the asks among them
            self.actor_inbox.put(envelope)

    def on_failure(self, *args: Any) -> None:  # pragma: no cover - last line of defence
        log.error("session %s actor failed: %r", self.session_id, args)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, (Execute, ExecuteMany, ReadState, Inspect)):
            self.used_at = time.monotonic()
        try:
            if isinstance(message, Execute):
                self._execute(message.command, message.reply, message.behaviour)
            elif isinstance(message, ExecuteMany):
                self._execute_many(message)
            elif isinstance(message, _Appended):
                self._appended(message.outcome)
            elif isinstance(message, _Composed):
                self._composed(message)
            elif isinstance(message, _ComposeTimedOut):
                self._compose_timed_out(message)
            elif isinstance(message, _SummariseRefusals):
                self._summarise_refusals(message.principal)
            elif isinstance(message, ReadState):
                self._read_state(message)
            elif isinstance(message, _Reap):
                self._reap()
            elif isinstance(message, Drowsy):
                self._drowsy(message)
            elif isinstance(message, PassivateIfIdle):
                self._passivate_if_idle(message)
            elif isinstance(message, Inspect):
                try:
                    _resolve(message.reply, message.fn(self))
                except Exception as exc:
                    _fail(message.reply, exc)
        except Exception:  # a bug; keep serving, and say so
            log.exception(
                "session %s: unexpected error handling a %s",
                self.session_id,
                type(message).__name__,
            )
            if isinstance(message, (Execute, ReadState)):
                _fail(message.reply, PlantangenetError("internal error; see the service log"))
        return None

    # -- deciding ------------------------------------------------------------

    def _execute_many(self, message: ExecuteMany) -> None:
        for index, command in enumerate(message.commands):
            reply = message.batch.slot(index)
            try:
                self._execute(command, reply, None)
            except Exception:  # a bug; answer this command and go on with the next
                log.exception("session %s: unexpected error in a batch", self.session_id)
                _fail(reply, PlantangenetError("internal error; see the service log"))

    def _execute(
        self,
        command: Command,
        reply: Reply,
        behaviour: Agent | None,
        rechecked: bool = False,
        composed: _Answer | None = None,
    ) -> None:
        if reply.done():  # cancelled by a caller who stopped waiting
            return
        if not isinstance(command, Command):
            _fail(reply, InvalidCommand(f"not a command: {type(command).__name__}"))
            return
        command_id = command.command_id
        if not isinstance(command_id, str) or not COMMAND_ID.fullmatch(command_id):
            _fail(
                reply,
                InvalidCommand("command_id must be 1-128 printable ASCII characters, no spaces"),
            )
            return
        principal = command.principal
        if type(principal) is not str:
            _fail(reply, InvalidCommand(f"principal must be a string, got {show(principal)}"))
            return
        if self._needs_catch_up:
            try:
                self._catch_up()
            except PlantangenetError as exc:
                _fail(reply, exc)
                return
        key = (principal, command_id)
        content = fingerprint(command)
        stored = self._results.get(key)
        if stored is not None:
            if stored[0].fingerprint and stored[0].fingerprint != content:
                _fail(reply, _conflict(command))
            else:
                self._answer(reply, command_id, stored, duplicate=True)
            return
        joined = self._pending.get(key)
        if joined is not None:
            if joined.fingerprint != content:
                _fail(reply, _conflict(command))
                return
            if joined.joined is None:
                joined.joined = []
            joined.joined.append(reply)
            return
        asked = self._composing.get(key)
        if asked is not None:
            if asked.fingerprint != content:
                _fail(reply, _conflict(command))
            else:
                asked.joined.append(reply)
            return
        samples: tuple[Sample, ...] = ()
        try:
            at = utc_now()
            authorization: Authorization | None
            try:
                if isinstance(command, DataQuery):
                    authorization, events, samples = self._query(
                        command, at, content, reply, behaviour, composed
                    )
                else:
                    authorization, events = decide_authorized(
                        self._speculative, command, now=at, limits=self.limits
                    )
            except RecordedRefusal as refused:  # recorded for the audit, then reported
                if principal != OPERATOR and not self._may_record(principal, command):
                    raise _unrecorded(refused) from None
                authorization, events = None, [refused.event]
            correlation = command.correlation_id or command_id
            envelopes = []
            payloads = []
            digests = []
            previous = self._speculative_hash
            first = content
            revision = self._speculative.event_count  # the session's events so far
            for event in events:
                revision += 1
                envelope = Envelope(  # positionally: binding keywords costs ~1 µs here
                    event,
                    self.session_id,
                    new_id(),  # event_id
                    command_id,  # causation_id
                    correlation,
                    at,  # occurred_at
                    command.issued_by,  # agent_id
                    None,  # sequence: given by the log
                    previous,  # previous_hash
                    authorization,
                    b"",  # digest: known once encoded
                    principal,
                    first,  # the command's fingerprint, on its first event
                    revision,  # the position in the session: the guard keeps it unique
                )
                authorization, first = None, b""  # recorded once, on the first event
                payload = self.codec.encode(envelope)
                previous = hashlib.sha256(payload).digest()
                envelopes.append(envelope)
                payloads.append(payload)
                digests.append(previous)
            if len(envelopes) > self.max_batch:
                raise InvalidCommand(
                    f"{type(command).__name__} would write {len(envelopes)} events; "
                    f"the limit is {self.max_batch} (one atomic append, the runtime's "
                    "max_batch): split the work, e.g. remove cursors or detach agents first"
                )
        except (CommandRejected, CodecError, CompositorFailed) as exc:
            depends_on_state = isinstance(exc, CommandRejected) and type(exc) is not InvalidCommand
            if depends_on_state and (self._in_flight is not None or self._queued):
                # Decided on a state that unacknowledged appends still have to confirm:
                # answer in order, after them (see _Pending.refused).
                assert isinstance(exc, CommandRejected)
                pending = _Pending(command, content, (), (), (), reply, refused=exc)
                self._queued.append(pending)
                self._pending[key] = pending
                self._flush()
                return
            unrecorded = isinstance(exc, RecordedRefusal) and not exc.event_recorded
            if depends_on_state and not rechecked and not unrecorded and self._stale():
                # Another writer moved the session on: decide again on the log's state
                # (the command may even be stored already, as a retry of it).
                self._execute(command, reply, behaviour, rechecked=True, composed=composed)
                return
            _fail(reply, exc)
            return
        except (TypeError, ValueError, AttributeError) as exc:  # wrongly typed fields
            _fail(reply, InvalidCommand(f"{type(command).__name__}: {exc}"))
            return
        except _Deferred:  # decided when its compositor answers (see _composed)
            return
        self._speculative_hash = previous
        if isinstance(command, AttachAgent) and behaviour is not None:
            self._behaviours[command.agent_id] = behaviour
        speculative = self._speculative
        for envelope in envelopes:
            speculative = evolve(speculative, envelope)
        self._speculative = speculative
        pending = _Pending(
            command,
            content,
            tuple(envelopes),
            tuple(payloads),
            tuple(digests),
            reply,
            samples=samples,
        )
        self._keep_decided(pending, speculative)
        self._queued.append(pending)
        self._pending[key] = pending
        self._flush()

    def _may_record(self, principal: str, command: Command) -> bool:
        """Whether a refusal of ``principal`` is recorded now (or only counted)."""
        record, first = self._refusals.admit(principal, type(command).__name__)
        if first:  # the first one counted since the last summary: summarise in an interval
            me = self.actor_ref
            self.loop.call_later(
                self._refusals.limit.interval, lambda: _tell(me, _SummariseRefusals(principal))
            )
        return record

    def _summarise_refusals(self, principal: str) -> None:
        summary = self._refusals.take(principal)
        if summary is None:
            return
        command = SummariseRefusals(
            refused=summary.principal,
            count=summary.count,
            commands=summary.commands,
            seconds=round(summary.seconds, 3),
        )
        outcome: ReplyFuture[Any] = ReplyFuture()
        outcome.add_done_callback(_log_summary_failure)
        self._execute(command, outcome, None)

    def _query(
        self,
        command: DataQuery,
        at: datetime,
        content: bytes,
        reply: Reply,
        behaviour: Agent | None,
        composed: _Answer | None,
    ) -> tuple[Authorization, list[Event], tuple[Sample, ...]]:
        """Plan a data query and shape its compositor's answer (see ``disclose``).

        Without an answer for the plan (``composed``) the compositor is asked on the
        compositor pool and ``_Deferred`` raised: the query is decided again, on the
        state of that moment, when the answer comes back (see :class:`SessionActor`).
        """
        state = self._speculative
        authorization, plan = plan_query(state, command, now=at)
        compositor = self.compositors.get(plan.compositor)
        if compositor is None:
            raise CompositorFailed(
                f"compositor {plan.compositor!r} is registered with session {self.session_id!r} "
                "but this process does not provide it (Plantangenet.add_compositor)"
            )
        if (
            composed is None
            or composed.plan.compositor != plan.compositor
            or composed.plan.region != plan.region
        ):
            attempt = 1 if composed is None else composed.attempt + 1
            if attempt > MAX_COMPOSE_ATTEMPTS:
                raise CompositorFailed(
                    f"the region of this query changed {MAX_COMPOSE_ATTEMPTS} times while "
                    f"compositor {plan.compositor!r} answered it (is its cursor moving?)"
                )
            self._compose(command, content, reply, behaviour, plan, compositor, attempt)
            raise _Deferred
        try:
            answer = composed.answer.result()  # raises the compositor's CompositorFailed
        except concurrent.futures.CancelledError:  # the runtime is closing
            raise CompositorFailed(f"compositor {plan.compositor!r} was stopped") from None
        try:
            disclosed = disclose(state, plan, answer, max_samples=self.limits.max_samples_per_query)
        except (TypeError, ValueError, AttributeError, ArithmeticError) as exc:  # bad samples
            raise CompositorFailed(
                f"compositor {plan.compositor!r} returned bad data: {show(exc)}"
            ) from None
        return authorization, list(disclosed.events), disclosed.samples

    def _compose(
        self,
        command: DataQuery,
        content: bytes,
        reply: Reply,
        behaviour: Agent | None,
        plan: Plan,
        compositor: Compositor,
        attempt: int,
    ) -> None:
        """Ask ``compositor`` for ``plan``'s region off this thread; the answer comes back
        as ``_Composed`` (or, first, ``_ComposeTimedOut``)."""
        key = _key(command)
        token = object()
        pool = self.compositor_pool or default_compositor_pool()
        most = self.limits.max_samples_per_query
        answer = pool.submit(_ask, compositor, plan, most)
        self._composing[key] = _Composing(command, content, reply, behaviour, plan, attempt, token)
        me = self.actor_ref
        answer.add_done_callback(lambda f: _tell(me, _Composed(key, token, f)))
        timeout = self.compositor_timeout
        if timeout is not None:
            self.loop.call_later(timeout, lambda: _tell(me, _ComposeTimedOut(key, token)))

    def _composed(self, message: _Composed) -> None:
        """A compositor answered: decide its query now, on the state of this moment."""
        asked = self._composing.get(message.key)
        if asked is None or asked.token is not message.token:
            return  # timed out (answered already), or the actor was restarted
        del self._composing[message.key]
        composed = _Answer(asked.plan, asked.attempt, message.answer)
        replies = [r for r in [asked.reply, *asked.joined] if not r.done()]
        if not replies:
            return  # everyone stopped waiting: nothing is recorded
        first, rest = replies[0], replies[1:]
        self._execute(asked.command, first, asked.behaviour, composed=composed)
        for reply in rest:
            # Joined to the stored (or queued) outcome; or, if it was answered at once (a
            # failure), decided the same way on the same answer: not asked again.
            self._execute(
                asked.command, reply, asked.behaviour, composed=composed if first.done() else None
            )

    def _compose_timed_out(self, message: _ComposeTimedOut) -> None:
        asked = self._composing.get(message.key)
        if asked is None or asked.token is not message.token:
            return  # answered in time
        del self._composing[message.key]
        error = CompositorFailed(
            f"compositor {asked.plan.compositor!r} did not answer within "
            f"{self.compositor_timeout} s; nothing was recorded"
        )
        for reply in [asked.reply, *asked.joined]:
            _fail(reply, error)

    def _keep_decided(self, pending: _Pending, speculative: SessionState) -> None:
        """Pack queued commands into append groups as they are decided.

        Groups are filled greedily up to ``max_batch`` events. The command that ends a
        group (so far) holds the speculative state after it, which ``settled`` reuses
        once the group is stored; ``_flush`` sends everything up to the next such
        command. No other command keeps a state: one per pipelined command would outlive
        many GC passes and make them costly.
        """
        size = len(pending.envelopes)
        if self._group_events + size > self.max_batch:
            self._group_events = size  # a new group: the open one's end keeps its state
        else:
            self._group_events += size
            if self._group_end is not None:
                self._group_end.decided = None
        pending.decided = speculative
        self._group_end = pending

    def _flush(self) -> None:
        if self._in_flight is not None:
            return
        while self._queued and self._queued[0].refused is not None:
            # Everything before it is stored: the state it was refused on is the log's.
            self._refuse(self._queued.popleft())
        if not self._queued:
            return
        # The next group: through the first command that ends one (see _keep_decided).
        group: list[_Pending] = []
        while self._queued and (not group or group[-1].decided is None):
            group.append(self._queued.popleft())
        self._in_flight = group
        if group[-1] is self._group_end:  # the next command starts a group
            self._group_events, self._group_end = 0, None
        future = self.loop.submit(
            self.journal.append_payloads(
                self.session_id,
                [envelope for pending in group for envelope in pending.envelopes],
                [payload for pending in group for payload in pending.payloads],
                expected_sequence=self.state.sequence,
                digests=[digest for pending in group for digest in pending.digests],
            )
        )
        me = self.actor_ref
        future.add_done_callback(lambda f: _tell(me, _Appended(f)))

    # -- storing ---------------------------------------------------------------

    def _appended(self, outcome: concurrent.futures.Future[AppendResult]) -> None:
        group, self._in_flight = self._in_flight or [], None
        for pending in group:
            self._pending.pop(_key(pending.command), None)
        try:
            result = outcome.result()
        except BaseException as exc:
            self._append_failed(group, exc)
        else:
            stored = result.envelopes
            decided = next((p.decided for p in reversed(group) if p.decided is not None), None)
            state = None if decided is None else settled(self.state, decided, stored)
            for envelope in stored:
                self._stored(envelope, fold=state is None)
            if state is not None:  # what folding them again would give, without the work
                self.state = state
            else:  # the speculative states of queued commands lack these sequences
                self._refold_queued()
            self._deliver()
            for pending in group:
                if pending.refused is not None:
                    self._refuse(pending, unindexed=True)
                    continue
                command_id = pending.command.command_id
                envelopes = self._results.get(_key(pending.command), ())
                for reply in pending.replies:
                    self._answer(reply, command_id, envelopes, samples=pending.samples)
        self._flush()
        if self._readers:
            readers, self._readers = self._readers, []
            for reader in readers:
                self._read_state(reader)

    def _refold_queued(self) -> None:
        """Fold the queued commands' events again, on the state the log acknowledged."""
        speculative = self.state
        for pending in self._queued:
            for envelope in pending.envelopes:
                speculative = evolve(speculative, envelope)
            if pending.decided is not None:
                pending.decided = speculative
        self._speculative = speculative

    def _refuse(self, pending: _Pending, unindexed: bool = False) -> None:
        """Answer a refusal that waited for the appends before it."""
        if not unindexed:
            self._pending.pop(_key(pending.command), None)
        assert pending.refused is not None
        for reply in pending.replies:
            _fail(reply, pending.refused)

    def _append_failed(self, group: list[_Pending], exc: BaseException) -> None:
        error = (
            exc if isinstance(exc, PlantangenetError) else JournalError(f"append failed: {exc!r}")
        )
        requeue, self._queued = self._queued, deque()
        self._group_events, self._group_end = 0, None
        for pending in requeue:
            self._pending.pop(_key(pending.command), None)
        self._speculative = self.state
        self._speculative_hash = self._last_hash
        try:
            self._catch_up()
        except PlantangenetError as catch_up_error:
            log.warning("session %s: catch-up failed: %s", self.session_id, catch_up_error)
        for pending in group:
            if pending.refused is not None:
                continue  # decided again below, on the state the log really has
            command_id = pending.command.command_id
            envelopes = self._results.get(_key(pending.command))
            failure: PlantangenetError = error
            if envelopes is not None and envelopes[0].fingerprint not in (b"", pending.fingerprint):
                envelopes = None  # the log holds another command under this key
                failure = _conflict(pending.command)
            for reply in pending.replies:
                if envelopes is not None:  # stored after all (lost ack, retry)
                    self._answer(
                        reply, command_id, envelopes, duplicate=True, samples=pending.samples
                    )
                else:
                    _fail(reply, failure)
        # Queued commands were decided on a state that is gone: decide again, in order.
        for pending in [*(p for p in group if p.refused is not None), *requeue]:
            behaviour = self._behaviours.get(_agent_of(pending.command))
            for reply in pending.replies:
                self._execute(pending.command, reply, behaviour)

    def _stale(self) -> bool:
        """Whether the log holds events this actor has not seen (then catch up).

        Asked only before refusing a command, and only with nothing in flight: a
        single writer pays one round trip per refusal, a second writer stops
        refusing on a state that is gone.
        """
        if self._in_flight is not None or self._queued:
            return False
        try:
            last = self.loop.run(self.journal.last_sequence(self.session_id))
            if last == self.state.sequence:
                return False
            self._catch_up()
        except PlantangenetError:
            return False
        return True

    def _catch_up(self) -> None:
        """Fold the events stored after ``state`` (other writers', lost acks')."""
        self._needs_catch_up = True
        state = self.loop.run(
            replay(self.journal, self.session_id, state=self.state, observe=self._remember)
        )
        self.state = self._speculative = state
        self._speculative_hash = self._last_hash
        self._needs_catch_up = False
        # Bring the agent actors in line with the log (rehydration, other writers).
        for agent_id in set(state.agents) - self._attached:
            view = state.agents[agent_id]
            self._start_agent(agent_id, view.kind, view.name, origin="rehydrated")
        for agent_id in self._attached - set(state.agents):
            self._leave(agent_id, "detached")

    def _read_state(self, message: ReadState) -> None:
        """Answer a :class:`ReadState`: at once, after a catch-up, or after the append in flight.

        A state already at ``message.sequence`` is answered as it is. A state behind it
        lacks events another writer stored: with nothing of this actor's in flight the
        actor catches up from the log first. With an append in flight it cannot (the
        catch-up would fold what that append stores, and its acknowledgement again), so
        the read waits for the acknowledgement: the append either stores (the state moves
        on) or fails on the other writer's events (the actor catches up); the read is
        then tried again. Either way it is answered only with a state at least as new as
        ``message.sequence``, or with the typed error of a catch-up that failed.
        """
        reply = message.reply
        if reply.done():  # cancelled by a caller who stopped waiting
            return
        if self.state.sequence < message.sequence and (self._in_flight is not None or self._queued):
            self._readers.append(message)
            return
        try:
            state = self.state_at_least(message.sequence)
        except Exception as exc:
            _fail(reply, exc)
        else:
            _resolve(reply, state)

    def state_at_least(self, sequence: int) -> SessionState:
        """:meth:`current_state`, caught up from the log first if it is older than ``sequence``.

        Call it only with no append of this actor in flight (``ReadState`` sees to
        that). Raises the typed error of a catch-up that fails, and ``JournalError`` if
        the log ends before ``sequence`` after all (it held a later event a moment ago).
        """
        if self.state.sequence < sequence and not self._needs_catch_up:
            self._catch_up()
        state = self.current_state()
        if state.sequence < sequence:
            raise JournalError(
                f"session {self.session_id}: the log held an event at sequence {sequence}, "
                f"but a catch-up read it only to {state.sequence}"
            )
        return state

    @property
    def cursor_index(self) -> CursorIndex:
        """Which cursors cover an axis at a time (see :class:`CursorIndex`), as stored."""
        if self._cursor_index is None:
            self._cursor_index = CursorIndex.from_state(self.current_state())
        return self._cursor_index

    def current_state(self) -> SessionState:
        """The state, caught up first if rehydration (or the last catch-up) failed.

        Raises the typed error of a catch-up that fails again: an actor that could
        not read its log never answers with an empty or stale state as if it were
        the session's.
        """
        if self._needs_catch_up:
            self._catch_up()
        damaged = damage(self.state)
        if damaged is not None:
            raise damaged
        return self.state

    def _remember(self, envelope: Envelope) -> None:
        self._last_hash = envelope.digest
        if self._cursor_index is not None:
            self._cursor_index.apply(envelope)
        results = self._results
        key = (envelope.principal, envelope.causation_id)
        envelopes = results.get(key)
        if envelopes is None:
            results[key] = (envelope,)
            if len(results) > self.remembered_commands:
                results.popitem(last=False)
        else:  # a command's later events (rare; at most max_batch of them)
            results[key] = (*envelopes, envelope)

    def _stored(self, envelope: Envelope, fold: bool = True) -> None:
        event = envelope.event
        # An event about an agent (its ``agent_id``) goes to that agent, one about no agent
        # to all of them: a lookup, not a pass over every attached agent.
        about = getattr(event, "agent_id", _EVERYONE)
        if self._sleeping:  # woken on the state before the event (it is told of it)
            self._wake_for(event, about)
        if fold:
            self.state = evolve(self.state, envelope)
        self._remember(envelope)
        if isinstance(event, AgentAttached):
            self._start_agent(event.agent_id, event.kind, event.name, origin="attached")
        outbox = self._outbox
        if about is _EVERYONE:
            for agent_id in self.agents:
                outbox.setdefault(agent_id, []).append(envelope)
        elif about in self.agents:
            outbox.setdefault(about, []).append(envelope)
        if isinstance(event, AgentDetached):
            self._deliver(event.agent_id)
            self._leave(event.agent_id, event.reason)
        elif isinstance(event, SessionEnded):  # everyone still attached leaves with the end
            for agent_id in event.detached:
                self._deliver(agent_id)
                self._leave(agent_id, "session ended")
        if not self.hooks:
            return
        for hook in list(self.hooks.values()):
            try:
                hook(envelope)
            except Exception as exc:
                name = getattr(hook, "__qualname__", repr(hook))
                log.exception("session %s: on-change hook %s failed", self.session_id, name)
                self.hook_failures.append(HookFailure(envelope.sequence or 0, name, repr(exc)))
                del self.hook_failures[:-1000]

    def _deliver(self, agent_id: str | None = None) -> None:
        """Hand the agents (or one agent) the envelopes stored for them so far."""
        now = time.monotonic()
        for target in [agent_id] if agent_id is not None else list(self._outbox):
            envelopes = self._outbox.pop(target, None)
            agent = self.agents.get(target)
            if envelopes and agent is not None:
                notify(agent, envelopes)
                self._active_at[target] = now
                self._drowsing.discard(target)

    # -- agents and hooks -------------------------------------------------------

    def _start_agent(self, agent_id: str, kind: str, name: str, *, origin: str) -> None:
        if agent_id in self._attached:
            return
        self._attached.add(agent_id)
        behaviour = self._behaviours.pop(agent_id, None)
        if behaviour is None:
            try:
                behaviour = self.agent_factory(agent_id, kind)
            except Exception:
                log.exception("session %s: agent factory failed for %s", self.session_id, agent_id)
                behaviour = None
        if behaviour is None or not acts(behaviour):
            return  # nothing to run: no actor, its state is folded from the session's
        context = AgentContext(self.session_id, agent_id, kind, name, self.handle, origin)
        state = AgentState(agent_id, kind, name, attached=True, sequence=self.state.sequence)
        state = dataclasses.replace(
            state,
            cursors={c.cursor_id: c for c in self.state.cursors_of(agent_id)},
        )
        ref = AgentActor.start(context, behaviour, state, pool=self.agent_pool)
        self._run(agent_id, ref, behaviour)

    def _run(self, agent_id: str, ref: PooledRef, behaviour: Agent) -> None:
        self.agents[agent_id] = ref
        self._live[agent_id] = behaviour
        self._active_at[agent_id] = time.monotonic()
        if not self._reaping and self.agent_idle_timeout is not None:
            self._reaping = True
            me = self.actor_ref
            self.loop.call_later(self.agent_idle_timeout / 2, lambda: _tell(me, _Reap()))

    def _leave(self, agent_id: str, reason: str) -> None:
        """The agent is detached: its actor (woken first if passivated) is torn down."""
        if agent_id in self._sleeping:
            self._wake(agent_id)
        self._attached.discard(agent_id)
        self._live.pop(agent_id, None)
        self._active_at.pop(agent_id, None)
        self._drowsing.discard(agent_id)
        leaving = self.agents.pop(agent_id, None)
        if leaving is not None:
            retire(leaving, reason)

    # -- passivation -------------------------------------------------------------

    def _wake_for(self, event: Event, about: object) -> None:
        """Wake the passivated agents that ``event`` is for (before it is folded)."""
        sleeping = self._sleeping
        if about is _EVERYONE:
            if isinstance(event, SessionEnded):  # each is told of the end, then torn down
                for agent_id in event.detached:
                    if agent_id in sleeping:
                        self._wake(agent_id)
            for agent_id in [a for a, b in sleeping.items() if listens(b)]:
                self._wake(agent_id)
        elif about in sleeping:
            assert isinstance(about, str)
            if isinstance(event, AgentDetached) or listens(sleeping[about]):
                self._wake(about)

    def _wake(self, agent_id: str) -> PooledRef:
        """Start a passivated agent's actor again: its state folded from the session's,
        no setup (it is not a new attach)."""
        behaviour = self._sleeping.pop(agent_id)
        try:
            state = agent_state(self.state, agent_id)
        except KeyError:  # detached meanwhile (another writer): woken to be torn down
            state = AgentState(agent_id, sequence=self.state.sequence)
        context = AgentContext(
            self.session_id, agent_id, state.kind, state.name, self.handle, "woken"
        )
        ref = AgentActor.start(context, behaviour, state, woken=True, pool=self.agent_pool)
        self._run(agent_id, ref, behaviour)
        return ref

    def _reap(self) -> None:
        """Ask the agent actors idle past the timeout whether they are done (see ``_drowsy``)."""
        self._reaping = False
        timeout = self.agent_idle_timeout
        if timeout is None or not self.agents:
            return
        now = time.monotonic()
        me = self.actor_ref
        for agent_id, at in self._active_at.items():
            if now - at >= timeout and agent_id not in self._drowsing:
                self._drowsing.add(agent_id)
                drowse(self.agents[agent_id], me)
        self._reaping = True
        self.loop.call_later(timeout / 2, lambda: _tell(me, _Reap()))

    def _drowsy(self, message: Drowsy) -> None:
        """An agent actor handled everything it was sent: passivate it unless sent more since.

        The session actor is the only one that tells an agent actor of events, so one that
        answered :class:`Drowsy` and was sent nothing since has nothing left to do.
        """
        agent_id = message.agent_id
        if agent_id not in self._drowsing:
            return  # needed again meanwhile (or detached)
        self._drowsing.discard(agent_id)
        ref = self.agents.get(agent_id)
        if ref is None or ref.actor_urn != message.ref.actor_urn:
            return
        del self.agents[agent_id]
        del self._active_at[agent_id]
        self._sleeping[agent_id] = self._live.pop(agent_id)
        passivate(ref)

    def agent(self, agent_id: str) -> PooledRef | AgentState:
        """An attached agent's actor (woken if passivated), or the state of one without.

        ``KeyError`` if the agent is not attached.
        """
        if agent_id in self._sleeping:
            return self._wake(agent_id)
        ref = self.agents.get(agent_id)
        if ref is not None:
            self._active_at[agent_id] = time.monotonic()
            self._drowsing.discard(agent_id)
            return ref
        return agent_state(self.current_state(), agent_id)

    @property
    def sleeping(self) -> list[str]:
        """The agents whose actors are passivated, by id."""
        return sorted(self._sleeping)

    def add_hook(self, hook: OnChange) -> int:
        """Register an on-change callback; returns a key for :meth:`remove_hook`."""
        self._next_hook += 1
        self.hooks[self._next_hook] = hook
        return self._next_hook

    def remove_hook(self, key: int) -> None:
        """Unregister an on-change callback (unknown keys are ignored)."""
        self.hooks.pop(key, None)

    def _answer(
        self,
        reply: Reply,
        command_id: str,
        envelopes: tuple[Envelope, ...],
        duplicate: bool = False,
        samples: tuple[Sample, ...] = (),
    ) -> None:
        """Resolve ``reply`` with the command's stored outcome (its events or its refusal)."""
        if len(envelopes) == 1:
            refusal = refusal_of(envelopes[0])
            if refusal is not None:
                _fail(reply, refusal)
                return
        result = CommandResult(command_id, self.session_id, tuple(envelopes), duplicate, samples)
        _resolve(reply, result)


def refusal_of(envelope: Envelope) -> RecordedRefusal | None:
    """The error a stored refusal event (``AccessDenied``, ``ChargeRefused``) reports."""
    event = envelope.event
    sequence = envelope.sequence or 0
    if isinstance(event, AccessDenied):
        return AccessRefused(
            f"{event.agent_id or 'the owner form'} may not {event.action} on {event.resource}: "
            f"{event.reason} (policy version {event.policy_version})",
            event=event,
            sequence=sequence,
        )
    if isinstance(event, ChargeRefused):
        return InsufficientDust(
            f"{event.account} holds {event.balance} dust; {event.action} costs {event.amount}",
            event=event,
            sequence=sequence,
        )
    return None


def _key(command: Command) -> CommandKey:
    return (command.principal, command.command_id)


def _conflict(command: Command) -> IdempotencyConflict:
    return IdempotencyConflict(
        f"command id {command.command_id!r} was used before for a command with other content "
        f"(this one: {type(command).__name__}); nothing was written: send it with a fresh id"
    )


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


def _ask(compositor: Compositor, plan: Plan, most: int) -> list[Sample]:
    """``compositor``'s answer to ``plan`` (on a compositor thread), at most ``most`` + 1
    samples of it (more is refused by ``disclose``); its failures as ``CompositorFailed``."""
    try:
        answer = compositor.query(plan.region)
    except Exception as exc:
        raise CompositorFailed(f"compositor {plan.compositor!r} failed: {show(exc)}") from None
    try:
        return list(itertools.islice(answer, most + 1))
    except Exception as exc:  # not iterable, or it raised while iterated
        raise CompositorFailed(
            f"compositor {plan.compositor!r} returned bad data: {show(exc)}"
        ) from None


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
