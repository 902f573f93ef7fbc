"""What changed between two states of a session, and applying a change.

:func:`diff` compares two :class:`~plantangenet.projections.session.SessionState` s
section by section (:class:`StateDiff`), :func:`diff_sessions` two sessions at two
positions, :func:`apply` replays a diff onto a state. Part of time travel
(see :mod:`plantangenet.timetravel.history`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from plantangenet.domain.policy import Policy, Statement, parse_statement
from plantangenet.projections.session import (
    AgentView,
    CursorView,
    IdentityView,
    SessionState,
)
from plantangenet.projections.views import plain


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
