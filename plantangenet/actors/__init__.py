"""Actors: the session actor (its session's single writer), agent actors, the handle.

Holds the session and agent actors, their thread pool, reply futures, refusal limits and the
``SessionHandle`` callers use. Compositors reach the session actor through the ``Compositor``
protocol of the domain.
May import log, nats, domain, projections, events and errors; nothing above.
"""

from plantangenet.actors.agent import Agent, AgentActor, AgentContext
from plantangenet.actors.session import CommandResult, HookFailure, OnChange, SessionActor

__all__ = [
    "Agent",
    "AgentActor",
    "AgentContext",
    "CommandResult",
    "HookFailure",
    "OnChange",
    "SessionActor",
]
