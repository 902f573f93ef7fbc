"""Chem decisions: one session's side of a negotiated disclosure agreement.

Pure. Each session records the same negotiation from its own side: a
proposal, counter-proposals (rounds), then acceptance or refusal; an active
chem can be revoked by either side. Who may answer is checked here: a side
never accepts its own proposal, nor counters itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from plantangenet.domain.disclosure import RANK, parse_disclosure
from plantangenet.domain.dust import MAX_AMOUNT
from plantangenet.domain.policy import check_pattern, pattern_matches
from plantangenet.errors import ChemInactive, InvalidCommand, InvalidPolicy, UnknownChem
from plantangenet.events.chem import (
    ChemAccepted,
    ChemClause,
    ChemProposed,
    ChemRefused,
    ChemRevoked,
)
from plantangenet.projections.session import ChemView, SessionState

MAX_CLAUSES = 64


def parse_terms(raw: object, sides: tuple[str, str]) -> tuple[ChemClause, ...]:
    """Validated clauses; each discloser must be one of the two ``sides``."""
    if isinstance(raw, str | Mapping) or not isinstance(raw, Sequence) or not raw:
        raise InvalidCommand("terms must be a non-empty list of clauses")
    if len(raw) > MAX_CLAUSES:
        raise InvalidCommand(f"terms have at most {MAX_CLAUSES} clauses")
    return tuple(_clause(c, f"terms[{i}]", sides) for i, c in enumerate(raw))


def _clause(raw: object, label: str, sides: tuple[str, str]) -> ChemClause:
    if isinstance(raw, ChemClause):
        raw = {f.name: getattr(raw, f.name) for f in dataclasses.fields(ChemClause)}
    if not isinstance(raw, Mapping):
        raise InvalidCommand(f"{label}: a clause is a map of discloser, axes, disclosure, price")
    unknown = set(raw) - {"discloser", "axes", "disclosure", "price"}
    if unknown:
        raise InvalidCommand(f"{label}: unknown field {sorted(map(str, unknown))[0]!r}")
    discloser = raw.get("discloser")
    if discloser not in sides:
        raise InvalidCommand(f"{label}.discloser: one of {sides[0]!r} or {sides[1]!r}")
    axes = raw.get("axes")
    if isinstance(axes, str) or not isinstance(axes, Sequence) or not axes:
        raise InvalidCommand(f"{label}.axes: a non-empty list of axis patterns")
    try:
        patterns = tuple(check_pattern(a, f"{label}.axes") for a in axes)
        disclosure = parse_disclosure(raw.get("disclosure", "full"), f"{label}.disclosure")
    except InvalidPolicy as exc:
        raise InvalidCommand(str(exc)) from None
    price = raw.get("price", 0)
    if isinstance(price, bool) or not isinstance(price, int) or not 0 <= price <= MAX_AMOUNT:
        raise InvalidCommand(f"{label}.price: a whole number of dust from 0 to {MAX_AMOUNT}")
    assert isinstance(discloser, str)
    return ChemClause(discloser, patterns, disclosure, price)


def terms_for(chem: ChemView, discloser: str, axis: str) -> ChemClause | None:
    """The clause under which ``discloser`` discloses ``axis`` (the most disclosing one)."""
    best: ChemClause | None = None
    for clause in chem.clauses_by(discloser):
        if any(pattern_matches(p, axis) for p in clause.axes) and (
            best is None or RANK[clause.disclosure.level] > RANK[best.disclosure.level]
        ):
            best = clause
    return best


def active_chem(state: SessionState, chem_id: object) -> ChemView:
    """The chem ``chem_id`` if it is active, else a typed refusal."""
    chem = _chem(state, chem_id)
    if chem.status != "active":
        raise ChemInactive(f"chem {chem.chem_id!r} is {chem.status}, not active")
    return chem


def _chem(state: SessionState, chem_id: object) -> ChemView:
    chem = state.chems.get(chem_id) if isinstance(chem_id, str) else None
    if chem is None:
        raise UnknownChem(f"session {state.session_id!r} has no chem {chem_id!r}")
    return chem


def _side(state: SessionState, chem: ChemView, who: object, label: str) -> str:
    if who not in (state.session_id, chem.peer):
        raise InvalidCommand(f"{label} must be {state.session_id!r} or {chem.peer!r}")
    assert isinstance(who, str)
    return who


def propose(
    state: SessionState, chem_id: str, peer: str, proposed_by: object, terms: object
) -> ChemProposed:
    """A first proposal, or a counter-proposal from the side that did not propose last."""
    if peer == state.session_id:
        raise InvalidCommand("a chem joins two different sessions")
    if proposed_by not in (state.session_id, peer):
        raise InvalidCommand(f"proposed_by must be {state.session_id!r} or {peer!r}")
    assert isinstance(proposed_by, str)
    clauses = parse_terms(terms, (state.session_id, peer))
    known = state.chems.get(chem_id)
    if known is None:
        return ChemProposed(chem_id, peer, proposed_by, 1, clauses)
    if known.peer != peer:
        raise InvalidCommand(f"chem {chem_id!r} is with {known.peer!r}, not {peer!r}")
    if known.status != "proposed":
        raise ChemInactive(f"chem {chem_id!r} is {known.status}: it can no longer be countered")
    if known.proposed_by == proposed_by:
        raise InvalidCommand(f"{proposed_by!r} made the last proposal; the other side answers")
    return ChemProposed(chem_id, peer, proposed_by, known.round + 1, clauses)


def accept(state: SessionState, chem_id: object, accepted_by: object) -> ChemAccepted:
    """Accept the latest proposal (only the side that did not make it may)."""
    chem = _chem(state, chem_id)
    who = _side(state, chem, accepted_by, "accepted_by")
    if chem.status != "proposed":
        raise ChemInactive(f"chem {chem.chem_id!r} is {chem.status}: nothing to accept")
    if who == chem.proposed_by:
        raise InvalidCommand(f"{who!r} cannot accept its own proposal")
    return ChemAccepted(chem.chem_id, who, chem.round)


def refuse(state: SessionState, chem_id: object, refused_by: object, reason: str) -> ChemRefused:
    """End the negotiation (either side; the proposer withdraws)."""
    chem = _chem(state, chem_id)
    who = _side(state, chem, refused_by, "refused_by")
    if chem.status != "proposed":
        raise ChemInactive(f"chem {chem.chem_id!r} is {chem.status}: nothing to refuse")
    return ChemRefused(chem.chem_id, who, reason)


def revoke(state: SessionState, chem_id: object, revoked_by: object, reason: str) -> ChemRevoked:
    """Revoke an active chem (either side)."""
    chem = active_chem(state, chem_id)
    return ChemRevoked(chem.chem_id, _side(state, chem, revoked_by, "revoked_by"), reason)
