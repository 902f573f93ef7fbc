"""Why a session is as it is: the events behind a piece of its state.

:func:`why` names the events that put a part of the state there (:class:`Why`,
with its :class:`Grounds`), :func:`correlated` the events that share a causation,
and :func:`fork_origin` the source of an event a fork copied. Part of time travel
(see :mod:`plantangenet.timetravel.history`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from plantangenet.domain.policy import Statement
from plantangenet.errors import (
    DecodeError,
    UnknownEventType,
    UnknownEventVersion,
    UnknownPosition,
    UnknownSession,
)
from plantangenet.events.envelope import CheckedEvent, Envelope
from plantangenet.events.session import (
    AccessDenied,
    AgentDetached,
    PolicyChanged,
    RoleGranted,
    RoleRevoked,
    SessionEnded,
)
from plantangenet.log.journal import Journal
from plantangenet.log.positions import (
    Position,
    StreamSequence,
    event_at,
)
from plantangenet.log.replay import Progress
from plantangenet.projections.views import envelope_record, plain

if TYPE_CHECKING:
    from plantangenet.log.correlations import CorrelationIndex

#: The types of the events :class:`_Sources` folds.
_SOURCE_TYPES = frozenset(
    cls.type_name for cls in (PolicyChanged, RoleGranted, RoleRevoked, AgentDetached, SessionEnded)
)

#: Causation id of an event copied by :func:`plantangenet.timetravel.fork.fork`.
_FORKED = re.compile(r"fork:([A-Za-z0-9_-]{1,128}):([0-9]+)")


@dataclasses.dataclass(frozen=True, slots=True)
class Grounds:
    """The policy decision on one resource of a command, and where its parts came from.

    ``statement_id`` is the statement that allowed the resource (``effect``
    ``"allow"``) or, for a refusal (``"deny"``), the deny statement that refused
    it; ``None`` when no statement was needed (a command in the owner form) or,
    for a refusal, when no statement allowed it (default deny). ``statement`` is
    that statement as it stood when the decision was taken, ``policy_change`` the
    ``PolicyChanged`` event that last introduced or changed it before then.
    ``roles`` are the roles of ``agent_id`` the statement matched (empty when it
    is for every agent; for a default deny, every role the agent held, none of
    which was allowed) and ``grants`` the ``RoleGranted`` events that gave them
    (the grant that started each current holding), in the same order.
    """

    resource: str
    effect: str
    statement_id: str | None
    agent_id: str | None
    statement: Statement | None = None
    policy_change: Envelope | None = None
    roles: tuple[str, ...] = ()
    grants: tuple[Envelope, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly data (events as ``{revision, sequence, event_id, who, when}``)."""
        return {
            "resource": self.resource,
            "effect": self.effect,
            "statement_id": self.statement_id,
            "agent_id": self.agent_id,
            "statement": None if self.statement is None else plain(self.statement),
            "policy_change": None if self.policy_change is None else _event_ref(self.policy_change),
            "roles": list(self.roles),
            "grants": [_event_ref(e) for e in self.grants],
        }


def _event_ref(envelope: Envelope) -> dict[str, Any]:
    return {
        "session_id": envelope.session_id,
        "revision": envelope.revision,
        "sequence": envelope.sequence,
        "event_id": envelope.event_id,
        "type": envelope.type_name,
        "agent_id": envelope.agent_id,
        "principal": envelope.principal,
        "occurred_at": envelope.occurred_at.isoformat(),
    }


