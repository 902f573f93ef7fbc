"""Replaying a session's log into its projection.

Used by the session actor to rehydrate, by "state at sequence N", and by the
command line. Streams: memory does not grow with the number of events.

A message of the session's subject that is not a valid event of the session
(it is no envelope at all, or it belongs to another session: bytes written
behind the writer's back) does not stop the fold: the state moves past it and
lists it in ``SessionState.unreadable`` until an operator quarantines it
(``MessageQuarantined``); meanwhile the session takes no command. An envelope
of an event type or version this code does not know does stop it: it is newer
code's event, not damage.
It reads the log (any :class:`~plantangenet.log.replay.ReadableLog`) and folds with the
session projection, so it sits above both.
"""

from __future__ import annotations

from collections.abc import Callable

from plantangenet.errors import DecodeError, UnknownEventType, UnknownEventVersion
from plantangenet.events.envelope import Envelope
from plantangenet.log.replay import Progress, ReadableLog
from plantangenet.projections.session import SessionState, evolve, with_unreadable


async def replay(
    journal: ReadableLog,
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
    was folded in, with its revision (``state.revision`` after folding it).
    """
    current = state if state is not None else SessionState(session_id)
    decode = journal.codec.decode
    end = await _end(journal, session_id, to_sequence) if progress is not None else 0
    count = 0
    async for sequence, payload in journal.read_raw(
        session_id, from_sequence=current.sequence + 1, to_sequence=to_sequence
    ):
        try:
            envelope = decode(payload, sequence=sequence)
        except (UnknownEventType, UnknownEventVersion):
            raise  # an event of newer code (or a missing upcaster), not damage: say so
        except DecodeError as exc:
            current = with_unreadable(current, sequence, f"{exc.code}: {exc}")
        else:
            if envelope.session_id == session_id:
                current = evolve(current, envelope)
                if observe is not None:
                    if envelope.revision is None:  # stored before revisions were recorded
                        envelope = envelope.with_revision(current.event_count)
                    observe(envelope)
            else:
                problem = f"an event of session {envelope.session_id!r}, not of {session_id!r}"
                current = with_unreadable(current, sequence, problem)
        count += 1
        if progress is not None and count % 1000 == 0:
            progress(sequence, end)
    if progress is not None and count:
        progress(end, end)
    return current


async def _end(journal: ReadableLog, session_id: str, to_sequence: int | None) -> int:
    last = await journal.last_sequence(session_id)
    return last if to_sequence is None else min(last, to_sequence)
