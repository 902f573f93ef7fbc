"""Projections: folds of a session's events into state and views.

Holds the session state and ``evolve``/``fold``, the agent, audit, cursor-index and ledger
projections, user projections and the audit read model (kept in key-value buckets, reaching the
log through the ``log_view`` interface) and ``views`` (plain JSON-friendly renderings).
May import events and errors only.
"""

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
