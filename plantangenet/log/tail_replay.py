"""Replaying a long log while an observer sees only its tail: the last commands' events.

A session actor that rehydrates folds every event of its log, but of what it observes
it keeps only the outcomes of its last commands (to answer a retried command as
before) and the last event's digest (its next append chains to it). Observing each
of 200,000 events costs the SHA-256 of each and the bookkeeping of each, to keep a
thousand. :func:`replay_tail` folds the whole log without an observer (the quick
replay), then reads the tail again -- found by revision, a bisection of direct gets --
and shows the observer every event of the last ``commands`` commands, in order. What
the observer ends up remembering is the same as if it had seen every event.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from plantangenet.events.envelope import Envelope
from plantangenet.log.journal import Journal
from plantangenet.log.session_replay import replay
from plantangenet.projections.session import SessionState


def command_key(envelope: Envelope) -> tuple[str | None, str]:
    """The command an event belongs to: its principal and command id (the causation)."""
    return (envelope.principal, envelope.causation_id)


async def replay_tail(
    journal: Journal,
    session_id: str,
    *,
    state: SessionState,
    observe: Callable[[Envelope], None],
    commands: int,
) -> SessionState:
    """``replay(journal, session_id, state=state, observe=observe)``, except that
    ``observe`` sees only every event of the last ``commands`` commands (by
    :func:`command_key`), in order, once the whole log is folded.

    Where that would not save much, or cannot be done exactly, it *is* that replay,
    every event observed: fewer than ``2 * commands`` events after ``state``, a log
    whose events carry no revision, a message that is no event of the session.
    """
    before = state.event_count
    end = await journal.last_sequence(session_id)
    last = await journal.event_stored_at(session_id, end) if end > state.sequence else None
    if last is None or last.revision is None or last.revision - before <= 2 * commands:
        return await replay(journal, session_id, state=state, observe=observe)
    folded = await replay(journal, session_id, state=state, to_sequence=end)
    if folded.unreadable or folded.event_count != last.revision or folded.sequence != end:
        return await replay(journal, session_id, state=state, observe=observe)
    tail = await _last_commands(journal, session_id, state, folded, commands)
    if tail is None:
        return await replay(journal, session_id, state=state, observe=observe)
    for envelope in tail:
        observe(envelope)
    return folded


async def _last_commands(
    journal: Journal,
    session_id: str,
    state: SessionState,
    folded: SessionState,
    commands: int,
) -> list[Envelope] | None:
    """Every event of the last ``commands`` commands between ``state`` and ``folded``
    (all of them if fewer), in order; ``None`` where the tail cannot be found by revision."""
    span = 2 * commands  # events: most commands store one
    while True:
        after = max(state.event_count, folded.event_count - span)  # the tail's revisions follow
        if after == state.event_count:
            reader = journal.read(
                session_id, from_sequence=state.sequence + 1, to_sequence=folded.sequence
            )
            return [envelope async for envelope in reader]
        before = await journal.event_of_revision(session_id, after)  # the event before the tail
        if before is None or before.sequence is None:
            return None
        reader = journal.read(
            session_id, from_sequence=before.sequence, to_sequence=folded.sequence
        )
        tail = [envelope async for envelope in reader][1:]
        if tail and command_key(tail[0]) == command_key(before):
            # The tail begins inside a command: leave that one out (older than every
            # other, it is forgotten once ``commands`` newer ones are remembered).
            tail = _without_first_command(tail)
        if len({command_key(e) for e in tail}) >= commands:
            return tail
        span *= 4


def _without_first_command(envelopes: list[Envelope]) -> list[Envelope]:
    """``envelopes`` without the events of the first one's command at their start."""
    if not envelopes:
        return envelopes
    cut = command_key(envelopes[0])
    return list(itertools.dropwhile(lambda e: command_key(e) == cut, envelopes))
