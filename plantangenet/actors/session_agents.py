"""The session actor's agents: starting, waking and putting them to sleep, and its hooks.

A base of :class:`~plantangenet.actors.session.SessionActor`: the agents attached to
the session run on the agent pool (started on attach, woken for an event about them,
reaped when idle, see passivation), and hooks are called with every stored event.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any

from plantangenet.actors.agent import (
    Agent,
    AgentActor,
    AgentContext,
    Drowsy,
    acts,
    agent_state,
    drowse,
    listens,
    passivate,
    retire,
)
from plantangenet.actors.messages import _EVERYONE, AgentFactory, OnChange, _Reap, _tell
from plantangenet.actors.pool import PooledRef
from plantangenet.events.base import Event
from plantangenet.events.session import AgentDetached, SessionEnded
from plantangenet.log.loop import EventLoopThread
from plantangenet.projections.agent import AgentState
from plantangenet.projections.session import SessionState

log = logging.getLogger("plantangenet.session")


class _SessionAgents:
    """The session actor's agents: starting, waking and putting them to sleep, and its hooks."""

    actor_ref: Any
    _active_at: dict[str, float]
    _attached: set[str]
    _behaviours: dict[str, Agent]
    _drowsing: set[str]
    _live: dict[str, Agent]
    _next_hook: int
    _reaping: bool
    _sleeping: dict[str, Agent]
    agent_factory: AgentFactory
    agent_idle_timeout: float | None
    agent_pool: concurrent.futures.Executor | None
    agents: dict[str, PooledRef]
    handle: Any
    hooks: dict[int, OnChange]
    loop: EventLoopThread
    session_id: str
    state: SessionState

    if TYPE_CHECKING:  # the actor's own

        def current_state(self) -> SessionState: ...

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
