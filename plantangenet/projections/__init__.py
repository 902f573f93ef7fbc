"""Projections: folds of a session's events into views."""

from plantangenet.projections.session import (
    AgentView,
    CursorView,
    IdentityView,
    SessionState,
    SessionStatus,
    evolve,
    fold,
)

__all__ = [
    "AgentView",
    "CursorView",
    "IdentityView",
    "SessionState",
    "SessionStatus",
    "evolve",
    "fold",
]