class _Sources:
    """Where a session's policy statements and role holdings came from, folded event by event.

    For each statement id the ``PolicyChanged`` that last set it (added it, or
    changed its content); for each (agent, role) held the ``RoleGranted`` that
    started the holding. Memory is bounded by the policy and the roles held.
    """

    def __init__(self) -> None:
        self.statements: dict[str, Statement] = {}
        self.set_by: dict[str, Ref] = {}
        self.granted_by: dict[tuple[str, str], Ref] = {}

    def see(self, envelope: Envelope) -> None:
        self.see_values(envelope.type_name, envelope.event, envelope)

    def see_values(self, type_name: str, event: Any, ref: Ref) -> None:
        """Fold one event of type ``type_name`` whose fields ``event`` has (an event, or
        checked values); ``ref`` is what the grounds name for it (an envelope, or checked
        values that :func:`why` turns into the envelope at the end)."""
        if type_name == PolicyChanged.type_name:
            before = self.statements
            self.statements = {s.id: s for s in event.statements}
            for statement_id, statement in self.statements.items():
                if before.get(statement_id) != statement:
                    self.set_by[statement_id] = ref
            for statement_id in [i for i in self.set_by if i not in self.statements]:
                del self.set_by[statement_id]
        elif type_name == RoleGranted.type_name:
            self.granted_by.setdefault((event.agent_id, event.role), ref)
        elif type_name == RoleRevoked.type_name:
            self.granted_by.pop((event.agent_id, event.role), None)
        elif type_name == AgentDetached.type_name:
            for key in [k for k in self.granted_by if k[0] == event.agent_id]:
                del self.granted_by[key]
        elif type_name == SessionEnded.type_name:
            self.granted_by.clear()

    def grounds(
        self,
        resource: str,
        effect: str,
        statement_id: str | None,
        agent_id: str | None,
        fetched: Mapping[int, Envelope] | None = None,
    ) -> Grounds:
        """The grounds of one resource's decision; ``fetched``: the envelopes of events
        seen as checked values, by sequence (see :meth:`checked_refs`)."""
        statement, policy_change, roles, grants = self._grounds(statement_id, effect, agent_id)
        return Grounds(
            resource,
            effect,
            statement_id,
            agent_id,
            statement,
            None if policy_change is None else _envelope(policy_change, fetched),
            roles,
            tuple(_envelope(grant, fetched) for grant in grants),
        )

    def checked_refs(
        self, effect: str, statement_id: str | None, agent_id: str | None
    ) -> list[CheckedEvent]:
        """The events :meth:`grounds` names that were seen as checked values."""
        _, policy_change, _, grants = self._grounds(statement_id, effect, agent_id)
        return [r for r in (policy_change, *grants) if isinstance(r, CheckedEvent)]

    def _grounds(
        self, statement_id: str | None, effect: str, agent_id: str | None
    ) -> tuple[Statement | None, Ref | None, tuple[str, ...], tuple[Ref, ...]]:
        statement = None if statement_id is None else self.statements.get(statement_id)
        roles: tuple[str, ...] = ()
        grants: tuple[Ref, ...] = ()
        default_deny = effect == "deny" and statement_id is None
        if agent_id is not None and (
            default_deny or (statement is not None and not statement.for_every_role)
        ):
            held = [
                (role, grant)
                for (agent, role), grant in self.granted_by.items()
                if agent == agent_id and (statement is None or role in statement.roles)
            ]
            held.sort(key=lambda pair: pair[1].sequence or 0)
            roles = tuple(role for role, _ in held)
            grants = tuple(grant for _, grant in held)
        policy_change = None if statement_id is None else self.set_by.get(statement_id)
        return statement, policy_change, roles, grants


#: An event as a fold saw it: its envelope, or its checked values.
Ref = Envelope | CheckedEvent


def _envelope(ref: Ref, fetched: Mapping[int, Envelope] | None) -> Envelope:
    if isinstance(ref, CheckedEvent):
        assert fetched is not None and ref.sequence is not None
        return fetched[ref.sequence]
    return ref


