"""Agents: the behaviour users write, and the actor that runs it.

An :class:`AgentActor` is started when its agent is attached to a session
(or when a session with attached agents is rehydrated) and stopped when the
agent is detached, the session ends, or the runtime shuts down. It calls the
behaviour's :meth:`Agent.setup` once when it starts and :meth:`Agent.teardown`
once when it stops. Its state is the fold of the session events about it.
A behaviour that raises is reported, never allowed to kill the actor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pykka

from plantangenet.events.envelope import Envelope, utc_now
from plantangenet.projections.agent import AgentState, evolve_agent

if TYPE_CHECKING:
    from plantangenet.handle import SessionHandle

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
    #: ``"attached"`` for a new agent, ``"rehydrated"`` when brought back from the log.
    origin: str
    #: What :meth:`now` reads (the agent's actor sets it; a replay sets its own).
    clock: Callable[[], datetime] = utc_now

    def now(self) -> datetime:
        """The agent's time (timezone-aware UTC): read it instead of the wall clock.

        In ``on_event`` it is when the event being handled occurred (its
        ``occurred_at``: the session's clock when it decided the command), live and
        when the agent is replayed against the log (:mod:`plantangenet.botreplay`),
        so a replayed agent decides and stamps as it did. Elsewhere (``setup``,
        ``teardown``, ``on_change`` callbacks, other threads) it is the wall clock
        live, and the time of the event being replayed in a replay.
        """
        return self.clock()


class Agent:
    """Base class for agent behaviour. Every hook is optional.

    Hooks run on the agent's own actor thread, one at a time.
    """

    def setup(self, context: AgentContext) -> None:
        """Called once when the agent's actor starts."""

    def teardown(self, context: AgentContext, reason: str) -> None:
        """Called once when the agent's actor stops (detached, session ended, shutdown)."""

    def on_event(self, context: AgentContext, envelope: Envelope) -> None:
        """Called for every stored session event, after the agent's state was updated."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Stored:
    envelopes: list[Envelope]


@dataclasses.dataclass(frozen=True, slots=True)
class _Stop:
    reason: str


class AgentActor(pykka.ThreadingActor):
    """The actor of one attached agent."""

    def __init__(self, context: AgentContext, behaviour: Agent, state: AgentState) -> None:
        super().__init__()
        #: The event ``on_event`` is handling, on this actor's thread (for ``context.now()``).
        self._handling = threading.local()
        if context.clock is utc_now:
            context = dataclasses.replace(context, clock=self._now)
        self.context = context
        self.behaviour = behaviour
        self.state = state
        self.failures: list[str] = []
        self._stop_reason = "shutdown"
        #: Whether the behaviour has an ``on_event`` of its own (the base one does nothing).
        handler = getattr(behaviour, "on_event", None)
        self._listens = getattr(handler, "__func__", handler) is not Agent.on_event

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
        self._call("setup")

    def on_stop(self) -> None:
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
            self.stop()
        elif message == "state":
            return self.state
        elif message == "failures":
            return list(self.failures)
        return None


def notify(agent: pykka.ActorRef[Any], envelopes: list[Envelope]) -> None:
    """Tell an agent actor about stored events, in order (never blocks, never raises)."""
    with contextlib.suppress(pykka.ActorDeadError):
        agent.tell(_Stored(envelopes))


def retire(agent: pykka.ActorRef[Any], reason: str) -> None:
    """Ask an agent actor to tear down and stop, after the messages it already has."""
    with contextlib.suppress(pykka.ActorDeadError):
        agent.tell(_Stop(reason))
