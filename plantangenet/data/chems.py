"""Chems across sessions: negotiate terms in both logs, query the peer, revoke.

Every step is recorded by both sessions, the acting side first: its own
decision checks the step (a side never accepts its own proposal), then the
peer records the same step. Each step has a command id; both sessions store
it at most once, so a step that failed half-way (the peer's write) is
completed by calling it again with the same ``command_id``.

A query across a chem runs in the asking session first (``QueryChem``: the
agent's policy, the peer's terms, the dust price charged), then in the
disclosing session (``DiscloseChem``: its own terms shape the data, its log
records a ``DisclosureMade``). If the disclosing side refuses (for example
because it revoked the chem), the asking side refunds the charge with a
``DustGranted`` from its treasury, so no dust is lost, and the refusal is
raised.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from plantangenet.actors.handle import SessionHandle
from plantangenet.actors.session import CommandResult
from plantangenet.domain.commands import (
    AcceptChem,
    DiscloseChem,
    GrantDust,
    ProposeChem,
    QueryChem,
    RefuseChem,
    RevokeChem,
)
from plantangenet.domain.decide import check_id
from plantangenet.domain.disclosure import Level, Sample
from plantangenet.errors import PlantangenetError, UnknownChem
from plantangenet.events.chem import ChemClause, ChemQueried
from plantangenet.events.disclosure import DisclosureMade
from plantangenet.events.dust import TREASURY
from plantangenet.events.envelope import new_id
from plantangenet.projections.session import ChemView

Terms = Sequence[ChemClause | Mapping[str, Any]]


@dataclasses.dataclass(frozen=True, slots=True)
class ChemAnswer:
    """What a query across a chem disclosed, and what each side recorded."""

    samples: tuple[Sample, ...]
    level: Level
    price: int
    asked: CommandResult
    disclosed: CommandResult


class Chems:
    """Runs chem steps on two sessions reached through ``session(session_id)``."""

    def __init__(self, session: Callable[[str], SessionHandle]) -> None:
        self._session = session

    def view(self, session_id: str, chem_id: str) -> ChemView:
        """The chem as ``session_id`` knows it (``UnknownChem`` if it does not)."""
        chem = self._session(session_id).state.chems.get(chem_id)
        if chem is None:
            raise UnknownChem(f"session {session_id!r} has no chem {chem_id!r}")
        return chem

    def propose(
        self,
        proposer: str,
        peer: str,
        terms: Terms,
        *,
        chem_id: str | None = None,
        command_id: str | None = None,
    ) -> ChemView:
        """``proposer`` proposes ``terms`` to ``peer``; returns the proposer's view."""
        chem_id = chem_id or new_id()
        check_id(chem_id, "chem_id")
        check_id(peer, "peer")
        command_id = command_id or new_id()
        first = ProposeChem(
            command_id=command_id, chem_id=chem_id, peer=peer, proposed_by=proposer, terms=terms
        )
        self._session(proposer).execute(first)
        self._session(peer).execute(dataclasses.replace(first, peer=proposer))
        return self.view(proposer, chem_id)

    def counter(
        self, by: str, chem_id: str, terms: Terms, *, command_id: str | None = None
    ) -> ChemView:
        """``by`` answers the other side's proposal with new terms (the next round)."""
        peer = self.view(by, chem_id).peer
        command = ProposeChem(
            command_id=command_id or new_id(),
            chem_id=chem_id,
            peer=peer,
            proposed_by=by,
            terms=terms,
        )
        self._session(by).execute(command)
        self._session(peer).execute(dataclasses.replace(command, peer=by))
        return self.view(by, chem_id)

    def accept(self, by: str, chem_id: str, *, command_id: str | None = None) -> ChemView:
        """``by`` accepts the other side's latest proposal: the chem is active in both."""
        return self._both(
            by,
            chem_id,
            AcceptChem(command_id=command_id or new_id(), chem_id=chem_id, accepted_by=by),
        )

    def refuse(
        self, by: str, chem_id: str, reason: str = "", *, command_id: str | None = None
    ) -> ChemView:
        """``by`` refuses (or withdraws) the proposal: the negotiation ends in both."""
        command = RefuseChem(
            command_id=command_id or new_id(), chem_id=chem_id, refused_by=by, reason=reason
        )
        return self._both(by, chem_id, command)

    def revoke(
        self, by: str, chem_id: str, reason: str = "", *, command_id: str | None = None
    ) -> ChemView:
        """``by`` revokes the active chem; it stops disclosing at once, then the peer records it."""
        command = RevokeChem(
            command_id=command_id or new_id(), chem_id=chem_id, revoked_by=by, reason=reason
        )
        return self._both(by, chem_id, command)

    def _both(
        self, by: str, chem_id: str, command: AcceptChem | RefuseChem | RevokeChem
    ) -> ChemView:
        peer = self.view(by, chem_id).peer
        self._session(by).execute(command)
        self._session(peer).execute(command)
        return self.view(by, chem_id)

    def query(
        self,
        session_id: str,
        agent_id: str,
        chem_id: str,
        axes: Sequence[str],
        start: float,
        end: float,
        *,
        compositor: str,
        resolution: float | None = None,
        issued_by: str | None = None,
        command_id: str | None = None,
    ) -> ChemAnswer:
        """``agent_id`` of ``session_id`` asks the chem's peer for data (see the module docs)."""
        asking = self._session(session_id)
        peer = self.view(session_id, chem_id).peer
        command_id = command_id or new_id()
        asked = asking.execute(
            QueryChem(
                command_id=command_id,
                chem_id=chem_id,
                agent_id=agent_id,
                axes=tuple(axes),
                start=start,
                end=end,
                resolution=resolution,
                issued_by=issued_by,
            )
        )
        price = next(e.event.price for e in asked.events if isinstance(e.event, ChemQueried))
        try:
            disclosed = self._session(peer).execute(
                DiscloseChem(
                    command_id=command_id,
                    chem_id=chem_id,
                    peer=session_id,
                    agent_id=agent_id,
                    axes=tuple(axes),
                    start=start,
                    end=end,
                    compositor=compositor,
                    resolution=resolution,
                )
            )
        except PlantangenetError as refused:
            if price > 0:
                asking.execute(
                    GrantDust(
                        command_id=f"{command_id}-refund",
                        source=TREASURY,
                        target=agent_id,
                        amount=price,
                        memo=f"refund: {chem_id} refused by {peer} ({refused.code})",
                    )
                )
            raise
        made = next(e.event for e in disclosed.events if isinstance(e.event, DisclosureMade))
        return ChemAnswer(disclosed.samples, made.level, price, asked, disclosed)
