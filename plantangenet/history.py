"""Time travel over a session's log: positions, state at a position, diffs, and "why".

A *position* names a point of a session's history; the session "at" a position
is the fold of its events up to and including the event the position resolves to:

* a revision (``int``): the session's event with that number (1 is its first
  event; see :attr:`~plantangenet.events.envelope.Envelope.revision`). Revisions
  belong to the session: a position means the same in every copy of it (a
  fork), and a revision after the session's last event is an error;
* a stream sequence (:class:`StreamSequence`, ``seq:N`` in text): the session's
  last event at or before it (the stream is shared by every session, so a
  session's sequences have gaps; a sequence after the session's last event is
  its last event);
* an event id (``str``, 32 hex characters): that event;
* a time (a timezone-aware ``datetime``; naive ones are taken as UTC): the
  *last* event, in log order, that occurred at or before it. Every event of one
  command carries the same time, so a command is never cut in half. The times
  are the writers' clocks, not the log's order: a time is turned into a stream
  sequence by a seek (:meth:`~plantangenet.journal.Journal.sequence_at`, which
  reads only the events stored within ``clock_skew`` of it and states what it
  assumes of the clocks), and is then a sequence position.

A sequence or time before the session's first event, and an event id that is
not the session's, raise :class:`~plantangenet.errors.UnknownPosition`; a
session with no events raises :class:`~plantangenet.errors.UnknownSession`.
:func:`parse_position` reads the textual form the command line takes.

Everything here streams the log (an ordered consumer), and reads it no further
than the last position asked for (except for event ids): memory does not grow
with the session's length.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from plantangenet.errors import (
    DecodeError,
    UnknownEventType,
    UnknownEventVersion,
    UnknownPosition,
    UnknownSession,
)
from plantangenet.events.envelope import Envelope
from plantangenet.events.session import (
    AccessDenied,
    AgentDetached,
    PolicyChanged,
    RoleGranted,
    RoleRevoked,
    SessionEnded,
)
from plantangenet.journal import Journal
from plantangenet.policy import Policy, Statement, parse_statement
from plantangenet.projections.session import (
    AgentView,
    CursorView,
    IdentityView,
    SessionState,
    evolve,
)
from plantangenet.replay import Progress
from plantangenet.views import envelope_record, plain

if TYPE_CHECKING:
    from plantangenet.correlations import CorrelationIndex

#: A point of a session's history: a stream sequence, an event id, or a time.


@dataclasses.dataclass(frozen=True, slots=True)
class StreamSequence:
    """A position given as a stream sequence: the log's numbering, shared by every session.

    A plain ``int`` position is a revision, the session's own numbering; this is
    the explicit form for a sequence (``seq:N`` on the command line).
    """

    value: int

    def __post_init__(self) -> None:
        if type(self.value) is not int or self.value < 0:
            raise UnknownPosition(f"not a stream sequence: {self.value!r}")


#: A revision (``int``), a :class:`StreamSequence`, an event id or a time.
Position = int | StreamSequence | str | datetime

_EVENT_ID = re.compile(r"[0-9a-fA-F]{32}")
#: Causation id of an event copied by :func:`plantangenet.fork.fork`.
_FORKED = re.compile(r"fork:([A-Za-z0-9_-]{1,128}):([0-9]+)")


# -- positions --------------------------------------------------------------------------


def parse_position(text: str) -> Position:
    """A position from its textual form.

    32 hex characters are an event id, digits a revision (``rev:N`` too),
    ``seq:N`` a stream sequence, anything else must be an ISO 8601 time
    (``2025-01-31T09:30:00Z``; UTC if it has no offset).

    :raises UnknownPosition: the text is none of these.
    """
    text = text.strip()
    if _EVENT_ID.fullmatch(text):
        return text.lower()
    if text.isascii() and text.isdigit():
        return int(text)
    prefix, _, number = text.partition(":")
    if prefix in ("seq", "rev") and number.isascii() and number.isdigit():
        return StreamSequence(int(number)) if prefix == "seq" else int(number)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UnknownPosition(
            f"not a position: {text!r} (expected a revision N, a stream sequence seq:N, "
            "a 32-hex event id or an ISO time)"
        ) from None
    return _utc(moment)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _normalize(position: Position) -> Position:
    if isinstance(position, bool):
        raise UnknownPosition(f"not a position: {position!r}")
    if isinstance(position, int | StreamSequence):
        return position
    if isinstance(position, datetime):
        return _utc(position)
    if isinstance(position, str):
        return parse_position(position)
    raise UnknownPosition(f"not a position: {position!r}")


def describe_position(position: Position) -> str:
    """A short human-readable name of a position."""
    position = _normalize(position)
    if isinstance(position, int):
        return f"revision {position}"
    if isinstance(position, StreamSequence):
        return f"sequence {position.value}"
    if isinstance(position, datetime):
        return f"time {position.isoformat()}"
    return f"event {position}"


@dataclasses.dataclass(slots=True)
class _Target:
    """One position being looked for during a walk over the log."""

    position: Position
    #: The stream sequence the walk stops after: the position's own, or a time's seek.
    bound: int | None = None
    state: SessionState | None = None
    envelope: Envelope | None = None
    done: bool = False


async def _walk(
    journal: Journal,
    session_id: str,
    positions: Sequence[Position],
    *,
    progress: Progress | None = None,
) -> list[_Target]:
    """One pass over the log, folding, that stops as soon as every position is resolved.

    A time is first turned into the sequence of the session's last event that
    occurred at or before it (a seek, :meth:`Journal.sequence_at`); the pass then
    reads no further than the last sequence, unless an event id is asked for.
    """
    targets = [_Target(_normalize(p)) for p in positions]
    if not targets:
        return []
    moments = [t.position for t in targets if isinstance(t.position, datetime)]
    seeks = await asyncio.gather(*(journal.sequence_at(session_id, m) for m in moments))
    found = dict(zip(moments, seeks, strict=True))
    for target in targets:
        p = target.position
        if isinstance(p, datetime):
            target.bound = found[p]
        elif isinstance(p, StreamSequence):
            target.bound = p.value
    ints = [t.bound for t in targets if t.bound is not None]
    bound = max(ints) if len(ints) == len(targets) else None
    state = SessionState(session_id)
    last: Envelope | None = None
    if bound is None or bound >= 1:
        reader = journal.read(session_id, to_sequence=bound, progress=progress)
        async with contextlib.aclosing(reader) as envelopes:
            async for envelope in envelopes:
                sequence = envelope.sequence or 0
                for target in targets:  # a bound is reached once the next event is past it
                    b = target.bound
                    if not target.done and b is not None and sequence > b:
                        target.state, target.envelope, target.done = state, last, True
                state = evolve(state, envelope)
                last = envelope
                for target in targets:
                    p = target.position
                    if target.done:
                        continue
                    if (isinstance(p, str) and envelope.event_id.lower() == p) or (
                        type(p) is int and state.revision == p
                    ):
                        target.state, target.envelope, target.done = state, last, True
                if all(t.done for t in targets):
                    if progress is not None:  # the read stops early: close the progress line
                        progress(sequence, sequence)
                    break
    if state.event_count == 0 and await journal.last_sequence(session_id) == 0:
        raise UnknownSession(f"no events for session {session_id!r}")
    for target in targets:
        p = target.position
        if not target.done and target.bound is not None:
            target.state, target.envelope = state, last
        if target.state is None or target.state.event_count == 0 or target.envelope is None:
            if isinstance(p, str):
                problem = "is not one of its events"
            elif type(p) is int and p > state.revision:
                problem = f"is after its last event (revision {state.revision})"
            else:
                problem = "is before its first event"
            raise UnknownPosition(f"session {session_id!r}: {describe_position(p)} {problem}")
    return targets


async def resolve(
    journal: Journal, session_id: str, position: Position, *, progress: Progress | None = None
) -> int:
    """The stream sequence of the session's event that ``position`` resolves to."""
    target = (await _walk(journal, session_id, [position], progress=progress))[0]
    return target.state.sequence if target.state is not None else 0


