"""The session commands a bot sends, one method each (a part of the bot client).

:class:`SessionCommands` is a base of :class:`~plantangenet.wire.client.BotClient`. Each
method builds a command's arguments and sends it with
:meth:`BotClient.request <plantangenet.wire.client.BotClient.request>`; the reply is the
command's outcome as a map. The client's agent issues them (``issued_by``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from plantangenet.domain.disclosure import Sample


class SessionCommands:
    """The session commands of :class:`~plantangenet.wire.client.BotClient`, one method each."""

    agent_id: str | None

    if TYPE_CHECKING:  # BotClient's

        async def request(
            self,
            session_id: str,
            name: str,
            args: Mapping[str, Any] | None = None,
            *,
            command_id: str | None = None,
            issued_by: str | None = None,
            correlation_id: str | None = None,
            context: Mapping[str, Any] | None = None,
        ) -> dict[str, Any]: ...

    async def attach(
        self,
        session_id: str,
        agent_id: str | None = None,
        *,
        kind: str = "bot",
        name: str = "",
        **kw: Any,
    ) -> dict[str, Any]:
        """Attach this bot (or ``agent_id``) to the session.

        Sent in the owner form (the session's owners only) unless ``issued_by`` is given: a
        bot joining a session it does not own attaches itself with ``issued_by=<its agent>``,
        as the session's policy allows (see docs/protocol.md, "Who may do what").
        """
        agent = agent_id or self.agent_id
        return await self.request(
            session_id, "attach", {"agent_id": agent, "kind": kind, "name": name}, **kw
        )

    async def detach(
        self, session_id: str, agent_id: str | None = None, reason: str = "detached", **kw: Any
    ) -> dict[str, Any]:
        """Detach this bot (or ``agent_id``).

        Detaching itself, the bot speaks as its own agent (an agent may always leave);
        detaching another is the owner form (owners only) unless ``issued_by`` says otherwise.
        """
        agent = agent_id or self.agent_id
        if agent == self.agent_id:
            kw.setdefault("issued_by", self.agent_id)
        return await self.request(session_id, "detach", {"agent_id": agent, "reason": reason}, **kw)

    async def add_cursor(
        self,
        session_id: str,
        cursor_id: str,
        axes: Sequence[str],
        start: float,
        end: float,
        resolution: float | None = None,
        **kw: Any,
    ) -> dict[str, Any]:
        """Open a cursor for this bot (``resolution``: the time step of the data it wants)."""
        region = (axes, start, end, resolution)
        return await self._cursor("add_cursor", session_id, cursor_id, *region, **kw)

    async def move_cursor(
        self,
        session_id: str,
        cursor_id: str,
        axes: Sequence[str],
        start: float,
        end: float,
        resolution: float | None = None,
        **kw: Any,
    ) -> dict[str, Any]:
        """Give this bot's cursor a new region (move, resize, change its resolution)."""
        region = (axes, start, end, resolution)
        return await self._cursor("move_cursor", session_id, cursor_id, *region, **kw)

    async def _cursor(
        self,
        name: str,
        session_id: str,
        cursor_id: str,
        axes: Sequence[str],
        start: float,
        end: float,
        resolution: float | None,
        **kw: Any,
    ) -> dict[str, Any]:
        kw.setdefault("issued_by", self.agent_id)
        args = {
            "agent_id": self.agent_id,
            "cursor_id": cursor_id,
            "axes": list(axes),
            "start": start,
            "end": end,
            "resolution": resolution,
        }
        return await self.request(session_id, name, args, **kw)

    async def remove_cursor(self, session_id: str, cursor_id: str, **kw: Any) -> dict[str, Any]:
        """Close this bot's cursor."""
        kw.setdefault("issued_by", self.agent_id)
        args = {"agent_id": self.agent_id, "cursor_id": cursor_id}
        return await self.request(session_id, "remove_cursor", args, **kw)

    async def change_metadata(
        self,
        session_id: str,
        changed: Mapping[str, Any] | None = None,
        removed: Sequence[str] = (),
        **kw: Any,
    ) -> dict[str, Any]:
        """Set and/or remove metadata keys (on this bot's behalf)."""
        kw.setdefault("issued_by", self.agent_id)
        args = {"changed": dict(changed or {}), "removed": list(removed)}
        return await self.request(session_id, "change_metadata", args, **kw)

    async def change_policy(
        self,
        session_id: str,
        *,
        replace: Sequence[Any] | None = None,
        add: Sequence[Any] = (),
        remove: Sequence[str] = (),
        **kw: Any,
    ) -> dict[str, Any]:
        """Change the session's policy (as the owner unless ``issued_by`` is given)."""
        args: dict[str, Any] = {"add": list(add), "remove": list(remove)}
        if replace is not None:
            args["replace"] = list(replace)
        return await self.request(session_id, "change_policy", args, **kw)

    async def query_cursor(
        self, session_id: str, cursor_id: str, compositor: str, **kw: Any
    ) -> list[Sample]:
        """The data under this bot's cursor, as the session's policy discloses it to the bot.

        Priced queries are paid from the bot's dust (``InsufficientDust`` if it cannot).
        """
        kw.setdefault("issued_by", self.agent_id)
        args = {"agent_id": self.agent_id, "cursor_id": cursor_id, "compositor": compositor}
        reply = await self.request(session_id, "query_cursor", args, **kw)
        return [
            Sample(s["axis"], s["time"], s["value"], s.get("fields") or {})
            for s in reply.get("samples", ())
        ]

    async def grant(
        self, session_id: str, target: str, amount: int, memo: str = "", **kw: Any
    ) -> dict[str, Any]:
        """Give ``amount`` of this bot's dust to ``target`` (an agent or the treasury)."""
        kw.setdefault("issued_by", self.agent_id)
        args = {"source": self.agent_id, "target": target, "amount": amount, "memo": memo}
        return await self.request(session_id, "grant", args, **kw)

    # -- chems: negotiated disclosure between sessions ------------------------------
    #
    # A chem step is sent to the bot's own session (the acting side; the bot must own it,
    # or send it as one of its agents the policy allows ``chem.<step>``); the service
    # records it there, then in the peer session. A step that failed half-way (the peer's
    # write) is completed by sending it again with the same ``command_id``.

    async def propose_chem(
        self,
        session_id: str,
        peer: str,
        chem_id: str,
        terms: Sequence[Any],
        **kw: Any,
    ) -> dict[str, Any]:
        """``session_id`` proposes ``terms`` (``ChemClause`` objects or maps of their fields) to
        the session ``peer``; on a chem the peer proposed, a counter-proposal."""
        args = {"chem_id": chem_id, "peer": peer, "terms": list(terms)}
        return await self.request(session_id, "propose_chem", args, **kw)

    async def accept_chem(self, session_id: str, chem_id: str, **kw: Any) -> dict[str, Any]:
        """``session_id`` accepts the peer's latest proposal: the chem is active in both."""
        return await self.request(session_id, "accept_chem", {"chem_id": chem_id}, **kw)

    async def refuse_chem(
        self, session_id: str, chem_id: str, reason: str = "", **kw: Any
    ) -> dict[str, Any]:
        """``session_id`` refuses (or withdraws) the proposal: the negotiation ends in both."""
        args = {"chem_id": chem_id, "reason": reason}
        return await self.request(session_id, "refuse_chem", args, **kw)

    async def revoke_chem(
        self, session_id: str, chem_id: str, reason: str = "", **kw: Any
    ) -> dict[str, Any]:
        """``session_id`` revokes the active chem: it stops disclosing at once, in both."""
        args = {"chem_id": chem_id, "reason": reason}
        return await self.request(session_id, "revoke_chem", args, **kw)

    async def query_chem(
        self,
        session_id: str,
        chem_id: str,
        axes: Sequence[str],
        start: float,
        end: float,
        compositor: str,
        resolution: float | None = None,
        **kw: Any,
    ) -> list[Sample]:
        """This bot asks the chem's peer for data, as the peer's terms disclose it.

        ``session_id`` records (and charges this bot for) the query; the peer's
        ``compositor`` answers. A refusal of the peer is refunded.
        """
        kw.setdefault("issued_by", self.agent_id)
        args = {
            "chem_id": chem_id,
            "agent_id": self.agent_id,
            "axes": list(axes),
            "start": start,
            "end": end,
            "compositor": compositor,
            "resolution": resolution,
        }
        reply = await self.request(session_id, "query_chem", args, **kw)
        return [
            Sample(s["axis"], s["time"], s["value"], s.get("fields") or {})
            for s in reply.get("samples", ())
        ]

    async def end(self, session_id: str, reason: str = "ended", **kw: Any) -> dict[str, Any]:
        """End the session."""
        return await self.request(session_id, "end", {"reason": reason}, **kw)
