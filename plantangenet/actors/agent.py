"""Agents: the behaviour users write, and the actor that runs it.

An :class:`AgentActor` is started when its agent is attached to a session
(or when a session with attached agents is rehydrated) and stopped when the
agent is detached, the session ends, or the runtime shuts down. It calls the
behaviour's :meth:`Agent.setup` once when it starts and :meth:`Agent.teardown`
once when it stops. Its state is the fold of the session events about it.
A behaviour that raises is reported, never allowed to kill the actor.

Agent actors have no thread of their own: each is a mailbox drained on a shared
pool of threads (:mod:`plantangenet.actors.pool`), one message at a time, in
order; the hooks of one agent never run concurrently.

An agent whose behaviour does nothing (the base :class:`Agent`: remote bots
attached through the service) gets no actor at all: its state is folded from
the session's on demand. An actor left idle is *passivated*: stopped without
:meth:`Agent.teardown` (passivation is not detachment), and started again, its
state folded from the session's, without :meth:`Agent.setup`, when an event
for it arrives or its state is asked for.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pykka

from plantangenet.actors.pool import PooledActor, PooledRef
from plantangenet.events.envelope import Envelope, utc_now
from plantangenet.projections.agent import AgentState, evolve_agent
from plantangenet.projections.session import CursorView, SessionState

if TYPE_CHECKING:
    from plantangenet.actors.handle import SessionHandle

log = logging.getLogger("plantangenet.agent")


@dataclasses.dataclass(frozen=True, slots=True)
class AgentContext:
    """What an agent's behaviour knows about where it runs."""

    session_id: str
    agent_id: str
    kind: str
    name: str
    #: The session the agent is attached to; commands sent through it should
    #: set ``issued_by=agent_id``.
    session: SessionHandle
    #: ``"attached"`` for a new agent, ``"rehydrated"`` when brought back from the log
    #: (``"woken"`` while an actor runs again after passivation: no setup then).
    origin: str
    #: What :meth:`now` reads (the agent's actor sets it; a replay sets its own).
    clock: Callable[[], datetime] = utc_now

    def now(self) -> datetime:
        """The agent's time (timezone-aware UTC): read it instead of the wall clock.

        In ``on_event`` it is when the event being handled occurred (its
        ``occurred_at``: the session's clock when it decided the command), live and
        when the agent is replayed against the log (:mod:`plantangenet.timetravel.botreplay`),
        so a replayed agent decides and stamps as it did. Elsewhere (``setup``,
        ``teardown``, ``on_change`` callbacks, other threads) it is the wall clock
        live, and the time of the event being replayed in a replay.
        """
        return self.clock()


class Agent:
    """Base class for agent behaviour. Every hook is optional.

    Hooks run on a thread of the agents' pool, one at a time per agent, in order.
    """

    def setup(self, context: AgentContext) -> None:
        """Called once when the agent is attached (or rehydrated by a new session actor);
        not when its actor is woken after passivation."""

    def teardown(self, context: AgentContext, reason: str) -> None:
        """Called once when the agent leaves (detached, session ended, shutdown); not when
        its actor is passivated."""

    def on_event(self, context: AgentContext, envelope: Envelope) -> None:
        """Called for each stored event about this agent or about no agent in particular
        (session-wide events), in order, after the agent's state was updated.

        Events about *other* agents are not delivered here; register an ``on_change``
        callback on the session handle to see every event.
        """


def _overrides(behaviour: Agent, hook: str) -> bool:
    handler = getattr(behaviour, hook, None)
    return getattr(handler, "__func__", handler) is not getattr(Agent, hook)


def listens(behaviour: Agent) -> bool:
    """Whether ``behaviour`` has an ``on_event`` of its own (the base one does nothing)."""
    return _overrides(behaviour, "on_event")


def acts(behaviour: Agent) -> bool:
    """Whether ``behaviour`` does anything (overrides a hook): only then it needs an actor."""
    return any(_overrides(behaviour, hook) for hook in ("setup", "teardown", "on_event"))