async def event_at(
    journal: Journal, session_id: str, position: Position, *, progress: Progress | None = None
) -> Envelope:
    """The session's event that ``position`` resolves to.

    A revision is looked up (a bisection by direct gets), not read up to, when the
    log records revisions; the other positions walk the log.
    """
    if type(position) is int:
        found = await journal.event_of_revision(session_id, position)
        if found is not None:
            return found
    target = (await _walk(journal, session_id, [position], progress=progress))[0]
    assert target.envelope is not None  # _walk raises otherwise
    return target.envelope


async def state_at(
    journal: Journal, session_id: str, position: Position, *, progress: Progress | None = None
) -> SessionState:
    """The session as it was right after the event ``position`` resolves to."""
    return (await states_at(journal, session_id, [position], progress=progress))[0]


async def states_at(
    journal: Journal,
    session_id: str,
    positions: Sequence[Position],
    *,
    progress: Progress | None = None,
) -> list[SessionState]:
    """The session at each of ``positions``, in one pass over the log."""
    targets = await _walk(journal, session_id, positions, progress=progress)
    return [t.state for t in targets if t.state is not None]


# -- diffs ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    """A value before and after."""

    before: Any
    after: Any


@dataclasses.dataclass(frozen=True, slots=True)
class SectionDiff:
    """How a keyed part of the state changed: keys added, removed, and changed."""

    added: Mapping[str, Any] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    removed: Mapping[str, Any] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    changed: Mapping[str, Change] = dataclasses.field(default_factory=lambda: MappingProxyType({}))

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def apply(self, mapping: Mapping[str, Any]) -> Mapping[str, Any]:
        """``mapping`` with this diff applied (removed keys dropped, others set)."""
        if not self:
            return mapping
        result = {k: v for k, v in mapping.items() if k not in self.removed}
        for key, change in self.changed.items():
            result[key] = change.after
        result.update(self.added)
        return MappingProxyType(result)


