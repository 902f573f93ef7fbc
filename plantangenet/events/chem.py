"""Chem events: a negotiated, asymmetric disclosure agreement between two sessions.

Both sessions record every step of a chem under the same ``chem_id``. Terms
are clauses, each saying what one side (``discloser``, a session id)
discloses to the other: which axes, at which level, at what dust price per
axis queried. The two sides' clauses are independent: that is the asymmetry.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from plantangenet.events.base import Event, event_type
from plantangenet.events.policy_values import Disclosure

ChemStatus = Literal["proposed", "active", "refused", "revoked"]


@dataclasses.dataclass(frozen=True, slots=True)
class ChemClause:
    """``discloser`` discloses ``axes`` (dotted patterns) at ``disclosure``, for ``price``."""

    discloser: str
    axes: tuple[str, ...]
    disclosure: Disclosure
    price: int = 0


@event_type("ChemProposed", version=1)
class ChemProposed(Event):
    """``proposed_by`` proposed ``terms`` for the chem (round 1) or countered (round > 1)."""

    chem_id: str
    peer: str
    proposed_by: str
    round: int
    terms: tuple[ChemClause, ...]


@event_type("ChemAccepted", version=1)
class ChemAccepted(Event):
    """``accepted_by`` accepted the terms of round ``round``: the chem is active."""

    chem_id: str
    accepted_by: str
    round: int


@event_type("ChemRefused", version=1)
class ChemRefused(Event):
    """``refused_by`` refused the proposal: the negotiation is over."""

    chem_id: str
    refused_by: str
    reason: str = ""


@event_type("ChemRevoked", version=1)
class ChemRevoked(Event):
    """``revoked_by`` revoked the active chem: nothing more is disclosed through it."""

    chem_id: str
    revoked_by: str
    reason: str = ""


@event_type("ChemQueried", version=1)
class ChemQueried(Event):
    """``agent_id`` asked the peer for ``axes`` over ``[start, end]`` through the chem.

    Recorded in the asking session (with the ``DustCharged`` that paid for it);
    the disclosing session records a ``DisclosureMade``.
    """

    chem_id: str
    agent_id: str
    axes: tuple[str, ...]
    start: float
    end: float
    price: int


CHEM_EVENTS: tuple[type[Event], ...] = (
    ChemProposed,
    ChemAccepted,
    ChemRefused,
    ChemRevoked,
    ChemQueried,
)