def agent_state(session: SessionState, agent_id: str) -> AgentState:
    """The agent's state folded from the session's (``KeyError`` if it is not attached).

    What an actor's fold of the events about the agent holds, for an agent without an
    actor (no behaviour, or passivated); ``sequence`` is the session's.
    """
    view = session.agents[agent_id]
    cursors: Mapping[str, CursorView] = {c.cursor_id: c for c in session.cursors_of(agent_id)}
    state = AgentState(agent_id, view.kind, view.name, attached=True, sequence=session.sequence)
    return dataclasses.replace(state, cursors=cursors)


@dataclasses.dataclass(frozen=True, slots=True)
class _Stored:
    envelopes: list[Envelope]


@dataclasses.dataclass(frozen=True, slots=True)
class _Stop:
    reason: str
    #: Passivation: stop without teardown (the agent stays attached).
    passivate: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Drowsy:
    """The agent actor's answer to a passivation request: it handled everything before it."""

    agent_id: str
    ref: PooledRef


@dataclasses.dataclass(frozen=True, slots=True)
class _Drowse:
    """Asks the agent actor to tell ``session`` once it handled everything before this."""

    session: pykka.ActorRef[Any]


class AgentActor(PooledActor):
    """The actor of one attached agent (a mailbox on the agents' thread pool)."""

    def __init__(
        self,
        context: AgentContext,
        behaviour: Agent,
        state: AgentState,
        woken: bool = False,
        pool: concurrent.futures.Executor | None = None,
    ) -> None:
        super().__init__(pool)
        #: The event ``on_event`` is handling, on the thread handling it (for ``context.now()``).
        self._handling = threading.local()
        if context.clock is utc_now:
            context = dataclasses.replace(context, clock=self._now)
        self.context = context
        self.behaviour = behaviour
        self.state = state
        self.failures: list[str] = []
        self._stop_reason = "shutdown"
        #: Started again after passivation: setup ran already.
        self._woken = woken
        #: Stopped by passivation: no teardown.
        self._passivated = False
        self._listens = listens(behaviour)

    def _now(self) -> datetime:
        handled: datetime | None = getattr(self._handling, "at", None)
        return handled if handled is not None else utc_now()

    def _call(self, hook: str, *args: Any) -> None:
        try:
            getattr(self.behaviour, hook)(self.context, *args)
        except Exception as exc:
            message = f"agent {self.context.agent_id}: {hook} failed: {exc!r}"
            log.exception(message)
            self.failures.append(message)

    def on_start(self) -> None:
        if not self._woken:
            self._call("setup")

    def on_stop(self) -> None:
        if not self._passivated:
            self._call("teardown", self._stop_reason)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _Stored):
            for envelope in message.envelopes:
                self.state = evolve_agent(self.state, envelope)
                if self._listens:
                    self._handling.at = envelope.occurred_at
                    try:
                        self._call("on_event", envelope)
                    finally:
                        self._handling.at = None
        elif isinstance(message, _Stop):
            self._stop_reason = message.reason
            self._passivated = message.passivate
            self.stop()
        elif isinstance(message, _Drowse):
            with contextlib.suppress(pykka.ActorDeadError):
                message.session.tell(Drowsy(self.context.agent_id, self.actor_ref))
        elif message == "state":
            return self.state
        elif message == "failures":
            return list(self.failures)
        return None


def notify(agent: PooledRef, envelopes: list[Envelope]) -> None:
    """Tell an agent actor about stored events, in order (never blocks, never raises)."""
    with contextlib.suppress(pykka.ActorDeadError):
        agent.tell(_Stored(envelopes))


def retire(agent: PooledRef, reason: str) -> None:
    """Ask an agent actor to tear down and stop, after the messages it already has."""
    with contextlib.suppress(pykka.ActorDeadError):
        agent.tell(_Stop(reason))


def passivate(agent: PooledRef) -> None:
    """Ask an agent actor to stop without teardown, after the messages it already has."""
    with contextlib.suppress(pykka.ActorDeadError):
        agent.tell(_Stop("passivated", passivate=True))


def drowse(agent: PooledRef, session: pykka.ActorRef[Any]) -> None:
    """Ask an agent actor to answer ``session`` with :class:`Drowsy` once it is idle."""
    with contextlib.suppress(pykka.ActorDeadError):
        agent.tell(_Drowse(session))
