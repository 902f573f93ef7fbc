"""The explorer's text: what an event changed (:func:`diff_states`), and one-line
renderings of events, states and ``why`` answers for the panes."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from datetime import UTC
from typing import Any, Literal

from plantangenet.domain.policy import Policy, Statement
from plantangenet.events.envelope import Envelope
from plantangenet.projections.session import AgentView, CursorView, IdentityView, SessionState
from plantangenet.projections.views import describe, plain
from plantangenet.timetravel.history import Why, describe_statement

__all__ = [
    "Change",
    "diff_states",
    "event_lines",
    "search_text",
    "show",
    "state_lines",
    "why_lines",
]

# -- diff -------------------------------------------------------------------------------

ChangeKind = Literal["added", "removed", "changed"]


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    """One difference between two states: ``path`` was added, removed or changed.

    ``before`` is ``None`` for an addition, ``after`` for a removal; values are
    the projection's own (``CursorView``, ``AgentView``, role tuples...).
    """

    path: str
    kind: ChangeKind
    before: Any = None
    after: Any = None

    def __str__(self) -> str:
        render = _scalar if self.path.startswith("metadata.") else show
        if self.kind == "added":
            return f"+ {self.path} = {render(self.after)}"
        if self.kind == "removed":
            return f"- {self.path} (was {render(self.before)})"
        return f"~ {self.path}: {render(self.before)} -> {render(self.after)}"


def _diff_mapping(
    prefix: str, before: Mapping[str, Any], after: Mapping[str, Any], out: list[Change]
) -> None:
    for key in sorted(set(before) | set(after)):
        if key not in after:
            out.append(Change(f"{prefix}.{key}", "removed", before[key], None))
        elif key not in before:
            out.append(Change(f"{prefix}.{key}", "added", None, after[key]))
        elif before[key] != after[key]:
            out.append(Change(f"{prefix}.{key}", "changed", before[key], after[key]))


def _diff_value(path: str, before: Any, after: Any, out: list[Change]) -> None:
    if before == after:
        return
    if before is None:
        out.append(Change(path, "added", None, after))
    elif after is None:
        out.append(Change(path, "removed", before, None))
    else:
        out.append(Change(path, "changed", before, after))


def diff_states(before: SessionState, after: SessionState) -> list[Change]:
    """What changed from ``before`` to ``after`` (not counting sequence and event count)."""
    out: list[Change] = []
    _diff_value("status", before.status, after.status, out)
    _diff_value("end_reason", before.end_reason, after.end_reason, out)
    _diff_value("identity", before.identity, after.identity, out)
    _diff_mapping("metadata", before.metadata, after.metadata, out)
    _diff_mapping("agents", before.agents, after.agents, out)
    _diff_mapping("cursors", before.cursors, after.cursors, out)
    _diff_mapping("roles", before.roles, after.roles, out)
    if before.policy != after.policy:
        _diff_value("policy.version", before.policy.version, after.policy.version, out)
        _diff_mapping(
            "policy.statements",
            {s.id: s for s in before.policy.statements},
            {s.id: s for s in after.policy.statements},
            out,
        )
    return out


# -- text -------------------------------------------------------------------------------


def show(value: Any) -> str:
    """A compact one-line rendering of a projection value."""
    match value:
        case CursorView(agent_id=agent, axes=axes, start=start, end=end):
            return f"{agent} {','.join(axes)} [{start:g}, {end:g}]"
        case AgentView(kind=kind, name=name, attached_at=at):
            return f"{kind} {json.dumps(name, ensure_ascii=False)} (attached at seq {at})"
        case IdentityView(identity_id=identity, display_name=name, attributes=attributes):
            attrs = " ".join(f"{k}={_scalar(v)}" for k, v in sorted(attributes.items()))
            return f"{identity} {json.dumps(name, ensure_ascii=False)} {attrs}".rstrip()
        case Statement():
            return _statement(value)
        case Policy(version=version, statements=statements):
            return f"v{version} ({len(statements)} statements)"
        case tuple() if all(isinstance(v, str) for v in value):
            return ",".join(value) or "(none)"
        case str():
            return value
        case _:
            return _scalar(value)


def _scalar(value: Any) -> str:
    try:
        return json.dumps(plain(value), ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError):
        return repr(value)


def _statement(s: Statement) -> str:
    text = f"{s.effect} actions={','.join(s.actions)} resources={','.join(s.resources)}"
    if s.roles:
        text += f" roles={','.join(s.roles)}"
    for c in s.conditions:
        text += f" if {c.key} {c.op} {_scalar(c.value)}"
    return text


def state_lines(state: SessionState) -> list[str]:
    """The state as indented text lines (for the right-hand pane)."""
    lines = [f"status: {state.status}  (seq {state.sequence}, {state.event_count} events)"]
    if state.end_reason is not None:
        lines.append(f"ended: {state.end_reason}")
    if state.identity is not None:
        lines.append(f"identity: {show(state.identity)}")
    lines.append(f"metadata ({len(state.metadata)}):")
    lines += [f"  {k} = {_scalar(v)}" for k, v in sorted(state.metadata.items())]
    lines.append(f"agents ({len(state.agents)}):")
    for agent_id, agent in sorted(state.agents.items()):
        roles = state.roles_of(agent_id)
        held = f"  roles: {','.join(roles)}" if roles else ""
        lines.append(f"  {agent_id}  {show(agent)}{held}")
    lines.append(f"cursors ({len(state.cursors)}):")
    lines += [f"  {cid}  {show(c)}" for cid, c in sorted(state.cursors.items())]
    policy = state.policy
    lines.append(f"policy v{policy.version} ({len(policy.statements)} statements):")
    lines += [f"  {s.id}  {_statement(s)}" for s in policy.statements]
    return lines


def timeline_row(envelope: Envelope, *, compact: bool = False) -> str:
    """One event as a row of the left-hand column: sequence, time, type, agent.

    ``compact`` leaves the time out (for narrow terminals).
    """
    at = envelope.occurred_at.astimezone(UTC)
    when = "" if compact else f"{at:%m-%d %H:%M:%S}  "
    return f"{envelope.sequence or 0:>6}  {when}{envelope.type_name:<22} {envelope.agent_id or '-'}"


def event_lines(envelope: Envelope) -> list[str]:
    """The selected event: header, time, who, and its content."""
    at = envelope.occurred_at.astimezone(UTC)
    lines = [
        f"seq {envelope.sequence}  {envelope.type_name}  by {envelope.agent_id or '(owner)'}",
        f"at {at.isoformat()}",
    ]
    details = describe(envelope)
    if details:
        lines.append(f"  {details}")
    return lines


def search_text(envelope: Envelope) -> str:
    """What ``/`` searches in an event, lower-cased: its type, agent and payload."""
    try:
        payload = json.dumps(plain(envelope.event), ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError):
        payload = repr(envelope.event)
    parts = (envelope.type_name, envelope.agent_id or "", envelope.event_id, payload)
    return "\n".join(parts).lower()


def why_lines(answer: Why) -> list[str]:
    """A :class:`~plantangenet.timetravel.history.Why` (what ``plantangenet why``
    answers), as lines."""
    event = answer.event
    first = answer.command_events[0] if answer.command_events else event
    by = f"agent {first.agent_id}" if first.agent_id else "the session owner"
    lines = [
        f"seq {event.sequence}  {event.type_name}  event {event.event_id}",
        f"command {answer.command_id}",
        f"  issued by {by}, {len(answer.command_events)} event(s):",
    ]
    for envelope in answer.command_events:
        mark = "*" if envelope.event_id == event.event_id else " "
        lines.append(f"  {mark}{envelope.sequence:>6}  {envelope.type_name}")
    if answer.allowed is not None:
        lines.append("allowed" if answer.allowed else "REFUSED")
    for grounds in answer.grounds:
        verb = "allowed" if grounds.effect == "allow" else "denied"
        if grounds.statement_id is None:
            reason = (
                "no statement needed (owner)"
                if grounds.effect == "allow"
                else f"default deny (roles held: {','.join(grounds.roles) or 'none'})"
            )
        else:
            reason = f"by statement {grounds.statement_id}"
            if grounds.statement is not None:
                reason += f" ({describe_statement(grounds.statement)})"
        lines.append(f"  {grounds.resource}: {verb}, {reason}")
        if grounds.policy_change is not None:
            lines.append(f"    set by PolicyChanged seq {grounds.policy_change.sequence}")
        for role, grant in zip(grounds.roles, grounds.grants, strict=True):
            lines.append(f"    role {role} granted by RoleGranted seq {grant.sequence}")
    lines.append(
        f"correlation {answer.correlation_id}: {len(answer.commands)} command(s), "
        f"{len(answer.chain)} event(s)"
    )
    for envelope in answer.chain:
        mark = "*" if envelope.event_id == event.event_id else " "
        lines.append(f"  {mark}{envelope.sequence:>6}  {envelope.type_name}")
    if answer.origin is not None:
        lines.append(f"copied by a fork from {answer.origin[0]}, sequence {answer.origin[1]}")
    return lines
