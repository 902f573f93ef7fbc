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

import contextlib
from collections.abc import Callable

from plantangenet.errors import DecodeError, UnknownEventType, UnknownEventVersion
from plantangenet.events.envelope import CheckedEvent, Envelope
from plantangenet.log.journal import Journal
from plantangenet.log.replay import Progress, ReadableLog
from plantangenet.projections.session import (
    MOVE_TYPE_NAMES,
    MoveRun,
    SessionState,
    cursor_view,
    fold,
    with_unreadable,
)


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
    with events other writers stored. ``observe`` sees each envelope once it is
    folded in (with the others that arrived with it), with its revision (its
    position in the session: ``state.revision`` right after it). With no observer,
    a run of cursor moves is folded from the fields the codec checked, without
    building their envelopes (:meth:`~plantangenet.events.codec.EventCodec.checked`):
    every value is still checked, and the state is the same.
    """
    current = state if state is not None else SessionState(session_id)
    decode = journal.codec.decode
    digest = observe is not None  # the fold reads no digest; an observer may
    checked = journal.codec.checked if observe is None else None
    end = await _end(journal, session_id, to_sequence) if progress is not None else 0
    count = 0
    batches = journal.read_batches(
        session_id, from_sequence=current.sequence + 1, to_sequence=to_sequence
    )
    async with contextlib.aclosing(batches):
        async for batch in batches:
            if checked is not None:
                current = _fold_checked(current, batch, decode, checked)
            else:
                current = _fold_batch(current, batch, decode, digest, observe)
            if progress is not None:
                before, count = count, count + len(batch)
                if count // 1000 != before // 1000:
                    progress(batch[-1][0], end)
    if progress is not None and count:
        progress(end, end)
    return current


async def fold_events(
    journal: Journal,
    session_id: str,
    apply: Callable[[Envelope], object],
    *,
    checked: Callable[[CheckedEvent], object] | None = None,
    to_sequence: int | None = None,
    progress: Progress | None = None,
) -> int:
    """Hand each of the session's events, in order, to ``apply`` (a projection's fold
    step: a :class:`~plantangenet.projections.ledger.Ledger`'s ``apply``, say); how many.

    With ``checked``, an event the codec checks without building it goes to ``checked``
    as its :class:`~plantangenet.events.envelope.CheckedEvent` instead (for a fold that
    needs only its values: most of a long log), the rest to ``apply``.
    Streams, as :func:`replay` does: memory stays flat however long the session.
    """
    count = 0
    batches = journal.read_event_batches(
        session_id, to_sequence=to_sequence, progress=progress, checked=checked is not None
    )
    async with contextlib.aclosing(batches):
        async for batch in batches:
            for item in batch:
                if not isinstance(item, CheckedEvent):
                    apply(item)
                elif checked is not None:  # (checked values are read only when it is given)
                    checked(item)
            count += len(batch)
    return count


def _fold_batch(
    state: SessionState,
    batch: list[tuple[int, bytes]],
    decode: Callable[..., Envelope],
    digest: bool,
    observe: Callable[[Envelope], None] | None,
) -> SessionState:
    """``state`` with the stored messages of ``batch`` folded in (see :func:`replay`)."""
    session_id = state.session_id
    envelopes: list[Envelope] = []  # decoded, not folded yet
    for sequence, payload in batch:
        envelope = _decoded(session_id, sequence, payload, decode, digest)
        if isinstance(envelope, str):
            state = with_unreadable(_folded(state, envelopes, observe), sequence, envelope)
            envelopes = []
        else:
            envelopes.append(envelope)
    return _folded(state, envelopes, observe)


def _fold_checked(
    state: SessionState,
    batch: list[tuple[int, bytes]],
    decode: Callable[..., Envelope],
    checked: Callable[..., CheckedEvent | None],
) -> SessionState:
    """:func:`_fold_batch` with no observer: what it gives, for less.

    A cursor move that joins a :class:`MoveRun` (most of a long log) is folded from
    its values as the codec checked them (``checked``: every value checked as ``decode``
    checks it), without building its envelope or event; anything else is decoded and
    folded as :func:`_fold_batch` does.
    """
    session_id = state.session_id
    run = MoveRun(state)
    for sequence, payload in batch:
        found = checked(payload, types=MOVE_TYPE_NAMES)  # the others: decoded below
        if found is not None and found.session_id == session_id:
            fields = found.fields
            if run.takes(fields.cursor_id, fields.agent_id):
                run.add(cursor_view(fields), sequence)
                continue
        state = run.folded(state)
        envelope = _decoded(session_id, sequence, payload, decode, False)
        if isinstance(envelope, str):
            state = with_unreadable(state, sequence, envelope)
        else:
            state = fold(session_id, (envelope,), state)
        run = MoveRun(state)
    return run.folded(state)


def _decoded(
    session_id: str, sequence: int, payload: bytes, decode: Callable[..., Envelope], digest: bool
) -> Envelope | str:
    """The session's envelope in ``payload``, or what is wrong with it (then unreadable)."""
    try:
        envelope = decode(payload, sequence=sequence, digest=digest)
    except (UnknownEventType, UnknownEventVersion):
        raise  # an event of newer code (or a missing upcaster), not damage: say so
    except DecodeError as exc:
        return f"{exc.code}: {exc}"
    if envelope.session_id != session_id:
        return f"an event of session {envelope.session_id!r}, not of {session_id!r}"
    return envelope


def _folded(
    state: SessionState, envelopes: list[Envelope], observe: Callable[[Envelope], None] | None
) -> SessionState:
    """``state`` with ``envelopes`` folded in, each then shown to ``observe``."""
    if not envelopes:
        return state
    revision = state.event_count  # each event folded counts one
    state = fold(state.session_id, envelopes, state)
    if observe is not None:
        for envelope in envelopes:
            revision += 1
            if envelope.revision is None:  # stored before revisions were recorded
                envelope = envelope.with_revision(revision)
            observe(envelope)
    return state


async def _end(journal: ReadableLog, session_id: str, to_sequence: int | None) -> int:
    last = await journal.last_sequence(session_id)
    return last if to_sequence is None else min(last, to_sequence)
