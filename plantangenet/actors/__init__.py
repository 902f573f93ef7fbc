"""Actors: the session actor (single writer of its session) and agent actors."""

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
