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
  sequence by a seek (:meth:`~plantangenet.log.journal.Journal.sequence_at`, which
  reads only the events stored within ``clock_skew`` of it and states what it
  assumes of the clocks), and is then a sequence position.

A sequence or time before the session's first event, and an event id that is
not the session's, raise :class:`~plantangenet.errors.UnknownPosition`; a
session with no events raises :class:`~plantangenet.errors.UnknownSession`.
:func:`parse_position` reads the textual form the command line takes.

Everything here streams the log (an ordered consumer), and reads it no further
than the last position asked for (except for event ids): memory does not grow
with the session's length.

The pieces live in their own modules, and every name is importable from here:
positions and the state at one in :mod:`plantangenet.log.positions` (below the runtime,
whose ``state_at`` it is), diffs in :mod:`plantangenet.timetravel.state_diff`, "why" in
:mod:`plantangenet.timetravel.why`.
"""

from __future__ import annotations

from typing import Any

from plantangenet.log.positions import Position as Position
from plantangenet.log.positions import StreamSequence as StreamSequence
from plantangenet.log.positions import describe_position as describe_position
from plantangenet.log.positions import event_at as event_at
from plantangenet.log.positions import parse_position as parse_position
from plantangenet.log.positions import resolve as resolve
from plantangenet.log.positions import state_at as state_at
from plantangenet.log.positions import states_at as states_at
from plantangenet.projections.session import SessionState
from plantangenet.projections.views import plain
from plantangenet.timetravel.state_diff import Change as Change
from plantangenet.timetravel.state_diff import SectionDiff as SectionDiff
from plantangenet.timetravel.state_diff import StateDiff as StateDiff
from plantangenet.timetravel.state_diff import (
    _show_agent,
    _show_cursor,
    _show_identity,
    _show_statement,
)
from plantangenet.timetravel.state_diff import apply as apply
from plantangenet.timetravel.state_diff import describe_statement as describe_statement
from plantangenet.timetravel.state_diff import diff as diff
from plantangenet.timetravel.state_diff import diff_sessions as diff_sessions
from plantangenet.timetravel.why import Grounds as Grounds
from plantangenet.timetravel.why import Why as Why
from plantangenet.timetravel.why import correlated as correlated
from plantangenet.timetravel.why import fork_origin as fork_origin
from plantangenet.timetravel.why import why as why

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