def _section(before: Mapping[str, Any], after: Mapping[str, Any]) -> SectionDiff:
    added = {k: v for k, v in after.items() if k not in before}
    removed = {k: v for k, v in before.items() if k not in after}
    changed = {k: Change(v, after[k]) for k, v in before.items() if k in after and after[k] != v}
    if not (added or removed or changed):
        return _NO_CHANGE
    return SectionDiff(
        MappingProxyType(dict(sorted(added.items()))),
        MappingProxyType(dict(sorted(removed.items()))),
        MappingProxyType(dict(sorted(changed.items()))),
    )


_NO_CHANGE = SectionDiff()


def _maybe(before: Any, after: Any) -> Change | None:
    return None if before == after else Change(before, after)


@dataclasses.dataclass(frozen=True, slots=True)
class StateDiff:
    """What changed between two states of a session (see :func:`diff` and :func:`apply`).

    ``metadata`` (key -> value), ``agents`` (id -> :class:`AgentView`),
    ``cursors`` (id -> :class:`CursorView`), ``roles`` (agent id -> roles held)
    and ``statements`` (policy statement id -> :class:`Statement`) list what
    was added, removed and changed (before/after); ``status``, ``end_reason``,
    ``identity`` and ``policy_version`` are a :class:`Change` or ``None`` if
    equal. ``sequence`` and ``event_count`` always give both sides.
    ``statement_order`` is the statement ids in the order of the second state,
    when adding at the end does not give that order (``None`` otherwise).
    :meth:`to_dict` is the JSON form, :meth:`from_dict` reads it back.
    """

    sequence: Change
    event_count: Change
    session_id: Change | None = None
    status: Change | None = None
    end_reason: Change | None = None
    metadata: SectionDiff = _NO_CHANGE
    agents: SectionDiff = _NO_CHANGE
    cursors: SectionDiff = _NO_CHANGE
    roles: SectionDiff = _NO_CHANGE
    identity: Change | None = None
    policy_version: Change | None = None
    statements: SectionDiff = _NO_CHANGE
    statement_order: tuple[str, ...] | None = None

    @property
    def empty(self) -> bool:
        """Whether the two states hold the same session content (positions aside)."""
        return not (
            self.session_id
            or self.status
            or self.end_reason
            or self.metadata
            or self.agents
            or self.cursors
            or self.roles
            or self.identity
            or self.policy_version
            or self.statements
            or self.statement_order
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly data (sections as ``{"added", "removed", "changed"}``)."""
        return {
            "sequence": _plain_change(self.sequence),
            "event_count": _plain_change(self.event_count),
            "session_id": _plain_change(self.session_id),
            "status": _plain_change(self.status),
            "end_reason": _plain_change(self.end_reason),
            "metadata": _plain_section(self.metadata),
            "agents": _plain_section(self.agents),
            "cursors": _plain_section(self.cursors),
            "roles": _plain_section(self.roles),
            "identity": _plain_change(self.identity),
            "policy_version": _plain_change(self.policy_version),
            "statements": _plain_section(self.statements),
            "statement_order": None if self.statement_order is None else list(self.statement_order),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StateDiff:
        """A diff from :meth:`to_dict`'s data (e.g. read back from JSON)."""

        def change(key: str, read: Any = None) -> Change | None:
            raw = data.get(key)
            if raw is None:
                return None
            convert = read or (lambda v: v)
            return Change(convert(raw["before"]), convert(raw["after"]))

        def section(key: str, read: Any) -> SectionDiff:
            raw = data.get(key) or {}
            if not any(raw.get(part) for part in ("added", "removed", "changed")):
                return _NO_CHANGE
            return SectionDiff(
                MappingProxyType({k: read(v) for k, v in (raw.get("added") or {}).items()}),
                MappingProxyType({k: read(v) for k, v in (raw.get("removed") or {}).items()}),
                MappingProxyType(
                    {
                        k: Change(read(c["before"]), read(c["after"]))
                        for k, c in (raw.get("changed") or {}).items()
                    }
                ),
            )

        order = data.get("statement_order")
        sequence = change("sequence")
        event_count = change("event_count")
        if sequence is None or event_count is None:
            raise ValueError("a state diff needs 'sequence' and 'event_count'")
        return cls(
            sequence=sequence,
            event_count=event_count,
            session_id=change("session_id"),
            status=change("status"),
            end_reason=change("end_reason"),
            metadata=section("metadata", lambda v: v),
            agents=section("agents", lambda v: AgentView(**v)),
            cursors=section("cursors", _cursor),
            roles=section("roles", tuple),
            identity=change("identity", _identity),
            policy_version=change("policy_version"),
            statements=section("statements", parse_statement),
            statement_order=None if order is None else tuple(order),
        )

    def describe(self) -> list[str]:
        """Human-readable lines: ``+`` added, ``-`` removed, ``~`` changed."""
        lines = [
            f"sequence {self.sequence.before} -> {self.sequence.after} "
            f"({self.event_count.before} -> {self.event_count.after} events)"
        ]
        for label, value in (
            ("session", self.session_id),
            ("status", self.status),
            ("end reason", self.end_reason),
            ("policy version", self.policy_version),
        ):
            if value is not None:
                lines.append(f"~ {label}: {value.before} -> {value.after}")
        if self.identity is not None:
            before, after = self.identity.before, self.identity.after
            if before is None:
                lines.append(f"+ identity {_show_identity(after)}")
            elif after is None:
                lines.append(f"- identity {_show_identity(before)}")
            else:
                lines.append(f"~ identity {_show_identity(before)} -> {_show_identity(after)}")
        for label, section, show in (
            ("metadata", self.metadata, repr),
            ("agent", self.agents, _show_agent),
            ("cursor", self.cursors, _show_cursor),
            ("roles of", self.roles, lambda roles: ",".join(roles) or "(none)"),
            ("statement", self.statements, _show_statement),
        ):
            for key, value in section.added.items():
                lines.append(f"+ {label} {key}: {show(value)}")
            for key, value in section.removed.items():
                lines.append(f"- {label} {key}: {show(value)}")
            for key, c in section.changed.items():
                lines.append(f"~ {label} {key}: {show(c.before)} -> {show(c.after)}")
        if self.statement_order is not None:
            lines.append(f"~ statement order: {', '.join(self.statement_order)}")
        if self.empty:
            lines.append("no differences")
        return lines


def _cursor(raw: Mapping[str, Any]) -> CursorView:
    return CursorView(
        raw["cursor_id"], raw["agent_id"], tuple(raw["axes"]), raw["start"], raw["end"]
    )


def _identity(raw: Mapping[str, Any] | None) -> IdentityView | None:
    if raw is None:
        return None
    return IdentityView(
        raw["identity_id"], raw["display_name"], MappingProxyType(dict(raw["attributes"]))
    )


def _plain_change(change: Change | None) -> dict[str, Any] | None:
    return (
        None if change is None else {"before": plain(change.before), "after": plain(change.after)}
    )


def _plain_section(section: SectionDiff) -> dict[str, Any]:
    return {
        "added": plain(section.added),
        "removed": plain(section.removed),
        "changed": {k: _plain_change(c) for k, c in section.changed.items()},
    }


def _show_identity(identity: IdentityView) -> str:
    attributes = "".join(f", {k}={v}" for k, v in identity.attributes.items())
    return f"{identity.identity_id} ({identity.display_name!r}{attributes})"


def _show_agent(agent: AgentView) -> str:
    return f"{agent.kind} {agent.name!r}, attached at {agent.attached_at}"


def _show_cursor(cursor: CursorView) -> str:
    return f"{cursor.agent_id} {','.join(cursor.axes)} [{cursor.start:g}, {cursor.end:g}]"


def _show_statement(statement: Statement) -> str:
    roles = f" for {','.join(statement.roles)}" if statement.roles else ""
    conditions = (
        " if " + " and ".join(c.describe() for c in statement.conditions)
        if statement.conditions
        else ""
    )
    return (
        f"{statement.effect} {','.join(statement.actions)} on "
        f"{','.join(statement.resources)}{roles}{conditions}"
    )


def describe_statement(statement: Statement) -> str:
    """A short human-readable summary of a policy statement (``allow a on r for role``)."""
    return _show_statement(statement)


def _statements(policy: Policy) -> dict[str, Statement]:
    return {s.id: s for s in policy.statements}


def diff(a: SessionState, b: SessionState) -> StateDiff:
    """What changed from ``a`` to ``b`` (usually two positions of one session)."""
    before, after = _statements(a.policy), _statements(b.policy)
    statements = _section(before, after)
    order: tuple[str, ...] | None = None
    if statements or [s.id for s in a.policy.statements] != [s.id for s in b.policy.statements]:
        wanted = tuple(s.id for s in b.policy.statements)
        if _ordered(a.policy.statements, statements) != wanted or len(after) != len(wanted):
            order = wanted
    return StateDiff(
        sequence=Change(a.sequence, b.sequence),
        event_count=Change(a.event_count, b.event_count),
        session_id=_maybe(a.session_id, b.session_id),
        status=_maybe(a.status, b.status),
        end_reason=_maybe(a.end_reason, b.end_reason),
        metadata=_section(a.metadata, b.metadata),
        agents=_section(a.agents, b.agents),
        cursors=_section(a.cursors, b.cursors),
        roles=_section(a.roles, b.roles),
        identity=_maybe(a.identity, b.identity),
        policy_version=_maybe(a.policy.version, b.policy.version),
        statements=statements,
        statement_order=order,
    )


def diff_sessions(a: SessionState, b: SessionState) -> StateDiff:
    """What differs from ``a`` to ``b``, states of two sessions (a fork against its origin).

    What names the session rather than its content does not count: the session
    id, and the agents' ``attached_at`` (a stream sequence of each session's own
    ``AgentAttached``; shown as 0). ``sequence`` and ``event_count`` still give
    both sides. A fork at revision N against its origin at N is :attr:`~StateDiff.empty`.
    """
    return diff(_unplaced(a), _unplaced(b))


def _unplaced(state: SessionState) -> SessionState:
    agents = {
        agent_id: dataclasses.replace(agent, attached_at=0)
        for agent_id, agent in state.agents.items()
    }
    return dataclasses.replace(state, session_id="", agents=MappingProxyType(agents))


def _ordered(statements: Sequence[Statement], change: SectionDiff) -> tuple[str, ...]:
    """The statement ids after applying ``change`` without an explicit order."""
    kept = [s.id for s in statements if s.id not in change.removed]
    return (*kept, *(k for k in change.added if k not in kept))


def apply(state: SessionState, change: StateDiff) -> SessionState:
    """``state`` with ``change`` applied: ``apply(a, diff(a, b)) == b``.

    Applied to another state than the diff's first one, it works as a patch:
    removed keys are dropped, added and changed ones take their new values,
    and the other fields take the diff's second side.
    """
    policy = state.policy
    if change.statements or change.statement_order is not None or change.policy_version:
        by_id = dict(_statements(policy))
        by_id = dict(change.statements.apply(by_id))
        order = change.statement_order or _ordered(policy.statements, change.statements)
        version = change.policy_version.after if change.policy_version else policy.version
        policy = Policy(tuple(by_id[i] for i in order if i in by_id), version)
    return dataclasses.replace(
        state,
        session_id=change.session_id.after if change.session_id else state.session_id,
        status=change.status.after if change.status else state.status,
        end_reason=change.end_reason.after if change.end_reason else state.end_reason,
        metadata=change.metadata.apply(state.metadata),
        agents=change.agents.apply(state.agents),
        cursors=change.cursors.apply(state.cursors),
        roles=change.roles.apply(state.roles),
        identity=change.identity.after if change.identity else state.identity,
        policy=policy,
        sequence=change.sequence.after,
        event_count=change.event_count.after,
    )


# -- why --------------------------------------------------------------------------------


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
        self.set_by: dict[str, Envelope] = {}
        self.granted_by: dict[tuple[str, str], Envelope] = {}

    def see(self, envelope: Envelope) -> None:
        match envelope.event:
            case PolicyChanged(statements=statements):
                before = self.statements
                self.statements = {s.id: s for s in statements}
                for statement_id, statement in self.statements.items():
                    if before.get(statement_id) != statement:
                        self.set_by[statement_id] = envelope
                for statement_id in [i for i in self.set_by if i not in self.statements]:
                    del self.set_by[statement_id]
            case RoleGranted(agent_id=agent_id, role=role):
                self.granted_by.setdefault((agent_id, role), envelope)
            case RoleRevoked(agent_id=agent_id, role=role):
                self.granted_by.pop((agent_id, role), None)
            case AgentDetached(agent_id=agent_id):
                for key in [k for k in self.granted_by if k[0] == agent_id]:
                    del self.granted_by[key]
            case SessionEnded():
                self.granted_by.clear()
            case _:
                pass

    def grounds(
        self, resource: str, effect: str, statement_id: str | None, agent_id: str | None
    ) -> Grounds:
        statement = None if statement_id is None else self.statements.get(statement_id)
        roles: tuple[str, ...] = ()
        grants: tuple[Envelope, ...] = ()
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
        return Grounds(
            resource,
            effect,
            statement_id,
            agent_id,
            statement,
            None if statement_id is None else self.set_by.get(statement_id),
            roles,
            grants,
        )


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
    are looked for too: in ``index`` (a :class:`~plantangenet.correlations.CorrelationIndex`,
    caught up first: a read of what was stored since its checkpoint), or without
    one by :func:`correlated`, a read of every other session.
    """
    target = await event_at(journal, session_id, event, progress=progress)
    command: list[Envelope] = []
    chain: list[Envelope] = []
    sources = _Sources()
    tracking = True
    async for envelope in journal.read(session_id, progress=progress):
        if envelope.causation_id == target.causation_id:
            command.append(envelope)
            tracking = False  # the decision was taken before the command's first event
        if envelope.correlation_id == target.correlation_id:
            chain.append(envelope)
        if tracking and (envelope.sequence or 0) < (target.sequence or 0):
            sources.see(envelope)
    first = command[0] if command else target
    allowed: bool | None = None
    grounds: tuple[Grounds, ...] = ()
    match target.event:
        case AccessDenied(agent_id=agent_id, resource=resource, statement_id=statement_id):
            allowed = False
            grounds = (sources.grounds(resource, "deny", statement_id, agent_id),)
        case _ if first.authorization is not None:
            allowed = True
            auth = first.authorization
            grounds = tuple(
                sources.grounds(resource, "allow", statement_id, first.agent_id)
                for resource, statement_id in zip(auth.resources, auth.statements, strict=False)
            )
        case _:
            pass
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


# -- plain views ------------------------------------------------------------------------


def state_record(state: SessionState) -> dict[str, Any]:
    """A session state as JSON-friendly data (the policy as its version and statements)."""
    return {
        "session_id": state.session_id,
        "status": state.status,
        "end_reason": state.end_reason,
        "sequence": state.sequence,
        "event_count": state.event_count,
        "metadata": plain(state.metadata),
        "identity": plain(state.identity),
        "agents": plain(state.agents),
        "cursors": plain(state.cursors),
        "roles": plain(state.roles),
        "policy": {
            "version": state.policy.version,
            "statements": [plain(s) for s in state.policy.statements],
        },
    }


def describe_state(state: SessionState) -> list[str]:
    """Human-readable lines describing a session state."""
    ended = f" ({state.end_reason})" if state.end_reason else ""
    lines = [
        f"session {state.session_id}: {state.status}{ended}, "
        f"{state.event_count} events, last sequence {state.sequence}"
    ]
    metadata = " ".join(f"{k}={v!r}" for k, v in state.metadata.items())
    lines.append(f"  metadata: {metadata or '(none)'}")
    identity = _show_identity(state.identity) if state.identity else "(none)"
    lines.append(f"  identity: {identity}")
    statements = state.policy.statements
    lines.append(f"  policy v{state.policy.version}: {len(statements)} statements")
    lines.extend(f"    {s.id}: {_show_statement(s)}" for s in statements)
    lines.append(f"  agents: {len(state.agents)}")
    for agent_id, agent in sorted(state.agents.items()):
        roles = ",".join(state.roles_of(agent_id)) or "-"
        lines.append(f"    {agent_id}: {_show_agent(agent)}; roles {roles}")
    lines.append(f"  cursors: {len(state.cursors)}")
    lines.extend(f"    {cid}: {_show_cursor(c)}" for cid, c in sorted(state.cursors.items()))
    return lines
