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
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from typing import Any

import pykka

from plantangenet.actors.agent import (
    Agent,
    Drowsy,
    retire,
)
from plantangenet.actors.compose import DEFAULT_COMPOSITOR_THREADS as DEFAULT_COMPOSITOR_THREADS
from plantangenet.actors.compose import DEFAULT_COMPOSITOR_TIMEOUT as DEFAULT_COMPOSITOR_TIMEOUT
from plantangenet.actors.compose import MAX_COMPOSE_ATTEMPTS as MAX_COMPOSE_ATTEMPTS
from plantangenet.actors.compose import default_compositor_pool as default_compositor_pool
from plantangenet.actors.messages import COMMAND_ID as COMMAND_ID
from plantangenet.actors.messages import DEFAULT_AGENT_IDLE_TIMEOUT as DEFAULT_AGENT_IDLE_TIMEOUT
from plantangenet.actors.messages import DEFAULT_MAX_BATCH as DEFAULT_MAX_BATCH
from plantangenet.actors.messages import AgentFactory as AgentFactory
from plantangenet.actors.messages import Asleep as Asleep
from plantangenet.actors.messages import CommandKey as CommandKey
from plantangenet.actors.messages import CommandResult as CommandResult
from plantangenet.actors.messages import Execute as Execute
from plantangenet.actors.messages import ExecuteMany as ExecuteMany
from plantangenet.actors.messages import HookFailure as HookFailure
from plantangenet.actors.messages import Inspect as Inspect
from plantangenet.actors.messages import OnChange as OnChange
from plantangenet.actors.messages import PassivateIfIdle as PassivateIfIdle
from plantangenet.actors.messages import ReadState as ReadState
from plantangenet.actors.messages import (
    _Appended,
    _Composed,
    _ComposeTimedOut,
    _Composing,
    _fail,
    _Pending,
    _Reap,
    _Redecide,
    _resolve,
    _SummariseRefusals,
)
from plantangenet.actors.pool import PooledRef
from plantangenet.actors.refusals import RefusalLimit, RefusalMeter
from plantangenet.actors.replies import Reply
from plantangenet.actors.session_deciding import _SessionDeciding
from plantangenet.actors.session_storing import _SessionStoring
from plantangenet.actors.turns import Turns
from plantangenet.domain.commands import (
    AcceptChem,
    AddCursor,
    AttachAgent,
    BindAgent,
    ChangeMetadata,
    Command,
    DepositDust,
    DetachAgent,
    GrantDust,
    GrantRole,
    MoveCursor,
    QueryChem,
    QueryCursor,
    RefuseChem,
    RemoveCursor,
    RevokeChem,
    RevokeRole,
)
from plantangenet.domain.decide import (
    DEFAULT_LIMITS,
    Limits,
)
from plantangenet.domain.disclosure import Sample
from plantangenet.domain.query_plan import Compositor
from plantangenet.errors import (
    AccessRefused,
    ActorStopped,
    InsufficientDust,
    PlantangenetError,
    RecordedRefusal,
)
from plantangenet.events.codec import EventCodec
from plantangenet.events.dust import ChargeRefused
from plantangenet.events.envelope import Envelope
from plantangenet.events.session import AccessDenied, AgentAttached
from plantangenet.log.journal import MAX_EVENTS_PER_APPEND, Journal
from plantangenet.log.loop import EventLoopThread
from plantangenet.projections.cursors import CursorIndex
from plantangenet.projections.session import SessionState

log = logging.getLogger("plantangenet.session")

#: The most commands one message may carry (a batch), or events an acknowledged group, for
#: the event loop to handle it itself (see ``SessionActor._takes_on_loop``).
ON_LOOP_AT_MOST = 16

#: The commands the loop may decide itself: those whose deciding costs about the same
#: whatever the request holds. Not a policy to parse (thousands of statements: tens of
#: milliseconds), prices, terms, a compositor, nor the end of a session (an event per
#: agent): those go to the session's thread, which shares the interpreter with the loop.
LOOP_COMMANDS: frozenset[type[Command]] = frozenset(
    {
        MoveCursor,
        AddCursor,
        RemoveCursor,
        ChangeMetadata,
        AttachAgent,
        DetachAgent,
        BindAgent,
        GrantRole,
        RevokeRole,
        DepositDust,
        GrantDust,
        QueryCursor,
        AcceptChem,
        RefuseChem,
        RevokeChem,
        QueryChem,
    }
)