@dataclasses.dataclass(frozen=True, slots=True)
class Why:
    """Why an event is in the log.

    ``command_events`` are all the events of the command that produced it
    (its causation id), ``chain`` all the events sharing its correlation id
    (the request the command belongs to), both in log order. ``grounds`` is
    the policy decision behind the command, one per resource: the statement
    that allowed it (or, for an ``AccessDenied``, refused it), the
    ``PolicyChanged`` that set that statement and the ``RoleGranted`` events
    that gave the agent the roles it matched (see :class:`Grounds`); empty
    when the command carries no authorization. ``allowed`` is ``False`` for a
    refusal, ``True`` for an authorized command, ``None`` otherwise.
    ``elsewhere`` are the events of *other* sessions sharing the correlation
    id, in stream order; ``searched_elsewhere`` says whether they
    were looked for (``why(..., across=True)``). For an event a fork copied,
    ``origin`` is ``(session, sequence)`` of the original and ``origin_why``
    the answer there (when that session can be read).
    """

    session_id: str
    event: Envelope
    command_id: str
    command_events: tuple[Envelope, ...]
    correlation_id: str
    chain: tuple[Envelope, ...]
    origin: tuple[str, int] | None = None
    origin_why: Why | None = None
    allowed: bool | None = None
    grounds: tuple[Grounds, ...] = ()
    elsewhere: tuple[Envelope, ...] = ()
    searched_elsewhere: bool = False

    @property
    def commands(self) -> tuple[str, ...]:
        """The command ids in the chain, in the order they were stored."""
        return tuple(dict.fromkeys(e.causation_id for e in self.chain))

    @property
    def sessions(self) -> tuple[str, ...]:
        """The other sessions the request reached (from :attr:`elsewhere`)."""
        return tuple(dict.fromkeys(e.session_id for e in self.elsewhere))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly data."""
        return {
            "session_id": self.session_id,
            "event": envelope_record(self.event),
            "command_id": self.command_id,
            "command_events": [envelope_record(e) for e in self.command_events],
            "allowed": self.allowed,
            "grounds": [g.to_dict() for g in self.grounds],
            "correlation_id": self.correlation_id,
            "commands": list(self.commands),
            "chain": [envelope_record(e) for e in self.chain],
            "elsewhere": [envelope_record(e) for e in self.elsewhere]
            if self.searched_elsewhere
            else None,
            "origin": None
            if self.origin is None
            else {"session_id": self.origin[0], "sequence": self.origin[1]},
            "origin_why": None if self.origin_why is None else self.origin_why.to_dict(),
        }


def fork_origin(envelope: Envelope) -> tuple[str, int] | None:
    """``(session, sequence)`` of the event a fork copied into ``envelope`` (else ``None``)."""
    match = _FORKED.fullmatch(envelope.causation_id)
    return (match.group(1), int(match.group(2))) if match else None


async def why(
    journal: Journal,
    session_id: str,
    event: Position,
    *,
    progress: Progress | None = None,
    follow_forks: bool = True,
    across: bool = False,
    index: CorrelationIndex | None = None,
) -> Why:
    """The command that produced the event at ``event``, its events, its grounds and its request.

    Two passes over the session: one to find the event, one to collect its
    command's events and its correlation chain, folding on the way, up to the
    command's first event, where each policy statement and role came from.
    With ``across``, the events of *other* sessions sharing the correlation id
    are looked for too: in ``index`` (a :class:`~plantangenet.log.correlations.CorrelationIndex`,
    caught up first: a read of what was stored since its checkpoint), or without
    one by :func:`correlated`, a read of every other session.
    """
    target = await event_at(journal, session_id, event, progress=progress)
    seen: list[Ref] = []  # the command's events and the chain's, as read
    sources = _Sources()
    tracking = True
    before = target.sequence or 0
    # Checked values (no envelope built) for most of the log; the few events the answer
    # shows are fetched as envelopes afterwards.
    batches = journal.read_event_batches(session_id, progress=progress, checked=True)
    async with contextlib.aclosing(batches):
        async for batch in batches:
            for item in batch:
                if item.causation_id == target.causation_id:
                    tracking = False  # the decision was taken before the command's first event
                    seen.append(item)
                elif item.correlation_id == target.correlation_id:
                    seen.append(item)
                if tracking and (item.sequence or 0) < before:
                    if isinstance(item, CheckedEvent):
                        if item.type_name in _SOURCE_TYPES:
                            sources.see_values(item.type_name, item.fields, item)
                    else:
                        sources.see(item)
    # What the grounds ask, as (effect, statement, agent, resource).
    asked: list[tuple[str, str | None, str | None, str]] = []
    allowed: bool | None = None
    command_first = next((r for r in seen if r.causation_id == target.causation_id), target)
    match target.event:
        case AccessDenied(agent_id=agent_id, resource=resource, statement_id=statement_id):
            allowed = False
            asked.append(("deny", statement_id, agent_id, resource))
        case _ if command_first.authorization is not None:
            allowed = True
            auth = command_first.authorization
            asked.extend(
                ("allow", statement_id, command_first.agent_id, resource)
                for resource, statement_id in zip(auth.resources, auth.statements, strict=False)
            )
        case _:
            pass
    refs = [r for r in seen if isinstance(r, CheckedEvent)]
    for effect, statement_id, agent_id, _ in asked:
        refs.extend(sources.checked_refs(effect, statement_id, agent_id))
    fetched = await _fetched(journal, session_id, [r.sequence or 0 for r in refs])
    shown = [_envelope(r, fetched) for r in seen]
    command = [e for e in shown if e.causation_id == target.causation_id]
    chain = [e for e in shown if e.correlation_id == target.correlation_id]
    grounds = tuple(
        sources.grounds(resource, effect, statement_id, agent_id, fetched)
        for effect, statement_id, agent_id, resource in asked
    )
    elsewhere: tuple[Envelope, ...] = ()
    if across:
        if index is not None:
            elsewhere = await index.events(target.correlation_id, exclude=(session_id,))
        else:
            elsewhere = await correlated(journal, target.correlation_id, exclude=(session_id,))
    origin = fork_origin(target)
    origin_why: Why | None = None
    if origin is not None and follow_forks:
        with contextlib.suppress(UnknownSession, UnknownPosition):
            origin_why = await why(journal, origin[0], StreamSequence(origin[1]), progress=progress)
    return Why(
        session_id,
        target,
        target.causation_id,
        tuple(command),
        target.correlation_id,
        tuple(chain),
        origin,
        origin_why,
        allowed,
        grounds,
        elsewhere,
        across,
    )


async def _fetched(journal: Journal, session_id: str, sequences: list[int]) -> dict[int, Envelope]:
    """The session's events stored at ``sequences`` (read before as checked values), by
    sequence: a page of the session's messages from each one not fetched yet on. (A
    replica that answers a page may lag the leader by a few events: asked again.)"""
    wanted = sorted(set(sequences))
    wanted_set = set(wanted)
    found: dict[int, Envelope] = {}
    for i, sequence in enumerate(wanted):
        for attempt in range(_FETCH_ATTEMPTS):
            if sequence in found:
                break
            if attempt:
                await asyncio.sleep(0.05 * attempt)
            page = await journal.page(session_id, sequence, max_events=min(len(wanted) - i, 256))
            for stored, payload in page.messages:
                if stored in wanted_set:
                    found[stored] = journal.codec.decode(payload, sequence=stored)
        if sequence not in found:
            raise UnknownPosition(f"session {session_id}: no event at sequence {sequence} any more")
    return found


_FETCH_ATTEMPTS = 5


async def correlated(
    journal: Journal,
    correlation_id: str,
    *,
    exclude: Sequence[str] = (),
) -> tuple[Envelope, ...]:
    """Every event of the stream's sessions (but ``exclude``) with ``correlation_id``.

    In stream order, read session by session (:meth:`Journal.sessions`). Each session is
    read raw; only a message whose bytes contain the correlation id is decoded
    (the codec stores it as text), so the cost is one read of the stream, not
    one decode of every event. Messages that cannot be decoded are skipped (an
    event type or version this code does not know raises, as :meth:`Journal.read` does);
    an event stored before revisions were recorded has ``revision`` ``None``.
    """
    needle = correlation_id.encode()
    skip = set(exclude)
    found: list[Envelope] = []
    for other in await journal.sessions():
        if other in skip:
            continue
        async for sequence, payload in journal.read_raw(other):
            if needle not in payload:
                continue
            try:
                envelope = journal.codec.decode(payload, sequence=sequence)
            except (UnknownEventType, UnknownEventVersion):
                raise  # an event of newer code: not damage to skip (as Journal.read)
            except DecodeError:
                continue  # damage: ``verify`` reports it
            if envelope.correlation_id == correlation_id:
                found.append(envelope)
    return tuple(sorted(found, key=lambda e: e.sequence or 0))
