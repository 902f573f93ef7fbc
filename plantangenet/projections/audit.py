"""The audit projection: who did or tried what, on which resources, and what decided it.

Built from a session's envelopes: every stored command contributes one entry
per resource it touched, allowed by the statement its envelope's
``authorization`` names; every ``AccessDenied`` event contributes a denied
entry. The same fold runs live (fed by on-change hooks) and over a replay.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Literal

from plantangenet.events.envelope import Envelope
from plantangenet.events.policy_values import pattern_matches
from plantangenet.events.session import AccessDenied

Outcome = Literal["allowed", "denied"]


@dataclasses.dataclass(frozen=True, slots=True)
class AuditEntry:
    """One decision about one resource."""

    sequence: int
    occurred_at: datetime
    agent_id: str | None  # None: the session's owner
    command_id: str
    command: str  # event type for allowed commands' first event, command name for denials
    action: str
    resource: str
    outcome: Outcome
    statement_id: str | None
    policy_version: int
    reason: str


def audit_entries(envelope: Envelope) -> Iterator[AuditEntry]:
    """The audit entries one stored envelope contributes (often none)."""
    event = envelope.event
    sequence = envelope.sequence or 0
    if isinstance(event, AccessDenied):
        yield AuditEntry(
            sequence,
            envelope.occurred_at,
            event.agent_id,
            envelope.causation_id,
            event.command,
            event.action,
            event.resource,
            "denied",
            event.statement_id,
            event.policy_version,
            event.reason,
        )
        return
    auth = envelope.authorization
    if auth is None:
        return
    for resource, statement in zip(auth.resources, auth.statements, strict=False):
        yield AuditEntry(
            sequence,
            envelope.occurred_at,
            envelope.agent_id,
            envelope.causation_id,
            envelope.type_name,
            auth.action,
            resource,
            "allowed",
            statement,
            auth.policy_version,
            "session owner" if statement is None else f"allowed by statement {statement!r}",
        )


class Audit:
    """An audit trail, fed envelope by envelope (live or from a replay)."""

    def __init__(self) -> None:
        self.entries: list[AuditEntry] = []

    def __call__(self, envelope: Envelope) -> None:
        """Fold one stored envelope in (usable as an on-change callback)."""
        self.entries.extend(audit_entries(envelope))

    @classmethod
    def of(cls, envelopes: Iterable[Envelope]) -> Audit:
        """The audit of a sequence of envelopes."""
        audit = cls()
        for envelope in envelopes:
            audit(envelope)
        return audit

    def query(
        self,
        *,
        agent: str | None = None,
        action: str | None = None,
        resource: str | None = None,
        outcome: Outcome | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[AuditEntry]:
        """Entries matching every given filter.

        ``action`` and ``resource`` are dotted patterns (``cursor.*``,
        ``axis.ocean.*``); ``since``/``until`` bound the time (inclusive).
        """
        return [
            e
            for e in self.entries
            if (agent is None or e.agent_id == agent)
            and (action is None or pattern_matches(action, e.action))
            and (resource is None or pattern_matches(resource, e.resource))
            and (outcome is None or e.outcome == outcome)
            and (since is None or e.occurred_at >= since)
            and (until is None or e.occurred_at <= until)
        ]
