"""The session actor's storing: appends acknowledged, events folded and delivered, reads.

A base of :class:`~plantangenet.actors.session.SessionActor`: what happens once the
log answers an append (the commands' replies, the events folded into the state and
handed to agents and hooks), catching up with events other writers stored, and
reading the state at least as recent as a sequence.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from typing import TYPE_CHECKING

from plantangenet.actors.agent import (
    Agent,
    notify,
)
from plantangenet.actors.messages import (
    _EVERYONE,
    CommandKey,
    HookFailure,
    OnChange,
    ReadState,
    _agent_of,
    _Answer,
    _conflict,
    _fail,
    _key,
    _Pending,
    _resolve,
)
from plantangenet.actors.pool import PooledRef
from plantangenet.actors.replies import Reply
from plantangenet.actors.session_agents import _SessionAgents
from plantangenet.domain.commands import (
    Command,
)
from plantangenet.domain.decide import (
    damage,
)
from plantangenet.domain.disclosure import Sample
from plantangenet.errors import (
    JournalError,
    PlantangenetError,
)
from plantangenet.events.envelope import Envelope
from plantangenet.events.session import AgentAttached, AgentDetached, SessionEnded
from plantangenet.log.journal import AppendResult, Journal
from plantangenet.log.loop import EventLoopThread
from plantangenet.log.session_replay import replay
from plantangenet.log.tail_replay import command_key, replay_tail
from plantangenet.projections.cursors import CursorIndex
from plantangenet.projections.session import SessionState, evolve, settled

log = logging.getLogger("plantangenet.session")


class _SessionStoring(_SessionAgents):
    """The session actor's storing: appends acknowledged, events folded and delivered, reads."""

    remembered_commands: int
    _active_at: dict[str, float]
    _attached: set[str]
    _behaviours: dict[str, Agent]
    _cursor_index: CursorIndex | None
    _drowsing: set[str]
    _group_end: _Pending | None
    _group_events: int
    _in_flight: list[_Pending] | None
    _last_hash: bytes
    _needs_catch_up: bool
    _outbox: dict[str, list[Envelope]]
    _pending: dict[CommandKey, _Pending]
    _queued: deque[_Pending]
    _readers: list[ReadState]
    _results: OrderedDict[CommandKey, tuple[Envelope, ...]]
    _sleeping: dict[str, Agent]
    _speculative: SessionState
    _speculative_hash: bytes
    agents: dict[str, PooledRef]
    hook_failures: list[HookFailure]
    hooks: dict[int, OnChange]
    journal: Journal
    loop: EventLoopThread
    session_id: str
    state: SessionState

    if TYPE_CHECKING:  # the actor's own

        def _answer(
            self,
            reply: Reply,
            command_id: str,
            envelopes: tuple[Envelope, ...],
            duplicate: bool = False,
            samples: tuple[Sample, ...] = (),
        ) -> None: ...

        def _execute(
            self,
            command: Command,
            reply: Reply,
            behaviour: Agent | None,
            rechecked: bool = False,
            composed: _Answer | None = None,
        ) -> None: ...

        def _flush(self) -> None: ...

    # -- storing ---------------------------------------------------------------

    def _appended(self, outcome: asyncio.Future[AppendResult]) -> None:
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
        if self._cursor_index is None:  # what it remembers needs only the last commands
            catching_up = replay_tail(
                self.journal,
                self.session_id,
                state=self.state,
                observe=self._remember,
                commands=self.remembered_commands,
            )
        else:  # a cursor index kept up to date needs every event
            catching_up = replay(
                self.journal, self.session_id, state=self.state, observe=self._remember
            )
        state = self.loop.run(catching_up)
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
        key = command_key(envelope)
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