class SessionActor(_SessionDeciding, _SessionStoring, pykka.ThreadingActor):
    """The actor that owns one session: decides, appends, evolves, notifies.

    :param session_id: the session (validated by the caller).
    :param loop: the event-loop thread owning the NATS connection.
    :param journal: the log.
    :param codec: encodes envelopes (size and type checks happen here).
    :param agent_factory: behaviour for agents attached without one.
    :param handle: the :class:`~plantangenet.actors.handle.SessionHandle` given to agents.
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

    actor_inbox: Turns

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
        self.actor_inbox.actor = self

    @staticmethod
    def _create_actor_inbox() -> Turns:
        """The inbox: :class:`~plantangenet.actors.turns.Turns`, which lets the event loop
        handle a message sent on its thread itself when the actor is idle and the message
        needs nothing the loop cannot give at once (see :meth:`_takes_on_loop`).

        pykka's hook for actor implementations; its inbox protocol is ``put``, ``get``
        and ``empty``. A wire command is two messages sent on the loop's thread (the
        command, then its append's acknowledgement): handled there, neither wakes the
        actor's thread, nor does its answer wake the loop.
        """
        return Turns()

    def _handle_receive(self, message: Any) -> Any:
        """pykka's dispatch of one message on the actor's thread, holding the turn."""
        inbox = self.actor_inbox
        with inbox.turn:
            try:
                return super()._handle_receive(message)
            finally:
                inbox.done()

    def _on_loop_thread(self) -> bool:
        return self.loop.in_loop_thread

    def _takes_on_loop(self, message: Any) -> bool:
        """Whether the loop may handle ``message`` itself, the actor being idle.

        Only what needs nothing but the actor's state and never waits: a command (not
        while the actor must catch up from the log first; a refusal that would ask the
        log whether the state is stale is decided again on the actor's thread; not while
        commands already wait for the append in flight: in a session many bots share,
        the actor's thread decides those in a run while the loop serves the transport,
        which measured faster at 100 bots than deciding each on the loop), and a
        successful append's acknowledgement unless it runs user code (on-change hooks,
        the agent factory of a newly attached agent), wakes waiting reads, or answers a
        command decided off the loop (whose caller may not expect the loop's thread). At
        most ``ON_LOOP_AT_MOST`` commands (or events acknowledged) at once, and only the
        commands in ``LOOP_COMMANDS``: a large batch (a bot's up to 256), a policy of
        thousands of statements or a large group commit is handled on the actor's thread,
        where it shares the interpreter with the loop instead of holding the loop for its
        whole length.
        """
        kind = type(message)
        if kind is Execute or kind is ExecuteMany:
            commands = (message.command,) if kind is Execute else message.commands
            return (
                len(commands) <= ON_LOOP_AT_MOST
                and all(type(command) in LOOP_COMMANDS for command in commands)
                and not self._queued
                and not self._needs_catch_up
                # a data query's first look at the cursors builds their index (all of them)
                and (self._cursor_index is not None or QueryCursor not in map(type, commands))
            )
        if kind is not _Appended or self.hooks or self._readers:
            return False
        outcome = message.outcome
        group = self._in_flight
        if (
            group is None
            or sum(len(pending.envelopes) for pending in group) > ON_LOOP_AT_MOST
            or not outcome.done()
            or outcome.cancelled()
            or outcome.exception() is not None
            or not all(pending.on_loop for pending in group)
            # the refusals queued behind it, answered once it is stored (see ``_flush``)
            or not all(pending.on_loop for pending in self._queued if pending.refused)
        ):
            return False
        return not any(type(e.event) is AgentAttached for e in outcome.result().envelopes)

    # -- lifecycle -----------------------------------------------------------

    def on_start(self) -> None:
        try:
            self._catch_up()
        except PlantangenetError as exc:  # retried, and reported, by the next command
            log.warning("session %s: rehydration failed: %s", self.session_id, exc)
        finally:
            self.actor_inbox.done()  # the loop may take turns from now on

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
            elif isinstance(message, _Redecide):
                self._execute(
                    message.command, message.reply, message.behaviour, composed=message.composed
                )
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
