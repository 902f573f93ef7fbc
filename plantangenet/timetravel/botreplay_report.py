"""What a bot replay reports: each command then and now, and where it stopped.

:class:`ReplayReport` (its :class:`ReplayEntry` s, compared with
:func:`~plantangenet.timetravel.botreplay_records.compare`) is what
:func:`plantangenet.timetravel.botreplay.replay_agent` returns; :class:`EventFilter` and
:func:`describe_break` are what its breakpoints are told.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable
from typing import Any, Literal

from plantangenet.events.envelope import Envelope
from plantangenet.projections.session import SessionState
from plantangenet.projections.views import describe, plain
from plantangenet.timetravel.botreplay_records import (
    _REFUSALS,
    CommandRecord,
    FieldChange,
    Outcome,
)
from plantangenet.timetravel.history import describe_state

#: What a breakpoint answers: go on to the next breakpoint, stop before the next
#: event, or end the replay there.
BreakAction = Literal["continue", "step", "quit"]


@dataclasses.dataclass(frozen=True, slots=True)
class ReplayEntry:
    """One command, then and/or now, at the event the agent was handling.

    ``sequence`` and ``event_type`` name that event: the event it was handed when
    it sent the command now (same, different, new), or, for a missing command,
    the last event it had been handed before the log stored the command then.
    """

    sequence: int
    event_type: str
    outcome: Outcome
    then: CommandRecord | None
    now: CommandRecord | None
    changes: tuple[FieldChange, ...] = ()

    @property
    def diverged(self) -> bool:
        return self.outcome != "same"

    def to_dict(self) -> dict[str, Any]:
        return {
            "sequence": self.sequence,
            "event_type": self.event_type,
            "outcome": self.outcome,
            "then": None if self.then is None else self.then.to_dict(),
            "now": None if self.now is None else self.now.to_dict(),
            "changes": [
                {"field": c.field, "then": plain(c.then), "now": plain(c.now)} for c in self.changes
            ],
        }


@dataclasses.dataclass(slots=True)
class ReplayReport:
    """What a replay of an agent found: per event, its commands then and now."""

    session_id: str
    agent_id: str
    #: The stream sequences reported on (events before ``first`` only warm the agent up).
    first: int
    last: int
    entries: list[ReplayEntry] = dataclasses.field(default_factory=list)
    #: Events of the reported range handed to the agent (``on_event`` or its callbacks).
    handed: int = 0
    #: Hooks of the behaviour that raised: ``"sequence N: on_event raised ..."``.
    failures: list[str] = dataclasses.field(default_factory=list)
    #: Whether the replay was ended at a breakpoint before the end of the range.
    quit: bool = False
    #: The fork the commands now landed in (``replay-serve``), if any.
    fork_id: str | None = None

    @property
    def diverged(self) -> bool:
        """Whether any command differs, is new or missing, or a hook raised."""
        return bool(self.failures) or any(e.diverged for e in self.entries)

    @property
    def first_divergence(self) -> ReplayEntry | None:
        return next((e for e in self.entries if e.diverged), None)

    def count(self, outcome: Outcome) -> int:
        return sum(1 for e in self.entries if e.outcome == outcome)

    def to_dict(self) -> dict[str, Any]:
        first = self.first_divergence
        return {
            "session_id": self.session_id,
            "agent_id": self.agent_id,
            "first": self.first,
            "last": self.last,
            "handed": self.handed,
            "diverged": self.diverged,
            "first_divergence": None if first is None else first.sequence,
            "counts": {o: self.count(o) for o in ("same", "different", "new", "missing")},
            "failures": list(self.failures),
            "quit": self.quit,
            "fork_id": self.fork_id,
            "entries": [e.to_dict() for e in self.entries],
        }

    def describe(self) -> list[str]:
        """The report as lines of text."""
        then = sum(1 for e in self.entries if e.then is not None)
        now = sum(1 for e in self.entries if e.now is not None)
        where = f" (now in fork {self.fork_id})" if self.fork_id else ""
        lines = [
            f"replay of agent {self.agent_id} on session {self.session_id}{where}, sequences "
            f"{self.first}-{self.last}: {self.handed} events handed, "
            f"{then} commands then, {now} now"
        ]
        if self.entries:
            lines.append(f"{'SEQ':>6}  {'EVENT':<22}  {'OUTCOME':<9}  COMMAND")
        for e in self.entries:
            record = e.now if e.now is not None else e.then
            assert record is not None
            shown = record.describe()
            if e.outcome == "missing" and e.then is not None:
                shown += f" (stored then at {e.then.sequence})"
            lines.append(f"{e.sequence:>6}  {e.event_type:<22}  {e.outcome:<9}  {shown}")
            lines.extend(f"{'':>43}{c.describe()}" for c in e.changes)
        lines.extend(f"failure: {f}" for f in self.failures)
        if self.quit:
            lines.append("(quit at a breakpoint: the rest of the range was not replayed)")
        first = self.first_divergence
        if first is not None:
            lines.append(
                f"DIVERGED: first at sequence {first.sequence} ({first.outcome}); "
                f"{self.count('same')} same, {self.count('different')} different, "
                f"{self.count('new')} new, {self.count('missing')} missing"
            )
        elif self.failures:
            lines.append(f"DIVERGED: {len(self.failures)} hook failure(s)")
        else:
            lines.append(f"SAME: {self.count('same')} commands, as recorded")
        return lines


@dataclasses.dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a breakpoint stops before (every given criterion must match).

    ``types`` are glob patterns of event types (``Cursor*``); ``agent`` matches an
    event issued by or about the agent (as ``history --agent``); ``outcome``
    ``"denied"`` matches recorded refusals (``AccessDenied``, ``ChargeRefused``),
    ``"allowed"`` every other event.
    """

    types: tuple[str, ...] = ()
    agent: str | None = None
    outcome: Literal["allowed", "denied"] | None = None

    def __bool__(self) -> bool:
        return bool(self.types or self.agent is not None or self.outcome is not None)

    def __call__(self, envelope: Envelope) -> bool:
        if self.types and not any(fnmatch.fnmatchcase(envelope.type_name, t) for t in self.types):
            return False
        if self.agent is not None and self.agent not in (
            envelope.agent_id,
            getattr(envelope.event, "agent_id", None),
        ):
            return False
        if self.outcome is not None:
            denied = envelope.type_name in _REFUSALS
            if denied != (self.outcome == "denied"):
                return False
        return True


#: Called at a breakpoint with the event about to be handed, the session just before
#: it and the report so far; answers what to do next.
OnBreak = Callable[[Envelope, SessionState, ReplayReport], BreakAction]


def describe_break(
    envelope: Envelope, state: SessionState, report: ReplayReport, since: int = 0
) -> list[str]:
    """Lines shown at a breakpoint: the event next, the session just before it, and the
    agent's commands so far (those from entry ``since`` on, one by one)."""
    by = envelope.agent_id or "the owner"
    lines = [
        f"-- break before sequence {envelope.sequence}: {envelope.type_name} by {by} "
        f"at {envelope.occurred_at.isoformat()}",
        f"   {describe(envelope)}",
        *(f"   {line}" for line in describe_state(state)),
    ]
    for entry in report.entries[since:]:
        record = entry.now if entry.now is not None else entry.then
        assert record is not None
        lines.append(
            f"   {report.agent_id} at {entry.sequence}: {entry.outcome} {record.describe()}"
        )
        lines.extend(f"     {change.describe()}" for change in entry.changes)
    lines.append(
        f"   {report.agent_id} so far: {report.count('same')} same, "
        f"{report.count('different')} different, {report.count('new')} new, "
        f"{report.count('missing')} missing"
    )
    return lines
