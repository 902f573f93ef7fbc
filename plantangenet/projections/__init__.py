"""Projections: folds of a session's events into views."""

from plantangenet.projections.session import (
    AgentView,
    CursorView,
    PolicyView,
    SessionState,
    SessionStatus,
    evolve,
    fold,
)

__all__ = [
    "AgentView",
    "CursorView",
    "PolicyView",
    "SessionState",
    "SessionStatus",
    "evolve",
    "fold",
]
