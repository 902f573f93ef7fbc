"""Replaying a session's log into its projection.

Used by the session actor to rehydrate, by "state at sequence N", and by the
command line. Streams: memory does not grow with the number of events.
"""

from __future__ import annotations

from collections.abc import Callable

from plantangenet.events.envelope import Envelope
from plantangenet.journal import Journal
from plantangenet.projections.session import SessionState, evolve

#: ``progress(sequence_reached, last_sequence)``
Progress = Callable[[int, int], None]


async def replay(
    journal: Journal,
    session_id: str,
    *,
    state: SessionState | None = None,
    to_sequence: int | None = None,
    progress: Progress | None = None,
    observe: Callable[[Envelope], None] | None = None,
) -> SessionState:
    """Fold the session's events into ``state`` (default: a new session).

    Continues after ``state.sequence``, so it also catches a live state up
    with events other writers stored. ``observe`` sees each envelope after it
    was folded in.
    """
    current = state if state is not None else SessionState(session_id)
    async for envelope in journal.read(
        session_id,
        from_sequence=current.sequence + 1,
        to_sequence=to_sequence,
        progress=progress,
    ):
        current = evolve(current, envelope)
        if observe is not None:
            observe(envelope)
    return current
