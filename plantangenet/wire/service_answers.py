"""What the session service answers: commands (one, a batch, a chem step across two
sessions) decided and stored by the session's actor, ``state`` queries that see every
acknowledged write, and ``history`` pages (see :mod:`plantangenet.wire.service`)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import nats.errors

from plantangenet.actors.session import CommandResult
from plantangenet.domain.commands import (
    Command,
    DiscloseChem,
    GrantDust,
    ProposeChem,
    QueryCursor,
    StartSession,
)
from plantangenet.domain.decide import decide_authorized
from plantangenet.domain.disclosure import Sample
from plantangenet.errors import (
    AccessRefused,
    ConcurrencyError,
    InvalidCommand,
    JournalError,
    PlantangenetError,
    ReplyTooLarge,
)
from plantangenet.events.chem import ChemQueried
from plantangenet.events.dust import TREASURY
from plantangenet.events.envelope import OPERATOR
from plantangenet.projections.session import SessionState
from plantangenet.projections.views import plain
from plantangenet.wire.protocol import (
    BATCH,
    CHEM_STEPS,
    HOPS_HEADER,
    PRINCIPAL_HEADER,
    QUERIES,
    QueryChemRequest,
    batch_reply,
    data_reply,
    decode_batch,
    decode_history,
    decode_reply,
    decode_request,
    forward_subject,
    history_reply,
    ok_reply,
    relay_id,
)
from plantangenet.wire.relayed import RELAYED, decode_relayed, encode_relayed
from plantangenet.wire.service_base import ServiceState

log = logging.getLogger("plantangenet.wire.service")

#: Placeholder for a batch command not answered yet (every one is, before the reply).
_UNANSWERED = PlantangenetError("internal error: a command of the batch was not answered")
#: Room a reply's own fields need beside the data it carries.
_REPLY_OVERHEAD = 4096


def _traced(item: Any, trace: str | None) -> Any:
    """``item`` (a command, or the error refusing it) with ``trace`` as its correlation id
    when it names none (see ``protocol.traceparent``)."""
    if trace and isinstance(item, Command) and item.correlation_id is None:
        return dataclasses.replace(item, correlation_id=trace)
    return item


class Answering(ServiceState):
    """Methods of :class:`~plantangenet.wire.service.SessionService` (a mixin of it)."""

    async def _answer(
        self,
        session_id: str,
        name: str,
        payload: bytes,
        principal: str,
        trace: str | None,
    ) -> bytes:
        if name == "history":
            return await self._history(session_id, payload)
        if name in QUERIES:
            return await self._query(session_id, name)
        if name == BATCH:
            commands = [_traced(c, trace) for c in decode_batch(payload, principal)]
            outcomes = await self._execute(session_id, commands)
            for outcome in outcomes:
                if isinstance(outcome, PlantangenetError):
                    self.metrics.refusal(outcome.code)
                    self._storage_refused(outcome)
            return batch_reply(outcomes)
        if name == RELAYED:
            if principal != OPERATOR:  # no bot's import reaches it; this is the backstop
                raise AccessRefused(f"{RELAYED}: only the session service passes on chem steps")
            command = decode_relayed(payload)
        else:
            command = _traced(decode_request(name, payload, principal, session_id), trace)
        if name in CHEM_STEPS:
            return await self._chem_step(session_id, command)
        if isinstance(command, QueryCursor | DiscloseChem):
            # The answer must fit in a reply: a larger one is refused before it is
            # recorded or charged (the reply's own fields need a little room).
            room = self._max_payload() - _REPLY_OVERHEAD
            if command.max_bytes is None or command.max_bytes > room:
                command = dataclasses.replace(command, max_bytes=room)
        (outcome,) = await self._execute(session_id, [command])
        if isinstance(outcome, PlantangenetError):
            raise outcome
        return ok_reply(outcome)

    async def _one(self, session_id: str, command: Command) -> CommandResult:
        """``command`` decided and stored in ``session_id`` (its refusal raised)."""
        (outcome,) = await self._execute(session_id, [command])
        if isinstance(outcome, PlantangenetError):
            raise outcome
        return outcome

    async def _at_peer(self, peer: str, command: Command) -> tuple[Sample, ...]:
        """``command`` (a chem step's second half, as the operator's) decided and stored in
        ``peer`` by the ``serve`` process that owns ``peer``, as a passed-on request would
        be: at its owner, or, while it has none or its owner is gone, at the process that
        takes it next; here if that is this process. A refusal is raised; returns what
        it disclosed."""
        ownership = self.ownership
        owner = None if ownership is None else ownership.owner_of(peer)
        if ownership is not None and owner is None:
            self.unowned += 1
            self.metrics.unowned.inc()
            owner = ownership.successor(peer)
        for hops in (1, 2):  # the owner, then (if it is gone) its successor
            if ownership is None or owner is None or owner == ownership.member_id:
                break
            subject = forward_subject(owner, peer, RELAYED, self.command_prefix)
            # The successor gets the step as a second hop: it serves it, rather than ask
            # the gone owner (whose lease it still sees) again.
            headers = {PRINCIPAL_HEADER: OPERATOR, HOPS_HEADER: str(hops)}
            try:
                answer = await self._nc.request(
                    subject, encode_relayed(command), timeout=self.relay_timeout, headers=headers
                )
            except nats.errors.NoRespondersError:  # gone; its lease has not run out yet
                self.unowned += 1
                self.metrics.unowned.inc()
                owner = ownership.successor(peer, gone=owner)
                continue
            except nats.errors.TimeoutError:
                raise JournalError(
                    f"the process owning session {peer} did not answer within "
                    f"{self.relay_timeout} s; the step may or may not be recorded there: "
                    "send the request again (the same id completes it)"
                ) from None
            self.forwarded += 1
            self.metrics.forwarded.inc()
            reply = decode_reply(answer.data)  # a refusal is raised as its typed error
            return tuple(Sample.from_dict(s) for s in reply.get("samples", ()))
        return (await self._one(peer, command)).samples

    async def _chem_step(self, session_id: str, command: Command) -> bytes:
        """A chem step: recorded in ``session_id`` as the request's sender sent it (the
        same standing and policy checks as any command), then in the chem's peer session.

        The peer records the step as the operator: the acting session's log decided it.
        Its command id there is derived from the sender, the session and the request's id
        (:func:`relay_id`), so a retry of a request that failed half-way (the peer's
        write) completes it, and nobody can take the id beforehand.
        """
        relayed = relay_id(command.principal, session_id, command.command_id)
        correlation = command.correlation_id or command.command_id
        if isinstance(command, QueryChemRequest):
            return await self._query_chem(session_id, command, relayed, correlation)
        result = await self._one(session_id, command)
        if isinstance(command, ProposeChem):
            peer = command.peer
            relay: Command = dataclasses.replace(command, peer=session_id)
        else:
            handle = self.runtime.session(session_id)
            state = await self.runtime.loop.wrap(handle.state_at_least(result.sequence))
            chem = state.chems.get(getattr(command, "chem_id", ""))
            if chem is None:  # pragma: no cover - it was just stored
                raise InvalidCommand(f"session {session_id} holds no such chem")
            peer, relay = chem.peer, command
        relay = dataclasses.replace(
            relay,
            command_id=relayed,
            correlation_id=correlation,
            issued_by=None,
            context={},
            principal=OPERATOR,
        )
        await self._at_peer(peer, relay)
        return ok_reply(result)

    async def _query_chem(
        self,
        session_id: str,
        command: QueryChemRequest,
        relayed: str,
        correlation: str,
    ) -> bytes:
        """``QueryChem`` here, then ``DiscloseChem`` in the peer (see ``QueryChemRequest``)."""
        asked = await self._one(session_id, command.asked())
        price = next((e.event.price for e in asked.events if isinstance(e.event, ChemQueried)), 0)
        handle = self.runtime.session(session_id)
        state = await self.runtime.loop.wrap(handle.state_at_least(asked.sequence))
        chem = state.chems.get(command.chem_id)
        if chem is None:  # pragma: no cover - it was just stored
            raise InvalidCommand(f"session {session_id} holds no chem {command.chem_id}")
        disclose = DiscloseChem(
            command_id=relayed,
            correlation_id=correlation,
            chem_id=command.chem_id,
            peer=session_id,
            agent_id=command.agent_id,
            axes=tuple(command.axes),
            start=command.start,
            end=command.end,
            compositor=command.compositor,
            resolution=command.resolution,
            max_bytes=self._max_payload() - _REPLY_OVERHEAD,
        )
        try:
            samples = await self._at_peer(chem.peer, disclose)
        except PlantangenetError as refused:
            if price > 0:
                await self._one(
                    session_id,
                    GrantDust(
                        command_id=f"{relayed}-refund",
                        correlation_id=correlation,
                        source=TREASURY,
                        target=command.agent_id,
                        amount=price,
                        memo=f"refund: {command.chem_id} refused by {chem.peer} ({refused.code})",
                    ),
                )
            raise
        return ok_reply(dataclasses.replace(asked, samples=samples))

    async def _execute(
        self, session_id: str, items: Sequence[Command | PlantangenetError]
    ) -> list[CommandResult | PlantangenetError]:
        """Each command decided and stored in order, each on its own; per item its outcome.

        ``items`` are a request's commands (one, or a batch's), with the errors that
        refused malformed ones in their places. They go to the session's actor as one
        message (``submit_many``); a command that lost a race with another writer is
        sent again on the caught-up state (at most ``conflict_retries`` times).
        """
        outcomes: list[CommandResult | PlantangenetError] = [
            item if isinstance(item, PlantangenetError) else _UNANSWERED for item in items
        ]
        commands = {i: item for i, item in enumerate(items) if isinstance(item, Command)}
        for command in commands.values():
            self.metrics.command(type(command).__name__)
        pending = list(commands)
        if (
            pending
            and not any(isinstance(command, StartSession) for command in commands.values())
            and self._running(session_id) is None
            and await self._log_is_empty(session_id)
        ):
            # Anyone may name any session id: commands that cannot apply to a session
            # that was never started are refused without starting an actor for it.
            could_apply = []
            for i in pending:
                try:
                    self._refuse_unstarted(session_id, commands[i])
                    could_apply.append(i)
                except PlantangenetError as exc:
                    outcomes[i] = exc
            pending = could_apply
        for attempt in range(self.conflict_retries + 1):
            if not pending:
                break
            handle = self.runtime.session(session_id)
            batch = [commands[i] for i in pending]
            answers = await self.runtime.loop.wrap(handle.submit_many(batch))
            retry = []
            for i, answer in zip(pending, answers, strict=True):
                if isinstance(answer, ConcurrencyError):
                    self.metrics.conflicts.inc()
                if isinstance(answer, ConcurrencyError) and attempt < self.conflict_retries:
                    retry.append(i)
                else:
                    outcomes[i] = answer
            pending = retry
        return outcomes

    def _refuse_unstarted(self, session_id: str, command: Command) -> None:
        """Raise what the session's actor would for ``command`` on a session with no events.

        Returns only if the command could apply (then an actor must handle it).
        """
        try:
            decide_authorized(SessionState(session_id), command, limits=self.runtime.limits)
        except (TypeError, ValueError, AttributeError) as exc:  # as the actor reports them
            raise InvalidCommand(f"{type(command).__name__}: {exc}") from None

    async def _query(self, session_id: str, name: str) -> bytes:
        # Read-your-writes across processes: the session's last sequence, asked now (after
        # the request arrived), covers every command acknowledged before it was sent,
        # whichever process stored it; the actor answers only once its state holds it.
        last = await self.runtime.journal.last_sequence(session_id)
        handle = self._running(session_id)
        if handle is None and last == 0:
            # A read starts no actor for a session that does not exist: its state is new.
            state = SessionState(session_id)
        else:
            handle = handle or self.runtime.session(session_id)
            state = await self.runtime.loop.wrap(handle.state_at_least(last))
        reply = data_reply({"state": plain(state)})
        limit = self._max_payload()
        if len(reply) > limit:
            raise ReplyTooLarge(
                f"the state of session {session_id} is {len(reply)} bytes, more than this "
                f"connection carries ({limit}); fold its events from the log up to sequence "
                f"{state.sequence} instead",
                sequence=state.sequence,
            )
        return reply

    async def _history(self, session_id: str, payload: bytes) -> bytes:
        """A page of the session's stored events, as stored (see ``protocol.history_reply``)."""
        start, most = decode_history(payload)
        room = self._max_payload() - _REPLY_OVERHEAD
        page = await self.runtime.journal.page(
            session_id, start, max_events=most, max_bytes=max(room // 2, 1)
        )
        return history_reply(page.messages, page.last_sequence, page.more)
